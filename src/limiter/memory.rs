//! The memory backend of the limiter: buckets of this process, kept in a bounded map by
//! key and created on demand.
//!
//! Each [`Bucket`] keeps its log, pause and FIFO queue under its own lock (see the
//! `bucket` module); this file finds or creates buckets, checks costs, and runs the
//! operations of [`Limiter`](super::Limiter) on them. [`MemoryTicket`] and [`MemoryHold`]
//! are the memory side of [`Ticket`](super::Ticket) and [`Hold`](super::Hold).

use super::bucket::{Bucket, BucketState, BucketStats, Waiter, WaiterState};
use super::clock::{Clock, ClockListener, Nanos, nanos};
use super::keymap::KeyMap;
use super::sync::{MutexGuard, RwLock};
use super::window::SlidingLog;
use super::{Admitted, Error, Rate, Wait, check_cost_range, outcome};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Buckets by key, at most `max_buckets`, idle ones dropped one at a time to make room.
type BucketMap = KeyMap<Bucket>;

/// Whether a bucket may be dropped: nobody holds it (ticket, hold, a call under way), it
/// has no rates of its own, and nothing is in its windows, queue or pause.
fn evictable(bucket: &Arc<Bucket>, now: Nanos) -> bool {
    Arc::strong_count(bucket) == 1 && bucket.state.lock().is_idle(now)
}

/// The buckets of a limiter without a store.
pub(crate) struct MemoryBackend {
    clock: Arc<dyn Clock>,
    default_rates: Vec<Rate>,
    margin: Duration,
    max_buckets: usize,
    buckets: RwLock<BucketMap>,
    closed: AtomicBool,
}

impl ClockListener for MemoryBackend {
    fn clock_advanced(&self) {
        let now = self.clock.now();
        for bucket in self.buckets.read().values() {
            let mut st = bucket.state.lock();
            let now = st.clock(now);
            st.pump(now);
        }
    }
}

impl MemoryBackend {
    pub(crate) fn new(
        clock: Arc<dyn Clock>,
        default_rates: Vec<Rate>,
        margin: Duration,
        max_buckets: usize,
    ) -> Self {
        Self {
            clock,
            default_rates,
            margin,
            max_buckets,
            buckets: RwLock::new(BucketMap::default()),
            closed: AtomicBool::new(false),
        }
    }

