//! The store backend of the limiter: buckets shared by every process that opens the [`Store`].
//!
//! The store keeps each bucket's log, pause and FIFO queue; this side keeps only what is
//! local to the process: the rates it applies to each key, its statistics, and its
//! waiting threads. Every thread that waits takes a place of its own in the store's queue,
//! so the order is FIFO across all threads of all processes, and it sleeps until its own
//! due instant (at most [`REPOLL`](super::store::REPOLL)), or until a cancel or close
//! wakes it. When the store cannot be reached, the [`OnUnavailable`] setting decides:
//! retry with growing pauses until the call's deadline, or fail at once. A call is never
//! admitted without the store.

use super::bucket::{BucketStats, WaiterState, WindowUsage};
use super::clock::nanos;
use super::keymap::KeyMap;
use super::store::{HoldLease, OnUnavailable, Place, Store, StoreErrorKind, Verdict, Window};
use super::{Admitted, Error, Rate, Wait};
use parking_lot::{Condvar, Mutex, RwLock};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The first pause after a failed store call; it doubles up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct KeyState {
    rates: Vec<Rate>,
    windows: Vec<Window>,
    own: bool,
    stats: BucketStats,
}

/// Whether a key's local state may be forgotten: no rates of its own, no thread on it.
fn evictable(k: &Arc<Mutex<KeyState>>) -> bool {
    Arc::strong_count(k) == 1 && !k.lock().own
}

/// The process-local side of a limiter whose buckets live in a store.
pub(crate) struct StoreBackend {
    store: Arc<dyn Store>,
    on_unavailable: OnUnavailable,
    default_rates: Vec<Rate>,
    margin: Duration,
    max_buckets: usize,
    keys: RwLock<KeyMap<Mutex<KeyState>>>,
    closed: AtomicBool,
    /// Wakes sleeping tickets on cancel and close; each re-checks its own state.
    bell: (Mutex<u64>, Condvar),
}

impl std::fmt::Debug for StoreBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreBackend")
            .field("store", &self.store.location())
            .field("on_unavailable", &self.on_unavailable)
            .finish_non_exhaustive()
    }
}

fn windows(rates: &[Rate], margin: Duration) -> Vec<Window> {
    rates
        .iter()
        .map(|r| Window {
            calls: u64::from(r.calls),
            window_ns: nanos(r.window).saturating_add(nanos(margin)),
        })
        .collect()
}

impl StoreBackend {
    pub(crate) fn new(
        store: Arc<dyn Store>,
        on_unavailable: OnUnavailable,
        default_rates: Vec<Rate>,
        margin: Duration,
        max_buckets: usize,
    ) -> Self {
        Self {
            store,
            on_unavailable,
            default_rates,
            margin,
            max_buckets,
            keys: RwLock::new(KeyMap::default()),
            closed: AtomicBool::new(false),
            bell: (Mutex::new(0), Condvar::new()),
        }
    }

    pub(crate) fn location(&self) -> String {
        self.store.location()
    }

