//! One quota shared by several processes through a store: the file store (one host) and
//! Redis (many hosts). Worker processes are this test binary itself, started with
//! `--ignored --exact <worker>` and their orders in the environment.
//!
//! The Redis tests need `QUOTAGATE_TEST_REDIS_URL`, the Redis Cluster tests
//! `QUOTAGATE_TEST_REDIS_CLUSTER_URL` (scripts/test starts a server and a cluster and sets
//! them); without them they print a line and pass, except under `CI=true`, where they fail.

use quotagate::client::{Client, Request, RetryPolicy};
use quotagate::limiter::store::StoreErrorKind;
use quotagate::limiter::{Error, Limiter, Rate};
use quotagate::sim::{SimConfig, Simulator};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A fresh state-file path of its own for a test. The first call removes the folders
/// that earlier runs left, those of processes that no longer exist.
fn state_file(name: &str) -> PathBuf {
    static SWEEP: std::sync::Once = std::sync::Once::new();
    SWEEP.call_once(remove_stale_state_dirs);
    let dir = std::env::temp_dir().join(format!("quotagate-shared-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.q"));
    let _ = std::fs::remove_file(&path);
    path
}

/// Removes `quotagate-shared-<pid>` folders of processes that have ended (Linux: a live
/// process has a `/proc/<pid>`; elsewhere nothing is removed).
fn remove_stale_state_dirs() {
    if !cfg!(target_os = "linux") {
        return;
    }
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("quotagate-shared-"))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn file_url(name: &str) -> String {
    format!("file://{}", state_file(name).display())
}

/// The test Redis server's URL with a prefix of the test's own, or None (and a line
/// saying so) when there is none; under CI a missing server is a failure.
fn redis_url(test: &str) -> Option<String> {
    store_url("QUOTAGATE_TEST_REDIS_URL", test)
}

/// The test Redis Cluster's URL (`redis+cluster://`) with a prefix of the test's own, or
/// None (and a line saying so) when there is none; under CI a missing cluster is a failure.
fn cluster_url(test: &str) -> Option<String> {
    store_url("QUOTAGATE_TEST_REDIS_CLUSTER_URL", test)
}

fn store_url(var: &str, test: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if !url.is_empty() => Some(with_prefix(&url, test)),
        _ => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI must run the Redis tests: set {var}"
            );
            eprintln!("skipped {test}: {var} is not set");
            None
        }
    }
}

/// `url` with a key prefix of the test's own.
fn with_prefix(url: &str, test: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!(
        "{url}{sep}prefix=qgtest-{test}-{}-{}",
        std::process::id(),
        // The wall clock tells runs apart: a prefix never meets an older run's keys.
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

/// Starts this test binary as a worker running `entry` with `env`.
fn spawn_worker(entry: &str, env: &[(&str, String)]) -> Child {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--ignored",
        "--exact",
        entry,
        "--nocapture",
        "--test-threads=1",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
}

/// Waits for a worker, failing (and killing it) if it takes longer than `limit`: a wedged
/// store must fail the test, not hang it.
fn finish_within(mut child: Child, limit: Duration) -> std::process::Output {
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > limit {
            child.kill().unwrap();
            panic!("a worker did not finish within {limit:?}: the store is wedged");
        }
        thread::sleep(ms(20));
    }
    child.wait_with_output().unwrap()
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("worker needs {name}"))
}

fn env_u64(name: &str) -> u64 {
    env(name).parse().unwrap()
}

/// The simulator's quotas and the client's rates: the same, as in production.
const LIMITS: &[(u32, f64)] = &[(8, 0.5), (20, 2.0)];

fn rates() -> Vec<Rate> {
    LIMITS
        .iter()
        .map(|(calls, secs)| Rate::new(*calls, Duration::from_secs_f64(*secs)))
        .collect()
}

/// The client of a worker process: the simulator and quota store its environment names,
/// exactly the server's rates and no margin (holds count each call until its answer).
fn worker_client() -> Client {
    Client::builder()
        .base_url(&env("QG_SIM_URL"))
        .authority(&env("QG_SIM_AUTHORITY"))
        .tenant_id(&env("QG_TENANT"))
        .client_id(&env("QG_CLIENT"))
        .client_secret(env("QG_SECRET"))
        .default_rates(rates())
        .store(&env("QG_STORE"))
        .timeout(Duration::from_secs(10))
        .retry_policy(RetryPolicy {
            max_attempts: 10,
            max_quota_wait: Duration::from_secs(60),
            base_backoff: ms(20),
            max_backoff: ms(200),
        })
        .build()
        .unwrap()
}

