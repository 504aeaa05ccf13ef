//! The exact rolling window: a sliding log of admitted units shared by all rates of a bucket.
//!
//! Admitted units are logged as runs (an instant and a count): a call of any cost is one
//! run. A rate (calls, window) admits a call of cost `c` at instant `t` only if the units
//! logged in `(t - window, t]` plus `c` stay within `calls`. Each rate keeps a cursor to
//! its oldest run still inside its window; cursors only move forward because time does,
//! and each run carries the cumulative count of units up to its end, so that a check is
//! O(rates) amortised plus a binary search for the unit whose leaving admits the call.
//! The log holds only the runs inside some window (and the latest few units), so a
//! generous rate that is never reached costs no memory.

use super::clock::Nanos;
use std::collections::VecDeque;
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
    /// Sequence number of the oldest logged unit that may still be inside this window
    /// (always the first unit of a run: a run's units leave together).
    cursor: u64,
    /// The absolute index of the run that starts at `cursor` (one past the last run when
    /// `cursor` is `next`).
    run: u64,
}

/// Units logged at one instant: those with sequence numbers from the previous run's `end`
/// up to `end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    at: Nanos,
    end: u64,
}

/// Bits of a packed run's end: its sequence number modulo 2^16, which names it while the
/// log holds fewer than 2^16 units.
const END_BITS: u32 = 16;
const END_MASK: u64 = (1 << END_BITS) - 1;
/// The span of a packed log's instants: 2^48 ns (78 hours) from its base.
const AT_SPAN: u64 = 1 << (64 - END_BITS);

/// Admitted units as runs (an instant and a count), oldest first, with their sequence
/// numbers: the log of the in-memory [`SlidingLog`] and of the file store's bucket. A call
/// of any cost is one run, so memory and time grow with the calls, not with their cost.
///
/// A run takes one 8-byte word while the log spans less than 78 hours and holds fewer
/// than 2^16 units (the API's default rates log at most 1,500 units an hour): the
/// instant relative to `base` in the high 48 bits, the end's sequence number modulo 2^16
/// in the low 16, read back against `start`. A log that outgrows either bound is widened
/// once to two words a run (instant, end). The deque grows by a quarter at a time, not by
/// doubling, so that a full log takes little more than its runs.
#[derive(Clone, Default)]
pub(crate) struct Runs {
    words: VecDeque<u64>,
    /// Two words a run (instant, end) instead of one packed word.
    wide: bool,
    /// The instant packed instants count from: at most the oldest run's.
    base: Nanos,
    /// The longest window that counts these runs (0: not known, as for the file store's
    /// bucket): runs older than that at the newest instant may be moved forward.
    horizon: Nanos,
    /// The sequence number of the first unit of the oldest run.
    start: u64,
    /// Sequence number of the next unit to log.
    next: u64,
    /// The latest instant logged: units are logged in order (a unit logged at an earlier
    /// instant is logged at this one instead).
    last: Nanos,
}

impl PartialEq for Runs {
    fn eq(&self, other: &Self) -> bool {
        (self.start, self.next, self.last) == (other.start, other.next, other.last)
            && self.len() == other.len()
            && (0..self.len()).all(|i| self.run(i) == other.run(i))
    }
}

impl Eq for Runs {}