    fn check_open(&self) -> Result<(), Error> {
        if self.closed.load(Ordering::Acquire) {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    fn key(&self, key: &str) -> Result<Arc<Mutex<KeyState>>, Error> {
        if let Some(k) = self.keys.read().get(key) {
            return Ok(k.clone());
        }
        self.insert(key, &self.default_rates, false)
    }

    fn insert(&self, key: &str, rates: &[Rate], own: bool) -> Result<Arc<Mutex<KeyState>>, Error> {
        let make = || {
            Arc::new(Mutex::new(KeyState {
                rates: rates.to_vec(),
                windows: windows(rates, self.margin),
                own,
                stats: BucketStats::default(),
            }))
        };
        self.keys
            .write()
            .get_or_insert(key, self.max_buckets, evictable, make)
            .ok_or(Error::TooManyBuckets {
                limit: self.max_buckets,
            })
    }

    /// The key's windows after checking the cost against them.
    fn windows_for(
        &self,
        key: &str,
        cost: u32,
    ) -> Result<(Arc<Mutex<KeyState>>, Vec<Window>), Error> {
        self.check_open()?;
        let k = self.key(key)?;
        let windows = k.lock().windows.clone();
        super::check_cost_range(cost)?;
        let max = windows.iter().map(|w| w.calls).min().unwrap_or(0);
        if u64::from(cost) > max {
            return Err(Error::InvalidArgument(format!(
                "a cost of {cost} exceeds the smallest rate of the bucket ({max} calls) and could never be admitted"
            )));
        }
        Ok((k, windows))
    }

    pub(crate) fn set_rates(&self, key: &str, rates: &[Rate]) -> Result<(), Error> {
        self.check_open()?;
        let k = self.insert(key, rates, true)?;
        let mut k = k.lock();
        k.rates = rates.to_vec();
        k.windows = windows(rates, self.margin);
        k.own = true;
        drop(k);
        // Waiters recompute their due instants under the new rates.
        self.ring();
        Ok(())
    }

    pub(crate) fn ensure_rates(&self, key: &str, rates: &[Rate]) -> Result<(), Error> {
        if self.keys.read().contains_key(key) {
            return Ok(());
        }
        self.insert(key, rates, rates != self.default_rates.as_slice())
            .map(drop)
    }

    pub(crate) fn rates(&self, key: &str) -> Vec<Rate> {
        match self.keys.read().get(key) {
            Some(k) => k.lock().rates.clone(),
            None => self.default_rates.clone(),
        }
    }

    /// Admits a call at once if it fits behind the queue: logged, or held with `lease`
    /// (then the hold's id is returned; 0 otherwise).
    pub(crate) fn try_admit(
        &self,
        key: &str,
        cost: u32,
        lease: Option<Duration>,
    ) -> Result<u64, Error> {
        let (k, windows) = self.windows_for(key, cost)?;
        let hold = lease.map(|duration| HoldLease {
            id: super::store::waiter_id(),
            duration,
        });
        match self
            .store
            .poll(key, &windows, u64::from(cost), Place::Try, hold)
        {
            Ok(Verdict::Admitted) => {
                k.lock().stats.record_admission(u64::from(cost), 0);
                Ok(hold.map_or(0, |h| h.id))
            }
            Ok(Verdict::Wait(wait)) => {
                k.lock().stats.refusals += 1;
                Err(Error::WouldBlock { wait })
            }
            Err(e) => Err(Error::Store(e)),
        }
    }

    pub(crate) fn wait_time(&self, key: &str, cost: u32) -> Result<Duration, Error> {
        let (_, windows) = self.windows_for(key, cost)?;
        match self
            .store
            .poll(key, &windows, u64::from(cost), Place::Peek, None)
        {
            Ok(Verdict::Wait(wait)) => Ok(wait),
            Ok(Verdict::Admitted) => Ok(Duration::ZERO),
            Err(e) => Err(Error::Store(e)),
        }
    }

    pub(crate) fn enqueue(
        self: &Arc<Self>,
        key: &str,
        cost: u32,
        timeout: Option<Duration>,
        now: super::Nanos,
        lease: Option<Duration>,
    ) -> Result<StoreTicket, Error> {
        let (k, _) = self.windows_for(key, cost)?;
        let started = Instant::now();
        let ticket = StoreTicket {
            backend: self.clone(),
            key: key.into(),
            state: k,
            id: super::store::waiter_id(),
            cost,
            lease,
            started,
            started_at: now,
            deadline: timeout.map(|t| started + t),
            outcome: Mutex::new((WaiterState::Waiting, None)),
            frees_in: Mutex::new(None),
            plan: Mutex::new(Plan {
                next: None,
                bell: 0,
                retry: RETRY_FIRST,
            }),
        };
        // Take the place now: the queue's order is the order of arrival.
        ticket.wait(Some(Duration::ZERO))?;
        Ok(ticket)
    }

    /// Ends hold `id` of `key` with its units counted from `ago` before now. A store that
    /// fails is logged: the hold's lease ends it anyway.
    pub(crate) fn release(&self, key: &str, id: u64, ago: Duration) {
        let windows = match self.keys.read().get(key) {
            Some(k) => k.lock().windows.clone(),
            None => windows(&self.default_rates, self.margin),
        };
        if let Err(e) = self.store.release(key, &windows, id, ago) {
            log::warn!("could not end a hold in the quota store (its lease will): {e}");
        }
        // Waiters recompute their due instants now that the units have an end.
        self.ring();
    }

    pub(crate) fn pause(&self, key: &str, duration: Duration) -> Result<(), Error> {
        self.check_open()?;
        let k = self.key(key)?;
        self.store.pause(key, duration).map_err(Error::Store)?;
        k.lock().stats.pauses += 1;
        self.ring();
        Ok(())
    }

    pub(crate) fn stats(&self, key: &str) -> Result<BucketStats, Error> {
        let (stats, windows) = match self.keys.read().get(key) {
            Some(k) => {
                let k = k.lock();
                (k.stats.clone(), k.windows.clone())
            }
            None => (
                BucketStats::default(),
                windows(&self.default_rates, self.margin),
            ),
        };
        let usage = self.store.usage(key, &windows).map_err(Error::Store)?;
        Ok(BucketStats {
            paused_for_ns: nanos(usage.paused_for),
            queued: usage.queued,
            in_flight: usage.in_flight,
            windows: windows
                .iter()
                .zip(usage.used.iter().chain(std::iter::repeat(&0)))
                .map(|(w, used)| WindowUsage {
                    used: *used,
                    calls: w.calls,
                    window_ns: w.window_ns,
                })
                .collect(),
            ..stats
        })
    }

    pub(crate) fn keys(&self) -> Vec<String> {
        self.keys.read().keys().map(|k| k.to_string()).collect()
    }

    /// Forgets the local state of keys without rates of their own and without a thread
    /// on them; the buckets themselves live on in the store.
    pub(crate) fn purge_idle(&self) -> usize {
        self.keys.write().purge(evictable)
    }

    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.ring();
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    fn ring(&self) {
        let (m, cv) = &self.bell;
        *m.lock() += 1;
        cv.notify_all();
    }

    /// How often the bell has rung.
    fn bell_count(&self) -> u64 {
        *self.bell.0.lock()
    }

    /// Sleeps until `until`, or until the bell rings after it had rung `rung` times.
    fn sleep(&self, until: Instant, rung: u64) {
        let (m, cv) = &self.bell;
        let mut g = m.lock();
        while *g == rung {
            if cv.wait_until(&mut g, until).timed_out() {
                break;
            }
        }
    }
}

/// Units held in flight in a store's bucket.
pub(crate) struct StoreHold {
    backend: Arc<StoreBackend>,
    key: Box<str>,
    id: u64,
}

impl StoreHold {
    /// Ends the hold with its units counted from `ago` before now.
    pub(crate) fn end(&self, ago: Duration) {
        self.backend.release(&self.key, self.id, ago);
    }
}

impl StoreBackend {
    /// Admits a hold at once if it fits behind the queue.
    pub(crate) fn try_hold(
        self: &Arc<Self>,
        key: &str,
        cost: u32,
        lease: Duration,
    ) -> Result<StoreHold, Error> {
        let id = self.try_admit(key, cost, Some(lease))?;
        Ok(StoreHold {
            backend: self.clone(),
            key: key.into(),
            id,
        })
    }
}

/// A place in a store's queue.
pub(crate) struct StoreTicket {
    backend: Arc<StoreBackend>,
    key: Box<str>,
    state: Arc<Mutex<KeyState>>,
    id: u64,
    cost: u32,
    /// For a hold: its lease (the hold's id is the ticket's).
    lease: Option<Duration>,
    started: Instant,
    started_at: super::Nanos,
    deadline: Option<Instant>,
    /// The state, and once admitted the admission.
    outcome: Mutex<(WaiterState, Option<Admitted>)>,
    /// When the deadline could not be met: how long until the store would have admitted
    /// the call (a lower bound).
    frees_in: Mutex<Option<Duration>>,
    /// When to ask the store again, kept across slices of the wait.
    plan: Mutex<Plan>,
}

/// A waiting ticket's next poll of the store.
#[derive(Debug)]
struct Plan {
    /// The instant of the next poll (the due instant, or a retry after a failure).
    next: Option<Instant>,
    /// The bell's count when `next` was planned: a ring (cancel, pause, new rates, close)
    /// makes the ticket ask again at once.
    bell: u64,
    /// The pause before the next retry of an unreachable store.
    retry: Duration,
}

impl std::fmt::Debug for StoreTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreTicket")
            .field("key", &self.key)
            .field("cost", &self.cost)
            .field("state", &self.outcome.lock().0)
            .finish()
    }
}

