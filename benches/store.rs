//! The cost of a permitted acquire on a shared bucket, side by side in one run: the
//! in-memory limiter, the file store, the Redis store on one server and on a Redis
//! Cluster, and for each a plain Redis `INCR` round trip on the same kind of connection as
//! the floor that no Redis store can go below, and an `EVALSHA` of a script that returns at
//! once as the floor of any script (the ratios store/INCR and empty script/INCR are printed
//! last).
//!
//! Run: `QUOTAGATE_TEST_REDIS_URL=redis://127.0.0.1:6379
//! QUOTAGATE_TEST_REDIS_CLUSTER_URL=redis+cluster://127.0.0.1:7000,127.0.0.1:7001/ cargo
//! bench --bench store` (add `-- --quick` for a short run; scripts/redis-cluster.sh starts
//! a cluster). Prints nanoseconds per call, the median of several rounds, one thread.
//! Without a variable its rows are skipped. A row of each Redis deployment times one call
//! of the largest cost, [`MAX_CALLS`](quotagate::limiter::MAX_CALLS) units, each admitted
//! (its rate's window is 1 µs).

use quotagate::limiter::store::file::FileStore;
use quotagate::limiter::store::redis::RedisStore;
use quotagate::limiter::store::{Place, RedisSettings, Store, StoreConfig, StoreKind, Window};
use quotagate::limiter::{Limiter, Rate};
use redis::ConnectionLike;
use redis::cluster::ClusterClient;
use std::hint::black_box;
use std::time::{Duration, Instant};

/// The Defender API's call counts (100 and 1,500) over windows so short that no call of
/// the benchmark is ever refused: the measured path is always "admitted". The logs then
/// keep only what a store keeps beyond every window (the Redis ring: the newest 64 runs);
/// `default_rates_case` runs the API's own rates.
const RATES: [(u32, Duration); 2] = [
    (100, Duration::from_micros(1)),
    (1500, Duration::from_micros(10)),
];

fn windows() -> Vec<Window> {
    RATES
        .iter()
        .map(|(calls, window)| Window {
            calls: u64::from(*calls),
            window_ns: window.as_nanos() as u64,
        })
        .collect()
}

/// Runs `f` `iters` times per round; returns the median ns per call.
fn measure(rounds: usize, iters: u64, mut f: impl FnMut()) -> f64 {
    let mut samples: Vec<f64> = (0..rounds)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..iters {
                f();
            }
            start.elapsed().as_nanos() as f64 / iters as f64
        })
        .collect();
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    samples[samples.len() / 2]
}

fn store_case(store: &dyn Store, key: &str, rounds: usize, iters: u64) -> f64 {
    let w = windows();
    measure(rounds, iters, || {
        let v = store.poll(black_box(key), &w, 1, Place::Try, None).unwrap();
        assert_eq!(v, quotagate::limiter::store::Verdict::Admitted);
    })
}

/// The API's default rates: 100 calls a minute and 1,500 an hour.
fn default_windows() -> Vec<Window> {
    [(100u64, 60u64), (1500, 3600)]
        .iter()
        .map(|&(calls, secs)| Window {
            calls,
            window_ns: secs * 1_000_000_000,
        })
        .collect()
}

/// A permitted `poll(Try)` under the API's default rates. A key admits 100 calls a
/// minute, so the calls go to keys in turn, `PER_KEY` each: the logs hold what a minute
/// of calls leaves in them (up to 99 units), and one call in `PER_KEY` creates a bucket.
fn default_rates_case(store: &dyn Store, rounds: usize, iters: u64) -> f64 {
    const PER_KEY: u64 = 99;
    let w = default_windows();
    let keys: Vec<String> = (0..(rounds as u64 * iters).div_ceil(PER_KEY) + 1)
        .map(|i| format!("machines-{i}"))
        .collect();
    let mut n = 0u64;
    measure(rounds, iters, || {
        let key = &keys[(n / PER_KEY) as usize];
        n += 1;
        let v = store.poll(black_box(key), &w, 1, Place::Try, None).unwrap();
        assert_eq!(v, quotagate::limiter::store::Verdict::Admitted);
    })
}

