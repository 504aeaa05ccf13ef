//! How the in-memory limiter scales with what it holds: the cost of a permitted
//! `try_acquire` with 1, 1,000 and 100,000 buckets in the map; how many times threads waiting
//! on one bucket wake per admission; and the memory a bucket takes at the API's default
//! rates (100 per minute and 1,500 per hour).
//!
//! Run: `cargo bench --bench scale` (add `-- --quick` for a short run).
//! Prints figures and ratios; it asserts only that the calls it makes are admitted.

use parking_lot::Mutex;
use quotagate::limiter::{Limiter, MAX_CALLS, ManualClock, Rate, Wait};
use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The system allocator, counting the bytes live at any moment.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// A limiter with `n` buckets, and their keys. Its rates are those of the `limiter`
/// benchmark: the largest number of calls over windows short enough that no run reaches
/// it, so every call is admitted and logged while units leave the windows as in use.
fn with_buckets(n: usize) -> (Limiter, Vec<String>) {
    let l = Limiter::builder()
        .rates([
            Rate::new(MAX_CALLS, Duration::from_millis(1)),
            Rate::new(MAX_CALLS, Duration::from_millis(10)),
        ])
        .max_buckets(n.max(1))
        .build()
        .unwrap();
    let keys: Vec<String> = (0..n).map(|i| format!("bucket-{i}")).collect();
    for k in &keys {
        l.try_acquire(k, 1).unwrap();
    }
    (l, keys)
}

/// ns per permitted `try_acquire` on the keys `order` picks, the median of `rounds`.
fn cost_per_call(l: &Limiter, keys: &[String], order: &[u32], rounds: usize) -> f64 {
    let samples = (0..rounds)
        .map(|_| {
            let start = Instant::now();
            for &i in order {
                let admitted = l.try_acquire(black_box(&keys[i as usize]), 1).is_ok();
                assert!(admitted);
            }
            start.elapsed().as_nanos() as f64 / order.len() as f64
        })
        .collect();
    median(samples)
}

/// The floor of any keyed limiter: ns per call of a plain map from `String` keys (one
/// allocation each, as in the limiter) to a counter under a mutex, found and bumped on
/// the keys `order` picks, the median of `rounds`. It does no limiting at all: its
/// growth from 1 to n keys is what the memory's latency costs a call that looks a key up
/// and touches its state.
fn floor_per_call(keys: &[String], order: &[u32], rounds: usize) -> f64 {
    let map: HashMap<String, Mutex<u64>, foldhash::fast::RandomState> =
        keys.iter().map(|k| (k.clone(), Mutex::new(0))).collect();
    let samples = (0..rounds)
        .map(|_| {
            let start = Instant::now();
            for &i in order {
                *map[black_box(keys[i as usize].as_str())].lock() += 1;
            }
            start.elapsed().as_nanos() as f64 / order.len() as f64
        })
        .collect();
    median(samples)
}

fn scale(rounds: usize, calls: usize) {
    println!(
        "permitted try_acquire with n buckets in the map, one thread, median of {rounds} rounds of {calls} calls"
    );
    println!(
        "{:>8} {:>12} {:>7} {:>14} {:>7} {:>14} {:>7}",
        "buckets", "one hot key", "ratio", "keys in turn", "ratio", "floor in turn", "ratio"
    );
    let mut base = None;
    let mut floor_base = None;
    for n in [1usize, 1_000, 100_000] {
        let (l, keys) = with_buckets(n);
        let hot = vec![(n / 2) as u32; calls];
        // Every key in a shuffled order, repeated: each call finds a bucket that is cold
        // in the caches once the buckets outgrow them.
        let mut order: Vec<u32> = (0..calls).map(|i| (i % n) as u32).collect();
        fastrand::Rng::with_seed(7).shuffle(&mut order);
        let hot_ns = cost_per_call(&l, &keys, &hot, rounds);
        let turn_ns = cost_per_call(&l, &keys, &order, rounds);
        drop(l);
        let floor_ns = floor_per_call(&keys, &order, rounds);
        let (b_hot, b_turn) = *base.get_or_insert((hot_ns, turn_ns));
        let b_floor = *floor_base.get_or_insert(floor_ns);
        println!(
            "{n:>8} {hot_ns:>10.1}ns {:>6.2}x {turn_ns:>12.1}ns {:>6.2}x {floor_ns:>12.1}ns {:>6.2}x",
            hot_ns / b_hot,
            turn_ns / b_turn,
            floor_ns / b_floor
        );
    }
    println!(
        "(ratio: against 1 bucket; one hot key = every call on one key among n; floor = a plain map of counters, no limiting)"
    );
}

/// Voluntary context switches of the calling thread so far: each one is a sleep, and
/// so, for a thread that returns, one wakeup.
fn sleeps_of_this_thread() -> i64 {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut u) }, 0);
    u.ru_nvcsw
}

/// The same count for thread `tid` of this process, read by another thread.
fn sleeps_of_thread(tid: i64) -> i64 {
    let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .expect("a thread's status counts its switches")
        .trim()
        .parse()
        .unwrap()
}