impl std::fmt::Debug for Runs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runs")
            .field("start", &self.start)
            .field("next", &self.next)
            .field("last", &self.last)
            .field(
                "runs",
                &(0..self.len()).map(|i| self.run(i)).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Runs {
    /// How many units were ever logged: the sequence number of the next unit.
    #[inline]
    pub(crate) fn next(&self) -> u64 {
        self.next
    }

    /// How many runs the log holds.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.words.len() >> usize::from(self.wide)
    }

    /// Run `i`, oldest first.
    #[inline]
    fn run(&self, i: usize) -> Run {
        if self.wide {
            Run {
                at: self.words[2 * i],
                end: self.words[2 * i + 1],
            }
        } else {
            let w = self.words[i];
            Run {
                at: self.base + (w >> END_BITS),
                end: self.start + ((w & END_MASK).wrapping_sub(self.start) & END_MASK),
            }
        }
    }

    /// The instant of run `i`.
    #[inline]
    fn run_at(&self, i: usize) -> Nanos {
        if self.wide {
            self.words[2 * i]
        } else {
            self.base + (self.words[i] >> END_BITS)
        }
    }

    /// The number of runs, from the oldest, for which `pred` holds (it holds for a prefix).
    #[inline]
    fn partition(&self, pred: impl Fn(Run) -> bool) -> usize {
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if pred(self.run(mid)) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    /// The instant of the unit with sequence number `seq` (held by the log).
    #[inline]
    fn at(&self, seq: u64) -> Nanos {
        self.run_at(self.partition(|r| r.end <= seq))
    }

    /// The instant of the `k`-th newest unit (`k >= 1`), if the log holds it.
    #[inline]
    pub(crate) fn newest(&self, k: u64) -> Option<Nanos> {
        (k >= 1 && k <= self.next - self.start).then(|| self.at(self.next - k))
    }

    /// The first sequence number of run `i`.
    #[inline]
    fn run_start(&self, i: usize) -> u64 {
        match i {
            0 => self.start,
            i => self.run(i - 1).end,
        }
    }

    /// Logs `cost` units at `now` (or at the latest instant logged, if that is later):
    /// added to the newest run when it has that instant and `open`, else as a new run.
    #[inline]
    pub(crate) fn push(&mut self, now: Nanos, cost: u64, open: bool) {
        let n = self.len();
        // The newest run is at `last`, the latest instant logged.
        let merge = open && n > 0 && now <= self.last;
        let now = now.max(self.last);
        self.last = now;
        let end = self.next + cost;
        if n == 0 {
            // An empty log starts packed again, counting from its new run.
            self.base = now;
            self.wide = false;
        }
        if !self.wide && (end - self.start > END_MASK || now - self.base >= AT_SPAN) {
            self.repack(now, end);
        }
        if merge {
            self.set_end(n - 1, end);
        } else {
            self.push_run(now, end);
        }
        self.next = end;
    }

    /// Makes room in a packed log for a run at `at` ending at `end`: counts instants from
    /// the oldest run's if that is enough, else widens the log. With a `horizon` shorter
    /// than the packed span, runs older than the span are moved forward to its start
    /// instead: they had left every window, and still have, so no admission changes,
    /// and a bucket idle for days keeps its one word a run.
    #[cold]
    fn repack(&mut self, at: Nanos, end: u64) {
        let mut runs: Vec<Run> = (0..self.len()).map(|i| self.run(i)).collect();
        if self.horizon != 0 && self.horizon < AT_SPAN {
            let start = at.saturating_sub(AT_SPAN - 1);
            for r in &mut runs {
                r.at = r.at.max(start);
            }
        }
        let base = runs.first().map_or(at, |r| r.at);
        self.wide = end - self.start > END_MASK || at - base >= AT_SPAN;
        self.base = base;
        self.words.clear();
        for r in runs {
            self.push_run(r.at, r.end);
        }
        self.words.shrink_to_fit();
    }

    /// Appends a run, growing the deque by a quarter when it is full.
    #[inline]
    fn push_run(&mut self, at: Nanos, end: u64) {
        let need = 1 + usize::from(self.wide);
        if self.words.capacity() - self.words.len() < need {
            self.words.reserve_exact((self.words.len() / 4).max(8));
        }
        if self.wide {
            self.words.push_back(at);
            self.words.push_back(end);
        } else {
            self.words
                .push_back(((at - self.base) << END_BITS) | (end & END_MASK));
        }
    }

    /// Sets the end of run `i` (the log has room for it).
    #[inline]
    fn set_end(&mut self, i: usize, end: u64) {
        if self.wide {
            self.words[2 * i + 1] = end;
        } else {
            let w = &mut self.words[i];
            *w = (*w & !END_MASK) | (end & END_MASK);
        }
    }

    /// The oldest run's instant and the units logged after it.
    #[inline]
    pub(crate) fn oldest(&self) -> Option<(Nanos, u64)> {
        self.front().map(|r| (r.at, self.next - r.end))
    }

    /// Drops the oldest run, and gives memory back once the log is a quarter full.
    #[inline]
    pub(crate) fn pop_oldest(&mut self) {
        if let Some(run) = self.front() {
            self.drop_front(run.end);
        }
    }

    /// The oldest run.
    #[inline]
    fn front(&self) -> Option<Run> {
        (self.len() > 0).then(|| self.run(0))
    }

    /// Drops the oldest run, which ends at `end`.
    #[inline]
    fn drop_front(&mut self, end: u64) {
        self.start = end;
        self.words.pop_front();
        if self.wide {
            self.words.pop_front();
        }
        if self.words.capacity() > 64 && self.words.len() * 4 < self.words.capacity() {
            self.shrink();
        }
    }

    /// Halves the room of a log a quarter full.
    #[cold]
    fn shrink(&mut self) {
        self.words.shrink_to(self.words.len() * 2);
    }

    /// The runs, oldest first, as (instant, units), counting only units numbered `from`
    /// or later.
    pub(crate) fn since(&self, from: u64) -> impl Iterator<Item = (Nanos, u64)> + '_ {
        let first = self.partition(|r| r.end <= from);
        (first..self.len()).map(move |i| {
            let run = self.run(i);
            (run.at, run.end - self.run_start(i).max(from))
        })
    }

    /// Units inside `window` at `now`: those logged at `u` with `now < u + window`.
    pub(crate) fn inside(&self, now: Nanos, window: Nanos) -> u64 {
        let first = self.partition(|r| r.at.saturating_add(window) <= now);
        self.next - self.run_start(first)
    }

    /// A log of `next` units ever logged, whose newest are the `runs` (instant, units),
    /// oldest first. `None` unless the instants rise strictly, every count is above zero
    /// and the counts add up to at most `next`: what [`push`](Self::push) never writes.
    pub(crate) fn from_runs(next: u64, runs: impl Iterator<Item = (Nanos, u64)>) -> Option<Self> {
        let mut held: u64 = 0;
        let mut ends = Vec::with_capacity(runs.size_hint().0);
        for (at, units) in runs {
            if units == 0 || ends.last().is_some_and(|&(last, _)| at <= last) {
                return None;
            }
            held = held.checked_add(units).filter(|&h| h <= next)?;
            ends.push((at, held));
        }
        let start = next - held;
        let mut log = Self {
            words: VecDeque::with_capacity(ends.len()),
            start,
            next,
            last: ends.last().map_or(0, |&(at, _)| at),
            base: ends.first().map_or(0, |&(at, _)| at),
            horizon: 0,
            wide: false,
        };
        if let (Some(&(first, _)), Some(&(last, _))) = (ends.first(), ends.last()) {
            log.wide = held > END_MASK || last - first >= AT_SPAN;
        }
        for (at, end) in ends {
            log.push_run(at, start + end);
        }
        Some(log)
    }
}