/// A worker: `QG_THREADS` threads each send `QG_CALLS` GETs through a client whose
/// quotas live in `QG_STORE`. Prints the client's 429 count.
#[test]
#[ignore = "a worker process of the shared-store tests"]
fn client_worker() {
    let client = worker_client();
    let calls = env_u64("QG_CALLS");
    let handles: Vec<_> = (0..env_u64("QG_THREADS"))
        .map(|_| {
            let c = client.clone();
            thread::spawn(move || {
                for _ in 0..calls {
                    let r = c.send(&Request::get("/api/machines?$top=1")).unwrap();
                    assert_eq!(r.status(), 200, "{}", r.text());
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    println!("throttled={}", client.stats().throttled);
}

/// Four processes with two threads each send `4 × 2 × calls` GETs against the simulator,
/// whose inbound delays vary (0-60 ms before it counts a call), through `store`: the
/// simulator never answers 429 and no window ever went over its limit as it saw it.
fn four_processes_share_one_quota(store: &str, calls: u64, midway: Option<&mut dyn FnMut()>) {
    let sim = Simulator::start(
        SimConfig::default()
            .limits("default", LIMITS)
            .inbound_jitter(ms(60)),
    )
    .unwrap();
    let env = [
        ("QG_SIM_URL", sim.url()),
        ("QG_SIM_AUTHORITY", sim.authority()),
        ("QG_TENANT", sim.tenant_id().to_string()),
        ("QG_CLIENT", sim.client_id().to_string()),
        ("QG_SECRET", sim.client_secret().to_string()),
        ("QG_STORE", store.to_string()),
        ("QG_THREADS", "2".into()),
        ("QG_CALLS", calls.to_string()),
    ];
    let total = 4 * 2 * calls;
    let started = Instant::now();
    let workers: Vec<Child> = (0..4)
        .map(|_| spawn_worker("client_worker", &env))
        .collect();
    if let Some(f) = midway {
        // Early in the run, while the first calls are still inside the 2 s window: a
        // restart that forgot them would let the workers send more at once.
        thread::sleep(ms(800));
        f();
    }
    for w in workers {
        let out = finish_within(w, Duration::from_secs(120));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "a worker failed: {text}");
        assert!(text.contains("throttled=0"), "a worker saw a 429: {text}");
    }
    let st = sim.stats();
    assert_eq!(st.throttled, 0, "{:?}", st.by_status);
    assert!(st.exceeded().is_empty(), "{:?}", st.max_in_window);
    let ok = st.by_status.get(&200).copied().unwrap_or(0);
    assert_eq!(ok - st.token_requests, total, "{:?}", st.by_status);
    // At 20 per 2 s the calls take more than (total / 20 - 1) windows: the processes did
    // not each count alone.
    let least = ms(2000 * (total / 20 - 1));
    assert!(started.elapsed() >= least, "{:?}", started.elapsed());
}

#[test]
fn four_processes_share_one_quota_through_a_state_file() {
    four_processes_share_one_quota(&file_url("four-processes"), 25, None);
}

#[test]
fn four_processes_share_one_quota_through_redis() {
    if let Some(url) = redis_url("four-processes") {
        four_processes_share_one_quota(&url, 25, None);
    }
}

#[test]
fn four_processes_share_one_quota_through_a_redis_cluster() {
    if let Some(url) = cluster_url("four-processes-cluster") {
        four_processes_share_one_quota(&url, 12, None);
    }
}

/// A Redis Cluster of the test's own (three masters, every write persisted), from
/// scripts/redis-cluster.sh, stopped and removed on drop.
struct OwnCluster {
    dir: PathBuf,
    url: String,
}

impl OwnCluster {
    fn script() -> Command {
        Command::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/redis-cluster.sh"
        ))
    }

    fn start() -> Option<Self> {
        // Only where the cluster tests run (scripts/test, CI): they need redis-server.
        cluster_url("own-cluster")?;
        let dir = state_file("cluster").with_extension("d");
        let _ = std::fs::remove_dir_all(&dir);
        let out = Self::script().arg("start").arg(&dir).output().unwrap();
        let cluster = OwnCluster {
            url: String::from_utf8(out.stdout).unwrap().trim().to_string(),
            dir,
        };
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(cluster)
    }

    fn run(&self, args: &[&str]) {
        let out = Self::script()
            .arg(args[0])
            .arg(&self.dir)
            .args(&args[1..])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "redis-cluster.sh {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The port of the node that holds keys starting with `{prefix:`.
    fn holder_of(&self, prefix: &str) -> String {
        let ports = std::fs::read_to_string(self.dir.join("ports")).unwrap();
        let holders: Vec<&str> = ports
            .split_whitespace()
            .filter(|port| {
                let out = Command::new("redis-cli")
                    .args(["-p", port, "--scan", "--pattern"])
                    .arg(format!("{{{prefix}:*"))
                    .output()
                    .unwrap();
                !out.stdout.is_empty()
            })
            .collect();
        assert_eq!(holders.len(), 1, "the bucket's keys are on {holders:?}");
        holders[0].to_string()
    }

    /// `cluster_state` as each node but the one of `port` reports it.
    fn state_seen_by_others(&self, port: &str) -> Vec<String> {
        let ports = std::fs::read_to_string(self.dir.join("ports")).unwrap();
        ports
            .split_whitespace()
            .filter(|p| *p != port)
            .map(|p| {
                let out = Command::new("redis-cli")
                    .args(["-p", p, "cluster", "info"])
                    .output()
                    .unwrap();
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                text.lines()
                    .find_map(|l| l.trim().strip_prefix("cluster_state:"))
                    .unwrap_or("?")
                    .to_string()
            })
            .collect()
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        let _ = Self::script().arg("stop").arg(&self.dir).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The master that holds the workers' bucket is killed (SIGKILL) early in the run, stays
/// down long enough for the other masters to mark it failed (every bucket is then
/// `CLUSTERDOWN`), and is started again with its config file, so it rejoins with its
/// persisted log: the workers wait (`on_unavailable=wait`), the simulator never answers
/// 429 nor sees a window over its limit, and the run completes.
#[test]
fn four_processes_ride_out_a_cluster_node_restart_without_a_429() {
    let Some(cluster) = OwnCluster::start() else {
        return;
    };
    let prefix = "qgnode";
    let url = format!("{}?prefix={prefix}", cluster.url);
    four_processes_share_one_quota(
        &url,
        6,
        Some(&mut || {
            let port = cluster.holder_of(prefix);
            cluster.run(&["kill", &port]);
            thread::sleep(ms(1500));
            assert!(
                cluster
                    .state_seen_by_others(&port)
                    .iter()
                    .all(|s| s == "fail"),
                "the other masters did not mark the node failed"
            );
            cluster.run(&["restart", &port]);
        }),
    );
}

/// A Redis server of the test's own, with the persistence that keeps a quota across a
/// restart (`appendonly yes`, `appendfsync always`).
struct OwnRedis {
    port: u16,
    dir: PathBuf,
    persistent: bool,
    child: Option<Child>,
}

impl OwnRedis {
    fn start(persistent: bool) -> Option<Self> {
        // Only where the shared Redis tests run (scripts/test, CI): they need the server.
        redis_url("own-redis")?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = state_file(&format!("redis-{persistent}")).with_extension("d");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut r = OwnRedis {
            port,
            dir,
            persistent,
            child: None,
        };
        r.up();
        Some(r)
    }

    fn up(&mut self) {
        let aof = if self.persistent { "yes" } else { "no" };
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--appendonly", aof, "--appendfsync", "always", "--save", ""])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server");
        self.child = Some(child);
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server did not start"
            );
            thread::sleep(ms(10));
        }
    }

    /// Shuts the server down as an operator would, then starts it again after `down` on
    /// the same port and directory.
    fn restart(&mut self, down: Duration) {
        // redis-cli's own exit status says little here (the server closes the connection
        // as it goes); the server's exit is what counts.
        Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "shutdown"])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        if let Some(mut c) = self.child.take() {
            assert!(
                c.wait().unwrap().success(),
                "redis-server did not shut down cleanly"
            );
        }
        thread::sleep(down);
        self.up();
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0?prefix=qgrestart", self.port)
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn four_processes_ride_out_a_redis_restart_without_a_429() {
    let Some(mut redis) = OwnRedis::start(true) else {
        return;
    };
    let url = redis.url();
    four_processes_share_one_quota(&url, 6, Some(&mut || redis.restart(ms(100))));
}

/// A worker that takes permits from `QG_STORE` (2 per 400 ms) as fast as it may (waiting
/// in the queue, or with `QG_SPIN` asking without a pause), printing the wall-clock instant (ns since the epoch) of each, until killed or until
/// `QG_CALLS` permits.
#[test]
#[ignore = "a worker process of the shared-store tests"]
fn limiter_worker() {
    let limiter = Limiter::builder()
        .rate(Rate::new(2, ms(400)))
        .store(&env("QG_STORE"))
        .build()
        .unwrap();
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    // A spinner asks without waiting, over and over: most of its time is spent inside the
    // store's lock, which is where a kill should find it.
    let spin = std::env::var_os("QG_SPIN").is_some();
    for _ in 0..env_u64("QG_CALLS") {
        if spin {
            while limiter.try_acquire("k", 1).is_err() {}
        } else {
            limiter.acquire("k", 1, None).unwrap();
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        writeln!(out, "admitted {now}").unwrap();
        out.flush().unwrap();
    }
}

/// The admission instants a limiter worker printed.
fn admissions(out: &[u8]) -> Vec<u128> {
    String::from_utf8_lossy(out)
        .lines()
        // libtest's own "test limiter_worker ... " may precede the first line.
        .filter_map(|l| l.split("admitted ").nth(1))
        .map(|t| t.trim().parse().unwrap())
        .collect()
}

/// No more than `calls` admissions in any `window` (with a little slack for the time
/// between admission and printing).
fn assert_window(mut all: Vec<u128>, calls: usize, window: Duration) {
    all.sort_unstable();
    let w = window.as_nanos() - ms(20).as_nanos();
    for (i, t) in all.iter().enumerate() {
        let inside = all[i..].iter().take_while(|u| **u < t + w).count();
        assert!(inside <= calls, "{inside} admissions within {window:?}");
    }
}

/// Workers killed with SIGKILL while they wait and while they work on the state never
/// wedge the others, and the window holds across all of them.
fn killed_workers_never_wedge_the_others(store: &str) {
    let env = |calls: u64| {
        vec![
            ("QG_STORE", store.to_string()),
            ("QG_CALLS", calls.to_string()),
        ]
    };
    // Victims: two wait in the queue, two spin on the store's lock; all die at random points.
    let mut victims: Vec<Child> = (0..4)
        .map(|i| {
            let mut e = env(1000);
            if i % 2 == 1 {
                e.push(("QG_SPIN", "1".into()));
            }
            spawn_worker("limiter_worker", &e)
        })
        .collect();
    let survivor = spawn_worker("limiter_worker", &env(6));
    for (i, v) in victims.iter_mut().enumerate() {
        thread::sleep(ms(150 + 130 * i as u64));
        v.kill().unwrap(); // SIGKILL on Unix
    }
    let mut seen = Vec::new();
    for v in victims {
        seen.extend(admissions(&v.wait_with_output().unwrap().stdout));
    }
    let started = Instant::now();
    let out = finish_within(survivor, Duration::from_secs(30));
    assert!(out.status.success());
    let mine = admissions(&out.stdout);
    assert_eq!(mine.len(), 6);
    // 6 permits at 2 per 400 ms, plus at most a lease for each dead waiter's place.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    seen.extend(mine);
    assert_window(seen, 2, ms(400));
}

#[test]
fn killed_workers_never_wedge_the_others_on_a_state_file() {
    let url = file_url("killed");
    killed_workers_never_wedge_the_others(&url);
    // The state the killed processes left is still readable and still counts.
    let limiter = Limiter::builder()
        .rate(Rate::new(2, ms(400)))
        .store(&url)
        .build()
        .unwrap();
    limiter
        .acquire("k", 1, Some(Duration::from_secs(2)))
        .unwrap();
}

#[test]
fn killed_workers_never_wedge_the_others_on_redis() {
    if let Some(url) = redis_url("killed") {
        killed_workers_never_wedge_the_others(&url);
    }
}

/// A worker that takes holds of the whole window (2 per 400 ms) from `QG_STORE` with a
/// lease of 1.5 s, prints "held", and never ends them: it waits to be killed.
#[test]
#[ignore = "a worker process of the shared-store tests"]
fn holder_worker() {
    let limiter = Limiter::builder()
        .rate(Rate::new(2, ms(400)))
        .hold_lease(ms(1500))
        .store(&env("QG_STORE"))
        .build()
        .unwrap();
    let holds = [
        limiter.hold("k", 1, None).unwrap(),
        limiter.hold("k", 1, None).unwrap(),
    ];
    println!("held");
    thread::sleep(Duration::from_secs(600));
    drop(holds);
}

/// A process killed with SIGKILL while it holds units in flight delays the others by at
/// most its lease (and the window that follows), and never wedges them.
fn a_killed_holder_delays_the_others_by_one_lease_at_most(store: &str) {
    let mut holder = spawn_worker("holder_worker", &[("QG_STORE", store.to_string())]);
    let mut line = String::new();
    let mut out = std::io::BufReader::new(holder.stdout.take().unwrap());
    while !line.contains("held") {
        line.clear();
        assert!(
            std::io::BufRead::read_line(&mut out, &mut line).unwrap() > 0,
            "the holder died"
        );
    }
    let started = Instant::now();
    holder.kill().unwrap();
    holder.wait().unwrap();
    let limiter = Limiter::builder()
        .rate(Rate::new(2, ms(400)))
        .store(store)
        .build()
        .unwrap();
    assert_eq!(
        limiter.stats("k").in_flight,
        2,
        "the dead holder's units are in flight"
    );
    assert!(
        limiter.try_acquire("k", 1).is_err(),
        "and count in the window"
    );
    limiter
        .acquire("k", 1, Some(Duration::from_secs(10)))
        .unwrap();
    let waited = started.elapsed();
    // Counted from the lease's end (1.5 s after they were taken), then for a window.
    assert!(waited >= ms(1500), "{waited:?}");
    assert!(waited < ms(4000), "{waited:?}");
    let s = limiter.stats("k");
    assert_eq!(s.in_flight, 0);
}

#[test]
fn a_killed_holder_delays_the_others_by_one_lease_at_most_on_a_state_file() {
    a_killed_holder_delays_the_others_by_one_lease_at_most(&file_url("killed-holder"));
}

#[test]
fn a_killed_holder_delays_the_others_by_one_lease_at_most_on_redis() {
    if let Some(url) = redis_url("killed-holder") {
        a_killed_holder_delays_the_others_by_one_lease_at_most(&url);
    }
}

#[test]
fn a_restarted_script_does_not_spend_the_quota_again() {
    let url = file_url("restart");
    let build = || {
        Limiter::builder()
            .rate(Rate::new(5, Duration::from_secs(60)))
            .store(&url)
            .build()
            .unwrap()
    };
    let first = build();
    for _ in 0..5 {
        first.try_acquire("k", 1).unwrap();
    }
    drop(first);
    let again = build();
    match again.try_acquire("k", 1) {
        Err(Error::WouldBlock { wait }) => assert!(wait > Duration::from_secs(50), "{wait:?}"),
        other => panic!("the restarted limiter admitted again: {other:?}"),
    }
}

#[test]
fn a_damaged_state_file_is_a_clear_error_never_an_admission() {
    let path = state_file("damaged");
    let url = format!("file://{}", path.display());
    let limiter = Limiter::builder()
        .rate(Rate::new(5, Duration::from_secs(60)))
        .store(&url)
        .build()
        .unwrap();
    limiter.try_acquire("k", 1).unwrap();
    drop(limiter);
    let len = std::fs::metadata(&path).unwrap().len();
    // Truncated inside its first bucket's directory entry.
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(200).unwrap();
    drop(f);
    let outcome = Limiter::builder()
        .rate(Rate::new(5, Duration::from_secs(60)))
        .store(&url)
        .build()
        .and_then(|l| l.try_acquire("k", 1));
    match outcome {
        Err(Error::Store(e)) => {
            assert!(e.message.contains(&path.display().to_string()), "{e}");
        }
        other => panic!("a truncated state file gave {other:?}"),
    }
    // Overwritten with garbage.
    std::fs::write(&path, vec![0x5a; len as usize]).unwrap();
    let outcome = Limiter::builder()
        .rate(Rate::new(5, Duration::from_secs(60)))
        .store(&url)
        .build()
        .and_then(|l| l.try_acquire("k", 1));
    assert!(matches!(outcome, Err(Error::Store(_))), "{outcome:?}");
}

// ---- soak: many threads of several processes, with faults, for a bounded time ----

/// How long a soak runs: `QUOTAGATE_SOAK_SECS` (scripts/soak sets it), or a few seconds.
fn soak_secs() -> u64 {
    std::env::var("QUOTAGATE_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8)
}

/// Open file descriptors, threads and resident memory (KiB) of this process.
fn resources() -> (usize, usize, u64) {
    let count = |dir: &str| std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0);
    let rss = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|v| v.parse().unwrap_or(0)))
        })
        .unwrap_or(0);
    (count("/proc/self/fd"), count("/proc/self/task"), rss)
}

