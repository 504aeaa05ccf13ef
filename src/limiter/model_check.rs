//! Model checks of the in-memory limiter's concurrency with loom: every interleaving, up to
//! a bound on preemptions, of a few threads that try, enqueue, wait, hold, end holds,
//! cancel and close on one bucket while a driver moves a manual clock. Loom sees every
//! lock, condition variable and atomic of the buckets (`sync.rs`).
//!
//! In every schedule explored: the record of admissions and releases never puts more than
//! `calls` units in any window (a hold counts in every window that meets its time in
//! flight); no call is admitted before one that arrived earlier; every waiter returns with
//! the result its scenario allows; and the limiter's own counts agree with the record. A
//! lost wakeup shows as a deadlock (loom reports it) or as a driver that moved the clock
//! for many windows while every thread slept.
//!
//! Every model runs on two clocks. On the manual clock, whose advance pumps every
//! bucket, no thread keeps the head's time. On a clock that the threads sleep on, like
//! the monotonic one ([`SleptClock`]), the queue moves only because the *timer* (the first
//! waiter with a thread on it) wakes at the head's instant and hands the role on when it
//! leaves (`BucketState::watch`): loom has no timed waits, so after each step the driver
//! ends the sleeps whose instant has come, as their timeouts would. A hand-over that is
//! skipped when it was needed leaves every thread asleep: the driver calls the run stuck.
//! The models never wait in slices.
//!
//! `RUSTFLAGS="--cfg quotagate_loom" cargo test --profile model-check
//! --no-default-features --lib limiter::model_check::` (a step of scripts/test; `-- --nocapture` prints how many
//! schedules each model explored). `LOOM_MAX_PREEMPTIONS` sets the bound (2 unless set).

use super::bucket::WaiterState;
use super::sync::{Condvar, Mutex};
use super::ticket::TicketKind;
use super::{Clock, Error, Hold, Limiter, ManualClock, Nanos, Rate, Ticket, Wait};
use std::sync::Arc;
use std::time::Duration;

const KEY: &str = "k";
/// Every model's window, in the manual clock's nanoseconds.
const WINDOW: Nanos = 10;
/// The driver's step: half a window, so that releases and admissions fall inside windows.
const STEP: Nanos = WINDOW / 2;
/// Steps the driver takes while every thread sleeps before it calls the run stuck.
const STUCK_AFTER: usize = 12;

/// How the waiting threads learn that time has passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Time {
    /// A manual clock: its advance pumps the bucket.
    Listened,
    /// A [`SleptClock`]: the timer sleeps on it.
    Slept,
}

/// A clock that moves only when the driver moves it, but that the limiter must watch
/// itself, as it does the monotonic clock: it answers every wait with a timed sleep and
/// wakes nobody when it moves.
struct SleptClock(ManualClock);

impl Clock for SleptClock {
    fn now(&self) -> Nanos {
        self.0.now()
    }

    fn real_wait(&self, now: Nanos, until: Nanos) -> Option<Duration> {
        Some(Duration::from_nanos(until.saturating_sub(now)))
    }
}

/// Explores `model` on each clock under loom with a bound on preemptions (2 unless
/// `LOOM_MAX_PREEMPTIONS` says otherwise).
fn explore(model: impl Fn(Time) + Sync + Send + 'static) {
    let model = Arc::new(model);
    for time in [Time::Listened, Time::Slept] {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound.get_or_insert(2);
        let schedules = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (counted, model) = (schedules.clone(), model.clone());
        builder.check(move || {
            counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            model(time);
        });
        println!(
            "{time:?}: {} schedules explored",
            schedules.load(std::sync::atomic::Ordering::Relaxed)
        );
    }
}

/// A call as the threads saw it: its place in arrival order, its cost, its admission and
/// the instant its units were logged (the admission for a plain call, a hold's end).
#[derive(Debug, Clone, Copy)]
struct Call {
    arrival: usize,
    cost: u64,
    admitted: Nanos,
    released: Nanos,
}

/// A ticket with its place in arrival order.
struct Place {
    arrival: usize,
    ticket: Ticket,
}

