//! The exact rolling window: a sliding log of admitted units shared by all rates of a bucket.
//!
//! Every admitted unit leaves its instant in one ring. A rate (calls, window) admits a
//! call of cost `c` at instant `t` only if the units logged in `(t - window, t]` plus `c`
//! stay within `calls`. Each rate keeps a cursor to its oldest unit still inside its
//! window; cursors only move forward because time does, so checking is O(rates) and the
//! ring never needs more than the largest `calls` entries. The ring starts small and
//! doubles only while the units inside the windows need it, so a generous rate that is
//! never reached costs no memory.

use super::clock::Nanos;
use std::time::Duration;

/// A limit of `calls` units in any rolling `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rate {
    /// Units admitted at most within any window.
    pub calls: u32,
    /// The length of the rolling window.
    pub window: Duration,
}

impl Rate {
    /// `calls` units per `window`.
    pub const fn new(calls: u32, window: Duration) -> Self {
        Self { calls, window }
    }

    /// `calls` units per `secs` seconds.
    pub const fn per_seconds(calls: u32, secs: u64) -> Self {
        Self::new(calls, Duration::from_secs(secs))
    }

    /// Checks that the rate can ever admit anything, with at most
    /// [`MAX_CALLS`](super::MAX_CALLS) calls per window.
    pub fn validate(&self) -> Result<(), String> {
        if self.calls == 0 {
            return Err("a rate needs at least one call per window".into());
        }
        if self.calls > super::MAX_CALLS {
            return Err(format!(
                "a rate allows at most {} calls per window, not {}",
                super::MAX_CALLS,
                self.calls
            ));
        }
        if self.window.is_zero() {
            return Err("a rate needs a window longer than zero".into());
        }
        Ok(())
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}ms", self.calls, self.window.as_millis())
    }
}

#[derive(Debug, Clone)]
struct RateState {
    calls: u64,
    window: Nanos,
    /// Sequence number of the oldest logged unit that may still be inside this window.
    cursor: u64,
}

/// The ring's first capacity; it doubles as needed up to the largest rate's `calls`.
const INITIAL_RING: u64 = 64;

/// The sliding log of one bucket.
#[derive(Debug, Clone)]
pub(crate) struct SlidingLog {
    rates: Vec<RateState>,
    /// Instants of admitted units, indexed by sequence number & mask.
    ring: Box<[Nanos]>,
    mask: u64,
    /// Sequence number of the next unit to log.
    next: u64,
    /// The oldest sequence number whose instant the ring still holds (growing keeps only
    /// the units inside some window).
    valid_from: u64,
    /// The smallest `calls` of all rates, checked on every call.
    max_cost: u64,
    /// The latest instant logged: units are logged in order, so that cursors only move
    /// forward (a unit logged at an earlier instant is logged at this one instead).
    last: Nanos,
}

impl SlidingLog {
    /// A log for `rates` (validated, non-empty); `margin` widens every window.
    pub(crate) fn new(rates: &[Rate], margin: Duration) -> Self {
        let largest = rates.iter().map(|r| r.calls).max().unwrap_or(1).max(1);
        let cap = u64::from(largest).next_power_of_two().min(INITIAL_RING);
        let margin = super::clock::nanos(margin);
        Self {
            rates: rates
                .iter()
                .map(|r| RateState {
                    calls: u64::from(r.calls),
                    window: super::clock::nanos(r.window).saturating_add(margin),
                    cursor: 0,
                })
                .collect(),
            ring: vec![0; cap as usize].into_boxed_slice(),
            mask: cap - 1,
            next: 0,
            valid_from: 0,
            max_cost: rates.iter().map(|r| u64::from(r.calls)).min().unwrap_or(0),
            last: 0,
        }
    }

    /// A log for new rates that keeps the units already admitted.
    pub(crate) fn with_rates(&self, rates: &[Rate], margin: Duration, now: Nanos) -> Self {
        let mut fresh = Self::new(rates, margin);
        // Only the newest `calls` units can ever decide an admission under a rate. Units
        // that left the old windows may still be inside the new ones: carry every unit the
        // ring still holds, whatever the old cursors say.
        let largest = fresh.rates.iter().map(|r| r.calls).max().unwrap_or(0);
        let held = (self.next - self.valid_from).min(self.mask + 1);
        let keep = held.min(largest);
        for seq in self.next - keep..self.next {
            let t = self.ring[(seq & self.mask) as usize];
            fresh.expire(now);
            fresh.push(t, 1);
        }
        fresh.expire(now);
        fresh
    }