/// A soak worker: `QG_THREADS` threads send GETs for `QG_SECS` seconds through a client
/// whose quota lives in `QG_STORE`, and isolate each machine of `QG_MACHINES` once (POSTs
/// that are never repeated when their outcome is unknown). Prints what it saw and its
/// file descriptors, threads and memory after a warm-up and at the end.
#[test]
#[ignore = "a worker process of the shared-store tests"]
fn soak_worker() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};
    let client = worker_client();
    let secs = env_u64("QG_SECS");
    let end = Instant::now() + Duration::from_secs(secs);
    let machines: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(
        env("QG_MACHINES").split(',').map(str::to_string).collect(),
    ));
    let (gets, errors) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let isolated = Arc::new(Mutex::new(Vec::new()));
    let unknown = Arc::new(Mutex::new(Vec::new()));
    let throttled = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..env_u64("QG_THREADS"))
        .map(|i| {
            let (c, machines, gets, errors) = (
                client.clone(),
                machines.clone(),
                gets.clone(),
                errors.clone(),
            );
            let (isolated, unknown, throttled) =
                (isolated.clone(), unknown.clone(), throttled.clone());
            thread::spawn(move || {
                let mut n = 0u64;
                while Instant::now() < end {
                    n += 1;
                    let next = (n % 4 == i % 4)
                        .then(|| machines.lock().unwrap().pop())
                        .flatten();
                    let result = match &next {
                        Some(id) => {
                            c.send(&Request::post(&format!("/api/machines/{id}/isolate")).json(
                                &serde_json::json!({"Comment": "soak", "IsolationType": "Full"}),
                            ))
                        }
                        None => c.send(&Request::get("/api/machines?$top=1")),
                    };
                    match (result, next) {
                        (Ok(r), Some(id)) if r.status() == 201 => isolated.lock().unwrap().push(id),
                        (Ok(r), None) if r.status() == 200 => {
                            gets.fetch_add(1, Ordering::Relaxed);
                        }
                        (Err(quotagate::client::Error::Throttled(_)), _) => {
                            throttled.fetch_add(1, Ordering::Relaxed);
                        }
                        // A POST whose answer was lost: reported, never repeated.
                        (Err(quotagate::client::Error::Transport(..)), Some(id)) => {
                            unknown.lock().unwrap().push(id)
                        }
                        _ => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    // Warm-up: the pool's connections, the token and the store's mapping exist by then.
    thread::sleep(Duration::from_secs(secs.min(60) / 4 + 1));
    let (fd0, th0, rss0) = resources();
    for t in threads {
        t.join().unwrap();
    }
    let (fd1, th1, rss1) = resources();
    println!(
        "soak gets={} errors={} throttled={} isolated={} unknown={} fds={fd0}->{fd1} threads={th0}->{th1} rss_kb={rss0}->{rss1}",
        gets.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed),
        throttled.load(Ordering::Relaxed),
        isolated.lock().unwrap().join(","),
        unknown.lock().unwrap().join(","),
    );
}

/// One field of a soak worker's report line.
fn soak_field<'a>(line: &'a str, name: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|f| f.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name} in {line}"))
}

/// Three processes of three threads against a simulator with 503s, connection resets and
/// inbound jitter, through `store`, while `midway` disturbs the store halfway: no 429,
/// no POST applied twice, every reported isolation applied once, and no file descriptor,
/// thread or memory that grows with the run.
fn soak(store: &str, midway: Option<&mut dyn FnMut()>) {
    let secs = soak_secs();
    let sim = Simulator::start(
        SimConfig::default()
            .machines(600)
            .limits("default", LIMITS)
            .inbound_jitter(ms(40))
            .faults(quotagate::sim::Faults {
                error_503_rate: 0.03,
                reset_rate: 0.01,
                ..Default::default()
            })
            .seed(21),
    )
    .unwrap();
    let ids = sim.machine_ids();
    let workers: Vec<Child> = (0..3)
        .map(|w| {
            let mine: Vec<String> = ids[w * 200..w * 200 + 200].to_vec();
            let env = [
                ("QG_SIM_URL", sim.url()),
                ("QG_SIM_AUTHORITY", sim.authority()),
                ("QG_TENANT", sim.tenant_id().to_string()),
                ("QG_CLIENT", sim.client_id().to_string()),
                ("QG_SECRET", sim.client_secret().to_string()),
                ("QG_STORE", store.to_string()),
                ("QG_THREADS", "3".into()),
                ("QG_SECS", secs.to_string()),
                ("QG_MACHINES", mine.join(",")),
            ];
            spawn_worker("soak_worker", &env)
        })
        .collect();
    if let Some(f) = midway {
        thread::sleep(Duration::from_secs(secs / 2));
        f();
    }
    let mut isolated = Vec::new();
    let mut unknown = Vec::new();
    let mut gets = 0;
    for w in workers {
        let out = finish_within(w, Duration::from_secs(secs + 120));
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(out.status.success(), "a soak worker failed: {text}");
        // libtest's own "test soak_worker ... " may precede the report on its line.
        let line = text
            .lines()
            .find_map(|l| l.find("soak gets=").map(|i| &l[i..]))
            .unwrap_or_else(|| panic!("{text}"));
        println!("{line}");
        assert_eq!(soak_field(line, "throttled"), "0", "{line}");
        gets += soak_field(line, "gets").parse::<u64>().unwrap();
        let split = |v: &str| -> Vec<String> {
            v.split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        };
        isolated.extend(split(soak_field(line, "isolated")));
        unknown.extend(split(soak_field(line, "unknown")));
        for (name, slack) in [("fds", 4), ("threads", 2)] {
            let (a, b) = soak_field(line, name).split_once("->").unwrap();
            let (a, b): (i64, i64) = (a.parse().unwrap(), b.parse().unwrap());
            assert!(b - a <= slack, "{name} grew from {a} to {b}: {line}");
        }
        let (a, b) = soak_field(line, "rss_kb").split_once("->").unwrap();
        let (a, b): (i64, i64) = (a.parse().unwrap(), b.parse().unwrap());
        assert!(
            b - a <= 32 * 1024,
            "memory grew from {a} to {b} KiB: {line}"
        );
    }
    let st = sim.stats();
    assert_eq!(st.throttled, 0, "{:?}", st.by_status);
    assert!(st.exceeded().is_empty(), "{:?}", st.max_in_window);
    assert!(
        gets > 0 && !isolated.is_empty(),
        "the soak made no progress"
    );
    for id in &ids {
        let n = sim.action_count(id, "isolate");
        assert!(n <= 1, "machine {id} was isolated {n} times");
        if isolated.contains(id) {
            assert_eq!(n, 1, "machine {id} was reported isolated but never was");
        }
    }
    println!(
        "soak over {secs} s: {gets} GETs, {} isolations, {} of unknown outcome, {:?}",
        isolated.len(),
        unknown.len(),
        st.by_status
    );
}

/// Cuts the state file at `path` to nothing under its lock, as an operator emptying it
/// would, then puts its bytes back a little later, again under the lock: the processes
/// using it meet a clear store error meanwhile, never a crash, and lose no count.
fn truncate_and_restore(path: &std::path::Path) {
    use std::io::{Seek, Write};
    use std::os::unix::io::AsRawFd;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let locked = |f: &std::fs::File, op: i32| {
        // SAFETY: flock on a descriptor this function owns; the file store takes the same lock.
        assert_eq!(unsafe { libc::flock(f.as_raw_fd(), op) }, 0);
    };
    locked(&f, libc::LOCK_EX);
    let bytes = std::fs::read(path).unwrap();
    f.set_len(0).unwrap();
    locked(&f, libc::LOCK_UN);
    thread::sleep(ms(300));
    locked(&f, libc::LOCK_EX);
    f.seek(std::io::SeekFrom::Start(0)).unwrap();
    f.write_all(&bytes).unwrap();
    f.flush().unwrap();
    locked(&f, libc::LOCK_UN);
}

#[test]
fn soak_on_a_state_file_truncated_and_restored() {
    let url = file_url("soak");
    let path = PathBuf::from(url.strip_prefix("file://").unwrap());
    soak(&url, Some(&mut || truncate_and_restore(&path)));
}

#[test]
fn soak_on_redis_through_a_restart() {
    let Some(mut redis) = OwnRedis::start(true) else {
        return;
    };
    let url = redis.url();
    soak(&url, Some(&mut || redis.restart(ms(100))));
}

/// The `used` field of a state file's header: where its data ends.
fn data_end(path: &std::path::Path) -> u64 {
    let bytes = std::fs::read(path).unwrap();
    u64::from_le_bytes(bytes[40..48].try_into().unwrap())
}

/// A worker: takes a permit from the state file `QG_PATH`, cuts the file to `QG_CUT` bytes
/// (`used`: to the end of its data) through a handle of its own, as an operator emptying
/// it would, and asks again. Prints the outcome; a SIGBUS would kill it instead.
#[test]
#[ignore = "a worker process of the shared-store tests"]
fn cut_worker() {
    let path = PathBuf::from(env("QG_PATH"));
    let limiter = Limiter::builder()
        .rate(Rate::new(5, Duration::from_secs(60)))
        .store(&format!("file://{}", path.display()))
        .build()
        .unwrap();
    limiter.try_acquire("k", 1).unwrap();
    let len = match env("QG_CUT").as_str() {
        "used" => data_end(&path),
        n => n.parse().unwrap(),
    };
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(len).unwrap();
    drop(f);
    match limiter.try_acquire("k", 1) {
        Ok(()) => {
            assert_eq!(limiter.stats("k").windows[0].used, 2);
            println!("outcome=admitted");
        }
        Err(Error::Store(e)) => {
            assert_eq!(e.kind, StoreErrorKind::Corrupt, "{e}");
            assert!(e.message.contains(&path.display().to_string()), "{e}");
            // Every later operation says the same, and nothing is admitted.
            assert!(matches!(limiter.try_acquire("j", 1), Err(Error::Store(_))));
            println!("outcome=corrupt: {e}");
        }
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn a_state_file_cut_short_under_a_live_process_is_an_error_not_a_crash() {
    for (cut, outcome) in [
        ("0", "outcome=corrupt"),
        ("4096", "outcome=corrupt"),
        // Only free space is lost: the process maps the shorter file and goes on.
        ("used", "outcome=admitted"),
    ] {
        let path = state_file(&format!("cut-{cut}"));
        let worker = spawn_worker(
            "cut_worker",
            &[
                ("QG_PATH", path.display().to_string()),
                ("QG_CUT", cut.to_string()),
            ],
        );
        let out = finish_within(worker, Duration::from_secs(30));
        let text = String::from_utf8_lossy(&out.stdout);
        #[cfg(unix)]
        {
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(out.status.signal(), None, "cut to {cut}: killed: {text}");
        }
        assert!(out.status.success(), "cut to {cut}: {text}");
        assert!(text.contains(outcome), "cut to {cut}: {text}");
    }
}

#[test]
fn a_locked_state_file_fails_by_the_deadline_and_is_used_again_once_free() {
    let path = state_file("locked");
    let build = |extra: &str| {
        Limiter::builder()
            .rate(Rate::new(5, Duration::from_secs(60)))
            .store(&format!("file://{}{extra}", path.display()))
            .build()
            .unwrap()
    };
    let waiting = build("");
    let failing = build("?on_unavailable=fail");
    // Another program holds the file's lock (here another open file description, which
    // excludes this process's own as another process would) and never lets go.
    let other = std::fs::File::open(&path).unwrap();
    fs4::FileExt::lock(&other).unwrap();
    let locked = |outcome: Result<(), Error>| match outcome {
        Err(Error::Store(e)) => {
            assert_eq!(e.kind, StoreErrorKind::Unavailable, "{e}");
            assert!(e.message.contains("locked by another process"), "{e}");
        }
        other => panic!("a locked state file gave {other:?}"),
    };
    // on_unavailable=wait: tried again until the deadline, then the store's error (the
    // default lock timeout, 250 ms, is well below the deadline).
    let started = Instant::now();
    locked(
        waiting
            .acquire("k", 1, Some(Duration::from_secs(1)))
            .map(drop),
    );
    let waited = started.elapsed();
    assert!(waited >= ms(950), "{waited:?}");
    assert!(waited < ms(2500), "{waited:?}");
    // on_unavailable=fail: after one lock timeout (the limiter tries, then queues).
    let started = Instant::now();
    locked(
        failing
            .acquire("k", 1, Some(Duration::from_secs(1)))
            .map(drop),
    );
    let waited = started.elapsed();
    assert!(waited < ms(900), "{waited:?}");
    locked(failing.try_acquire("k", 1));
    fs4::FileExt::unlock(&other).unwrap();
    waiting
        .acquire("k", 1, Some(Duration::from_secs(1)))
        .unwrap();
    failing.try_acquire("k", 1).unwrap();
    assert_eq!(waiting.stats("k").windows[0].used, 2);
}

/// A worker: with umask 000, opens a new state file with the default mode and another
/// with `mode=0660` in `QG_DIR`, and prints their modes.
#[cfg(unix)]
#[test]
#[ignore = "a worker process of the shared-store tests"]
fn umask_worker() {
    use std::os::unix::fs::PermissionsExt;
    // SAFETY: umask only sets this process's file creation mask.
    unsafe { libc::umask(0) };
    let dir = PathBuf::from(env("QG_DIR"));
    let mut modes = Vec::new();
    for (name, query) in [("plain.q", ""), ("shared.q", "?mode=0660")] {
        let path = dir.join(name);
        Limiter::builder()
            .rate(Rate::new(5, Duration::from_secs(60)))
            .store(&format!("file://{}{query}", path.display()))
            .build()
            .unwrap()
            .try_acquire("k", 1)
            .unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        modes.push(format!("{mode:04o}"));
    }
    println!("modes={}", modes.join(","));
}

#[cfg(unix)]
#[test]
fn a_state_file_is_created_private_whatever_the_umask_and_never_opened_through_a_link() {
    let dir = state_file("modes").with_extension("d");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let worker = spawn_worker("umask_worker", &[("QG_DIR", dir.display().to_string())]);
    let out = finish_within(worker, Duration::from_secs(30));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("modes=0600,0660"), "{text}");
    // A symbolic link in the file's place is refused, whatever it points to.
    let link = dir.join("link.q");
    std::os::unix::fs::symlink(dir.join("plain.q"), &link).unwrap();
    let outcome = Limiter::builder()
        .rate(Rate::new(5, Duration::from_secs(60)))
        .store(&format!("file://{}", link.display()))
        .build();
    match outcome {
        Err(Error::Store(e)) => {
            assert_eq!(e.kind, StoreErrorKind::Invalid, "{e}");
            assert!(e.message.contains("symbolic link"), "{e}");
        }
        other => panic!("a link to a state file gave {other:?}"),
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_state_file_full_of_live_buckets_is_a_clear_error() {
    let path = state_file("full");
    let limiter = Limiter::builder()
        .rate(Rate::new(5, Duration::from_secs(60)))
        .store(&format!("file://{}?max_buckets=3", path.display()))
        .build()
        .unwrap();
    for key in ["a", "b", "c"] {
        limiter.try_acquire(key, 1).unwrap();
    }
    match limiter.acquire("d", 1, Some(Duration::from_secs(1))) {
        Err(Error::Store(e)) => {
            assert_eq!(e.kind, StoreErrorKind::Invalid, "{e}");
            assert!(e.message.contains("full"), "{e}");
            assert!(e.message.contains("max_buckets=3"), "{e}");
        }
        other => panic!("a full state file gave {other:?}"),
    }
    limiter.try_acquire("a", 1).unwrap();
}
