//! The most a server can impose: every duration the client reads from an answer (a
//! `Retry-After`, a stated limit, a token lifetime, a hunting query's run time) is parsed
//! with checked arithmetic and held to one of these maxima, so that no answer can make
//! the client panic, wait for years, or overflow an instant.

use std::time::{Duration, Instant};

/// The longest wait a server can ask for: `Retry-After` (in any form) and the pause of a
/// bucket after a 429. A longer hint is cut to this, with a warning in the log.
pub const MAX_SERVER_WAIT: Duration = Duration::from_secs(3600);

/// The longest window of a limit learned from a 429's message ("maximum allowed 45 per
/// 00:01:00"). A stated limit with a longer window is not adopted (a warning says so):
/// the published limits have windows of a minute and an hour.
pub const MAX_LEARNED_WINDOW: Duration = Duration::from_secs(86_400);

/// The longest a token is cached, whatever lifetime the token endpoint or a token
/// provider states (real tokens live 60 to 90 minutes). A longer lifetime is cut to this,
/// with a warning.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(86_400);

/// The longest run time a hunting answer may state (`Stats.ExecutionTime`; the service
/// stops a query after 200 s). A longer stated time is ignored, with a warning, and the
/// time the exchange took is recorded instead.
pub const MAX_STATED_RUN_TIME: Duration = Duration::from_secs(3600);

/// `secs` seconds from outside as a duration: `None` unless it is a finite number of at
/// least zero; a larger value than `max` (even one no `Duration` can hold) gives `max`,
/// logged as a warning that names `what`.
pub(crate) fn bounded_secs(secs: f64, max: Duration, what: &str) -> Option<Duration> {
    if !secs.is_finite() || secs < 0.0 {
        return None;
    }
    match Duration::try_from_secs_f64(secs) {
        Ok(d) if d <= max => Some(d),
        _ => {
            log::warn!(
                "{what} of {secs} s is longer than the {} s allowed: using {} s",
                max.as_secs(),
                max.as_secs()
            );
            Some(max)
        }
    }
}

/// `d` held to `max`, logged as a warning that names `what` when it was longer.
pub(crate) fn at_most(d: Duration, max: Duration, what: &str) -> Duration {
    if d > max {
        log::warn!(
            "{what} of {} s is longer than the {} s allowed: using {} s",
            d.as_secs(),
            max.as_secs(),
            max.as_secs()
        );
        max
    } else {
        d
    }
}

/// `at + d`, or the farthest instant that can be reached from `at` when that overflows
/// (a caller's budget of `u64::MAX` milliseconds means "no limit", not a panic).
pub(crate) fn instant_after(at: Instant, d: Duration) -> Instant {
    // A century is far enough for any wait and fits every platform's clock.
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 86_400);
    at.checked_add(d)
        .or_else(|| at.checked_add(CENTURY))
        .unwrap_or(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_from_outside_are_bounded_never_a_panic() {
        let max = Duration::from_secs(60);
        assert_eq!(
            bounded_secs(1.5, max, "x"),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(bounded_secs(0.0, max, "x"), Some(Duration::ZERO));
        for huge in [61.0, 1e9, 1e19, 1e20, 1e300, f64::MAX] {
            assert_eq!(bounded_secs(huge, max, "x"), Some(max), "{huge}");
        }
        for bad in [-1.0, -0.0001, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert_eq!(bounded_secs(bad, max, "x"), None, "{bad}");
        }
        assert_eq!(at_most(Duration::MAX, max, "x"), max);
        assert_eq!(
            at_most(Duration::from_secs(3), max, "x"),
            Duration::from_secs(3)
        );
        let now = Instant::now();
        assert!(instant_after(now, Duration::MAX) > now + Duration::from_secs(86_400 * 365));
        assert_eq!(
            instant_after(now, Duration::from_secs(1)),
            now + Duration::from_secs(1)
        );
    }
}