/// The window rule, for the in-memory limiter and the file store alike: `cost` more units
/// fit `calls` in `window` once the `(calls - cost + 1)`-th newest unit `u` has left it,
/// that is from `u + window` (at once when there is no such unit). `pending` are units
/// counted after the logged ones, oldest first, as (instant, units): the units in flight,
/// as if logged now, and for the file store the waiters ahead in its queue. `logged(k)` is
/// the instant of the `k`-th newest logged unit, `None` when the log holds none as old
/// inside the window. A cost above `calls` waits for a window after `now`.
#[inline]
pub(crate) fn fits_from(
    now: Nanos,
    calls: u64,
    window: Nanos,
    cost: u64,
    pending: &[(Nanos, u64)],
    logged: impl FnOnce(u64) -> Option<Nanos>,
) -> Nanos {
    let Some(mut k) = (calls + 1).checked_sub(cost).filter(|&k| k > 0) else {
        return now.saturating_add(window);
    };
    for &(at, units) in pending.iter().rev() {
        if k <= units {
            return at.saturating_add(window);
        }
        k -= units;
    }
    logged(k).map_or(0, |u| u.saturating_add(window))
}

/// Units a log keeps past every window (at most the largest `calls`), so that new rates
/// with longer windows still count the latest units.
const RETAIN: u64 = 64;

