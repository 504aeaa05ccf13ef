//! A safe bound on how long a request takes to reach the server, learned from quick answers.
//!
//! A call holds its quota units until its answer (see [`Limiter::hold`]): the server
//! counted it somewhere between the send and the answer. For a call the server works on
//! for long (an advanced hunting query runs for seconds to minutes), the answer is a loose
//! bound, and holding the slot for the whole run wastes quota. The request reached the
//! server within its transit time after the send, and a quick answer's round trip is
//! longer than its own request's transit. So the client keeps the round trips of recent
//! quick answers, and ends a long call's hold at `send + FACTOR × the longest of them`
//! when that is earlier than its answer. The factor absorbs jitter between calls and a
//! new connection's handshakes (a pooled connection's send needs one round trip, a new
//! TLS connection three or four). Until enough answers were seen, holds end at the answer.
//!
//! [`Limiter::hold`]: crate::limiter::Limiter::hold

use std::collections::VecDeque;
use std::time::Duration;

/// How many recent round trips the bound considers.
const SAMPLES: usize = 32;
/// How many round trips must be seen before the bound is used.
const MIN_SAMPLES: usize = 8;
/// The bound's multiple of the longest recent round trip.
const FACTOR: u32 = 4;
/// Added to the bound: scheduling on either side, for round trips of a millisecond.
const FLOOR: Duration = Duration::from_millis(20);
/// Round trips longer than this are not "quick": they say more about the server's work
/// than about the network.
const QUICK: Duration = Duration::from_secs(5);

/// Round trips of recent quick answers.
#[derive(Debug, Default)]
pub(crate) struct Transit {
    recent: VecDeque<Duration>,
}

impl Transit {
    /// Records the round trip of an answer to a call the server answers at once.
    pub(crate) fn record(&mut self, round_trip: Duration) {
        if round_trip > QUICK {
            return;
        }
        if self.recent.len() == SAMPLES {
            self.recent.pop_front();
        }
        self.recent.push_back(round_trip);
    }

    /// The bound on a request's transit to the server, once enough answers were seen.
    pub(crate) fn bound(&self) -> Option<Duration> {
        if self.recent.len() < MIN_SAMPLES {
            return None;
        }
        let longest = self.recent.iter().max().copied().unwrap_or_default();
        Some(longest * FACTOR + FLOOR)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_needs_enough_quick_answers_and_follows_the_longest() {
        let mut t = Transit::default();
        for _ in 0..MIN_SAMPLES - 1 {
            t.record(Duration::from_millis(30));
        }
        assert_eq!(t.bound(), None);
        t.record(Duration::from_millis(50));
        assert_eq!(t.bound(), Some(Duration::from_millis(220)));
        // Slow answers are not quick: they do not move the bound.
        t.record(Duration::from_secs(30));
        assert_eq!(t.bound(), Some(Duration::from_millis(220)));
        // The longest leaves once SAMPLES newer ones came.
        for _ in 0..SAMPLES {
            t.record(Duration::from_millis(10));
        }
        assert_eq!(t.bound(), Some(Duration::from_millis(60)));
    }
}
