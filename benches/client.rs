//! Loopback GET latency through the client with keep-alive, beside the same requests
//! sent by the `curl` command-line tool over one connection in one process.
//!
//! Run: `cargo bench --bench client` (add `-- --quick` for a short run).
//!
//! The simulator answers `GET /api/machines/{id}` on 127.0.0.1 with no added latency;
//! the quotas of both the client's limiter (which stays on) and the simulator are far
//! above what a run sends, so every call is admitted at once. The client fetches its
//! token once; curl gets one token from the simulator's token endpoint and sends it
//! with every request. Each figure is the cost of one more request on an open
//! connection: the client is warmed up first, and curl's time for one URL (process
//! start, connect, first request) is subtracted from its time for 1 + N URLs. The
//! median of several rounds is reported.
//!
//! Wall time on a shared machine includes waiting for a core, for the client and for
//! the simulator's threads alike, so the CPU time of each client's own work is reported
//! too: the calling thread's CPU time for quotagate (ureq sends and reads on that
//! thread), the curl process's user + system time for curl (from `getrusage`), again
//! with the one-URL run subtracted. Neither includes the simulator.

use quotagate::client::{Client, Request};
use quotagate::limiter::Rate;
use quotagate::sim::{SimConfig, Simulator};
use std::hint::black_box;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A limit no run reaches, in both the client and the simulator.
const NEVER: u32 = quotagate::limiter::MAX_CALLS;

struct Plan {
    requests: usize,
    rounds: usize,
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

/// Wall and CPU time per request, in microseconds (medians of the rounds).
struct Figures {
    wall: f64,
    cpu: Option<f64>,
}

/// The calling thread's CPU time.
#[cfg(unix)]
fn thread_cpu() -> Option<Duration> {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `t`.
    let ok = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) } == 0;
    ok.then(|| Duration::new(t.tv_sec as u64, t.tv_nsec as u32))
}

#[cfg(not(unix))]
fn thread_cpu() -> Option<Duration> {
    None
}

/// User + system time of the child processes waited for so far.
#[cfg(unix)]
fn children_cpu() -> Option<Duration> {
    // SAFETY: an all-zero rusage is valid; getrusage fills it.
    let mut r: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut r) } != 0 {
        return None;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    Some(tv(r.ru_utime) + tv(r.ru_stime))
}

#[cfg(not(unix))]
fn children_cpu() -> Option<Duration> {
    None
}

fn micros_per(d: Duration, n: usize) -> f64 {
    d.as_secs_f64() * 1e6 / n as f64
}

fn client_rounds(client: &Client, path: &str, plan: &Plan) -> Figures {
    let request = Request::get(path);
    for _ in 0..50 {
        assert_eq!(client.send(&request).unwrap().status(), 200);
    }
    let (mut wall, mut cpu) = (Vec::new(), Vec::new());
    for _ in 0..plan.rounds {
        let cpu_before = thread_cpu();
        let started = Instant::now();
        for _ in 0..plan.requests {
            let answer = client.send(&request).unwrap();
            assert_eq!(answer.status(), 200);
            black_box(answer.body().len());
        }
        wall.push(micros_per(started.elapsed(), plan.requests));
        if let (Some(a), Some(b)) = (cpu_before, thread_cpu()) {
            cpu.push(micros_per(b - a, plan.requests));
        }
    }
    Figures {
        wall: median(wall),
        cpu: (!cpu.is_empty()).then(|| median(cpu)),
    }
}

