//! Serves the echo route (and the rest of the embedded defaults) from a plain `std::net`
//! non-blocking loop: no runtime crate, just the core. Run it with
//! `cargo run -p switchboard-shell --example embed -- 127.0.0.1:9001`.
//!
//! It polls every socket each turn, which is fine for a demonstration; a real shell waits on
//! readiness (see runtime-mio).

use std::collections::HashMap;
use std::io::{ErrorKind, IoSlice, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use switchboard_core::{Config, ConnId, Hub, Output, WebhookOutcome};

fn main() -> std::io::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:9001".to_owned());
    let listener = TcpListener::bind(&addr)?;
    listener.set_nonblocking(true)?;
    println!("listening on {}", listener.local_addr()?);
    let mut hub = Hub::new(Config::default(), "embed").map_err(std::io::Error::other)?;
    let mut sockets: HashMap<ConnId, TcpStream> = HashMap::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut timeout: Option<Instant> = None;
    loop {
        let now = Instant::now();
        let mut busy = false;
        loop {
            match listener.accept() {
                Ok((stream, peer)) => {
                    stream.set_nonblocking(true)?;
                    stream.set_nodelay(true)?;
                    sockets.insert(hub.handle_accept(now, peer), stream);
                    busy = true;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => eprintln!("accept: {e}"),
            }
        }
        for (&id, stream) in &mut sockets {
            loop {
                match stream.read(&mut buf) {
                    Ok(0) => {
                        hub.handle_eof(now, id);
                        break;
                    }
                    Ok(n) => {
                        hub.handle_bytes(now, id, &buf[..n]);
                        busy = true;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => {
                        hub.handle_eof(now, id);
                        break;
                    }
                }
            }
        }
        // A socket that could not take everything is tried again each turn.
        for (&id, stream) in &mut sockets {
            if hub.wants_write(id) {
                busy = true;
                let mut slices = [IoSlice::new(&[]); 64];
                let n = hub.transmit(id, &mut slices);
                if let Ok(written) = stream.write_vectored(&slices[..n]) {
                    hub.handle_written(now, id, written);
                }
            }
        }
        if timeout.is_some_and(|at| at <= now) {
            hub.handle_timeout(now);
        }
        // After every input, poll until `Timeout`: nothing is left behind then. Writing is an
        // input too (`handle_written`), so the loop goes on until the hub has nothing to say.
        loop {
            match hub.poll_output() {
                Output::Transmit(id) => {
                    busy = true;
                    let Some(stream) = sockets.get_mut(&id) else { continue };
                    let mut slices = [IoSlice::new(&[]); 64];
                    let n = hub.transmit(id, &mut slices);
                    match stream.write_vectored(&slices[..n]) {
                        Ok(written) => hub.handle_written(now, id, written),
                        // Left queued: `wants_write` says so, and the next turn tries again.
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                        Err(_) => hub.handle_eof(now, id),
                    }
                }
                Output::Close(id) => {
                    sockets.remove(&id);
                }
                // One hub, no other node: a lone hub asks for neither.
                Output::Broker(_) | Output::RedisOpen { .. } | Output::RedisTransmit(_) | Output::RedisClose(_) => {}
                // The defaults configure no webhook; this loop sends none (`switchboard_shell::Webhooks`
                // does), so one asked for fails and the hub's retry policy decides.
                Output::Webhook(request) => hub.handle_webhook_done(now, request.id, WebhookOutcome::Failed),
                Output::Timeout(at) => {
                    timeout = at;
                    break;
                }
            }
        }
        if !busy {
            let until_timer = timeout.map_or(Duration::from_millis(5), |at| at.saturating_duration_since(now));
            std::thread::sleep(until_timer.min(Duration::from_millis(5)));
        }
    }
}
