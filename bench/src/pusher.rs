//! Pusher Channels (protocol 7) load, against any server that speaks it: ours with a
//! `[[pusher.app]]`, Sockudo, Soketi.
//!
//! `pusher` connects `--subs` clients to `/app/{key}`, subscribes each to one channel, then
//! publishes numbered, timestamped events for `--secs` and measures what the subscribers get,
//! like `fanout` (the same in-flight window, order checks and latency histograms; see
//! fanout.rs). Events go out one of two ways:
//! - `--via api`: `POST /apps/{id}/events`, signed as the Pusher server SDKs sign, on `--pubs`
//!   HTTP/1.1 connections with up to `--pipeline` requests in flight on each (kept alive when
//!   the server allows, else reopened per request); the subscribers are on the public channel
//!   `bench`.
//! - `--via client`: `client-e` events from `--pubs` clients on the private channel
//!   `private-bench` (the subscribers are on it too; a server does not echo a client event to
//!   its sender). The app must allow client events, with no per-connection rate limit.
//!
//! `pusher-idle` connects and subscribes `--conns` clients and reads the server's RSS per
//! connection, like `idle`.
//!
//! The timestamp rides in the event's data as text: `sb|` and 40 hex digits (publisher, sequence
//! number, send time), padded with dots to `--size`. Hex survives any JSON re-encoding a server
//! does, so the subscribers find it with a byte search instead of parsing JSON per delivery.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_tungstenite::tungstenite::Message;
use async_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use futures_lite::{AsyncReadExt, AsyncWriteExt, StreamExt, future};
use md5::{Digest, Md5};
use ring::hmac;
use serde_json::{Value, json};
use smol::net::TcpStream;
use smol::{LocalExecutor, Timer};

use crate::args::Args;
use crate::conn::{Options, Stamp, Target, Ws, now_ns};
use crate::connect::{Connected, connect_many_then};
use crate::fanout::{self, READ_BUFFER, Run};
use crate::measure::{self, Window, round3};

/// Where a connection's Pusher handshake (established, subscribe, succeeded) must finish.
const HANDSHAKE: Duration = Duration::from_secs(20);
/// Idle clients read nothing after the handshake; tungstenite allocates this up front.
const IDLE_READ_BUFFER: usize = 4096;
const PUBLIC: &str = "bench";
const PRIVATE: &str = "private-bench";

/// An app's credentials, as the server is configured with them.
struct App {
    id: String,
    key: String,
    secret: String,
}

impl App {
    fn from_args(args: &mut Args) -> Result<Self, String> {
        Ok(Self {
            id: args.take("app-id", "1".to_owned())?,
            key: args.take("key", "bench-key".to_owned())?,
            secret: args.take("secret", "bench-secret".to_owned())?,
        })
    }

    /// The `auth` of a subscription to a private channel: `key:hex(HMAC-SHA256(socket_id:channel))`.
    fn channel_auth(&self, socket_id: &str, channel: &str) -> String {
        format!("{}:{}", self.key, hmac_hex(&self.secret, format!("{socket_id}:{channel}").as_bytes()))
    }

    /// The query string of a signed HTTP API request: the auth parameters, sorted by name as
    /// signed, then `auth_signature`.
    fn signed_query(&self, method: &str, path: &str, body: &[u8], timestamp: u64) -> String {
        let md5 = hex(&Md5::digest(body));
        let query = format!("auth_key={}&auth_timestamp={timestamp}&auth_version=1.0&body_md5={md5}", self.key);
        let signature = hmac_hex(&self.secret, format!("{method}\n{path}\n{query}").as_bytes());
        format!("{query}&auth_signature={signature}")
    }
}

fn hmac_hex(secret: &str, message: &[u8]) -> String {
    hex(hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()), message).as_ref())
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The server's address and the URL a client connects to: `--url ws://IP:PORT` is the server's
/// root; the path is Pusher's.
fn target(args: &mut Args, app: &App) -> Result<(Target, SocketAddr), String> {
    let base: String = args.require("url")?;
    let root = base.trim_end_matches('/');
    let authority = root.strip_prefix("ws://").ok_or_else(|| format!("--url {base}: must start with ws://"))?;
    if authority.contains('/') {
        return Err(format!("--url {base}: give the server's root, ws://IP:PORT (the path is /app/{{key}})"));
    }
    let addr = authority.parse().map_err(|e| format!("--url {base}: {authority}: {e} (give IP:PORT)"))?;
    let url = format!("{root}/app/{}?protocol=7&client=switchboard-bench&version=1.0", app.key);
    Ok((Target::parse(&url)?, addr))
}

