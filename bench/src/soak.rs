//! `soak`: many connections held for minutes while each pings the server, all hear a broadcast
//! every second and a fixed share of them reconnects every second. The server's RSS is sampled
//! throughout; the run passes when RSS is flat after the warm-up and nothing went missing: no
//! broadcast, no pong, no reconnect, no connection.
//!
//! Loss is counted per client lifetime (one connection, from its upgrade to its close): from
//! the lowest to the highest sequence number it received, each must arrive exactly once and in
//! order, and a lifetime still open at the end must also have the last broadcast. A lifetime
//! that heard nothing while broadcasts were sent counts as silent, which is loss too. The
//! publisher hears its own broadcasts (a broadcast route includes the sender); those copies are
//! counted apart, as `publisher_copies`, and not in the loss figures.
//!
//! RSS is flat when, over the samples from `--warmup` on, neither the change from the first to
//! the last nor any sample's distance from their mean exceeds `--flat-pct` percent; the
//! least-squares slope is reported beside them.
//!
//! Every connection is one task that does its own schedule: slot `i` of `n` pings at
//! `i / n` of the ping interval, and closes at `i / k` seconds after the start and every
//! `n / k` seconds after that, where `k` connections reconnect per second. Nothing has to
//! signal a task, and the pings and closes are spread evenly instead of arriving in bursts.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io::{ErrorKind, Read};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use async_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use futures_lite::{AsyncWriteExt, future};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use smol::{Async, LocalExecutor, Timer};

use crate::args::Args;
use crate::conn::{self, Options, Target, Walk, Ws, now_ns};
use crate::connect::connect_many_with;
use crate::measure::{self, Window, round3};

/// How long the server has to answer our close frame before the close counts as failed.
const CLOSE_REPLY: Duration = Duration::from_secs(5);
/// After the server's close frame, how long we wait for its FIN before dropping the socket; a
/// server that closes the TCP connection first (as RFC 6455 asks) then never sees our reset.
const CLOSE_EOF: Duration = Duration::from_secs(1);
/// A reconnect whose upgrade has not finished by then has failed; without a bound, a server
/// that accepts and never answers would leave the slot down silently.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause before a failed connect is tried again, so a refusing server is not hammered.
const RETRY: Duration = Duration::from_secs(1);
/// Between the ramp and the first broadcast: the server may join a connection to its route
/// only after the 101 has left.
const SETTLE: Duration = Duration::from_secs(1);
/// At the end, how long the last broadcast, pending closes and reconnects have to finish.
const DRAIN: Duration = Duration::from_secs(6);
/// A lifetime is silent when a broadcast was sent at least this long after its upgrade and
/// this long before its close, yet it heard none: a margin for the join after the 101, and
/// for the delivery.
const SILENT_MARGIN: u64 = 1_000_000_000;
/// One broadcast a second; the scenario.
const BROADCAST_EVERY: u64 = 1_000_000_000;
/// Every read goes into one buffer shared by all connections (one thread, and a read never
/// waits), so a connection keeps only the bytes of a frame split across two reads.
const READ_BUFFER: usize = 64 * 1024;
/// tungstenite allocates a read buffer this large per connection once the upgrade is done, and
/// the ramp holds every connection as a tungstenite stream until the last has upgraded; the
/// buffer is never used, as only the bare socket is read afterwards.
const HANDSHAKE_OPTIONS: Options = Options { read_buffer: 256, receive_buffer: None };

