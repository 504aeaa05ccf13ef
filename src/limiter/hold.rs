//! [`Hold`]: a call admitted with its units in flight until it ends, in either backend.

use super::memory::MemoryHold;
use super::stored::StoreHold;
use super::{Admitted, Limiter, Nanos};
use std::time::Duration;

/// A call admitted by [`Limiter::hold`]: its units count in every window of its bucket
/// from admission on, in flight, and are logged at the instant the hold ends
/// ([`finish`](Self::finish), [`finish_at`](Self::finish_at) or drop). Safe to send to
/// another thread.
pub struct Hold {
    pub(super) limiter: Limiter,
    pub(super) kind: HoldKind,
    pub(super) cost: u32,
    pub(super) admitted: Admitted,
    pub(super) ended: bool,
}

/// A hold's units, in the limiter's backend.
pub(super) enum HoldKind {
    Memory(MemoryHold),
    Store(StoreHold),
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
            HoldKind::Memory(h) => h.end(at),
            HoldKind::Store(h) => {
                h.end(Duration::from_nanos(self.limiter.now().saturating_sub(at)));
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