/// The sliding log of one bucket.
#[derive(Debug, Clone)]
pub(crate) struct SlidingLog {
    rates: Vec<RateState>,
    /// The units, as runs: a call of any cost is one run.
    log: Runs,
    /// The absolute index of the log's oldest run (runs dropped so far).
    first_run: u64,
    /// The smallest `calls` of all rates, checked on every call.
    max_cost: u64,
    /// The largest `calls` of all rates.
    largest: u64,
}

impl SlidingLog {
    /// A log for `rates` (validated, non-empty); `margin` widens every window.
    pub(crate) fn new(rates: &[Rate], margin: Duration) -> Self {
        let margin = super::clock::nanos(margin);
        Self {
            rates: rates
                .iter()
                .map(|r| RateState {
                    calls: u64::from(r.calls),
                    window: super::clock::nanos(r.window).saturating_add(margin),
                    cursor: 0,
                    run: 0,
                })
                .collect(),
            log: Runs {
                horizon: rates
                    .iter()
                    .map(|r| super::clock::nanos(r.window).saturating_add(margin))
                    .max()
                    .unwrap_or(0),
                ..Runs::default()
            },
            first_run: 0,
            max_cost: rates.iter().map(|r| u64::from(r.calls)).min().unwrap_or(0),
            largest: rates.iter().map(|r| u64::from(r.calls)).max().unwrap_or(0),
        }
    }

    /// A log for new rates that keeps the units already admitted.
    pub(crate) fn with_rates(&self, rates: &[Rate], margin: Duration, now: Nanos) -> Self {
        let mut fresh = Self::new(rates, margin);
        // Only the newest `calls` units can ever decide an admission under a rate. Units
        // that left the old windows may still be inside the new ones: carry every unit the
        // log still holds, whatever the old cursors say.
        let keep = (self.log.next - self.log.start).min(fresh.largest);
        for (at, units) in self.log.since(self.log.next - keep) {
            fresh.push(at, units);
        }
        fresh.expire(now);
        fresh
    }

    /// Moves every rate's cursor past the runs that have left its window at `now`.
    #[inline]
    pub(crate) fn expire(&mut self, now: Nanos) {
        let (log, first) = (&self.log, self.first_run);
        let end = first + log.len() as u64;
        let mut oldest = end;
        for r in &mut self.rates {
            let mut run = r.run;
            // A unit at instant u is inside (now - window, now] while now < u + window;
            // the cursor moves to the end of the last run that has left.
            while run < end {
                let left = log.run((run - first) as usize);
                if left.at.saturating_add(r.window) > now {
                    break;
                }
                r.cursor = left.end;
                run += 1;
            }
            r.run = run;
            oldest = oldest.min(run);
        }
        self.trim(oldest);
    }