pub(crate) async fn soak(executor: &LocalExecutor<'static>, args: &mut Args) -> Result<Value, String> {
    let target = Target::parse(&args.require::<String>("url")?)?;
    if target.is_tls() {
        return Err("soak: ws:// only (it reads the bare socket)".to_owned());
    }
    let plan = Plan {
        target,
        conns: args.require("conns")?,
        secs: args.require("secs")?,
        pid: args.require("server-pid")?,
        ping_every: args.take("ping-every", 2.0)?,
        reconnect_pct: args.take("reconnect-pct", 1.0)?,
        report_every: args.take("report-every", 30)?,
        warmup: args.take("warmup", 120)?,
        rate: args.take("rate", 5000.0)?,
        concurrency: args.take("concurrency", 256)?,
        flat_pct: args.take("flat-pct", 5.0)?,
    };
    if plan.conns == 0 || plan.secs == 0 || plan.report_every == 0 {
        return Err("--conns, --secs and --report-every must be at least 1".into());
    }
    if !(0.01..=3600.0).contains(&plan.ping_every) || !(0.0..=100.0).contains(&plan.reconnect_pct) {
        return Err("--ping-every must be within 0.01..=3600 and --reconnect-pct within 0..=100".into());
    }
    // One more connection than asked: the publisher.
    let slots = plan.conns + 1;
    measure::ensure_descriptors(slots)?;

    let ramp = connect_many_with(executor, &plan.target, slots, plan.rate, plan.concurrency, HANDSHAKE_OPTIONS).await;
    eprintln!(
        "ramp: {} of {slots} connected (the subscribers and the publisher) in {:.1}s, {} failed {:?}",
        ramp.sockets.len(),
        ramp.elapsed.as_secs_f64(),
        ramp.failures,
        ramp.errors
    );
    let start = now_ns() + duration_ns(SETTLE);
    let run = Rc::new(Run::new(&plan, start));
    let mut ready = ramp.sockets.into_iter();
    // A slot whose ramp connect failed starts without a socket and connects again on its own.
    let tasks: Vec<_> = (0..slots)
        .map(|slot| {
            let run = Rc::clone(&run);
            let socket = ready.next().and_then(bare);
            executor.spawn(async move { client(&run, slot, socket).await })
        })
        .collect();

    sleep_until(start).await;
    let window = Window::begin(Some(plan.pid));
    let mut samples = vec![run.sample(0)];
    let mut tick = 1;
    loop {
        let t = (tick * plan.report_every).min(plan.secs);
        sleep_until(start + t * 1_000_000_000).await;
        samples.push(run.sample(t));
        if t == plan.secs {
            break;
        }
        tick += 1;
    }
    let drain_until = now_ns() + duration_ns(DRAIN);
    while !run.settled() && now_ns() < drain_until {
        Timer::after(Duration::from_millis(50)).await;
    }
    let resources = window.end();
    run.finish(now_ns());
    drop(tasks);
    Ok(summary(&plan, &run, &samples, resources, ramp.failures, &ramp.errors))
}

struct Plan {
    target: Target,
    conns: usize,
    secs: u64,
    pid: u32,
    ping_every: f64,
    reconnect_pct: f64,
    report_every: u64,
    warmup: u64,
    rate: f64,
    concurrency: usize,
    flat_pct: f64,
}

/// Everything the tasks of a run share; one thread, so `Cell`s suffice.
struct Run {
    target: Target,
    /// Subscriber slots are `0..conns`; slot `conns` is the publisher.
    conns: usize,
    /// The first broadcast, and the origin of the reconnect schedule (`now_ns` clock).
    start: u64,
    /// No close is started and no broadcast sent from here on.
    end: u64,
    ping_every: u64,
    /// Connections closed and replaced per second; 0 = none.
    reconnects_per_s: f64,
    pid: u32,
    slots: Vec<RefCell<Slot>>,
    buf: RefCell<Vec<u8>>,
    /// When each broadcast left, by sequence number - 1.
    sent_at: RefCell<Vec<u64>>,
    /// Subscribers open; the publisher is not counted.
    open: Cell<usize>,
    next_ping_id: Cell<u64>,
    loss: Loss,
    pings: Pings,
    reconnects: Reconnects,
    dropped: Cell<u64>,
    /// Why reconnects failed and connections dropped, and how often each.
    errors: RefCell<BTreeMap<String, u64>>,
    /// Frames no client expects: binary data, text that is not a broadcast, a stray pong.
    foreign: Cell<u64>,
    publisher_copies: Cell<u64>,
}

#[derive(Default)]
struct Slot {
    open: bool,
    closing: bool,
    up_ns: u64,
    received: Received,
    /// The ping still waiting for its pong: its id and when it left.
    ping: Option<(u64, u64)>,
}

#[derive(Default)]
struct Loss {
    lifetimes: Cell<u64>,
    delivered: Cell<u64>,
    missing: Cell<u64>,
    duplicates: Cell<u64>,
    out_of_order: Cell<u64>,
    silent: Cell<u64>,
}

struct Pings {
    sent: Cell<u64>,
    pongs: Cell<u64>,
    missing: Cell<u64>,
    /// Pongs for a ping already counted missing.
    late: Cell<u64>,
    rtt: RefCell<Histogram<u64>>,
}

#[derive(Default)]
struct Reconnects {
    /// Closes the server answered with its own close frame.
    closed: Cell<u64>,
    /// Connections opened to replace a closed or dropped one.
    done: Cell<u64>,
    /// Closes not answered, and connects that failed after the ramp.
    failed: Cell<u64>,
}

/// How a lifetime ended.
enum End {
    /// We closed it and the server answered.
    Closed,
    /// We closed it and the server did not answer properly.
    CloseFailed(String),
    /// It ended without our asking.
    Dropped(String),
}

/// What one read from a socket brought.
enum Got {
    More,
    /// The server's close frame, with its code if it gave one.
    Close(Option<u16>),
    Eof,
    Error(String),
}

