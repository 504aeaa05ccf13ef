//! One bucket: its sliding log, its units in flight, its pause, its FIFO queue of waiters
//! and its statistics.
//!
//! A call admitted as a *hold* keeps its units in flight until it ends (its answer came
//! back, it failed, or it was given up); then they are logged at that end instant. Every
//! window check counts the units in flight as well as the logged ones. A hold whose lease
//! runs out before it ends is logged at the lease's end, so that a holder that never
//! comes back delays the others by at most one lease.
//!
//! All state changes happen in [`BucketState::pump`], under the bucket's lock: it admits
//! waiters from the front of the queue while the log admits them, times out the head when
//! its earliest instant lies past its deadline and any waiter whose deadline has passed,
//! and wakes exactly the waiters whose state changed. Waiters only sleep on their own
//! condition variable and read their state when they wake.
//!
//! Someone must notice when the head comes due: the clock itself when it wakes the bucket
//! (a manual clock's advance pumps every bucket), else the *timer*, the first waiter with
//! a thread blocked on it, which alone sleeps on the clock. Each waiter records the instant
//! its sleeping thread wakes by itself; after the head or its instant changed, or a thread
//! left its wait, [`BucketState::watch`] wakes the timer only when that instant is later
//! than the head's (or no thread sleeps on the clock), so that a release wakes no thread
//! but those it admits.

use super::clock::Nanos;
use super::sync::{AtomicU8, AtomicU32, AtomicU64, Condvar, Mutex};
use super::window::SlidingLog;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// Where a queued call stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum WaiterState {
    Waiting = 0,
    Admitted = 1,
    TimedOut = 2,
    Cancelled = 3,
    Closed = 4,
}

impl WaiterState {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Waiting,
            1 => Self::Admitted,
            2 => Self::TimedOut,
            3 => Self::Cancelled,
            _ => Self::Closed,
        }
    }
}

/// A call waiting in a bucket's queue.
#[derive(Debug)]
pub(crate) struct Waiter {
    pub(crate) cost: u64,
    /// For a hold: its lease. The waiter's units stay in flight once admitted.
    pub(crate) lease: Option<Nanos>,
    /// The id of the hold made on admission (with `lease`).
    hold: AtomicU64,
    pub(crate) enqueued: Nanos,
    pub(crate) deadline: Option<Nanos>,
    /// Written only under the bucket's lock; atomic so that readers need no `unsafe`.
    state: AtomicU8,
    /// Admission instant, valid once admitted (under the bucket's lock).
    admitted_at: AtomicU64,
    /// When its deadline could not be met: how long until the quota would have admitted
    /// it, in nanoseconds (0: unknown).
    frees_in: AtomicU64,
    /// Threads blocked in a wait on this waiter now (under the bucket's lock).
    pub(crate) active: AtomicU32,
    /// The instant at which the thread that last went to sleep on this waiter wakes by
    /// itself: `Nanos::MAX` while it sleeps until woken or is awake, 0 once woken to take
    /// the timer over (under the bucket's lock). Never earlier than the instant it really
    /// wakes, so a timer is never thought to watch an instant it would sleep past.
    wakes_at: AtomicU64,
    pub(crate) wake: Condvar,
}

impl Waiter {
    pub(crate) fn new(
        cost: u64,
        enqueued: Nanos,
        deadline: Option<Nanos>,
        lease: Option<Nanos>,
    ) -> Self {
        Self {
            cost,
            lease,
            hold: AtomicU64::new(0),
            enqueued,
            deadline,
            state: AtomicU8::new(WaiterState::Waiting as u8),
            admitted_at: AtomicU64::new(0),
            frees_in: AtomicU64::new(0),
            active: AtomicU32::new(0),
            wakes_at: AtomicU64::new(Nanos::MAX),
            wake: Condvar::new(),
        }
    }

    pub(crate) fn state(&self) -> WaiterState {
        WaiterState::from_u8(self.state.load(Ordering::Acquire))
    }

    fn set_state(&self, s: WaiterState) {
        self.state.store(s as u8, Ordering::Release);
    }

    pub(crate) fn admitted_at(&self) -> Nanos {
        self.admitted_at.load(Ordering::Acquire)
    }

    /// A timed-out waiter's shortfall: how long after its failure the quota would have
    /// admitted it, when its deadline could not be met.
    pub(crate) fn frees_in(&self) -> Option<std::time::Duration> {
        match self.frees_in.load(Ordering::Acquire) {
            0 => None,
            ns => Some(std::time::Duration::from_nanos(ns)),
        }
    }

