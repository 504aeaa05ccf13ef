//! The shared bucket's tests.

use super::*;
use proptest::prelude::*;

const MS: Nanos = 1_000_000;

fn win(calls: u64, ms: u64) -> Window {
    Window {
        calls,
        window_ns: ms * MS,
    }
}

fn wait_ms(v: Verdict) -> u64 {
    match v {
        Verdict::Wait(d) => d.as_millis() as u64,
        Verdict::Admitted => panic!("admitted"),
    }
}

#[test]
fn try_admits_up_to_calls_then_waits_for_the_oldest_unit() {
    let w = [win(3, 100)];
    let mut b = Bucket::new();
    for t in [0, 10, 20] {
        assert_eq!(b.poll(t * MS, &w, 1, Place::Try, None), Verdict::Admitted);
    }
    assert_eq!(wait_ms(b.poll(30 * MS, &w, 1, Place::Try, None)), 70);
    assert_eq!(wait_ms(b.poll(30 * MS, &w, 2, Place::Peek, None)), 80);
    assert_eq!(
        b.poll(100 * MS, &w, 1, Place::Peek, None),
        Verdict::Wait(Duration::ZERO)
    );
    assert_eq!(b.poll(100 * MS, &w, 1, Place::Try, None), Verdict::Admitted);
    assert_eq!(b.usage(100 * MS, &w).used, vec![3]);
    assert_eq!(b.usage(105 * MS, &[win(3, 10)]).used, vec![1]);
}

#[test]
fn queue_is_fifo_with_due_instants_by_simulation() {
    let w = [win(1, 100)];
    let mut b = Bucket::new();
    assert_eq!(b.poll(0, &w, 1, Place::Try, None), Verdict::Admitted);
    // A is due at 100, B at 200, C at 300; long waits are told in full (the waiter
    // caps its own sleep), so that a deadline that cannot be met fails at once.
    assert_eq!(wait_ms(b.poll(0, &w, 1, Place::Queue { id: 1 }, None)), 100);
    assert_eq!(wait_ms(b.poll(0, &w, 1, Place::Queue { id: 2 }, None)), 200);
    assert_eq!(
        b.poll(0, &w, 1, Place::Queue { id: 3 }, None),
        Verdict::Wait(Duration::from_millis(300))
    );
    let long = [win(1, 2000)];
    assert_eq!(
        b.poll(0, &long, 1, Place::Queue { id: 3 }, None),
        Verdict::Wait(Duration::from_millis(6000))
    );
    // A newcomer lines up behind everyone, even with Try.
    assert_eq!(wait_ms(b.poll(50 * MS, &w, 1, Place::Try, None)), 350);
    // B cannot pass A, and A is admitted at its due instant.
    assert_eq!(
        wait_ms(b.poll(100 * MS, &w, 1, Place::Queue { id: 2 }, None)),
        100
    );
    assert_eq!(
        b.poll(100 * MS, &w, 1, Place::Queue { id: 1 }, None),
        Verdict::Admitted
    );
    assert_eq!(b.usage(100 * MS, &w).queued, 2);
    assert_eq!(
        wait_ms(b.poll(150 * MS, &w, 1, Place::Queue { id: 2 }, None)),
        50
    );
    assert_eq!(
        b.poll(200 * MS, &w, 1, Place::Queue { id: 2 }, None),
        Verdict::Admitted
    );
    // C leaves; the queue is empty and a Try waits only for the window.
    b.leave(200 * MS, 3);
    b.leave(200 * MS, 42);
    assert_eq!(b.usage(200 * MS, &w).queued, 0);
    assert_eq!(wait_ms(b.poll(250 * MS, &w, 1, Place::Try, None)), 50);
}