/// Bytes a connection holds between reads; both are usually empty and unallocated.
#[derive(Default)]
struct Buffers {
    /// The start of a frame the last read did not finish.
    pending: Vec<u8>,
    /// Frames to send: pongs to the server's pings, our pings, the broadcast, the close.
    outbox: Vec<u8>,
    /// Our close frame has gone: nothing more may follow it, pongs included.
    closed: bool,
}

fn bump(counter: &Cell<u64>, by: u64) {
    counter.set(counter.get() + by);
}

impl Run {
    fn new(plan: &Plan, start: u64) -> Self {
        Self {
            target: plan.target.clone(),
            conns: plan.conns,
            start,
            end: start + plan.secs * 1_000_000_000,
            ping_every: (plan.ping_every * 1e9) as u64,
            reconnects_per_s: plan.conns as f64 * plan.reconnect_pct / 100.0,
            pid: plan.pid,
            slots: (0..=plan.conns).map(|_| RefCell::default()).collect(),
            buf: RefCell::new(vec![0; READ_BUFFER]),
            sent_at: RefCell::new(Vec::with_capacity(usize::try_from(plan.secs).unwrap_or(0))),
            open: Cell::new(0),
            next_ping_id: Cell::new(0),
            loss: Loss::default(),
            pings: Pings {
                sent: Cell::new(0),
                pongs: Cell::new(0),
                missing: Cell::new(0),
                late: Cell::new(0),
                rtt: RefCell::new(measure::histogram()),
            },
            reconnects: Reconnects::default(),
            dropped: Cell::new(0),
            errors: RefCell::new(BTreeMap::new()),
            foreign: Cell::new(0),
            publisher_copies: Cell::new(0),
        }
    }

    fn broadcasts(&self) -> u64 {
        self.sent_at.borrow().len() as u64
    }

    fn error(&self, what: String) {
        *self.errors.borrow_mut().entry(what).or_default() += 1;
    }

    /// The first ping time after `now`: slot `i` of `n` pings at `i / n` of the interval, so the
    /// pings of all connections are spread evenly over it.
    fn next_ping(&self, slot: usize, now: u64) -> u64 {
        let offset = (self.ping_every as f64 * slot as f64 / self.slots.len() as f64) as u64;
        next_after(self.start + offset, self.ping_every, now)
    }

    /// The next time this subscriber closes and reconnects, or `u64::MAX` for none.
    fn next_close(&self, slot: usize, now: u64) -> u64 {
        if self.reconnects_per_s <= 0.0 || slot >= self.conns {
            return u64::MAX;
        }
        let first = self.start + (slot as f64 / self.reconnects_per_s * 1e9) as u64;
        let period = ((self.conns as f64 / self.reconnects_per_s) * 1e9) as u64;
        let at = next_after(first, period.max(1), now);
        if at < self.end { at } else { u64::MAX }
    }

    fn next_broadcast(&self, now: u64) -> u64 {
        let at = next_after(self.start, BROADCAST_EVERY, now.saturating_sub(1));
        if at < self.end { at } else { u64::MAX }
    }

    fn opened(&self, slot: usize) {
        let mut s = self.slots[slot].borrow_mut();
        s.open = true;
        s.closing = false;
        s.up_ns = now_ns();
        if slot < self.conns {
            self.open.set(self.open.get() + 1);
        }
    }

    /// Folds a lifetime that ended at `now` into the totals and frees its slot.
    fn ended(&self, slot: usize, now: u64) {
        let mut s = self.slots[slot].borrow_mut();
        if !s.open {
            return;
        }
        // The server answers frames in order, so a pong still missing when its close (or the
        // end of the connection) came is not coming.
        if s.ping.take().is_some() {
            bump(&self.pings.missing, 1);
        }
        if slot < self.conns {
            bump(&self.loss.lifetimes, 1);
            if !s.received.any() && self.sent_between(s.up_ns + SILENT_MARGIN, now.saturating_sub(SILENT_MARGIN)) {
                bump(&self.loss.silent, 1);
            }
        }
        s.received.reset();
        s.open = false;
        s.closing = false;
        if slot < self.conns {
            self.open.set(self.open.get() - 1);
        }
    }

    fn sent_between(&self, from: u64, to: u64) -> bool {
        let sent_at = self.sent_at.borrow();
        let i = sent_at.partition_point(|&t| t < from);
        sent_at.get(i).is_some_and(|&t| t <= to)
    }

