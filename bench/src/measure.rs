//! What a run costs: our own CPU (getrusage), the server's CPU and RSS (/proc), and latency
//! summaries from HDR histograms.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{Value, json};

/// CPU time this process has used, user plus system.
pub(crate) fn own_cpu() -> Duration {
    // SAFETY: `rusage` is plain old data, so all-zero is a valid value for getrusage to fill.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid, exclusive pointer to a `rusage`.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &raw mut usage) } != 0 {
        return Duration::ZERO;
    }
    let micros = |t: libc::timeval| {
        Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
            + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
    };
    micros(usage.ru_utime) + micros(usage.ru_stime)
}

/// The server's counters at one instant, read from /proc/PID.
#[derive(Clone, Copy)]
pub(crate) struct ProcSample {
    cpu: Duration,
    pub(crate) rss: u64,
}

pub(crate) fn sample(pid: Option<u32>) -> Option<ProcSample> {
    let pid = pid?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses; the fields after its last ')' do not.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of proc(5); `fields` starts at field 3.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).ok().filter(|&hz| hz > 0)?;
    let cpu = Duration::from_nanos(ticks * 1_000_000_000 / hz);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status_kib(&status, "VmRSS:")? * 1024;
    Some(ProcSample { cpu, rss })
}

fn status_kib(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

/// Our own resident set, to show the load generator's footprint next to the server's.
pub(crate) fn own_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| status_kib(&status, "VmRSS:"))
        .map_or(0, |kib| kib * 1024)
}

/// A measured interval: wall time, our CPU, the server's CPU over the same instants.
pub(crate) struct Window {
    start: Instant,
    own: Duration,
    server: Option<ProcSample>,
    pid: Option<u32>,
}

impl Window {
    pub(crate) fn begin(pid: Option<u32>) -> Self {
        Self { start: Instant::now(), own: own_cpu(), server: sample(pid), pid }
    }

    /// Percentages are of one core: 100 means a core fully busy.
    pub(crate) fn end(&self) -> Value {
        let wall = self.start.elapsed();
        let percent = |cpu: Duration| (1000.0 * cpu.as_secs_f64() / wall.as_secs_f64()).round() / 10.0;
        let mut out = json!({
            "wall_s": round3(wall.as_secs_f64()),
            "client_cpu_pct": percent(own_cpu().saturating_sub(self.own)),
            "client_rss_bytes": own_rss(),
        });
        if let (Some(before), Some(after)) = (self.server, sample(self.pid)) {
            out["server_cpu_pct"] = json!(percent(after.cpu.saturating_sub(before.cpu)));
            out["server_rss_bytes"] = json!(after.rss);
        }
        out
    }
}

pub(crate) fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Latencies in nanoseconds, from 1 ns to a minute, 3 significant digits.
pub(crate) fn histogram() -> Histogram<u64> {
    // The bounds are constants that satisfy `new_with_bounds`' rules (low >= 1, high >= 2 * low).
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid constant bounds")
}

/// The quantiles the CDF plots draw through; dense in the tail, where servers differ.
const CDF: [f64; 17] =
    [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.98, 0.99, 0.995, 0.998, 0.999, 0.9995, 0.9999, 0.99995, 0.99999, 1.0];

/// Summary in microseconds; `cdf` is `[quantile, µs]` pairs.
pub(crate) fn latency(h: &Histogram<u64>) -> Value {
    let us = |ns: u64| round3(ns as f64 / 1000.0);
    json!({
        "count": h.len(),
        "p50_us": us(h.value_at_quantile(0.5)),
        "p90_us": us(h.value_at_quantile(0.9)),
        "p99_us": us(h.value_at_quantile(0.99)),
        "p999_us": us(h.value_at_quantile(0.999)),
        "max_us": us(h.max()),
        "mean_us": round3(h.mean() / 1000.0),
        "cdf": CDF.iter().map(|&q| json!([q, us(h.value_at_quantile(q))])).collect::<Vec<_>>(),
    })
}

/// Raises the open-file soft limit to the hard one, and says whether `needed` descriptors fit.
/// The generator holds one descriptor per connection, and no more: 19,500 connections fit a
/// 20,000 limit with room for the executor's own few.
pub(crate) fn ensure_descriptors(needed: usize) -> Result<(), String> {
    // SAFETY: `rlimit` is plain old data; getrlimit fills it.
    let mut limit: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: valid resource and an exclusive pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) } != 0 {
        return Err(format!("getrlimit: {}", std::io::Error::last_os_error()));
    }
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: valid resource and a pointer to an initialised `rlimit`.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit) } != 0 {
            return Err(format!("setrlimit: {}", std::io::Error::last_os_error()));
        }
    }
    let headroom = 32;
    let available = usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX);
    if needed + headroom > available {
        return Err(format!(
            "{needed} connections need {} descriptors but RLIMIT_NOFILE is {available}: \
             split the connections across processes or raise the limit",
            needed + headroom
        ));
    }
    Ok(())
}