fn server_pid(args: &mut Args) -> Result<Option<u32>, String> {
    args.take_str("server-pid").map(|p| p.parse()).transpose().map_err(|e| format!("--server-pid: {e}"))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Via {
    Api,
    Client,
}

pub(crate) async fn pusher(executor: &LocalExecutor<'static>, args: &mut Args) -> Result<Value, String> {
    let app = Rc::new(App::from_args(args)?);
    let (target, addr) = target(args, &app)?;
    let via = match args.take("via", "api".to_owned())?.as_str() {
        "api" => Via::Api,
        "client" => Via::Client,
        other => return Err(format!("--via {other}: api or client")),
    };
    let subs: usize = args.require("subs")?;
    // 64 events in flight either way, as fan-out's window: through the API, one request on
    // each of 64 connections (the servers close a connection after each API response, so
    // there is no pipelining), each waiting for its event to reach every subscriber.
    let pubs: usize = args.take("pubs", if via == Via::Api { 64 } else { 1 })?;
    let window: u64 = args.take("window", if via == Via::Api { 1 } else { 64 })?;
    let pipeline: usize = args.take("pipeline", 1)?;
    let size: usize = args.take("size", 64)?;
    let warmup: f64 = args.take("warmup", 1.0)?;
    let secs: f64 = args.take("secs", 5.0)?;
    let concurrency: usize = args.take("concurrency", 256)?;
    let pid = server_pid(args)?;
    if window == 0 || pubs == 0 || pipeline == 0 {
        return Err("--window, --pubs and --pipeline must be at least 1".into());
    }
    if via == Via::Client && pipeline != 1 {
        return Err("--pipeline is for --via api".into());
    }
    measure::ensure_descriptors(subs + pubs)?;
    let channel = if via == Via::Api { PUBLIC } else { PRIVATE };

    let options = Options { read_buffer: READ_BUFFER, receive_buffer: None };
    let subscribers = join_all(executor, &target, subs, concurrency, options, &app, channel, "subscribers").await?;
    let senders = if via == Via::Client {
        join_all(executor, &target, pubs, concurrency, options, &app, channel, "publishers").await?
    } else {
        Vec::new()
    };

    let counted = u32::try_from(subscribers.len()).map_err(|_| "too many subscribers")?;
    let run = Rc::new(Run::new(counted, window, pubs, 1));
    let mut tasks = Vec::new();
    for ws in subscribers {
        let run = Rc::clone(&run);
        tasks.push(executor.spawn(async move { fanout::receive(ws.into_inner(), &run, pubs, decoder()).await }));
    }
    let mut sinks = Vec::new();
    for ws in senders {
        let (sink, stream) = ws.split();
        let run = Rc::clone(&run);
        // Other senders' client events reach a sender too; drain them.
        tasks.push(executor.spawn(async move { fanout::drain(stream, &run).await }));
        sinks.push(sink);
    }
    // Every subscriber has its subscription_succeeded, so the server has it in the channel; the
    // pause matches fanout's, so both scenarios start alike.
    Timer::after(Duration::from_millis(500)).await;

    let bounds = run.schedule(now_ns(), warmup, &[secs]);
    let stop = bounds[1];
    let (requests, connects) = (Rc::new(Cell::new(0u64)), Rc::new(Cell::new(0u64)));
    let publishing: Vec<_> = (0..pubs)
        .map(|index| {
            let run = Rc::clone(&run);
            match via {
                Via::Api => {
                    let app = Rc::clone(&app);
                    let (requests, connects) = (Rc::clone(&requests), Rc::clone(&connects));
                    executor.spawn(async move {
                        let http = Http { addr, app: &app, size, pipeline, requests: &requests, connects: &connects };
                        http.publish(&run, index, stop).await
                    })
                }
                Via::Client => {
                    let sink = sinks.remove(0);
                    let encode = move |stamp: Stamp| {
                        let event = format!(
                            r#"{{"event":"client-e","channel":"{PRIVATE}","data":{{"t":"{}"}}}}"#,
                            stamp_text(stamp, size)
                        );
                        Message::text(event)
                    };
                    executor.spawn(async move { fanout::publish(sink, &run, index, 0.0, stop, encode).await })
                }
            }
        })
        .collect();

    sleep_until(bounds[0]).await;
    let window_measure = Window::begin(pid);
    let mut failure = None;
    for task in publishing {
        if let Err(e) = task.await {
            failure.get_or_insert(e);
        }
    }
    let resources = window_measure.end();
    if let Some(e) = failure {
        return Err(e);
    }
    run.settle().await;
    run.finished.set(true);
    drop(tasks);

    let sent = run.sent();
    let expected = sent * u64::from(counted);
    let phase = run.phases.replace(Vec::new()).pop().ok_or("no phase")?;
    let mut summary = json!({
        "via": if via == Via::Api { "api" } else { "client" },
        "channel": channel,
        "subs": subs, "pubs": pubs, "window": window, "size": size,
        "warmup_s": warmup, "phases_s": [secs],
        "sent": sent,
        "expected": expected,
        "delivered": run.delivered.get(),
        "loss": expected.saturating_sub(run.delivered.get()),
        "out_of_order": run.out_of_order.get(),
        "gaps": run.gaps.get(),
        "closed": run.closed.get(),
        "stalled": run.stalled.get(),
        "sent_per_s": (phase.sent as f64 / secs).round(),
        "delivered_per_s": (phase.delivered as f64 / secs).round(),
        "latency": measure::latency(&phase.latency),
        "resources": resources,
    });
    if via == Via::Api {
        summary["pipeline"] = json!(pipeline);
        summary["requests"] = json!(requests.get());
        // More than `pubs`: the server closed connections (no keep-alive) and each was reopened.
        summary["http_connects"] = json!(connects.get());
    }
    Ok(summary)
}

pub(crate) async fn pusher_idle(executor: &LocalExecutor<'static>, args: &mut Args) -> Result<Value, String> {
    let app = Rc::new(App::from_args(args)?);
    let (target, _) = target(args, &app)?;
    let conns: usize = args.require("conns")?;
    let hold: f64 = args.take("hold", 10.0)?;
    let rate: f64 = args.take("rate", 5000.0)?;
    let concurrency: usize = args.take("concurrency", 256)?;
    let pid = server_pid(args)?;
    measure::ensure_descriptors(conns)?;

    let before = measure::sample(pid);
    let window = Window::begin(pid);
    let options = Options { read_buffer: IDLE_READ_BUFFER, receive_buffer: None };
    let connected = join_many(executor, &target, conns, rate, concurrency, options, &app, PUBLIC).await;
    let connecting = window.end();
    // As `idle`: let the server settle after the last subscription before reading its RSS.
    Timer::after(Duration::from_secs(1)).await;
    let holding = Window::begin(pid);
    Timer::after(Duration::from_secs_f64(hold)).await;
    let held = holding.end();
    let after = measure::sample(pid);
    let open = connected.sockets.len();
    let elapsed = connected.elapsed.as_secs_f64();
    let mut summary = json!({
        "channel": PUBLIC,
        "conns": conns,
        "connected": open,
        "failures": connected.failures,
        "errors": connected.errors,
        "connect_s": round3(elapsed),
        "connect_per_s": if elapsed > 0.0 { (open as f64 / elapsed).round() } else { 0.0 },
        "paced_per_s": rate,
        "hold_s": hold,
        "connecting": connecting,
        "holding": held,
    });
    if let (Some(before), Some(after)) = (before, after) {
        summary["server_rss_before_bytes"] = json!(before.rss);
        summary["server_rss_held_bytes"] = json!(after.rss);
        if open > 0 {
            summary["server_rss_per_conn_bytes"] = json!(after.rss.saturating_sub(before.rss) / open as u64);
        }
    }
    drop(connected);
    Ok(summary)
}

#[allow(clippy::too_many_arguments)]
async fn join_all(
    executor: &LocalExecutor<'static>,
    target: &Target,
    n: usize,
    concurrency: usize,
    options: Options,
    app: &Rc<App>,
    channel: &'static str,
    what: &str,
) -> Result<Vec<Ws>, String> {
    let connected = join_many(executor, target, n, 0.0, concurrency, options, app, channel).await;
    if connected.failures > 0 {
        return Err(format!(
            "{} of {n} {what} failed to connect or subscribe: {:?}",
            connected.failures, connected.errors
        ));
    }
    Ok(connected.sockets)
}

#[allow(clippy::too_many_arguments)]
async fn join_many(
    executor: &LocalExecutor<'static>,
    target: &Target,
    n: usize,
    rate: f64,
    concurrency: usize,
    options: Options,
    app: &Rc<App>,
    channel: &'static str,
) -> Connected {
    let app = Rc::clone(app);
    connect_many_then(executor, target, n, rate, concurrency, options, move |ws| {
        let app = Rc::clone(&app);
        async move {
            future::or(subscribe(ws, &app, channel), async {
                Timer::after(HANDSHAKE).await;
                Err(format!("no subscription within {HANDSHAKE:?}"))
            })
            .await
        }
    })
    .await
}

/// Pusher's handshake on an upgraded connection: `pusher:connection_established` (its data a
/// JSON string holding the socket id), then a subscription to `channel` (signed when private)
/// and its `pusher_internal:subscription_succeeded`.
async fn subscribe(mut ws: Ws, app: &App, channel: &str) -> Result<Ws, String> {
    let established = next_event(&mut ws).await?;
    if established["event"] != "pusher:connection_established" {
        return Err(format!("expected pusher:connection_established, got {}", established["event"]));
    }
    let data: Value = match &established["data"] {
        Value::String(text) => serde_json::from_str(text).map_err(|e| format!("connection_established data: {e}"))?,
        other => other.clone(),
    };
    let socket_id = data["socket_id"].as_str().ok_or("connection_established without a socket_id")?;
    let mut subscription = json!({ "channel": channel });
    if channel.starts_with("private-") {
        subscription["auth"] = json!(app.channel_auth(socket_id, channel));
    }
    let message = json!({ "event": "pusher:subscribe", "data": subscription }).to_string();
    ws.send(Message::text(message)).await.map_err(|e| format!("subscribe: {e}"))?;
    loop {
        let event = next_event(&mut ws).await?;
        match event["event"].as_str() {
            Some("pusher_internal:subscription_succeeded") if event["channel"] == channel => return Ok(ws),
            Some(name @ ("pusher:error" | "pusher:subscription_error")) => {
                return Err(format!("{name}: {}", event["data"]));
            }
            _ => {}
        }
    }
}

/// The next text message, as JSON.
async fn next_event(ws: &mut Ws) -> Result<Value, String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                return serde_json::from_str(text.as_str()).map_err(|e| format!("not JSON: {e}"));
            }
            Some(Ok(Message::Close(frame))) => {
                return Err(frame.map_or_else(|| "closed".to_owned(), |f| format!("closed {}", u16::from(f.code))));
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(format!("read: {e}")),
            None => return Err("eof".to_owned()),
        }
    }
}

