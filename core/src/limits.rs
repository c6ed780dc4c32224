//! Token buckets, and the node-wide admission counts behind the connection limits.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::config::LimitsConfig;

/// A token bucket refilled lazily from the time of the last look.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct TokenBucket {
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    /// A full bucket of `capacity` tokens at `now`.
    pub(crate) fn full(capacity: f64, now: Instant) -> Self {
        Self { tokens: capacity, at: now }
    }

    /// Refills at `rate` per second up to `capacity`, then takes `cost` if that many are there.
    pub(crate) fn try_take(&mut self, now: Instant, rate: f64, capacity: f64, cost: f64) -> bool {
        self.refill(now, rate, capacity);
        if self.tokens >= cost {
            self.tokens -= cost;
            true
        } else {
            false
        }
    }

    /// How long until `cost` tokens are available (zero when they already are).
    pub(crate) fn wait_for(&self, rate: f64, cost: f64) -> Duration {
        if self.tokens >= cost || rate <= 0.0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64((cost - self.tokens) / rate)
    }

    /// True when the bucket would be full at `now`.
    pub(crate) fn is_full(&self, now: Instant, rate: f64, capacity: f64) -> bool {
        let mut probe = *self;
        probe.refill(now, rate, capacity);
        probe.tokens >= capacity
    }

    fn refill(&mut self, now: Instant, rate: f64, capacity: f64) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(capacity);
        self.at = self.at.max(now);
    }
}

/// How often per-address state that went quiet is forgotten.
const SWEEP_INTERVAL: Duration = Duration::from_secs(30);

/// Why admission refused a connection.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Refusal {
    /// The node holds `max_connections`.
    Capacity,
    /// The address holds `max_connections_per_ip`.
    TooManyFromAddress,
    /// The address connects faster than `connect_rate_per_ip`; a token is back after this long.
    TooFast(Duration),
    /// The address has `max_handshaking_per_ip` connections in their handshake.
    TooManyHandshaking,
}

/// The node-wide side of admission: counts shared by every hub of a node, so that limits mean
/// the same whatever the worker count and however the kernel spreads connections.
///
/// A hub calls it from its own thread, a handful of times per connection (never per message).
/// A single hub owns an [`AdmissionTable`]; several hubs share one through a handle that
/// synchronises inside (the shells' `SharedAdmission`), which keeps the core free of locks.
pub trait Admission: Send + fmt::Debug {
    /// A connection starts its handshake; `client` is the address per-IP rules count it by
    /// (`None`: not counted per address, e.g. a trusted proxy). Returns the node's number of
    /// connections handshaking, this one included.
    fn begin_handshake(&mut self, client: Option<IpAddr>, now: Instant) -> Result<usize, Refusal>;
    /// A connection counted by `begin_handshake` was upgraded, answered or ended.
    fn end_handshake(&mut self, client: Option<IpAddr>);
    /// An upgrade from `client` asks for a place among the node's connections.
    fn open(&mut self, client: IpAddr, now: Instant) -> Result<(), Refusal>;
    /// A connection admitted by `open` ended.
    fn close(&mut self, client: IpAddr);
    /// A connection to Pusher app number `app` (its index in `[[pusher.app]]`) asks for a
    /// place among the app's at most `max` (0: unlimited); true when it has one.
    fn open_app(&mut self, app: usize, max: usize) -> bool;
    /// A connection given a place by `open_app` ended.
    fn close_app(&mut self, app: usize);
}

/// What admission remembers of one client address.
#[derive(Debug, Clone, Copy)]
struct IpState {
    open: u32,
    handshaking: u32,
    /// Upgrade attempts allowed (the connect rate).
    connects: TokenBucket,
}

/// Exact node-wide counts and the per-address table behind the connection limits. Entries
/// vanish once nothing is open or handshaking from the address and its bucket has refilled,
/// so the table does not grow with history.
#[derive(Debug)]
pub struct AdmissionTable {
    max_connections: usize,
    max_per_ip: usize,
    rate: f64,
    burst: f64,
    max_handshaking_per_ip: usize,
    tracks_ips: bool,
    connections: usize,
    handshaking: usize,
    ips: HashMap<IpAddr, IpState>,
    sweep_at: Option<Instant>,
    /// Open connections per Pusher app, by the app's index.
    apps: Vec<usize>,
}