impl StoreTicket {
    pub(crate) fn cost(&self) -> u32 {
        self.cost
    }

    pub(crate) fn is_hold(&self) -> bool {
        self.lease.is_some()
    }

    /// The hold an admitted hold ticket made (its id is the ticket's).
    pub(crate) fn hold(&self) -> StoreHold {
        StoreHold {
            backend: self.backend.clone(),
            key: self.key.clone(),
            id: self.id,
        }
    }

    pub(crate) fn state(&self) -> WaiterState {
        self.outcome.lock().0
    }

    pub(crate) fn admitted(&self) -> Option<Admitted> {
        self.outcome.lock().1
    }

    /// Ends the wait in `state` unless it already ended; gives up the place in the store.
    fn finish(&self, state: WaiterState) -> bool {
        self.end(state, true)
    }

    /// [`finish`](Self::finish), counting a timeout or cancellation only when `count`.
    fn end(&self, state: WaiterState, count: bool) -> bool {
        {
            let mut o = self.outcome.lock();
            if o.0 != WaiterState::Waiting {
                return false;
            }
            o.0 = state;
        }
        if count {
            let mut k = self.state.lock();
            match state {
                WaiterState::TimedOut => k.stats.timeouts += 1,
                WaiterState::Cancelled => k.stats.cancellations += 1,
                _ => {}
            }
        }
        if let Err(e) = self.backend.store.leave(&self.key, self.id) {
            // The lease ends the place within LEASE after its due instant anyway.
            log::warn!("could not give up a place in the shared queue: {e}");
        }
        self.backend.ring();
        true
    }