/// `threads` threads take a place in the queue of one bucket that admits `batch` calls
/// per second of a manual clock and wait on their tickets; once every one sleeps, the
/// clock moves a second at a time, each time once the calls of the last second have
/// returned. Returns the wakeups per admitted call counted from the first release (1.00:
/// each thread woke once, when admitted; a wakeup to take the bucket's lock back counts
/// too), and counted from each thread's entry into its wait, which adds the times a
/// thread blocked on the bucket's lock while the others took their places.
fn wakeups(threads: usize, batch: u32) -> (f64, f64) {
    let clock = ManualClock::new();
    let l = Limiter::builder()
        .rate(Rate::new(batch, Duration::from_secs(1)))
        .clock(Arc::new(clock.clone()))
        .build()
        .unwrap();
    for _ in 0..batch {
        l.try_acquire("one", 1).unwrap();
    }
    let returned = Arc::new(AtomicUsize::new(0));
    let tids = Arc::new(Mutex::new(Vec::with_capacity(threads)));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (l, returned, tids) = (l.clone(), returned.clone(), tids.clone());
            std::thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn(move || {
                    let tid = unsafe { libc::syscall(libc::SYS_gettid) };
                    let ticket = l.enqueue("one", 1, None).unwrap();
                    tids.lock().push(tid);
                    let entered = sleeps_of_this_thread();
                    assert_eq!(ticket.wait(None).unwrap(), Wait::Admitted);
                    let left = sleeps_of_this_thread();
                    returned.fetch_add(1, Ordering::Release);
                    (tid, entered, left)
                })
                .unwrap()
        })
        .collect();
    while tids.lock().len() < threads {
        std::thread::sleep(Duration::from_millis(2));
    }
    // Every thread asleep in its wait: no count moves any more.
    let counts = || -> HashMap<i64, i64> {
        let tids = tids.lock();
        tids.iter().map(|&t| (t, sleeps_of_thread(t))).collect()
    };
    let mut asleep = counts();
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let again = counts();
        if again == asleep {
            break;
        }
        asleep = again;
    }
    for second in 1..=threads.div_ceil(batch as usize) {
        clock.advance(Duration::from_secs(1));
        // The next second only once this one's calls have returned: the driver takes no
        // lock that an admitted thread would wait for.
        let due = (second * batch as usize).min(threads);
        while returned.load(Ordering::Acquire) < due {
            std::thread::yield_now();
        }
    }
    let (mut from_release, mut from_entry) = (0, 0);
    for h in handles {
        let (tid, entered, left) = h.join().unwrap();
        // Asleep when counted, it had counted that sleep: it woke from it, and once from
        // every later one.
        from_release += left - asleep[&tid] + 1;
        from_entry += left - entered;
    }
    (
        from_release as f64 / threads as f64,
        from_entry as f64 / threads as f64,
    )
}

/// Bytes a bucket takes (heap, as the allocator was asked) at the default rates: fresh
/// with one call, and at its peak with a full hour's quota logged, one call per instant.
fn memory(buckets: usize) {
    let clock = ManualClock::new();
    let l = Limiter::builder()
        .rates([Rate::per_seconds(100, 60), Rate::per_seconds(1500, 3600)])
        .clock(Arc::new(clock.clone()))
        .build()
        .unwrap();
    let keys: Vec<String> = (0..buckets).map(|i| format!("bucket-{i}")).collect();
    let before = LIVE.load(Ordering::Relaxed);
    for k in &keys {
        l.try_acquire(k, 1).unwrap();
    }
    let fresh = (LIVE.load(Ordering::Relaxed) - before) as f64 / buckets as f64;
    // 15 minutes of 100 calls, each at its own millisecond: 1,500 units in the hour.
    for minute in 0..15 {
        for call in 0..100 {
            if minute > 0 || call > 0 {
                for k in &keys {
                    l.try_acquire(k, 1).unwrap();
                }
            }
            clock.advance(Duration::from_millis(1));
        }
        clock.advance(Duration::from_millis(60_000 - 100));
    }
    assert!(
        l.try_acquire(&keys[0], 1).is_err(),
        "the hour's quota is used"
    );
    let full = (LIVE.load(Ordering::Relaxed) - before) as f64 / buckets as f64;
    println!(
        "memory per bucket at 100/min + 1,500/h ({buckets} buckets): {:.0} B with one call, {:.0} B ({:.1} KiB) with the hour's 1,500 calls logged",
        fresh,
        full,
        full / 1024.0
    );
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (rounds, calls) = if quick { (3, 100_000) } else { (7, 1_000_000) };
    scale(rounds, calls);
    println!();
    println!(
        "1,000 threads waiting on one bucket, released in batches by a manual clock (whose advance pumps the bucket: no thread keeps the head's time)"
    );
    for batch in [1, 10, 100] {
        let (from_release, from_entry) = wakeups(1000, batch);
        println!(
            "batch of {batch:>3}: {from_release:.3} wakeups per admitted call from the first release (1.000: each thread woke once, when admitted); {from_entry:.3} counted from each thread's entry into its wait"
        );
    }
    println!();
    memory(if quick { 100 } else { 1000 });
}