    fn now(&self) -> Nanos {
        self.clock.now()
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// How many buckets exist now.
    pub(crate) fn len(&self) -> usize {
        self.buckets.read().len()
    }

    /// How many buckets the map's eviction sweep has examined (for tests of its bound).
    #[cfg(test)]
    pub(crate) fn examined(&self) -> u64 {
        self.buckets.read().examined
    }

    fn new_bucket(&self, rates: &[Rate]) -> Arc<Bucket> {
        Arc::new(Bucket::new(
            SlidingLog::new(rates, self.margin),
            self.is_closed(),
        ))
    }

    /// Inserts a bucket under the write lock, dropping an idle one first if the map is
    /// full (with bounded work: see the `keymap` module).
    fn insert(&self, map: &mut BucketMap, key: &str, rates: &[Rate]) -> Result<Arc<Bucket>, Error> {
        let now = self.now();
        map.get_or_insert(
            key,
            self.max_buckets,
            |b| evictable(b, now),
            || self.new_bucket(rates),
        )
        .ok_or(Error::TooManyBuckets {
            limit: self.max_buckets,
        })
    }

    fn bucket(&self, key: &str) -> Result<Arc<Bucket>, Error> {
        if let Some(b) = self.buckets.read().get(key) {
            return Ok(b.clone());
        }
        let mut map = self.buckets.write();
        self.insert(&mut map, key, &self.default_rates)
    }

    /// Runs `f` on the bucket of `key` under its lock, with the instant read under that
    /// lock, creating the bucket if needed.
    #[inline]
    fn with_bucket<R>(
        &self,
        key: &str,
        f: impl FnOnce(&Arc<Bucket>, &mut BucketState, Nanos) -> R,
    ) -> Result<R, Error> {
        {
            let map = self.buckets.read();
            if let Some(b) = map.get(key) {
                let mut st = b.state.lock();
                let now = st.clock(self.now());
                return Ok(f(b, &mut st, now));
            }
        }
        let b = self.bucket(key)?;
        let mut st = b.state.lock();
        let now = st.clock(self.now());
        Ok(f(&b, &mut st, now))
    }

    /// See [`Limiter::set_rates`](super::Limiter::set_rates); `rates` are valid.
    pub(crate) fn set_rates(&self, key: &str, rates: &[Rate]) -> Result<(), Error> {
        if self.is_closed() {
            return Err(Error::Closed);
        }
        let mut map = self.buckets.write();
        if let Some(b) = map.get(key) {
            let mut st = b.state.lock();
            let now = st.clock(self.now());
            st.log = st.log.with_rates(rates, self.margin, now);
            st.own_rates = true;
            // Queued calls that no longer fit any window fail rather than wait forever.
            let max = st.log.max_cost();
            if st.queue.iter().any(|w| w.cost > max) {
                let too_big: Vec<_> = st.queue.iter().filter(|w| w.cost > max).cloned().collect();
                for w in too_big {
                    st.cancel(&w, now);
                }
            }
            // The head's instant changed: its timer must recompute it.
            st.pump_and_watch(now);
            return Ok(());
        }
        let b = self.insert(&mut map, key, rates)?;
        b.state.lock().own_rates = true;
        Ok(())
    }

    /// See [`Limiter::ensure_rates`](super::Limiter::ensure_rates); `rates` are valid.
    pub(crate) fn ensure_rates(&self, key: &str, rates: &[Rate]) -> Result<(), Error> {
        if self.buckets.read().contains_key(key) {
            return Ok(());
        }
        let mut map = self.buckets.write();
        if map.contains_key(key) {
            return Ok(());
        }
        let b = self.insert(&mut map, key, rates)?;
        b.state.lock().own_rates = rates != self.default_rates.as_slice();
        Ok(())
    }

    pub(crate) fn rates(&self, key: &str) -> Vec<Rate> {
        let map = self.buckets.read();
        match map.get(key) {
            Some(b) => {
                let st = b.state.lock();
                st.log
                    .usage()
                    .map(|(_, calls, window)| {
                        Rate::new(
                            calls as u32,
                            Duration::from_nanos(window).saturating_sub(self.margin),
                        )
                    })
                    .collect()
            }
            None => self.default_rates.clone(),
        }
    }

    fn check_cost(st: &BucketState, cost: u32) -> Result<u64, Error> {
        if st.closed {
            return Err(Error::Closed);
        }
        check_cost_range(cost)?;
        let cost = u64::from(cost);
        let max = st.log.max_cost();
        if cost > max {
            return Err(Error::InvalidArgument(format!(
                "a cost of {cost} exceeds the smallest rate of the bucket ({max} calls) and could never be admitted"
            )));
        }
        Ok(cost)
    }

    /// Admits at once when the bucket allows it (as a hold with `lease`, else logged now):
    /// the admission instant and the hold's id. Otherwise `WouldBlock` with the wait,
    /// counted as a refusal when `count_refusal`.
    #[inline]
    pub(crate) fn try_admit(
        &self,
        key: &str,
        cost: u32,
        lease: Option<Nanos>,
        count_refusal: bool,
    ) -> Result<(Nanos, u64), Error> {
        self.with_bucket(key, |_, st, now| {
            Self::admit_now(st, now, cost, lease, count_refusal)
        })?
    }

    /// The work of [`try_admit`](Self::try_admit) under the bucket's lock.
    #[inline]
    fn admit_now(
        st: &mut BucketState,
        now: Nanos,
        cost: u32,
        lease: Option<Nanos>,
        count_refusal: bool,
    ) -> Result<(Nanos, u64), Error> {
        let cost = Self::check_cost(st, cost)?;
        if !st.queue.is_empty() {
            // Calls whose time has come leave the queue first.
            st.pump(now);
        }
        let at = if st.queue.is_empty() {
            st.ready_at(now, cost)
        } else {
            st.ready_at_behind_queue(now, cost)
        };
        if st.queue.is_empty() && at <= now {
            let id = match lease {
                Some(lease) => st.admit_held(now, cost, lease, 0),
                None => {
                    st.admit(now, cost, 0);
                    0
                }
            };
            return Ok((now, id));
        }
        if count_refusal {
            st.stats.refusals += 1;
        }
        Err(Error::WouldBlock {
            wait: Duration::from_nanos(at.saturating_sub(now)),
        })
    }

    /// Admits a hold at once when the bucket allows it (see [`try_admit`](Self::try_admit)),
    /// finding the bucket once.
    pub(crate) fn try_hold(
        &self,
        key: &str,
        cost: u32,
        lease: Duration,
        count_refusal: bool,
    ) -> Result<(MemoryHold, Nanos), Error> {
        self.with_bucket(key, |bucket, st, now| {
            let (at, id) = Self::admit_now(st, now, cost, Some(nanos(lease)), count_refusal)?;
            let hold = MemoryHold {
                bucket: bucket.clone(),
                id,
                clock: self.clock.clone(),
            };
            Ok((hold, at))
        })?
    }

    /// The bucket of `key` (created if needed) with `cost` checked against it, for a
    /// [`MemoryBinding`]. The binding's reference pins the bucket: [`evictable`] never
    /// drops a bucket that anything else holds.
    pub(crate) fn bind(&self, key: &str, cost: u32) -> Result<MemoryBinding, Error> {
        let bucket = self.bucket(key)?;
        Self::check_cost(&bucket.state.lock(), cost)?;
        Ok(MemoryBinding {
            bucket,
            clock: self.clock.clone(),
        })
    }

    pub(crate) fn wait_time(&self, key: &str, cost: u32) -> Result<Duration, Error> {
        self.with_bucket(key, |_, st, now| {
            let cost = Self::check_cost(st, cost)?;
            if !st.queue.is_empty() {
                st.pump(now);
            }
            Ok(Duration::from_nanos(
                st.ready_at_behind_queue(now, cost).saturating_sub(now),
            ))
        })?
    }

    /// Takes a place in the bucket's queue (for a hold with `lease`).
    pub(crate) fn enqueue(
        &self,
        key: &str,
        cost: u32,
        timeout: Option<Duration>,
        lease: Option<Duration>,
    ) -> Result<MemoryTicket, Error> {
        let bucket = self.bucket(key)?;
        let waiter = {
            let mut st = bucket.state.lock();
            let now = st.clock(self.now());
            let deadline = timeout.map(|t| now.saturating_add(nanos(t)));
            let cost = Self::check_cost(&st, cost)?;
            let waiter = Arc::new(Waiter::new(cost, now, deadline, lease.map(nanos)));
            st.queue.push_back(waiter.clone());
            st.pump(now);
            waiter
        };
        Ok(MemoryTicket {
            bucket,
            waiter,
            clock: self.clock.clone(),
        })
    }

    pub(crate) fn pause(&self, key: &str, duration: Duration) -> Result<(), Error> {
        self.with_bucket(key, |_, st, now| {
            if st.closed {
                return Err(Error::Closed);
            }
            st.paused_until = st.paused_until.max(now.saturating_add(nanos(duration)));
            st.stats.pauses += 1;
            st.pump(now);
            Ok(())
        })?
    }

    pub(crate) fn stats(&self, key: &str) -> BucketStats {
        let now = self.now();
        let bucket = self.buckets.read().get(key).cloned();
        match bucket {
            Some(b) => b.state.lock().snapshot(now),
            None => {
                BucketState::fresh(SlidingLog::new(&self.default_rates, self.margin)).snapshot(now)
            }
        }
    }

    pub(crate) fn keys(&self) -> Vec<String> {
        self.buckets.read().keys().map(|k| k.to_string()).collect()
    }

    pub(crate) fn purge_idle(&self) -> usize {
        let now = self.now();
        self.buckets.write().purge(|b| evictable(b, now))
    }

    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let map = self.buckets.write();
        for b in map.values() {
            b.state.lock().close();
        }
    }
}