#[derive(Default)]
struct Record {
    /// Places taken so far (tries included).
    arrivals: usize,
    /// Threads running, neither asleep in a wait nor finished.
    busy: usize,
    finished: usize,
    /// The places the sleeping threads wait on.
    asleep: Vec<Arc<Place>>,
    calls: Vec<Call>,
}

/// One explored run: a limiter of `calls` units per `WINDOW` on a manual clock, or on a
/// [`SleptClock`] over it, and the record that its threads keep. The clock moves under
/// the record's lock, so an instant read under it is the limiter's.
struct Run {
    clock: ManualClock,
    time: Time,
    limiter: Limiter,
    calls: u64,
    threads: usize,
    record: Mutex<Record>,
    changed: Condvar,
}

impl Run {
    /// A run for `threads` threads besides the driver.
    fn new(time: Time, calls: u32, threads: usize) -> Arc<Self> {
        let clock = ManualClock::new();
        let limiter = Limiter::builder()
            .rate(Rate::new(calls, Duration::from_nanos(WINDOW)))
            .clock(match time {
                Time::Listened => Arc::new(clock.clone()),
                Time::Slept => Arc::new(SleptClock(clock.clone())),
            })
            .build()
            .expect("a valid rate");
        Arc::new(Self {
            clock,
            time,
            limiter,
            calls: u64::from(calls),
            threads,
            record: Mutex::new(Record {
                busy: threads,
                ..Record::default()
            }),
            changed: Condvar::new(),
        })
    }

    /// A run for `threads` threads whose window of one call is full at instant 0.
    fn full(time: Time, threads: usize) -> Arc<Self> {
        let run = Self::new(time, 1, threads);
        run.try_acquire(1).expect("an empty bucket admits");
        run
    }

    /// A place for a plain call of one unit, without a deadline.
    fn place(&self) -> Arc<Place> {
        self.enqueue(1, None, false).expect("the limiter is open")
    }

    /// `try_acquire` as the next arrival, recorded when admitted.
    fn try_acquire(&self, cost: u32) -> Result<(), Error> {
        let mut rec = self.record.lock();
        let arrival = rec.arrivals;
        rec.arrivals += 1;
        let result = self.limiter.try_acquire(KEY, cost);
        if result.is_ok() {
            let now = self.clock.now();
            rec.calls.push(Call {
                arrival,
                cost: u64::from(cost),
                admitted: now,
                released: now,
            });
        }
        result
    }

    /// `try_hold` as the next arrival: the hold and its place.
    fn try_hold(&self, cost: u32) -> Result<(usize, Hold), Error> {
        let mut rec = self.record.lock();
        let arrival = rec.arrivals;
        rec.arrivals += 1;
        self.limiter.try_hold(KEY, cost).map(|h| (arrival, h))
    }

    /// A place in the queue as the next arrival (for a hold when `hold`), with a deadline
    /// `timeout` from now.
    fn enqueue(&self, cost: u32, timeout: Option<Nanos>, hold: bool) -> Result<Arc<Place>, Error> {
        let mut rec = self.record.lock();
        let arrival = rec.arrivals;
        rec.arrivals += 1;
        let timeout = timeout.map(Duration::from_nanos);
        let ticket = if hold {
            self.limiter.enqueue_hold(KEY, cost, timeout, None)
        } else {
            self.limiter.enqueue(KEY, cost, timeout)
        }?;
        Ok(Arc::new(Place { arrival, ticket }))
    }

    /// Waits on `place` until it is decided, asleep for the driver. A plain call is
    /// recorded at its admission; a hold is returned, to be ended by [`finish`](Self::finish).
    fn wait(&self, place: &Arc<Place>) -> Result<Option<Hold>, Error> {
        {
            let mut rec = self.record.lock();
            rec.busy -= 1;
            rec.asleep.push(place.clone());
            self.changed.notify_all();
        }
        let result = place.ticket.wait(None);
        let mut rec = self.record.lock();
        rec.busy += 1;
        rec.asleep.retain(|p| !Arc::ptr_eq(p, place));
        match result? {
            Wait::Admitted => {}
            Wait::Pending => panic!("a wait without a slice returned pending"),
        }
        let admitted = place
            .ticket
            .admitted()
            .expect("an admitted ticket has its admission");
        if place.ticket.is_hold() {
            return Ok(Some(place.ticket.hold()?));
        }
        rec.calls.push(Call {
            arrival: place.arrival,
            cost: u64::from(place.ticket.cost()),
            admitted: admitted.at,
            released: admitted.at,
        });
        Ok(None)
    }

