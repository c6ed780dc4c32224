//! Webhook deliveries: the hubs' `Output::Webhook` requests, performed on a few threads of the
//! node's own so that a slow or silent receiver never holds up a worker's turn. Each outcome
//! goes back to the worker whose hub asked, as [`Message::WebhookDone`], through that worker's
//! [`Post`], which wakes it like any other message.
//!
//! The hub decides what to send, when, and what to retry: here a request is sent once, any
//! answer is its status (a 4xx or 5xx too), and no answer is `Failed`.

use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use log::{debug, warn};
use switchboard_core::{WebhookOutcome, WebhookRequest};
use ureq::Agent;

use crate::{Message, Post};

/// How long one delivery may take, connecting included, before it is `Failed`.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// At most this many delivery threads per node, whatever the worker count.
pub const MAX_THREADS: usize = 4;
/// Requests waiting for a thread; one more is reported `Failed` at once.
const QUEUE: usize = 1024;
/// What is read of a response body (and dropped) so that its connection can serve the next.
const RESPONSE_LIMIT: u64 = 64 * 1024;

/// One request and the way back to the worker that asked.
struct Job {
    request: WebhookRequest,
    reply: Post,
}

/// The node's delivery threads. Workers reach them through a [`WebhookClient`] each.
#[derive(Debug)]
pub struct Webhooks {
    jobs: Option<SyncSender<Job>>,
    /// Set once every worker has ended: what is still queued is dropped, not sent.
    stop: Arc<AtomicBool>,
    /// Disconnected once every thread has ended (each holds a sender).
    ended: Receiver<()>,
    threads: Vec<thread::JoinHandle<()>>,
}

/// A worker's way to the node's delivery threads: requests go in, and each outcome comes back
/// to this worker's [`Post`] as [`Message::WebhookDone`].
#[derive(Clone)]
pub struct WebhookClient {
    jobs: SyncSender<Job>,
    reply: Post,
}

impl Webhooks {
    /// Starts `threads` delivery threads (at least one), each request bounded by `timeout`.
    pub fn start(threads: usize, timeout: Duration) -> io::Result<Self> {
        Self::with_agent(threads, agent(timeout, true))
    }

    fn with_agent(threads: usize, agent: Agent) -> io::Result<Self> {
        let (jobs, queue) = mpsc::sync_channel::<Job>(QUEUE);
        let queue = Arc::new(Mutex::new(queue));
        let stop = Arc::new(AtomicBool::new(false));
        let (alive, ended) = mpsc::channel();
        let mut pool = Self { jobs: Some(jobs), stop, ended, threads: Vec::new() };
        for index in 0..threads.max(1) {
            let (queue, agent, stop, alive) =
                (Arc::clone(&queue), agent.clone(), Arc::clone(&pool.stop), alive.clone());
            let thread = thread::Builder::new()
                .name(format!("webhook-{index}"))
                .spawn(move || deliver_queued(&queue, &agent, &stop, alive))?;
            pool.threads.push(thread);
        }
        Ok(pool)
    }

    /// A client for the worker that `reply` reaches.
    pub fn client(&self, reply: Post) -> Option<WebhookClient> {
        Some(WebhookClient { jobs: self.jobs.clone()?, reply })
    }

    /// Once every worker has ended (their clients dropped): drops what is still queued and
    /// waits up to `grace` for the deliveries in flight. Threads still busy then are left to
    /// end on their own; they keep nothing alive, so the process exits without them.
    pub fn shutdown(mut self, grace: Duration) {
        self.stop.store(true, Ordering::Relaxed);
        self.jobs = None;
        let deadline = Instant::now() + grace;
        loop {
            match self.ended.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(()) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    for thread in self.threads.drain(..) {
                        let _ = thread.join();
                    }
                    return;
                }
                Err(RecvTimeoutError::Timeout) => {
                    debug!("webhooks: leaving deliveries in flight behind");
                    return;
                }
            }
        }
    }
}

