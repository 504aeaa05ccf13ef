//! The hot path of the limiter: a permitted `try_acquire` on one bucket, from 1 and 2
//! threads, in Rust and through the C ABI, side by side with the governor crate's
//! `check` (direct and keyed) in the same run; and the hold path that the client takes
//! for every attempt (a permitted `try_hold`, then its release), in Rust and through the
//! C ABI.
//!
//! Run: `cargo bench --bench limiter` (add `-- --quick` for a short run).
//! Prints nanoseconds per call (the median of several rounds) and the ratio to governor's
//! keyed limiter, the fair comparison for quotagate's keyed buckets.

use governor::{Quota, RateLimiter};
use quotagate::limiter::{Limiter, Rate};
use std::ffi::{CString, c_char};
use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[repr(C)]
struct QgLimiter {
    _private: [u8; 0],
}

unsafe extern "C" {
    fn qg_limiter_try_acquire(
        l: *const QgLimiter,
        key: *const c_char,
        cost: u32,
        wait_ms: *mut u64,
    ) -> u32;
    fn qg_limiter_builder_new(out: *mut *mut u8) -> u32;
    fn qg_limiter_builder_add_rate(b: *mut u8, calls: u32, window_ms: u64) -> u32;
    fn qg_limiter_builder_build(b: *const u8, out: *mut *mut QgLimiter) -> u32;
    fn qg_limiter_builder_free(b: *mut u8);
    fn qg_limiter_free(l: *mut QgLimiter);
    fn qg_limiter_try_hold(
        l: *const QgLimiter,
        key: *const c_char,
        cost: u32,
        wait_ms: *mut u64,
        out: *mut *mut u8,
    ) -> u32;
    fn qg_hold_release(h: *mut u8);
    fn qg_limiter_bind(
        l: *const QgLimiter,
        key: *const c_char,
        cost: u32,
        out: *mut *mut u8,
    ) -> u32;
    fn qg_binding_try_acquire(b: *const u8) -> u32;
    fn qg_binding_free(b: *mut u8);
}

