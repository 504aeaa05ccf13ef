//! A limiter whose bucket map is full (65,536 buckets, the default limit): the cost of a
//! permitted `try_acquire` on an existing key, of one on a new key that makes room by
//! dropping an idle bucket, of one on a new key refused because no bucket is idle, and of
//! a call on an existing key while another thread keeps adding new keys.
//!
//! Run: `cargo bench --bench buckets` (add `-- --quick` for a short run).
//! Prints nanoseconds per call (the median of several rounds).

use quotagate::limiter::{DEFAULT_MAX_BUCKETS, Error, Limiter, MAX_CALLS, Rate};
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A full limiter: every bucket used once. With a short `window`, its buckets are idle
/// once that has passed; with a long one, none is.
fn full_limiter(window: Duration) -> Limiter {
    let l = Limiter::builder()
        .rate(Rate::new(MAX_CALLS, window))
        .build()
        .unwrap();
    for i in 0..DEFAULT_MAX_BUCKETS {
        l.try_acquire(&format!("bucket-{i}"), 1).unwrap();
    }
    l
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Runs `f(i)` for `i` in `0..iters`; returns ns per call.
fn measure(iters: u64, mut f: impl FnMut(u64)) -> f64 {
    let start = Instant::now();
    for i in 0..iters {
        f(i);
    }
    start.elapsed().as_nanos() as f64 / iters as f64
}

/// ns per permitted `try_acquire` on an existing key, the median of `rounds`.
fn existing_key(l: &Limiter, rounds: usize, iters: u64) -> f64 {
    let samples = (0..rounds)
        .map(|_| {
            measure(iters, |_| {
                black_box(l.try_acquire(black_box("bucket-7"), 1).is_ok());
            })
        })
        .collect();
    median(samples)
}

static ROUND: AtomicU64 = AtomicU64::new(0);

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (rounds, iters) = if quick { (3, 20_000) } else { (7, 100_000) };
    // Buckets idle 1 ms after their last unit, so a full map always has idle buckets.
    let short = Duration::from_millis(1);
    let long = Duration::from_secs(3600);

    println!(
        "a full limiter ({DEFAULT_MAX_BUCKETS} buckets), median of {rounds} rounds of {iters} calls"
    );
    let mut rows: Vec<(&str, f64)> = Vec::new();

    let l = full_limiter(short);
    std::thread::sleep(Duration::from_millis(5));
    rows.push(("existing key", existing_key(&l, rounds, iters)));

    let samples = (0..rounds)
        .map(|_| {
            let round = ROUND.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(5));
            measure(iters, |i| {
                l.try_acquire(&format!("new-{round}-{i}"), 1).unwrap();
            })
        })
        .collect();
    rows.push(("new key, dropping an idle one", median(samples)));
    assert_eq!(l.keys().len(), DEFAULT_MAX_BUCKETS);

    // Existing key while another thread adds new keys (each one drops an idle bucket).
    let stop = Arc::new(AtomicBool::new(false));
    let churn = {
        let (l, stop) = (l.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let _ = l.try_acquire(&format!("churn-{i}"), 1);
                i += 1;
            }
        })
    };
    let ns = existing_key(&l, rounds, iters);
    stop.store(true, Ordering::Relaxed);
    churn.join().unwrap();
    rows.push(("existing key, new keys alongside", ns));
    drop(l);

    let l = full_limiter(long);
    let samples = (0..rounds)
        .map(|_| {
            let round = ROUND.fetch_add(1, Ordering::Relaxed);
            measure(iters, |i| {
                let r = l.try_acquire(&format!("refused-{round}-{i}"), 1);
                assert!(matches!(r, Err(Error::TooManyBuckets { .. })));
            })
        })
        .collect();
    rows.push(("new key, refused (none idle)", median(samples)));
    rows.push(("existing key (none idle)", existing_key(&l, rounds, iters)));

    for (name, ns) in rows {
        println!("{name:<34} {ns:>10.1}ns");
    }
}
