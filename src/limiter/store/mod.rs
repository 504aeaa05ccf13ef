//! Stores that share buckets between processes and machines.
//!
//! Without a store, a [`Limiter`](super::Limiter) keeps every bucket in its own memory. With
//! one, every bucket lives in the store, and every process that opens the same store shares
//! it: the window invariant (never more than `calls` units in any `window`) holds across all
//! of them. Two stores exist: [`file`](mod@file) (processes on one host share a memory-mapped state
//! file) and [`redis`](mod@redis) (processes on many hosts share a Redis server).
//!
//! # The shared bucket
//!
//! Both stores keep, per bucket key, the same state and apply the same rules; the file store
//! in Rust (`model.rs`) and the Redis store in one Lua script that mirrors it.
//!
//! - **The log.** The instant of every admitted unit, oldest first, in a ring that holds at
//!   least the largest `calls` of any rate a caller has used on the bucket. A call of cost
//!   `c` fits a rate (`calls`, `window`) at instant `t` when at most `calls - c` logged units
//!   lie in `(t - window, t]`: that is, when the `(calls - c + 1)`-th newest unit `u`, if the
//!   log has one, satisfies `u + window <= t`. Each caller passes its own rates with every
//!   call (windows already widened by the limiter's margin).
//! - **The holds.** Calls admitted and not yet ended, each with its id, its cost, its
//!   admission instant and the instant its lease runs out. Their units count in every
//!   window as if logged at the current instant (they will be logged at their end, which
//!   is now or later): a hold that ends is logged at its end instant (at the latest unit
//!   already logged, if that is later, since the log is kept in order), and a hold whose
//!   lease ran out is logged at the lease's end, so that a process killed mid-call delays
//!   the others by at most one lease.
//! - **The pause.** An instant before which nothing is admitted; a pause only ever extends it.
//! - **The queue.** A FIFO of waiting calls, each with a 64-bit id that is unique across
//!   processes and hosts, its cost and the instant its lease expires. Entries whose lease has
//!   expired are dropped first on every operation: a process killed while it waits loses its
//!   place at most [`LEASE`] after its turn came.
//! - **The clock.** The store's own: the host's wall clock for the file store, Redis's `TIME`
//!   for the Redis store, so that processes (and hosts) never compare clocks of their own.
//!   Each bucket remembers the latest instant it used and never goes back before it.
//!
//! # Admission
//!
//! Each queued call has a *due instant*: the earliest instant at which it fits when every
//! call ahead of it is admitted, in order, at its own due instant (a simulation on a copy of
//! the log). A call is admitted when its due instant has come; this never delays a call
//! ahead of it, because those still fit at their due instants with it logged. Waiters sleep
//! until their own due instant, so a freed slot wakes only the calls that can proceed, and
//! no call starves: a newcomer always lines up behind every queued call.
//!
//! - [`Place::Try`]: admitted at once if it fits behind the queue now; never queued.
//! - [`Place::Peek`]: like `Try` but never admits (the wait a call would have).
//! - [`Place::Queue`]: takes (or keeps) a place under its id; admitted when due, else told
//!   how long until its due instant (in full, so that a deadline that cannot be met fails
//!   at once). Every poll renews the lease to `due + LEASE`.
//!
//! A poll with a [`HoldLease`] admits the call as a hold under the lease's id instead of
//! logging it; [`Store::release`] ends it. While holds stand in the way, due instants are
//! lower bounds (as if every hold ended now), and waiters learn more when they poll again.
//!
//! A waiter polls again at its due instant, or after [`REPOLL`] at the latest, so that it
//! notices when calls ahead of it left the queue.

pub mod file;
pub(crate) mod model;
#[cfg(feature = "redis")]
pub mod redis;
mod url;

pub use url::{OnUnavailable, RedisSettings, StoreConfig, StoreKind, redact};

use super::clock::Nanos;
use std::fmt;
use std::time::Duration;

/// How long a waiter keeps its place after its due instant without polling.
pub const LEASE: Duration = Duration::from_secs(2);

/// The longest a waiter sleeps between two polls.
pub const REPOLL: Duration = Duration::from_secs(1);

/// One rate as the store sees it: a limit of `calls` units in any `window_ns`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Units admitted at most within any window.
    pub calls: u64,
    /// The window, margin included, in nanoseconds.
    pub window_ns: Nanos,
}

/// What a poll asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// Admit now if the call fits behind the queue; never take a place.
    Try,
    /// Report the wait only; never admit, never take a place.
    Peek,
    /// Take or keep the place of waiter `id` in the queue; admit when due.
    Queue {
        /// The waiter's id, unique across processes and hosts.
        id: u64,
    },
}