const MARK: &[u8] = b"sb|";
const STAMP_TEXT: usize = MARK.len() + 8 + 16 + 16;

/// A stamp as text: `sb|`, the publisher, sequence number and send time in fixed-width hex,
/// then dots up to `size` bytes.
fn stamp_text(stamp: Stamp, size: usize) -> String {
    let mut text = format!("sb|{:08x}{:016x}{:016x}", stamp.publisher, stamp.seq, stamp.sent_ns);
    text.extend(std::iter::repeat_n('.', size.saturating_sub(STAMP_TEXT)));
    text
}

/// Runs once per delivery, millions of times a second: a plain loop over the lowercase hex
/// that `stamp_text` writes, not `from_str_radix` and a UTF-8 check per field.
fn parse_stamp(text: &[u8]) -> Option<Stamp> {
    let rest = text.strip_prefix(MARK)?.get(..STAMP_TEXT - MARK.len())?;
    let field = |digits: &[u8]| {
        digits.iter().try_fold(0u64, |acc, &b| {
            let nibble = match b {
                b'0'..=b'9' => b - b'0',
                b'a'..=b'f' => b - b'a' + 10,
                _ => return None,
            };
            Some(acc << 4 | u64::from(nibble))
        })
    };
    Some(Stamp {
        publisher: u32::try_from(field(&rest[..8])?).ok()?,
        seq: field(&rest[8..24])?,
        sent_ns: field(&rest[24..40])?,
    })
}

