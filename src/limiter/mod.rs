//! The limiter: exact rolling windows, several at once, in buckets created on demand by key.
//!
//! A [`Limiter`] is cheap to clone and safe to share between threads. Each key names a
//! bucket; every bucket holds the limiter's default rates unless [`Limiter::set_rates`]
//! gave it others. A call of cost `c` is admitted at instant `t` only if, for every rate
//! of its bucket, the units admitted in `(t - window, t]` plus `c` stay within `calls`.
//!
//! Callers wait in FIFO order: a newcomer never passes a queued call, only the head of
//! a queue sleeps on the clock, and a deadline that cannot be met fails at once. A wait
//! can be taken in slices through a [`Ticket`], which keeps its place in the queue between
//! slices and can be cancelled from any thread.
//!
//! ```
//! use quotagate::limiter::{Limiter, Rate};
//! use std::time::Duration;
//!
//! let limiter = Limiter::builder()
//!     .rate(Rate::per_seconds(100, 60))
//!     .rate(Rate::per_seconds(1500, 3600))
//!     .build()
//!     .unwrap();
//! limiter.acquire("machines", 1, Some(Duration::from_secs(5))).unwrap();
//! assert!(limiter.try_acquire("machines", 1).is_ok());
//! ```

mod bucket;
mod clock;
mod keymap;
mod shared;
pub mod store;
mod sync;
mod window;

pub use bucket::{BucketStats, WindowUsage};
pub use clock::{Clock, ClockListener, ManualClock, MonotonicClock, Nanos};
pub use window::Rate;

use bucket::{Bucket, BucketState, Waiter, WaiterState};
use clock::nanos;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use sync::{MutexGuard, RwLock};
use window::SlidingLog;

/// The largest `calls` of a rate, and so the largest cost of a call, in every store (in
/// memory, a state file, Redis). Rates and costs above it fail with
/// [`Error::InvalidArgument`]: they cover every real API quota, and bound what one call
/// can make a store remember or compute.
pub const MAX_CALLS: u32 = 1 << 20;

/// The default limit on the number of buckets one limiter holds.
pub const DEFAULT_MAX_BUCKETS: usize = 65_536;

/// The lease of a hold when none is given: long enough for any HTTP exchange the client
/// allows by default (its attempt timeout is 5 minutes).
pub const DEFAULT_HOLD_LEASE: Duration = Duration::from_secs(330);

/// The longest lease a hold may have.
pub const MAX_HOLD_LEASE: Duration = Duration::from_secs(3600);

/// Why a limiter call did not admit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The deadline passed, or could not be met, before admission.
    Timeout,
    /// `try_acquire` would have had to wait this long (at least).
    WouldBlock {
        /// The wait the call would need.
        wait: Duration,
    },
    /// The wait was cancelled.
    Cancelled,
    /// The limiter was closed.
    Closed,
    /// The limiter already holds its maximum number of buckets, none of them idle.
    TooManyBuckets {
        /// The limit.
        limit: usize,
    },
    /// An argument can never work (zero cost, cost above a rate, no rates, ...).
    InvalidArgument(String),
    /// The shared store failed (unreachable past the deadline, damaged, misconfigured).
    Store(store::StoreError),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Timeout => f.write_str("the deadline passed before the quota admitted the call"),
            Error::WouldBlock { wait } => {
                write!(
                    f,
                    "the quota would admit the call in {} ms",
                    wait.as_millis()
                )
            }
            Error::Cancelled => f.write_str("the wait was cancelled"),
            Error::Closed => f.write_str("the limiter is closed"),
            Error::TooManyBuckets { limit } => {
                write!(
                    f,
                    "the limiter already holds its limit of {limit} buckets, none idle"
                )
            }
            Error::InvalidArgument(m) => f.write_str(m),
            Error::Store(e) => write!(f, "the quota store failed: {e}"),
        }
    }
}

impl std::error::Error for Error {}

/// Configures a [`Limiter`].
#[derive(Clone)]
pub struct LimiterBuilder {
    rates: Vec<Rate>,
    margin: Duration,
    hold_lease: Duration,
    max_buckets: usize,
    clock: Option<Arc<dyn Clock>>,
    store: Option<StoreSetting>,
}

/// The store a builder was given: a URL to open at build time, or an open store.
#[derive(Clone)]
enum StoreSetting {
    Url(String),
    Open(Arc<dyn store::Store>, store::OnUnavailable),
}