    /// Waits until admitted, for at most `slice` of real time (`None`: as long as it
    /// takes).
    pub(crate) fn wait(&self, slice: Option<Duration>) -> Result<Wait, Error> {
        let slice_end = slice.map(|s| Instant::now() + s);
        loop {
            if self.backend.is_closed() {
                self.finish(WaiterState::Closed);
            }
            if let Some(done) = super::outcome(self.state(), *self.frees_in.lock()) {
                return done;
            }
            let now = Instant::now();
            if self.deadline.is_some_and(|d| now >= d) {
                self.finish(WaiterState::TimedOut);
                continue;
            }
            // Read before the poll: a bell rung after it must not be slept through.
            let bell = self.backend.bell_count();
            let planned = {
                let p = self.plan.lock();
                p.next.filter(|t| p.bell == bell && now < *t)
            };
            let next = match planned {
                // Not due yet, and nothing changed since the last poll: the store is not
                // asked again before the due instant (another slice of the same wait).
                Some(t) => t,
                None => match self.poll_once(now)? {
                    Some(t) => {
                        let mut p = self.plan.lock();
                        p.next = Some(t);
                        p.bell = bell;
                        t
                    }
                    None => continue,
                },
            };
            let mut until = next;
            if let Some(d) = self.deadline {
                until = until.min(d);
            }
            if let Some(end) = slice_end {
                if now >= end {
                    return Ok(Wait::Pending);
                }
                until = until.min(end);
            }
            self.backend.sleep(until, bell);
        }
    }

