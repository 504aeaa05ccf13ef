//! The shared bucket of the module documentation, in Rust (used by the file store).
//!
//! [`Bucket`] is the whole state of one shared bucket: the unit log (runs of units logged
//! at one instant, the [`Runs`] of the in-memory limiter), the holds in flight, the pause,
//! the leased FIFO queue and the latest instant the bucket used. It does no I/O: the file
//! store decodes a bucket from its record ([`Bucket::decode`]), applies one operation with
//! the store's `now` and encodes it back ([`Bucket::encode`]) when the operation changed
//! it ([`Bucket::changed`]).
//!
//! Whether a call fits is decided by the in-memory limiter's window rule,
//! [`fits_from`]: a call of cost `c` fits a rate (`calls`, `window`) at instant `t` when
//! the `(calls - c + 1)`-th newest logged unit `u`, if the log holds one, satisfies
//! `u + window <= t`; and nothing fits before the pause ends. Units in flight count as the
//! newest units, logged at the current instant. Instants are nanoseconds of the store's
//! clock. The log keeps the runs that the largest `calls` and the longest window used on
//! the bucket can still count (and always the newest), so a record grows with the calls
//! inside the longest window, not with their cost.

use super::{HoldLease, LEASE, Place, Usage, Verdict, Window};
use crate::limiter::clock::{Nanos, nanos};
use crate::limiter::window::{Runs, fits_from};
use std::time::Duration;

/// One waiter of the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Waiter {
    /// The waiter's id, unique across processes and hosts.
    pub(crate) id: u64,
    /// The units the waiter's call costs.
    pub(crate) cost: u64,
    /// The instant after which the waiter loses its place unless it polls again.
    pub(crate) expiry: Nanos,
}

/// Units admitted as a hold and not yet ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Held {
    /// The hold's id, unique across processes and hosts.
    pub(crate) id: u64,
    /// The units held.
    pub(crate) cost: u64,
    /// The admission instant: the earliest instant the units may be logged at.
    pub(crate) since: Nanos,
    /// The instant the lease runs out; the units are then logged at it.
    pub(crate) expiry: Nanos,
}

/// The state of one shared bucket.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Bucket {
    /// The latest instant an operation used; the bucket's clock never goes back before it.
    pub(crate) last_now: Nanos,
    /// Nothing is admitted before this instant.
    pub(crate) pause_until: Nanos,
    /// The logged units, as runs.
    pub(crate) log: Runs,
    /// The largest `calls` of any window used on the bucket: the log keeps the runs that
    /// hold the newest this many units.
    pub(crate) keep_calls: u64,
    /// The longest window used on the bucket: the log keeps the runs inside it.
    pub(crate) keep_window: Nanos,
    /// The waiters, first in line first.
    pub(crate) queue: Vec<Waiter>,
    /// The holds in flight, in order of admission.
    pub(crate) holds: Vec<Held>,
    /// Whether an operation changed anything worth storing since the flag was cleared.
    changed: bool,
}

/// The first word of a bucket encoded by format 4 (runs); a bucket of format 3 (a ring of
/// instants) starts with its clock instead, which a wall clock past 1979 never equals.
pub(crate) const RUNS_TAG: u64 = u64::from_le_bytes(*b"QGRUNS\0\x04");
/// Words of the fixed part of a format 4 bucket.
const FIXED_WORDS: usize = 9;
/// Words of the fixed part of a format 3 bucket.
const FIXED_WORDS_V3: usize = 6;
/// Words of one encoded run, waiter and hold.
const RUN_WORDS: usize = 2;
const WAITER_WORDS: usize = 3;
const HELD_WORDS: usize = 4;

fn duration(ns: Nanos) -> Duration {
    Duration::from_nanos(ns)
}

/// The little-endian words of an encoded bucket.
struct Words<'a>(&'a [u8]);

impl Words<'_> {
    fn get(&self, i: usize) -> Option<u64> {
        let b = self.0.get(i.checked_mul(8)?..i.checked_mul(8)? + 8)?;
        Some(u64::from_le_bytes(b.try_into().ok()?))
    }

    fn count(&self, i: usize) -> Option<usize> {
        usize::try_from(self.get(i)?).ok()
    }
}

impl Bucket {
    /// An empty bucket.
    pub(crate) fn new() -> Self {
        Self {
            keep_calls: 1,
            changed: true,
            ..Self::default()
        }
    }

    /// Whether an operation changed the bucket since [`clear_changed`](Self::clear_changed).
    pub(crate) fn changed(&self) -> bool {
        self.changed
    }

    /// Forgets earlier changes (after the bucket was stored).
    pub(crate) fn clear_changed(&mut self) {
        self.changed = false;
    }

