//! Cross-node delivery latency: three nodes of one shell around a fresh `redis-server`,
//! subscribers spread evenly over them, one publisher on node 1 whose payloads carry their send
//! time. Prints p50/p99/max for the publisher's own node and for the two others.
//!
//! Run it through `scripts/cluster-latency`, which builds the binaries first:
//!
//! ```text
//! cargo run --release -p switchboard-tests --example cluster_latency -- \
//!     [--bin PATH] [--subs 1000] [--messages 500] [--rate 50] [--workers 1]
//! ```
//!
//! Clients, servers and Redis share the machine, so the figures include their competition for
//! its cores. The subscribers are read by one thread over mio, so that the client side costs a
//! read per delivery rather than a thread wake-up.

use std::collections::BTreeSet;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use switchboard_tests::cluster::{Redis, start_nodes};
use switchboard_tests::{PubSub, binaries, decode_frame, op};

/// Messages whose latency is not counted: connections and caches warm up.
const WARM_UP: usize = 20;
/// How long the last message may take to reach everyone.
const ARRIVAL: Duration = Duration::from_secs(10);

struct Options {
    bins: Vec<PathBuf>,
    subs: usize,
    messages: usize,
    rate: f64,
    workers: usize,
}

fn options() -> Result<Options, String> {
    let mut options = Options { bins: Vec::new(), subs: 1000, messages: 500, rate: 50.0, workers: 1 };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag}: missing value"))?;
        let number = || value.parse::<usize>().map_err(|_| format!("{flag}: expected a whole number, got {value:?}"));
        match flag.as_str() {
            "--bin" => options.bins.push(PathBuf::from(&value)),
            "--subs" => options.subs = number()?.max(3),
            "--messages" => options.messages = number()?.max(WARM_UP + 1),
            "--rate" => {
                options.rate = value.parse().map_err(|_| format!("--rate: expected a number, got {value:?}"))?
            }
            "--workers" => options.workers = number()?.max(1),
            _ => return Err(format!("unknown argument {flag:?}")),
        }
    }
    if options.bins.is_empty() {
        options.bins = binaries();
    }
    if !(options.rate > 0.0 && options.rate <= 10_000.0) {
        return Err("--rate: between 0 and 10000 messages a second".to_owned());
    }
    Ok(options)
}

fn main() {
    let options = match options() {
        Ok(options) => options,
        Err(e) => {
            eprintln!("cluster_latency: {e}");
            std::process::exit(2);
        }
    };
    for bin in &options.bins {
        measure(bin, &options);
    }
}

/// A subscriber as the reading loop sees it.
struct Sub {
    stream: TcpStream,
    buf: Vec<u8>,
    same_node: bool,
    received: usize,
}

fn measure(bin: &Path, options: &Options) {
    let Some(redis) = Redis::start() else { std::process::exit(1) };
    let nodes = start_nodes(bin, redis.port, 3, options.workers);
    let poll = Poll::new().unwrap_or_else(|e| panic!("poll: {e}"));
    let mut hubs = BTreeSet::new();
    let mut subs: Vec<Sub> = (0..options.subs)
        .map(|i| {
            let mut client = PubSub::connect(&nodes[i % 3], "/ws");
            client.expect_ack(r#"{"op":"subscribe","channel":"lat","id":1}"#, 1);
            hubs.insert(client.hub());
            let stream = client.ws.into_inner();
            stream.set_nonblocking(true).unwrap_or_else(|e| panic!("nonblocking: {e}"));
            let mut stream = TcpStream::from_std(stream);
            poll.registry()
                .register(&mut stream, Token(i), Interest::READABLE)
                .unwrap_or_else(|e| panic!("register: {e}"));
            Sub { stream, buf: Vec::new(), same_node: i % 3 == 0, received: 0 }
        })
        .collect();
    redis.wait_subscribed("lat", hubs.len(), Duration::from_secs(10));

    let mut publisher = PubSub::connect(&nodes[0], "/ws");
    let start = Instant::now();
    let (messages, interval) = (options.messages, Duration::from_secs_f64(1.0 / options.rate));
    let publishing = thread::spawn(move || {
        for i in 0..messages {
            let due = start + interval * i as u32;
            thread::sleep(due.saturating_duration_since(Instant::now()));
            let sent = start.elapsed().as_micros();
            publisher.send(&format!(r#"{{"op":"publish","channel":"lat","data":{{"i":{i},"t":{sent}}}}}"#));
        }
        publisher
    });

    let (mut local, mut remote) = (Vec::new(), Vec::new());
    // The first arrival of each message per side: the path itself, without the wait for the
    // other subscribers' writes and reads ahead of it.
    let mut first = [vec![Duration::MAX; options.messages], vec![Duration::MAX; options.messages]];
    let total = options.subs * options.messages;
    let mut received = 0;
    let deadline = start + interval * options.messages as u32 + ARRIVAL;
    let mut events = Events::with_capacity(1024);
    let mut chunk = vec![0u8; 64 * 1024];
    let mut poll = poll;
    while received < total && Instant::now() < deadline {
        if let Err(e) = poll.poll(&mut events, Some(Duration::from_millis(100))) {
            assert_eq!(e.kind(), io::ErrorKind::Interrupted, "poll: {e}");
            continue;
        }
        for event in &events {
            let Some(sub) = subs.get_mut(event.token().0) else { continue };
            loop {
                match sub.stream.read(&mut chunk) {
                    Ok(0) => panic!("a server closed a subscriber"),
                    Ok(n) => sub.buf.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => panic!("read: {e}"),
                }
            }
            let at = Instant::now();
            let mut used = 0;
            while let Some((frame, n)) = decode_frame(&sub.buf[used..]) {
                used += n;
                if frame.opcode != op::TEXT {
                    continue;
                }
                let Ok(value) = serde_json::from_slice::<serde_json::Value>(&frame.payload) else { continue };
                let (Some(i), Some(sent)) = (value["data"]["i"].as_u64(), value["data"]["t"].as_u64()) else {
                    continue;
                };
                sub.received += 1;
                received += 1;
                if i as usize >= WARM_UP {
                    let latency = at.duration_since(start + Duration::from_micros(sent));
                    if sub.same_node {
                        local.push(latency)
                    } else {
                        remote.push(latency)
                    }
                    if let Some(min) = first[usize::from(!sub.same_node)].get_mut(i as usize) {
                        *min = (*min).min(latency);
                    }
                }
            }
            sub.buf.drain(..used);
        }
    }
    let _publisher = publishing.join();
    let name = bin.file_name().map_or_else(|| bin.display().to_string(), |n| n.to_string_lossy().into_owned());
    println!(
        "{name}: {} subscribers on 3 nodes ({} worker(s) each), {} messages at {}/s",
        options.subs, options.workers, options.messages, options.rate
    );
    report("  same node, every delivery ", &mut local);
    report("  cross-node, every delivery", &mut remote);
    let [mut local_first, mut remote_first] =
        first.map(|v| v.into_iter().filter(|d| *d < Duration::MAX).collect::<Vec<_>>());
    report("  same node, first delivery ", &mut local_first);
    report("  cross-node, first delivery", &mut remote_first);
    if received < total {
        let short = subs.iter().filter(|s| s.received < options.messages).count();
        println!("  {} of {total} deliveries missing, on {short} subscriber(s)", total - received);
    }
}

fn report(label: &str, samples: &mut [Duration]) {
    if samples.is_empty() {
        println!("{label}: no samples");
        return;
    }
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{label}: {:>6} samples, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        samples.len(),
        ms(at(0.5)),
        ms(at(0.99)),
        ms(at(1.0))
    );
}