/// Makes a poll admit its call as a hold: the units stay in flight under `id` until
/// [`Store::release`] ends them or `duration` passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldLease {
    /// The hold's id, unique across processes and hosts (a waiter's own id will do).
    pub id: u64,
    /// How long the hold may stay in flight before it is counted from its lease's end.
    pub duration: Duration,
}

/// The answer to a poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The call is admitted and logged (never for [`Place::Peek`]).
    Admitted,
    /// The call is not admitted; poll again after this long. For [`Place::Peek`] a zero
    /// wait means that `Try` would admit.
    Wait(Duration),
}

/// A bucket's state as a store sees it now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    /// Units inside each given window now, in the order given.
    pub used: Vec<u64>,
    /// How long the bucket stays paused from now.
    pub paused_for: Duration,
    /// Calls queued now (live leases only).
    pub queued: u64,
    /// Units held in flight now (live leases only).
    pub in_flight: u64,
}

/// Why a store could not answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreErrorKind {
    /// The store cannot be reached now (I/O, network, a Redis restart): retrying may help.
    Unavailable,
    /// The shared state is damaged or of a newer format: retrying cannot help.
    Corrupt,
    /// The store's settings are wrong (URL, path, permissions).
    Invalid,
}

/// A store's failure, with a message that never carries a password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError {
    /// The kind of failure.
    pub kind: StoreErrorKind,
    /// What failed, for people.
    pub message: String,
}

impl StoreError {
    /// A failure of `kind` described by `message`.
    pub fn new(kind: StoreErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for StoreError {}

/// A place where buckets are shared. Implementations are safe to call from many threads.
pub trait Store: Send + Sync + fmt::Debug {
    /// Asks for the admission of `cost` units on bucket `key` under `windows` (non-empty,
    /// every `calls >= cost`), as a hold when `hold` is given. See the module
    /// documentation for the rules.
    fn poll(
        &self,
        key: &str,
        windows: &[Window],
        cost: u64,
        place: Place,
        hold: Option<HoldLease>,
    ) -> Result<Verdict, StoreError>;

    /// Ends hold `id` of bucket `key` (polled under `windows`): its units are logged at
    /// `ago` before the store's now (no earlier than its admission). Unknown ids (ended,
    /// or expired and logged) are ignored.
    fn release(
        &self,
        key: &str,
        windows: &[Window],
        id: u64,
        ago: Duration,
    ) -> Result<(), StoreError>;

    /// Gives up the place of waiter `id` (cancelled, timed out, dropped). Unknown ids are
    /// ignored.
    fn leave(&self, key: &str, id: u64) -> Result<(), StoreError>;

    /// Pauses bucket `key` until `duration` from the store's now, unless it is already
    /// paused longer.
    fn pause(&self, key: &str, duration: Duration) -> Result<(), StoreError>;

    /// The use of `windows` on bucket `key` now, its pause and its queue.
    fn usage(&self, key: &str, windows: &[Window]) -> Result<Usage, StoreError>;

    /// Where the store is, for messages: a path, or a Redis URL without its password.
    fn location(&self) -> String;
}

/// Checks what a caller passes to store `location`: at least one window, each with 1 to
/// [`MAX_CALLS`](crate::limiter::MAX_CALLS) calls and a length above zero, and a `cost`
/// (when given) that fits every window. Every store applies it, so that none can be led
/// to admit what never fits, nor to log more units in one call than a rate allows.
pub(crate) fn check_windows(
    location: &dyn fmt::Display,
    windows: &[Window],
    cost: Option<u64>,
) -> Result<(), StoreError> {
    let max_calls = u64::from(crate::limiter::MAX_CALLS);
    let invalid = |m: String| {
        Err(StoreError::new(
            StoreErrorKind::Invalid,
            format!("store {location}: {m}"),
        ))
    };
    if windows.is_empty() {
        return invalid("a call needs at least one rate".into());
    }
    for w in windows {
        if w.calls == 0 || w.calls > max_calls || w.window_ns == 0 {
            return invalid(format!(
                "a rate needs 1 to {max_calls} calls in a window above zero, not {} calls in {} ns",
                w.calls, w.window_ns
            ));
        }
        if let Some(cost) = cost
            && cost > w.calls
        {
            return invalid(format!(
                "a call of cost {cost} never fits a rate of {} calls",
                w.calls
            ));
        }
    }
    Ok(())
}

/// Opens the store that `url` names (see [`StoreConfig::parse`]).
pub fn open(url: &str) -> Result<std::sync::Arc<dyn Store>, StoreError> {
    StoreConfig::parse(url)?.open()
}

/// A new waiter id: random, so unique across processes and hosts in practice.
pub(crate) fn waiter_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    let id = h.finish();
    // Ids cross Lua as decimal strings; zero is reserved as "none".
    id.max(1)
}
