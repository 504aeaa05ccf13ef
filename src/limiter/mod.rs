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

mod binding;
mod bucket;
mod builder;
mod clock;
mod hold;
mod keymap;
mod memory;
pub mod store;
mod stored;
mod sync;
mod ticket;
mod window;

pub use binding::Binding;
pub use bucket::{BucketStats, WindowUsage};
pub use builder::LimiterBuilder;
pub use clock::{Clock, ClockListener, ManualClock, MonotonicClock, Nanos};
pub use hold::Hold;
pub use ticket::{Ticket, Wait};
pub use window::Rate;

use hold::HoldKind;
use memory::MemoryBackend;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;
use stored::StoreBackend;
use ticket::{TicketKind, outcome};

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
    Timeout {
        /// When the deadline could not be met: how long after the failure the quota
        /// would have admitted the call (through a store, a lower bound). `None` when the
        /// deadline passed while the call waited behind others.
        frees_in: Option<Duration>,
    },
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

/// "frees a slot in N s": when the quota will admit a call that a deadline does not let
/// wait, as every deadline message in the crate says it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FreesASlot(pub(crate) Duration);

impl std::fmt::Display for FreesASlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "frees a slot in {:.1} s", self.0.as_secs_f64())
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Timeout { frees_in: None } => {
                f.write_str("the deadline passed before the quota admitted the call")
            }
            Error::Timeout {
                frees_in: Some(wait),
            } => write!(
                f,
                "the deadline cannot be met: the quota {}",
                FreesASlot(*wait)
            ),
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

/// Where a limiter keeps its buckets: each arm in a file of its own.
enum Backend {
    /// In this process (`memory.rs`).
    Memory(Arc<MemoryBackend>),
    /// In a store shared by every process that opens it (`stored.rs`).
    Store(Arc<StoreBackend>),
}

