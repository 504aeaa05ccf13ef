//! Time for the limiter: the monotonic clock in production, a manual clock in tests.
//!
//! The limiter measures time as nanoseconds since the clock's own origin ([`Nanos`]).
//! Blocking waits ask the clock how long to sleep in real time; the manual clock answers
//! "until woken" and wakes every subscribed limiter when it is advanced, so tests drive
//! blocking waits without sleeping through real windows.

use parking_lot::Mutex;
use std::sync::{Arc, Weak};
use std::time::Duration;
#[cfg(not(target_os = "linux"))]
use std::time::Instant;

/// Nanoseconds since a clock's origin.
pub type Nanos = u64;

/// Converts a duration to nanoseconds, saturating at `u64::MAX` (about 584 years).
pub(crate) fn nanos(d: Duration) -> Nanos {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Something to wake when a manual clock moves.
pub trait ClockListener: Send + Sync {
    /// Called after the clock advanced; must not call back into the clock.
    fn clock_advanced(&self);
}

/// A source of time for a [`Limiter`](super::Limiter).
pub trait Clock: Send + Sync + 'static {
    /// The current instant. Never goes backwards.
    fn now(&self) -> Nanos;

    /// How long to block in real time to reach `until` from `now`.
    /// `None` means "until woken": the clock itself wakes waiters when it moves.
    fn real_wait(&self, now: Nanos, until: Nanos) -> Option<Duration>;

    /// Registers a listener to wake when the clock moves by other means than real time.
    fn subscribe(&self, _listener: Weak<dyn ClockListener>) {}
}

/// The operating system's monotonic clock (on Linux `CLOCK_MONOTONIC`, the clock of
/// [`Instant`](std::time::Instant)).
#[derive(Debug, Clone, Copy)]
pub struct MonotonicClock {
    #[cfg(target_os = "linux")]
    origin: Nanos,
    #[cfg(not(target_os = "linux"))]
    origin: Instant,
}

impl MonotonicClock {
    /// A clock whose origin is now.
    pub fn new() -> Self {
        Self {
            #[cfg(target_os = "linux")]
            origin: monotonic_ns(),
            #[cfg(not(target_os = "linux"))]
            origin: Instant::now(),
        }
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds. Every admission reads the clock: read straight from
/// the vDSO it costs a quarter of the instructions of `Instant::elapsed`, whose
/// `Timespec` subtraction and `u128` conversion cost more than the read itself. Same
/// clock, same resolution: nothing about the limiter's instants changes.
#[cfg(target_os = "linux")]
#[inline]
fn monotonic_ns() -> Nanos {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // Cannot fail for CLOCK_MONOTONIC with a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as u64)
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for MonotonicClock {
    #[cfg(target_os = "linux")]
    #[inline]
    fn now(&self) -> Nanos {
        // The kernel's monotonic clock never goes back, so neither does the difference.
        monotonic_ns() - self.origin
    }

    #[cfg(not(target_os = "linux"))]
    #[inline]
    fn now(&self) -> Nanos {
        nanos(self.origin.elapsed())
    }

    fn real_wait(&self, now: Nanos, until: Nanos) -> Option<Duration> {
        Some(Duration::from_nanos(until.saturating_sub(now)))
    }
}

/// A clock that moves only when told to. Cloning gives another handle to the same clock.
///
/// Blocking waits on a limiter that uses it sleep until [`advance`](Self::advance) or
/// [`set`](Self::set) moves the clock past their instant.
#[derive(Clone, Default)]
pub struct ManualClock {
    inner: Arc<ManualInner>,
}

#[derive(Default)]
struct ManualInner {
    now: Mutex<Nanos>,
    listeners: Mutex<Vec<Weak<dyn ClockListener>>>,
}

impl std::fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManualClock")
            .field("now", &*self.inner.now.lock())
            .finish()
    }
}

impl ManualClock {
    /// A manual clock at instant zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves the clock forward by `d` and wakes the limiters that use it.
    pub fn advance(&self, d: Duration) {
        {
            let mut now = self.inner.now.lock();
            *now = now.saturating_add(nanos(d));
        }
        self.wake();
    }

    /// Moves the clock to `t` if that is later than now (a clock never goes back).
    pub fn set(&self, t: Nanos) {
        {
            let mut now = self.inner.now.lock();
            *now = (*now).max(t);
        }
        self.wake();
    }

    fn wake(&self) {
        let listeners: Vec<_> = {
            let mut list = self.inner.listeners.lock();
            list.retain(|w| w.strong_count() > 0);
            list.iter().filter_map(Weak::upgrade).collect()
        };
        for l in listeners {
            l.clock_advanced();
        }
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Nanos {
        *self.inner.now.lock()
    }

    fn real_wait(&self, _now: Nanos, _until: Nanos) -> Option<Duration> {
        None
    }

    fn subscribe(&self, listener: Weak<dyn ClockListener>) {
        self.inner.listeners.lock().push(listener);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Counter(AtomicUsize);
    impl ClockListener for Counter {
        fn clock_advanced(&self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn manual_clock_moves_only_forward_and_wakes_listeners() {
        let clock = ManualClock::new();
        let counter = Arc::new(Counter(AtomicUsize::new(0)));
        let weak: Weak<dyn ClockListener> = Arc::downgrade(&counter) as Weak<dyn ClockListener>;
        clock.subscribe(weak);
        clock.advance(Duration::from_millis(5));
        assert_eq!(clock.now(), 5_000_000);
        clock.set(1);
        assert_eq!(clock.now(), 5_000_000, "set never moves back");
        assert_eq!(counter.0.load(Ordering::SeqCst), 2);
        drop(counter);
        clock.advance(Duration::from_millis(1)); // a dropped listener is forgotten
        assert_eq!(clock.now(), 6_000_000);
    }

    #[test]
    fn monotonic_clock_waits_in_real_time() {
        let clock = MonotonicClock::new();
        let a = clock.now();
        let b = clock.now();
        assert!(b >= a);
        // It keeps the pace of `Instant`, the clock the waits sleep on: what it measures
        // lies between what Instant measures inside and around the same two readings.
        let read = || {
            let before = std::time::Instant::now();
            let t = clock.now();
            (before, t, std::time::Instant::now())
        };
        let (a0, c0, b0) = read();
        std::thread::sleep(Duration::from_millis(20));
        let (a1, c1, b1) = read();
        let (inner, outer) = (nanos(a1 - b0), nanos(b1 - a0));
        assert!(
            (inner..=outer).contains(&(c1 - c0)),
            "{} ns by the clock, {inner}..={outer} ns by Instant",
            c1 - c0
        );
        assert_eq!(clock.real_wait(10, 5), Some(Duration::ZERO));
        assert_eq!(clock.real_wait(0, 1_000), Some(Duration::from_nanos(1_000)));
    }
}