impl std::fmt::Debug for LimiterBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LimiterBuilder")
            .field("rates", &self.rates)
            .field("margin", &self.margin)
            .field("hold_lease", &self.hold_lease)
            .field("max_buckets", &self.max_buckets)
            .field(
                "store",
                &self.store.as_ref().map(|s| match s {
                    StoreSetting::Url(u) => store::redact(u),
                    StoreSetting::Open(s, _) => s.location(),
                }),
            )
            .finish_non_exhaustive()
    }
}

impl Default for LimiterBuilder {
    fn default() -> Self {
        Self {
            rates: Vec::new(),
            margin: Duration::ZERO,
            hold_lease: DEFAULT_HOLD_LEASE,
            max_buckets: DEFAULT_MAX_BUCKETS,
            clock: None,
            store: None,
        }
    }
}

impl LimiterBuilder {
    /// Adds a rate that every bucket without rates of its own applies.
    pub fn rate(mut self, rate: Rate) -> Self {
        self.rates.push(rate);
        self
    }

    /// Adds rates; see [`rate`](Self::rate).
    pub fn rates(mut self, rates: impl IntoIterator<Item = Rate>) -> Self {
        self.rates.extend(rates);
        self
    }

    /// Widens every window by `margin` (zero by default). Holds already count a call until
    /// its answer, which is exact as the server sees it; a margin is for servers whose
    /// clocks run differently from ours.
    pub fn margin(mut self, margin: Duration) -> Self {
        self.margin = margin;
        self
    }

    /// The lease of a hold made without one of its own (see [`Limiter::hold`]): a hold
    /// not ended within it is counted from the lease's end. Default
    /// [`DEFAULT_HOLD_LEASE`]; at most [`MAX_HOLD_LEASE`].
    pub fn hold_lease(mut self, lease: Duration) -> Self {
        self.hold_lease = lease;
        self
    }

    /// The most buckets the limiter holds at once (idle ones are dropped to make room).
    pub fn max_buckets(mut self, n: usize) -> Self {
        self.max_buckets = n;
        self
    }

    /// The clock (the monotonic clock unless set).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Keeps every bucket in the store that `url` names, shared with every process that
    /// opens the same store: `file:///path/to/state.q` (the processes of one host) or
    /// `redis://[:password@]host[:port][/db][?prefix=p]` and `rediss://` (many hosts).
    /// See [`store::StoreConfig::parse`] for every parameter. The store is opened by
    /// [`build`](Self::build). Without a store, buckets live in this process's memory.
    pub fn store(mut self, url: &str) -> Self {
        self.store = Some(StoreSetting::Url(url.to_string()));
        self
    }

    /// Keeps the buckets in memory again (the default).
    pub fn no_store(mut self) -> Self {
        self.store = None;
        self
    }

    /// Keeps every bucket in an open store; see [`store`](Self::store).
    pub fn store_handle(
        mut self,
        store: Arc<dyn store::Store>,
        on_unavailable: store::OnUnavailable,
    ) -> Self {
        self.store = Some(StoreSetting::Open(store, on_unavailable));
        self
    }

    /// The rates added so far.
    pub fn configured_rates(&self) -> &[Rate] {
        &self.rates
    }

    /// Builds a limiter. Fails when no rate was given or a rate is invalid.
    pub fn build(&self) -> Result<Limiter, Error> {
        validate_rates(&self.rates)?;
        check_lease(self.hold_lease)?;
        if self.max_buckets == 0 {
            return Err(Error::InvalidArgument(
                "max_buckets must be at least 1".into(),
            ));
        }
        let clock = self
            .clock
            .clone()
            .unwrap_or_else(|| Arc::new(MonotonicClock::new()));
        let shared = match &self.store {
            None => None,
            Some(setting) => {
                let (store, on_unavailable) = match setting {
                    StoreSetting::Url(url) => {
                        let config = store::StoreConfig::parse(url).map_err(Error::Store)?;
                        (config.open().map_err(Error::Store)?, config.on_unavailable)
                    }
                    StoreSetting::Open(s, o) => (s.clone(), *o),
                };
                Some(Arc::new(shared::Shared::new(
                    store,
                    on_unavailable,
                    self.rates.clone(),
                    self.margin,
                    self.max_buckets,
                )))
            }
        };
        let inner = Arc::new(Inner {
            shared,
            clock: clock.clone(),
            default_rates: self.rates.clone(),
            margin: self.margin,
            hold_lease: self.hold_lease,
            max_buckets: self.max_buckets,
            buckets: RwLock::new(BucketMap::default()),
            closed: AtomicBool::new(false),
        });
        let weak: Weak<dyn ClockListener> = Arc::downgrade(&inner) as Weak<dyn ClockListener>;
        clock.subscribe(weak);
        Ok(Limiter { inner })
    }
}