    /// Asks the store once. Returns when to ask again, or `None` when the wait ended
    /// (admitted, timed out, cancelled meanwhile); fails when the store does.
    fn poll_once(&self, now: Instant) -> Result<Option<Instant>, Error> {
        let windows = self.state.lock().windows.clone();
        let verdict = self.backend.store.poll(
            &self.key,
            &windows,
            u64::from(self.cost),
            Place::Queue { id: self.id },
            self.lease.map(|duration| HoldLease {
                id: self.id,
                duration,
            }),
        );
        match verdict {
            Ok(Verdict::Admitted) => {
                let waited = self.started.elapsed();
                let admitted = Admitted {
                    at: self.started_at.saturating_add(nanos(waited)),
                    waited,
                };
                let mut o = self.outcome.lock();
                // Cancelled meanwhile: the units are spent, the call is not made.
                if o.0 == WaiterState::Waiting {
                    *o = (WaiterState::Admitted, Some(admitted));
                    drop(o);
                    self.state
                        .lock()
                        .stats
                        .record_admission(u64::from(self.cost), nanos(waited));
                }
                Ok(None)
            }
            Ok(Verdict::Wait(wait)) => {
                self.plan.lock().retry = RETRY_FIRST;
                if self.deadline.is_some_and(|d| now + wait > d) {
                    // The deadline cannot be met: fail now rather than at the deadline.
                    *self.frees_in.lock() = Some(wait);
                    self.finish(WaiterState::TimedOut);
                    return Ok(None);
                }
                Ok(Some(now + wait.min(super::store::REPOLL)))
            }
            Err(e) => {
                let retry = self.plan.lock().retry;
                let fatal = e.kind != StoreErrorKind::Unavailable
                    || self.backend.on_unavailable == OnUnavailable::Fail
                    || self.deadline.is_some_and(|d| now + retry > d);
                if fatal {
                    // The failure, not "cancelled", is what the caller needs to see.
                    self.end(WaiterState::Cancelled, false);
                    return Err(Error::Store(e));
                }
                log::warn!(
                    "the quota store is unavailable, retrying in {} ms: {e}",
                    retry.as_millis()
                );
                self.plan.lock().retry = (retry * 2).min(RETRY_MAX);
                Ok(Some(now + retry))
            }
        }
    }

    /// Gives up the place; false if the wait had already ended.
    pub(crate) fn cancel(&self) -> bool {
        self.finish(WaiterState::Cancelled)
    }
}

impl Drop for StoreTicket {
    fn drop(&mut self) {
        self.finish(WaiterState::Cancelled);
    }
}

#[cfg(test)]
mod tests {
    use super::super::store::{StoreError, Usage, Verdict};
    use super::*;
    use crate::limiter::Limiter;
    use std::sync::atomic::AtomicU32;

    /// A store that answers every poll with `answer` (admitting once `admit_after` polls
    /// were answered) and counts the calls it saw.
    #[derive(Debug)]
    struct Scripted {
        answer: Mutex<Result<Verdict, StoreError>>,
        admit_after: u32,
        polls: AtomicU32,
        leaves: AtomicU32,
    }

    impl Scripted {
        fn new(answer: Result<Verdict, StoreError>, admit_after: u32) -> Arc<Self> {
            Arc::new(Self {
                answer: Mutex::new(answer),
                admit_after,
                polls: AtomicU32::new(0),
                leaves: AtomicU32::new(0),
            })
        }
    }