    fn deliver(&self, slot: usize, seq: u64) {
        if slot >= self.conns {
            bump(&self.publisher_copies, 1);
            return;
        }
        // Only numbers the publisher has sent: a stray number must not grow the bitmap.
        if seq == 0 || seq > self.broadcasts() {
            bump(&self.foreign, 1);
            return;
        }
        let loss = &self.loss;
        match self.slots[slot].borrow_mut().received.record(seq) {
            Arrival::First => bump(&loss.delivered, 1),
            Arrival::Next { skipped } => {
                bump(&loss.delivered, 1);
                bump(&loss.missing, skipped);
            }
            Arrival::Earlier { skipped } => {
                bump(&loss.delivered, 1);
                bump(&loss.out_of_order, 1);
                bump(&loss.missing, skipped);
            }
            Arrival::Late => {
                // It was counted missing when a higher number came first.
                bump(&loss.delivered, 1);
                bump(&loss.out_of_order, 1);
                loss.missing.set(loss.missing.get().saturating_sub(1));
            }
            Arrival::Duplicate => bump(&loss.duplicates, 1),
        }
    }

    /// A ping is due: the previous one, if still unanswered, is missing.
    fn ping(&self, slot: usize, now: u64) -> u64 {
        let id = self.next_ping_id.get();
        self.next_ping_id.set(id + 1);
        if self.slots[slot].borrow_mut().ping.replace((id, now)).is_some() {
            bump(&self.pings.missing, 1);
        }
        bump(&self.pings.sent, 1);
        id
    }

    fn pong(&self, slot: usize, payload: &[u8], now: u64) {
        let id = payload.try_into().ok().map(u64::from_be_bytes);
        let mut s = self.slots[slot].borrow_mut();
        match s.ping {
            Some((waiting, sent)) if Some(waiting) == id => {
                s.ping = None;
                bump(&self.pings.pongs, 1);
                self.pings.rtt.borrow_mut().saturating_record(now.saturating_sub(sent).max(1));
            }
            _ if id.is_some_and(|id| id < self.next_ping_id.get()) => bump(&self.pings.late, 1),
            _ => bump(&self.foreign, 1),
        }
    }

    /// Reads what the socket holds and acts on every whole frame in it.
    fn read(&self, slot: usize, socket: &Async<std::net::TcpStream>, conn: &mut Buffers) -> Got {
        let mut buf = self.buf.borrow_mut();
        let carried = conn.pending.len();
        buf[..carried].copy_from_slice(&conn.pending);
        conn.pending.clear();
        let n = match (&mut socket.get_ref()).read(&mut buf[carried..]) {
            Ok(0) => return Got::Eof,
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
                conn.pending.extend_from_slice(&buf[..carried]);
                return Got::More;
            }
            Err(e) => return Got::Error(format!("read: {e}")),
        };
        let filled = carried + n;
        let now = now_ns();
        let mut pos = 0;
        while pos < filled {
            let (opcode, start, end) = match conn::walk(&buf[..], pos, filled) {
                // Every frame of this scenario is a few bytes; a carried part must leave room
                // for the next read.
                Walk::Frame { end, .. } | Walk::Partial { end: Some(end) } if end - pos > READ_BUFFER / 2 => {
                    return Got::Error(format!("frame of {} bytes", end - pos));
                }
                Walk::Frame { opcode, start, end } => (opcode, start, end),
                Walk::Partial { .. } => break,
                Walk::Bad(why) => return Got::Error(why),
            };
            let payload = &buf[start..end];
            match opcode {
                OpCode::Data(Data::Text) => match parse_seq(payload) {
                    Some(seq) => self.deliver(slot, seq),
                    None => bump(&self.foreign, 1),
                },
                OpCode::Control(Control::Ping) if !conn.closed => client_frame(&mut conn.outbox, 0xA, payload),
                OpCode::Control(Control::Pong) => self.pong(slot, payload, now),
                OpCode::Control(Control::Close) => {
                    return Got::Close(payload.get(..2).map(|code| u16::from_be_bytes([code[0], code[1]])));
                }
                _ => bump(&self.foreign, 1),
            }
            pos = end;
        }
        conn.pending.extend_from_slice(&buf[pos..filled]);
        Got::More
    }

    fn sample(&self, t: u64) -> Sample {
        let rss = measure::sample(Some(self.pid)).map(|s| s.rss);
        let sample = Sample {
            t,
            rss,
            client_rss: measure::own_rss(),
            open: self.open.get(),
            broadcasts: self.broadcasts(),
            missing: self.loss.missing.get(),
        };
        eprintln!(
            "t={t}s rss={} conns={} broadcasts={} missing={} reconnects={} failed={} dropped={} pongs_missing={} \
             client_rss={:.1}MiB",
            rss.map_or_else(|| "gone".to_owned(), |rss| format!("{:.1}MiB", mib(rss))),
            sample.open,
            sample.broadcasts,
            sample.missing,
            self.reconnects.done.get(),
            self.reconnects.failed.get(),
            self.dropped.get(),
            self.pings.missing.get(),
            mib(sample.client_rss),
        );
        sample
    }

    /// Every connection is open and not closing, and every one that heard broadcasts has the
    /// last one.
    fn settled(&self) -> bool {
        let last = self.broadcasts();
        self.slots.iter().enumerate().all(|(slot, s)| {
            let s = s.borrow();
            s.open && !s.closing && (slot >= self.conns || !s.received.any() || s.received.hi == last)
        })
    }

    /// Ends the run: what is still open is counted as it stands, with the tail a lifetime
    /// should have heard; what is still closing or connecting has failed.
    fn finish(&self, now: u64) {
        let last = self.broadcasts();
        for slot in 0..self.slots.len() {
            let mut s = self.slots[slot].borrow_mut();
            if !s.open {
                // Between a close or drop and its replacement (or retrying a failed connect).
                bump(&self.reconnects.failed, 1);
                self.error("still connecting at the end".into());
                continue;
            }
            if s.closing {
                s.closing = false;
                bump(&self.reconnects.failed, 1);
                self.error("close: no reply by the end".into());
            } else if slot < self.conns && s.received.any() && s.received.hi < last {
                bump(&self.loss.missing, last - s.received.hi);
            }
            // A ping sent less than an interval ago may still be answered; one older is late.
            if s.ping.is_some_and(|(_, sent)| now.saturating_sub(sent) < self.ping_every) {
                s.ping = None;
            }
            drop(s);
            self.ended(slot, now);
        }
    }
}

