//! The circuit breaker (see the module docs) and the reconnect backoff.

use std::time::{Duration, Instant};

use super::conn::Phase;
use super::rng::SplitMix;
use super::{CONNECT_TIMEOUT, LinkConn, RedisLink};
use crate::config::BackoffConfig;
use crate::time::later;

/// The breaker's state; [`RedisLink::state`] shows it to the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Breaker {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen,
}

impl RedisLink {
    /// A connection failed: forget it, count the failure, and reconnect later unless the breaker opened.
    pub(super) fn lose(&mut self, now: Instant, which: LinkConn, close: bool) {
        if close {
            self.closes.push_back(which);
        }
        let owed = self.conn_mut(which).reset();
        self.abandon(owed);
        if which == LinkConn::Subscriber {
            self.probe_reset();
        }
        // A lost subscriber connection drops every subscription; a lost command connection
        // can send nothing: either way the waiting reads cannot be made whole.
        self.abandon_reads();
        if matches!(self.breaker, Breaker::Closed { .. }) {
            let delay = backoff_delay(&self.backoff, self.conn(which).attempt, &mut self.rng);
            let conn = self.conn_mut(which);
            conn.attempt = conn.attempt.saturating_add(1);
            conn.phase = Phase::Backoff(later(now, delay));
        }
        self.record_failure(now);
    }

    /// A failure (see the module docs): one more towards the threshold, or back to open when half-open.
    pub(super) fn record_failure(&mut self, now: Instant) {
        match self.breaker {
            Breaker::Closed { failures } if failures + 1 < self.threshold => {
                self.breaker = Breaker::Closed { failures: failures + 1 }
            }
            Breaker::Closed { .. } | Breaker::HalfOpen => self.trip(now),
            Breaker::Open { .. } => {}
        }
    }

    /// A good reply on `which`: the count starts over, and so does that connection's backoff.
    pub(super) fn record_success(&mut self, which: LinkConn) {
        if let Breaker::Closed { .. } = self.breaker {
            self.breaker = Breaker::Closed { failures: 0 };
            self.conn_mut(which).attempt = 0;
        }
    }

    /// Opens the breaker: both sockets go, nothing reconnects until `open_for` has passed.
    pub(super) fn trip(&mut self, now: Instant) {
        self.breaker = Breaker::Open { until: later(now, self.open_for) };
        self.drop_connections();
        self.cluster_connections = None;
    }

    /// The half-open probe succeeded.
    pub(super) fn close_breaker(&mut self, now: Instant) {
        self.breaker = Breaker::Closed { failures: 0 };
        self.cmd.attempt = 0;
        self.sub.phase = Phase::Connecting { deadline: Some(later(now, CONNECT_TIMEOUT)), asked: false };
        self.register(now);
    }
}

/// The delay before reconnect attempt `attempt` (0-based): `min · 2^attempt` capped at `max`, times
/// `1 ± jitter`.
pub(super) fn backoff_delay(config: &BackoffConfig, attempt: u32, rng: &mut SplitMix) -> Duration {
    let base = config.min.saturating_mul(1u32 << attempt.min(31)).min(config.max);
    let jitter = config.jitter.clamp(0.0, 1.0);
    let factor = 1.0 + jitter * (2.0 * rng.unit() - 1.0);
    Duration::try_from_secs_f64(base.as_secs_f64() * factor).unwrap_or(base)
}
