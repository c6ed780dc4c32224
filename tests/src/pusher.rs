//! The Pusher Channels endpoints: the apps the tests configure, the external clients that drive
//! them (the Node scenarios in `tests/node/` and `scripts/pusher-python.py`), and a raw client
//! for what the libraries never send.
//!
//! `scripts/node-deps` installs the Node packages and `scripts/python-venv` the Python ones;
//! `scripts/test` runs both first. A test without its tool fails, naming that step, unless
//! `SWITCHBOARD_SKIP_NODE` / `SWITCHBOARD_SKIP_PYTHON` asks to skip it.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Message, Settings, Ws, json, tcp};

/// The apps every Pusher test server has; `tests/node/lib.mjs` (`APPS`) and
/// `scripts/pusher-python.py` name the same ones. App ids are digits: the Python SDK takes
/// nothing else.
pub const APPS_TOML: &str = r#"
[[pusher.app]]
id = "1001"
key = "app-key"
secret = "app-secret"
client_events = true
subscription_count = true

[[pusher.app]]
id = "1002"
key = "quiet-key"
secret = "quiet-secret"
client_events = false

[[pusher.app]]
id = "1003"
key = "off-key"
secret = "off-secret"
enabled = false

[[pusher.app]]
id = "1004"
key = "tiny-key"
secret = "tiny-secret"
max_connections = 1
"#;

/// The key of app 1001, the one with every feature on.
pub const KEY: &str = "app-key";

/// The `[pusher]` section with `activity_timeout` and `extra` lines, then [`APPS_TOML`].
pub fn pusher_toml(activity_timeout: &str, extra: &str) -> String {
    format!(
        "[pusher]\nactivity_timeout = \"{activity_timeout}\"\nmax_client_events_per_second = 10\n{extra}\n{APPS_TOML}"
    )
}

/// Like [`pusher_toml`], with `main` lines added to app 1001 and `quiet` lines to app 1002
/// (plain keys first, then tables such as `[[pusher.app.webhook]]`).
pub fn pusher_toml_apps(activity_timeout: &str, extra: &str, main: &str, quiet: &str) -> String {
    let apps = APPS_TOML
        .replacen("subscription_count = true\n", &format!("subscription_count = true\n{main}\n"), 1)
        .replacen("client_events = false\n", &format!("client_events = false\n{quiet}\n"), 1);
    format!("[pusher]\nactivity_timeout = \"{activity_timeout}\"\nmax_client_events_per_second = 10\n{extra}\n{apps}")
}

/// Settings of a small Pusher test server: `workers` and the `[pusher]` lines of [`pusher_toml`].
pub fn settings(workers: usize, activity_timeout: &str, extra: &str) -> Settings {
    Settings { workers, pusher: pusher_toml(activity_timeout, extra), ..Settings::default() }
}

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// How long one external scenario may run before it is killed.
pub const SCRIPT_TIMEOUT: Duration = Duration::from_secs(150);

/// Whether the Node scenarios can run: false when skipped on request (`SWITCHBOARD_SKIP_NODE`);
/// panics naming the install step when `node` or `tests/node/node_modules` is missing.
pub fn node_ready() -> bool {
    let modules = repo().join("tests/node/node_modules");
    let node = Command::new("node").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status();
    let why = if !node.is_ok_and(|s| s.success()) {
        Some("`node` is missing (apt-get install -y nodejs npm, then scripts/node-deps)".to_owned())
    } else if !["pusher-js", "laravel-echo", "pusher"].iter().all(|p| modules.join(p).join("package.json").exists()) {
        Some(format!("{} is incomplete: run scripts/node-deps", modules.display()))
    } else {
        None
    };
    let Some(why) = why else { return true };
    // A missing tool is a failure, never a quiet pass; skipping is asked for by name.
    assert!(std::env::var_os("SWITCHBOARD_SKIP_NODE").is_some(), "{why} (or set SWITCHBOARD_SKIP_NODE=1 to skip)");
    eprintln!("skipped on request (SWITCHBOARD_SKIP_NODE): {why}");
    false
}