/// One client slot, for the whole run: a lifetime, then its replacement, and so on.
async fn client(run: &Run, slot: usize, mut ready: Option<Socket>) {
    let mut replacing = false;
    loop {
        let socket = match ready.take() {
            Some(socket) => socket,
            None => {
                // Boxed: the upgrade's future is kilobytes, and unboxed it would be part of every
                // connection's task for the whole run, not only while it connects.
                let connect = Box::pin(conn::connect(&run.target, HANDSHAKE_OPTIONS));
                let timeout = async {
                    Timer::after(CONNECT_TIMEOUT).await;
                    Err(format!("upgrade: no answer in {}s", CONNECT_TIMEOUT.as_secs()))
                };
                match future::or(connect, timeout).await {
                    Ok(ws) => {
                        if replacing {
                            bump(&run.reconnects.done, 1);
                        }
                        let Some(socket) = bare(ws) else {
                            run.error("connect: the soak reads plain ws:// only".to_owned());
                            return;
                        };
                        socket
                    }
                    Err(e) => {
                        bump(&run.reconnects.failed, 1);
                        run.error(format!("connect: {e}"));
                        Timer::after(RETRY).await;
                        continue;
                    }
                }
            }
        };
        run.opened(slot);
        let end = live(run, slot, &socket).await;
        // The descriptor is closed before the replacement opens one: at 19,000 connections the
        // generator runs within a few dozen descriptors of its limit.
        drop(socket);
        run.ended(slot, now_ns());
        match end {
            End::Closed => bump(&run.reconnects.closed, 1),
            End::CloseFailed(why) => {
                bump(&run.reconnects.failed, 1);
                run.error(why);
            }
            End::Dropped(why) => {
                bump(&run.dropped, 1);
                run.error(format!("dropped: {why}"));
            }
        }
        replacing = true;
    }
}

type Socket = Arc<Async<std::net::TcpStream>>;

/// Frames are read from the bare socket once the upgrade is done. A frame that came in the same
/// read as the 101 would stay behind in tungstenite's buffer; the server sends nothing unasked
/// until the next broadcast, and at worst that lifetime's count starts one broadcast later,
/// which cannot show as loss.
/// `None` under TLS, which the soak does not speak (its target is checked to be `ws://`).
fn bare(ws: Ws) -> Option<Socket> {
    ws.into_inner().into_tcp().map(Into::into)
}