impl AdmissionTable {
    /// Empty counts under `limits`.
    pub fn new(limits: &LimitsConfig) -> Self {
        Self {
            max_connections: limits.max_connections,
            max_per_ip: limits.max_connections_per_ip,
            rate: limits.connect_rate_per_ip,
            burst: f64::from(limits.connect_burst_per_ip),
            max_handshaking_per_ip: limits.max_handshaking_per_ip,
            tracks_ips: limits.tracks_ips(),
            connections: 0,
            handshaking: 0,
            ips: HashMap::new(),
            sweep_at: None,
            apps: Vec::new(),
        }
    }

    /// Connections admitted and not yet closed.
    pub fn connections(&self) -> usize {
        self.connections
    }

    /// Connections in their handshake.
    pub fn handshaking(&self) -> usize {
        self.handshaking
    }

    /// Addresses remembered.
    pub fn addresses(&self) -> usize {
        self.ips.len()
    }

    fn entry(&mut self, ip: IpAddr, now: Instant) -> &mut IpState {
        let burst = self.burst;
        self.ips.entry(ip).or_insert_with(|| IpState {
            open: 0,
            handshaking: 0,
            connects: TokenBucket::full(burst, now),
        })
    }

    /// Forgets idle addresses every [`SWEEP_INTERVAL`]; called on the way in, so it costs
    /// nothing while nothing arrives.
    fn sweep(&mut self, now: Instant) {
        if self.sweep_at.is_some_and(|at| now < at) {
            return;
        }
        let (rate, burst) = (self.rate, self.burst);
        self.ips.retain(|_, s| s.open > 0 || s.handshaking > 0 || !s.connects.is_full(now, rate, burst));
        self.sweep_at = Some(now.checked_add(SWEEP_INTERVAL).unwrap_or(now));
    }

    /// Drops an entry that holds nothing and has no bucket worth remembering.
    fn forget_if_idle(&mut self, ip: IpAddr) {
        if self.rate > 0.0 {
            return;
        }
        if self.ips.get(&ip).is_some_and(|s| s.open == 0 && s.handshaking == 0) {
            self.ips.remove(&ip);
        }
    }
}

impl Admission for AdmissionTable {
    fn open_app(&mut self, app: usize, max: usize) -> bool {
        if self.apps.len() <= app {
            self.apps.resize(app + 1, 0);
        }
        let open = &mut self.apps[app];
        if max != 0 && *open >= max {
            return false;
        }
        *open += 1;
        true
    }

    fn close_app(&mut self, app: usize) {
        if let Some(open) = self.apps.get_mut(app) {
            *open = open.saturating_sub(1);
        }
    }

    fn begin_handshake(&mut self, client: Option<IpAddr>, now: Instant) -> Result<usize, Refusal> {
        if let Some(ip) = client.filter(|_| self.tracks_ips) {
            self.sweep(now);
            let limit = self.max_handshaking_per_ip;
            let state = self.entry(ip, now);
            if limit > 0 && state.handshaking as usize >= limit {
                self.forget_if_idle(ip);
                return Err(Refusal::TooManyHandshaking);
            }
            state.handshaking += 1;
        }
        self.handshaking += 1;
        Ok(self.handshaking)
    }

    fn end_handshake(&mut self, client: Option<IpAddr>) {
        self.handshaking = self.handshaking.saturating_sub(1);
        if let Some(ip) = client.filter(|_| self.tracks_ips) {
            if let Some(state) = self.ips.get_mut(&ip) {
                state.handshaking = state.handshaking.saturating_sub(1);
            }
            self.forget_if_idle(ip);
        }
    }

    fn open(&mut self, client: IpAddr, now: Instant) -> Result<(), Refusal> {
        if self.connections >= self.max_connections {
            return Err(Refusal::Capacity);
        }
        if self.tracks_ips {
            self.sweep(now);
            let (per_ip, rate, burst) = (self.max_per_ip, self.rate, self.burst);
            let state = self.entry(client, now);
            if per_ip > 0 && state.open as usize >= per_ip {
                return Err(Refusal::TooManyFromAddress);
            }
            if rate > 0.0 && !state.connects.try_take(now, rate, burst, 1.0) {
                return Err(Refusal::TooFast(state.connects.wait_for(rate, 1.0)));
            }
            state.open += 1;
        }
        self.connections += 1;
        Ok(())
    }

