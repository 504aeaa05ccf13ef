//! Caps on calls in flight: at most `max` calls of a route are under way at once, and the
//! others wait their turn in FIFO order, with the deadline, cancel and close behaviour of
//! quota waits.

use parking_lot::{Condvar, Mutex};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The in-flight cap of one route of one bucket.
#[derive(Debug)]
pub(crate) struct Gate {
    max: u32,
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct State {
    in_flight: u32,
    peak: u32,
    /// Tickets of the waiting calls, oldest first.
    queue: VecDeque<u64>,
    next_ticket: u64,
}

/// Why a wait for a slot ended without one.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum GateError<E> {
    /// The deadline passed.
    Timeout,
    /// `check` failed (cancel, close).
    Stopped(E),
}

/// A slot in flight; given back on drop.
#[derive(Debug)]
pub(crate) struct Permit {
    gate: Arc<Gate>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut st = self.gate.state.lock();
        st.in_flight -= 1;
        self.gate.changed.notify_all();
    }
}

impl Gate {
    pub(crate) fn new(max: u32) -> Arc<Gate> {
        Arc::new(Gate {
            max: max.max(1),
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        })
    }

    /// The most calls that were in flight at once.
    pub(crate) fn peak(&self) -> u32 {
        self.state.lock().peak
    }

    /// Waits (in slices of `slice`, calling `check` between them) until this call is the
    /// oldest waiter and a slot is free, or until `deadline`.
    pub(crate) fn acquire<E>(
        self: &Arc<Self>,
        deadline: Instant,
        slice: Duration,
        check: impl Fn() -> Result<(), E>,
    ) -> Result<Permit, GateError<E>> {
        let mut st = self.state.lock();
        let ticket = st.next_ticket;
        st.next_ticket += 1;
        st.queue.push_back(ticket);
        loop {
            if st.queue.front() == Some(&ticket) && st.in_flight < self.max {
                st.queue.pop_front();
                st.in_flight += 1;
                st.peak = st.peak.max(st.in_flight);
                // The next waiter may fit as well.
                self.changed.notify_all();
                return Ok(Permit { gate: self.clone() });
            }
            let now = Instant::now();
            let stop = match check() {
                Err(e) => Some(GateError::Stopped(e)),
                Ok(()) if now >= deadline => Some(GateError::Timeout),
                Ok(()) => None,
            };
            if let Some(e) = stop {
                st.queue.retain(|&t| t != ticket);
                self.changed.notify_all();
                return Err(e);
            }
            self.changed.wait_for(&mut st, (deadline - now).min(slice));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

    const SLICE: Duration = Duration::from_millis(10);

    fn never() -> Result<(), ()> {
        Ok(())
    }

    #[test]
    fn the_cap_holds_and_waiters_go_in_order() {
        let gate = Gate::new(3);
        let far = Instant::now() + Duration::from_secs(10);
        let held: Vec<_> = (0..3)
            .map(|_| gate.acquire(far, SLICE, never).unwrap())
            .collect();
        let soon = Instant::now() + Duration::from_millis(30);
        assert_eq!(
            gate.acquire(soon, SLICE, never).unwrap_err(),
            GateError::Timeout
        );
        assert!(
            gate.state.lock().queue.is_empty(),
            "the timed-out waiter left"
        );
        drop(held);
        assert_eq!((gate.peak(), gate.state.lock().in_flight), (3, 0));

        let gate = Gate::new(1);
        let first = gate.acquire(far, SLICE, never).unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let threads: Vec<_> = (0..4)
            .map(|i| {
                let (g, order) = (gate.clone(), order.clone());
                let t = std::thread::spawn(move || {
                    let _p = g.acquire(far, SLICE, never).unwrap();
                    order.lock().push(i);
                });
                // Queue them in a known order.
                while gate.state.lock().queue.len() < i + 1 {
                    std::thread::yield_now();
                }
                t
            })
            .collect();
        drop(first);
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(*order.lock(), vec![0, 1, 2, 3]);
        assert_eq!(gate.peak(), 1);
    }

    #[test]
    fn a_stopped_waiter_leaves_the_queue_and_the_next_moves_up() {
        let gate = Gate::new(1);
        let far = Instant::now() + Duration::from_secs(10);
        let first = gate.acquire(far, SLICE, never).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let admitted = Arc::new(AtomicU32::new(0));
        let (g, s) = (gate.clone(), stop.clone());
        let cancelled = std::thread::spawn(move || {
            g.acquire(far, SLICE, || {
                if s.load(Ordering::SeqCst) {
                    Err("cancelled")
                } else {
                    Ok(())
                }
            })
            .map(drop)
        });
        while gate.state.lock().queue.is_empty() {
            std::thread::yield_now();
        }
        let (g, a) = (gate.clone(), admitted.clone());
        let next = std::thread::spawn(move || {
            let _p = g.acquire(far, SLICE, never).unwrap();
            a.fetch_add(1, Ordering::SeqCst);
        });
        stop.store(true, Ordering::SeqCst);
        assert_eq!(
            cancelled.join().unwrap(),
            Err(GateError::Stopped("cancelled"))
        );
        drop(first);
        next.join().unwrap();
        assert_eq!(admitted.load(Ordering::SeqCst), 1);
    }
}