#[test]
fn a_dead_waiter_loses_its_place_after_its_lease() {
    let w = [win(1, 100)];
    let mut b = Bucket::new();
    b.poll(0, &w, 1, Place::Try, None);
    assert_eq!(wait_ms(b.poll(0, &w, 1, Place::Queue { id: 7 }, None)), 100);
    assert_eq!(wait_ms(b.poll(0, &w, 1, Place::Queue { id: 8 }, None)), 200);
    // Waiter 7 never comes back; its lease runs to 100 ms + LEASE.
    let lease = nanos(LEASE);
    let at = 100 * MS + lease;
    assert_eq!(b.usage(at, &w).queued, 2, "the lease holds up to its end");
    assert_eq!(b.usage(at + 1, &w).queued, 1, "then the place is lost");
    assert_eq!(
        b.poll(at + 1, &w, 1, Place::Queue { id: 8 }, None),
        Verdict::Admitted
    );
}

#[test]
fn pauses_only_extend_and_hold_everything() {
    let w = [win(10, 100)];
    let mut b = Bucket::new();
    b.pause(0, Duration::from_millis(500));
    b.pause(0, Duration::from_millis(200));
    assert_eq!(wait_ms(b.poll(100 * MS, &w, 1, Place::Try, None)), 400);
    assert_eq!(
        wait_ms(b.poll(100 * MS, &w, 1, Place::Queue { id: 1 }, None)),
        400
    );
    let u = b.usage(100 * MS, &w);
    assert_eq!(u.paused_for, Duration::from_millis(400));
    assert_eq!(
        b.poll(500 * MS, &w, 1, Place::Queue { id: 1 }, None),
        Verdict::Admitted
    );
    assert_eq!(b.poll(500 * MS, &w, 1, Place::Try, None), Verdict::Admitted);
}

#[test]
fn the_clock_never_goes_back() {
    let w = [win(1, 100)];
    let mut b = Bucket::new();
    assert_eq!(
        b.poll(1000 * MS, &w, 1, Place::Try, None),
        Verdict::Admitted
    );
    // An earlier instant is read as the latest one used.
    assert_eq!(wait_ms(b.poll(0, &w, 1, Place::Try, None)), 100);
    assert_eq!(b.last_now, 1000 * MS);
}

#[test]
fn the_log_keeps_what_the_largest_rate_counts_and_drops_the_rest() {
    let mut b = Bucket::new();
    let small = [win(2, 1000)];
    assert_eq!(b.poll(0, &small, 1, Place::Try, None), Verdict::Admitted);
    assert_eq!(b.poll(MS, &small, 1, Place::Try, None), Verdict::Admitted);
    assert!(matches!(
        b.poll(2 * MS, &small, 1, Place::Try, None),
        Verdict::Wait(_)
    ));
    let big = [win(5, 1000)];
    for t in 3..6 {
        assert_eq!(b.poll(t * MS, &big, 1, Place::Try, None), Verdict::Admitted);
    }
    assert_eq!(wait_ms(b.poll(6 * MS, &big, 1, Place::Try, None)), 994);
    assert_eq!(b.usage(6 * MS, &big).used, vec![5]);
    assert_eq!(b.log.newest(5), Some(0));
    assert_eq!(b.log.newest(1), Some(5 * MS));
    // Past the newest 5 units, runs go; a cost is one run.
    assert_eq!(
        b.poll(1003 * MS, &big, 3, Place::Try, None),
        Verdict::Admitted
    );
    assert_eq!(b.log.len(), 3, "the runs at 4, 5 and 1003 ms: {:?}", b.log);
    // Outside the longest window, every run but the newest goes.
    assert_eq!(b.usage(2500 * MS, &big).used, vec![0]);
    assert_eq!(
        b.poll(2500 * MS, &big, 1, Place::Try, None),
        Verdict::Admitted
    );
    assert_eq!(b.log.len(), 2);
    assert_eq!(b.log.next(), 9);
}

/// A format 3 bucket: a ring of `ring` instants for `next` units, no queue or holds.
fn ring_record(last_now: Nanos, next: u64, ring: &[Nanos]) -> Vec<u8> {
    let words = [last_now, 0, next, ring.len() as u64, 0, 0];
    words
        .iter()
        .chain(ring)
        .flat_map(|v| v.to_le_bytes())
        .collect()
}