fn check_lease(lease: Duration) -> Result<(), Error> {
    if lease.is_zero() || lease > MAX_HOLD_LEASE {
        return Err(Error::InvalidArgument(format!(
            "a hold's lease must be longer than zero and at most {} s, not {} ms",
            MAX_HOLD_LEASE.as_secs(),
            lease.as_millis()
        )));
    }
    Ok(())
}

/// Checks that a cost is between 1 and [`MAX_CALLS`], whatever the bucket's rates.
fn check_cost_range(cost: u32) -> Result<(), Error> {
    if cost == 0 {
        return Err(Error::InvalidArgument(
            "a call costs at least 1 unit".into(),
        ));
    }
    if cost > MAX_CALLS {
        return Err(Error::InvalidArgument(format!(
            "a call costs at most {MAX_CALLS} units, not {cost}"
        )));
    }
    Ok(())
}

fn validate_rates(rates: &[Rate]) -> Result<(), Error> {
    if rates.is_empty() {
        return Err(Error::InvalidArgument(
            "a limiter needs at least one rate".into(),
        ));
    }
    for r in rates {
        r.validate().map_err(Error::InvalidArgument)?;
    }
    Ok(())
}

struct Inner {
    /// The store's side, when buckets live in a store rather than here.
    shared: Option<Arc<shared::Shared>>,
    clock: Arc<dyn Clock>,
    default_rates: Vec<Rate>,
    margin: Duration,
    hold_lease: Duration,
    max_buckets: usize,
    buckets: RwLock<BucketMap>,
    closed: AtomicBool,
}

/// Buckets by key, at most `max_buckets`, idle ones dropped one at a time to make room.
type BucketMap = keymap::KeyMap<Bucket>;

/// Whether a bucket may be dropped: nobody holds it (ticket, hold, a call under way), it
/// has no rates of its own, and nothing is in its windows, queue or pause.
fn evictable(bucket: &Arc<Bucket>, now: Nanos) -> bool {
    Arc::strong_count(bucket) == 1 && bucket.state.lock().is_idle(now)
}

impl ClockListener for Inner {
    fn clock_advanced(&self) {
        let now = self.clock.now();
        for bucket in self.buckets.read().values() {
            let mut st = bucket.state.lock();
            let now = st.clock(now);
            st.pump(now);
        }
    }
}

/// A thread-safe limiter of calls by key. Clones share the same buckets.
#[derive(Clone)]
pub struct Limiter {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("rates", &self.inner.default_rates)
            .field("margin", &self.inner.margin)
            .field("buckets", &self.inner.buckets.read().len())
            .field("store", &self.store_location())
            .field("closed", &self.is_closed())
            .finish()
    }
}

/// A successful admission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admitted {
    /// The limiter clock's instant of admission (see [`Limiter::now`]).
    pub at: Nanos,
    /// How long the call waited in the queue.
    pub waited: Duration,
}

impl Limiter {
    /// Starts configuring a limiter.
    pub fn builder() -> LimiterBuilder {
        LimiterBuilder::default()
    }

    /// The limiter's clock's current instant.
    pub fn now(&self) -> Nanos {
        self.inner.clock.now()
    }

    /// The rates of buckets without rates of their own.
    pub fn default_rates(&self) -> &[Rate] {
        &self.inner.default_rates
    }

    /// The margin that widens every window.
    pub fn margin(&self) -> Duration {
        self.inner.margin
    }

    /// True once [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }

    /// Where the buckets are shared (a path, or a Redis URL without its password); `None`
    /// for a limiter that keeps them in memory.
    pub fn store_location(&self) -> Option<String> {
        self.inner.shared.as_ref().map(|s| s.location())
    }

    fn new_bucket(&self, rates: &[Rate]) -> Arc<Bucket> {
        Arc::new(Bucket::new(
            SlidingLog::new(rates, self.inner.margin),
            self.is_closed(),
        ))
    }

    /// Inserts a bucket under the write lock, dropping an idle one first if the map is
    /// full (with bounded work: see the `keymap` module).
    fn insert(&self, map: &mut BucketMap, key: &str, rates: &[Rate]) -> Result<Arc<Bucket>, Error> {
        let now = self.now();
        map.get_or_insert(
            key,
            self.inner.max_buckets,
            |b| evictable(b, now),
            || self.new_bucket(rates),
        )
        .ok_or(Error::TooManyBuckets {
            limit: self.inner.max_buckets,
        })
    }

