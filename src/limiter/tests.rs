use super::*;
use bucket::WaiterState;
use proptest::prelude::*;
use std::thread;
use std::time::Instant;

const MS: u64 = 1_000_000;

fn manual(rates: &[(u32, u64)]) -> (Limiter, ManualClock) {
    let clock = ManualClock::new();
    let mut b = Limiter::builder().clock(Arc::new(clock.clone()));
    for &(c, ms) in rates {
        b = b.rate(Rate::new(c, Duration::from_millis(ms)));
    }
    (b.build().unwrap(), clock)
}

/// Waits in real time (bounded) until `f` holds; the manual clock's wakes are asynchronous.
fn eventually(f: impl Fn() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "condition not reached"
        );
        thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn try_acquire_admits_up_to_the_limit_and_reports_the_wait() {
    let (l, clock) = manual(&[(3, 100)]);
    for _ in 0..3 {
        l.try_acquire("k", 1).unwrap();
    }
    assert_eq!(
        l.try_acquire("k", 1),
        Err(Error::WouldBlock {
            wait: Duration::from_millis(100)
        })
    );
    clock.advance(Duration::from_millis(100));
    l.try_acquire("k", 1).unwrap();
    let s = l.stats("k");
    assert_eq!((s.admitted_calls, s.refusals), (4, 1));
    assert_eq!(
        s.windows[0].used, 1,
        "three units left the window at 100 ms"
    );
}