#[test]
fn a_format_3_ring_becomes_runs() {
    // Units 0..7 of a ring of 4: it holds units 3..7, unit 4 at ring[0].
    let bytes = ring_record(50 * MS, 7, &[20 * MS, 30 * MS, 30 * MS, 10 * MS]);
    let mut b = Bucket::new();
    b.decode(&bytes).unwrap();
    assert_eq!(b.log.next(), 7);
    assert_eq!(b.log.len(), 3, "units at 10, 20 and 30 (twice)");
    assert_eq!(b.log.newest(4), Some(10 * MS));
    assert_eq!(b.log.newest(2), Some(30 * MS));
    assert_eq!(b.keep_calls, 4);
    let w = [win(4, 100)];
    assert_eq!(wait_ms(b.poll(50 * MS, &w, 1, Place::Try, None)), 60);
    assert_eq!(wait_ms(b.poll(50 * MS, &w, 2, Place::Try, None)), 70);
    let mut bytes = vec![0; b.encoded_len()];
    b.encode(&mut bytes);
    let mut c = Bucket::new();
    c.decode(&bytes).unwrap();
    b.clear_changed();
    assert_eq!(b, c, "written again as runs");
    assert!(c.decode(&ring_record(0, 1, &[])).is_none(), "an empty ring");
}

/// A format 4 bucket whose log is `runs` (instant, units) for `next` units.
fn runs_record(next: u64, runs: &[(Nanos, u64)]) -> Vec<u8> {
    let mut words = vec![RUNS_TAG, 0, 0, next, 10, 0, runs.len() as u64, 0, 0];
    words.extend(runs.iter().flat_map(|&(at, n)| [at, n]));
    words.iter().flat_map(|v| v.to_le_bytes()).collect()
}

#[test]
fn malformed_runs_are_refused() {
    let mut b = Bucket::new();
    assert!(b.decode(&runs_record(3, &[(1, 1), (2, 2)])).is_some());
    assert!(
        b.decode(&runs_record(3, &[(1, 0), (2, 2)])).is_none(),
        "no units"
    );
    assert!(
        b.decode(&runs_record(3, &[(2, 1), (1, 2)])).is_none(),
        "out of order"
    );
    assert!(
        b.decode(&runs_record(3, &[(1, 1), (1, 2)])).is_none(),
        "same instant"
    );
    assert!(
        b.decode(&runs_record(3, &[(1, 2), (2, 2)])).is_none(),
        "past next"
    );
    let huge = [(1, u64::MAX), (2, u64::MAX)];
    assert!(b.decode(&runs_record(1 << 62, &huge)).is_none(), "overflow");
    let mut bytes = runs_record(3, &[(1, 1), (2, 2)]);
    bytes[4 * 8..5 * 8].copy_from_slice(&0u64.to_le_bytes());
    assert!(b.decode(&bytes).is_none(), "no calls to keep");
}

#[test]
fn encoding_round_trips() {
    let w = [win(3, 100)];
    let mut b = Bucket::new();
    b.poll(0, &w, 2, Place::Try, None);
    b.poll(MS, &w, 2, Place::Queue { id: 9 }, None);
    b.pause(MS, Duration::from_millis(5));
    let mut bytes = vec![0; b.encoded_len()];
    b.encode(&mut bytes);
    let mut c = Bucket::new();
    c.decode(&bytes).unwrap();
    b.clear_changed();
    assert_eq!(b, c);
    assert!(c.decode(&bytes[..bytes.len() - 8]).is_none());
}

fn lease(id: u64, ms: u64) -> Option<HoldLease> {
    Some(HoldLease {
        id,
        duration: Duration::from_millis(ms),
    })
}

