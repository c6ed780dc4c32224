//! `tokio-hub`: the reference peer in BENCHMARKS.md. A broadcast hub written the way a tokio
//! user would write one: a task per connection reading, a writer task per connection fed by a
//! `tokio::sync::broadcast` channel, tungstenite doing the framing per connection.
//!
//! Same semantics as Switchboard's broadcast route: every message from any client goes to every
//! connected client, the sender included, unchanged. A client that falls more than `CAPACITY`
//! messages behind is disconnected, as Switchboard's default slow-consumer policy does.
//!
//! `tokio-hub [--listen 127.0.0.1:8080] [--workers N]` prints `listening on ADDR` when ready.

use std::io;
use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::broadcast::{self, error::TryRecvError};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Messages a writer may fall behind before it is dropped.
const CAPACITY: usize = 1024;
/// As the brief for this peer says: 4 KiB instead of tungstenite's 128 KiB default, which
/// would dominate the idle memory figure.
const READ_BUFFER: usize = 4096;
/// Switchboard's listener backlog, so a connect storm meets the same queue.
const BACKLOG: u32 = 4096;

fn main() -> io::Result<()> {
    let mut listen = "127.0.0.1:8080".to_owned();
    let mut workers = 0;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next();
        match (arg.as_str(), value) {
            ("--listen", Some(v)) => listen = v,
            ("--workers", Some(v)) => workers = v.parse().map_err(|e| invalid(format!("--workers {v}: {e}")))?,
            _ => return Err(invalid(format!("usage: tokio-hub [--listen ADDR] [--workers N] (got {arg:?})"))),
        }
    }
    let addr: SocketAddr = listen.parse().map_err(|e| invalid(format!("--listen {listen}: {e}")))?;
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if workers > 0 {
        runtime.worker_threads(workers);
    }
    runtime.enable_all().build()?.block_on(serve(addr))
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

async fn serve(addr: SocketAddr) -> io::Result<()> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    let listener: TcpListener = socket.listen(BACKLOG)?;
    println!("listening on {}", listener.local_addr()?);
    let (hub, _) = broadcast::channel::<Message>(CAPACITY);
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(connection(stream, hub.clone()));
            }
            // Out of descriptors or a connection reset before accept: the next one may do.
            Err(e) => {
                eprintln!("accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

async fn connection(stream: TcpStream, hub: broadcast::Sender<Message>) {
    let _ = stream.set_nodelay(true);
    let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER);
    let Ok(ws) = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await else {
        return;
    };
    let (mut sink, mut source) = ws.split();
    let mut inbox = hub.subscribe();
    let writer = tokio::spawn(async move {
        while let Ok(message) = inbox.recv().await {
            if sink.feed(message).await.is_err() {
                return;
            }
            // What is already waiting goes out with it in one flush, as a careful user would
            // write it; a flush per message would make this peer a strawman.
            loop {
                match inbox.try_recv() {
                    Ok(message) => {
                        if sink.feed(message).await.is_err() {
                            return;
                        }
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(_) => {
                        let _ = sink.close().await;
                        return;
                    }
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
        // Lagged or closed: say goodbye rather than vanish.
        let _ = sink.close().await;
    });
    while let Some(Ok(message)) = source.next().await {
        match message {
            Message::Text(_) | Message::Binary(_) => {
                let _ = hub.send(message);
            }
            Message::Close(_) => break,
            // tungstenite answers pings on its own.
            _ => {}
        }
    }
    writer.abort();
}