    /// Drops the oldest runs that every window has left (those before the run numbered
    /// `passed`), keeping the newest units up to `RETAIN` (or the largest `calls`, if
    /// smaller).
    #[inline]
    fn trim(&mut self, passed: u64) {
        let keep = RETAIN.min(self.largest);
        while self.first_run < passed {
            match self.log.front() {
                Some(run) if self.log.next - run.end >= keep => {
                    self.log.drop_front(run.end);
                    self.first_run += 1;
                }
                _ => break,
            }
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
        let flight = [(now, in_flight)];
        let pending = &flight[..usize::from(in_flight > 0)];
        let mut at = now;
        for r in &self.rates {
            // Units before the cursor have left the window.
            let logged = self.log.next - r.cursor;
            let fits = fits_from(now, r.calls, r.window, cost, pending, |k| {
                (k <= logged).then(|| self.log.at(self.log.next - k))
            });
            at = at.max(fits);
        }
        at
    }

    /// Logs `cost` units at `now` (or at the latest instant logged, if that is later), as
    /// one run: memory and time do not grow with the cost. The caller has checked that
    /// they fit.
    #[inline]
    pub(crate) fn push(&mut self, now: Nanos, cost: u64) {
        let end = self.first_run + self.log.len() as u64;
        // A run that some window has already left stays closed: new units start a run.
        let open = self.rates.iter().all(|r| r.run < end);
        self.log.push(now, cost, open);
    }

    /// Units inside each rate's window at the last expiry, with the rate's limit.
    pub(crate) fn usage(&self) -> impl Iterator<Item = (u64, u64, Nanos)> + '_ {
        self.rates
            .iter()
            .map(|r| (self.log.next - r.cursor, r.calls, r.window))
    }

