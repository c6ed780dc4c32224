//! Instant arithmetic that cannot panic: every deadline in the core is built here.

use std::time::{Duration, Instant};

/// `at + by`, saturating far in the future (or at `at`) instead of panicking: validation keeps
/// configured durations within a year, but an `Instant` near the end of its range, or a
/// duration built in code, must still not take a worker down.
pub(crate) fn later(at: Instant, by: Duration) -> Instant {
    at.checked_add(by).or_else(|| at.checked_add(crate::config::MAX_DURATION)).unwrap_or(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saturates_instead_of_panicking() {
        let t0 = switchboard_testkit::origin();
        assert_eq!(later(t0, Duration::from_secs(1)), t0 + Duration::from_secs(1));
        assert!(later(t0, Duration::MAX) >= t0);
    }
}