    /// How many units the ring still holds (the most any rate may need).
    fn retained(&self) -> u64 {
        let cap = self.mask + 1;
        let oldest_cursor = self
            .rates
            .iter()
            .map(|r| r.cursor)
            .min()
            .unwrap_or(self.next);
        (self.next - oldest_cursor).min(cap)
    }

    #[inline]
    fn at(&self, seq: u64) -> Nanos {
        self.ring[(seq & self.mask) as usize]
    }

    /// Moves every rate's cursor past the units that have left its window at `now`.
    #[inline]
    pub(crate) fn expire(&mut self, now: Nanos) {
        for i in 0..self.rates.len() {
            let (window, mut cursor) = (self.rates[i].window, self.rates[i].cursor);
            // A unit at instant u is inside (now - window, now] while now < u + window.
            while cursor < self.next && self.at(cursor).saturating_add(window) <= now {
                cursor += 1;
            }
            self.rates[i].cursor = cursor;
        }
    }

    /// The earliest instant at or after `now` at which `cost` more units fit every rate,
    /// with `in_flight` units admitted but not logged yet. Units in flight will be logged
    /// at their end, at `now` or later, after every unit logged now: while one of them
    /// must leave a window first, the answer is the lower bound `now + window` (as if they
    /// all ended now), and the caller learns more when they end. Call
    /// [`expire`](Self::expire) with `now` first.
    #[inline]
    pub(crate) fn earliest(&self, now: Nanos, cost: u64, in_flight: u64) -> Nanos {
        let mut at = now;
        for r in &self.rates {
            let logged = self.next - r.cursor;
            let excess = (logged + in_flight + cost).saturating_sub(r.calls);
            if excess == 0 {
                continue;
            }
            let leaving = if excess <= logged {
                // The `excess` oldest logged units must leave the window first.
                self.at(r.cursor + excess - 1)
            } else {
                now
            };
            at = at.max(leaving.saturating_add(r.window));
        }
        at
    }

    /// Logs `cost` units at `now` (or at the latest instant logged, if that is later).
    /// The caller has checked that they fit.
    #[inline]
    pub(crate) fn push(&mut self, now: Nanos, cost: u64) {
        let needed = self.retained() + cost;
        if needed > self.mask + 1 {
            self.grow(needed);
        }
        let now = now.max(self.last);
        self.last = now;
        for _ in 0..cost {
            let i = (self.next & self.mask) as usize;
            self.ring[i] = now;
            self.next += 1;
        }
    }

    /// Doubles the ring until it holds `needed` units, keeping the retained ones in place.
    #[cold]
    fn grow(&mut self, needed: u64) {
        let cap = needed.next_power_of_two();
        let mut ring = vec![0; cap as usize].into_boxed_slice();
        let mask = cap - 1;
        let from = self.next - self.retained();
        for seq in from..self.next {
            ring[(seq & mask) as usize] = self.at(seq);
        }
        self.ring = ring;
        self.mask = mask;
        self.valid_from = from;
    }