/// Builds one case's closure afresh for every round.
type Case = (&'static str, Box<dyn Fn() -> Arc<dyn Fn() + Send + Sync>>);

/// A rate that governor never reaches.
const GOVERNOR_CALLS: u32 = 2_000_000_000;

/// quotagate's largest rate, over windows short enough that no run reaches it (2^20
/// calls in 10 ms would take 10 ns each): the measured path is always "admitted", and
/// units leave the windows as they would in use.
const CALLS: u32 = quotagate::limiter::MAX_CALLS;
const WINDOWS_MS: [u64; 2] = [1, 10];

fn quotagate_limiter() -> Limiter {
    Limiter::builder()
        .rates(WINDOWS_MS.map(|ms| Rate::new(CALLS, Duration::from_millis(ms))))
        .build()
        .unwrap()
}

struct CLimiter(*mut QgLimiter);
unsafe impl Send for CLimiter {}
unsafe impl Sync for CLimiter {}
impl Drop for CLimiter {
    fn drop(&mut self) {
        unsafe { qg_limiter_free(self.0) }
    }
}

/// A binding made by `qg_limiter_bind`; it keeps its limiter alive.
struct CBinding(*mut u8);
unsafe impl Send for CBinding {}
unsafe impl Sync for CBinding {}
impl Drop for CBinding {
    fn drop(&mut self) {
        unsafe { qg_binding_free(self.0) }
    }
}

fn c_limiter() -> CLimiter {
    unsafe {
        let mut b = std::ptr::null_mut();
        assert_eq!(qg_limiter_builder_new(&mut b), 0);
        for ms in WINDOWS_MS {
            assert_eq!(qg_limiter_builder_add_rate(b, CALLS, ms), 0);
        }
        let mut l = std::ptr::null_mut();
        assert_eq!(qg_limiter_builder_build(b, &mut l), 0);
        qg_limiter_builder_free(b);
        CLimiter(l)
    }
}

/// Runs `f` `iters` times on each of `threads` threads; returns ns per call (wall time
/// divided by all calls, so 2 threads that scale perfectly show half the cost).
fn measure(threads: usize, iters: u64, f: Arc<dyn Fn() + Send + Sync>) -> f64 {
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let f = f.clone();
            std::thread::spawn(move || {
                for _ in 0..iters {
                    f();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    start.elapsed().as_nanos() as f64 / (iters * threads as u64) as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (rounds, iters) = if quick { (3, 200_000) } else { (7, 2_000_000) };

    let mut cases: Vec<Case> = Vec::new();
    cases.push((
        "governor direct check",
        Box::new(|| {
            let g = Arc::new(RateLimiter::direct(Quota::per_second(
                NonZeroU32::new(GOVERNOR_CALLS).unwrap(),
            )));
            Arc::new(move || {
                black_box(g.check().is_ok());
            })
        }),
    ));
    cases.push((
        "governor keyed check_key",
        Box::new(|| {
            let g = Arc::new(RateLimiter::keyed(Quota::per_second(
                NonZeroU32::new(GOVERNOR_CALLS).unwrap(),
            )));
            let key = String::from("machines");
            Arc::new(move || {
                black_box(g.check_key(&key).is_ok());
            })
        }),
    ));
    cases.push((
        "quotagate try_acquire (Rust)",
        Box::new(|| {
            let l = quotagate_limiter();
            Arc::new(move || {
                black_box(l.try_acquire(black_box("machines"), 1).is_ok());
            })
        }),
    ));
    cases.push((
        "quotagate try_acquire (C ABI)",
        Box::new(|| {
            let l = Arc::new(c_limiter());
            let key = CString::new("machines").unwrap();
            Arc::new(move || unsafe {
                black_box(qg_limiter_try_acquire(
                    l.0,
                    key.as_ptr(),
                    1,
                    std::ptr::null_mut(),
                ));
            })
        }),
    ));
    cases.push((
        "quotagate binding (C ABI)",
        Box::new(|| {
            let l = c_limiter();
            let key = CString::new("machines").unwrap();
            let mut b = std::ptr::null_mut();
            assert_eq!(unsafe { qg_limiter_bind(l.0, key.as_ptr(), 1, &mut b) }, 0);
            let b = Arc::new(CBinding(b));
            Arc::new(move || unsafe {
                black_box(qg_binding_try_acquire(b.0));
            })
        }),
    ));
    cases.push((
        "quotagate try_hold+finish (Rust)",
        Box::new(|| {
            let l = quotagate_limiter();
            Arc::new(move || {
                l.try_hold(black_box("machines"), 1).unwrap().finish();
            })
        }),
    ));
    cases.push((
        "quotagate hold+release (C ABI)",
        Box::new(|| {
            let l = Arc::new(c_limiter());
            let key = CString::new("machines").unwrap();
            Arc::new(move || unsafe {
                let mut h = std::ptr::null_mut();
                assert_eq!(
                    qg_limiter_try_hold(l.0, key.as_ptr(), 1, std::ptr::null_mut(), &mut h),
                    0
                );
                qg_hold_release(black_box(h));
            })
        }),
    ));

    println!(
        "permitted try_acquire and try_hold + release, one bucket, median of {rounds} rounds of {iters} calls per thread"
    );
    println!(
        "{:<32} {:>10} {:>10} {:>10} {:>10}",
        "", "1 thread", "ratio", "2 threads", "ratio"
    );
    // The cases take turns round by round, so that a burst of load elsewhere on the
    // machine falls on every case alike rather than on the rounds of one.
    let mut samples = vec![[Vec::new(), Vec::new()]; cases.len()];
    for _ in 0..rounds {
        for (i, (_, make)) in cases.iter().enumerate() {
            for (t, threads) in [1, 2].into_iter().enumerate() {
                samples[i][t].push(measure(threads, iters, make()));
            }
        }
    }
    let results: Vec<_> = cases
        .iter()
        .zip(samples)
        .map(|((name, _), [one, two])| (name, vec![median(one), median(two)]))
        .collect();
    let keyed = results[1].1.clone();
    for (name, row) in &results {
        println!(
            "{:<32} {:>8.1}ns {:>9.2}x {:>8.1}ns {:>9.2}x",
            name,
            row[0],
            row[0] / keyed[0],
            row[1],
            row[1] / keyed[1]
        );
    }
    println!("(ratio: cost relative to governor's keyed limiter; below 1.00 is cheaper)");
    let (direct, c_abi) = (&results[0].1, &results[3].1);
    println!(
        "goal, C ABI try_acquire / governor keyed check_key (at most 1.00): {:.2}x from 1 thread, {:.2}x from 2",
        c_abi[0] / keyed[0],
        c_abi[1] / keyed[1]
    );
    println!(
        "stretch, C ABI try_acquire / governor direct check from 1 thread (at most 1.00): {:.2}x",
        c_abi[0] / direct[0]
    );
}