    /// The id of the hold its admission made (0 for a plain admission or before it).
    pub(crate) fn hold_id(&self) -> u64 {
        self.hold.load(Ordering::Acquire)
    }

    /// See `wakes_at`: the instant the sleeping thread wakes by itself.
    pub(crate) fn wakes_at(&self) -> Nanos {
        self.wakes_at.load(Ordering::Relaxed)
    }

    /// Records, under the bucket's lock, the instant a thread going to sleep on this waiter
    /// wakes by itself (`Nanos::MAX`: only when woken, or the thread is awake again).
    pub(crate) fn set_wakes_at(&self, at: Nanos) {
        self.wakes_at.store(at, Ordering::Relaxed);
    }
}

/// Units admitted and not yet ended.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Held {
    id: u64,
    cost: u64,
    /// The admission instant: the earliest instant the units may be logged at.
    since: Nanos,
    /// The instant the lease runs out; the units are then logged at it.
    expiry: Nanos,
}

/// Counters of one bucket since it was created.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BucketStats {
    /// Calls admitted.
    pub admitted_calls: u64,
    /// Units admitted (the sum of the admitted calls' costs).
    pub admitted_units: u64,
    /// Admitted calls that had to wait.
    pub waited_calls: u64,
    /// The sum of the waits of admitted calls, in nanoseconds.
    pub total_wait_ns: u64,
    /// The longest wait of an admitted call, in nanoseconds.
    pub longest_wait_ns: u64,
    /// Calls that failed with a timeout.
    pub timeouts: u64,
    /// Waits that were cancelled.
    pub cancellations: u64,
    /// Try-acquires that were refused.
    pub refusals: u64,
    /// Pauses requested (by server feedback or by hand).
    pub pauses: u64,
    /// Nanoseconds the bucket stays paused from now (0 when not paused).
    pub paused_for_ns: u64,
    /// Calls waiting in the queue now.
    pub queued: u64,
    /// Units admitted as holds and not yet ended (counted in every window).
    pub in_flight: u64,
    /// Holds whose lease ran out before they ended (their units were logged then).
    pub expired_holds: u64,
    /// Use of each rate's window now, in the order the rates were given.
    pub windows: Vec<WindowUsage>,
}

impl BucketStats {
    /// Counts an admitted call of `cost` units that waited `waited` nanoseconds.
    #[inline]
    pub(crate) fn record_admission(&mut self, cost: u64, waited: Nanos) {
        self.admitted_calls += 1;
        self.admitted_units += cost;
        if waited > 0 {
            self.waited_calls += 1;
            self.total_wait_ns = self.total_wait_ns.saturating_add(waited);
            self.longest_wait_ns = self.longest_wait_ns.max(waited);
        }
    }
}

/// How full one rate's window is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WindowUsage {
    /// Units inside the window now.
    pub used: u64,
    /// The rate's limit.
    pub calls: u64,
    /// The window (including the limiter's margin), in nanoseconds.
    pub window_ns: u64,
}

#[derive(Debug)]
pub(crate) struct BucketState {
    pub(crate) log: SlidingLog,
    /// Holds not yet ended, in order of admission.
    holds: Vec<Held>,
    /// The sum of the costs in `holds`.
    in_flight: u64,
    /// The earliest lease expiry in `holds` (`Nanos::MAX` when none).
    next_expiry: Nanos,
    /// The id of the last hold made.
    last_hold: u64,
    pub(crate) paused_until: Nanos,
    pub(crate) queue: VecDeque<Arc<Waiter>>,
    pub(crate) closed: bool,
    /// The clock wakes the bucket itself when it moves (a manual clock, whose listener
    /// pumps every bucket): no thread needs to keep the head's time. Learned from the
    /// clock's answer to the first timer that asks it how long to sleep.
    pub(crate) clock_wakes: bool,
    /// Rates given to this bucket alone: it is never dropped as idle, or they would be lost.
    pub(crate) own_rates: bool,
    /// The latest instant any operation used: the log must only ever move forward.
    last_now: Nanos,
    pub(crate) stats: BucketStats,
}

/// A bucket: its state behind one lock.
#[derive(Debug)]
pub(crate) struct Bucket {
    pub(crate) state: Mutex<BucketState>,
}

impl Bucket {
    pub(crate) fn new(log: SlidingLog, closed: bool) -> Self {
        let mut state = BucketState::fresh(log);
        state.closed = closed;
        Self {
            state: Mutex::new(state),
        }
    }
}

impl BucketState {
    /// The instant for an operation under the lock. Threads read the clock before they get
    /// the lock, so a late reader could otherwise log an admission before one already
    /// logged; clamping keeps the log in order.
    #[inline]
    pub(crate) fn clock(&mut self, now: Nanos) -> Nanos {
        self.last_now = self.last_now.max(now);
        self.last_now
    }