fn redis_settings(url: &str, prefix: &str) -> RedisSettings {
    match StoreConfig::parse(url) {
        Ok(StoreConfig {
            kind: StoreKind::Redis(mut s),
            ..
        }) => {
            s.prefix = prefix.to_string();
            s
        }
        _ => panic!(
            "{} is not a Redis URL",
            quotagate::limiter::store::redact(url)
        ),
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (rounds, mem_iters, io_iters) = if quick {
        (3, 200_000, 2_000)
    } else {
        (5, 2_000_000, 10_000)
    };
    let command: Vec<String> = std::env::args().collect();
    let url = std::env::var("QUOTAGATE_TEST_REDIS_URL").unwrap_or_default();
    println!(
        "command: QUOTAGATE_TEST_REDIS_URL={} QUOTAGATE_TEST_REDIS_CLUSTER_URL={} cargo bench --bench store{}",
        quotagate::limiter::store::redact(&url),
        quotagate::limiter::store::redact(
            &std::env::var("QUOTAGATE_TEST_REDIS_CLUSTER_URL").unwrap_or_default()
        ),
        if quick { " -- --quick" } else { "" }
    );
    println!("binary:  {}", command.join(" "));
    let tag = format!("qgbench-{}", std::process::id());
    let mut rows: Vec<(String, f64, u64)> = Vec::new();

    let limiter = Limiter::builder()
        .rates(
            RATES
                .iter()
                .map(|(calls, window)| Rate::new(*calls, *window)),
        )
        .build()
        .unwrap();
    let ns = measure(rounds, mem_iters, || {
        limiter.try_acquire(black_box("machines"), 1).unwrap();
    });
    rows.push(("in-memory Limiter::try_acquire".into(), ns, mem_iters));

    let path = std::env::temp_dir().join(format!("{tag}.q"));
    match FileStore::open(&path) {
        Ok(store) => {
            let ns = store_case(&store, "machines", rounds, io_iters);
            rows.push(("file store poll(Try)".into(), ns, io_iters));
            let ns = default_rates_case(&store, rounds, io_iters);
            rows.push(("file store, 100/min + 1,500/h".into(), ns, io_iters));
        }
        Err(e) => println!("file store: unavailable ({e})"),
    }
    let _ = std::fs::remove_file(&path);

    let cluster_url = std::env::var("QUOTAGATE_TEST_REDIS_CLUSTER_URL").unwrap_or_default();
    let mut ratios = Vec::new();
    for (name, var, url) in [
        ("redis", "QUOTAGATE_TEST_REDIS_URL", url),
        ("cluster", "QUOTAGATE_TEST_REDIS_CLUSTER_URL", cluster_url),
    ] {
        if url.is_empty() {
            println!("{name}: skipped: {var} not set");
            continue;
        }
        let before = rows.len();
        redis_rows(
            name,
            &redis_settings(&url, &tag),
            quick,
            rounds,
            io_iters,
            &mut rows,
        );
        let ns = |suffix: &str| {
            rows[before..]
                .iter()
                .find(|(row, ..)| row == &format!("{name} {suffix}"))
                .map(|row| row.1)
        };
        if let Some(incr) = ns("INCR round trip (floor)") {
            for row in [
                "store poll(Try)",
                "store, 100/min + 1,500/h",
                "EVALSHA empty script",
            ] {
                if let Some(ns) = ns(row) {
                    ratios.push((format!("{name} {row}"), ns / incr));
                }
            }
        }
    }

    println!("permitted acquire, one bucket, one thread, median of {rounds} rounds");
    println!("{:<34} {:>12} {:>10}", "", "ns/acquire", "calls/round");
    for (name, ns, iters) in &rows {
        println!("{name:<34} {ns:>12.0} {iters:>10}");
    }
    for (name, ratio) in ratios {
        println!("{name:<34} / INCR round trip = {ratio:.2}");
    }
}

/// The rows of one Redis deployment (`name`: redis or cluster): the store's permitted
/// poll, one of the largest cost, and a plain `INCR` round trip on the same kind of
/// connection (one server's, or a cluster connection routing by hash slot).
fn redis_rows(
    name: &str,
    settings: &RedisSettings,
    quick: bool,
    rounds: usize,
    io_iters: u64,
    rows: &mut Vec<(String, f64, u64)>,
) {
    match RedisStore::open(settings) {
        Ok(store) => {
            let ns = store_case(&store, "machines", rounds, io_iters);
            rows.push((format!("{name} store poll(Try)"), ns, io_iters));
            let ns = default_rates_case(&store, rounds, io_iters);
            rows.push((format!("{name} store, 100/min + 1,500/h"), ns, io_iters));
            let max = u64::from(quotagate::limiter::MAX_CALLS);
            let w = [Window {
                calls: max,
                window_ns: 1000,
            }];
            let iters = if quick { 5 } else { 20 };
            let ns = measure(rounds, iters, || {
                let v = store.poll("large", &w, max, Place::Try, None).unwrap();
                assert_eq!(v, quotagate::limiter::store::Verdict::Admitted);
            });
            rows.push((format!("{name} store poll(Try), cost 2^20"), ns, iters));
        }
        Err(e) => println!("{name} store: unavailable ({e})"),
    }
    let connected: redis::RedisResult<Box<dyn ConnectionLike>> =
        if settings.cluster_nodes.is_empty() {
            redis::Client::open(settings.url.as_str())
                .and_then(|c| c.get_connection_with_timeout(settings.timeout))
                .and_then(|c| {
                    c.set_read_timeout(Some(settings.timeout))?;
                    c.set_write_timeout(Some(settings.timeout))?;
                    Ok(Box::new(c) as Box<dyn ConnectionLike>)
                })
        } else {
            ClusterClient::builder(settings.cluster_nodes.iter().map(String::as_str))
                .connection_timeout(settings.timeout)
                .response_timeout(settings.timeout)
                .build()
                .and_then(|c| c.get_connection())
                .map(|c| Box::new(c) as Box<dyn ConnectionLike>)
        };
    match connected {
        Ok(mut con) => {
            // The store's hash tag, so that on a cluster the key lives where the bucket does.
            let key = format!("{{{}:machines}}:incr", settings.prefix);
            let ns = measure(rounds, io_iters, || {
                let n: i64 = redis::cmd("INCR").arg(&key).query(con.as_mut()).unwrap();
                black_box(n);
            });
            let _ = redis::cmd("DEL").arg(&key).exec(con.as_mut());
            rows.push((format!("{name} INCR round trip (floor)"), ns, io_iters));
            // A script that returns at once, with the store's two keys and arguments.
            let empty = redis::Script::new("return {1}");
            let mut call = redis::cmd("EVALSHA");
            call.arg(empty.get_hash())
                .arg(2)
                .arg(format!("{{{}:machines}}:s", settings.prefix))
                .arg(format!("{{{}:machines}}:r", settings.prefix))
                .arg(&["try", "1", "0", "2000000", "0", "100", "1", "1500", "10"]);
            match empty.load(con.as_mut()) {
                Ok(_) => {
                    let ns = measure(rounds, io_iters, || {
                        let v: Vec<i64> = call.query(con.as_mut()).unwrap();
                        black_box(v);
                    });
                    rows.push((format!("{name} EVALSHA empty script"), ns, io_iters));
                }
                Err(e) => println!("{name} EVALSHA: unavailable ({})", e.category()),
            }
        }
        Err(e) => println!("{name} INCR: unavailable ({})", e.category()),
    }
}