fn curl_available() -> bool {
    Command::new("curl")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A token from the simulator's token endpoint, the way a script would ask for it.
fn curl_token(sim: &Simulator) -> String {
    let form = format!(
        "grant_type=client_credentials&client_id={}&client_secret={}&scope={}/.default",
        sim.client_id(),
        sim.client_secret(),
        sim.url()
    );
    let url = format!("{}/{}/oauth2/v2.0/token", sim.authority(), sim.tenant_id());
    let out = Command::new("curl")
        .args(["--silent", "--show-error", "--fail", "--data", &form, &url])
        .output()
        .expect("curl runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    answer["access_token"].as_str().unwrap().to_string()
}

/// One curl process that GETs `url` `n` times; returns its wall time, its CPU time and
/// the number of connections it opened.
fn curl_run(url: &str, token: &str, n: usize) -> (Duration, Option<Duration>, u64) {
    let auth = format!("Authorization: Bearer {token}");
    let mut cmd = Command::new("curl");
    cmd.args(["--silent", "--show-error", "--fail"])
        .args(["-H", &auth, "-H", "Accept: application/json"])
        .args(["--write-out", "%{num_connects}\\n"]);
    for _ in 0..n {
        cmd.args(["--output", "/dev/null", url]);
    }
    let cpu_before = children_cpu();
    let started = Instant::now();
    let out = cmd.output().expect("curl runs");
    let elapsed = started.elapsed();
    let cpu = match (cpu_before, children_cpu()) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let connects = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse::<u64>().ok())
        .sum();
    (elapsed, cpu, connects)
}

fn curl_rounds(url: &str, token: &str, plan: &Plan) -> (Figures, u64) {
    let mut connects = 0;
    let (mut wall, mut cpu) = (Vec::new(), Vec::new());
    for _ in 0..plan.rounds {
        let (one, one_cpu, _) = curl_run(url, token, 1);
        let (many, many_cpu, c) = curl_run(url, token, plan.requests + 1);
        connects = connects.max(c);
        wall.push(micros_per(many.saturating_sub(one), plan.requests));
        if let (Some(a), Some(b)) = (one_cpu, many_cpu) {
            cpu.push(micros_per(b.saturating_sub(a), plan.requests));
        }
    }
    let figures = Figures {
        wall: median(wall),
        cpu: (!cpu.is_empty()).then(|| median(cpu)),
    };
    (figures, connects)
}

fn cell(x: Option<f64>) -> String {
    x.map_or_else(|| "-".to_string(), |v| format!("{v:.1}"))
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let plan = if quick {
        Plan {
            requests: 300,
            rounds: 3,
        }
    } else {
        Plan {
            requests: 2000,
            rounds: 7,
        }
    };
    let sim = Simulator::start(
        SimConfig::default()
            .machines(10)
            .limits("default", &[(NEVER, 60.0)]),
    )
    .expect("the simulator starts");
    let client = Client::builder()
        .base_url(&sim.url())
        .authority(&sim.authority())
        .tenant_id(sim.tenant_id())
        .client_id(sim.client_id())
        .client_secret(sim.client_secret())
        .default_rates(vec![Rate::new(NEVER, Duration::from_secs(60))])
        .build()
        .expect("a valid client");
    let path = format!("/api/machines/{}", sim.machine_ids()[0]);
    let url = format!("{}{path}", sim.url());

    println!(
        "Loopback GET {path} (one machine, {} bytes), keep-alive, {} requests x {} rounds, median",
        client.send(&Request::get(&path)).unwrap().body().len(),
        plan.requests,
        plan.rounds
    );
    let ours = client_rounds(&client, &path, &plan);
    println!();
    println!("{:<38} {:>12} {:>12}", "", "wall us/req", "own CPU us/req");
    println!(
        "{:<38} {:>12.1} {:>12}",
        "quotagate Client (limiter on)",
        ours.wall,
        cell(ours.cpu)
    );
    if curl_available() {
        let token = curl_token(&sim);
        let (theirs, connects) = curl_rounds(&url, &token, &plan);
        println!(
            "{:<38} {:>12.1} {:>12}",
            format!("curl, one process ({connects} connection)"),
            theirs.wall,
            cell(theirs.cpu)
        );
        let ratio = match (ours.cpu, theirs.cpu) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
            _ => "-".to_string(),
        };
        println!(
            "{:<38} {:>12.2} {:>12}",
            "ratio quotagate / curl",
            ours.wall / theirs.wall,
            ratio
        );
    } else {
        println!("curl: no curl command found; its line is skipped");
    }
    let stats = client.stats();
    assert_eq!(stats.throttled, 0);
    assert_eq!(stats.token_requests, 1, "one token for the whole run");
    sim.stop();
}
