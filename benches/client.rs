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

use quotagate::client::{Client, Request};
use quotagate::limiter::Rate;
use quotagate::sim::{SimConfig, Simulator};
use std::hint::black_box;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A limit no run reaches, in both the client and the simulator.
const NEVER: u32 = 1_000_000_000;

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

fn client_rounds(client: &Client, path: &str, plan: &Plan) -> f64 {
    let request = Request::get(path);
    for _ in 0..50 {
        assert_eq!(client.send(&request).unwrap().status(), 200);
    }
    let rounds = (0..plan.rounds)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..plan.requests {
                let answer = client.send(&request).unwrap();
                assert_eq!(answer.status(), 200);
                black_box(answer.body().len());
            }
            started.elapsed().as_secs_f64() * 1e6 / plan.requests as f64
        })
        .collect();
    median(rounds)
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

/// One curl process that GETs `url` `n` times; returns its wall time and the number of
/// connections it opened.
fn curl_run(url: &str, token: &str, n: usize) -> (Duration, u64) {
    let auth = format!("Authorization: Bearer {token}");
    let mut cmd = Command::new("curl");
    cmd.args(["--silent", "--show-error", "--fail"])
        .args(["-H", &auth, "-H", "Accept: application/json"])
        .args(["--write-out", "%{num_connects}\\n"]);
    for _ in 0..n {
        cmd.args(["--output", "/dev/null", url]);
    }
    let started = Instant::now();
    let out = cmd.output().expect("curl runs");
    let elapsed = started.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let connects = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse::<u64>().ok())
        .sum();
    (elapsed, connects)
}

fn curl_rounds(url: &str, token: &str, plan: &Plan) -> (f64, u64) {
    let mut connects = 0;
    let rounds = (0..plan.rounds)
        .map(|_| {
            let (one, _) = curl_run(url, token, 1);
            let (many, c) = curl_run(url, token, plan.requests + 1);
            connects = connects.max(c);
            (many.saturating_sub(one)).as_secs_f64() * 1e6 / plan.requests as f64
        })
        .collect();
    (median(rounds), connects)
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
    println!("{:<38} {:>12}", "", "us/request");
    println!("{:<38} {:>12.1}", "quotagate Client (limiter on)", ours);
    if curl_available() {
        let token = curl_token(&sim);
        let (theirs, connects) = curl_rounds(&url, &token, &plan);
        println!(
            "{:<38} {:>12.1}",
            format!("curl, one process ({connects} connection)"),
            theirs
        );
        println!("{:<38} {:>12.2}", "ratio quotagate / curl", ours / theirs);
    } else {
        println!("curl: no curl command found; its line is skipped");
    }
    let stats = client.stats();
    assert_eq!(stats.throttled, 0);
    assert_eq!(stats.token_requests, 1, "one token for the whole run");
    sim.stop();
}