/// A subscriber's decoder: the stamp in a text frame. Every event of a run has the same shape,
/// so the stamp sits where it sat in the last one; only a miss searches.
fn decoder() -> impl FnMut(OpCode, &[u8]) -> Option<Stamp> {
    let mut at = 0;
    move |opcode, payload| {
        if opcode != OpCode::Data(Data::Text) {
            return None;
        }
        if !payload.get(at..).is_some_and(|rest| rest.starts_with(MARK)) {
            at = payload.windows(MARK.len()).position(|w| w == MARK)?;
        }
        parse_stamp(&payload[at..])
    }
}

/// One publisher on the HTTP API: a keep-alive connection and `pipeline` requests in flight.
/// A server that ends a response with `Connection: close` gets a new connection for the next
/// request (counted in `connects`), as an SDK's HTTP client would open one.
struct Http<'a> {
    addr: SocketAddr,
    app: &'a App,
    size: usize,
    pipeline: usize,
    requests: &'a Cell<u64>,
    connects: &'a Cell<u64>,
}

impl Http<'_> {
    async fn connect(&self) -> Result<TcpStream, String> {
        let stream = TcpStream::connect(self.addr).await.map_err(|e| format!("connect: {e}"))?;
        stream.set_nodelay(true).map_err(|e| format!("nodelay: {e}"))?;
        self.connects.set(self.connects.get() + 1);
        Ok(stream)
    }

    async fn publish(&self, run: &Run, index: usize, stop: u64) -> Result<(), String> {
        let fail = |e: String| format!("HTTP publisher {index}: {e}");
        let mut stream = None;
        let publisher = u32::try_from(index).map_err(|_| "too many publishers")?;
        let path = format!("/apps/{}/events", self.app.id);
        let mut responses = Responses::default();
        let (mut outstanding, mut done) = (0, false);
        loop {
            while !done && outstanding < self.pipeline {
                if now_ns() >= stop {
                    done = true;
                    break;
                }
                let me = &run.publishers[index];
                if me.next.get() - me.complete_below.get() >= run.window {
                    if outstanding > 0 {
                        break; // a response may come before the window moves
                    }
                    if !run.wait_window(index).await {
                        return Ok(());
                    }
                    continue;
                }
                let sent_ns = now_ns();
                let seq = run.take_seq(index, sent_ns);
                let request = self.request(&path, Stamp { publisher, seq, sent_ns });
                if stream.is_none() {
                    stream = Some(self.connect().await.map_err(fail)?);
                }
                let Some(open) = stream.as_mut() else { unreachable!("connected above") };
                open.write_all(&request).await.map_err(|e| fail(format!("write: {e}")))?;
                outstanding += 1;
                self.requests.set(self.requests.get() + 1);
            }
            if outstanding == 0 {
                return Ok(());
            }
            let Some(open) = stream.as_mut() else { unreachable!("a request is outstanding on it") };
            let keep_alive = responses.next(open).await.map_err(fail)?;
            outstanding -= 1;
            if !keep_alive {
                if outstanding > 0 {
                    return Err(fail("the server closes its connections after a response: use --pipeline 1".into()));
                }
                stream = None;
                responses.buf.clear();
            }
        }
    }

    fn request(&self, path: &str, stamp: Stamp) -> Vec<u8> {
        let body = format!(r#"{{"name":"e","channel":"{PUBLIC}","data":"{}"}}"#, stamp_text(stamp, self.size));
        let timestamp = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let query = self.app.signed_query("POST", path, body.as_bytes(), timestamp);
        format!(
            "POST {path}?{query} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        )
        .into_bytes()
    }
}

/// Reads HTTP/1.1 responses off a keep-alive connection, one at a time; any status but 200 is
/// an error (with the body, which says why).
#[derive(Default)]
struct Responses {
    buf: Vec<u8>,
}

impl Responses {
    /// Reads the next response; false when the server closes the connection after it.
    async fn next(&mut self, stream: &mut TcpStream) -> Result<bool, String> {
        loop {
            if let Some((length, keep_alive)) = self.parse()? {
                self.buf.drain(..length);
                return Ok(keep_alive);
            }
            let mut chunk = [0; 4096];
            let n = stream.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("the server closed the connection".into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The length of the whole response at the front of the buffer, once it is all there, and
    /// whether the connection stays open after it.
    fn parse(&self) -> Result<Option<(usize, bool)>, String> {
        let Some(head_end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4) else {
            return Ok(None);
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]);
        let mut lines = head.split("\r\n");
        let status = lines.next().and_then(|line| line.split(' ').nth(1)).unwrap_or("");
        let (mut length, mut chunked, mut keep_alive) = (None, false, true);
        for line in lines {
            let Some((name, value)) = line.split_once(':') else { continue };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = Some(value.parse::<usize>().map_err(|e| format!("content-length {value}: {e}"))?);
            } else if name.eq_ignore_ascii_case("transfer-encoding") && value.eq_ignore_ascii_case("chunked") {
                chunked = true;
            } else if name.eq_ignore_ascii_case("connection") && value.eq_ignore_ascii_case("close") {
                keep_alive = false;
            }
        }
        let end = if chunked {
            match chunked_end(&self.buf, head_end)? {
                Some(end) => end,
                None => return Ok(None),
            }
        } else {
            head_end + length.unwrap_or(0)
        };
        if self.buf.len() < end {
            return Ok(None);
        }
        if status != "200" {
            let body = String::from_utf8_lossy(&self.buf[head_end..end]);
            return Err(format!("status {status}: {}", body.trim()));
        }
        Ok(Some((end, keep_alive)))
    }
}

/// Where a chunked body starting at `pos` ends (after its last chunk and the empty trailer).
fn chunked_end(buf: &[u8], mut pos: usize) -> Result<Option<usize>, String> {
    loop {
        let Some(line) = buf[pos..].windows(2).position(|w| w == b"\r\n") else { return Ok(None) };
        let text = String::from_utf8_lossy(&buf[pos..pos + line]);
        let size = usize::from_str_radix(text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|e| format!("chunk size {text:?}: {e}"))?;
        pos += line + 2;
        if size == 0 {
            // No trailers from these servers: the empty line ends the body.
            return Ok((buf.len() >= pos + 2).then_some(pos + 2));
        }
        pos += size + 2;
        if pos > buf.len() {
            return Ok(None);
        }
    }
}

async fn sleep_until(ns: u64) {
    fanout::sleep_until(ns).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_text_round_trips_and_pads() {
        let stamp = Stamp { publisher: 7, seq: 1 << 40, sent_ns: 987_654_321 };
        let text = stamp_text(stamp, 64);
        assert_eq!(text.len(), 64);
        assert_eq!(parse_stamp(text.as_bytes()), Some(stamp));
        assert_eq!(stamp_text(stamp, 10).len(), STAMP_TEXT);
        assert_eq!(parse_stamp(&text.as_bytes()[..STAMP_TEXT - 1]), None);
        assert_eq!(parse_stamp(text.replace('0', "g").as_bytes()), None);
        let mut decode = decoder();
        let event = format!(r#"{{"event":"e","channel":"bench","data":"{text}"}}"#);
        assert_eq!(decode(OpCode::Data(Data::Text), event.as_bytes()), Some(stamp));
        // The same shape again hits the remembered offset; another shape searches.
        assert_eq!(decode(OpCode::Data(Data::Text), event.as_bytes()), Some(stamp));
        let escaped = format!(r#"{{"data":"{{\"t\":\"{text}\"}}","event":"client-e"}}"#);
        assert_eq!(decode(OpCode::Data(Data::Text), escaped.as_bytes()), Some(stamp));
        assert_eq!(decode(OpCode::Data(Data::Binary), event.as_bytes()), None);
    }

    #[test]
    fn signs_as_pusher_documents() {
        // The worked example of Pusher's HTTP API reference (authenticating requests).
        let app = App { id: "3".into(), key: "278d425bdf160c739803".into(), secret: "7ad3773142a6692b25b8".into() };
        let body = br#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
        let query = app.signed_query("POST", "/apps/3/events", body, 1353088179);
        assert_eq!(
            query,
            "auth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0\
             &body_md5=ec365a775a4cd0599faeb73354201b6f\
             &auth_signature=da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c"
        );
        // Pusher's documented channel authorization example.
        let app = App { id: "1".into(), key: "278d425bdf160c739803".into(), secret: "7ad3773142a6692b25b8".into() };
        assert_eq!(
            app.channel_auth("1234.1234", "private-foobar"),
            "278d425bdf160c739803:58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4"
        );
    }

    #[test]
    fn reads_pipelined_and_chunked_responses() {
        let mut r = Responses::default();
        r.buf.extend_from_slice(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n");
        let (first, keep_alive) = r.parse().unwrap().unwrap();
        assert!(keep_alive);
        r.buf.drain(..first);
        let (second, _) = r.parse().unwrap().unwrap();
        assert_eq!(second, r.buf.len());
        r.buf.clear();
        r.buf.extend_from_slice(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}");
        assert_eq!(r.parse(), Ok(Some((r.buf.len(), false))));
        r.buf.clear();
        r.buf.extend_from_slice(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 7\r\n\r\nbad sig");
        assert_eq!(r.parse(), Err("status 401: bad sig".to_owned()));
        r.buf.truncate(30);
        assert_eq!(r.parse(), Ok(None));
    }
}