    impl Store for Scripted {
        fn poll(
            &self,
            _: &str,
            _: &[Window],
            _: u64,
            _: Place,
            _: Option<HoldLease>,
        ) -> Result<Verdict, StoreError> {
            let n = self.polls.fetch_add(1, Ordering::SeqCst) + 1;
            if n > self.admit_after {
                return Ok(Verdict::Admitted);
            }
            self.answer.lock().clone()
        }
        fn leave(&self, _: &str, _: u64) -> Result<(), StoreError> {
            self.leaves.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        fn release(&self, _: &str, _: &[Window], _: u64, _: Duration) -> Result<(), StoreError> {
            Ok(())
        }
        fn pause(&self, _: &str, _: Duration) -> Result<(), StoreError> {
            Ok(())
        }
        fn usage(&self, _: &str, w: &[Window]) -> Result<Usage, StoreError> {
            Ok(Usage {
                used: vec![0; w.len()],
                ..Usage::default()
            })
        }
        fn location(&self) -> String {
            "scripted".into()
        }
    }

    fn down() -> Result<Verdict, StoreError> {
        Err(StoreError::new(
            StoreErrorKind::Unavailable,
            "connection refused",
        ))
    }

    fn limiter(store: Arc<Scripted>, on: OnUnavailable) -> Limiter {
        Limiter::builder()
            .rate(Rate::new(10, Duration::from_secs(1)))
            .store_handle(store, on)
            .build()
            .unwrap()
    }

    #[test]
    fn an_unreachable_store_fails_at_once_with_fail() {
        let store = Scripted::new(down(), u32::MAX);
        let l = limiter(store.clone(), OnUnavailable::Fail);
        let started = Instant::now();
        let e = l.acquire("k", 1, None).unwrap_err();
        assert!(matches!(&e, Error::Store(s) if s.kind == StoreErrorKind::Unavailable));
        assert!(e.to_string().contains("connection refused"), "{e}");
        assert!(started.elapsed() < Duration::from_millis(500));
        assert!(matches!(l.try_acquire("k", 1), Err(Error::Store(_))));
        assert_eq!(l.stats("k").admitted_calls, 0);
    }

    #[test]
    fn an_unreachable_store_is_retried_until_the_deadline_and_never_bypassed() {
        let store = Scripted::new(down(), u32::MAX);
        let l = limiter(store.clone(), OnUnavailable::Wait);
        let started = Instant::now();
        let e = l
            .acquire("k", 1, Some(Duration::from_millis(400)))
            .unwrap_err();
        let took = started.elapsed();
        assert!(matches!(e, Error::Store(_)), "{e:?}");
        assert!(took >= Duration::from_millis(300), "{took:?}");
        assert!(took < Duration::from_secs(2), "{took:?}");
        // 50, 100, 200 ms pauses: several tries within the deadline.
        assert!(store.polls.load(Ordering::SeqCst) >= 3);
        assert_eq!(l.stats("k").admitted_calls, 0);
        // try_acquire never waits for the store.
        assert!(matches!(l.try_acquire("k", 1), Err(Error::Store(_))));
    }

    #[test]
    fn a_store_that_comes_back_admits_the_waiting_call() {
        let store = Scripted::new(down(), 3);
        let l = limiter(store.clone(), OnUnavailable::Wait);
        let a = l.acquire("k", 1, Some(Duration::from_secs(5))).unwrap();
        assert!(a.waited >= Duration::from_millis(100), "{a:?}");
        assert_eq!(store.polls.load(Ordering::SeqCst), 4);
        let st = l.stats("k");
        assert_eq!((st.admitted_calls, st.waited_calls), (1, 1));
    }

    #[test]
    fn an_unmeetable_deadline_fails_at_once_and_gives_up_the_place() {
        let store = Scripted::new(Ok(Verdict::Wait(Duration::from_secs(30))), u32::MAX);
        let l = limiter(store.clone(), OnUnavailable::Wait);
        let started = Instant::now();
        assert_eq!(
            l.acquire("k", 1, Some(Duration::from_secs(1))),
            Err(Error::Timeout {
                frees_in: Some(Duration::from_secs(30))
            })
        );
        assert!(started.elapsed() < Duration::from_millis(500));
        assert_eq!(store.leaves.load(Ordering::SeqCst), 1);
        assert_eq!(l.stats("k").timeouts, 1);
    }