struct Inner {
    backend: Backend,
    clock: Arc<dyn Clock>,
    default_rates: Vec<Rate>,
    margin: Duration,
    hold_lease: Duration,
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
            .field(
                "buckets",
                &match &self.inner.backend {
                    Backend::Memory(m) => Some(m.len()),
                    Backend::Store(_) => None,
                },
            )
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
        match &self.inner.backend {
            Backend::Memory(m) => m.is_closed(),
            Backend::Store(s) => s.is_closed(),
        }
    }

    /// Where the buckets are shared (a path, or a Redis URL without its password); `None`
    /// for a limiter that keeps them in memory.
    pub fn store_location(&self) -> Option<String> {
        match &self.inner.backend {
            Backend::Memory(_) => None,
            Backend::Store(s) => Some(s.location()),
        }
    }

    /// Gives `key` its own rates, creating the bucket or replacing its rates. Units
    /// already admitted stay counted under the new rates.
    pub fn set_rates(&self, key: &str, rates: &[Rate]) -> Result<(), Error> {
        validate_rates(rates)?;
        match &self.inner.backend {
            Backend::Memory(m) => m.set_rates(key, rates),
            Backend::Store(s) => s.set_rates(key, rates),
        }
    }

    /// Gives `key` the rates `rates` only if the bucket does not exist yet.
    pub fn ensure_rates(&self, key: &str, rates: &[Rate]) -> Result<(), Error> {
        validate_rates(rates)?;
        match &self.inner.backend {
            Backend::Memory(m) => m.ensure_rates(key, rates),
            Backend::Store(s) => s.ensure_rates(key, rates),
        }
    }

    /// The rates that apply to `key` now (the defaults for a bucket not yet created).
    pub fn rates(&self, key: &str) -> Vec<Rate> {
        match &self.inner.backend {
            Backend::Memory(m) => m.rates(key),
            Backend::Store(s) => s.rates(key),
        }
    }

    /// Admits a call of `cost` units now if every window of the bucket allows it and no
    /// call is queued before it; never waits. On refusal, reports the wait it would need.
    /// The units are logged now: see [`try_hold`](Self::try_hold) for a call that has an end.
    #[inline]
    pub fn try_acquire(&self, key: &str, cost: u32) -> Result<(), Error> {
        match &self.inner.backend {
            Backend::Memory(m) => m.try_admit(key, cost, None, true).map(drop),
            Backend::Store(s) => s.try_admit(key, cost, None).map(drop),
        }
    }

    /// Binds `key` and `cost` once for calls that repeat them: the [`Binding`]'s
    /// [`try_acquire`](Binding::try_acquire) is [`try_acquire`](Self::try_acquire)`(key,
    /// cost)` without finding the bucket on every call. In memory, the bucket is created
    /// now (so this can fail with [`Error::TooManyBuckets`]), the cost is checked against
    /// its rates, and the binding keeps the bucket alive while it lives; with a store, the
    /// cost is checked against the bucket's rates at each call. [`Error::Closed`] once
    /// the limiter is closed.
    pub fn bind(&self, key: &str, cost: u32) -> Result<Binding, Error> {
        match &self.inner.backend {
            Backend::Memory(m) => Ok(Binding::memory(self, key, cost, m.bind(key, cost)?)),
            Backend::Store(s) => {
                if s.is_closed() {
                    return Err(Error::Closed);
                }
                check_cost_range(cost)?;
                Ok(Binding::store(self, key, cost))
            }
        }
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
        let (kind, at) = match &self.inner.backend {
            Backend::Memory(m) => {
                let (hold, at) = m.try_hold(key, cost, lease, true)?;
                (HoldKind::Memory(hold), at)
            }
            Backend::Store(s) => (HoldKind::Store(s.try_hold(key, cost, lease)?), self.now()),
        };
        Ok(self.new_hold(kind, cost, Admitted::now(at)))
    }

    /// How long a call of `cost` units would wait now (behind the queue, if any), without
    /// taking anything: zero when `try_acquire` would admit it.
    pub fn wait_time(&self, key: &str, cost: u32) -> Result<Duration, Error> {
        match &self.inner.backend {
            Backend::Memory(m) => m.wait_time(key, cost),
            Backend::Store(s) => s.wait_time(key, cost),
        }
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
        if let Backend::Memory(m) = &self.inner.backend {
            // Free: no queue to join.
            match m.try_admit(key, cost, None, false) {
                Ok((at, _)) => return Ok(Admitted::now(at)),
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
        if let Backend::Memory(m) = &self.inner.backend {
            match m.try_hold(key, cost, lease, false) {
                Ok((hold, at)) => {
                    return Ok(self.new_hold(HoldKind::Memory(hold), cost, Admitted::now(at)));
                }
                Err(Error::WouldBlock { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let ticket = self.enqueue_hold(key, cost, timeout, Some(lease))?;
        ticket.wait(None)?;
        ticket.hold()
    }

    fn new_hold(&self, kind: HoldKind, cost: u32, admitted: Admitted) -> Hold {
        Hold {
            limiter: self.clone(),
            kind,
            cost,
            admitted,
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
        let kind = match &self.inner.backend {
            Backend::Memory(m) => TicketKind::Memory(m.enqueue(key, cost, timeout, lease)?),
            Backend::Store(s) => {
                TicketKind::Store(s.enqueue(key, cost, timeout, self.now(), lease)?)
            }
        };
        Ok(Ticket {
            limiter: self.clone(),
            kind,
            hold_taken: AtomicBool::new(false),
        })
    }

    /// Makes every caller of `key` wait until `duration` from now. A later pause extends
    /// the current one; a shorter one never shortens it.
    pub fn pause(&self, key: &str, duration: Duration) -> Result<(), Error> {
        match &self.inner.backend {
            Backend::Memory(m) => m.pause(key, duration),
            Backend::Store(s) => s.pause(key, duration),
        }
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
        match &self.inner.backend {
            Backend::Memory(m) => Ok(m.stats(key)),
            Backend::Store(s) => s.stats(key),
        }
    }

    /// The keys of the buckets that exist now.
    pub fn keys(&self) -> Vec<String> {
        match &self.inner.backend {
            Backend::Memory(m) => m.keys(),
            Backend::Store(s) => s.keys(),
        }
    }

    /// Drops the buckets with nothing in their windows, nobody waiting and no pause.
    /// Returns how many were dropped.
    pub fn purge_idle(&self) -> usize {
        match &self.inner.backend {
            Backend::Memory(m) => m.purge_idle(),
            Backend::Store(s) => s.purge_idle(),
        }
    }

    /// Closes the limiter: every waiter wakes with [`Error::Closed`], and later calls
    /// fail the same way. Clones share the closed state.
    pub fn close(&self) {
        match &self.inner.backend {
            Backend::Memory(m) => m.close(),
            Backend::Store(s) => s.close(),
        }
    }
}

impl Admitted {
    /// An admission at `at` without a wait.
    fn now(at: Nanos) -> Self {
        Self {
            at,
            waited: Duration::ZERO,
        }
    }
}

#[cfg(all(test, quotagate_loom))]
mod model_check;
#[cfg(test)]
mod tests;