#[test]
fn holds_count_until_they_end_and_then_from_their_end() {
    let w = [win(2, 100)];
    let mut b = Bucket::new();
    assert_eq!(
        b.poll(0, &w, 1, Place::Try, lease(1, 1000)),
        Verdict::Admitted
    );
    assert_eq!(
        b.poll(0, &w, 1, Place::Try, lease(2, 1000)),
        Verdict::Admitted
    );
    // Both in flight: nothing fits, and the wait is a lower bound of one window.
    assert_eq!(wait_ms(b.poll(30 * MS, &w, 1, Place::Try, None)), 100);
    assert_eq!(b.usage(30 * MS, &w).in_flight, 2);
    assert_eq!(b.usage(30 * MS, &w).used, vec![0]);
    // The first ends at 50: its unit counts from 50 until 150.
    b.release(50 * MS, 1, Duration::ZERO);
    assert_eq!(wait_ms(b.poll(60 * MS, &w, 1, Place::Try, None)), 90);
    b.release(70 * MS, 2, Duration::from_millis(10));
    assert_eq!(b.usage(70 * MS, &w).used, vec![2]);
    assert_eq!(wait_ms(b.poll(70 * MS, &w, 1, Place::Try, None)), 80);
    // Unknown and ended ids are ignored.
    b.release(70 * MS, 2, Duration::ZERO);
    b.release(70 * MS, 99, Duration::ZERO);
    assert_eq!(b.usage(70 * MS, &w).used, vec![2]);
    assert_eq!(b.poll(150 * MS, &w, 1, Place::Try, None), Verdict::Admitted);
}

#[test]
fn a_hold_ended_ago_counts_from_then_but_never_before_its_admission_or_a_logged_unit() {
    let w = [win(3, 100)];
    let mut b = Bucket::new();
    assert_eq!(
        b.poll(10 * MS, &w, 1, Place::Try, lease(1, 1000)),
        Verdict::Admitted
    );
    // Ended at 200 with 500 ms ago: counted from its admission at 10.
    b.release(200 * MS, 1, Duration::from_millis(500));
    assert_eq!(b.log.newest(1), Some(10 * MS));
    assert_eq!(b.poll(200 * MS, &w, 1, Place::Try, None), Verdict::Admitted);
    assert_eq!(
        b.poll(200 * MS, &w, 1, Place::Try, lease(2, 1000)),
        Verdict::Admitted
    );
    // Ended "at 150", before the unit logged at 200: logged at 200, in order.
    b.release(210 * MS, 2, Duration::from_millis(60));
    assert_eq!(b.log.newest(1), Some(200 * MS));
    assert_eq!(b.log.newest(2), Some(200 * MS));
}

#[test]
fn a_hold_whose_lease_runs_out_is_logged_at_the_lease_end() {
    let w = [win(1, 100)];
    let mut b = Bucket::new();
    assert_eq!(
        b.poll(0, &w, 1, Place::Try, lease(5, 300)),
        Verdict::Admitted
    );
    // The holder died: the hold is logged at its lease's end, 300, and counts in
    // (300, 400], so a call fits from 400 on.
    assert_eq!(b.usage(350 * MS, &w).used, vec![1]);
    assert_eq!(b.usage(350 * MS, &w).in_flight, 0);
    assert_eq!(b.poll(400 * MS, &w, 1, Place::Try, None), Verdict::Admitted);
    // Its late release changes nothing.
    b.release(410 * MS, 5, Duration::ZERO);
    assert_eq!(b.usage(410 * MS, &w).used, vec![1]);
}

#[test]
fn a_queued_hold_is_admitted_in_order_and_holds_its_units() {
    let w = [win(1, 100)];
    let mut b = Bucket::new();
    assert_eq!(
        b.poll(0, &w, 1, Place::Try, lease(1, 1000)),
        Verdict::Admitted
    );
    assert_eq!(
        wait_ms(b.poll(0, &w, 1, Place::Queue { id: 2 }, lease(2, 1000))),
        100
    );
    b.release(40 * MS, 1, Duration::ZERO);
    assert_eq!(
        wait_ms(b.poll(40 * MS, &w, 1, Place::Queue { id: 2 }, lease(2, 1000))),
        100
    );
    assert_eq!(
        b.poll(140 * MS, &w, 1, Place::Queue { id: 2 }, lease(2, 1000)),
        Verdict::Admitted
    );
    assert_eq!(b.usage(140 * MS, &w).in_flight, 1);
    let mut bytes = vec![0; b.encoded_len()];
    b.encode(&mut bytes);
    let mut c = Bucket::new();
    c.decode(&bytes).unwrap();
    b.clear_changed();
    assert_eq!(b, c, "holds survive encoding");
}

#[derive(Debug, Clone)]
enum Op {
    Try(u64),
    Queue(u64, u64),
    Leave(u64),
    Pause(u64),
    TryHold(u64, u64),
    QueueHold(u64, u64),
    Release(u64, u64),
}