    /// Bytes that [`encode`](Self::encode) writes.
    pub(crate) fn encoded_len(&self) -> usize {
        8 * (FIXED_WORDS
            + RUN_WORDS * self.log.len()
            + WAITER_WORDS * self.queue.len()
            + HELD_WORDS * self.holds.len())
    }

    /// Writes the bucket (format 4) into `out`, which holds
    /// [`encoded_len`](Self::encoded_len) bytes.
    pub(crate) fn encode(&self, out: &mut [u8]) {
        let mut words = out.chunks_exact_mut(8);
        let mut put = |v: u64| {
            if let Some(w) = words.next() {
                w.copy_from_slice(&v.to_le_bytes());
            }
        };
        for v in [
            RUNS_TAG,
            self.last_now,
            self.pause_until,
            self.log.next(),
            self.keep_calls,
            self.keep_window,
            self.log.len() as u64,
            self.queue.len() as u64,
            self.holds.len() as u64,
        ] {
            put(v);
        }
        for (at, units) in self.log.since(0) {
            put(at);
            put(units);
        }
        for w in &self.queue {
            put(w.id);
            put(w.cost);
            put(w.expiry);
        }
        for h in &self.holds {
            put(h.id);
            put(h.cost);
            put(h.since);
            put(h.expiry);
        }
    }

    /// Reads a bucket that [`encode`](Self::encode) wrote (format 4) or that format 3
    /// wrote (its ring of instants becomes runs), reusing this one's buffers. `None` when
    /// the sizes do not add up or a value lies outside what an encoder writes (a count of
    /// runs, waiters or holds or a cost above [`MAX_CALLS`](crate::limiter::MAX_CALLS), a
    /// unit count past 2^62, a run of no units, runs out of order or holding more units
    /// than were logged), so that no later operation can overflow on a damaged record.
    pub(crate) fn decode(&mut self, bytes: &[u8]) -> Option<()> {
        let w = Words(bytes);
        let v4 = w.get(0)? == RUNS_TAG;
        // Where the counts and the log's words are, by format.
        let (fixed, counts, log_words) = if v4 {
            (FIXED_WORDS, 6, w.count(6)?.checked_mul(RUN_WORDS)?)
        } else {
            (FIXED_WORDS_V3, 3, w.count(3)?)
        };
        let (queue, holds) = (w.count(counts + 1)?, w.count(counts + 2)?);
        let words = log_words
            .checked_add(queue.checked_mul(WAITER_WORDS)?)?
            .checked_add(holds.checked_mul(HELD_WORDS)?)?
            .checked_add(fixed)?;
        let max = u64::from(crate::limiter::MAX_CALLS);
        let within = |n: usize| u64::try_from(n).is_ok_and(|n| n <= max);
        let next = w.get(if v4 { 3 } else { 2 })?;
        if words.checked_mul(8)? != bytes.len()
            || !within(queue)
            || !within(holds)
            || next > 1 << 62
        {
            return None;
        }
        let base = fixed + log_words;
        let costs_ok = (0..queue).all(|i| w.get(base + 3 * i + 1).is_some_and(|c| c <= max))
            && (0..holds).all(|i| {
                w.get(base + 3 * queue + 4 * i + 1)
                    .is_some_and(|c| c <= max)
            });
        if !costs_ok {
            return None;
        }
        if v4 {
            self.decode_runs(&w, next)?;
        } else {
            self.decode_ring(&w, next)?;
        }
        let o = usize::from(v4);
        self.last_now = w.get(o)?;
        self.pause_until = w.get(o + 1)?;
        self.queue.clear();
        self.queue.extend((0..queue).map(|i| Waiter {
            id: w.get(base + 3 * i).unwrap_or(0),
            cost: w.get(base + 3 * i + 1).unwrap_or(0),
            expiry: w.get(base + 3 * i + 2).unwrap_or(0),
        }));
        let base = base + 3 * queue;
        self.holds.clear();
        self.holds.extend((0..holds).map(|i| Held {
            id: w.get(base + 4 * i).unwrap_or(0),
            cost: w.get(base + 4 * i + 1).unwrap_or(0),
            since: w.get(base + 4 * i + 2).unwrap_or(0),
            expiry: w.get(base + 4 * i + 3).unwrap_or(0),
        }));
        self.changed = false;
        Some(())
    }

    /// The log of a format 4 bucket: its runs, checked by [`Runs::from_runs`].
    fn decode_runs(&mut self, w: &Words<'_>, next: u64) -> Option<()> {
        let (keep_calls, runs) = (w.get(4)?, w.count(6)?);
        let max = u64::from(crate::limiter::MAX_CALLS);
        if keep_calls == 0 || keep_calls > max || runs as u64 > 2 * max {
            return None;
        }
        let at = |i: usize| w.get(FIXED_WORDS + RUN_WORDS * i).unwrap_or(0);
        let units = |i: usize| w.get(FIXED_WORDS + RUN_WORDS * i + 1).unwrap_or(0);
        self.log = Runs::from_runs(next, (0..runs).map(|i| (at(i), units(i))))?;
        self.keep_calls = keep_calls;
        self.keep_window = w.get(5)?;
        Some(())
    }