/// One lifetime: reads, pings, the broadcast (publisher only) and the scheduled close.
async fn live(run: &Run, slot: usize, socket: &Async<std::net::TcpStream>) -> End {
    let now = now_ns();
    let publisher = slot >= run.conns;
    let mut next_ping = run.next_ping(slot, now);
    let close_at = run.next_close(slot, now);
    let mut next_broadcast = if publisher { run.next_broadcast(now) } else { u64::MAX };
    // When the server's close reply is due, once ours has gone.
    let mut closing: Option<u64> = None;
    let mut conn = Buffers::default();
    loop {
        let deadline = closing.unwrap_or(next_ping.min(close_at)).min(next_broadcast);
        let readable = future::or(async { Some(socket.readable().await) }, async {
            sleep_until(deadline).await;
            None
        });
        match readable.await {
            Some(Err(e)) => return End::Dropped(format!("poll: {e}")),
            Some(Ok(())) => match run.read(slot, socket, &mut conn) {
                Got::More => {}
                Got::Close(code) if closing.is_some() => {
                    // An empty close body is a valid reply too (RFC 6455 5.5.1).
                    if code.is_some_and(|code| code != 1000) {
                        return End::CloseFailed(format!("close: answered with {code:?}"));
                    }
                    await_eof(socket).await;
                    return End::Closed;
                }
                Got::Close(code) => return End::Dropped(format!("server closed with {code:?}")),
                Got::Eof if closing.is_some() => return End::CloseFailed("close: EOF before the reply".into()),
                Got::Eof => return End::Dropped("EOF".into()),
                Got::Error(e) => return End::Dropped(e),
            },
            None => {}
        }
        let now = now_ns();
        if let Some(due) = closing {
            if now >= due {
                return End::CloseFailed(format!("close: no reply in {}s", CLOSE_REPLY.as_secs()));
            }
        } else if now >= close_at {
            client_frame(&mut conn.outbox, 0x8, &1000u16.to_be_bytes());
            conn.closed = true;
            run.slots[slot].borrow_mut().closing = true;
            closing = Some(now + duration_ns(CLOSE_REPLY));
        } else if now >= next_ping {
            let id = run.ping(slot, now);
            client_frame(&mut conn.outbox, 0x9, &id.to_be_bytes());
            next_ping = next_after(next_ping, run.ping_every, now);
        }
        if now >= next_broadcast {
            let seq = run.broadcasts() + 1;
            // Recorded before the send: subscribers take only numbers already sent, and one may
            // read this number while the write is still pending.
            run.sent_at.borrow_mut().push(now);
            client_frame(&mut conn.outbox, 0x1, format!("{{\"seq\":{seq}}}").as_bytes());
            next_broadcast = run.next_broadcast(now + 1);
        }
        if !conn.outbox.is_empty() {
            if let Err(e) = (&*socket).write_all(&conn.outbox).await {
                return End::Dropped(format!("write: {e}"));
            }
            conn.outbox.clear();
        }
    }
}

/// Waits, briefly, for the server to close its side after its close frame.
async fn await_eof(socket: &Async<std::net::TcpStream>) {
    let eof = async {
        let mut scratch = [0; 64];
        loop {
            if socket.readable().await.is_err() {
                return;
            }
            match (&mut socket.get_ref()).read(&mut scratch) {
                Ok(0) => return,
                Err(e) if !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => return,
                _ => {}
            }
        }
    };
    future::or(eof, async {
        Timer::after(CLOSE_EOF).await;
    })
    .await;
}

/// A client frame: masked, as RFC 6455 requires of every client frame. The all-zero key is valid
/// and leaves the payload as it is; unpredictability guards browsers against proxies, which a
/// loopback benchmark does not have. Payloads here are all under 126 bytes.
fn client_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    let len = payload.len().min(125);
    out.push(0x80 | opcode);
    out.push(0x80 | len as u8);
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&payload[..len]);
}

fn parse_seq(payload: &[u8]) -> Option<u64> {
    std::str::from_utf8(payload).ok()?.strip_prefix("{\"seq\":")?.strip_suffix('}')?.parse().ok()
}

/// The broadcast sequence numbers one lifetime received, as a bitmap from `base`.
#[derive(Default)]
struct Received {
    base: u64,
    bits: Vec<u64>,
    lo: u64,
    /// The highest number received; 0 while none was (numbers start at 1).
    hi: u64,
}

#[derive(Debug, PartialEq, Eq)]
enum Arrival {
    First,
    /// Above every number so far; `skipped` numbers between are missing (for now).
    Next {
        skipped: u64,
    },
    /// Below every number so far; `skipped` numbers between are missing (for now).
    Earlier {
        skipped: u64,
    },
    /// Within the range so far, filling a gap.
    Late,
    Duplicate,
}

impl Received {
    fn any(&self) -> bool {
        self.hi != 0
    }

    fn record(&mut self, seq: u64) -> Arrival {
        if !self.any() {
            self.base = seq;
            self.lo = seq;
            self.hi = seq;
            self.bits.clear();
            self.set(seq);
            return Arrival::First;
        }
        if seq < self.base {
            self.rebase(seq);
        }
        if self.has(seq) {
            return Arrival::Duplicate;
        }
        self.set(seq);
        if seq > self.hi {
            let skipped = seq - self.hi - 1;
            self.hi = seq;
            Arrival::Next { skipped }
        } else if seq < self.lo {
            let skipped = self.lo - seq - 1;
            self.lo = seq;
            Arrival::Earlier { skipped }
        } else {
            Arrival::Late
        }
    }

