//! `redis_bench`: publications per second through Redis between `switchboard-mio` nodes (one
//! worker each) on this machine. It starts its own `redis-server`s (no persistence) and nodes
//! on free ports of 127.0.0.1, keeps their PIDs and stops them at the end; runs are
//! interleaved and medians reported.
//!
//! - `history [runs] [count] [subscribers] [size]` (3, 20000, 4, 64): history on (Redis
//!   Streams: one publish script per publication) against off (plain `PUBLISH`), between two
//!   nodes: one publisher on the first, `subscribers` on the second, all on one channel.
//!   History runs also check the offsets arrive 1, 2, 3… with no gap. Results in
//!   `bench/results/history.json`.
//! - `shards [runs] [count] [channels]` (3, 40000, 64): one, two and four independent Redis
//!   instances (`broker.urls`) under three nodes: four publishers on the first node spread
//!   `count` publications over `channels` channels, and every channel has one subscriber on
//!   each of the two other nodes. Beside it, `redis-benchmark` measures `PUBLISH` on one
//!   instance (same payload, pipeline 64): the ceiling of one Redis. Then the same through a
//!   3-master Redis Cluster (`broker.kind = "redis-cluster"`, sharded pub/sub). Results in
//!   `bench/results/shards.json`.
//!
//! A run's rate is its publications over the time from the first publish to the last
//! subscriber's last message.
//!
//! `cargo build --release --bins && target/release/redis_bench history` (or `shards`)

