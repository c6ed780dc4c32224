//! Broadcast load. Publishers send numbered, timestamped messages on a broadcast route; every
//! subscriber checks their order and records their latency. `fanout` measures throughput and
//! latency; `slow` adds one subscriber that stops reading and compares the others' latency
//! before and during the stall.
//!
//! The in-flight window is exact: a message is in flight until every counted subscriber has it,
//! so at most `window` messages per publisher sit anywhere between publisher and subscribers.
//! With `--rate 0` that is the whole rate control (closed loop); with a rate, publishers keep a
//! fixed schedule and a message's timestamp is its scheduled time, so a publisher held back by
//! the window shows up as latency rather than as a pause nobody measured.

use std::cell::{Cell, RefCell};
use std::io::{ErrorKind, Read};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use async_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use async_tungstenite::tungstenite::{Error as WsError, Message};
use futures_lite::{AsyncWriteExt, Stream, StreamExt, future};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use smol::channel::{self, Receiver, Sender};
use smol::net::TcpStream;
use smol::{Async, LocalExecutor, Timer};

use crate::args::Args;
use crate::conn::{self, Options, Stamp, Target, Walk, now_ns};
use crate::connect::connect_many_with;
use crate::measure::{self, Window, round3};

/// A publisher whose window has not moved for this long has lost a message for good.
/// Generous: a single-threaded peer under a loaded machine can take seconds per window.
pub(crate) const STALL: Duration = Duration::from_secs(10);
/// How long the stalled subscriber gets to catch up, or hear its close, once it reads again.
const DRAIN: Duration = Duration::from_secs(3);
/// Room for subscribers to batch their reads when the server batches its writes.
pub(crate) const READ_BUFFER: usize = 16 * 1024;

pub(crate) async fn fanout(executor: &LocalExecutor<'static>, args: &mut Args) -> Result<Value, String> {
    let plan = Plan {
        target: Target::parse(&args.require::<String>("url")?)?,
        subs: args.require("subs")?,
        pubs: args.take("pubs", 1)?,
        rate: args.take("rate", 0.0)?,
        size: args.take("size", 64)?,
        window: args.take("window", 64)?,
        warmup: args.take("warmup", 1.0)?,
        phases: vec![args.take("secs", 5.0)?],
        staller: false,
        concurrency: args.take("concurrency", 256)?,
        pid: server_pid(args)?,
    };
    let outcome = execute(executor, &plan).await?;
    let phase = &outcome.phases[0];
    let mut summary = plan.describe();
    summary["sent"] = json!(outcome.sent);
    summary["expected"] = json!(outcome.expected);
    summary["delivered"] = json!(outcome.delivered);
    summary["loss"] = json!(outcome.expected.saturating_sub(outcome.delivered));
    summary["out_of_order"] = json!(outcome.out_of_order);
    summary["gaps"] = json!(outcome.gaps);
    summary["closed"] = json!(outcome.closed);
    summary["stalled"] = json!(outcome.stalled);
    summary["sent_per_s"] = json!((phase.sent as f64 / plan.phases[0]).round());
    summary["delivered_per_s"] = json!((phase.delivered as f64 / plan.phases[0]).round());
    summary["latency"] = measure::latency(&phase.latency);
    summary["resources"] = outcome.resources;
    Ok(summary)
}

pub(crate) async fn slow(executor: &LocalExecutor<'static>, args: &mut Args) -> Result<Value, String> {
    let secs: f64 = args.take("secs", 5.0)?;
    let plan = Plan {
        target: Target::parse(&args.require::<String>("url")?)?,
        subs: args.take("subs", 100)?,
        pubs: 1,
        rate: args.take("rate", 500.0)?,
        size: args.take("size", 1024)?,
        window: args.take("window", 64)?,
        warmup: args.take("warmup", 1.0)?,
        phases: vec![secs, secs],
        staller: true,
        concurrency: args.take("concurrency", 256)?,
        pid: server_pid(args)?,
    };
    let outcome = execute(executor, &plan).await?;
    let [before, during] = &outcome.phases[..] else { unreachable!("slow runs two phases") };
    let p99 = |phase: &Phase| phase.latency.value_at_quantile(0.99) as f64;
    let mut summary = plan.describe();
    summary["sent"] = json!(outcome.sent);
    summary["expected"] = json!(outcome.expected);
    summary["delivered"] = json!(outcome.delivered);
    summary["loss"] = json!(outcome.expected.saturating_sub(outcome.delivered));
    summary["closed"] = json!(outcome.closed);
    summary["stalled"] = json!(outcome.stalled);
    summary["before"] = measure::latency(&before.latency);
    summary["during"] = measure::latency(&during.latency);
    summary["p99_ratio"] = json!(if p99(before) > 0.0 { round3(p99(during) / p99(before)) } else { 0.0 });
    summary["staller"] = outcome.staller.unwrap_or(Value::Null);
    summary["resources"] = outcome.resources;
    Ok(summary)
}

