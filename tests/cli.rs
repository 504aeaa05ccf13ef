//! The `quotagate` binary, run as a user runs it: the demo's JSON checked against the
//! simulator's own figures, `call` against a simulator started here, exit codes, usage
//! errors, and `sim` as a child process. Every run is bounded in time.

use quotagate::sim::{SimConfig, Simulator};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_quotagate");
const ENV: [&str; 6] = [
    "QUOTAGATE_TENANT_ID",
    "QUOTAGATE_CLIENT_ID",
    "QUOTAGATE_CLIENT_SECRET",
    "QUOTAGATE_ACCESS_TOKEN",
    "QUOTAGATE_BASE_URL",
    "QUOTAGATE_AUTHORITY",
];

struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Run {
    fn code(&self) -> i32 {
        self.status.code().expect("the process exited by itself")
    }
}

/// A command with no QUOTAGATE_* variables from the surroundings.
fn command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args).stdin(Stdio::null());
    for name in ENV {
        cmd.env_remove(name);
    }
    cmd.envs(env.iter().copied());
    cmd
}

fn drain(mut r: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut s = String::new();
        let _ = r.read_to_string(&mut s);
        s
    })
}

/// Waits for `child` at most `timeout`, killing it past that.
fn finish(mut child: Child, timeout: Duration, what: &str) -> Run {
    let out = drain(child.stdout.take().unwrap());
    let err = drain(child.stderr.take().unwrap());
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{what}: still running after {timeout:?}\nstderr: {}",
                err.join().unwrap()
            );
        }
        thread::sleep(Duration::from_millis(10));
    };
    Run {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

fn run(args: &[&str], env: &[(&str, &str)]) -> Run {
    let child = command(args, env)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    finish(child, Duration::from_secs(20), &args.join(" "))
}

/// `call` against `sim` with its credentials.
fn call(sim: &Simulator, args: &[&str]) -> Run {
    let url = sim.url();
    let mut all = vec!["call"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--base-url", &url, "--authority", &url]);
    run(
        &all,
        &[
            ("QUOTAGATE_TENANT_ID", sim.tenant_id()),
            ("QUOTAGATE_CLIENT_ID", sim.client_id()),
            ("QUOTAGATE_CLIENT_SECRET", sim.client_secret()),
        ],
    )
}

/// A loopback port nobody listens on (bound, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[test]
fn demo_json_agrees_with_the_simulators_own_figures() {
    let started = Instant::now();
    let r = run(
        &[
            "demo",
            "--json",
            "--machines",
            "120",
            "--page-size",
            "25",
            "--queries",
            "3",
            "--time-scale",
            "0.005",
        ],
        &[],
    );
    assert_eq!(r.code(), 0, "stderr: {}", r.stderr);
    let s = json(&r.stdout);
    assert_eq!(s["ok"], true, "{}", r.stdout);
    let (client, server) = (&s["client"], &s["server"]);
    // By default the server counts each call after 0-40 ms on its way in, and the client
    // has no margin: each call counts until its answer.
    assert_eq!(s["inbound_jitter_ms"], 40);
    assert_eq!(s["margin_ms"], 0);
    // 5 pages + 120 tags + 3 queries, every one of them seen by the server, none refused.
    assert_eq!(client["pages"], 5);
    assert_eq!(client["tags"], 120);
    assert_eq!(client["queries"], 3);
    assert_eq!(client["calls"], 128);
    assert_eq!(client["calls"], server["api_requests"]);
    assert_eq!(client["token_requests"], server["token_requests"]);
    assert_eq!(server["throttled"], 0);
    assert_eq!(client["throttled"], 0);
    let endpoints = &server["by_endpoint"];
    assert_eq!(endpoints["GET /api/machines"], 5);
    assert_eq!(endpoints["POST /api/machines/{id}/tags"], 120);
    assert_eq!(endpoints["POST /api/advancedqueries/run"], 3);
    assert_eq!(server["by_status"]["200"], 129, "{}", server["by_status"]);
    // Quota use, as the server counted it: within every limit, and the per-minute limit
    // of the default class (100) was reached by 125 calls, so callers had to wait.
    let quota = server["quota"].as_array().unwrap();
    assert!(quota.len() >= 4, "{quota:?}");
    for q in quota {
        assert!(
            q["peak"].as_u64().unwrap() <= q["limit"].as_u64().unwrap(),
            "{q}"
        );
    }
    let default_minute = quota
        .iter()
        .find(|q| q["class"] == "default" && q["api_window_secs"] == 60.0)
        .unwrap();
    assert_eq!(default_minute["limit"], 100);
    assert!(default_minute["peak"].as_u64().unwrap() > 0);
    let run_use = default_minute["run_use"].as_f64().unwrap();
    assert!(run_use > 0.0 && run_use <= 1.0, "{default_minute}");
    assert!(client["waited_calls"].as_u64().unwrap() > 0, "{client}");
    assert!(client["longest_wait_ms"].as_u64().unwrap() > 0);
    assert!(started.elapsed() < Duration::from_secs(15));
}

#[test]
fn call_gets_one_answer_as_json() {
    let sim = Simulator::start(SimConfig::default().machines(30)).unwrap();
    let id = &sim.machine_ids()[3];
    let r = call(&sim, &["GET", &format!("/api/machines/{id}")]);
    assert_eq!(r.code(), 0, "stderr: {}", r.stderr);
    assert_eq!(json(&r.stdout)["id"], id.as_str());
    assert_eq!(r.stdout.lines().count(), 1, "compact when not a terminal");
}

#[test]
fn call_all_follows_every_page() {
    let sim = Simulator::start(SimConfig::default().machines(30)).unwrap();
    let r = call(
        &sim,
        &["get", "/api/machines", "--all", "--query", "$top=7"],
    );
    assert_eq!(r.code(), 0, "stderr: {}", r.stderr);
    let ids: Vec<String> = r
        .stdout
        .lines()
        .map(|l| json(l)["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, sim.machine_ids());
    let pages = sim
        .log()
        .iter()
        .filter(|e| e.path.starts_with("/api/machines"))
        .count();
    assert_eq!(pages, 5, "30 machines, 7 a page");

    let r = call(
        &sim,
        &["GET", "/api/machines", "--all", "--array", "-q", "$top=7"],
    );
    assert_eq!(r.code(), 0, "stderr: {}", r.stderr);
    assert_eq!(json(&r.stdout).as_array().unwrap().len(), 30);
}

#[test]
fn call_posts_a_body() {
    let sim = Simulator::start(SimConfig::default().machines(5)).unwrap();
    let id = &sim.machine_ids()[0];
    let path = format!("/api/machines/{id}/tags");
    let r = call(
        &sim,
        &["POST", &path, "--data", r#"{"Value":"cli","Action":"Add"}"#],
    );
    assert_eq!(r.code(), 0, "stderr: {}", r.stderr);
    assert!(json(&r.stdout)["machineTags"].to_string().contains("cli"));
    assert_eq!(sim.action_count(id, "tag"), 1);

    let r = call(&sim, &["POST", &path, "--data", "{not json"]);
    assert_eq!(r.code(), 2);
    assert!(r.stderr.contains("not valid JSON"), "{}", r.stderr);
    assert_eq!(sim.action_count(id, "tag"), 1);
}

#[test]
fn an_error_status_exits_1_with_the_servers_code() {
    let sim = Simulator::start(SimConfig::default().machines(5)).unwrap();
    let r = call(&sim, &["GET", "/api/machines/0123456789abcdef"]);
    assert_eq!(r.code(), 1, "stderr: {}", r.stderr);
    assert!(r.stdout.is_empty());
    assert!(
        r.stderr.contains("HTTP 404 ResourceNotFound"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("[target "),
        "correlation id: {}",
        r.stderr
    );
}

#[test]
fn refused_credentials_exit_5() {
    let sim = Simulator::start(SimConfig::default().machines(5)).unwrap();
    let url = sim.url();
    let r = run(
        &["call", "GET", "/api/machines", "--base-url", &url],
        &[
            ("QUOTAGATE_AUTHORITY", &url),
            ("QUOTAGATE_TENANT_ID", sim.tenant_id()),
            ("QUOTAGATE_CLIENT_ID", sim.client_id()),
            ("QUOTAGATE_CLIENT_SECRET", "wrong"),
        ],
    );
    assert_eq!(r.code(), 5, "stderr: {}", r.stderr);
    assert!(r.stderr.contains("no access token"), "{}", r.stderr);
}

#[test]
fn throttled_past_the_budget_exits_3() {
    // One call per API hour: the second process is told to come back in an hour.
    let sim = Simulator::start(
        SimConfig::default()
            .machines(5)
            .limits("default", &[(1, 3600.0)]),
    )
    .unwrap();
    assert_eq!(call(&sim, &["GET", "/api/machines"]).code(), 0);
    let started = Instant::now();
    let r = call(&sim, &["GET", "/api/machines", "--max-wait", "2"]);
    assert_eq!(r.code(), 3, "stderr: {}", r.stderr);
    assert!(r.stderr.contains("HTTP 429"), "{}", r.stderr);
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// One `call GET /api/machines` to `url` with a fixed token, one attempt, and `extra` flags.
fn call_once(url: &str, extra: &[&str]) -> Run {
    let mut args = vec![
        "call",
        "GET",
        "/api/machines",
        "--base-url",
        url,
        "--max-attempts",
        "1",
    ];
    args.extend_from_slice(extra);
    run(&args, &[("QUOTAGATE_ACCESS_TOKEN", "token")])
}

#[test]
fn an_unreachable_api_exits_4() {
    let r = call_once(&format!("http://127.0.0.1:{}", free_port()), &[]);
    assert_eq!(r.code(), 4, "stderr: {}", r.stderr);
    assert!(r.stderr.contains("transport failure"), "{}", r.stderr);
}

#[test]
fn plain_http_off_loopback_needs_allow_insecure_http() {
    // 0.0.0.0 is not a loopback name, yet connecting to it reaches this host at once.
    let url = format!("http://0.0.0.0:{}", free_port());
    let r = call_once(&url, &[]);
    assert_eq!(r.code(), 2, "stderr: {}", r.stderr);
    assert!(
        r.stderr.contains("refusing http://") && r.stderr.contains("unencrypted"),
        "{}",
        r.stderr
    );
    let r = call_once(&url, &["--allow-insecure-http"]);
    assert_eq!(r.code(), 4, "the call was tried: {}", r.stderr);
}

#[test]
fn seconds_too_large_for_a_duration_are_a_usage_error() {
    let r = run(
        &["call", "GET", "/api/machines", "--timeout", "1e300"],
        &[("QUOTAGATE_ACCESS_TOKEN", "token")],
    );
    assert_eq!(r.code(), 2, "stderr: {}", r.stderr);
    assert!(r.stderr.contains("--timeout"), "{}", r.stderr);
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
}

#[test]
fn missing_credentials_exit_2_naming_the_variables() {
    let r = run(&["call", "GET", "/api/machines"], &[]);
    assert_eq!(r.code(), 2);
    for name in [
        "QUOTAGATE_TENANT_ID",
        "QUOTAGATE_CLIENT_ID",
        "QUOTAGATE_CLIENT_SECRET",
        "QUOTAGATE_ACCESS_TOKEN",
    ] {
        assert!(r.stderr.contains(name), "{name} not named: {}", r.stderr);
    }
    let r = run(
        &["call", "GET", "/api/machines"],
        &[("QUOTAGATE_TENANT_ID", "t"), ("QUOTAGATE_CLIENT_ID", "c")],
    );
    assert_eq!(r.code(), 2);
    assert!(
        r.stderr.contains("not set: QUOTAGATE_CLIENT_SECRET)"),
        "{}",
        r.stderr
    );
}

#[test]
fn bad_flags_exit_2_with_usage() {
    for args in [
        &["call", "GET"][..],
        &["call", "FETCH", "/api/machines"],
        &["call", "GET", "/api/machines", "--array"],
        &["call", "GET", "/api/machines", "--query", "novalue"],
        &["demo", "--threads", "0"],
        &["demo", "--time-scale", "-1"],
        &["sim", "--limit", "100"],
        &["sim", "--error-rate", "2"],
        &["sim", "--inbound-jitter-ms", "10001"],
        &["sim", "--inbound-jitter-ms", "-1"],
        &["frobnicate"],
    ] {
        let r = run(args, &[]);
        assert_eq!(r.code(), 2, "{args:?}: {}", r.stderr);
        assert!(r.stderr.contains("Usage:"), "{args:?}: {}", r.stderr);
        assert!(r.stdout.is_empty());
    }
}

#[test]
fn help_and_version() {
    let r = run(&["--version"], &[]);
    assert_eq!(r.code(), 0);
    assert_eq!(
        r.stdout.trim(),
        format!("quotagate {}", env!("CARGO_PKG_VERSION"))
    );
    for command in ["demo", "sim", "call"] {
        let r = run(&[command, "--help"], &[]);
        assert_eq!(r.code(), 0);
        assert!(r.stdout.contains("Examples:"), "{command}: {}", r.stdout);
    }
    let r = run(&["--help"], &[]);
    assert!(r.stdout.contains("Exit codes:"));
}

#[test]
fn sim_serves_until_stopped_then_prints_its_figures() {
    let mut child = command(
        &[
            "sim",
            "--port",
            "0",
            "--json",
            "--machines",
            "20",
            "--time-scale",
            "0.01",
            "--inbound-jitter-ms",
            "20",
        ],
        &[],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    // The facts come first, on one line; read it without blocking past a deadline.
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let (tx, rx) = mpsc::channel();
    let reader = thread::spawn(move || {
        let mut first = String::new();
        stdout.read_line(&mut first).unwrap();
        tx.send(first).unwrap();
        let mut rest = String::new();
        stdout.read_to_string(&mut rest).unwrap();
        rest
    });
    let first = match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(line) => line,
        Err(_) => {
            let _ = child.kill();
            panic!("sim printed no facts");
        }
    };
    let facts = json(&first);
    let url = facts["url"].as_str().unwrap();
    let authority = facts["authority"].as_str().unwrap();
    let r = run(
        &[
            "call",
            "GET",
            "/api/machines",
            "--all",
            "--base-url",
            url,
            "--authority",
            authority,
        ],
        &[
            ("QUOTAGATE_TENANT_ID", facts["tenant_id"].as_str().unwrap()),
            ("QUOTAGATE_CLIENT_ID", facts["client_id"].as_str().unwrap()),
            (
                "QUOTAGATE_CLIENT_SECRET",
                facts["client_secret"].as_str().unwrap(),
            ),
        ],
    );
    assert_eq!(r.code(), 0, "stderr: {}", r.stderr);
    assert_eq!(r.stdout.lines().count(), 20);

    stop(&mut child);
    let stderr = child.stderr.take().unwrap();
    let run = finish_with(child, reader, stderr);
    let figures = json(run.stdout.trim());
    assert_eq!(figures["api_requests"], 1, "{figures}");
    assert_eq!(figures["token_requests"], 1);
    assert_eq!(figures["throttled"], 0);
}

/// SIGTERM where there is one (the graceful path); elsewhere a kill.
fn stop(child: &mut Child) {
    #[cfg(unix)]
    {
        let pid = child.id() as libc::pid_t;
        // SAFETY: kill only sends a signal to our own child process.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    }
    #[cfg(not(unix))]
    child.kill().unwrap();
}

/// Waits up to 10 s for a child whose stdout a thread already reads.
fn finish_with(
    mut child: Child,
    reader: thread::JoinHandle<String>,
    stderr: impl Read + Send + 'static,
) -> Run {
    let err = drain(stderr);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("sim did not stop on SIGTERM");
        }
        thread::sleep(Duration::from_millis(10));
    };
    let run = Run {
        status,
        stdout: reader.join().unwrap(),
        stderr: err.join().unwrap(),
    };
    if cfg!(unix) {
        assert_eq!(run.code(), 0, "stderr: {}", run.stderr);
    }
    run
}