    /// The log of a format 3 bucket: `ring[seq % ring.len()]` is the instant of unit
    /// `seq`, for the newest `min(next, ring.len())` units, in order; they become runs.
    fn decode_ring(&mut self, w: &Words<'_>, next: u64) -> Option<()> {
        let ring = w.get(3)?;
        if ring == 0 || ring > u64::from(crate::limiter::MAX_CALLS) {
            return None;
        }
        let held = next.min(ring);
        // The units before the ring's are counted, not held.
        let mut log = Runs::from_runs(next - held, std::iter::empty())?;
        for seq in next - held..next {
            let at = w.get(FIXED_WORDS_V3 + (seq % ring) as usize)?;
            log.push(at, 1, true);
        }
        self.log = log;
        self.keep_calls = ring;
        self.keep_window = 0;
        Some(())
    }

    /// Starts an operation: clamps `now` to the bucket's clock, drops expired waiters and
    /// logs the holds whose lease ran out at their lease's end.
    fn begin(&mut self, now: Nanos) -> Nanos {
        let now = now.max(self.last_now);
        self.last_now = now;
        let before = self.queue.len();
        self.queue.retain(|w| w.expiry >= now);
        if self.queue.len() != before {
            self.changed = true;
        }
        if self.holds.iter().any(|h| h.expiry <= now) {
            let mut expired: Vec<Held> = self
                .holds
                .iter()
                .filter(|h| h.expiry <= now)
                .copied()
                .collect();
            self.holds.retain(|h| h.expiry > now);
            expired.sort_by_key(|h| h.expiry);
            for h in expired {
                self.log(h.expiry, h.cost);
            }
        }
        now
    }

    /// Units held in flight.
    fn in_flight(&self) -> u64 {
        self.holds.iter().map(|h| h.cost).sum()
    }

    /// Widens what the log keeps to a window of `window` (the longest any caller used,
    /// as the file store remembers it).
    pub(crate) fn keep_window_of(&mut self, window: Nanos) {
        self.keep_window = self.keep_window.max(window);
    }

    /// Keeps what `windows` count from now on, and drops the oldest runs that no window
    /// used on the bucket can count any more at `now`: runs past the newest `keep_calls`
    /// units, or outside the longest window. The newest run stays (the idle instant
    /// follows it).
    fn keep(&mut self, now: Nanos, windows: &[Window]) {
        let calls = windows.iter().map(|w| w.calls).max().unwrap_or(1);
        let window = windows.iter().map(|w| w.window_ns).max().unwrap_or(0);
        if calls > self.keep_calls || window > self.keep_window {
            self.keep_calls = self.keep_calls.max(calls);
            self.keep_window = self.keep_window.max(window);
            self.changed = true;
        }
        while self.log.len() > 1 {
            let Some((at, after)) = self.log.oldest() else {
                break;
            };
            if after < self.keep_calls && at.saturating_add(self.keep_window) > now {
                break;
            }
            self.log.pop_oldest();
        }
    }

    /// The earliest instant at or after `at` at which `cost` units fit every window, with
    /// `extra` (instant, units) logged after the log's units, oldest first.
    fn fit(&self, at: Nanos, windows: &[Window], cost: u64, extra: &[(Nanos, u64)]) -> Nanos {
        let mut at = at;
        for w in windows {
            if cost > w.calls {
                return Nanos::MAX;
            }
            let fits = fits_from(at, w.calls, w.window_ns, cost, extra, |k| {
                self.log.newest(k)
            });
            at = at.max(fits);
        }
        at
    }

    /// The due instant of a call of `cost` behind the first `ahead` waiters: each of them
    /// is admitted in order at its own earliest instant on a copy of the log, then the call.
    /// Units in flight count as logged now, after every logged unit (a lower bound).
    fn due(&self, now: Nanos, windows: &[Window], ahead: usize, cost: u64) -> Nanos {
        let mut at = now.max(self.pause_until);
        let mut extra = Vec::new();
        let in_flight = self.in_flight();
        if in_flight > 0 {
            extra.push((now, in_flight));
        }
        for w in &self.queue[..ahead] {
            at = self.fit(at, windows, w.cost, &extra);
            if at == Nanos::MAX {
                return at;
            }
            if w.cost > 0 {
                extra.push((at, w.cost));
            }
        }
        self.fit(at, windows, cost, &extra)
    }

