//! A call's deadline: one bound on everything a call does (the quota wait, the token
//! fetch, every attempt, retries and backoff), unlike the client's per-attempt timeout.

use super::error::Error;
use std::time::{Duration, Instant};

/// How a request states its deadline: relative to the start of its send, or (pages after
/// the first) an instant fixed when paging began, so that one deadline bounds them all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Deadline {
    After(Duration),
    At { at: Instant, of: Duration },
}

impl Deadline {
    /// The instant a send starting at `start` must end by.
    pub(crate) fn fix(self, start: Instant) -> Bound {
        match self {
            Deadline::After(of) => Bound {
                at: start.checked_add(of).unwrap_or(start + FAR),
                of,
            },
            Deadline::At { at, of } => Bound { at, of },
        }
    }
}

/// Far enough to mean "never" and small enough for any `Instant` arithmetic.
const FAR: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// A fixed deadline: the instant, and the duration the caller gave (for messages).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Bound {
    pub(crate) at: Instant,
    pub(crate) of: Duration,
}

impl Bound {
    /// The time left, zero once it passed.
    pub(crate) fn remaining(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }

    pub(crate) fn passed(&self) -> bool {
        Instant::now() >= self.at
    }

    /// The error of a call whose deadline passed, or would pass before `what` could end.
    pub(crate) fn error(&self, what: Option<&str>) -> Error {
        let secs = self.of.as_secs_f64();
        let message = match what {
            Some(what) => format!("the call's deadline of {secs:.3} s would pass {what}"),
            None => format!("the call's deadline of {secs:.3} s passed"),
        };
        Error::Timeout(message, Box::default())
    }
}

/// The earlier of a wait's own end and the deadline, and whether the deadline is the one
/// that binds (so a wait cut short by it fails with the deadline's error).
pub(crate) fn earlier(end: Instant, deadline: Option<Bound>) -> (Instant, bool) {
    match deadline {
        Some(b) if b.at < end => (b.at, true),
        _ => (end, false),
    }
}

/// An attempt's time limit: what is left of the deadline, if any.
pub(crate) fn attempt_limit(deadline: Option<Bound>) -> Option<Duration> {
    deadline.map(|b| b.remaining().max(Duration::from_millis(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relative_deadline_is_fixed_at_the_start_and_an_absolute_one_kept() {
        let start = Instant::now();
        let b = Deadline::After(Duration::from_secs(2)).fix(start);
        assert_eq!(b.at, start + Duration::from_secs(2));
        let later = start + Duration::from_secs(5);
        assert_eq!(
            Deadline::At { at: b.at, of: b.of }.fix(later),
            b,
            "pages keep the first page's deadline"
        );
        assert!(Deadline::After(Duration::MAX).fix(start).at > start);
    }

    #[test]
    fn the_earlier_end_binds() {
        let now = Instant::now();
        let soon = Bound {
            at: now + Duration::from_secs(1),
            of: Duration::from_secs(1),
        };
        let later = now + Duration::from_secs(10);
        assert_eq!(earlier(later, Some(soon)), (soon.at, true));
        assert_eq!(earlier(now, Some(soon)), (now, false));
        assert_eq!(earlier(later, None), (later, false));
    }

    #[test]
    fn the_error_is_a_timeout_naming_the_deadline() {
        let b = Bound {
            at: Instant::now(),
            of: Duration::from_millis(1500),
        };
        assert!(b.passed());
        let e = b.error(None);
        assert!(matches!(e, Error::Timeout(..)));
        assert!(e.to_string().contains("deadline of 1.500 s passed"), "{e}");
        assert!(attempt_limit(Some(b)).unwrap() >= Duration::from_millis(1));
    }
}