    pub(crate) fn fresh(log: SlidingLog) -> Self {
        BucketState {
            log,
            holds: Vec::new(),
            in_flight: 0,
            next_expiry: Nanos::MAX,
            last_hold: 0,
            paused_until: 0,
            queue: VecDeque::new(),
            closed: false,
            clock_wakes: false,
            own_rates: false,
            last_now: 0,
            stats: BucketStats::default(),
        }
    }

    /// The instant at which a call of `cost` could be admitted if it were at the head: a
    /// lower bound while units in flight stand in the way (see [`SlidingLog::earliest`]).
    #[inline]
    pub(crate) fn ready_at(&mut self, now: Nanos, cost: u64) -> Nanos {
        if self.next_expiry <= now {
            self.expire_holds(now);
        }
        self.log.expire(now);
        self.log
            .earliest(now, cost, self.in_flight)
            .max(self.paused_until)
    }

    /// Logs an admission and counts it.
    #[inline]
    pub(crate) fn admit(&mut self, now: Nanos, cost: u64, waited: Nanos) {
        self.log.push(now, cost);
        self.stats.record_admission(cost, waited);
    }

    /// Admits a call as a hold with `lease`, counts it, and returns the hold's id.
    pub(crate) fn admit_held(&mut self, now: Nanos, cost: u64, lease: Nanos, waited: Nanos) -> u64 {
        self.last_hold += 1;
        let expiry = now.saturating_add(lease);
        self.holds.push(Held {
            id: self.last_hold,
            cost,
            since: now,
            expiry,
        });
        self.in_flight += cost;
        self.next_expiry = self.next_expiry.min(expiry);
        self.stats.record_admission(cost, waited);
        self.last_hold
    }

    /// Ends hold `id`: its units are logged at `at`, kept within its admission and `now`.
    /// Returns false when the hold had already ended (its lease ran out).
    pub(crate) fn end_hold(&mut self, id: u64, at: Nanos, now: Nanos) -> bool {
        let Some(i) = self.holds.iter().position(|h| h.id == id) else {
            return false;
        };
        let h = self.holds.remove(i);
        self.in_flight -= h.cost;
        self.log.push(at.clamp(h.since, now), h.cost);
        if h.expiry == self.next_expiry {
            self.find_next_expiry();
        }
        true
    }

    fn find_next_expiry(&mut self) {
        self.next_expiry = self
            .holds
            .iter()
            .map(|h| h.expiry)
            .min()
            .unwrap_or(Nanos::MAX);
    }

    /// Logs the holds whose lease ran out by `now` at their lease's end, oldest first.
    #[cold]
    fn expire_holds(&mut self, now: Nanos) {
        let mut expired: Vec<Held> = Vec::new();
        self.holds.retain(|h| {
            let live = h.expiry > now;
            if !live {
                expired.push(*h);
            }
            live
        });
        expired.sort_by_key(|h| h.expiry);
        for h in expired {
            log::warn!(
                "a hold of {} units was not ended within its lease; counting it from the lease's end",
                h.cost
            );
            self.in_flight -= h.cost;
            self.log.push(h.expiry, h.cost);
            self.stats.expired_holds += 1;
        }
        self.find_next_expiry();
    }

    /// Moves the queue forward at `now`; see the module documentation.
    /// Returns the instant the head waits for, if a head remains.
    pub(crate) fn pump(&mut self, now: Nanos) -> Option<Nanos> {
        let mut head_changed = false;
        // Waiters past their deadline leave wherever they stand; the others keep their order.
        if self
            .queue
            .iter()
            .any(|w| w.deadline.is_some_and(|d| d < now))
        {
            let first = self.queue.front().map(Arc::as_ptr);
            let stats = &mut self.stats;
            self.queue.retain(|w| {
                if w.deadline.is_some_and(|d| d < now) {
                    w.set_state(WaiterState::TimedOut);
                    stats.timeouts += 1;
                    w.wake.notify_one();
                    false
                } else {
                    true
                }
            });
            head_changed = self.queue.front().map(Arc::as_ptr) != first;
        }
        loop {
            let head = self.queue.front().cloned()?;
            let at = self.ready_at(now, head.cost);
            if at <= now {
                self.queue.pop_front();
                let waited = now.saturating_sub(head.enqueued);
                match head.lease {
                    Some(lease) => {
                        let id = self.admit_held(now, head.cost, lease, waited);
                        head.hold.store(id, Ordering::Release);
                    }
                    None => self.admit(now, head.cost, waited),
                }
                head.admitted_at.store(now, Ordering::Release);
                head.set_state(WaiterState::Admitted);
                head.wake.notify_one();
                head_changed = true;
            } else if head.deadline.is_some_and(|d| at > d) {
                // Its deadline cannot be met: fail now rather than at the deadline.
                self.queue.pop_front();
                self.stats.timeouts += 1;
                head.frees_in.store(at - now, Ordering::Release);
                head.set_state(WaiterState::TimedOut);
                head.wake.notify_one();
                head_changed = true;
            } else {
                if head_changed {
                    self.watch(at);
                }
                return Some(at);
            }
        }
    }