    fn close(&mut self, client: IpAddr) {
        self.connections = self.connections.saturating_sub(1);
        if self.tracks_ips {
            if let Some(state) = self.ips.get_mut(&client) {
                state.open = state.open.saturating_sub(1);
            }
            self.forget_if_idle(client);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_testkit::origin;

    #[test]
    fn bucket_refills_at_rate_up_to_capacity() {
        let t0 = origin();
        let mut bucket = TokenBucket::full(2.0, t0);
        assert!(bucket.try_take(t0, 1.0, 2.0, 1.0));
        assert!(bucket.try_take(t0, 1.0, 2.0, 1.0));
        assert!(!bucket.try_take(t0, 1.0, 2.0, 1.0));
        assert_eq!(bucket.wait_for(1.0, 1.0), Duration::from_secs(1));
        assert!(!bucket.try_take(t0 + Duration::from_millis(999), 1.0, 2.0, 1.0));
        assert!(bucket.try_take(t0 + Duration::from_millis(1999), 1.0, 2.0, 1.0));
        // Long silence refills only to capacity.
        let later = t0 + Duration::from_secs(100);
        assert!(bucket.try_take(later, 1.0, 2.0, 2.0));
        assert!(!bucket.try_take(later, 1.0, 2.0, 1.0));
    }

    fn table(toml: &str) -> AdmissionTable {
        let config = crate::Config::from_toml(toml).expect("valid test config");
        AdmissionTable::new(&config.limits)
    }

    #[test]
    fn node_limits_are_exact() {
        let t0 = origin();
        let mut table = table("[limits]\nmax_connections = 3\nmax_connections_per_ip = 2\n");
        let (a, b): (IpAddr, IpAddr) = ([10, 0, 0, 1].into(), [10, 0, 0, 2].into());
        assert_eq!(table.open(a, t0), Ok(()));
        assert_eq!(table.open(a, t0), Ok(()));
        assert_eq!(table.open(a, t0), Err(Refusal::TooManyFromAddress));
        assert_eq!(table.open(b, t0), Ok(()));
        assert_eq!(table.open(b, t0), Err(Refusal::Capacity));
        table.close(a);
        assert_eq!(table.open(b, t0), Ok(()));
        assert_eq!(table.connections(), 3);
    }

    #[test]
    fn connect_rate_refuses_with_the_wait() {
        let t0 = origin();
        let mut table = table("[limits]\nconnect_rate_per_ip = 1.0\nconnect_burst_per_ip = 2\n");
        let ip: IpAddr = [10, 0, 0, 1].into();
        assert_eq!(table.open(ip, t0), Ok(()));
        assert_eq!(table.open(ip, t0), Ok(()));
        assert_eq!(table.open(ip, t0), Err(Refusal::TooFast(Duration::from_secs(1))));
        assert_eq!(table.open(ip, t0 + Duration::from_secs(1)), Ok(()));
    }

    #[test]
    fn handshaking_is_counted_per_address_and_for_the_node() {
        let t0 = origin();
        let mut table = table("[limits]\nmax_handshaking_per_ip = 2\n");
        let ip: IpAddr = [10, 0, 0, 1].into();
        assert_eq!(table.begin_handshake(Some(ip), t0), Ok(1));
        assert_eq!(table.begin_handshake(Some(ip), t0), Ok(2));
        assert_eq!(table.begin_handshake(Some(ip), t0), Err(Refusal::TooManyHandshaking));
        assert_eq!(table.begin_handshake(None, t0), Ok(3), "uncounted per address, counted for the node");
        table.end_handshake(Some(ip));
        assert_eq!(table.begin_handshake(Some(ip), t0), Ok(3));
        for client in [Some(ip), Some(ip), None] {
            table.end_handshake(client);
        }
        assert_eq!((table.handshaking(), table.addresses()), (0, 0), "nothing left to remember");
    }

    #[test]
    fn idle_addresses_are_forgotten() {
        let t0 = origin();
        let mut table = table("[limits]\nconnect_rate_per_ip = 1.0\nconnect_burst_per_ip = 5\n");
        let ip: IpAddr = [10, 0, 0, 1].into();
        assert_eq!(table.open(ip, t0), Ok(()));
        table.close(ip);
        assert_eq!(table.addresses(), 1, "kept while its bucket refills");
        let other: IpAddr = [10, 0, 0, 2].into();
        assert_eq!(table.open(other, t0 + Duration::from_secs(60)), Ok(()));
        assert_eq!(table.addresses(), 1, "the refilled one was swept");
    }
}