    /// Ends `hold` (of place `arrival`) now and records its time in flight.
    fn finish(&self, arrival: usize, hold: Hold) {
        let at = self.clock.now();
        let call = Call {
            arrival,
            cost: u64::from(hold.cost()),
            admitted: hold.admitted().at,
            released: at,
        };
        hold.finish_at(at);
        self.record.lock().calls.push(call);
    }

    /// Called by each thread as its last act.
    fn done(&self) {
        let mut rec = self.record.lock();
        rec.busy -= 1;
        rec.finished += 1;
        self.changed.notify_all();
    }

    fn advance(&self) {
        let rec = self.record.lock();
        self.step(&rec);
    }

    /// Moves the clock a step, under the record's lock, and ends the sleeps that reached
    /// their instant.
    fn step(&self, rec: &Record) {
        self.clock.advance(Duration::from_nanos(STEP));
        self.end_due_sleeps(rec);
    }

    /// On a [`SleptClock`], ends the sleeps that reached their instant, as their timeouts
    /// would. Returns whether a thread has yet to run before time moves on: one not in its
    /// wait yet, or woken (by a timeout or another thread) and not asleep again. Only the
    /// manual clock's advance decides places by itself, without them.
    fn end_due_sleeps(&self, rec: &Record) -> bool {
        let mut unsettled = false;
        if self.time == Time::Slept {
            for place in &rec.asleep {
                if let TicketKind::Memory(t) = &place.ticket.kind {
                    unsettled |= t.end_sleep_if_due();
                }
            }
        }
        unsettled
    }

    /// The driver, on the model's main thread: `racing` steps at once (racing with the
    /// threads), then a step each time every thread is finished or asleep on an undecided
    /// place, past the instant it sleeps towards, until all have finished. A thread whose place was decided is awake, so the
    /// driver waits for it: a lost wakeup leaves it waiting, and loom reports the deadlock.
    fn drive(&self, racing: usize, threads: Vec<loom::thread::JoinHandle<()>>) {
        for _ in 0..racing {
            self.advance();
        }
        let mut idle_steps = 0;
        loop {
            let mut rec = self.record.lock();
            while rec.busy > 0
                || rec
                    .asleep
                    .iter()
                    .any(|p| p.ticket.state() != WaiterState::Waiting)
            {
                self.changed.wait(&mut rec);
            }
            if rec.finished == self.threads {
                break;
            }
            if self.end_due_sleeps(&rec) {
                drop(rec);
                loom::thread::yield_now();
                continue;
            }
            assert!(
                idle_steps < STUCK_AFTER,
                "every thread has slept for {STUCK_AFTER} steps: {:?}",
                rec.calls
            );
            idle_steps += 1;
            self.step(&rec);
        }
        for t in threads {
            t.join().expect("a model thread panicked");
        }
        self.check();
    }

    /// The properties every schedule keeps.
    fn check(&self) {
        let rec = self.record.lock();
        let calls = &rec.calls;
        // A call counts in every window (t - WINDOW, t] that meets [admitted, released];
        // the count is largest in a window that ends at an admission.
        for c in calls {
            let t = c.admitted;
            let used: u64 = calls
                .iter()
                .filter(|d| d.admitted <= t && d.released + WINDOW > t)
                .map(|d| d.cost)
                .sum();
            assert!(
                used <= self.calls,
                "{used} units in the window ending at {t}, more than {}: {calls:?}",
                self.calls
            );
        }
        // A queue of any costs is FIFO, and a newcomer never passes it.
        for c in calls {
            for d in calls {
                assert!(
                    c.arrival > d.arrival || c.admitted <= d.admitted,
                    "call {} was admitted after call {}, which arrived later: {calls:?}",
                    c.arrival,
                    d.arrival
                );
            }
        }
        let stats = self.limiter.stats(KEY);
        assert_eq!(
            stats.admitted_units,
            calls.iter().map(|c| c.cost).sum::<u64>(),
            "the limiter's count of admitted units against the record: {calls:?}"
        );
        assert_eq!(stats.in_flight, 0, "every hold ended");
        assert_eq!(stats.queued, 0, "every place was decided");
    }

