//! [`Ticket`]: a place in a bucket's queue, in either backend, waited on in slices.

use super::bucket::WaiterState;
use super::memory::MemoryTicket;
use super::stored::StoreTicket;
use super::{Admitted, Error, Hold, HoldKind, Limiter};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// A place in a bucket's queue. Safe to share between threads: one thread waits while
/// another may [`cancel`](Self::cancel). Dropping a ticket that was not admitted gives
/// up its place.
pub struct Ticket {
    pub(super) limiter: Limiter,
    pub(super) kind: TicketKind,
    /// Whether [`Ticket::hold`] handed out the hold of an admitted hold ticket.
    pub(super) hold_taken: AtomicBool,
}

/// A ticket's place, in the limiter's backend.
pub(super) enum TicketKind {
    /// A place in a bucket of this process.
    Memory(MemoryTicket),
    /// A place in a store's queue.
    Store(StoreTicket),
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket")
            .field("cost", &self.cost())
            .field("state", &self.state())
            .finish()
    }
}

/// How a wait in `state` ended, or `None` while it goes on; `frees_in` is a timed-out
/// wait's shortfall (see [`Error::Timeout`]).
pub(super) fn outcome(
    state: WaiterState,
    frees_in: Option<Duration>,
) -> Option<Result<Wait, Error>> {
    match state {
        WaiterState::Waiting => None,
        WaiterState::Admitted => Some(Ok(Wait::Admitted)),
        WaiterState::TimedOut => Some(Err(Error::Timeout { frees_in })),
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
    pub(super) fn state(&self) -> WaiterState {
        match &self.kind {
            TicketKind::Memory(t) => t.state(),
            TicketKind::Store(t) => t.state(),
        }
    }

    /// Waits until admitted, for at most `slice` of real time (`None`: as long as it
    /// takes). Returns [`Wait::Pending`] when the slice ran out with the place kept.
    pub fn wait(&self, slice: Option<Duration>) -> Result<Wait, Error> {
        match &self.kind {
            TicketKind::Memory(t) => t.wait(slice),
            TicketKind::Store(t) => t.wait(slice),
        }
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
            TicketKind::Memory(t) => t.cancel(),
            TicketKind::Store(t) => t.cancel(),
        }
    }

    /// The admission, once admitted.
    pub fn admitted(&self) -> Option<Admitted> {
        match &self.kind {
            TicketKind::Memory(t) => t.admitted(),
            TicketKind::Store(t) => t.admitted(),
        }
    }

    /// The cost of the call this ticket waits for.
    pub fn cost(&self) -> u32 {
        match &self.kind {
            TicketKind::Memory(t) => t.cost(),
            TicketKind::Store(t) => t.cost(),
        }
    }

    /// Whether the ticket waits for a hold (made by [`Limiter::enqueue_hold`]).
    pub fn is_hold(&self) -> bool {
        match &self.kind {
            TicketKind::Memory(t) => t.is_hold(),
            TicketKind::Store(t) => t.is_hold(),
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
        let kind = match &self.kind {
            TicketKind::Memory(t) => HoldKind::Memory(t.hold()),
            TicketKind::Store(t) => HoldKind::Store(t.hold()),
        };
        Ok(self.limiter.new_hold(kind, self.cost(), admitted))
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        // An admitted hold nobody took ends now; a waiting ticket gives up its place in
        // its backend's drop.
        if self.is_hold() && self.admitted().is_some() && !*self.hold_taken.get_mut() {
            drop(self.hold());
        }
    }
}