/// The venv's Python when it has the `pusher` SDK; `None` when skipped on request; panics
/// naming the install step otherwise.
pub fn python_ready() -> Option<PathBuf> {
    let python = repo().join(".venv/bin/python");
    let has_sdk = python.exists()
        && Command::new(&python)
            .args(["-c", "import pusher, websockets"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    if has_sdk {
        return Some(python);
    }
    let why = format!("{} lacks the `pusher` SDK or `websockets`: run scripts/python-venv", python.display());
    assert!(std::env::var_os("SWITCHBOARD_SKIP_PYTHON").is_some(), "{why} (or set SWITCHBOARD_SKIP_PYTHON=1 to skip)");
    eprintln!("skipped on request (SWITCHBOARD_SKIP_PYTHON): {why}");
    None
}

/// Runs `program args`, killed after [`SCRIPT_TIMEOUT`]; asserts success and returns stdout.
pub fn run_script(program: &Path, args: &[&str]) -> String {
    run_script_with_env(program, args, &[])
}

/// [`run_script`] with `env` added to the program's environment.
pub fn run_script_with_env(program: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let mut child = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .current_dir(repo())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", program.display()));
    // The pipes are read on threads so that a chatty client never blocks on a full pipe.
    let out = child.stdout.take().map(read_on_thread);
    let err = child.stderr.take().map(read_on_thread);
    let deadline = Instant::now() + SCRIPT_TIMEOUT;
    while child.try_wait().is_ok_and(|s| s.is_none()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    // Kills only a client that overran its time; a finished one is reaped either way.
    let overran = child.try_wait().is_ok_and(|s| s.is_none());
    let _ = child.kill();
    let status = child.wait().unwrap_or_else(|e| panic!("waiting for {}: {e}", program.display()));
    let stdout = out.and_then(|h| h.join().ok()).unwrap_or_default();
    let stderr = err.and_then(|h| h.join().ok()).unwrap_or_default();
    eprint!("{stdout}{stderr}");
    assert!(!overran, "{} {args:?} ran over {SCRIPT_TIMEOUT:?} and was killed", program.display());
    assert!(status.success(), "{} {args:?} failed ({status}):\n{stderr}", program.display());
    stdout
}

fn read_on_thread(mut pipe: impl std::io::Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    })
}

/// Runs scenario `name` of `tests/node/pusher-suite.mjs` with `args` (JSON); returns stdout.
pub fn run_node(name: &str, args: &serde_json::Value) -> String {
    run_node_file("pusher-suite.mjs", name, args)
}

/// Runs scenario `name` of `tests/node/{file}` with `args` (JSON); returns stdout.
pub fn run_node_file(file: &str, name: &str, args: &serde_json::Value) -> String {
    let script = repo().join("tests/node").join(file);
    let script = script.to_string_lossy();
    run_script(Path::new("node"), &[&script, name, &args.to_string()])
}

/// `tests/node/webhook-receiver.mjs` on a port of 127.0.0.1: it checks each request's
/// signature and records it; killed on drop.
#[derive(Debug)]
pub struct WebhookReceiver {
    child: Child,
    /// Its port.
    pub port: u16,
}

impl WebhookReceiver {
    /// Starts one that answers the first `fail` requests with 500.
    pub fn start(fail: usize) -> Self {
        let script = repo().join("tests/node/webhook-receiver.mjs");
        let mut child = Command::new("node")
            .arg(&script)
            .arg(serde_json::json!({ "fail": fail }).to_string())
            .current_dir(repo())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", script.display()));
        let stdout = child.stdout.take().unwrap_or_else(|| panic!("no stdout pipe"));
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = tx.send(lines.next());
            // Keep reading so that the receiver never blocks on a full pipe.
            lines.for_each(drop);
        });
        let line = match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Some(Ok(line))) => line,
            other => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the webhook receiver did not start: {other:?}");
            }
        };
        let port = line.strip_prefix("listening on ").and_then(|p| p.trim().parse().ok());
        let Some(port) = port else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the webhook receiver printed {line:?}");
        };
        Self { child, port }
    }

    /// The URL of `path` on it.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Every request it recorded (see webhook-receiver.mjs), oldest first.
    pub fn log(&self) -> Vec<serde_json::Value> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let response = crate::http(addr, "GET /_log HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let value = json(crate::body(&response));
        value.as_array().cloned().unwrap_or_else(|| panic!("the receiver's log is not a list: {value}"))
    }

    /// The recorded requests to `path` whose events include one `name` on `channel`.
    pub fn requests_for(&self, path: &str, name: &str, channel: &str) -> Vec<serde_json::Value> {
        self.log()
            .into_iter()
            .filter(|r| r["path"] == path)
            .filter(|r| {
                r["body"]["events"]
                    .as_array()
                    .is_some_and(|events| events.iter().any(|e| e["name"] == name && e["channel"] == channel))
            })
            .collect()
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port of 127.0.0.1 that nothing listens on (it was free a moment ago): a receiver that is down.
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
    listener.local_addr().map(|a| a.port()).unwrap_or_else(|e| panic!("local_addr: {e}"))
}