    /// The admission instant of the call of place `arrival`, if it was admitted.
    fn admitted(&self, arrival: usize) -> Option<Nanos> {
        let rec = self.record.lock();
        rec.calls
            .iter()
            .find(|c| c.arrival == arrival)
            .map(|c| c.admitted)
    }
}

/// Starts a model thread that waits on `place`, which must be admitted.
fn spawn_wait(run: &Arc<Run>, place: Arc<Place>) -> loom::thread::JoinHandle<()> {
    spawn(run, move |run| {
        run.wait(&place).expect("admitted");
    })
}

/// Starts a model thread that runs `f` on `run`, then reports itself finished.
fn spawn(run: &Arc<Run>, f: impl FnOnce(&Run) + Send + 'static) -> loom::thread::JoinHandle<()> {
    let run = run.clone();
    loom::thread::spawn(move || {
        f(&run);
        run.done();
    })
}

#[test]
fn waiters_are_admitted_in_order_and_a_newcomer_never_passes() {
    explore(|time| {
        let run = Run::full(time, 3);
        let (first, second) = (run.place(), run.place());
        let threads = vec![
            spawn_wait(&run, first),
            spawn_wait(&run, second),
            // The queue is full until both are admitted; the record shows whether the try
            // passed them (the FIFO check).
            spawn(&run, |run| drop(run.try_acquire(1))),
        ];
        run.drive(1, threads);
        assert_eq!(
            run.admitted(1),
            Some(WINDOW),
            "the first waits for one window"
        );
        assert_eq!(run.admitted(2), Some(2 * WINDOW), "the second for two");
    });
}

#[test]
fn a_hold_counts_until_another_thread_ends_it() {
    explore(|time| {
        let run = Run::new(time, 1, 2);
        let (held, hold) = run.try_hold(1).expect("an empty bucket admits");
        let queued_hold = run.enqueue(1, None, true).unwrap();
        let plain = run.place();
        let threads = vec![
            // The hold made on the driver's thread ends on this one.
            spawn(&run, move |run| run.finish(held, hold)),
            // A hold admitted from the queue, ended by the thread that waited for it, which
            // then waits for the call queued behind it.
            spawn(&run, move |run| {
                let hold = run.wait(&queued_hold).unwrap().expect("a hold ticket");
                run.finish(queued_hold.arrival, hold);
                run.wait(&plain).unwrap();
            }),
        ];
        run.drive(2, threads);
    });
}

#[test]
fn a_cancelled_waiter_gives_up_its_place_and_wakes_the_next() {
    explore(|time| {
        let run = Run::full(time, 3);
        let (first, second) = (run.place(), run.place());
        let cancelled = Arc::new(Mutex::new(None));
        let (waiter, canceller, result) = (first.clone(), first.clone(), cancelled.clone());
        let waited = Arc::new(Mutex::new(None));
        let waited_by = waited.clone();
        let threads = vec![
            spawn(&run, move |run| {
                *waited_by.lock() = Some(run.wait(&waiter).map(drop));
            }),
            spawn(&run, move |_| {
                *result.lock() = Some(canceller.ticket.cancel());
            }),
            spawn_wait(&run, second),
        ];
        run.drive(2, threads);
        let cancelled = cancelled.lock().expect("the cancel ran");
        let waited = waited.lock().clone().expect("the wait returned");
        if cancelled {
            assert_eq!(waited, Err(Error::Cancelled));
            // The canceller ran before the clock passed half a window (the driver waits
            // for it), so the place it gave up lets the second in at the first's instant.
            assert_eq!(run.admitted(2), Some(WINDOW), "the next moved up");
        } else {
            assert_eq!(waited, Ok(()), "a cancel that failed leaves the admission");
            assert_eq!(run.admitted(2), Some(2 * WINDOW));
        }
    });
}