    fn reset(&mut self) {
        self.hi = 0;
        self.bits.clear();
    }

    fn has(&self, seq: u64) -> bool {
        let i = seq - self.base;
        self.bits.get((i / 64) as usize).is_some_and(|word| word >> (i % 64) & 1 == 1)
    }

    fn set(&mut self, seq: u64) {
        let i = seq - self.base;
        let word = (i / 64) as usize;
        if word >= self.bits.len() {
            self.bits.resize(word + 1, 0);
        }
        self.bits[word] |= 1 << (i % 64);
    }

    /// Only when a number below the first arrives, which an in-order server never sends.
    fn rebase(&mut self, base: u64) {
        let (old, old_base) = (std::mem::take(&mut self.bits), self.base);
        self.base = base;
        for (w, word) in (0u64..).zip(old) {
            for b in (0..64).filter(|b| word >> b & 1 == 1) {
                self.set(old_base + w * 64 + b);
            }
        }
    }
}

struct Sample {
    t: u64,
    rss: Option<u64>,
    client_rss: u64,
    open: usize,
    broadcasts: u64,
    missing: u64,
}

/// How flat RSS stayed over the samples after the warm-up.
#[derive(Debug)]
struct Flatness {
    mean_mib: f64,
    /// Least squares, MiB per minute.
    slope_mib_per_min: f64,
    /// From the first sample to the last, percent of the first.
    change_pct: f64,
    /// The largest distance of a sample from the mean, percent of the mean.
    max_dev_pct: f64,
}

/// `points` are (seconds, MiB); None with fewer than two.
fn flatness(points: &[(f64, f64)]) -> Option<Flatness> {
    let (&(_, first), &(_, last)) = (points.first()?, points.last()?);
    if points.len() < 2 || first <= 0.0 {
        return None;
    }
    let n = points.len() as f64;
    let mean_t = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mean_t).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mean_t) * (p.1 - mean)).sum();
    let slope = if sxx > 0.0 { sxy / sxx } else { 0.0 };
    let max_dev = points.iter().map(|p| (p.1 - mean).abs()).fold(0.0, f64::max);
    Some(Flatness {
        mean_mib: mean,
        slope_mib_per_min: slope * 60.0,
        change_pct: 100.0 * (last - first) / first,
        max_dev_pct: 100.0 * max_dev / mean,
    })
}

fn summary(
    plan: &Plan,
    run: &Run,
    samples: &[Sample],
    resources: Value,
    ramp_failures: u64,
    ramp_errors: &BTreeMap<String, u64>,
) -> Value {
    let points: Vec<(f64, f64)> =
        samples.iter().filter(|s| s.t >= plan.warmup).filter_map(|s| Some((s.t as f64, mib(s.rss?)))).collect();
    let flat = flatness(&points);
    // A sample the server did not answer (it exited) leaves the run unproven.
    let server_alive = samples.iter().all(|s| s.rss.is_some());
    let rss_flat = server_alive
        && flat.as_ref().is_some_and(|f| f.change_pct.abs() <= plan.flat_pct && f.max_dev_pct <= plan.flat_pct);
    let loss = &run.loss;
    let no_loss = loss.missing.get() == 0
        && loss.duplicates.get() == 0
        && loss.out_of_order.get() == 0
        && loss.silent.get() == 0
        && run.broadcasts() > 0;
    let reconnects_ok = run.reconnects.failed.get() == 0 && ramp_failures == 0;
    let no_drops = run.dropped.get() == 0;
    let pongs_ok = run.pings.missing.get() == 0;
    json!({
        "conns": plan.conns,
        "secs": plan.secs,
        "ping_every_s": plan.ping_every,
        "reconnect_pct": plan.reconnect_pct,
        "report_every_s": plan.report_every,
        "warmup_s": plan.warmup,
        "ramp": {"failures": ramp_failures, "errors": ramp_errors},
        "rss": {
            "samples": samples.iter().map(|s| json!({
                "t_s": s.t,
                "rss_bytes": s.rss,
                "rss_mib": s.rss.map(|rss| round3(mib(rss))),
                "client_rss_bytes": s.client_rss,
                "conns": s.open,
                "broadcasts": s.broadcasts,
                "missing": s.missing,
            })).collect::<Vec<_>>(),
            "post_warmup_samples": points.len(),
            "mean_mib": flat.as_ref().map(|f| round3(f.mean_mib)),
            "slope_mib_per_min": flat.as_ref().map(|f| round3(f.slope_mib_per_min)),
            "change_pct": flat.as_ref().map(|f| round3(f.change_pct)),
            "max_dev_pct": flat.as_ref().map(|f| round3(f.max_dev_pct)),
            "limit_pct": plan.flat_pct,
        },
        "broadcasts": {
            "sent": run.broadcasts(),
            "lifetimes": loss.lifetimes.get(),
            "expected": loss.delivered.get() + loss.missing.get(),
            "delivered": loss.delivered.get(),
            "missing": loss.missing.get(),
            "duplicates": loss.duplicates.get(),
            "out_of_order": loss.out_of_order.get(),
            "silent_lifetimes": loss.silent.get(),
            "publisher_copies": run.publisher_copies.get(),
            "publisher_counted": false,
        },
        "reconnects": {
            "closed": run.reconnects.closed.get(),
            "done": run.reconnects.done.get(),
            "failed": run.reconnects.failed.get(),
        },
        "dropped": run.dropped.get(),
        "errors": *run.errors.borrow(),
        "foreign_frames": run.foreign.get(),
        "pings": {
            "sent": run.pings.sent.get(),
            "pongs": run.pings.pongs.get(),
            "missing": run.pings.missing.get(),
            "late": run.pings.late.get(),
            "rtt": measure::latency(&run.pings.rtt.borrow()),
        },
        "resources": resources,
        "checks": {
            "rss_flat": rss_flat,
            "no_loss": no_loss,
            "reconnects_ok": reconnects_ok,
            "no_drops": no_drops,
            "pongs_ok": pongs_ok,
        },
        "pass": rss_flat && no_loss && reconnects_ok && no_drops && pongs_ok,
    })
}

