//! Scenarios that only open connections: `idle` (paced, then held) and `storm` (all at once).

use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use smol::{LocalExecutor, Timer, lock::Semaphore};

use crate::args::Args;
use crate::conn::{self, Options, Target, Ws};
use crate::measure::{self, Window, round3};

/// Small: tungstenite allocates the read buffer up front, and idle clients read nothing.
const IDLE_READ_BUFFER: usize = 4096;

pub(crate) async fn idle(executor: &LocalExecutor<'static>, args: &mut Args) -> Result<Value, String> {
    let target = Target::parse(&args.require::<String>("url")?)?;
    let conns: usize = args.require("conns")?;
    let hold: f64 = args.take("hold", 10.0)?;
    let rate: f64 = args.take("rate", 5000.0)?;
    let concurrency: usize = args.take("concurrency", 256)?;
    let pid: Option<u32> =
        args.take_str("server-pid").map(|p| p.parse()).transpose().map_err(|e| format!("--server-pid: {e}"))?;
    measure::ensure_descriptors(conns)?;

    let before = measure::sample(pid);
    let window = Window::begin(pid);
    let connected = connect_many(executor, &target, conns, rate, concurrency).await;
    let connecting = window.end();
    // The server may still be settling a connection after its 101 left; let it finish first.
    Timer::after(Duration::from_secs(1)).await;
    let holding = Window::begin(pid);
    Timer::after(Duration::from_secs_f64(hold)).await;
    let held = holding.end();
    let after = measure::sample(pid);
    let open = connected.sockets.len();
    let mut summary = json!({
        "conns": conns,
        "connected": open,
        "failures": connected.failures,
        "errors": connected.errors,
        "connect_s": round3(connected.elapsed.as_secs_f64()),
        "connect_per_s": per_second(open, connected.elapsed),
        "paced_per_s": rate,
        "hold_s": hold,
        "connecting": connecting,
        "holding": held,
    });
    if let (Some(before), Some(after)) = (before, after) {
        summary["server_rss_before_bytes"] = json!(before.rss);
        summary["server_rss_held_bytes"] = json!(after.rss);
        if open > 0 {
            summary["server_rss_per_conn_bytes"] = json!(after.rss.saturating_sub(before.rss) / open as u64);
        }
    }
    drop(connected);
    Ok(summary)
}

pub(crate) async fn storm(executor: &LocalExecutor<'static>, args: &mut Args) -> Result<Value, String> {
    let target = Target::parse(&args.require::<String>("url")?)?;
    let conns: usize = args.require("conns")?;
    let concurrency: usize = args.take("concurrency", 512)?;
    let pid: Option<u32> =
        args.take_str("server-pid").map(|p| p.parse()).transpose().map_err(|e| format!("--server-pid: {e}"))?;
    measure::ensure_descriptors(conns)?;

    let window = Window::begin(pid);
    let connected = connect_many(executor, &target, conns, 0.0, concurrency).await;
    let resources = window.end();
    let open = connected.sockets.len();
    let summary = json!({
        "conns": conns,
        "concurrency": concurrency,
        "upgraded": open,
        "failures": connected.failures,
        "errors": connected.errors,
        "elapsed_s": round3(connected.elapsed.as_secs_f64()),
        "upgrades_per_s": per_second(open, connected.elapsed),
        "resources": resources,
    });
    drop(connected);
    Ok(summary)
}

pub(crate) struct Connected {
    pub(crate) sockets: Vec<Ws>,
    pub(crate) failures: u64,
    /// Failure messages and how often each came, so a run with failures says why.
    pub(crate) errors: BTreeMap<String, u64>,
    /// From the first connect to the last upgrade (or failure).
    pub(crate) elapsed: Duration,
}

/// Opens `n` connections, at most `concurrency` handshakes at a time and, when `rate` > 0,
/// starting one every 1/`rate` seconds.
pub(crate) async fn connect_many(
    executor: &LocalExecutor<'static>,
    target: &Target,
    n: usize,
    rate: f64,
    concurrency: usize,
) -> Connected {
    connect_many_with(
        executor,
        target,
        n,
        rate,
        concurrency,
        Options { read_buffer: IDLE_READ_BUFFER, receive_buffer: None },
    )
    .await
}

pub(crate) async fn connect_many_with(
    executor: &LocalExecutor<'static>,
    target: &Target,
    n: usize,
    rate: f64,
    concurrency: usize,
    options: Options,
) -> Connected {
    connect_many_then(executor, target, n, rate, concurrency, options, |ws| async move { Ok(ws) }).await
}

/// [`connect_many_with`], and `then` on each upgraded connection (a protocol's own handshake)
/// before its handshake slot is freed; a connection counts as connected once `then` succeeds.
pub(crate) async fn connect_many_then<F, Fut>(
    executor: &LocalExecutor<'static>,
    target: &Target,
    n: usize,
    rate: f64,
    concurrency: usize,
    options: Options,
    then: F,
) -> Connected
where
    F: Fn(Ws) -> Fut + 'static,
    Fut: Future<Output = Result<Ws, String>> + 'static,
{
    let gate = Arc::new(Semaphore::new(concurrency.max(1)));
    let target = Rc::new(target.clone());
    let then = Rc::new(then);
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        if rate > 0.0 {
            Timer::at(start + Duration::from_secs_f64(i as f64 / rate)).await;
        }
        let permit = gate.acquire_arc().await;
        let target = Rc::clone(&target);
        let then = Rc::clone(&then);
        tasks.push(executor.spawn(async move {
            let result = match conn::connect(&target, options).await {
                Ok(ws) => then(ws).await,
                Err(e) => Err(e),
            };
            drop(permit);
            result
        }));
    }
    let mut connected =
        Connected { sockets: Vec::with_capacity(n), failures: 0, errors: BTreeMap::new(), elapsed: Duration::ZERO };
    for task in tasks {
        match task.await {
            Ok(ws) => connected.sockets.push(ws),
            Err(e) => {
                connected.failures += 1;
                *connected.errors.entry(e).or_default() += 1;
            }
        }
    }
    connected.elapsed = start.elapsed();
    connected
}

fn per_second(count: usize, elapsed: Duration) -> f64 {
    if elapsed.is_zero() { 0.0 } else { (count as f64 / elapsed.as_secs_f64()).round() }
}