#[test]
fn a_waiter_past_its_deadline_leaves_and_the_next_moves() {
    explore(|time| {
        let run = Run::full(time, 2);
        let first = run.place();
        // Behind the first, it could be admitted at two windows: past its deadline.
        let late = run.enqueue(1, Some(WINDOW + STEP), false).unwrap();
        let third = run.place();
        let threads = vec![
            // One thread waits for two places in turn.
            spawn(&run, move |run| {
                run.wait(&first).unwrap();
                run.wait(&third).unwrap();
            }),
            spawn(&run, move |run| {
                let waited = run.wait(&late).map(drop);
                assert!(matches!(waited, Err(Error::Timeout { .. })), "{waited:?}");
            }),
        ];
        run.drive(1, threads);
        assert_eq!(run.admitted(1), Some(WINDOW));
        assert_eq!(run.admitted(3), Some(2 * WINDOW), "the place was given up");
    });
}

#[test]
fn close_wakes_every_waiter_with_closed() {
    explore(|time| {
        let run = Run::full(time, 3);
        let waiter = |run: &Run| match run.enqueue(1, None, false) {
            // A place taken before the close: admitted first, or woken by the close.
            Ok(place) => match run.wait(&place) {
                Ok(_) => {}
                Err(e) => {
                    assert_eq!(e, Error::Closed);
                    assert!(place.ticket.admitted().is_none());
                }
            },
            Err(e) => assert_eq!(e, Error::Closed),
        };
        let threads = vec![
            spawn(&run, waiter),
            spawn(&run, waiter),
            spawn(&run, |run| {
                run.limiter.close();
                assert_eq!(run.try_acquire(1), Err(Error::Closed));
            }),
        ];
        run.drive(1, threads);
        assert!(matches!(run.enqueue(1, None, false), Err(Error::Closed)));
    });
}

#[test]
fn a_release_admits_one_waiter_while_another_keeps_the_time() {
    explore(|time| {
        let run = Run::new(time, 1, 2);
        let (held, hold) = run.try_hold(1).expect("an empty bucket admits");
        let (first, second) = (run.place(), run.place());
        let threads = vec![
            // The head's owner ends a hold first: until it waits, the other thread keeps
            // the head's time, then either may, and the one admitted leaves the other
            // to keep the time of the next head.
            spawn(&run, move |run| {
                run.finish(held, hold);
                run.wait(&first).unwrap();
            }),
            spawn_wait(&run, second),
        ];
        run.drive(1, threads);
        let first = run.admitted(1).expect("the first was admitted");
        assert_eq!(run.admitted(2), Some(first + WINDOW), "one window later");
    });
}

#[test]
fn a_batch_released_at_once_leaves_the_next_one_watched() {
    explore(|time| {
        let run = Run::new(time, 2, 3);
        run.try_acquire(1).expect("an empty bucket admits");
        run.try_acquire(1).expect("a bucket of two admits two");
        let places = [run.place(), run.place(), run.place()];
        let threads = places.iter().map(|p| spawn_wait(&run, p.clone())).collect();
        run.drive(0, threads);
        assert_eq!(
            run.admitted(2),
            Some(WINDOW),
            "two leave the window at once"
        );
        assert_eq!(run.admitted(3), Some(WINDOW));
        assert_eq!(
            run.admitted(4),
            Some(2 * WINDOW),
            "the third a window later"
        );
    });
}

#[test]
fn a_head_that_leaves_wakes_a_timer_that_sleeps_too_long() {
    explore(|time| {
        let run = Run::new(time, 2, 2);
        run.try_acquire(1).expect("an empty bucket admits");
        run.advance();
        run.try_acquire(1).expect("a bucket of two admits two");
        // Both units must leave the window before the first place: at 15. The second,
        // of one unit, waits for it with the head's time, until the first is given up:
        // then its own instant, 10, comes first.
        let big = run.enqueue(2, None, false).unwrap();
        let small = run.place();
        let threads = vec![
            spawn_wait(&run, small),
            spawn(&run, move |_| assert!(big.ticket.cancel())),
        ];
        run.drive(0, threads);
        assert_eq!(run.admitted(3), Some(WINDOW), "admitted when its unit left");
    });
}