fn server_pid(args: &mut Args) -> Result<Option<u32>, String> {
    args.take_str("server-pid").map(|p| p.parse()).transpose().map_err(|e| format!("--server-pid: {e}"))
}

struct Plan {
    target: Target,
    subs: usize,
    pubs: usize,
    /// Messages per second over all publishers; 0 = as fast as the window allows.
    rate: f64,
    size: usize,
    window: u64,
    warmup: f64,
    /// Lengths of the measured phases, in seconds, back to back after the warm-up.
    phases: Vec<f64>,
    /// One more subscriber, not counted, that stops reading when the second phase starts.
    staller: bool,
    concurrency: usize,
    pid: Option<u32>,
}

impl Plan {
    fn describe(&self) -> Value {
        json!({
            "subs": self.subs, "pubs": self.pubs, "rate": self.rate, "size": self.size,
            "window": self.window, "warmup_s": self.warmup, "phases_s": self.phases,
        })
    }
}

struct Outcome {
    phases: Vec<Phase>,
    sent: u64,
    expected: u64,
    delivered: u64,
    out_of_order: u64,
    gaps: u64,
    closed: u64,
    stalled: bool,
    staller: Option<Value>,
    resources: Value,
}

pub(crate) struct Phase {
    pub(crate) latency: Histogram<u64>,
    /// Messages sent in this phase, and deliveries made in it.
    pub(crate) sent: u64,
    pub(crate) delivered: u64,
}

/// One publisher's window.
pub(crate) struct Publisher {
    /// How many counted subscribers have each in-flight message, at `seq % window`.
    pub(crate) received: RefCell<Vec<u32>>,
    /// The lowest sequence number some counted subscriber still lacks.
    pub(crate) complete_below: Cell<u64>,
    /// The next sequence number to send; numbers start at 1.
    pub(crate) next: Cell<u64>,
    /// Wakes the publisher when its window moves; capacity 1, as several moves need one wake.
    pub(crate) moved: (Sender<()>, Receiver<()>),
}

/// Everything the tasks of one run share; a single-threaded executor, so `Cell`s suffice.
pub(crate) struct Run {
    pub(crate) counted: u32,
    pub(crate) window: u64,
    pub(crate) publishers: Vec<Publisher>,
    /// Send-time bounds of the phases: phase i holds messages sent in `[bounds[i], bounds[i+1])`.
    pub(crate) bounds: RefCell<Vec<u64>>,
    pub(crate) phases: RefCell<Vec<Phase>>,
    pub(crate) delivered: Cell<u64>,
    pub(crate) out_of_order: Cell<u64>,
    pub(crate) gaps: Cell<u64>,
    pub(crate) closed: Cell<u64>,
    pub(crate) stalled: Cell<bool>,
    /// Set before the clients are dropped, so their own hang-ups are not counted as closes.
    pub(crate) finished: Cell<bool>,
    pub(crate) staller: Staller,
}

#[derive(Default)]
pub(crate) struct Staller {
    stopped: Cell<bool>,
    resume: RefCell<Option<Receiver<()>>>,
    received: Cell<u64>,
    /// How the server ended the stalled connection, if it did.
    ended: RefCell<Option<String>>,
}

impl Run {
    /// A run with `pubs` publishers, each with `window` messages in flight at most, and
    /// `phases` measured phases; `counted` subscribers must have a message to complete it.
    pub(crate) fn new(counted: u32, window: u64, pubs: usize, phases: usize) -> Self {
        Self {
            counted,
            window,
            publishers: (0..pubs)
                .map(|_| Publisher {
                    received: RefCell::new(vec![0; window as usize]),
                    complete_below: Cell::new(1),
                    next: Cell::new(1),
                    moved: channel::bounded(1),
                })
                .collect(),
            bounds: RefCell::new(Vec::new()),
            phases: RefCell::new(
                (0..phases).map(|_| Phase { latency: measure::histogram(), sent: 0, delivered: 0 }).collect(),
            ),
            delivered: Cell::new(0),
            out_of_order: Cell::new(0),
            gaps: Cell::new(0),
            closed: Cell::new(0),
            stalled: Cell::new(false),
            finished: Cell::new(false),
            staller: Staller::default(),
        }
    }

