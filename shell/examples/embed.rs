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

use switchboard_core::{Config, ConnId, Event, Hub};

fn main() -> std::io::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:9001".to_owned());
    let listener = TcpListener::bind(&addr)?;
    listener.set_nonblocking(true)?;
    println!("listening on {}", listener.local_addr()?);
    let mut hub = Hub::new(Config::default(), "embed").map_err(std::io::Error::other)?;
    let mut sockets: HashMap<ConnId, TcpStream> = HashMap::new();
    let mut buf = vec![0u8; 64 * 1024];
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
        if hub.poll_timeout().is_some_and(|at| at <= now) {
            hub.handle_timeout(now);
        }
        // Write before acting on close events, so a final close frame or HTTP error goes out.
        for (&id, stream) in &mut sockets {
            while hub.wants_write(id) {
                let mut slices = [IoSlice::new(&[]); 64];
                let n = hub.transmit(id, &mut slices);
                match stream.write_vectored(&slices[..n]) {
                    Ok(written) => hub.consume(id, written),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => {
                        hub.handle_eof(now, id);
                        break;
                    }
                }
            }
        }
        while let Some(event) = hub.poll_event() {
            match event {
                Event::Close(id) => {
                    sockets.remove(&id);
                }
                Event::Transmit(_) => busy = true,
            }
        }
        // One hub and no other node: broker commands have nowhere to go.
        while hub.poll_broker().is_some() {}
        if !busy {
            let until_timer =
                hub.poll_timeout().map_or(Duration::from_millis(5), |at| at.saturating_duration_since(now));
            std::thread::sleep(until_timer.min(Duration::from_millis(5)));
        }
    }
}