    fn bucket(&self, key: &str) -> Result<Arc<Bucket>, Error> {
        if let Some(b) = self.inner.buckets.read().get(key) {
            return Ok(b.clone());
        }
        let mut map = self.inner.buckets.write();
        self.insert(&mut map, key, &self.inner.default_rates)
    }

    /// Runs `f` on the bucket of `key` under its lock, with the instant read under that
    /// lock, creating the bucket if needed.
    #[inline]
    fn with_bucket<R>(
        &self,
        key: &str,
        f: impl FnOnce(&mut BucketState, Nanos) -> R,
    ) -> Result<R, Error> {
        {
            let map = self.inner.buckets.read();
            if let Some(b) = map.get(key) {
                let mut st = b.state.lock();
                let now = st.clock(self.now());
                return Ok(f(&mut st, now));
            }
        }
        let b = self.bucket(key)?;
        let mut st = b.state.lock();
        let now = st.clock(self.now());
        Ok(f(&mut st, now))
    }

    /// Gives `key` its own rates, creating the bucket or replacing its rates. Units
    /// already admitted stay counted under the new rates.
    pub fn set_rates(&self, key: &str, rates: &[Rate]) -> Result<(), Error> {
        validate_rates(rates)?;
        if let Some(shared) = &self.inner.shared {
            return shared.set_rates(key, rates);
        }
        if self.is_closed() {
            return Err(Error::Closed);
        }
        let mut map = self.inner.buckets.write();
        if let Some(b) = map.get(key) {
            let mut st = b.state.lock();
            let now = st.clock(self.now());
            st.log = st.log.with_rates(rates, self.inner.margin, now);
            st.own_rates = true;
            // Queued calls that no longer fit any window fail rather than wait forever.
            let max = st.log.max_cost();
            if st.queue.iter().any(|w| w.cost > max) {
                let too_big: Vec<_> = st.queue.iter().filter(|w| w.cost > max).cloned().collect();
                for w in too_big {
                    st.cancel(&w, now);
                }
            }
            st.pump(now);
            // The head's instant changed: its timer must recompute it.
            st.kick();
            return Ok(());
        }
        let b = self.insert(&mut map, key, rates)?;
        b.state.lock().own_rates = true;
        Ok(())
    }

    /// Gives `key` the rates `rates` only if the bucket does not exist yet.
    pub fn ensure_rates(&self, key: &str, rates: &[Rate]) -> Result<(), Error> {
        if let Some(shared) = &self.inner.shared {
            return validate_rates(rates).and_then(|()| shared.ensure_rates(key, rates));
        }
        if self.inner.buckets.read().contains_key(key) {
            return Ok(());
        }
        validate_rates(rates)?;
        let mut map = self.inner.buckets.write();
        if map.contains_key(key) {
            return Ok(());
        }
        let b = self.insert(&mut map, key, rates)?;
        b.state.lock().own_rates = rates != self.inner.default_rates.as_slice();
        Ok(())
    }