use std::io::{BufRead, BufReader, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_tungstenite::tungstenite::{self, Message};

const SECRET: &str = "history-bench-secret";
/// A run that has not finished by then is reported as failed, not waited for.
const RUN_LIMIT: Duration = Duration::from_secs(120);

/// A child process stopped (and reaped) when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

fn token(sub: &str) -> String {
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) + 3600;
    switchboard_core::sign_hs256(SECRET, &format!(r#"{{"sub":"{sub}","exp":{exp}}}"#))
}

fn start_redis(port: u16) -> Process {
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server runs (apt-get install -y redis-server)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not listen on {port}");
        thread::sleep(Duration::from_millis(20));
    }
    Process(child)
}

fn start_server(redis_ports: &[u16], dir: &std::path::Path, node: &str) -> (Process, String) {
    start_node("redis", redis_ports, dir, node)
}

/// A node on `kind` = `redis` (independent instances) or `redis-cluster` (seeds).
fn start_node(kind: &str, redis_ports: &[u16], dir: &std::path::Path, node: &str) -> (Process, String) {
    let urls: Vec<String> = redis_ports.iter().map(|p| format!("\"redis://127.0.0.1:{p}\"")).collect();
    let urls = urls.join(", ");
    let config = format!(
        r#"[server]
workers = 1
[rate_limit]
messages_per_second = 0.0
bytes_per_second = "1GiB"
[limits]
send_queue_bytes = "64MiB"
[broker]
kind = "{kind}"
urls = [{urls}]
node_id = "{node}"
[auth]
hmac_secret = "{SECRET}"
[[namespace]]
name = "on"
subscribe = "anyone"
publish = "authenticated"
history_size = 1000
history_ttl = "5m"
recover = true
[[namespace]]
name = "off"
subscribe = "anyone"
publish = "authenticated"
"#
    );
    let path = dir.join(format!("{node}.toml"));
    std::fs::write(&path, config).expect("write the config");
    let binary = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/switchboard-mio");
    let mut child = Command::new(&binary)
        .arg("--config")
        .arg(&path)
        .args(["--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e} (cargo build --release --bins)", binary.display()));
    let mut line = String::new();
    let stdout = child.stdout.take().expect("stdout");
    BufReader::new(stdout).read_line(&mut line).expect("the address line");
    let addr = line.trim().strip_prefix("listening on ").expect("`listening on ADDR`").to_owned();
    (Process(child), addr)
}

fn connect(url: &str) -> tungstenite::WebSocket<TcpStream> {
    let host = url.trim_start_matches("ws://").split('/').next().expect("a host");
    let stream = TcpStream::connect(host).expect("connect");
    stream.set_read_timeout(Some(RUN_LIMIT)).expect("timeout");
    let (mut ws, _) = tungstenite::client(url, stream).expect("upgrade");
    let _welcome = ws.read().expect("welcome");
    ws
}

/// One run: the publications/s, or why it failed. The publisher is on node `publish_to`,
/// the subscribers on `addr`: every publication crosses Redis.
fn run(
    addr: &str,
    publish_to: &str,
    channel: &str,
    count: usize,
    subscribers: usize,
    size: usize,
    history: bool,
) -> Result<f64, String> {
    let (done_tx, done_rx) = mpsc::channel();
    let (ready_tx, ready_rx) = mpsc::channel();
    for _ in 0..subscribers {
        let (url, channel, done, ready) =
            (format!("ws://{addr}/ws"), channel.to_owned(), done_tx.clone(), ready_tx.clone());
        thread::spawn(move || {
            let mut ws = connect(&url);
            let subscribe = format!(r#"{{"op":"subscribe","channel":"{channel}","id":1}}"#);
            let _ = ws.send(Message::text(subscribe));
            let _reply = ws.read();
            let _ = ready.send(());
            let mut seen = 0usize;
            let mut gaps = 0usize;
            let mut last = 0u64;
            while seen < count {
                match ws.read() {
                    Ok(Message::Text(text)) if text.as_str().starts_with(r#"{"type":"message""#) => {
                        seen += 1;
                        if history {
                            let offset = text
                                .as_str()
                                .split(r#""offset":"#)
                                .nth(1)
                                .and_then(|rest| rest.split(',').next())
                                .and_then(|n| n.parse::<u64>().ok())
                                .unwrap_or(0);
                            if last != 0 && offset != last + 1 {
                                gaps += 1;
                            }
                            last = offset;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let _ = done.send(Err(format!("subscriber: {e} after {seen}")));
                        return;
                    }
                }
            }
            let _ = done.send(if gaps == 0 { Ok(Instant::now()) } else { Err(format!("{gaps} gaps in the offsets")) });
        });
    }
    for _ in 0..subscribers {
        ready_rx.recv_timeout(RUN_LIMIT).map_err(|_| "a subscriber never subscribed".to_owned())?;
    }
    // The subscribers' node must hold its Redis subscription before the first publish.
    thread::sleep(Duration::from_millis(300));
    let mut publisher = connect(&format!("ws://{publish_to}/ws?token={}", token("bench")));
    let data = format!("\"{}\"", "x".repeat(size.saturating_sub(2)));
    let op = format!(r#"{{"op":"publish","channel":"{channel}","data":{data}}}"#);
    let start = Instant::now();
    for _ in 0..count {
        publisher.write(Message::text(op.clone())).map_err(|e| format!("publish: {e}"))?;
    }
    publisher.flush().map_err(|e| format!("flush: {e}"))?;
    let mut last = start;
    for _ in 0..subscribers {
        let finished =
            done_rx.recv_timeout(RUN_LIMIT).map_err(|_| "a subscriber did not finish in time".to_owned())??;
        last = last.max(finished);
    }
    let _ = publisher.close(None);
    Ok(count as f64 / (last - start).as_secs_f64())
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_default();
    let numbers: Vec<usize> = args.map(|a| a.parse::<usize>().expect("numeric arguments")).collect();
    match mode.as_str() {
        "history" => history(&numbers),
        "shards" => shards(&numbers),
        _ => {
            eprintln!(
                "usage: redis_bench history [runs] [count] [subscribers] [size]\n       redis_bench shards [runs] [count] [channels]"
            );
            std::process::exit(2);
        }
    }
}

fn history(numbers: &[usize]) {
    let mut args = numbers.iter().copied();
    let runs = args.next().unwrap_or(3);
    let count = args.next().unwrap_or(20_000);
    let subscribers = args.next().unwrap_or(4);
    let size = args.next().unwrap_or(64);
    let dir = std::env::temp_dir().join(format!("history-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let redis_port = free_port();
    let _redis = start_redis(redis_port);
    let (_subscribers_node, addr) = start_server(&[redis_port], &dir, "sub");
    let (_publishers_node, publish_to) = start_server(&[redis_port], &dir, "pub");
    let (mut on, mut off) = (Vec::new(), Vec::new());
    let mut rows = Vec::new();
    for r in 0..runs {
        for (history, results) in [(false, &mut off), (true, &mut on)] {
            let channel = format!("{}:run{r}", if history { "on" } else { "off" });
            match run(&addr, &publish_to, &channel, count, subscribers, size, history) {
                Ok(rate) => {
                    println!("run {r} history {}: {rate:.0} publications/s", if history { "on " } else { "off" });
                    rows.push(format!(r#"{{"run":{r},"history":{history},"publications_per_sec":{rate:.0}}}"#));
                    results.push(rate);
                }
                Err(e) => {
                    println!("run {r} history {history}: failed: {e}");
                    rows.push(format!(r#"{{"run":{r},"history":{history},"error":{:?}}}"#, e));
                }
            }
        }
    }
    let (m_on, m_off) = (median(&mut on), median(&mut off));
    let ratio = if m_off > 0.0 { m_on / m_off } else { 0.0 };
    println!(
        "median of {runs}: history off {m_off:.0}/s, history on {m_on:.0}/s, on/off {ratio:.2} \
         ({count} publications of {size} B, {subscribers} subscribers on another node than the publisher, one Redis)"
    );
    let json = format!(
        "{{\"count\":{count},\"subscribers\":{subscribers},\"size\":{size},\"median_off\":{m_off:.0},\"median_on\":{m_on:.0},\"ratio\":{ratio:.3},\"runs\":[\n{}\n]}}\n",
        rows.join(",\n")
    );
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("results/history.json");
    if let Err(e) = std::fs::File::create(&out).and_then(|mut f| f.write_all(json.as_bytes())) {
        eprintln!("{}: {e}", out.display());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// One sharded run: `count` publications from four publishers on `publish_to` over
/// `channels`, each read by one subscriber on each node of `readers`.
fn shard_run(publish_to: &str, readers: &[String], channels: usize, count: usize, tag: &str) -> Result<f64, String> {
    let per_channel = count / channels;
    let (done_tx, done_rx) = mpsc::channel();
    let (ready_tx, ready_rx) = mpsc::channel();
    let mut expected = 0;
    for reader in readers {
        for c in 0..channels {
            let (url, channel) = (format!("ws://{reader}/ws"), format!("{tag}-{c}"));
            let (done, ready) = (done_tx.clone(), ready_tx.clone());
            expected += 1;
            thread::spawn(move || {
                let mut ws = connect(&url);
                let _ = ws.send(Message::text(format!(r#"{{"op":"subscribe","channel":"{channel}","id":1}}"#)));
                let _reply = ws.read();
                let _ = ready.send(());
                let mut seen = 0;
                while seen < per_channel {
                    match ws.read() {
                        Ok(Message::Text(text)) if text.as_str().starts_with(r#"{"type":"message""#) => seen += 1,
                        Ok(_) => {}
                        Err(e) => {
                            let _ = done.send(Err(format!("subscriber: {e} after {seen}")));
                            return;
                        }
                    }
                }
                let _ = done.send(Ok(Instant::now()));
            });
        }
    }
    for _ in 0..expected {
        ready_rx.recv_timeout(RUN_LIMIT).map_err(|_| "a subscriber never subscribed".to_owned())?;
    }
    // Every node's subscription reaches Redis before the first publish.
    thread::sleep(Duration::from_millis(500));
    let publishers = 4;
    let start = Instant::now();
    let mut handles = Vec::new();
    for p in 0..publishers {
        let (url, tag) = (format!("ws://{publish_to}/ws"), tag.to_owned());
        handles.push(thread::spawn(move || -> Result<(), String> {
            let mut ws = connect(&url);
            for c in (p..channels).step_by(publishers) {
                let op = format!(r#"{{"op":"publish","channel":"{tag}-{c}","data":"{}"}}"#, "x".repeat(48));
                for _ in 0..per_channel {
                    ws.write(Message::text(op.clone())).map_err(|e| format!("publish: {e}"))?;
                }
            }
            ws.flush().map_err(|e| format!("flush: {e}"))?;
            // Keep the socket open until the subscribers are done (closing could drop the tail).
            thread::sleep(Duration::from_secs(1));
            Ok(())
        }));
    }
    let mut last = start;
    for _ in 0..expected {
        let finished =
            done_rx.recv_timeout(RUN_LIMIT).map_err(|_| "a subscriber did not finish in time".to_owned())??;
        last = last.max(finished);
    }
    for handle in handles {
        handle.join().map_err(|_| "a publisher panicked".to_owned())??;
    }
    Ok((per_channel * channels) as f64 / (last - start).as_secs_f64())
}

/// `redis-benchmark`'s `PUBLISH` rate on one instance (64 B, pipeline 64).
fn redis_ceiling(port: u16) -> Option<f64> {
    let out = Command::new("redis-benchmark")
        .args(["-p", &port.to_string(), "-n", "200000", "-P", "64", "-q", "PUBLISH", "bench", &"x".repeat(64)])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // The last report line: "PUBLISH …: 1234567.00 requests per second, p50=…".
    let line = text.rsplit('\r').next()?.lines().find(|l| l.contains("requests per second"))?.to_owned();
    line.split(": ").last()?.split(' ').next()?.parse().ok()
}

/// A Redis Cluster of `masters` masters (no replicas) on free ports whose bus ports are free.
fn start_cluster(masters: usize, dir: &std::path::Path) -> (Vec<Process>, Vec<u16>) {
    let mut ports = Vec::new();
    while ports.len() < masters {
        let port = free_port();
        if port <= 55_535 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            ports.push(port);
        }
    }
    let mut servers = Vec::new();
    for &port in &ports {
        let node_dir = dir.join(format!("cluster-{port}"));
        std::fs::create_dir_all(&node_dir).expect("a node directory");
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"])
            .arg("--dir")
            .arg(&node_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (apt-get install -y redis-server)");
        servers.push(Process(child));
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not listen on {port}");
            thread::sleep(Duration::from_millis(20));
        }
    }
    let status = Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(ports.iter().map(|p| format!("127.0.0.1:{p}")))
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .stdout(Stdio::null())
        .status()
        .expect("redis-cli runs");
    assert!(status.success(), "redis-cli --cluster create failed");
    let deadline = Instant::now() + Duration::from_secs(20);
    for &port in &ports {
        loop {
            let out = Command::new("redis-cli").args(["-p", &port.to_string(), "cluster", "info"]).output();
            if out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("cluster_state:ok")) {
                break;
            }
            assert!(Instant::now() < deadline, "the cluster did not become ok");
            thread::sleep(Duration::from_millis(100));
        }
    }
    (servers, ports)
}

fn shards(numbers: &[usize]) {
    let mut args = numbers.iter().copied();
    let runs = args.next().unwrap_or(3);
    let count = args.next().unwrap_or(40_000);
    let channels = args.next().unwrap_or(64);
    let dir = std::env::temp_dir().join(format!("redis-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let mut rows = Vec::new();
    let mut medians = Vec::new();
    let mut ceilings = Vec::new();
    // 0 stands for the 3-master Redis Cluster.
    for instances in [1usize, 2, 4, 0] {
        let (_redis, ports, kind) = if instances == 0 {
            let (servers, ports) = start_cluster(3, &dir);
            (servers, ports, "redis-cluster")
        } else {
            let ports: Vec<u16> = (0..instances).map(|_| free_port()).collect();
            (ports.iter().map(|&p| start_redis(p)).collect(), ports, "redis")
        };
        let nodes: Vec<(Process, String)> = (1..=3).map(|n| start_node(kind, &ports, &dir, &format!("n{n}"))).collect();
        // A cluster node reads the slot map first.
        thread::sleep(Duration::from_millis(500));
        let name = if instances == 0 { "3-master cluster".to_owned() } else { format!("{instances} instance(s)") };
        let readers = vec![nodes[1].1.clone(), nodes[2].1.clone()];
        let mut rates = Vec::new();
        for r in 0..runs {
            match shard_run(&nodes[0].1, &readers, channels, count, &format!("r{r}")) {
                Ok(rate) => {
                    println!("{name}, run {r}: {rate:.0} publications/s");
                    rows.push(format!(r#"{{"setup":"{name}","run":{r},"publications_per_sec":{rate:.0}}}"#));
                    rates.push(rate);
                }
                Err(e) => {
                    println!("{name}, run {r}: failed: {e}");
                    rows.push(format!(r#"{{"setup":"{name}","run":{r},"error":{e:?}}}"#));
                }
            }
        }
        if instances == 1 {
            for _ in 0..runs {
                if let Some(ceiling) = redis_ceiling(ports[0]) {
                    println!("redis-benchmark PUBLISH on one instance: {ceiling:.0}/s");
                    ceilings.push(ceiling);
                }
            }
        }
        medians.push((name, median(&mut rates)));
    }
    let ceiling = median(&mut ceilings);
    let one = medians.first().map_or(0.0, |m| m.1);
    for (instances, rate) in &medians {
        let growth = if one > 0.0 { rate / one } else { 0.0 };
        println!("median of {runs}: {instances}: {rate:.0} publications/s, {growth:.2}x one instance");
    }
    if ceiling > 0.0 {
        println!("one instance at {:.0}% of redis-benchmark's PUBLISH ({ceiling:.0}/s)", 100.0 * one / ceiling);
    }
    let summary: Vec<String> = medians.iter().map(|(i, r)| format!(r#""{i}":{r:.0}"#)).collect();
    let json = format!(
        "{{\"count\":{count},\"channels\":{channels},\"ceiling\":{ceiling:.0},\"medians\":{{{}}},\"runs\":[\n{}\n]}}\n",
        summary.join(","),
        rows.join(",\n")
    );
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("results/shards.json");
    if let Err(e) = std::fs::File::create(&out).and_then(|mut f| f.write_all(json.as_bytes())) {
        eprintln!("{}: {e}", out.display());
    }
    let _ = std::fs::remove_dir_all(&dir);
}