    /// The waiter that keeps the head's time: the first one in queue order with a thread
    /// blocked on it (the head itself when its owner waits). Only it sleeps on the clock,
    /// so a head whose owner is not waiting right now never stalls the others.
    pub(crate) fn timer(&self) -> Option<&Arc<Waiter>> {
        self.queue
            .iter()
            .find(|w| w.active.load(Ordering::Relaxed) > 0)
    }

    /// Makes sure that someone notices when the head, due at `head_at`, comes due: the
    /// clock, when it wakes the bucket itself; else the timer, woken to sleep on the clock
    /// unless its thread already sleeps towards an instant no later than `head_at`. Called
    /// after the head or its instant changed, and when a thread leaves its wait.
    pub(crate) fn watch(&self, head_at: Nanos) {
        if self.clock_wakes {
            return;
        }
        if let Some(t) = self.timer().filter(|t| t.wakes_at() > head_at) {
            // Its thread wakes now: later calls need not wake it again.
            t.set_wakes_at(0);
            t.wake.notify_one();
        }
    }

    /// [`pump`](Self::pump), then [`watch`](Self::watch) the head: after a change that can
    /// bring its instant earlier (a hold ended, the rates or the head changed).
    pub(crate) fn pump_and_watch(&mut self, now: Nanos) {
        if let Some(at) = self.pump(now) {
            self.watch(at);
        }
    }

    /// Removes a waiting call from the queue (cancel or drop) and lets the next one move.
    pub(crate) fn cancel(&mut self, waiter: &Arc<Waiter>, now: Nanos) -> bool {
        if waiter.state() != WaiterState::Waiting {
            return false;
        }
        let was_head = self.queue.front().is_some_and(|h| Arc::ptr_eq(h, waiter));
        self.queue.retain(|w| !Arc::ptr_eq(w, waiter));
        waiter.set_state(WaiterState::Cancelled);
        self.stats.cancellations += 1;
        waiter.wake.notify_all();
        if was_head {
            self.pump_and_watch(now);
        }
        true
    }

    /// Wakes every waiter with "closed"; later calls fail the same way.
    pub(crate) fn close(&mut self) {
        self.closed = true;
        for w in self.queue.drain(..) {
            w.set_state(WaiterState::Closed);
            w.wake.notify_all();
        }
    }

    /// The instant at which a new call of `cost` could be admitted behind the queue,
    /// assuming every queued call is admitted as early as it can be and every unit in
    /// flight ends now (a lower bound while units are in flight).
    pub(crate) fn ready_at_behind_queue(&mut self, now: Nanos, cost: u64) -> Nanos {
        if self.queue.is_empty() {
            return self.ready_at(now, cost);
        }
        // Brings the log and the holds to `now`.
        self.ready_at(now, 1);
        let mut log = self.log.clone();
        log.push(now, self.in_flight);
        let mut t = now.max(self.paused_until);
        for w in self
            .queue
            .iter()
            .map(|w| w.cost)
            .chain(std::iter::once(cost))
        {
            log.expire(t);
            t = log.earliest(t, w, 0);
            log.expire(t);
            log.push(t, w);
        }
        t
    }

    pub(crate) fn snapshot(&mut self, now: Nanos) -> BucketStats {
        self.ready_at(now, 1);
        let mut s = self.stats.clone();
        s.in_flight = self.in_flight;
        s.paused_for_ns = self.paused_until.saturating_sub(now);
        s.queued = self.queue.len() as u64;
        s.windows = self
            .log
            .usage()
            .map(|(used, calls, window_ns)| WindowUsage {
                used,
                calls,
                window_ns,
            })
            .collect();
        s
    }

    /// Nothing in any window, nobody waiting, no pause: the bucket can be forgotten.
    pub(crate) fn is_idle(&mut self, now: Nanos) -> bool {
        self.ready_at(now, 1);
        !self.own_rates
            && self.queue.is_empty()
            && self.holds.is_empty()
            && self.paused_until <= now
            && self.log.is_idle()
    }
}
