//! What a failed `accept` does: one rule for every shell.

use std::io;
use std::time::{Duration, Instant};

use log::warn;
use switchboard_core::Hub;

/// How long accepting stops after an error that is not the peer's doing.
const PAUSE: Duration = Duration::from_millis(80);
/// Least time between two warnings: such errors come in runs (EMFILE lasts until clients leave).
const WARN_EVERY: Duration = Duration::from_secs(10);

/// One listener's accept state: running, or paused after an error.
#[derive(Debug, Default)]
pub struct Accepting {
    paused_until: Option<Instant>,
    warned_at: Option<Instant>,
}

impl Accepting {
    /// False while accepting is paused.
    pub fn may_accept(&self) -> bool {
        self.paused_until.is_none()
    }

    /// When the pause ends, for the worker's sleep.
    pub fn resume_at(&self) -> Option<Instant> {
        self.paused_until
    }

    /// True when a pause ran out at `now`: accept again at once, since connections that queued
    /// up meanwhile raise no new readiness on an edge-triggered poller.
    pub fn resume(&mut self, now: Instant) -> bool {
        let due = self.paused_until.is_some_and(|t| t <= now);
        if due {
            self.paused_until = None;
        }
        due
    }

    /// An accept failed with `e` (not `WouldBlock`). Returns true when the next accept may
    /// follow at once.
    pub fn failed(&mut self, now: Instant, e: &io::Error, hub: &mut Hub) -> bool {
        if is_transient_accept_error(e) {
            return true;
        }
        // EMFILE, ENFILE, ENOBUFS and the like: the connection waits in the backlog, and
        // retrying before some socket closes would spin. Anything else unknown is treated
        // alike: a pause costs little, a spin costs a core.
        hub.handle_accept_error();
        self.paused_until = Some(now + PAUSE);
        if self.warned_at.is_none_or(|at| now >= at + WARN_EVERY) {
            self.warned_at = Some(now);
            let errors = hub.metrics().accept_errors;
            warn!("accept: {e}; pausing accepts for {PAUSE:?} ({errors} accept error(s) so far)");
        }
        false
    }
}

/// The peer gave up between SYN and accept, or a signal interrupted the call: the next
/// connection in the backlog is fine.
fn is_transient_accept_error(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset | io::ErrorKind::Interrupted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_core::Config;

    #[test]
    fn transient_errors_go_on_and_others_pause_count_and_resume() {
        let mut hub = Hub::new(Config::default(), "n").expect("defaults are valid");
        let mut accepting = Accepting::default();
        let t0 = Instant::now();
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        assert!(accepting.failed(t0, &reset, &mut hub));
        assert!(accepting.may_accept());
        assert_eq!(hub.metrics().accept_errors, 0);

        let emfile = io::Error::other("too many open files");
        assert!(!accepting.failed(t0, &emfile, &mut hub));
        assert!(!accepting.may_accept());
        assert_eq!(hub.metrics().accept_errors, 1);
        assert_eq!(accepting.resume_at(), Some(t0 + PAUSE));
        assert!(!accepting.resume(t0 + PAUSE / 2));
        assert!(accepting.resume(t0 + PAUSE));
        assert!(accepting.may_accept());
        assert!(!accepting.resume(t0 + PAUSE), "a pause ends once");
    }
}