/// The first of `first + k * period` (k >= 0) that is after `now`.
fn next_after(first: u64, period: u64, now: u64) -> u64 {
    if now < first {
        return first;
    }
    first + ((now - first) / period + 1) * period
}

async fn sleep_until(ns: u64) {
    let now = now_ns();
    if ns > now {
        Timer::after(Duration::from_nanos(ns - now)).await;
    }
}

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_arrivals_count_gaps_and_duplicates() {
        let mut r = Received::default();
        assert_eq!(r.record(5), Arrival::First);
        assert_eq!(r.record(6), Arrival::Next { skipped: 0 });
        assert_eq!(r.record(9), Arrival::Next { skipped: 2 });
        assert_eq!(r.record(9), Arrival::Duplicate);
        assert_eq!(r.record(7), Arrival::Late);
        assert_eq!(r.record(7), Arrival::Duplicate);
        assert_eq!(r.record(200), Arrival::Next { skipped: 190 });
        assert_eq!(r.record(6), Arrival::Duplicate);
    }

    #[test]
    fn a_number_below_the_first_rebases_the_bitmap() {
        let mut r = Received::default();
        r.record(100);
        r.record(170);
        assert_eq!(r.record(3), Arrival::Earlier { skipped: 96 });
        assert_eq!(r.record(100), Arrival::Duplicate);
        assert_eq!(r.record(170), Arrival::Duplicate);
        assert_eq!(r.record(4), Arrival::Late);
        r.reset();
        assert!(!r.any());
        assert_eq!(r.record(1), Arrival::First);
    }

    #[test]
    fn flatness_of_a_line() {
        let f = flatness(&[(0.0, 100.0), (60.0, 102.0), (120.0, 104.0)]).expect("three points");
        assert!((f.slope_mib_per_min - 2.0).abs() < 1e-9);
        assert!((f.change_pct - 4.0).abs() < 1e-9);
        assert!((f.mean_mib - 102.0).abs() < 1e-9);
        assert!((f.max_dev_pct - 200.0 / 102.0).abs() < 1e-9);
        assert!(flatness(&[(0.0, 1.0)]).is_none());
    }

    #[test]
    fn schedules() {
        assert_eq!(next_after(10, 5, 3), 10);
        assert_eq!(next_after(10, 5, 10), 15);
        assert_eq!(next_after(10, 5, 14), 15);
        assert_eq!(next_after(10, 5, 15), 20);
    }

    #[test]
    fn seq_payload_and_client_frames() {
        assert_eq!(parse_seq(b"{\"seq\":42}"), Some(42));
        assert_eq!(parse_seq(b"{\"seq\":x}"), None);
        let mut out = Vec::new();
        client_frame(&mut out, 0x9, &7u64.to_be_bytes());
        let mut cursor = std::io::Cursor::new(&out[..]);
        let parsed = async_tungstenite::tungstenite::protocol::frame::FrameHeader::parse(&mut cursor);
        let (header, len) = parsed.expect("valid").expect("whole");
        assert_eq!(header.opcode, OpCode::Control(Control::Ping));
        assert!(header.mask.is_some());
        assert_eq!(len, 8);
    }
}