#[test]
fn wait_time_takes_nothing() {
    let (l, clock) = manual(&[(2, 100)]);
    assert_eq!(l.wait_time("k", 1), Ok(Duration::ZERO));
    l.try_acquire("k", 2).unwrap();
    clock.advance(Duration::from_millis(30));
    assert_eq!(l.wait_time("k", 1), Ok(Duration::from_millis(70)));
    let _t = l.enqueue("k", 2, None).unwrap();
    assert_eq!(
        l.wait_time("k", 1),
        Ok(Duration::from_millis(170)),
        "behind the queue"
    );
    assert_eq!(l.stats("k").admitted_calls, 1);
    assert!(matches!(
        l.wait_time("k", 3),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn rates_and_costs_are_capped_at_the_maximum() {
    // A rate of u32::MAX calls let one call of cost 2^30 allocate 8 GiB of log.
    let over = Rate::new(MAX_CALLS + 1, Duration::from_secs(60));
    let e = Limiter::builder().rate(over).build().unwrap_err();
    assert!(
        matches!(&e, Error::InvalidArgument(m) if m.contains(&MAX_CALLS.to_string())),
        "{e}"
    );
    let (l, _) = manual(&[(MAX_CALLS, 60_000)]);
    assert!(matches!(
        l.set_rates("k", &[over]),
        Err(Error::InvalidArgument(_))
    ));
    for cost in [MAX_CALLS + 1, u32::MAX] {
        assert!(matches!(
            l.try_acquire("k", cost),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            l.hold("k", cost, None),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            l.enqueue("k", cost, None),
            Err(Error::InvalidArgument(_))
        ));
    }
    l.try_acquire("k", MAX_CALLS).unwrap();
    assert_eq!(l.stats("k").admitted_units, u64::from(MAX_CALLS));
}

#[test]
fn a_call_of_the_largest_cost_is_logged_at_once() {
    let (l, clock) = manual(&[(MAX_CALLS, 60_000), (MAX_CALLS, 3_600_000)]);
    let started = Instant::now();
    for i in 0..8 {
        l.try_acquire(&format!("k{i}"), MAX_CALLS).unwrap();
    }
    println!(
        "8 calls of cost {MAX_CALLS}: {:?} (figures, not a limit)",
        started.elapsed()
    );
    clock.advance(Duration::from_secs(59));
    assert_eq!(
        l.try_acquire("k0", 1),
        Err(Error::WouldBlock {
            wait: Duration::from_secs(3541)
        }),
        "the hour's window is full until its units leave together"
    );
    clock.advance(Duration::from_secs(3541));
    l.try_acquire("k0", MAX_CALLS).unwrap();
    assert_eq!(l.stats("k0").admitted_units, 2 * u64::from(MAX_CALLS));
}

#[test]
fn bad_arguments_are_refused() {
    let (l, _) = manual(&[(5, 100), (3, 1000)]);
    assert!(matches!(
        l.try_acquire("k", 0),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        l.try_acquire("k", 4),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        l.acquire("k", 4, None),
        Err(Error::InvalidArgument(_))
    ));
    l.try_acquire("k", 3).unwrap();
    assert!(Limiter::builder().build().is_err(), "no rates");
    assert!(
        Limiter::builder()
            .rate(Rate::new(0, Duration::from_secs(1)))
            .build()
            .is_err()
    );
    assert!(
        Limiter::builder()
            .rate(Rate::new(1, Duration::ZERO))
            .build()
            .is_err()
    );
    assert!(l.set_rates("x", &[]).is_err());
}

#[test]
fn blocking_waits_follow_the_manual_clock_in_fifo_order() {
    let (l, clock) = manual(&[(1, 100)]);
    l.try_acquire("k", 1).unwrap();
    let order = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let mut threads = Vec::new();
    for i in 0..4 {
        let (l2, order) = (l.clone(), order.clone());
        threads.push(thread::spawn(move || {
            l2.acquire("k", 1, None).unwrap();
            order.lock().push(i);
        }));
        // Let each thread take its place before the next arrives.
        eventually(|| l.stats("k").queued == i + 1);
    }
    for n in 1..=4 {
        clock.advance(Duration::from_millis(100));
        eventually(|| order.lock().len() == n);
        assert_eq!(l.stats("k").windows[0].used, 1);
    }
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(*order.lock(), vec![0, 1, 2, 3]);
    let s = l.stats("k");
    assert_eq!(s.waited_calls, 4);
    assert_eq!(s.longest_wait_ns, 400 * MS);
}

#[test]
fn a_newcomer_never_passes_the_queue() {
    let (l, clock) = manual(&[(2, 100)]);
    l.try_acquire("k", 2).unwrap();
    let big = l.enqueue("k", 2, None).unwrap();
    clock.advance(Duration::from_millis(50));
    // One unit would not fit anyway, but even when it would, the queue goes first.
    assert!(
        matches!(l.try_acquire("k", 1), Err(Error::WouldBlock { wait }) if wait == Duration::from_millis(150))
    );
    clock.advance(Duration::from_millis(50));
    assert_eq!(big.poll(), Ok(Wait::Admitted));
}

#[test]
fn an_unmeetable_deadline_fails_at_once() {
    let (l, _clock) = manual(&[(1, 1000)]);
    l.try_acquire("k", 1).unwrap();
    let started = Instant::now();
    assert_eq!(
        l.acquire("k", 1, Some(Duration::from_millis(500))),
        Err(Error::Timeout {
            frees_in: Some(Duration::from_secs(1))
        })
    );
    let e = l
        .acquire("k", 1, Some(Duration::from_millis(500)))
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "the deadline cannot be met: the quota frees a slot in 1.0 s"
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(l.stats("k").timeouts, 2);
}

#[test]
fn a_queued_waiter_times_out_at_its_deadline_and_the_rest_keep_their_order() {
    let (l, clock) = manual(&[(1, 100)]);
    l.try_acquire("k", 1).unwrap();
    let a = l.enqueue("k", 1, None).unwrap();
    let b = l.enqueue("k", 1, Some(Duration::from_millis(150))).unwrap();
    let c = l.enqueue("k", 1, None).unwrap();
    clock.advance(Duration::from_millis(100));
    assert_eq!(a.poll(), Ok(Wait::Admitted));
    assert_eq!(c.poll(), Ok(Wait::Pending));
    // b is now head and needs 200 ms > its deadline of 150 ms: it fails now.
    assert_eq!(
        b.poll(),
        Err(Error::Timeout {
            frees_in: Some(Duration::from_millis(100))
        })
    );
    clock.advance(Duration::from_millis(100));
    assert_eq!(c.poll(), Ok(Wait::Admitted));
}

#[test]
fn pause_holds_everyone_and_only_extends() {
    let (l, clock) = manual(&[(10, 100)]);
    l.pause("k", Duration::from_millis(300)).unwrap();
    l.pause("k", Duration::from_millis(100)).unwrap();
    assert_eq!(
        l.try_acquire("k", 1),
        Err(Error::WouldBlock {
            wait: Duration::from_millis(300)
        })
    );
    let t = l.enqueue("k", 1, None).unwrap();
    clock.advance(Duration::from_millis(299));
    assert_eq!(t.poll(), Ok(Wait::Pending));
    clock.advance(Duration::from_millis(1));
    assert_eq!(t.poll(), Ok(Wait::Admitted));
    assert_eq!(l.stats("k").pauses, 2);
}

#[test]
fn cancel_wakes_the_waiter_and_keeps_the_others() {
    let (l, clock) = manual(&[(1, 100)]);
    l.try_acquire("k", 1).unwrap();
    let head = Arc::new(l.enqueue("k", 1, None).unwrap());
    let next = l.enqueue("k", 1, None).unwrap();
    let h = head.clone();
    let waiting = thread::spawn(move || h.wait(None));
    thread::sleep(Duration::from_millis(20));
    let started = Instant::now();
    assert!(head.cancel());
    assert_eq!(waiting.join().unwrap(), Err(Error::Cancelled));
    assert!(started.elapsed() < Duration::from_millis(200));
    assert!(!head.cancel(), "cancelling twice does nothing");
    clock.advance(Duration::from_millis(100));
    assert_eq!(next.poll(), Ok(Wait::Admitted));
    let s = l.stats("k");
    assert_eq!((s.admitted_calls, s.cancellations), (2, 1));
}

#[test]
fn a_dropped_ticket_gives_up_its_place() {
    let (l, clock) = manual(&[(1, 100)]);
    l.try_acquire("k", 1).unwrap();
    drop(l.enqueue("k", 1, None).unwrap());
    let t = l.enqueue("k", 1, None).unwrap();
    clock.advance(Duration::from_millis(100));
    assert_eq!(t.poll(), Ok(Wait::Admitted));
}

#[test]
fn close_wakes_every_waiter_and_refuses_later_calls() {
    let (l, _clock) = manual(&[(1, 100)]);
    l.try_acquire("k", 1).unwrap();
    let waiters: Vec<_> = (0..3)
        .map(|_| {
            let l = l.clone();
            thread::spawn(move || l.acquire("k", 1, None))
        })
        .collect();
    eventually(|| l.stats("k").queued == 3);
    l.close();
    for w in waiters {
        assert_eq!(w.join().unwrap(), Err(Error::Closed));
    }
    assert_eq!(l.try_acquire("k", 1), Err(Error::Closed));
    assert_eq!(l.try_acquire("new", 1), Err(Error::Closed));
    assert_eq!(l.pause("k", Duration::from_secs(1)), Err(Error::Closed));
    assert!(l.is_closed());
}

#[test]
fn waiting_in_slices_keeps_the_place() {
    let (l, clock) = manual(&[(1, 100)]);
    l.try_acquire("k", 1).unwrap();
    let t = l.enqueue("k", 1, None).unwrap();
    assert_eq!(t.wait(Some(Duration::from_millis(5))), Ok(Wait::Pending));
    assert!(matches!(
        l.try_acquire("k", 1),
        Err(Error::WouldBlock { .. })
    ));
    clock.advance(Duration::from_millis(100));
    assert_eq!(t.wait(Some(Duration::from_millis(5))), Ok(Wait::Admitted));
    assert!(t.admitted().is_some());
}

#[test]
fn buckets_are_independent_and_can_have_their_own_rates() {
    let (l, _clock) = manual(&[(1, 100)]);
    l.set_rates("hunting", &[Rate::new(3, Duration::from_millis(100))])
        .unwrap();
    l.try_acquire("a", 1).unwrap();
    l.try_acquire("b", 1).unwrap();
    for _ in 0..3 {
        l.try_acquire("hunting", 1).unwrap();
    }
    assert!(l.try_acquire("hunting", 1).is_err());
    assert_eq!(
        l.rates("hunting"),
        vec![Rate::new(3, Duration::from_millis(100))]
    );
    // Lowering the rates keeps what was admitted.
    l.set_rates("hunting", &[Rate::new(2, Duration::from_millis(100))])
        .unwrap();
    assert_eq!(l.stats("hunting").windows[0].used, 2);
    l.ensure_rates("hunting", &[Rate::new(50, Duration::from_millis(100))])
        .unwrap();
    assert_eq!(
        l.rates("hunting")[0].calls,
        2,
        "ensure_rates leaves an existing bucket alone"
    );
    let mut keys = l.keys();
    keys.sort();
    assert_eq!(keys, ["a", "b", "hunting"]);
}

#[test]
fn bucket_count_is_limited_and_idle_buckets_make_room() {
    let clock = ManualClock::new();
    let l = Limiter::builder()
        .rate(Rate::new(1, Duration::from_millis(100)))
        .max_buckets(2)
        .clock(Arc::new(clock.clone()))
        .build()
        .unwrap();
    l.try_acquire("a", 1).unwrap();
    l.try_acquire("b", 1).unwrap();
    assert_eq!(
        l.try_acquire("c", 1),
        Err(Error::TooManyBuckets { limit: 2 })
    );
    clock.advance(Duration::from_millis(100));
    l.try_acquire("c", 1).unwrap();
    let mut keys = l.keys();
    keys.sort();
    assert_eq!(keys, ["b", "c"], "the oldest idle bucket made room, alone");
    clock.advance(Duration::from_millis(100));
    assert_eq!(l.purge_idle(), 2);
}

#[test]
fn a_full_limiter_makes_room_with_bounded_work_per_new_key() {
    // Every new key on a full map once examined (and locked) every bucket under the
    // map's write lock: milliseconds per call at 65,536 buckets, for every caller.
    let n = 2000;
    let clock = ManualClock::new();
    let l = Limiter::builder()
        .rate(Rate::new(1, Duration::from_millis(100)))
        .max_buckets(n)
        .clock(Arc::new(clock.clone()))
        .build()
        .unwrap();
    for i in 0..n {
        l.try_acquire(&format!("k{i}"), 1).unwrap();
    }
    // All busy: refused, after one full sweep and then a bounded step per new key.
    let examined = || match &l.inner.backend {
        Backend::Memory(m) => m.examined(),
        Backend::Store(_) => unreachable!("a limiter without a store"),
    };
    let before = examined();
    for i in 0..n {
        assert_eq!(
            l.try_acquire(&format!("new{i}"), 1),
            Err(Error::TooManyBuckets { limit: n })
        );
    }
    let per_key = (examined() - before) as f64 / n as f64;
    assert!(per_key <= 2.0 * keymap::SWEEP_STEP as f64, "{per_key}");
    // A held bucket stays; the idle ones make room one at a time.
    clock.advance(Duration::from_millis(100));
    let _hold = l.try_hold("k0", 1).unwrap();
    let before = examined();
    for i in 0..n / 2 {
        l.try_acquire(&format!("fresh{i}"), 1).unwrap();
    }
    assert!(
        examined() - before <= 2 * n as u64,
        "{}",
        examined() - before
    );
    assert_eq!(l.keys().len(), n);
    assert!(
        l.keys().contains(&"k0".to_string()),
        "the held bucket stays"
    );
    let old = l.keys().iter().filter(|k| k.starts_with('k')).count();
    assert_eq!(old, n - n / 2, "one idle bucket made room per new key");
}

#[test]
fn margin_widens_the_windows() {
    let clock = ManualClock::new();
    let l = Limiter::builder()
        .rate(Rate::new(1, Duration::from_millis(100)))
        .margin(Duration::from_millis(25))
        .clock(Arc::new(clock.clone()))
        .build()
        .unwrap();
    l.try_acquire("k", 1).unwrap();
    clock.advance(Duration::from_millis(100));
    assert_eq!(
        l.try_acquire("k", 1),
        Err(Error::WouldBlock {
            wait: Duration::from_millis(25)
        })
    );
    assert_eq!(l.rates("k"), vec![Rate::new(1, Duration::from_millis(100))]);
}

#[test]
fn real_clock_stress_keeps_every_window() {
    // 16 threads on 50 calls / 200 ms and 120 calls / 1 s, recording admission instants.
    let l = Limiter::builder()
        .rate(Rate::new(50, Duration::from_millis(200)))
        .rate(Rate::new(120, Duration::from_millis(1000)))
        .build()
        .unwrap();
    let log = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..16)
        .map(|i| {
            let (l, log) = (l.clone(), log.clone());
            thread::spawn(move || {
                for _ in 0..15 {
                    let cost = 1 + (i % 3);
                    let a = l.acquire("k", cost, Some(Duration::from_secs(10))).unwrap();
                    log.lock().push((a.at, u64::from(cost)));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let mut log = log.lock().clone();
    log.sort();
    let units: u64 = log.iter().map(|a| a.1).sum();
    assert_eq!(l.stats("k").admitted_units, units);
    assert_windows(&log, &[(50, 200), (120, 1000)]);
}

#[test]
fn a_head_nobody_waits_on_never_stalls_the_queue() {
    let l = Limiter::builder()
        .rate(Rate::new(1, Duration::from_millis(50)))
        .build()
        .unwrap();
    l.try_acquire("k", 1).unwrap();
    let t1 = l.enqueue("k", 1, None).unwrap();
    let t2 = l.enqueue("k", 1, None).unwrap();
    let started = Instant::now();
    // Only t2 has a thread on it: it keeps the head's time and moves t1 along.
    assert_eq!(t2.wait(Some(Duration::from_secs(2))), Ok(Wait::Admitted));
    assert!(started.elapsed() < Duration::from_millis(500));
    assert!(t1.admitted().is_some());
}

#[test]
fn try_acquire_lets_the_ripe_queue_go_first_then_admits() {
    let (l, clock) = manual(&[(2, 100)]);
    l.try_acquire("k", 2).unwrap();
    let t = l.enqueue("k", 1, None).unwrap();
    clock.advance(Duration::from_millis(150));
    l.try_acquire("k", 1).unwrap();
    assert!(t.admitted().is_some());
}

#[test]
fn own_rates_survive_idle_purges_and_close() {
    let clock = ManualClock::new();
    let l = Limiter::builder()
        .rate(Rate::new(5, Duration::from_millis(100)))
        .max_buckets(2)
        .clock(Arc::new(clock.clone()))
        .build()
        .unwrap();
    l.set_rates("a", &[Rate::new(1, Duration::from_secs(10))])
        .unwrap();
    l.try_acquire("b", 1).unwrap();
    clock.advance(Duration::from_millis(200));
    assert_eq!(l.try_acquire("c", 1), Ok(()), "b was idle and made room");
    assert_eq!(l.rates("a"), vec![Rate::new(1, Duration::from_secs(10))]);
    l.close();
    assert_eq!(
        l.set_rates("a", &[Rate::new(2, Duration::from_secs(1))]),
        Err(Error::Closed)
    );
}

#[test]
fn new_rates_count_units_whatever_was_read_before() {
    let (l, clock) = manual(&[(1, 100)]);
    l.try_acquire("x", 1).unwrap();
    l.try_acquire("y", 1).unwrap();
    clock.advance(Duration::from_millis(150));
    let _ = l.stats("y"); // expires y's unit under the old window
    for k in ["x", "y"] {
        l.set_rates(k, &[Rate::new(1, Duration::from_millis(1000))])
            .unwrap();
        assert_eq!(
            l.try_acquire(k, 1),
            Err(Error::WouldBlock {
                wait: Duration::from_millis(850)
            }),
            "{k}"
        );
    }
}

#[test]
fn new_rates_wake_the_waiting_head() {
    let l = Limiter::builder()
        .rate(Rate::new(1, Duration::from_millis(1000)))
        .build()
        .unwrap();
    l.try_acquire("k", 1).unwrap();
    let l2 = l.clone();
    let started = Instant::now();
    let waiter = thread::spawn(move || l2.acquire("k", 1, None));
    thread::sleep(Duration::from_millis(20));
    l.set_rates("k", &[Rate::new(1, Duration::from_millis(200))])
        .unwrap();
    waiter.join().unwrap().unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(190) && waited < Duration::from_millis(700),
        "{waited:?}"
    );
}

// ---- property tests over random schedules with the manual clock ----

#[derive(Debug, Clone)]
enum Op {
    Try(u32),
    Enqueue(u32, Option<u64>),
    Poll(usize),
    Cancel(usize),
    Pause(u64),
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1u32..4).prop_map(Op::Try),
        3 => (1u32..4, proptest::option::of(0u64..400)).prop_map(|(c, d)| Op::Enqueue(c, d)),
        4 => (0usize..64).prop_map(Op::Poll),
        1 => (0usize..64).prop_map(Op::Cancel),
        1 => (0u64..150).prop_map(Op::Pause),
        4 => (0u64..120).prop_map(Op::Advance),
    ]
}

/// Checks that no window of any rate ever held more than its calls.
fn assert_windows(admissions: &[(u64, u64)], rates: &[(u32, u64)]) {
    for &(calls, window_ms) in rates {
        let w = window_ms * MS;
        for (i, &(t, _)) in admissions.iter().enumerate() {
            // Units admitted in (t - w, t].
            let used: u64 = admissions[..=i]
                .iter()
                .filter(|&&(u, _)| u + w > t)
                .map(|&(_, c)| c)
                .sum();
            assert!(
                used <= u64::from(calls),
                "{used} units in a window of {calls}/{window_ms}ms at {t}"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn schedules_keep_every_invariant(ops in proptest::collection::vec(op(), 1..120)) {
        let rates = [(4u32, 100u64), (7, 300)];
        let (l, clock) = manual(&rates);
        let mut tickets: Vec<(Ticket, u64, u32, Option<u64>)> = Vec::new(); // ticket, seq, cost, deadline
        let mut admissions: Vec<(u64, u64)> = Vec::new();
        let mut admitted_seqs: Vec<u64> = Vec::new();
        let mut seen_admitted = std::collections::HashSet::new();
        for (seq, op) in ops.into_iter().enumerate() {
            let seq = seq as u64;
            match op {
                Op::Try(c) if l.try_acquire("k", c).is_ok() => {
                    admissions.push((l.now(), u64::from(c)));
                }
                Op::Enqueue(c, d) => {
                    let deadline = d.map(|d| l.now() + d * MS);
                    let t = l.enqueue("k", c, d.map(Duration::from_millis)).unwrap();
                    tickets.push((t, seq, c, deadline));
                }
                Op::Poll(i) if !tickets.is_empty() => { let _ = tickets[i % tickets.len()].0.poll(); }
                Op::Cancel(i) if !tickets.is_empty() => { tickets[i % tickets.len()].0.cancel(); }
                Op::Pause(ms) => l.pause("k", Duration::from_millis(ms)).unwrap(),
                Op::Advance(ms) => clock.advance(Duration::from_millis(ms)),
                _ => {}
            }
            // Record newly admitted tickets with their admission instants.
            for (t, s, c, deadline) in &tickets {
                if let Some(a) = t.admitted() {
                    if seen_admitted.insert(*s) {
                        let at = a.at;
                        prop_assert!(deadline.is_none_or(|d| at <= d), "admitted after its deadline");
                        admissions.push((at, u64::from(*c)));
                        admitted_seqs.push(*s);
                    }
                }
            }
        }
        // Drain: with enough time, every ticket without a deadline is admitted.
        for _ in 0..200 {
            clock.advance(Duration::from_millis(50));
            for (t, s, c, _) in &tickets {
                let _ = t.poll();
                if let Some(a) = t.admitted().filter(|_| seen_admitted.insert(*s)) {
                    admissions.push((a.at, u64::from(*c)));
                    admitted_seqs.push(*s);
                }
            }
        }
        for (t, _, _, deadline) in &tickets {
            let st = t.state();
            if deadline.is_none() {
                prop_assert!(st == WaiterState::Admitted || st == WaiterState::Cancelled, "{st:?}");
            }
            prop_assert!(st != WaiterState::Waiting);
        }
        // FIFO: tickets were admitted in the order they were enqueued.
        let mut sorted = admitted_seqs.clone();
        sorted.sort();
        prop_assert_eq!(&admitted_seqs, &sorted);
        // No lost or double permits: the bucket counted exactly what was admitted.
        admissions.sort();
        let units: u64 = admissions.iter().map(|a| a.1).sum();
        let s = l.stats("k");
        prop_assert_eq!(s.admitted_units, units);
        prop_assert_eq!(s.admitted_calls, admissions.len() as u64);
        assert_windows(&admissions, &rates);
    }
}

// ---- holds: units count in flight until their end, then from their end ----

fn manual_with_lease(rates: &[(u32, u64)], lease_ms: u64) -> (Limiter, ManualClock) {
    let clock = ManualClock::new();
    let mut b = Limiter::builder()
        .clock(Arc::new(clock.clone()))
        .hold_lease(Duration::from_millis(lease_ms));
    for &(c, ms) in rates {
        b = b.rate(Rate::new(c, Duration::from_millis(ms)));
    }
    (b.build().unwrap(), clock)
}

#[test]
fn a_hold_counts_in_flight_and_then_from_its_end() {
    let (l, clock) = manual(&[(2, 100)]);
    let a = l.try_hold("k", 1).unwrap();
    let b = l.hold("k", 1, Some(Duration::ZERO)).unwrap();
    assert_eq!(l.stats("k").in_flight, 2);
    // Nothing fits while both are in flight, and the wait is a lower bound: one window.
    assert_eq!(
        l.try_acquire("k", 1),
        Err(Error::WouldBlock {
            wait: Duration::from_millis(100)
        })
    );
    clock.advance(Duration::from_millis(40));
    a.finish();
    clock.advance(Duration::from_millis(30));
    // The unit ended at 40 counts until 140, however early it was admitted.
    assert_eq!(
        l.try_acquire("k", 1),
        Err(Error::WouldBlock {
            wait: Duration::from_millis(70)
        })
    );
    drop(b);
    let s = l.stats("k");
    assert_eq!((s.in_flight, s.windows[0].used), (0, 2));
    clock.advance(Duration::from_millis(70));
    l.try_acquire("k", 1).unwrap();
    clock.advance(Duration::from_millis(20));
    assert!(
        l.try_acquire("k", 1).is_err(),
        "the unit ended at 70 counts until 170"
    );
    clock.advance(Duration::from_millis(10));
    l.try_acquire("k", 1).unwrap();
}

#[test]
fn a_waiter_behind_a_hold_is_woken_when_it_ends() {
    let l = Limiter::builder()
        .rate(Rate::new(1, Duration::from_millis(100)))
        .build()
        .unwrap();
    let h = l.try_hold("k", 1).unwrap();
    let l2 = l.clone();
    let started = Instant::now();
    let waiter = thread::spawn(move || l2.acquire("k", 1, Some(Duration::from_secs(5))));
    thread::sleep(Duration::from_millis(150));
    // Ended after 150 ms: the waiter is admitted 100 ms later, not 100 ms after admission.
    h.finish();
    waiter.join().unwrap().unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(245) && waited < Duration::from_millis(1000),
        "{waited:?}"
    );
}

#[test]
fn a_deadline_behind_holds_fails_at_once_when_a_window_cannot_pass_in_time() {
    let (l, _clock) = manual(&[(1, 100)]);
    let _h = l.try_hold("k", 1).unwrap();
    // The hold ends at the earliest now, and its unit then counts for a window.
    assert_eq!(
        l.acquire("k", 1, Some(Duration::from_millis(50))),
        Err(Error::Timeout {
            frees_in: Some(Duration::from_millis(100))
        })
    );
    assert_eq!(l.stats("k").timeouts, 1);
}

#[test]
fn finish_at_counts_from_an_earlier_instant_within_the_hold() {
    let (l, clock) = manual(&[(1, 100)]);
    clock.advance(Duration::from_millis(10));
    let h = l.try_hold("k", 1).unwrap();
    clock.advance(Duration::from_millis(500));
    // A server that certainly counted the call by 30 lets the slot free at 130.
    h.finish_at(30 * MS);
    assert_eq!(l.try_acquire("k", 1), Ok(()));
    assert!(
        matches!(l.try_hold("k", 1), Err(Error::WouldBlock { .. })),
        "the plain admission at 510 counts"
    );
    clock.advance(Duration::from_millis(100));
    let h = l.try_hold("k", 1).unwrap();
    // An instant before the admission is read as the admission.
    h.finish_at(0);
    assert!(l.try_acquire("k", 1).is_err());
    clock.advance(Duration::from_millis(100));
    assert_eq!(l.try_acquire("k", 1), Ok(()));
}

#[test]
fn a_hold_past_its_lease_is_counted_from_the_lease_end() {
    let (l, clock) = manual_with_lease(&[(1, 100)], 300);
    let h = l.try_hold("k", 1).unwrap();
    clock.advance(Duration::from_millis(350));
    // Counted from 300 until 400, even though it never ended.
    assert!(l.try_acquire("k", 1).is_err());
    let s = l.stats("k");
    assert_eq!((s.in_flight, s.expired_holds), (0, 1));
    clock.advance(Duration::from_millis(50));
    l.try_acquire("k", 1).unwrap();
    // Its late end changes nothing.
    h.finish();
    assert_eq!(l.stats("k").windows[0].used, 1);
    assert!(matches!(
        l.hold_with_lease("k", 1, None, Duration::ZERO),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        l.hold_with_lease("k", 1, None, MAX_HOLD_LEASE + Duration::from_secs(1)),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn hold_tickets_wait_in_fifo_order_and_hand_out_their_hold_once() {
    let (l, clock) = manual(&[(1, 100)]);
    l.try_acquire("k", 1).unwrap();
    let a = l.enqueue_hold("k", 1, None, None).unwrap();
    let plain = l.enqueue("k", 1, None).unwrap();
    assert!(a.is_hold() && !plain.is_hold());
    assert!(
        matches!(a.hold(), Err(Error::InvalidArgument(_))),
        "not admitted yet"
    );
    clock.advance(Duration::from_millis(100));
    assert_eq!(a.poll(), Ok(Wait::Admitted));
    let h = a.hold().unwrap();
    assert!(
        matches!(a.hold(), Err(Error::InvalidArgument(_))),
        "taken once"
    );
    assert!(matches!(plain.hold(), Err(Error::InvalidArgument(_))));
    clock.advance(Duration::from_millis(500));
    assert_eq!(
        plain.poll(),
        Ok(Wait::Pending),
        "the hold is still in flight"
    );
    h.finish();
    clock.advance(Duration::from_millis(100));
    assert_eq!(plain.poll(), Ok(Wait::Admitted));
    // An admitted hold ticket dropped before its hold was taken ends the hold.
    clock.advance(Duration::from_millis(100));
    let t = l.enqueue_hold("k", 1, None, None).unwrap();
    assert_eq!(t.poll(), Ok(Wait::Admitted));
    assert_eq!(l.stats("k").in_flight, 1);
    drop(t);
    assert_eq!(l.stats("k").in_flight, 0);
}

#[derive(Debug, Clone)]
enum HoldOp {
    Try(u32),
    TryHold(u32),
    EnqueueHold(u32, Option<u64>),
    Poll(usize),
    Cancel(usize),
    Finish(usize, u64),
    Pause(u64),
    Advance(u64),
}

fn hold_op() -> impl Strategy<Value = HoldOp> {
    prop_oneof![
        2 => (1u32..3).prop_map(HoldOp::Try),
        3 => (1u32..3).prop_map(HoldOp::TryHold),
        3 => (1u32..3, proptest::option::of(0u64..400)).prop_map(|(c, d)| HoldOp::EnqueueHold(c, d)),
        3 => (0usize..64).prop_map(HoldOp::Poll),
        1 => (0usize..64).prop_map(HoldOp::Cancel),
        4 => (0usize..64, 0u64..200).prop_map(|(i, back)| HoldOp::Finish(i, back)),
        1 => (0u64..150).prop_map(HoldOp::Pause),
        4 => (0u64..120).prop_map(HoldOp::Advance),
    ]
}

/// A hold the schedule made: its cost, admission and lease's end, and once ended the
/// instant its units count from (the latest instant the server may have counted it).
struct Held {
    hold: Option<Hold>,
    cost: u64,
    since: u64,
    expiry: u64,
    end: Option<u64>,
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Random schedules of plain calls and of holds that end at random later instants (or
    /// never, until their lease): at every step, the units that ended inside any window,
    /// by their end instants, plus every unit in flight, stay within the rate; tickets are
    /// admitted in FIFO order; nothing is lost or counted twice.
    #[test]
    fn schedules_of_holds_keep_every_window_from_end_instants(
        ops in proptest::collection::vec(hold_op(), 1..150)
    ) {
        let rates = [(4u32, 100u64), (7, 300)];
        let lease = 700;
        let (l, clock) = manual_with_lease(&rates, lease);
        let mut tickets: Vec<(Ticket, u64, u32)> = Vec::new();
        let mut holds: Vec<Held> = Vec::new();
        let mut plain: Vec<(u64, u64)> = Vec::new();
        let mut admitted_seqs: Vec<u64> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut admitted_units = 0u64;
        for (seq, op) in ops.into_iter().enumerate() {
            let seq = seq as u64;
            let now = l.now();
            match op {
                HoldOp::Try(c) if l.try_acquire("k", c).is_ok() => {
                    plain.push((now, u64::from(c)));
                    admitted_units += u64::from(c);
                }
                HoldOp::TryHold(c) => {
                    if let Ok(h) = l.try_hold("k", c) {
                        admitted_units += u64::from(c);
                        holds.push(Held {
                            hold: Some(h),
                            cost: u64::from(c),
                            since: now,
                            expiry: now + lease * MS,
                            end: None,
                        });
                    }
                }
                HoldOp::EnqueueHold(c, d) => {
                    let t = l.enqueue_hold("k", c, d.map(Duration::from_millis), None).unwrap();
                    tickets.push((t, seq, c));
                }
                HoldOp::Poll(i) if !tickets.is_empty() => { let _ = tickets[i % tickets.len()].0.poll(); }
                HoldOp::Cancel(i) if !tickets.is_empty() => { tickets[i % tickets.len()].0.cancel(); }
                HoldOp::Finish(i, back) if !holds.is_empty() => {
                    let n = holds.len();
                    let h = &mut holds[i % n];
                    if let Some(hold) = h.hold.take() {
                        let at = now.saturating_sub(back * MS);
                        hold.finish_at(at);
                        if h.end.is_none() {
                            h.end = Some(at.clamp(h.since, now));
                        }
                    }
                }
                HoldOp::Pause(ms) => l.pause("k", Duration::from_millis(ms)).unwrap(),
                HoldOp::Advance(ms) => clock.advance(Duration::from_millis(ms)),
                _ => {}
            }
            let now = l.now();
            for (t, s, c) in &tickets {
                if let Some(a) = t.admitted() {
                    if seen.insert(*s) {
                        admitted_seqs.push(*s);
                        admitted_units += u64::from(*c);
                        holds.push(Held {
                            hold: Some(t.hold().unwrap()),
                            cost: u64::from(*c),
                            since: a.at,
                            expiry: a.at + lease * MS,
                            end: None,
                        });
                    }
                }
            }
            // Holds not ended within their lease end at its end.
            for h in &mut holds {
                if h.end.is_none() && h.expiry <= now {
                    h.end = Some(h.expiry);
                }
            }
            let in_flight: u64 = holds.iter().filter(|h| h.end.is_none()).map(|h| h.cost).sum();
            prop_assert_eq!(l.stats("k").in_flight, in_flight);
            for &(calls, window_ms) in &rates {
                let w = window_ms * MS;
                let ended: u64 = plain
                    .iter()
                    .map(|&(t, c)| (t, c))
                    .chain(holds.iter().filter_map(|h| h.end.map(|e| (e, h.cost))))
                    .filter(|&(t, _)| t + w > now)
                    .map(|(_, c)| c)
                    .sum();
                prop_assert!(
                    ended + in_flight <= u64::from(calls),
                    "{} ended and {} in flight in {}/{}ms at {}", ended, in_flight, calls, window_ms, now
                );
            }
        }
        // Drain: every hold ends, and every ticket without a deadline is then admitted.
        for h in &mut holds {
            if let Some(hold) = h.hold.take() {
                hold.finish();
            }
        }
        for _ in 0..300 {
            clock.advance(Duration::from_millis(50));
            for (t, s, c) in &tickets {
                let _ = t.poll();
                if t.admitted().is_some() && seen.insert(*s) {
                    admitted_seqs.push(*s);
                    admitted_units += u64::from(*c);
                    t.hold().unwrap().finish();
                }
            }
        }
        for (t, _, _) in &tickets {
            prop_assert!(t.state() != WaiterState::Waiting);
        }
        let mut sorted = admitted_seqs.clone();
        sorted.sort();
        prop_assert_eq!(&admitted_seqs, &sorted);
        let s = l.stats("k");
        prop_assert_eq!(s.admitted_units, admitted_units);
        prop_assert_eq!(s.in_flight, 0);
    }
}
