//! `floor`: what one small write to a loopback TCP socket costs the kernel, with no server in
//! the way. A single-threaded hub broadcasting to N sockets pays at least N of these before the
//! last subscriber can have the message, so N times this figure is the floor under its
//! broadcast latency.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Instant;

use serde_json::{Value, json};

use crate::args::Args;
use crate::measure::{self, round3};

pub(crate) fn floor(args: &mut Args) -> Result<Value, String> {
    let conns: usize = args.take("conns", 1000)?;
    let size: usize = args.take("size", 64)?;
    let rounds: usize = args.take("rounds", 20)?;
    if conns == 0 || rounds == 0 {
        return Err("--conns and --rounds must be at least 1".to_owned());
    }
    // Two descriptors per pair, both in this process.
    measure::ensure_descriptors(2 * conns)?;
    let fail = |what: &str, e: std::io::Error| format!("{what}: {e}");
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| fail("bind", e))?;
    let addr = listener.local_addr().map_err(|e| fail("local_addr", e))?;
    let mut pairs = Vec::with_capacity(conns);
    for _ in 0..conns {
        let client = TcpStream::connect(addr).map_err(|e| fail("connect", e))?;
        let (server, _) = listener.accept().map_err(|e| fail("accept", e))?;
        server.set_nodelay(true).map_err(|e| fail("nodelay", e))?;
        pairs.push((server, client));
    }
    // A 2-byte WebSocket header and the payload: the bytes a hub writes per subscriber.
    let frame = vec![0x82; size + 2];
    let mut sink = vec![0; 64 * 1024];
    let mut all = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let start = Instant::now();
        for (server, _) in &mut pairs {
            server.write_all(&frame).map_err(|e| fail("write", e))?;
        }
        let per_write = start.elapsed().as_secs_f64() * 1e6 / conns as f64;
        all.push(per_write);
        // Untimed: empty the receivers so the next round writes into the same state.
        for (_, client) in &mut pairs {
            let mut left = frame.len();
            while left > 0 {
                left -= client.read(&mut sink[..left]).map_err(|e| fail("read", e))?;
            }
        }
    }
    all.sort_by(f64::total_cmp);
    Ok(json!({
        "conns": conns,
        "size": size,
        "rounds": rounds,
        "write_us_median": round3(all[all.len() / 2]),
        "write_us_best": round3(all[0]),
    }))
}