    /// Units inside each rate's window at the last expiry, with the rate's limit.
    pub(crate) fn usage(&self) -> impl Iterator<Item = (u64, u64, Nanos)> + '_ {
        self.rates
            .iter()
            .map(|r| (self.next - r.cursor, r.calls, r.window))
    }

    /// True when no rate has a unit inside its window (after [`expire`](Self::expire)).
    pub(crate) fn is_idle(&self) -> bool {
        self.rates.iter().all(|r| r.cursor == self.next)
    }

    /// The smallest `calls` of all rates: the largest cost a call may ever have.
    #[inline]
    pub(crate) fn max_cost(&self) -> u64 {
        self.max_cost
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Nanos = 1_000_000;

    fn log(rates: &[(u32, u64)]) -> SlidingLog {
        let rates: Vec<Rate> = rates
            .iter()
            .map(|&(c, ms)| Rate::new(c, Duration::from_millis(ms)))
            .collect();
        SlidingLog::new(&rates, Duration::ZERO)
    }

    #[test]
    fn admits_up_to_calls_then_waits_for_the_oldest_to_leave() {
        let mut l = log(&[(3, 100)]);
        for t in [0, 10 * MS, 20 * MS] {
            l.expire(t);
            assert_eq!(l.earliest(t, 1, 0), t);
            l.push(t, 1);
        }
        l.expire(30 * MS);
        assert_eq!(l.earliest(30 * MS, 1, 0), 100 * MS);
        assert_eq!(l.earliest(30 * MS, 2, 0), 110 * MS);
        l.expire(100 * MS);
        assert_eq!(l.earliest(100 * MS, 1, 0), 100 * MS);
    }

    #[test]
    fn every_rate_must_admit() {
        let mut l = log(&[(5, 100), (6, 1000)]);
        let mut t = 0;
        let mut admitted = 0;
        while admitted < 6 {
            l.expire(t);
            t = l.earliest(t, 1, 0);
            l.expire(t);
            l.push(t, 1);
            admitted += 1;
        }
        assert_eq!(t, 100 * MS, "the sixth unit waits for the short window");
        l.expire(t);
        assert_eq!(
            l.earliest(t, 1, 0),
            1000 * MS,
            "the seventh waits for the long one"
        );
    }

    #[test]
    fn margin_widens_windows() {
        let mut l = SlidingLog::new(
            &[Rate::new(1, Duration::from_millis(100))],
            Duration::from_millis(20),
        );
        l.push(0, 1);
        l.expire(110 * MS);
        assert_eq!(l.earliest(110 * MS, 1, 0), 120 * MS);
    }

    #[test]
    fn new_rates_keep_the_admitted_units() {
        let mut l = log(&[(10, 100)]);
        for i in 0..5 {
            l.push(i * MS, 1);
        }
        let mut smaller = l.with_rates(
            &[Rate::new(3, Duration::from_millis(100))],
            Duration::ZERO,
            5 * MS,
        );
        smaller.expire(5 * MS);
        assert_eq!(
            smaller.usage().next().unwrap().0,
            3,
            "the ring of the new rate holds its limit"
        );
        assert_eq!(smaller.earliest(5 * MS, 1, 0), 102 * MS);
    }

    #[test]
    fn units_in_flight_count_in_every_window_and_end_after_the_logged_ones() {
        let mut l = log(&[(3, 100)]);
        l.push(0, 1);
        l.expire(10 * MS);
        // One logged, one in flight: a third fits now, a fourth waits for the logged one.
        assert_eq!(l.earliest(10 * MS, 1, 1), 10 * MS);
        assert_eq!(l.earliest(10 * MS, 2, 1), 100 * MS);
        // Two in flight and a cost of 2: one of those in flight must leave first, and it
        // cannot leave before a window after now.
        assert_eq!(l.earliest(10 * MS, 2, 2), 110 * MS);
        // A unit logged at an earlier instant than one already logged takes the later one.
        l.push(50 * MS, 1);
        l.push(20 * MS, 1);
        l.expire(60 * MS);
        assert_eq!(l.earliest(60 * MS, 1, 0), 100 * MS);
        l.expire(100 * MS);
        assert_eq!(
            l.earliest(100 * MS, 2, 0),
            150 * MS,
            "both later units left at 150"
        );
    }

    #[test]
    fn idle_once_everything_left_the_windows() {
        let mut l = log(&[(2, 10)]);
        l.push(0, 2);
        l.expire(5 * MS);
        assert!(!l.is_idle());
        l.expire(10 * MS);
        assert!(l.is_idle());
        assert_eq!(l.max_cost(), 2);
    }

    #[test]
    fn the_ring_grows_only_as_units_arrive() {
        let mut l = log(&[(u32::MAX, 1000), (3000, 100)]);
        assert_eq!(
            l.ring.len(),
            64,
            "a generous rate allocates nothing up front"
        );
        for i in 0..1000 {
            l.expire(i * 1000);
            assert_eq!(l.earliest(i * 1000, 1, 0), i * 1000);
            l.push(i * 1000, 1);
        }
        assert_eq!(l.ring.len(), 1024);
        assert_eq!(l.usage().next().unwrap().0, 1000);
        // Entries keep their order across growth.
        assert_eq!(l.at(0), 0);
        assert_eq!(l.at(999), 999_000);
    }

    #[test]
    fn rate_validation() {
        assert!(Rate::new(0, Duration::from_secs(1)).validate().is_err());
        assert!(Rate::new(1, Duration::ZERO).validate().is_err());
        assert!(Rate::per_seconds(1, 1).validate().is_ok());
        assert_eq!(Rate::per_seconds(100, 60).to_string(), "100/60000ms");
    }
}