    /// The rates that apply to `key` now (the defaults for a bucket not yet created).
    pub fn rates(&self, key: &str) -> Vec<Rate> {
        if let Some(shared) = &self.inner.shared {
            return shared.rates(key);
        }
        let map = self.inner.buckets.read();
        match map.get(key) {
            Some(b) => {
                let st = b.state.lock();
                st.log
                    .usage()
                    .map(|(_, calls, window)| {
                        Rate::new(
                            calls as u32,
                            Duration::from_nanos(window).saturating_sub(self.inner.margin),
                        )
                    })
                    .collect()
            }
            None => self.inner.default_rates.clone(),
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

    /// Admits a call of `cost` units now if every window of the bucket allows it and no
    /// call is queued before it; never waits. On refusal, reports the wait it would need.
    /// The units are logged now: see [`try_hold`](Self::try_hold) for a call that has an end.
    #[inline]
    pub fn try_acquire(&self, key: &str, cost: u32) -> Result<(), Error> {
        if let Some(shared) = &self.inner.shared {
            return shared.try_admit(key, cost, None).map(drop);
        }
        self.try_admit_local(key, cost, None, true).map(drop)
    }

    /// Like [`try_acquire`](Self::try_acquire), but the units stay in flight until the
    /// returned [`Hold`] ends, and are counted from that instant on.
    pub fn try_hold(&self, key: &str, cost: u32) -> Result<Hold, Error> {
        self.try_hold_with_lease(key, cost, self.inner.hold_lease)
    }

    /// [`try_hold`](Self::try_hold) with a lease of its own (at most [`MAX_HOLD_LEASE`]).
    pub fn try_hold_with_lease(
        &self,
        key: &str,
        cost: u32,
        lease: Duration,
    ) -> Result<Hold, Error> {
        check_lease(lease)?;
        if let Some(shared) = &self.inner.shared {
            let id = shared.try_admit(key, cost, Some(lease))?;
            return Ok(self.shared_hold(shared, key, cost, id, self.now(), Duration::ZERO));
        }
        let (at, id) = self.try_admit_local(key, cost, Some(nanos(lease)), true)?;
        let bucket = self.bucket(key)?;
        Ok(self.local_hold(bucket, id, cost, at, Duration::ZERO))
    }

    /// Admits at once when the bucket allows it (as a hold with `lease`, else logged now):
    /// the admission instant and the hold's id. Otherwise `WouldBlock` with the wait,
    /// counted as a refusal when `count_refusal`.
    #[inline]
    fn try_admit_local(
        &self,
        key: &str,
        cost: u32,
        lease: Option<Nanos>,
        count_refusal: bool,
    ) -> Result<(Nanos, u64), Error> {
        self.with_bucket(key, |st, now| {
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
        })?
    }

    /// How long a call of `cost` units would wait now (behind the queue, if any), without
    /// taking anything: zero when `try_acquire` would admit it.
    pub fn wait_time(&self, key: &str, cost: u32) -> Result<Duration, Error> {
        if let Some(shared) = &self.inner.shared {
            return shared.wait_time(key, cost);
        }
        self.with_bucket(key, |st, now| {
            let cost = Self::check_cost(st, cost)?;
            if !st.queue.is_empty() {
                st.pump(now);
            }
            Ok(Duration::from_nanos(
                st.ready_at_behind_queue(now, cost).saturating_sub(now),
            ))
        })?
    }

    /// Waits in FIFO order until the bucket admits a call of `cost` units, or until
    /// `timeout` (`None`: no deadline). A deadline that cannot be met fails at once. The
    /// units are logged at admission: see [`hold`](Self::hold) for a call that has an end.
    pub fn acquire(
        &self,
        key: &str,
        cost: u32,
        timeout: Option<Duration>,
    ) -> Result<Admitted, Error> {
        if self.inner.shared.is_none() {
            match self.try_admit_local(key, cost, None, false) {
                Ok((at, _)) => {
                    return Ok(Admitted {
                        at,
                        waited: Duration::ZERO,
                    });
                }
                Err(Error::WouldBlock { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        // Every waiter of a store takes its place in the store's queue.
        let ticket = self.enqueue(key, cost, timeout)?;
        ticket.wait(None)?;
        ticket.admitted().ok_or(Error::Closed)
    }

    /// Waits like [`acquire`](Self::acquire), but admits the call as a [`Hold`]: its units
    /// count in every window from admission on, *in flight*, and are logged at the
    /// instant the hold ends (finished or dropped), when the call's answer has come back.
    ///
    /// A server counts a call when it arrives, somewhere between our send and its answer.
    /// A unit logged at its answer therefore leaves our window no earlier than it leaves
    /// the server's, whatever the network's delays: configured like the server, the
    /// limiter never lets through a call that the server would refuse. A hold not ended
    /// within the limiter's lease (see [`LimiterBuilder::hold_lease`]) is counted from the
    /// lease's end.
    pub fn hold(&self, key: &str, cost: u32, timeout: Option<Duration>) -> Result<Hold, Error> {
        self.hold_with_lease(key, cost, timeout, self.inner.hold_lease)
    }

    /// [`hold`](Self::hold) with a lease of its own (at most [`MAX_HOLD_LEASE`]).
    pub fn hold_with_lease(
        &self,
        key: &str,
        cost: u32,
        timeout: Option<Duration>,
        lease: Duration,
    ) -> Result<Hold, Error> {
        check_lease(lease)?;
        if self.inner.shared.is_none() {
            match self.try_admit_local(key, cost, Some(nanos(lease)), false) {
                Ok((at, id)) => {
                    let bucket = self.bucket(key)?;
                    return Ok(self.local_hold(bucket, id, cost, at, Duration::ZERO));
                }
                Err(Error::WouldBlock { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let ticket = self.enqueue_hold(key, cost, timeout, Some(lease))?;
        ticket.wait(None)?;
        ticket.hold()
    }

    fn local_hold(
        &self,
        bucket: Arc<Bucket>,
        id: u64,
        cost: u32,
        at: Nanos,
        waited: Duration,
    ) -> Hold {
        Hold {
            limiter: self.clone(),
            kind: HoldKind::Local { bucket, id },
            cost,
            admitted: Admitted { at, waited },
            ended: false,
        }
    }

    fn shared_hold(
        &self,
        shared: &Arc<shared::Shared>,
        key: &str,
        cost: u32,
        id: u64,
        at: Nanos,
        waited: Duration,
    ) -> Hold {
        Hold {
            limiter: self.clone(),
            kind: HoldKind::Shared {
                shared: shared.clone(),
                key: key.into(),
                id,
            },
            cost,
            admitted: Admitted { at, waited },
            ended: false,
        }
    }

    /// Takes a place in the bucket's queue for a call of `cost` units, with an optional
    /// deadline, and returns the ticket that holds it. Wait on the ticket (in slices if
    /// the caller must stay responsive); cancel it or drop it to give up the place.
    pub fn enqueue(
        &self,
        key: &str,
        cost: u32,
        timeout: Option<Duration>,
    ) -> Result<Ticket, Error> {
        self.enqueue_with(key, cost, timeout, None)
    }

    /// [`enqueue`](Self::enqueue) for a hold: once the ticket is admitted, take the
    /// [`Hold`] with [`Ticket::hold`] (a ticket dropped first ends the hold at once).
    /// `lease`: the hold's lease (`None`: the limiter's).
    pub fn enqueue_hold(
        &self,
        key: &str,
        cost: u32,
        timeout: Option<Duration>,
        lease: Option<Duration>,
    ) -> Result<Ticket, Error> {
        let lease = lease.unwrap_or(self.inner.hold_lease);
        check_lease(lease)?;
        self.enqueue_with(key, cost, timeout, Some(lease))
    }

    fn enqueue_with(
        &self,
        key: &str,
        cost: u32,
        timeout: Option<Duration>,
        lease: Option<Duration>,
    ) -> Result<Ticket, Error> {
        if let Some(shared) = &self.inner.shared {
            return Ok(Ticket {
                limiter: self.clone(),
                kind: TicketKind::Shared(shared.enqueue(key, cost, timeout, self.now(), lease)?),
                hold_taken: AtomicBool::new(false),
            });
        }
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
        Ok(Ticket {
            limiter: self.clone(),
            kind: TicketKind::Local { bucket, waiter },
            hold_taken: AtomicBool::new(false),
        })
    }

    /// Makes every caller of `key` wait until `duration` from now. A later pause extends
    /// the current one; a shorter one never shortens it.
    pub fn pause(&self, key: &str, duration: Duration) -> Result<(), Error> {
        if let Some(shared) = &self.inner.shared {
            return shared.pause(key, duration);
        }
        self.with_bucket(key, |st, now| {
            if st.closed {
                return Err(Error::Closed);
            }
            st.paused_until = st.paused_until.max(now.saturating_add(nanos(duration)));
            st.stats.pauses += 1;
            st.pump(now);
            Ok(())
        })?
    }

    /// The statistics of `key`'s bucket. A bucket not created yet reports zeros and the
    /// windows of the default rates. With a store, the windows, the pause and the queue
    /// are the store's (every process's), the counters this process's own; when the store
    /// cannot answer, this logs a warning and reports zeros (see [`try_stats`](Self::try_stats)).
    pub fn stats(&self, key: &str) -> BucketStats {
        match self.try_stats(key) {
            Ok(s) => s,
            Err(e) => {
                log::warn!("no statistics of {key} from the quota store: {e}");
                BucketStats::default()
            }
        }
    }

    /// The statistics of `key`'s bucket, or why the store could not give them. Never
    /// fails for a limiter without a store.
    pub fn try_stats(&self, key: &str) -> Result<BucketStats, Error> {
        if let Some(shared) = &self.inner.shared {
            return shared.stats(key);
        }
        let now = self.now();
        let bucket = self.inner.buckets.read().get(key).cloned();
        Ok(match bucket {
            Some(b) => b.state.lock().snapshot(now),
            None => BucketState::fresh(SlidingLog::new(
                &self.inner.default_rates,
                self.inner.margin,
            ))
            .snapshot(now),
        })
    }

    /// The keys of the buckets that exist now.
    pub fn keys(&self) -> Vec<String> {
        if let Some(shared) = &self.inner.shared {
            return shared.keys();
        }
        self.inner
            .buckets
            .read()
            .keys()
            .map(|k| k.to_string())
            .collect()
    }

    /// Drops the buckets with nothing in their windows, nobody waiting and no pause.
    /// Returns how many were dropped.
    pub fn purge_idle(&self) -> usize {
        if let Some(shared) = &self.inner.shared {
            return shared.purge_idle();
        }
        let now = self.now();
        self.inner.buckets.write().purge(|b| evictable(b, now))
    }

    /// Closes the limiter: every waiter wakes with [`Error::Closed`], and later calls
    /// fail the same way. Clones share the closed state.
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        if let Some(shared) = &self.inner.shared {
            shared.close();
        }
        let map = self.inner.buckets.write();
        for b in map.values() {
            b.state.lock().close();
        }
    }
}

/// A place in a bucket's queue. Safe to share between threads: one thread waits while
/// another may [`cancel`](Self::cancel). Dropping a ticket that was not admitted gives
/// up its place.
pub struct Ticket {
    limiter: Limiter,
    kind: TicketKind,
    /// Whether [`Ticket::hold`] handed out the hold of an admitted hold ticket.
    hold_taken: AtomicBool,
}

enum TicketKind {
    /// A place in a bucket of this process.
    Local {
        bucket: Arc<Bucket>,
        waiter: Arc<Waiter>,
    },
    /// A place in a store's queue.
    Shared(shared::SharedTicket),
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket")
            .field("cost", &self.cost())
            .field("state", &self.state())
            .finish()
    }
}

/// How a wait in `state` ended, or `None` while it goes on.
fn outcome(state: WaiterState) -> Option<Result<Wait, Error>> {
    match state {
        WaiterState::Waiting => None,
        WaiterState::Admitted => Some(Ok(Wait::Admitted)),
        WaiterState::TimedOut => Some(Err(Error::Timeout)),
        WaiterState::Cancelled => Some(Err(Error::Cancelled)),
        WaiterState::Closed => Some(Err(Error::Closed)),
    }
}

/// What a slice of waiting ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// The call is admitted.
    Admitted,
    /// The slice ran out; the ticket keeps its place.
    Pending,
}

impl Ticket {
    fn state(&self) -> WaiterState {
        match &self.kind {
            TicketKind::Local { waiter, .. } => waiter.state(),
            TicketKind::Shared(t) => t.state(),
        }
    }

    /// Waits until admitted, for at most `slice` of real time (`None`: as long as it
    /// takes). Returns [`Wait::Pending`] when the slice ran out with the place kept.
    pub fn wait(&self, slice: Option<Duration>) -> Result<Wait, Error> {
        let (bucket, waiter) = match &self.kind {
            TicketKind::Local { bucket, waiter } => (bucket, waiter),
            TicketKind::Shared(t) => return t.wait(slice),
        };
        let started = Instant::now();
        let clock = &self.limiter.inner.clock;
        let mut st: MutexGuard<'_, BucketState> = bucket.state.lock();
        waiter.active.fetch_add(1, Ordering::Relaxed);
        let result = loop {
            let now = st.clock(clock.now());
            let head_at = st.pump(now);
            if let Some(done) = outcome(waiter.state()) {
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
            if let Some(slice) = slice {
                let left = slice.saturating_sub(started.elapsed());
                if left.is_zero() {
                    break Ok(Wait::Pending);
                }
                sleep = Some(sleep.map_or(left, |s| s.min(left)));
            }
            match sleep {
                Some(d) => {
                    waiter.wake.wait_for(&mut st, d);
                }
                None => waiter.wake.wait(&mut st),
            }
        };
        waiter.active.fetch_sub(1, Ordering::Relaxed);
        // If this thread kept the head's time, hand that job to the next waiting thread.
        st.kick();
        result
    }

    /// Checks once, without blocking, whether the call is admitted.
    pub fn poll(&self) -> Result<Wait, Error> {
        self.wait(Some(Duration::ZERO))
    }

    /// Gives up the place in the queue and wakes the thread waiting on this ticket with
    /// [`Error::Cancelled`]. Returns false if the ticket was no longer waiting (already
    /// admitted, timed out, cancelled or closed): an admitted call keeps its permit.
    pub fn cancel(&self) -> bool {
        match &self.kind {
            TicketKind::Local { bucket, waiter } => {
                let mut st = bucket.state.lock();
                let now = st.clock(self.limiter.now());
                st.cancel(waiter, now)
            }
            TicketKind::Shared(t) => t.cancel(),
        }
    }

    /// The admission, once admitted.
    pub fn admitted(&self) -> Option<Admitted> {
        let waiter = match &self.kind {
            TicketKind::Local { waiter, .. } => waiter,
            TicketKind::Shared(t) => return t.admitted(),
        };
        (waiter.state() == WaiterState::Admitted).then(|| Admitted {
            at: waiter.admitted_at(),
            waited: Duration::from_nanos(waiter.admitted_at().saturating_sub(waiter.enqueued)),
        })
    }

    /// The cost of the call this ticket waits for.
    pub fn cost(&self) -> u32 {
        match &self.kind {
            TicketKind::Local { waiter, .. } => waiter.cost as u32,
            TicketKind::Shared(t) => t.cost(),
        }
    }

    /// Whether the ticket waits for a hold (made by [`Limiter::enqueue_hold`]).
    pub fn is_hold(&self) -> bool {
        match &self.kind {
            TicketKind::Local { waiter, .. } => waiter.lease.is_some(),
            TicketKind::Shared(t) => t.is_hold(),
        }
    }

    /// The hold of an admitted hold ticket, once: its units count from the instant it
    /// ends. Fails with `InvalidArgument` for a plain ticket, one not admitted yet, or
    /// one whose hold was already taken.
    pub fn hold(&self) -> Result<Hold, Error> {
        let admitted = match (self.is_hold(), self.admitted()) {
            (true, Some(a)) => a,
            (false, _) => {
                return Err(Error::InvalidArgument(
                    "the ticket is not for a hold".into(),
                ));
            }
            (true, None) => {
                return Err(Error::InvalidArgument(
                    "the ticket is not admitted yet".into(),
                ));
            }
        };
        if self.hold_taken.swap(true, Ordering::AcqRel) {
            return Err(Error::InvalidArgument(
                "the ticket's hold was already taken".into(),
            ));
        }
        let cost = self.cost();
        Ok(match &self.kind {
            TicketKind::Local { bucket, waiter } => self.limiter.local_hold(
                bucket.clone(),
                waiter.hold_id(),
                cost,
                admitted.at,
                admitted.waited,
            ),
            TicketKind::Shared(t) => {
                let shared = self
                    .limiter
                    .inner
                    .shared
                    .as_ref()
                    .expect("a shared ticket belongs to a limiter with a store");
                self.limiter.shared_hold(
                    shared,
                    t.key(),
                    cost,
                    t.id(),
                    admitted.at,
                    admitted.waited,
                )
            }
        })
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        // An admitted hold nobody took ends now; a waiting ticket gives up its place (a
        // shared ticket in its own drop).
        if self.is_hold() && self.admitted().is_some() && !*self.hold_taken.get_mut() {
            drop(self.hold());
            return;
        }
        if let TicketKind::Local { waiter, .. } = &self.kind {
            if waiter.state() == WaiterState::Waiting {
                self.cancel();
            }
        }
    }
}

/// A call admitted by [`Limiter::hold`]: its units count in every window of its bucket
/// from admission on, in flight, and are logged at the instant the hold ends
/// ([`finish`](Self::finish), [`finish_at`](Self::finish_at) or drop). Safe to send to
/// another thread.
pub struct Hold {
    limiter: Limiter,
    kind: HoldKind,
    cost: u32,
    admitted: Admitted,
    ended: bool,
}

enum HoldKind {
    Local {
        bucket: Arc<Bucket>,
        id: u64,
    },
    Shared {
        shared: Arc<shared::Shared>,
        key: Box<str>,
        id: u64,
    },
}

impl std::fmt::Debug for Hold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hold")
            .field("cost", &self.cost)
            .field("admitted", &self.admitted)
            .field("ended", &self.ended)
            .finish()
    }
}

impl Hold {
    /// The admission.
    pub fn admitted(&self) -> Admitted {
        self.admitted
    }

    /// The units held.
    pub fn cost(&self) -> u32 {
        self.cost
    }

    /// Ends the hold now: its units count from now on.
    pub fn finish(mut self) {
        let now = self.limiter.now();
        self.end(now);
    }

    /// Ends the hold with its units counted from `at` (an instant of the limiter's clock,
    /// see [`Limiter::now`]), kept between its admission and now. For a call whose server
    /// certainly counted it by `at` (a safe bound earlier than its answer), so that its
    /// units leave the windows sooner.
    pub fn finish_at(mut self, at: Nanos) {
        self.end(at);
    }

    fn end(&mut self, at: Nanos) {
        if std::mem::replace(&mut self.ended, true) {
            return;
        }
        match &self.kind {
            HoldKind::Local { bucket, id } => {
                let mut st = bucket.state.lock();
                let now = st.clock(self.limiter.now());
                if st.end_hold(*id, at, now) {
                    st.pump(now);
                    // The head's instant may be earlier now: its timer recomputes it.
                    st.kick();
                }
            }
            HoldKind::Shared { shared, key, id } => {
                let ago = Duration::from_nanos(self.limiter.now().saturating_sub(at));
                shared.release(key, *id, ago);
            }
        }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        let now = self.limiter.now();
        self.end(now);
    }
}

#[cfg(all(test, quotagate_loom))]
mod model_check;
#[cfg(test)]
mod tests;