    /// True when no rate has a unit inside its window (after [`expire`](Self::expire)).
    pub(crate) fn is_idle(&self) -> bool {
        self.rates.iter().all(|r| r.cursor == self.log.next)
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
    fn a_call_of_any_cost_is_one_run() {
        // A cost of 10^8 once wrote 10^8 instants (784 MB, 3.3 s); a cost is now one run.
        let max = u64::from(super::super::MAX_CALLS);
        let mut l = log(&[(super::super::MAX_CALLS, 60_000), (3000, 100)]);
        l.push(0, max);
        assert_eq!(l.log.len(), 1);
        l.expire(MS);
        assert_eq!(l.usage().next().unwrap().0, max);
        assert_eq!(l.earliest(MS, 1, 0), 60_000 * MS);
        let mut l = log(&[(super::super::MAX_CALLS, 60_000)]);
        for i in 0..1000 {
            l.expire(i * MS);
            l.push(i * MS, 1000);
        }
        assert_eq!(l.log.len(), 1000, "one run per call");
        l.expire(1000 * MS);
        // The 1,000,000th unit and the next: the window admits 48,576 more now.
        assert_eq!(l.earliest(1000 * MS, max - 1_000_000, 0), 1000 * MS);
        assert_eq!(l.earliest(1000 * MS, max - 1_000_000 + 1, 0), 60_000 * MS);
        assert_eq!(
            l.earliest(1000 * MS, max - 1_000_000 + 1001, 0),
            60_001 * MS
        );
        // Runs that left every window are dropped, but for the latest few units.
        l.expire(61_000 * MS);
        assert!(l.is_idle());
        assert_eq!(l.log.len(), 1, "{:?}", l.log.len());
    }

    #[test]
    fn the_log_grows_only_as_calls_arrive() {
        let mut l = log(&[(super::super::MAX_CALLS, 1000), (3000, 100)]);
        for i in 0..1000 {
            l.expire(i * 1000);
            assert_eq!(l.earliest(i * 1000, 1, 0), i * 1000);
            l.push(i * 1000, 1);
        }
        assert_eq!(l.log.len(), 1000);
        assert_eq!(l.usage().next().unwrap().0, 1000);
        assert_eq!(l.log.at(0), 0);
        assert_eq!(l.log.at(999), 999_000);
    }

    /// The runs as (instant, end), decoded.
    fn decoded(l: &Runs) -> Vec<(Nanos, u64)> {
        (0..l.len()).map(|i| (l.run(i).at, l.run(i).end)).collect()
    }

    #[test]
    fn a_run_takes_one_word_until_the_log_outgrows_it() {
        let mut l = Runs::default();
        for i in 0..1500 {
            l.push(i * 2_400 * MS, 1, true);
        }
        assert!(!l.wide);
        assert_eq!(l.len(), 1500);
        assert_eq!(l.newest(1500), Some(0));
        assert_eq!(l.newest(1), Some(1499 * 2_400 * MS));
        // Grown by a quarter at a time: well under the 2,048 runs of a doubling deque.
        assert!(l.words.capacity() < 1_900, "{}", l.words.capacity());
        // 2^16 units held: the ends no longer fit 16 bits.
        l.push(1500 * 2_400 * MS, 70_000, true);
        assert!(l.wide);
        assert_eq!(l.newest(70_000), Some(1500 * 2_400 * MS));
        assert_eq!(l.newest(70_001), Some(1499 * 2_400 * MS));
        assert_eq!(l.newest(71_500), Some(0));
        // Emptied, it packs again.
        while l.len() > 0 {
            l.pop_oldest();
        }
        l.push(1501 * 2_400 * MS, 1, true);
        assert!(!l.wide);
        assert_eq!(l.newest(1), Some(1501 * 2_400 * MS));
    }

    #[test]
    fn instants_count_from_the_oldest_run_and_a_long_span_widens() {
        let mut l = Runs::default();
        l.push(5, 1, true);
        l.push(AT_SPAN, 1, true);
        l.pop_oldest();
        // 2^48 ns after the base, but within 2^48 of the oldest run: rebased, still packed.
        l.push(AT_SPAN + 10, 2, true);
        assert!(!l.wide);
        assert_eq!(decoded(&l), vec![(AT_SPAN, 2), (AT_SPAN + 10, 4)]);
        // A log spanning more than 2^48 ns takes two words a run.
        l.push(2 * AT_SPAN + 1, 1, true);
        assert!(l.wide);
        assert_eq!(
            decoded(&l),
            vec![(AT_SPAN, 2), (AT_SPAN + 10, 4), (2 * AT_SPAN + 1, 5)]
        );
        let packed = Runs::from_runs(5, [(AT_SPAN, 1), (AT_SPAN + 10, 2)].into_iter()).unwrap();
        assert!(!packed.wide);
        let wide = Runs::from_runs(5, [(0, 1), (AT_SPAN, 2)].into_iter()).unwrap();
        assert!(wide.wide);
        assert_eq!(decoded(&wide), vec![(0, 3), (AT_SPAN, 5)]);
    }

    #[test]
    fn a_bucket_idle_for_days_keeps_one_word_a_run() {
        const HOUR: Nanos = 3_600_000_000_000;
        // The API's rates: the log keeps the latest 64 units after every window left.
        let mut l = log(&[(100, 60_000), (1500, 3_600_000)]);
        for i in 0..100 {
            l.expire(i * MS);
            l.push(i * MS, 1);
        }
        let later = 100 * HOUR;
        l.expire(later);
        assert!(l.is_idle());
        assert_eq!(l.earliest(later, 1, 0), later);
        l.push(later, 1);
        assert!(
            !l.log.wide,
            "runs older than 78 hours moved forward, still packed"
        );
        l.expire(later + MS);
        assert_eq!(l.usage().map(|u| u.0).collect::<Vec<_>>(), vec![1, 1]);
        assert_eq!(l.log.newest(1), Some(later));
        // The retained units moved forward stay outside every window.
        assert!(l.log.newest(2).unwrap() + HOUR <= later);
        // A rate whose window outlasts the packed span keeps every instant: the log widens.
        let mut long = log(&[(100, 100 * 3_600_000)]);
        long.push(0, 1);
        long.push(80 * HOUR, 1);
        assert!(long.log.wide);
        long.expire(80 * HOUR);
        assert_eq!(
            long.earliest(80 * HOUR, 99, 0),
            100 * HOUR,
            "the unit at 0 still counts"
        );
    }

    /// One operation on a log: push (instant step, cost, open) or pop the oldest run.
    #[derive(Debug, Clone)]
    enum RunOp {
        Push(u64, u64, bool),
        Pop,
    }

    fn run_op() -> impl Strategy<Value = RunOp> {
        prop_oneof![
            4 => (
                prop_oneof![Just(0u64), 0u64..1_000, (AT_SPAN / 2)..(AT_SPAN + 5)],
                prop_oneof![1u64..4, 1u64..40_000],
                any::<bool>(),
            )
                .prop_map(|(step, cost, open)| RunOp::Push(step, cost, open)),
            1 => Just(RunOp::Pop),
        ]
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// Moving runs older than the packed span forward changes no admission: a log
        /// that may move them answers as one that never does (and widens instead).
        #[test]
        fn moving_runs_past_every_window_changes_no_admission(
            steps in proptest::collection::vec(
                (prop_oneof![0u64..5_000_000_000, (AT_SPAN / 3)..(AT_SPAN + 5)], 1u64..4), 1..60)
        ) {
            let rates = [Rate::new(5, Duration::from_secs(3_600)), Rate::new(2, Duration::from_secs(60))];
            let mut moved = SlidingLog::new(&rates, Duration::ZERO);
            let mut kept = SlidingLog::new(&rates, Duration::ZERO);
            kept.log.horizon = 0;
            let mut now = 0;
            for (step, cost) in steps {
                now += step;
                moved.expire(now);
                kept.expire(now);
                let at = moved.earliest(now, cost.min(2), 0);
                prop_assert_eq!(at, kept.earliest(now, cost.min(2), 0));
                prop_assert_eq!(moved.usage().collect::<Vec<_>>(), kept.usage().collect::<Vec<_>>());
                if at == now {
                    moved.push(now, cost.min(2));
                    kept.push(now, cost.min(2));
                }
            }
        }

        /// Packed, rebased or widened, the log reads back as a plain list of runs would.
        #[test]
        fn the_packed_log_reads_as_a_plain_list(ops in proptest::collection::vec(run_op(), 1..80)) {
            let mut l = Runs::default();
            let mut model: std::collections::VecDeque<(Nanos, u64)> = Default::default();
            let (mut start, mut next, mut now) = (0u64, 0u64, 0u64);
            for op in ops {
                match op {
                    RunOp::Push(step, cost, open) => {
                        now += step;
                        l.push(now, cost, open);
                        next += cost;
                        match model.back_mut() {
                            Some(r) if r.0 == now && open => r.1 = next,
                            _ => model.push_back((now, next)),
                        }
                    }
                    RunOp::Pop => {
                        l.pop_oldest();
                        if let Some(r) = model.pop_front() {
                            start = r.1;
                        }
                    }
                }
                prop_assert_eq!(decoded(&l), model.iter().copied().collect::<Vec<_>>());
                prop_assert_eq!(l.next(), next);
                for k in [1, 2, 3, 1_000, 40_000, next - start, next - start + 1] {
                    let want = (k >= 1 && k <= next - start).then(|| {
                        model.iter().find(|r| r.1 > next - k).unwrap().0
                    });
                    prop_assert_eq!(l.newest(k), want, "k = {}", k);
                }
                // A closed run may share its instant with the next: only rising ones are
                // stored.
                if !model.is_empty() && model.iter().zip(model.iter().skip(1)).all(|(a, b)| a.0 < b.0) {
                    let copy = Runs::from_runs(next, l.since(0)).unwrap();
                    prop_assert_eq!(&copy, &l);
                }
            }
        }
    }

    #[test]
    fn rate_validation() {
        assert!(Rate::new(0, Duration::from_secs(1)).validate().is_err());
        assert!(Rate::new(1, Duration::ZERO).validate().is_err());
        assert!(Rate::per_seconds(1, 1).validate().is_ok());
        assert_eq!(Rate::per_seconds(100, 60).to_string(), "100/60000ms");
    }
}
