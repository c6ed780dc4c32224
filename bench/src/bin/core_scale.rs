//! `core_scale`: one `Hub` holding N simulated open connections (default 1,000,000), all on
//! one broadcast room. Prints the heap bytes per connection (counting allocator) and the time
//! to publish one 64-byte message to all of them (frame once + enqueue to every queue).
//!
//! `cargo run --release -p switchboard-bench --bin core_scale -- [connections] [rounds]`

use std::io::IoSlice;
use std::net::SocketAddr;
use std::time::Instant;

use switchboard_bench::Counting;
use switchboard_core::{Config, ConnId, Hub, Output};

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const REQUEST: &[u8] = b"GET /chat HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

fn main() {
    let mut args = std::env::args().skip(1);
    let connections: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1_000_000);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let config = Config::from_toml(&format!(
        "[limits]\nmax_connections = {connections}\nmax_connections_per_ip = 0\nconnect_rate_per_ip = 0.0\n\
         send_queue_bytes = \"1MiB\"\n[[route]]\npath = \"/chat\"\nmode = \"broadcast\"\n"
    ))
    .expect("benchmark config is valid");
    let t0 = Instant::now();
    let before = Counting::live();
    let mut hub = Hub::new(config, "bench").expect("the benchmark config is valid");
    let mut ids = Vec::with_capacity(connections);
    let setup = Instant::now();
    for n in 0..connections {
        let peer = SocketAddr::from(([10, (n >> 16) as u8, (n >> 8) as u8, n as u8], 40000));
        let id = hub.handle_accept(t0, peer);
        hub.handle_bytes(t0, id, REQUEST);
        drain(&mut hub, t0, id);
        ids.push(id);
    }
    while !matches!(hub.poll_output(), Output::Timeout(_)) {}
    let ids_bytes = ids.capacity() * size_of::<ConnId>();
    let held = Counting::live() - before - ids_bytes;
    println!("connections: {connections} (set up in {:.2?})", setup.elapsed());
    println!("heap bytes per idle connection: {:.0}", held as f64 / connections as f64);
    let message = [b'x'; 64];
    let mut timings = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let start = Instant::now();
        hub.handle_broadcast(t0, "/chat", true, &message).expect("route exists");
        let elapsed = start.elapsed();
        timings.push(elapsed);
        // Not timed: the shell's side (events, writes) is measured by the load benchmarks.
        let mut transmits = 0usize;
        loop {
            match hub.poll_output() {
                Output::Transmit(id) => {
                    drain(&mut hub, t0, id);
                    transmits += 1;
                }
                Output::Timeout(_) => break,
                _ => {}
            }
        }
        assert_eq!(transmits, connections, "every connection got the message");
    }
    timings.sort();
    let median = timings[timings.len() / 2];
    let per_million = median.as_secs_f64() * 1e6 / connections as f64;
    println!(
        "publish 64 B to {connections}: median {:.2?} over {rounds} rounds (min {:.2?}, max {:.2?})",
        median,
        timings[0],
        timings[timings.len() - 1]
    );
    println!("time per million deliveries enqueued: {:.1} ms", per_million * 1e3);
    println!("hub metrics: messages_out = {}", hub.metrics().messages_out);
}

/// Takes everything queued for `id`, as a socket that accepts it all would.
fn drain(hub: &mut Hub, now: Instant, id: ConnId) {
    loop {
        let mut slices = [IoSlice::new(&[]); 8];
        let n = hub.transmit(id, &mut slices);
        if n == 0 {
            return;
        }
        let written = slices[..n].iter().map(|s| s.len()).sum();
        hub.handle_written(now, id, written);
    }
}