    #[test]
    fn cancel_close_and_drop_end_waits_at_once_and_leave_the_queue() {
        let store = Scripted::new(Ok(Verdict::Wait(Duration::from_secs(30))), u32::MAX);
        let l = limiter(store.clone(), OnUnavailable::Wait);
        let ticket = Arc::new(l.enqueue("k", 1, None).unwrap());
        let waiter = {
            let t = ticket.clone();
            std::thread::spawn(move || {
                let started = Instant::now();
                (t.wait(None), started.elapsed())
            })
        };
        std::thread::sleep(Duration::from_millis(100));
        assert!(ticket.cancel());
        assert!(!ticket.cancel(), "a second cancel finds nothing to do");
        let (r, took) = waiter.join().unwrap();
        assert_eq!(r, Err(Error::Cancelled));
        assert!(took < Duration::from_millis(600), "{took:?}");
        assert_eq!(store.leaves.load(Ordering::SeqCst), 1);

        drop(l.enqueue("k", 1, None).unwrap());
        assert_eq!(
            store.leaves.load(Ordering::SeqCst),
            2,
            "drop gives up the place"
        );

        let waiter = {
            let l = l.clone();
            std::thread::spawn(move || l.acquire("k", 1, None))
        };
        std::thread::sleep(Duration::from_millis(100));
        l.close();
        assert_eq!(waiter.join().unwrap(), Err(Error::Closed));
        assert_eq!(l.try_acquire("k", 1), Err(Error::Closed));
        assert_eq!(l.stats("k").cancellations, 2, "the cancel and the drop");
    }

    #[test]
    fn slices_of_a_wait_ask_the_store_only_when_due() {
        let store = Scripted::new(Ok(Verdict::Wait(Duration::from_millis(300))), 2);
        let l = limiter(store.clone(), OnUnavailable::Wait);
        let ticket = l.enqueue("k", 1, None).unwrap();
        assert_eq!(
            store.polls.load(Ordering::SeqCst),
            1,
            "the place is taken at once"
        );
        // Slices of 20 ms, as a binding that watches for Ctrl+C takes them.
        let started = Instant::now();
        let mut slices = 0;
        while ticket.wait(Some(Duration::from_millis(20))) == Ok(Wait::Pending) {
            slices += 1;
        }
        assert!(ticket.admitted().is_some());
        assert!(slices >= 10, "{slices} slices");
        // One poll when the first due instant came, one at the second: not one a slice.
        assert_eq!(store.polls.load(Ordering::SeqCst), 3);
        assert!(started.elapsed() >= Duration::from_millis(550));
        // A ring of the bell (a pause here) makes a waiter ask again at once.
        let store = Scripted::new(Ok(Verdict::Wait(Duration::from_secs(30))), u32::MAX);
        let l = limiter(store.clone(), OnUnavailable::Wait);
        let ticket = l.enqueue("k", 1, None).unwrap();
        assert_eq!(ticket.poll(), Ok(Wait::Pending));
        assert_eq!(store.polls.load(Ordering::SeqCst), 1);
        l.pause("k", Duration::from_secs(1)).unwrap();
        assert_eq!(ticket.poll(), Ok(Wait::Pending));
        assert_eq!(store.polls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn costs_are_checked_against_the_rates_before_the_store_is_asked() {
        let store = Scripted::new(Ok(Verdict::Admitted), 0);
        let l = limiter(store.clone(), OnUnavailable::Wait);
        assert!(matches!(
            l.try_acquire("k", 0),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            l.try_acquire("k", 11),
            Err(Error::InvalidArgument(_))
        ));
        assert_eq!(store.polls.load(Ordering::SeqCst), 0);
        l.set_rates("k", &[Rate::new(20, Duration::from_secs(1))])
            .unwrap();
        l.try_acquire("k", 11).unwrap();
        assert_eq!(l.rates("k"), vec![Rate::new(20, Duration::from_secs(1))]);
        assert_eq!(l.store_location().as_deref(), Some("scripted"));
    }
}