impl Drop for Webhooks {
    /// Without `shutdown` (an early error): the threads drop what is queued and end once the
    /// last client is gone.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl WebhookClient {
    /// Queues `request`; false when it cannot be (the queue is full, or the threads are gone),
    /// which the caller reports as `Failed`.
    pub fn send(&self, request: WebhookRequest) -> bool {
        match self.jobs.try_send(Job { request, reply: Arc::clone(&self.reply) }) {
            Ok(()) => true,
            Err(TrySendError::Full(job)) => {
                warn!(
                    "webhook {} to {}: {QUEUE} deliveries already waiting",
                    job.request.id,
                    loggable(&job.request.url)
                );
                false
            }
            Err(TrySendError::Disconnected(job)) => {
                warn!("webhook {} to {}: no delivery thread", job.request.id, loggable(&job.request.url));
                false
            }
        }
    }
}

impl std::fmt::Debug for WebhookClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookClient").finish_non_exhaustive()
    }
}

/// The client every thread shares (with its connection pool): one try per request, no
/// redirects followed (a 3xx is the receiver's answer), any status returned as is.
fn agent(timeout: Duration, proxy_from_env: bool) -> Agent {
    let mut config = Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .max_redirects(0)
        .user_agent(concat!("switchboard/", env!("CARGO_PKG_VERSION")));
    if !proxy_from_env {
        config = config.proxy(None);
    }
    config.build().into()
}

/// A delivery thread: takes requests until the last client is gone.
fn deliver_queued(queue: &Mutex<Receiver<Job>>, agent: &Agent, stop: &AtomicBool, _alive: Sender<()>) {
    loop {
        // The lock is held only while waiting; another thread waits for it meanwhile.
        let job = queue.lock().unwrap_or_else(PoisonError::into_inner).recv();
        let Ok(Job { request, reply }) = job else { return };
        if stop.load(Ordering::Relaxed) {
            // Its worker has ended: nobody would hear how it went.
            continue;
        }
        deliver(agent, &request, |outcome| reply(Message::WebhookDone { id: request.id, outcome }));
    }
}

/// Sends `request` and hands its outcome to `done` as soon as it is known; then reads a little
/// of the response, so that its connection can be used again. Header values and bodies carry
/// signatures and secrets: they are never logged.
fn deliver(agent: &Agent, request: &WebhookRequest, done: impl FnOnce(WebhookOutcome)) {
    let url = loggable(&request.url);
    let mut post = agent.post(request.url.as_str());
    for (name, value) in &request.headers {
        post = post.header(name, value);
    }
    match post.send(request.body.as_slice()) {
        Ok(mut response) => {
            let status = response.status().as_u16();
            debug!("webhook {} to {url}: {status}", request.id);
            done(WebhookOutcome::Status(status));
            let mut rest = response.body_mut().with_config().limit(RESPONSE_LIMIT).reader();
            let _ = io::copy(&mut rest.by_ref(), &mut io::sink());
        }
        Err(e) => {
            warn!("webhook {} to {url}: {e}", request.id);
            done(WebhookOutcome::Failed);
        }
    }
}