/// Asserts that `stdout` has an `ok: <check>` line for each of `checks` (as line prefixes).
pub fn assert_checks(stdout: &str, checks: &[&str]) {
    for check in checks {
        let line = format!("ok: {check}");
        assert!(stdout.lines().any(|l| l.starts_with(&line)), "no {line:?} line in:\n{stdout}");
    }
}

/// A raw Pusher connection over tungstenite, for the wire rules no library breaks.
#[derive(Debug)]
pub struct Raw {
    /// The socket.
    pub ws: Ws,
}

/// What the server did next on a raw connection.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// A text message, parsed.
    Event(serde_json::Value),
    /// A close frame with its code and reason.
    Close(u16, String),
    /// The connection ended without a close frame.
    Gone(String),
    /// Nothing within the wait.
    Quiet,
}

impl Raw {
    /// Opens `/app/{key}{query}` on `addr` (`query` starts with `?` or is empty), whatever
    /// the server says next.
    pub fn open(addr: SocketAddr, key: &str, query: &str) -> Self {
        let url = format!("ws://{addr}/app/{key}{query}");
        match tungstenite::client(url.as_str(), tcp(addr)) {
            Ok((ws, _response)) => Self { ws },
            Err(e) => panic!("connecting to {url}: {e}"),
        }
    }

    /// Opens a protocol 7 connection of `key` and reads `pusher:connection_established`;
    /// returns the client and the established data (parsed from its JSON string).
    pub fn connect(addr: SocketAddr, key: &str) -> (Self, serde_json::Value) {
        let mut raw = Self::open(addr, key, "?protocol=7&client=rust-test&version=1.0");
        let event = raw.expect_event(Duration::from_secs(10));
        assert_eq!(event["event"], "pusher:connection_established", "{event}");
        let data =
            event["data"].as_str().unwrap_or_else(|| panic!("connection_established data is a JSON string: {event}"));
        (raw, json(data))
    }

    /// Sends `value` as a text message.
    pub fn send(&mut self, value: &serde_json::Value) {
        self.send_text(&value.to_string());
    }

    /// Sends `text` as is.
    pub fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).unwrap_or_else(|e| panic!("send: {e}"));
    }

    /// What comes next within `limit` (WebSocket pings are answered by tungstenite and skipped).
    pub fn next(&mut self, limit: Duration) -> Next {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Next::Quiet;
            }
            let _ = self.ws.get_ref().set_read_timeout(Some(left));
            match self.ws.read() {
                Ok(Message::Text(text)) => {
                    let value = serde_json::from_str(text.as_str())
                        .unwrap_or_else(|e| panic!("the server sent text that is not JSON ({e}): {text}"));
                    return Next::Event(value);
                }
                Ok(Message::Close(frame)) => {
                    return frame.map_or(Next::Close(1005, String::new()), |f| {
                        Next::Close(u16::from(f.code), f.reason.as_str().to_owned())
                    });
                }
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
                {
                    return Next::Quiet;
                }
                Err(e) => return Next::Gone(e.to_string()),
            }
        }
    }

    /// The next message, which must be an event.
    pub fn expect_event(&mut self, limit: Duration) -> serde_json::Value {
        match self.next(limit) {
            Next::Event(value) => value,
            other => panic!("expected an event, got {other:?}"),
        }
    }

    /// Skips messages until event `name` comes (within `limit` in all); returns it.
    pub fn wait_event(&mut self, name: &str, limit: Duration) -> serde_json::Value {
        let deadline = Instant::now() + limit;
        loop {
            match self.next(deadline.saturating_duration_since(Instant::now())) {
                Next::Event(value) if value["event"] == name => return value,
                Next::Event(_) => {}
                other => panic!("waiting for {name}: {other:?}"),
            }
        }
    }

    /// Subscribes to public channel `channel` and waits for the success.
    pub fn subscribe_public(&mut self, channel: &str) {
        self.send(&serde_json::json!({"event": "pusher:subscribe", "data": {"channel": channel}}));
        let event = self.wait_event("pusher_internal:subscription_succeeded", Duration::from_secs(10));
        assert_eq!(event["channel"], channel, "{event}");
    }

    /// Sends `pusher:ping` and waits for `pusher:pong`.
    pub fn ping(&mut self) {
        self.send(&serde_json::json!({"event": "pusher:ping", "data": {}}));
        self.wait_event("pusher:pong", Duration::from_secs(10));
    }
}

/// The `data` of a Pusher message as JSON, whether it came as an object or as a JSON string.
pub fn data(event: &serde_json::Value) -> serde_json::Value {
    match &event["data"] {
        serde_json::Value::String(text) => serde_json::from_str(text).unwrap_or_else(|_| event["data"].clone()),
        other => other.clone(),
    }
}