    /// Sets the phases' bounds: a warm-up from `start`, then the phases back to back; returns
    /// when the last one ends.
    pub(crate) fn schedule(&self, start: u64, warmup: f64, phases: &[f64]) -> Vec<u64> {
        let mut bounds = vec![start + secs_ns(warmup)];
        for &secs in phases {
            bounds.push(bounds[bounds.len() - 1] + secs_ns(secs));
        }
        *self.bounds.borrow_mut() = bounds.clone();
        bounds
    }

    /// Waits until publisher `index` may send: fewer than `window` of its messages in flight.
    /// False when the window has not moved for `STALL` (the run is marked stalled).
    pub(crate) async fn wait_window(&self, index: usize) -> bool {
        let me = &self.publishers[index];
        while me.next.get() - me.complete_below.get() >= self.window {
            let moved = future::or(async { me.moved.1.recv().await.is_ok() }, async {
                Timer::after(STALL).await;
                false
            });
            if !moved.await {
                self.stalled.set(true);
                return false;
            }
        }
        true
    }

    /// Takes publisher `index`'s next sequence number for a message sent at `sent_ns`.
    pub(crate) fn take_seq(&self, index: usize, sent_ns: u64) -> u64 {
        let me = &self.publishers[index];
        let seq = me.next.get();
        // Counted before the send: a subscriber may see the message before `send` returns.
        me.next.set(seq + 1);
        if let Some(i) = self.phase_of(sent_ns) {
            self.phases.borrow_mut()[i].sent += 1;
        }
        seq
    }

    /// After publishing: waits while deliveries still come, and calls what has not come after
    /// a quiet `STALL` lost (a slow server may hold a whole window for every subscriber).
    pub(crate) async fn settle(&self) {
        let (mut seen, mut quiet_since) = (self.delivered.get(), now_ns());
        while self.publishers.iter().any(|p| p.complete_below.get() < p.next.get())
            && now_ns() - quiet_since < secs_ns(STALL.as_secs_f64())
        {
            Timer::after(Duration::from_millis(10)).await;
            if self.delivered.get() != seen {
                (seen, quiet_since) = (self.delivered.get(), now_ns());
            }
        }
    }

    /// Messages sent over all publishers.
    pub(crate) fn sent(&self) -> u64 {
        self.publishers.iter().map(|p| p.next.get() - 1).sum()
    }

    fn phase_of(&self, sent_ns: u64) -> Option<usize> {
        let bounds = self.bounds.borrow();
        let i = bounds.partition_point(|&b| b <= sent_ns);
        (i > 0 && i < bounds.len()).then(|| i - 1)
    }

    pub(crate) fn deliver(&self, stamp: Stamp, now: u64, last: &mut [u64]) {
        let Some(publisher) = self.publishers.get(stamp.publisher as usize) else { return };
        let prev = &mut last[stamp.publisher as usize];
        if stamp.seq <= *prev {
            self.out_of_order.set(self.out_of_order.get() + 1);
        } else {
            self.gaps.set(self.gaps.get() + (stamp.seq - *prev - 1));
            *prev = stamp.seq;
        }
        self.delivered.set(self.delivered.get() + 1);
        if let Some(i) = self.phase_of(stamp.sent_ns) {
            self.phases.borrow_mut()[i].latency.saturating_record(now.saturating_sub(stamp.sent_ns).max(1));
        }
        // Throughput counts by arrival: the closed loop keeps a window of messages in flight, and
        // a slow server may deliver those sent in one phase only in the next.
        if let Some(i) = self.phase_of(now) {
            self.phases.borrow_mut()[i].delivered += 1;
        }
        let base = publisher.complete_below.get();
        if stamp.seq < base {
            return;
        }
        let mut received = publisher.received.borrow_mut();
        let slot = (stamp.seq % self.window) as usize;
        received[slot] += 1;
        if stamp.seq == base && received[slot] >= self.counted {
            let mut base = base;
            let next = publisher.next.get();
            while base < next && received[(base % self.window) as usize] >= self.counted {
                received[(base % self.window) as usize] = 0;
                base += 1;
            }
            publisher.complete_below.set(base);
            let _ = publisher.moved.0.try_send(());
        }
    }

