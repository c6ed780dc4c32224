//! Token buckets and the per-IP table behind admission and per-connection rate limits.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// A token bucket refilled lazily from the time of the last look.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenBucket {
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    /// A full bucket of `capacity` tokens at `now`.
    pub fn full(capacity: f64, now: Instant) -> Self {
        Self { tokens: capacity, at: now }
    }

    /// Refills at `rate` per second up to `capacity`, then takes `cost` if that many are there.
    pub fn try_take(&mut self, now: Instant, rate: f64, capacity: f64, cost: f64) -> bool {
        self.refill(now, rate, capacity);
        if self.tokens >= cost {
            self.tokens -= cost;
            true
        } else {
            false
        }
    }

    /// How long until `cost` tokens are available (zero when they already are).
    pub fn wait_for(&self, rate: f64, cost: f64) -> Duration {
        if self.tokens >= cost || rate <= 0.0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64((cost - self.tokens) / rate)
    }

    /// True when the bucket would be full at `now`.
    pub fn is_full(&self, now: Instant, rate: f64, capacity: f64) -> bool {
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

/// What the hub remembers of one client address.
#[derive(Debug, Clone, Copy)]
pub struct IpState {
    /// Open WebSocket connections from this address.
    pub open: u32,
    /// Upgrade attempts allowed (the connect rate).
    pub connects: TokenBucket,
}

/// Per-IP counts and connect-rate buckets. Entries vanish once nothing is open from the
/// address and its bucket has refilled, so the table does not grow with history.
#[derive(Debug, Default)]
pub struct IpTable {
    entries: HashMap<IpAddr, IpState>,
}

impl IpTable {
    /// The state of `ip`, created with a full bucket of `burst` tokens.
    pub fn entry(&mut self, ip: IpAddr, now: Instant, burst: f64) -> &mut IpState {
        self.entries.entry(ip).or_insert_with(|| IpState { open: 0, connects: TokenBucket::full(burst, now) })
    }

    /// Open connections from `ip`.
    pub fn open(&self, ip: IpAddr) -> u32 {
        self.entries.get(&ip).map_or(0, |s| s.open)
    }

    /// One connection from `ip` ended.
    pub fn release(&mut self, ip: IpAddr) {
        if let Some(state) = self.entries.get_mut(&ip) {
            state.open = state.open.saturating_sub(1);
        }
    }

    /// Forgets addresses with nothing open and a full bucket.
    pub fn sweep(&mut self, now: Instant, rate: f64, burst: f64) {
        self.entries.retain(|_, s| s.open > 0 || !s.connects.is_full(now, rate, burst));
    }

    /// Number of addresses remembered.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no address is remembered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
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

    #[test]
    fn ip_table_forgets_idle_addresses() {
        let t0 = origin();
        let ip: IpAddr = [10, 0, 0, 1].into();
        let mut table = IpTable::default();
        let state = table.entry(ip, t0, 5.0);
        state.open += 1;
        assert!(state.connects.try_take(t0, 1.0, 5.0, 1.0));
        table.sweep(t0 + Duration::from_secs(60), 1.0, 5.0);
        assert_eq!(table.open(ip), 1, "kept while open");
        table.release(ip);
        table.sweep(t0 + Duration::from_millis(500), 1.0, 5.0);
        assert_eq!(table.len(), 1, "kept while its bucket refills");
        table.sweep(t0 + Duration::from_secs(2), 1.0, 5.0);
        assert!(table.is_empty());
    }
}