/// A place in a bucket's queue of this process.
pub(crate) struct MemoryTicket {
    bucket: Arc<Bucket>,
    waiter: Arc<Waiter>,
    clock: Arc<dyn Clock>,
}

impl MemoryTicket {
    pub(crate) fn state(&self) -> WaiterState {
        self.waiter.state()
    }

    /// See [`Ticket::wait`](super::Ticket::wait).
    pub(crate) fn wait(&self, slice: Option<Duration>) -> Result<Wait, Error> {
        let waiter = &self.waiter;
        let started = Instant::now();
        let clock = &self.clock;
        let mut st: MutexGuard<'_, BucketState> = self.bucket.state.lock();
        waiter.active.fetch_add(1, Ordering::Relaxed);
        let mut head_at;
        let result = loop {
            let now = st.clock(clock.now());
            head_at = st.pump(now);
            if let Some(done) = outcome(waiter.state(), waiter.frees_in()) {
                break done;
            }
            // The timer (the first waiter with a thread on it) sleeps until the head's
            // instant; the others until their deadline, or until woken as the new timer.
            let is_timer = st.timer().is_some_and(|t| Arc::ptr_eq(t, waiter));
            let deadline = waiter.deadline.map(|d| d.saturating_add(1));
            let target = match (is_timer.then_some(head_at).flatten(), deadline) {
                (Some(a), Some(d)) => Some(a.min(d)),
                (a, d) => a.or(d),
            };
            let mut sleep = target.and_then(|t| clock.real_wait(now, t));
            // A clock that answers "until woken" wakes the bucket itself when it moves.
            st.clock_wakes |= target.is_some() && sleep.is_none();
            let wakes_at = match (target, sleep) {
                (Some(t), Some(_)) => t,
                _ => Nanos::MAX,
            };
            if let Some(slice) = slice {
                let left = slice.saturating_sub(started.elapsed());
                if left.is_zero() {
                    break Ok(Wait::Pending);
                }
                sleep = Some(sleep.map_or(left, |s| s.min(left)));
            }
            waiter.set_wakes_at(wakes_at);
            match sleep {
                Some(d) => {
                    waiter.wake.wait_for(&mut st, d);
                }
                None => waiter.wake.wait(&mut st),
            }
            waiter.set_wakes_at(Nanos::MAX);
        };
        waiter.active.fetch_sub(1, Ordering::Relaxed);
        // If this thread kept the head's time, the next waiting thread takes it over,
        // woken only when it does not already sleep towards an instant early enough.
        if let Some(at) = head_at {
            st.watch(at);
        }
        result
    }