    pub(crate) fn lost_connection(&self) {
        if !self.finished.get() {
            self.closed.set(self.closed.get() + 1);
        }
    }
}

async fn execute(executor: &LocalExecutor<'static>, plan: &Plan) -> Result<Outcome, String> {
    let extra = usize::from(plan.staller);
    measure::ensure_descriptors(plan.subs + plan.pubs + extra)?;
    if plan.window == 0 || plan.pubs == 0 {
        return Err("--window and --pubs must be at least 1".into());
    }
    let options = Options { read_buffer: READ_BUFFER, receive_buffer: None };
    let subs = connect_all(executor, plan, plan.subs, options, "subscribers").await?;
    let staller = if plan.staller {
        // A small receive buffer: the kernel stops taking the staller's bytes within kilobytes,
        // so the server's own queue for it grows from the first second of the stall.
        let options = Options { read_buffer: 4096, receive_buffer: Some(4096) };
        connect_all(executor, plan, 1, options, "the stalled subscriber").await?.pop()
    } else {
        None
    };
    let pubs = connect_all(executor, plan, plan.pubs, options, "publishers").await?;

    let counted = u32::try_from(subs.len()).map_err(|_| "too many subscribers")?;
    let run = Rc::new(Run::new(counted, plan.window, plan.pubs, plan.phases.len()));

    let mut tasks = Vec::new();
    for ws in subs {
        let run = Rc::clone(&run);
        let pubs = plan.pubs;
        tasks.push(executor.spawn(async move { receive(ws.into_inner(), &run, pubs, decode_binary).await }));
    }
    let resume = channel::bounded(1);
    if let Some(ws) = staller {
        *run.staller.resume.borrow_mut() = Some(resume.1.clone());
        let run = Rc::clone(&run);
        tasks.push(executor.spawn(async move { stall(ws, &run).await }));
    }
    let mut senders = Vec::new();
    for ws in pubs {
        let (sender, receiver) = ws.split();
        let run = Rc::clone(&run);
        // A publisher hears its own messages too (broadcast includes the sender): drain them.
        tasks.push(executor.spawn(async move { drain(receiver, &run).await }));
        senders.push(sender);
    }
    // The upgrade's 101 can reach a client before the server has joined it to the room (the
    // tokio peer subscribes after its handshake); a pause keeps the first messages from racing it.
    Timer::after(Duration::from_millis(500)).await;

    let bounds = run.schedule(now_ns(), plan.warmup, &plan.phases);
    let stop = bounds[bounds.len() - 1];
    let per_publisher = plan.rate / plan.pubs as f64;
    let publishing: Vec<_> = senders
        .into_iter()
        .enumerate()
        .map(|(index, sender)| {
            let run = Rc::clone(&run);
            let size = plan.size;
            let encode = move |stamp: Stamp| Message::binary(stamp.encode(size));
            executor.spawn(async move { publish(sender, &run, index, per_publisher, stop, encode).await })
        })
        .collect();

    sleep_until(bounds[0]).await;
    let window = Window::begin(plan.pid);
    if plan.staller {
        sleep_until(bounds[1]).await;
        run.staller.stopped.set(true);
    }
    let mut failure = None;
    for task in publishing {
        if let Err(e) = task.await {
            failure.get_or_insert(e);
        }
    }
    let resources = window.end();
    if let Some(e) = failure {
        return Err(e);
    }

    run.settle().await;
    let staller = if plan.staller {
        run.staller.stopped.set(false);
        let _ = resume.0.try_send(());
        // Reading again shows whether the server kept the stalled connection (it catches up)
        // or ended it (its backlog, then a close or a reset).
        let expected = run.sent();
        let deadline = now_ns() + secs_ns(DRAIN.as_secs_f64());
        while now_ns() < deadline && run.staller.ended.borrow().is_none() && run.staller.received.get() < expected {
            Timer::after(Duration::from_millis(10)).await;
        }
        Some(json!({
            "received": run.staller.received.get(),
            "sent": expected,
            "ended": *run.staller.ended.borrow(),
        }))
    } else {
        None
    };
    run.finished.set(true);
    drop(tasks);

    let sent = run.sent();
    let phases = run.phases.replace(Vec::new());
    Ok(Outcome {
        phases,
        sent,
        expected: sent * u64::from(counted),
        delivered: run.delivered.get(),
        out_of_order: run.out_of_order.get(),
        gaps: run.gaps.get(),
        closed: run.closed.get(),
        stalled: run.stalled.get(),
        staller,
        resources,
    })
}

