//! The synchronization primitives of the in-memory limiter's buckets: parking_lot's
//! locks and the standard atomics in every build, loom's when the model checks of
//! `model_check.rs` run (built with `RUSTFLAGS="--cfg quotagate_loom"`, tests only), so
//! that loom sees every lock, wait, notification and atomic that waiting, cancel and
//! close go through. The loom versions keep parking_lot's interface (a guard waited on by
//! `&mut`, no poisoning), so the limiter's code is the same in both.

#[cfg(not(all(test, quotagate_loom)))]
pub(crate) use parking_lot::{Condvar, Mutex, MutexGuard, RwLock};
#[cfg(not(all(test, quotagate_loom)))]
pub(crate) use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64};

#[cfg(all(test, quotagate_loom))]
pub(crate) use model::{AtomicU8, AtomicU32, AtomicU64, Condvar, Mutex, MutexGuard, RwLock};

#[cfg(all(test, quotagate_loom))]
mod model {
    pub(crate) use loom::sync::atomic::{AtomicU8, AtomicU32, AtomicU64};
    use std::ops::{Deref, DerefMut};
    use std::time::Duration;

    /// A loom mutex with parking_lot's `lock`.
    #[derive(Debug)]
    pub(crate) struct Mutex<T>(loom::sync::Mutex<T>);

    impl<T> Mutex<T> {
        pub(crate) fn new(value: T) -> Self {
            Self(loom::sync::Mutex::new(value))
        }

        pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
            MutexGuard(Some(
                self.0
                    .lock()
                    .expect("no model thread panics holding a lock"),
            ))
        }
    }

    /// The guard is `None` only inside a condition variable's wait.
    pub(crate) struct MutexGuard<'a, T>(Option<loom::sync::MutexGuard<'a, T>>);

    impl<T> Deref for MutexGuard<'_, T> {
        type Target = T;
        fn deref(&self) -> &T {
            self.0.as_ref().expect("a guard is held outside a wait")
        }
    }

    impl<T> DerefMut for MutexGuard<'_, T> {
        fn deref_mut(&mut self) -> &mut T {
            self.0.as_mut().expect("a guard is held outside a wait")
        }
    }

    /// A loom condition variable waited on through `&mut MutexGuard`, like parking_lot's.
    #[derive(Debug)]
    pub(crate) struct Condvar(loom::sync::Condvar);

    impl Condvar {
        pub(crate) fn new() -> Self {
            Self(loom::sync::Condvar::new())
        }

        pub(crate) fn wait<T>(&self, guard: &mut MutexGuard<'_, T>) {
            let held = guard.0.take().expect("a guard is held outside a wait");
            guard.0 = Some(
                self.0
                    .wait(held)
                    .expect("no model thread panics holding a lock"),
            );
        }

        /// Loom has no time: a timed wait is a wait until notified. The models use the
        /// manual clock, whose waits are untimed, and never wait in slices.
        pub(crate) fn wait_for<T>(&self, guard: &mut MutexGuard<'_, T>, _timeout: Duration) {
            self.wait(guard);
        }

        pub(crate) fn notify_one(&self) {
            self.0.notify_one();
        }

        pub(crate) fn notify_all(&self) {
            self.0.notify_all();
        }
    }

    /// A loom reader-writer lock with parking_lot's `read` and `write`.
    #[derive(Debug)]
    pub(crate) struct RwLock<T>(loom::sync::RwLock<T>);

    impl<T> RwLock<T> {
        pub(crate) fn new(value: T) -> Self {
            Self(loom::sync::RwLock::new(value))
        }

        pub(crate) fn read(&self) -> loom::sync::RwLockReadGuard<'_, T> {
            self.0
                .read()
                .expect("no model thread panics holding a lock")
        }

        pub(crate) fn write(&self) -> loom::sync::RwLockWriteGuard<'_, T> {
            self.0
                .write()
                .expect("no model thread panics holding a lock")
        }
    }
}
