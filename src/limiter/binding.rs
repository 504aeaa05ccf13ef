//! [`Binding`]: a key and a cost bound once, for calls that repeat them.

use super::memory::MemoryBinding;
use super::{Error, Limiter};

/// A key and a cost bound once by [`Limiter::bind`]. Its [`try_acquire`](Self::try_acquire)
/// is `Limiter::try_acquire(key, cost)`: the same admissions, refusals, errors and
/// statistics, never ahead of a queued call; it only skips finding the bucket by its key.
///
/// In memory, a binding holds its bucket, which keeps the bucket alive: neither the
/// eviction that makes room for a new key nor [`Limiter::purge_idle`] drops a bucket that
/// a binding holds, so its windows stay exact for as long as the binding lives (and the
/// bucket counts towards the limiter's `max_buckets` meanwhile). [`Limiter::set_rates`]
/// changes the bucket in place: its bindings follow the new rates at once. With a store,
/// a binding keeps the key and the cost and makes the general call.
///
/// A binding holds a clone of its limiter, and is safe to share between threads.
pub struct Binding {
    limiter: Limiter,
    key: Box<str>,
    cost: u32,
    kind: BindingKind,
}

/// Where a binding's calls go.
enum BindingKind {
    /// Straight to the bucket of this process that the binding holds.
    Memory(MemoryBinding),
    /// Through the limiter by key, to the store.
    Store,
}

impl std::fmt::Debug for Binding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Binding")
            .field("key", &self.key)
            .field("cost", &self.cost)
            .field("in_memory", &matches!(self.kind, BindingKind::Memory(_)))
            .finish()
    }
}

impl Binding {
    pub(super) fn memory(limiter: &Limiter, key: &str, cost: u32, bucket: MemoryBinding) -> Self {
        Self::new(limiter, key, cost, BindingKind::Memory(bucket))
    }

    pub(super) fn store(limiter: &Limiter, key: &str, cost: u32) -> Self {
        Self::new(limiter, key, cost, BindingKind::Store)
    }

    fn new(limiter: &Limiter, key: &str, cost: u32, kind: BindingKind) -> Self {
        Self {
            limiter: limiter.clone(),
            key: key.into(),
            cost,
            kind,
        }
    }

    /// Admits a call of the bound cost on the bound key now, exactly as
    /// [`Limiter::try_acquire`] would; never waits. On refusal, reports the wait it would
    /// need ([`Error::WouldBlock`]); [`Error::Closed`] once the limiter is closed.
    #[inline]
    pub fn try_acquire(&self) -> Result<(), Error> {
        match &self.kind {
            BindingKind::Memory(bucket) => bucket.try_acquire(self.cost),
            BindingKind::Store => self.limiter.try_acquire(&self.key, self.cost),
        }
    }

    /// The bound key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The bound cost.
    pub fn cost(&self) -> u32 {
        self.cost
    }

    /// The limiter the binding belongs to.
    pub fn limiter(&self) -> &Limiter {
        &self.limiter
    }
}

#[cfg(test)]
mod tests {
    use super::super::{ManualClock, Rate};
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    fn manual(calls: u32, window_ms: u64, max_buckets: usize) -> (Limiter, ManualClock) {
        let clock = ManualClock::new();
        let limiter = Limiter::builder()
            .rate(Rate::new(calls, Duration::from_millis(window_ms)))
            .max_buckets(max_buckets)
            .clock(Arc::new(clock.clone()))
            .build()
            .unwrap();
        (limiter, clock)
    }

    #[test]
    fn a_binding_admits_and_refuses_like_the_call_by_key() {
        let (bound, bound_clock) = manual(5, 1000, 16);
        let (by_key, key_clock) = manual(5, 1000, 16);
        let b = bound.bind("k", 2).unwrap();
        assert_eq!((b.key(), b.cost()), ("k", 2));
        for step in 0..40 {
            let got = b.try_acquire();
            assert_eq!(got, by_key.try_acquire("k", 2), "step {step}");
            bound_clock.advance(Duration::from_millis(70));
            key_clock.advance(Duration::from_millis(70));
        }
        let (a, k) = (bound.stats("k"), by_key.stats("k"));
        assert!(a.admitted_calls > 5 && a.refusals > 5, "{a:?}");
        assert_eq!(a, k, "the same statistics");
    }