/// The URL without credentials in it (`https://user:secret@host/`).
fn loggable(url: &str) -> String {
    let start = url.find("://").map_or(0, |i| i + 3);
    let authority = url[start..].find(['/', '?', '#']).map_or(url.len(), |i| start + i);
    match url[start..authority].rfind('@') {
        Some(at) => format!("{}{}", &url[..start], &url[start + at + 1..]),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::net::{SocketAddr, TcpListener, TcpStream};

    use super::*;

    /// How long a test server waits for anything before giving up, so that it always stops.
    const SERVER_LIMIT: Duration = Duration::from_secs(10);

    /// A one-connection HTTP/1.1 server on 127.0.0.1: it reads one request and answers
    /// `response`, or never answers (`None`) and waits for the client to hang up. Joining its
    /// handle stops it and gives the raw request (`None` when none came in time).
    fn serve_once(response: Option<&'static str>) -> (SocketAddr, thread::JoinHandle<Option<Vec<u8>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a test port");
        let addr = listener.local_addr().expect("its address");
        listener.set_nonblocking(true).expect("non-blocking listener");
        let server = thread::spawn(move || {
            let deadline = Instant::now() + SERVER_LIMIT;
            let mut stream = loop {
                match listener.accept() {
                    Ok((stream, _)) => break stream,
                    Err(_) if Instant::now() < deadline => thread::sleep(Duration::from_millis(5)),
                    Err(_) => return None,
                }
            };
            stream.set_nonblocking(false).ok()?;
            stream.set_read_timeout(Some(SERVER_LIMIT)).ok()?;
            let request = read_request(&mut stream)?;
            match response {
                Some(response) => {
                    stream.write_all(response.as_bytes()).ok()?;
                }
                // Silent: hold the connection until the client gives up on it.
                None => while stream.read(&mut [0; 1024]).is_ok_and(|n| n > 0) {},
            }
            Some(request)
        });
        (addr, server)
    }

    /// The head and the `Content-Length` bytes of body that follow it.
    fn read_request(stream: &mut TcpStream) -> Option<Vec<u8>> {
        let mut request = Vec::new();
        let mut buf = [0; 4096];
        loop {
            let n = stream.read(&mut buf).ok().filter(|&n| n > 0)?;
            request.extend_from_slice(&buf[..n]);
            let Some(head) = request.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4) else { continue };
            let length = header(&request[..head], "content-length").and_then(|v| v.parse::<usize>().ok())?;
            if request.len() >= head + length {
                return Some(request);
            }
        }
    }

    /// A header's value in a request head, by name in any case.
    fn header(request: &[u8], name: &str) -> Option<String> {
        let head = String::from_utf8_lossy(request);
        head.split("\r\n").take_while(|line| !line.is_empty()).skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim().eq_ignore_ascii_case(name).then(|| value.trim().to_owned())
        })
    }

    fn request(id: u64, url: String) -> WebhookRequest {
        WebhookRequest {
            id,
            url,
            headers: vec![
                ("Content-Type".to_owned(), "application/json".to_owned()),
                ("X-Pusher-Key".to_owned(), "app-key".to_owned()),
                ("X-Pusher-Signature".to_owned(), "0123abcd".to_owned()),
            ],
            body: br#"{"time_ms":1,"events":[{"name":"channel_occupied","channel":"news"}]}"#.to_vec(),
        }
    }

    /// Delivers `request` with `timeout` and returns its outcome.
    fn outcome(request: &WebhookRequest, timeout: Duration) -> WebhookOutcome {
        let mut outcome = None;
        deliver(&agent(timeout, false), request, |o| outcome = Some(o));
        outcome.expect("every delivery reports")
    }

    const OK: &str = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";
    const ERROR: &str = "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\nConnection: close\r\n\r\nboom";

    #[test]
    fn a_delivery_is_a_post_with_the_headers_and_the_exact_body() {
        let (addr, server) = serve_once(Some(OK));
        let sent = request(7, format!("http://{addr}/hooks?app=1"));
        assert_eq!(outcome(&sent, Duration::from_secs(5)), WebhookOutcome::Status(200));
        let received = server.join().expect("the server ends").expect("a request came");
        let head = received.windows(4).position(|w| w == b"\r\n\r\n").expect("a whole head") + 4;
        let request_line = String::from_utf8_lossy(&received[..head]).lines().next().unwrap_or_default().to_owned();
        assert_eq!(request_line, "POST /hooks?app=1 HTTP/1.1");
        for (name, value) in &sent.headers {
            assert_eq!(header(&received[..head], name).as_ref(), Some(value), "header {name}");
        }
        assert_eq!(header(&received[..head], "content-length"), Some(sent.body.len().to_string()));
        assert_eq!(&received[head..], sent.body.as_slice(), "the body as given, byte for byte");
    }

    #[test]
    fn a_server_error_is_its_status_not_a_failure() {
        let (addr, server) = serve_once(Some(ERROR));
        assert_eq!(
            outcome(&request(1, format!("http://{addr}/")), Duration::from_secs(5)),
            WebhookOutcome::Status(500)
        );
        assert!(server.join().expect("the server ends").is_some(), "the request came");
    }

    #[test]
    fn a_refused_connection_fails() {
        let dead = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a port, then none");
        let started = Instant::now();
        assert_eq!(outcome(&request(1, format!("http://{dead}/")), Duration::from_secs(5)), WebhookOutcome::Failed);
        assert!(started.elapsed() < Duration::from_secs(2), "a refusal fails at once: {:?}", started.elapsed());
    }

    #[test]
    fn a_receiver_that_never_answers_fails_after_the_timeout() {
        let (addr, server) = serve_once(None);
        let timeout = Duration::from_millis(800);
        let started = Instant::now();
        assert_eq!(outcome(&request(1, format!("http://{addr}/")), timeout), WebhookOutcome::Failed);
        let took = started.elapsed();
        assert!(took >= timeout && took < timeout + Duration::from_secs(2), "failed after {took:?}");
        assert!(server.join().expect("the server ends").is_some(), "the request came");
    }

    #[test]
    fn each_outcome_reaches_the_worker_that_asked() {
        let pool = Webhooks::with_agent(2, agent(Duration::from_secs(5), false)).expect("threads");
        let mut inboxes = Vec::new();
        let mut servers = Vec::new();
        for (id, response) in [(11, OK), (22, ERROR)] {
            let (tx, rx) = mpsc::channel();
            let post: Post = Arc::new(move |message| {
                let _ = tx.send(message);
            });
            let client = pool.client(post).expect("the pool takes requests");
            let (addr, server) = serve_once(Some(response));
            assert!(client.send(request(id, format!("http://{addr}/"))), "queued");
            inboxes.push((id, rx));
            servers.push(server);
        }
        let expected = [WebhookOutcome::Status(200), WebhookOutcome::Status(500)];
        for ((id, inbox), expected) in inboxes.iter().zip(expected) {
            match inbox.recv_timeout(Duration::from_secs(5)) {
                Ok(Message::WebhookDone { id: got, outcome }) => assert_eq!((got, outcome), (*id, expected)),
                other => panic!("worker of {id}: {other:?}"),
            }
            assert!(inbox.try_recv().is_err(), "one message for one request");
        }
        for server in servers {
            assert!(server.join().expect("the server ends").is_some());
        }
        let started = Instant::now();
        pool.shutdown(Duration::from_secs(5));
        assert!(started.elapsed() < Duration::from_secs(1), "idle threads end at once");
    }

    #[test]
    fn shutdown_waits_no_longer_than_its_grace() {
        let pool = Webhooks::with_agent(1, agent(Duration::from_millis(800), false)).expect("a thread");
        let (tx, rx) = mpsc::channel();
        let client = pool.client(Arc::new(move |message| {
            let _ = tx.send(message);
        }));
        let client = client.expect("the pool takes requests");
        let (addr, server) = serve_once(None);
        assert!(client.send(request(1, format!("http://{addr}/"))));
        // Queued behind the stuck one: dropped at shutdown, never sent.
        assert!(client.send(request(2, format!("http://{addr}/"))));
        drop(client);
        thread::sleep(Duration::from_millis(100));
        let started = Instant::now();
        pool.shutdown(Duration::from_millis(100));
        assert!(started.elapsed() < Duration::from_millis(500), "shutdown took {:?}", started.elapsed());
        // The one in flight still ends, by its own timeout.
        assert!(server.join().expect("the server ends").is_some());
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Message::WebhookDone { id: 1, outcome: WebhookOutcome::Failed }) => {}
            other => panic!("{other:?}"),
        }
        assert!(rx.recv_timeout(Duration::from_millis(300)).is_err(), "the queued one was dropped");
    }

    #[test]
    fn credentials_stay_out_of_the_logs() {
        assert_eq!(loggable("https://user:secret@example.com/hook?a=b@c"), "https://example.com/hook?a=b@c");
        assert_eq!(loggable("http://example.com:8080/x"), "http://example.com:8080/x");
        assert_eq!(loggable("example.com"), "example.com");
    }
}