async fn connect_all(
    executor: &LocalExecutor<'static>,
    plan: &Plan,
    n: usize,
    options: Options,
    what: &str,
) -> Result<Vec<conn::Ws>, String> {
    let connected = connect_many_with(executor, &plan.target, n, 0.0, plan.concurrency, options).await;
    if connected.failures > 0 {
        return Err(format!("{} of {n} {what} failed to connect: {:?}", connected.failures, connected.errors));
    }
    Ok(connected.sockets)
}

/// One publisher on a WebSocket: numbered, timestamped messages, `encode`d into frames, at
/// `rate` a second (0: as fast as the window allows) until `stop`.
pub(crate) async fn publish(
    mut sender: async_tungstenite::WebSocketSender<conn::Stream>,
    run: &Run,
    index: usize,
    rate: f64,
    stop: u64,
    encode: impl Fn(Stamp) -> Message,
) -> Result<(), String> {
    let start = now_ns();
    let interval = if rate > 0.0 { 1e9 / rate } else { 0.0 };
    let publisher = u32::try_from(index).map_err(|_| "too many publishers")?;
    for k in 0u64.. {
        let scheduled = start + (k as f64 * interval) as u64;
        sleep_until(scheduled).await;
        if now_ns() >= stop {
            break;
        }
        if !run.wait_window(index).await {
            return Ok(());
        }
        let sent_ns = if rate > 0.0 { scheduled } else { now_ns() };
        let seq = run.take_seq(index, sent_ns);
        let stamp = Stamp { publisher, seq, sent_ns };
        sender.send(encode(stamp)).await.map_err(|e| format!("publisher {index}: {e}"))?;
    }
    Ok(())
}

fn decode_binary(opcode: OpCode, payload: &[u8]) -> Option<Stamp> {
    if opcode == OpCode::Data(Data::Binary) { Stamp::decode(payload) } else { None }
}

/// A subscriber's read loop, on the bare socket once async-tungstenite has done the upgrade.
///
/// At a few million deliveries a second the generator's per-message cost decides whether it or
/// the server is measured; a `Message` per frame (allocation, waker registration, a clock read)
/// made the generator the bottleneck. This loop reads what the socket holds, walks the frames
/// in place with tungstenite's own header parser, and reads the clock once per read. Nothing is
/// lost by leaving tungstenite after the handshake: publishing starts only after every upgrade
/// has completed and a pause, so no frame can be waiting in tungstenite's buffer. Under TLS the
/// same walk runs on what the TLS stream decrypts.
///
/// `decode` finds the stamp in a data frame's payload (`None`: not a timed message, skipped).
pub(crate) async fn receive(
    stream: conn::Stream,
    run: &Run,
    pubs: usize,
    decode: impl FnMut(OpCode, &[u8]) -> Option<Stamp>,
) {
    let mut frames = Frames { buf: vec![0; READ_BUFFER], filled: 0, last: vec![0; pubs], decode };
    match stream {
        conn::Stream::Plain(tcp) => receive_tcp(tcp, run, &mut frames).await,
        conn::Stream::Tls(mut tls) => {
            use futures_lite::AsyncReadExt;
            loop {
                let room = frames.room();
                let n = match tls.read(room).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let Some(pong) = frames.walk(n, run) else { break };
                if !pong.is_empty() && tls.write_all(&pong).await.is_err() {
                    break;
                }
            }
        }
    }
    run.lost_connection();
}

/// The plain socket's loop: reads what the socket holds, waiting for readiness only after a
/// short read.
async fn receive_tcp<D: FnMut(OpCode, &[u8]) -> Option<Stamp>>(stream: TcpStream, run: &Run, frames: &mut Frames<D>) {
    let socket: Arc<Async<std::net::TcpStream>> = stream.into();
    let mut drained = false;
    loop {
        // A short read emptied the socket, so the next bytes come with the next readiness; waiting
        // for it first saves the read that would only say EAGAIN (a third of the cost per
        // message when a thousand sockets each get one small frame).
        if drained && socket.readable().await.is_err() {
            break;
        }
        let room = frames.room();
        let wanted = room.len();
        let n = match (&mut socket.get_ref()).read(room) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                drained = true;
                continue;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        drained = n < wanted;
        let Some(pong) = frames.walk(n, run) else { break };
        if !pong.is_empty() && (&*socket).write_all(&pong).await.is_err() {
            break;
        }
    }
}