    #[test]
    fn a_binding_never_passes_a_queued_call_and_follows_new_rates() {
        let (l, clock) = manual(1, 1000, 16);
        let b = l.bind("k", 1).unwrap();
        b.try_acquire().unwrap();
        let ticket = l.enqueue("k", 1, None).unwrap();
        clock.advance(Duration::from_millis(1000));
        // The queued call's time came first: the binding lets it go, then waits its turn.
        assert!(matches!(b.try_acquire(), Err(Error::WouldBlock { .. })));
        assert!(ticket.admitted().is_some());
        l.set_rates("k", &[Rate::new(3, Duration::from_millis(1000))])
            .unwrap();
        b.try_acquire().unwrap();
        b.try_acquire().unwrap();
        assert!(matches!(b.try_acquire(), Err(Error::WouldBlock { .. })));
        l.set_rates("k", &[Rate::new(1, Duration::from_millis(1000))])
            .unwrap();
        let too_big = l.bind("k", 2).unwrap_err();
        assert!(matches!(too_big, Error::InvalidArgument(_)), "{too_big:?}");
        let big = {
            l.set_rates("k", &[Rate::new(9, Duration::from_millis(1000))])
                .unwrap();
            l.bind("k", 2).unwrap()
        };
        l.set_rates("k", &[Rate::new(1, Duration::from_millis(1000))])
            .unwrap();
        assert_eq!(
            big.try_acquire().unwrap_err(),
            l.try_acquire("k", 2).unwrap_err(),
            "a cost that no longer fits fails as the call by key does"
        );
    }

    #[test]
    fn a_bound_bucket_survives_eviction_and_purges_with_its_count() {
        let (l, clock) = manual(2, 100, 2);
        let b = l.bind("kept", 1).unwrap();
        b.try_acquire().unwrap();
        clock.advance(Duration::from_millis(100));
        // "kept" is idle now: only its binding keeps it from making room.
        for key in ["a", "b", "c", "d"] {
            clock.advance(Duration::from_millis(100));
            l.try_acquire(key, 1).unwrap();
        }
        assert_eq!(l.purge_idle(), 0, "the last key's call is in its window");
        clock.advance(Duration::from_millis(100));
        assert_eq!(
            l.purge_idle(),
            1,
            "the last key went, the bound bucket stayed"
        );
        assert_eq!(l.keys(), ["kept"]);
        b.try_acquire().unwrap();
        b.try_acquire().unwrap();
        assert!(matches!(b.try_acquire(), Err(Error::WouldBlock { .. })));
        let stats = l.stats("kept");
        assert_eq!((stats.admitted_calls, stats.refusals), (3, 1));
        // The bucket was never dropped and made again: the count went on from the first.
        drop(b);
        clock.advance(Duration::from_millis(100));
        assert_eq!(l.purge_idle(), 1, "without its binding the bucket is idle");
    }

    #[test]
    fn a_full_limiter_cannot_bind_a_new_key_while_bindings_hold_every_bucket() {
        let (l, clock) = manual(1, 100, 1);
        let b = l.bind("a", 1).unwrap();
        clock.advance(Duration::from_millis(1000));
        assert_eq!(
            l.bind("b", 1).unwrap_err(),
            Error::TooManyBuckets { limit: 1 }
        );
        drop(b);
        l.bind("b", 1).unwrap().try_acquire().unwrap();
    }

    #[test]
    fn a_closed_limiter_refuses_binding_and_bound_calls() {
        let (l, _clock) = manual(5, 1000, 16);
        let b = l.bind("k", 1).unwrap();
        assert_eq!(
            l.bind("k", 0).unwrap_err(),
            l.try_acquire("k", 0).unwrap_err()
        );
        l.close();
        assert_eq!(b.try_acquire(), Err(Error::Closed));
        assert_eq!(l.bind("k", 1).unwrap_err(), Error::Closed);
        assert_eq!(l.bind("new", 1).unwrap_err(), Error::Closed);
        assert_eq!(l.stats("k").admitted_calls, 0);
    }

    #[test]
    fn a_binding_over_the_file_store_shares_its_count() {
        let dir = std::env::temp_dir().join(format!(
            "quotagate-binding-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let url = format!("file://{}/state.q", dir.display());
        let open = || {
            Limiter::builder()
                .rate(Rate::new(3, Duration::from_secs(3600)))
                .store(&url)
                .build()
                .unwrap()
        };
        let (a, other) = (open(), open());
        let b = a.bind("k", 1).unwrap();
        assert!(format!("{b:?}").contains("in_memory: false"));
        b.try_acquire().unwrap();
        other.try_acquire("k", 1).unwrap();
        b.try_acquire().unwrap();
        assert!(matches!(b.try_acquire(), Err(Error::WouldBlock { .. })));
        assert!(matches!(
            other.try_acquire("k", 1),
            Err(Error::WouldBlock { .. })
        ));
        let stats = a.stats("k");
        assert_eq!((stats.admitted_calls, stats.refusals), (2, 1));
        // The bucket's rates are the store's concern, checked at each call.
        let too_big = a.bind("k", 4).unwrap();
        let refused = too_big.try_acquire().unwrap_err();
        assert!(matches!(refused, Error::InvalidArgument(_)), "{refused:?}");
        assert_eq!(refused, a.try_acquire("k", 4).unwrap_err());
        assert!(matches!(a.bind("k", 0), Err(Error::InvalidArgument(_))));
        a.close();
        assert_eq!(b.try_acquire(), Err(Error::Closed));
        assert_eq!(a.bind("k", 1).unwrap_err(), Error::Closed);
        drop((a, other, b));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