    /// Logs `cost` units at `at`, or at the newest logged unit's instant if that is later:
    /// the log stays in order.
    fn log(&mut self, at: Nanos, cost: u64) {
        // A run of no units would read as damaged.
        if cost > 0 {
            self.log.push(at, cost, true);
        }
        self.changed = true;
    }

    /// Admits `cost` units at `now`: logged, or held under `hold`.
    fn admit(&mut self, now: Nanos, cost: u64, hold: Option<HoldLease>) {
        match hold {
            None => self.log(now, cost),
            Some(h) => {
                // An id admitted twice keeps one hold: the newer admission replaces it.
                self.release(now, h.id, Duration::ZERO);
                self.holds.push(Held {
                    id: h.id,
                    cost,
                    since: now,
                    expiry: now.saturating_add(nanos(h.duration)),
                });
                self.changed = true;
            }
        }
    }

    /// Ends hold `id`: its units are logged `ago` before `now`, no earlier than its
    /// admission. Unknown ids are ignored.
    pub(crate) fn release(&mut self, now: Nanos, id: u64, ago: Duration) {
        let now = self.begin(now);
        if let Some(i) = self.holds.iter().position(|h| h.id == id) {
            let h = self.holds.remove(i);
            self.log(now.saturating_sub(nanos(ago)).max(h.since), h.cost);
        }
    }

    /// Asks for the admission of `cost` units under `windows` at `now` (see
    /// [`Place`](super::Place)), as a hold when `hold` is given.
    pub(crate) fn poll(
        &mut self,
        now: Nanos,
        windows: &[Window],
        cost: u64,
        place: Place,
        hold: Option<HoldLease>,
    ) -> Verdict {
        let now = self.begin(now);
        self.keep(now, windows);
        match place {
            Place::Try | Place::Peek => {
                let due = self.due(now, windows, self.queue.len(), cost);
                if due > now {
                    Verdict::Wait(duration(due - now))
                } else if place == Place::Peek {
                    Verdict::Wait(Duration::ZERO)
                } else {
                    self.admit(now, cost, hold);
                    Verdict::Admitted
                }
            }
            Place::Queue { id } => {
                let pos = match self.queue.iter().position(|w| w.id == id) {
                    Some(pos) => {
                        self.queue[pos].cost = cost;
                        pos
                    }
                    None => {
                        self.queue.push(Waiter {
                            id,
                            cost,
                            expiry: now,
                        });
                        self.queue.len() - 1
                    }
                };
                self.changed = true;
                let due = self.due(now, windows, pos, cost);
                if due <= now {
                    self.queue.remove(pos);
                    self.admit(now, cost, hold);
                    Verdict::Admitted
                } else {
                    self.queue[pos].expiry = due.saturating_add(nanos(LEASE));
                    Verdict::Wait(duration(due - now))
                }
            }
        }
    }

    /// Gives up the place of waiter `id`, if it has one.
    pub(crate) fn leave(&mut self, now: Nanos, id: u64) {
        self.begin(now);
        let before = self.queue.len();
        self.queue.retain(|w| w.id != id);
        if self.queue.len() != before {
            self.changed = true;
        }
    }

    /// Pauses the bucket until `d` after `now`, unless it is already paused longer.
    pub(crate) fn pause(&mut self, now: Nanos, d: Duration) {
        let now = self.begin(now);
        let until = now.saturating_add(nanos(d));
        if until > self.pause_until {
            self.pause_until = until;
            self.changed = true;
        }
    }

    /// The use of `windows` at `now`, the pause and the live queue.
    pub(crate) fn usage(&mut self, now: Nanos, windows: &[Window]) -> Usage {
        let now = self.begin(now);
        let used = windows
            .iter()
            .map(|w| self.log.inside(now, w.window_ns))
            .collect();
        Usage {
            used,
            paused_for: duration(self.pause_until.saturating_sub(now)),
            queued: self.queue.len() as u64,
            in_flight: self.in_flight(),
        }
    }

    /// The instant from which the bucket is idle, if nothing happens to it meanwhile and
    /// no caller uses a window longer than `max_window`: no logged unit inside any such
    /// window, no hold in flight (a hold whose lease runs out is logged at its end), no
    /// pause, no waiter whose place still stands. An idle bucket reads like a new one, so
    /// the file store may forget it from then on.
    pub(crate) fn idle_at(&self, max_window: Nanos) -> Nanos {
        let mut at = self.pause_until;
        if let Some(u) = self.log.newest(1) {
            at = at.max(u.saturating_add(max_window));
        }
        for h in &self.holds {
            at = at.max(h.expiry.saturating_add(max_window));
        }
        // A waiter keeps its place while its lease's end is not past.
        for w in &self.queue {
            at = at.max(w.expiry.saturating_add(1));
        }
        at
    }
}

#[cfg(test)]
mod tests;