fn op() -> impl Strategy<Value = (u64, Op)> {
    let op = prop_oneof![
        (1..3u64).prop_map(Op::Try),
        (0..4u64, 1..3u64).prop_map(|(id, c)| Op::Queue(id, c)),
        (0..4u64).prop_map(Op::Leave),
        (0..50u64).prop_map(Op::Pause),
        (10..14u64, 1..3u64).prop_map(|(id, c)| Op::TryHold(id, c)),
        (4..8u64, 1..3u64).prop_map(|(id, c)| Op::QueueHold(id, c)),
        (4..14u64, 0..30u64).prop_map(|(id, ago)| Op::Release(id, ago)),
    ];
    (0..40u64, op)
}

proptest! {
    #[test]
    fn no_window_ever_holds_more_than_its_calls(
        calls in 2..6u64,
        ms in 10..200u64,
        long_calls in 6..12u64,
        ops in proptest::collection::vec(op(), 1..200),
    ) {
        let windows = [win(calls, ms), win(long_calls, ms * 4)];
        let lease_ms = ms * 2;
        let mut b = Bucket::new();
        let mut now = 0;
        // Every unit by the instant its call ended (admission for plain calls), as the
        // server may have counted it then at the latest; and the holds in flight.
        let mut ended: Vec<Nanos> = Vec::new();
        let mut held: std::collections::HashMap<u64, (u64, Nanos, Nanos)> = Default::default();
        for (step, op) in ops {
            now += step * MS / 4;
            // Holds whose lease ran out end at the lease's end.
            held.retain(|_, &mut (c, _, expiry)| {
                if expiry <= now {
                    ended.extend(std::iter::repeat_n(expiry, c as usize));
                }
                expiry > now
            });
            let (v, c, hold) = match op {
                Op::Try(c) => (b.poll(now, &windows, c, Place::Try, None), c, None),
                Op::Queue(id, c) => (b.poll(now, &windows, c, Place::Queue { id }, None), c, None),
                Op::TryHold(id, c) => {
                    (b.poll(now, &windows, c, Place::Try, lease(id, lease_ms)), c, Some(id))
                }
                Op::QueueHold(id, c) => (
                    b.poll(now, &windows, c, Place::Queue { id }, lease(id, lease_ms)),
                    c,
                    Some(id),
                ),
                Op::Release(id, ago) => {
                    b.release(now, id, Duration::from_millis(ago));
                    if let Some((c, since, _)) = held.remove(&id) {
                        let at = now.saturating_sub(ago * MS).max(since);
                        ended.extend(std::iter::repeat_n(at, c as usize));
                    }
                    continue;
                }
                Op::Leave(id) => { b.leave(now, id); continue; }
                Op::Pause(p) => { b.pause(now, Duration::from_millis(p)); continue; }
            };
            if v == Verdict::Admitted {
                match hold {
                    Some(id) => {
                        // A hold admitted again under its id replaces the old one.
                        if let Some((c, since, _)) = held.remove(&id) {
                            ended.extend(std::iter::repeat_n(now.max(since), c as usize));
                        }
                        held.insert(id, (c, now, now + lease_ms * MS));
                    }
                    None => ended.extend(std::iter::repeat_n(now, c as usize)),
                }
            }
            let in_flight: u64 = held.values().map(|h| h.0).sum();
            for w in &windows {
                let inside = ended.iter().filter(|&&u| u + w.window_ns > now).count() as u64;
                prop_assert!(
                    inside + in_flight <= w.calls,
                    "{} units ended and {} in flight in {:?}", inside, in_flight, w
                );
            }
            let usage = b.usage(now, &windows);
            prop_assert_eq!(usage.in_flight, in_flight);
            for (w, used) in windows.iter().zip(&usage.used) {
                let inside = ended.iter().filter(|&&u| u + w.window_ns > now).count() as u64;
                // The store logs an ended hold no earlier than the newest logged unit.
                prop_assert!(*used >= inside, "{} logged, {} ended in {:?}", used, inside, w);
            }
        }
    }
}