/// A subscriber's read buffer, and the frames walked in place in it.
struct Frames<D> {
    buf: Vec<u8>,
    filled: usize,
    /// The last sequence number seen from each publisher.
    last: Vec<u64>,
    decode: D,
}

impl<D: FnMut(OpCode, &[u8]) -> Option<Stamp>> Frames<D> {
    /// Where the next read goes.
    fn room(&mut self) -> &mut [u8] {
        if self.filled == self.buf.len() {
            // One frame larger than the buffer: make room for it.
            self.buf.resize(self.buf.len() * 2, 0);
        }
        &mut self.buf[self.filled..]
    }

    /// `n` more bytes were read: delivers the whole frames among them. Returns the pongs owed,
    /// or `None` when the subscriber must end (a close, or anything but a plain whole frame,
    /// which the run reports as a closed connection).
    fn walk(&mut self, n: usize, run: &Run) -> Option<Vec<u8>> {
        self.filled += n;
        let now = now_ns();
        let mut pongs = Vec::new();
        let mut pos = 0;
        while pos < self.filled {
            let (opcode, start, end) = match conn::walk(&self.buf, pos, self.filled) {
                Walk::Frame { opcode, start, end } => (opcode, start, end),
                Walk::Partial { end } => {
                    if let Some(end) = end.filter(|&end| end - pos > self.buf.len()) {
                        self.buf.resize((end - pos).next_power_of_two(), 0);
                    }
                    break;
                }
                Walk::Bad(_) => return None,
            };
            match opcode {
                OpCode::Data(_) => {
                    if let Some(stamp) = (self.decode)(opcode, &self.buf[start..end]) {
                        run.deliver(stamp, now, &mut self.last);
                    }
                }
                OpCode::Control(Control::Ping) => pongs.extend(pong(&self.buf[start..end])),
                OpCode::Control(Control::Close) => return None,
                _ => {}
            }
            pos = end;
        }
        self.buf.copy_within(pos..self.filled, 0);
        self.filled -= pos;
        Some(pongs)
    }
}

/// A client's pong: masked, as RFC 6455 requires of every client frame. The all-zero key is
/// valid and leaves the payload as it is; unpredictability guards browsers against proxies,
/// which a loopback benchmark does not have.
fn pong(payload: &[u8]) -> Vec<u8> {
    let len = payload.len().min(125);
    let mut frame = Vec::with_capacity(6 + len);
    frame.push(0x8A);
    frame.push(0x80 | len as u8);
    frame.extend_from_slice(&[0; 4]);
    frame.extend_from_slice(&payload[..len]);
    frame
}

pub(crate) async fn drain(mut ws: impl Stream<Item = Result<Message, WsError>> + Unpin, run: &Run) {
    while let Some(message) = ws.next().await {
        if matches!(message, Ok(Message::Close(_)) | Err(_)) {
            break;
        }
    }
    run.lost_connection();
}

async fn stall(mut ws: conn::Ws, run: &Run) {
    let Some(resume) = run.staller.resume.borrow().clone() else { return };
    loop {
        while run.staller.stopped.get() {
            let _ = resume.recv().await;
        }
        let ended = match ws.next().await {
            Some(Ok(Message::Binary(_))) => {
                run.staller.received.set(run.staller.received.get() + 1);
                continue;
            }
            Some(Ok(Message::Close(frame))) => {
                frame.map_or_else(|| "close".to_owned(), |f| format!("close {}", u16::from(f.code)))
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => format!("error: {e}"),
            None => "eof".to_owned(),
        };
        *run.staller.ended.borrow_mut() = Some(ended);
        return;
    }
}

pub(crate) async fn sleep_until(ns: u64) {
    let now = now_ns();
    if ns > now {
        Timer::after(Duration::from_nanos(ns - now)).await;
    }
}

pub(crate) fn secs_ns(secs: f64) -> u64 {
    (secs * 1e9) as u64
}