    pub(crate) fn cancel(&self) -> bool {
        let mut st = self.bucket.state.lock();
        let now = st.clock(self.clock.now());
        st.cancel(&self.waiter, now)
    }

    pub(crate) fn admitted(&self) -> Option<Admitted> {
        let waiter = &self.waiter;
        (waiter.state() == WaiterState::Admitted).then(|| Admitted {
            at: waiter.admitted_at(),
            waited: Duration::from_nanos(waiter.admitted_at().saturating_sub(waiter.enqueued)),
        })
    }

    pub(crate) fn cost(&self) -> u32 {
        self.waiter.cost as u32
    }

    pub(crate) fn is_hold(&self) -> bool {
        self.waiter.lease.is_some()
    }

    /// The hold an admitted hold ticket made.
    pub(crate) fn hold(&self) -> MemoryHold {
        MemoryHold {
            bucket: self.bucket.clone(),
            id: self.waiter.hold_id(),
            clock: self.clock.clone(),
        }
    }
}

#[cfg(all(test, quotagate_loom))]
impl MemoryTicket {
    /// For the model checks, whose condition variables have no timed waits: ends the
    /// sleep on this ticket, as its timeout would, once the clock has reached the instant
    /// it sleeps towards. Returns whether its thread has yet to run before time may move
    /// on: it is not in its wait yet, or was woken and has not gone back to sleep.
    pub(crate) fn end_sleep_if_due(&self) -> bool {
        let _st = self.bucket.state.lock();
        let due = self.waiter.wakes_at() <= self.clock.now();
        if due {
            self.waiter.wake.notify_all();
        }
        due || self.waiter.active.load(Ordering::Relaxed) == 0
    }
}

impl Drop for MemoryTicket {
    fn drop(&mut self) {
        if self.waiter.state() == WaiterState::Waiting {
            self.cancel();
        }
    }
}

/// A bucket of this process found once, for the calls of a
/// [`Binding`](super::Binding).
pub(crate) struct MemoryBinding {
    bucket: Arc<Bucket>,
    clock: Arc<dyn Clock>,
}

impl MemoryBinding {
    /// [`MemoryBackend::try_admit`] without a lease, on the bucket already found.
    #[inline]
    pub(crate) fn try_acquire(&self, cost: u32) -> Result<(), Error> {
        let mut st = self.bucket.state.lock();
        let now = st.clock(self.clock.now());
        MemoryBackend::admit_now(&mut st, now, cost, None, true).map(drop)
    }
}

/// Units held in flight in a bucket of this process.
pub(crate) struct MemoryHold {
    bucket: Arc<Bucket>,
    id: u64,
    clock: Arc<dyn Clock>,
}

impl MemoryHold {
    /// Ends the hold with its units logged at `at` (kept within the hold's span).
    pub(crate) fn end(&self, at: Nanos) {
        let mut st = self.bucket.state.lock();
        let now = st.clock(self.clock.now());
        if st.end_hold(self.id, at, now) {
            // The head's instant may be earlier now: its timer recomputes it.
            st.pump_and_watch(now);
        }
    }
}