/// Operations on a decoded bucket at instants and with windows a caller may bring:
/// none may panic, whatever the record held.
fn exercise(b: &mut Bucket, seed: u64) {
    let now = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 1;
    let windows = [
        win(1 + seed % 7, 1 + seed % 500),
        win(1 + seed % 1000, 60_000),
    ];
    let _ = b.poll(now, &windows, 1, Place::Try, None);
    let _ = b.poll(
        now,
        &windows,
        1,
        Place::Queue { id: seed },
        lease(seed, 100),
    );
    b.release(
        now.saturating_add(MS),
        seed,
        Duration::from_millis(seed % 1000),
    );
    b.pause(now, Duration::from_millis(seed % 10_000));
    let _ = b.usage(now.saturating_add(10 * MS), &windows);
    let mut out = vec![0; b.encoded_len()];
    b.encode(&mut out);
    let mut again = Bucket::new();
    assert!(
        again.decode(&out).is_some(),
        "a bucket re-encoded must decode"
    );
}

#[test]
fn fuzz_state_record_corpus() {
    // Format 3 seeds (a ring) and format 4 seeds (`v4-*`, runs); a seed named
    // `refused-*` holds what no encoder writes and must not decode.
    for (name, bytes) in crate::fuzz::corpus("state-record") {
        let mut b = Bucket::new();
        let decoded = b.decode(&bytes).is_some();
        assert!(!(decoded && name.starts_with("refused-")), "{name} decoded");
        assert!(decoded || !name.starts_with("v4-"), "{name} refused");
        if decoded {
            exercise(&mut b, name.len() as u64);
        }
    }
}

/// Words that make a format 3 record's header add up, with values anywhere in their
/// range.
fn ring_words() -> impl Strategy<Value = Vec<u8>> {
    (
        1..8usize,
        0..3usize,
        0..3usize,
        proptest::collection::vec(any::<u64>(), 40),
    )
        .prop_map(|(ring, queue, holds, words)| {
            let mut w: Vec<u64> = words;
            w[3] = ring as u64;
            w[4] = queue as u64;
            w[5] = holds as u64;
            w.truncate(6 + ring + 3 * queue + 4 * holds);
            w.iter().flat_map(|v| v.to_le_bytes()).collect()
        })
}

/// A format 4 record whose sizes add up, with runs that are mostly well formed (rising
/// instants, small counts) and now and then not, and values anywhere in their range.
fn runs_words() -> impl Strategy<Value = Vec<u8>> {
    (
        0..6usize,
        0..3usize,
        0..3usize,
        proptest::collection::vec(any::<u64>(), 60),
        proptest::collection::vec((0..3u64, 0..4u64), 6),
    )
        .prop_map(|(runs, queue, holds, words, steps)| {
            let mut w: Vec<u64> = words;
            let max = u64::from(crate::limiter::MAX_CALLS);
            let mut at = w[1] % 1000;
            let mut held = 0;
            for (i, &(step, units)) in steps.iter().take(runs).enumerate() {
                at += step;
                held += units;
                w[FIXED_WORDS + 2 * i] = at;
                w[FIXED_WORDS + 2 * i + 1] = units;
            }
            w[0] = RUNS_TAG;
            w[3] = held + w[3] % 4;
            w[4] %= max + 1;
            w[6] = runs as u64;
            w[7] = queue as u64;
            w[8] = holds as u64;
            let base = FIXED_WORDS + 2 * runs;
            for i in 0..queue {
                w[base + 3 * i + 1] %= max + 1;
            }
            for i in 0..holds {
                w[base + 3 * queue + 4 * i + 1] %= max + 1;
            }
            w.truncate(base + 3 * queue + 4 * holds);
            w.iter().flat_map(|v| v.to_le_bytes()).collect()
        })
}

proptest! {
    #![proptest_config(crate::fuzz::config())]

    #[test]
    fn fuzz_state_records(
        bytes in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..400),
            ring_words(),
            runs_words(),
        ],
        seed in any::<u64>(),
    ) {
        let mut b = Bucket::new();
        if b.decode(&bytes).is_some() {
            exercise(&mut b, seed);
        }
    }
}
