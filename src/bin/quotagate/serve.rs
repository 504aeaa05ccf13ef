//! `quotagate sim`: serves the simulator until Ctrl+C or SIGTERM, then prints its figures.

use crate::exit::Failure;
use crate::report::{ServerFigures, thousands};
use quotagate::sim::{CLASS_DEFAULT, CLASS_HUNTING, MAX_INBOUND_JITTER, SimConfig, Simulator};
use serde_json::json;
use std::io::Write;
use std::time::Duration;

pub const EXAMPLES: &str = "\
Prints the facts a script needs (one per line, or one JSON object with --json), then
serves on 127.0.0.1 until Ctrl+C or SIGTERM, and prints what it saw: requests per
endpoint and status, 429s, and the most calls counted in one window per quota class.
Limits are in API time; --time-scale shortens every window (0.01: a minute lasts 0.6 s).

Examples:
  quotagate sim
  quotagate sim --port 8080 --time-scale 0.1 --limit 20/60 --limit 300/3600
  quotagate sim --error-rate 0.05 --latency-ms 30 --json
  quotagate sim --time-scale 0.01 --limit 10/60 --inbound-jitter-ms 200

  # in another shell, with the facts it printed:
  QUOTAGATE_TENANT_ID=... QUOTAGATE_CLIENT_ID=... QUOTAGATE_CLIENT_SECRET=... \\
    quotagate call GET /api/machines --all --base-url http://127.0.0.1:8080 \\
    --authority http://127.0.0.1:8080";

#[derive(clap::Args)]
pub struct Args {
    /// Port on 127.0.0.1 (0: any free port).
    #[arg(long, default_value_t = 0)]
    port: u16,

    /// Machines in the simulated tenant.
    #[arg(long, default_value_t = 250)]
    machines: usize,

    /// Alerts in the simulated tenant.
    #[arg(long, default_value_t = 300)]
    alerts: usize,

    /// Real seconds per API second: 0.01 makes a 60 s window last 600 ms.
    #[arg(long, default_value_t = 1.0, value_parser = crate::positive)]
    time_scale: f64,

    /// A limit of the default class, in API seconds; repeat for several windows
    /// [default: 100/60 and 1500/3600].
    #[arg(long = "limit", value_name = "CALLS/SECONDS", value_parser = limit)]
    limits: Vec<(u32, f64)>,

    /// A limit of advanced hunting (POST /api/advancedqueries/run); repeat for several
    /// windows [default: 45/60 and 1500/3600].
    #[arg(long = "hunting-limit", value_name = "CALLS/SECONDS", value_parser = limit)]
    hunting_limits: Vec<(u32, f64)>,

    /// Share of API calls answered 503 (0 to 1).
    #[arg(long, default_value_t = 0.0, value_parser = share)]
    error_rate: f64,

    /// Share of API calls processed and then left unanswered, the connection closed (0 to 1).
    #[arg(long, default_value_t = 0.0, value_parser = share)]
    reset_rate: f64,

    /// Real milliseconds added before each answer.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,

    /// The most real milliseconds a request waits on its way in, before it is counted:
    /// each request (token requests too) waits a delay drawn uniformly from 0 to this,
    /// the same delays on every run, so a call sent exactly one window after another
    /// can arrive inside the same window (at most 10000).
    #[arg(long, value_name = "MS", default_value_t = 0, value_parser = inbound_jitter_ms)]
    inbound_jitter_ms: u64,

    /// Token lifetime (`expires_in`), in API seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 3599)]
    token_lifetime: u64,

    /// Print the facts, and at the end the figures, as JSON (one object per line).
    #[arg(long)]
    json: bool,
}

fn share(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("expected a number from 0 to 1, got {s:?}")),
    }
}

/// Milliseconds from 0 to the simulator's maximum inbound jitter.
fn inbound_jitter_ms(s: &str) -> Result<u64, String> {
    let most = MAX_INBOUND_JITTER.as_millis();
    match s.parse::<u64>() {
        Ok(ms) if u128::from(ms) <= most => Ok(ms),
        _ => Err(format!("expected milliseconds from 0 to {most}, got {s:?}")),
    }
}

/// `CALLS/SECONDS`, such as `100/60` or `5/0.5`.
fn limit(s: &str) -> Result<(u32, f64), String> {
    let bad = || format!("expected CALLS/SECONDS such as 100/60, got {s:?}");
    let (calls, secs) = s.split_once('/').ok_or_else(bad)?;
    let calls: u32 = calls.trim().parse().map_err(|_| bad())?;
    let secs: f64 = secs.trim().parse().map_err(|_| bad())?;
    if calls == 0 || !(secs.is_finite() && secs > 0.0) {
        return Err(format!(
            "{s:?}: a limit needs at least one call and a positive window"
        ));
    }
    Ok((calls, secs))
}

pub fn run(args: &Args) -> Result<(), Failure> {
    let sim = Simulator::start_on(config(args), args.port).map_err(|e| {
        Failure::usage(format!(
            "cannot start the simulator on port {}: {e}",
            args.port
        ))
    })?;

    // Ctrl+C and SIGTERM end the wait below; installed before the facts are printed so
    // that a script that reads them and then stops us is always heard.
    let (stop_tx, stop_rx) = std::sync::mpsc::channel();
    ctrlc::set_handler(move || {
        let _ = stop_tx.send(());
    })
    .map_err(|e| Failure::usage(format!("cannot handle Ctrl+C: {e}")))?;

    print_facts(&sim, args);
    let _ = stop_rx.recv();
    eprintln!("stopping");
    let figures = ServerFigures::new(&sim.stats(), &sim.log(), args.time_scale);
    sim.stop();
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&figures).expect("the figures serialize")
        );
    } else {
        print!("{}", render(&figures));
    }
    Ok(())
}

/// The simulator's configuration from the command line.
fn config(args: &Args) -> SimConfig {
    let mut config = SimConfig::default()
        .machines(args.machines)
        .alerts(args.alerts)
        .time_scale(args.time_scale)
        .error_503_rate(args.error_rate)
        .reset_rate(args.reset_rate)
        .latency(Duration::from_millis(args.latency_ms))
        .inbound_jitter(Duration::from_millis(args.inbound_jitter_ms))
        .token_lifetime(Duration::from_secs(args.token_lifetime));
    if !args.limits.is_empty() {
        config = config.limits(CLASS_DEFAULT, &args.limits);
    }
    if !args.hunting_limits.is_empty() {
        config = config.limits(CLASS_HUNTING, &args.hunting_limits);
    }
    config
}

/// Prints what a client needs to reach the simulator: on stdout (one JSON object with
/// `--json`), and how to use it on stderr.
fn print_facts(sim: &Simulator, args: &Args) {
    let facts = [
        ("url", sim.url()),
        ("authority", sim.authority()),
        ("tenant_id", sim.tenant_id().to_string()),
        ("client_id", sim.client_id().to_string()),
        ("client_secret", sim.client_secret().to_string()),
    ];
    let mut out = std::io::stdout().lock();
    if args.json {
        let mut object = serde_json::Map::new();
        for (name, value) in &facts {
            object.insert((*name).to_string(), json!(value));
        }
        object.insert("time_scale".into(), json!(args.time_scale));
        object.insert("machines".into(), json!(args.machines));
        let _ = writeln!(out, "{}", serde_json::Value::Object(object));
    } else {
        for (name, value) in &facts {
            let _ = writeln!(out, "{name:<14}{value}");
        }
    }
    let _ = out.flush();
    drop(out);
    eprintln!(
        "serving the Defender API simulator at {} (time scale {}); Ctrl+C stops it.\n\
         Use it from the call command with:\n  \
         export QUOTAGATE_TENANT_ID={} QUOTAGATE_CLIENT_ID={} QUOTAGATE_CLIENT_SECRET={}\n  \
         export QUOTAGATE_BASE_URL={} QUOTAGATE_AUTHORITY={}",
        sim.url(),
        args.time_scale,
        sim.tenant_id(),
        sim.client_id(),
        sim.client_secret(),
        sim.url(),
        sim.authority()
    );
}

fn render(f: &ServerFigures) -> String {
    let statuses: Vec<String> = f
        .by_status
        .iter()
        .map(|(s, n)| format!("{s}: {}", thousands(*n)))
        .collect();
    let mut out = format!(
        "\n{} requests ({} API, {} token); 429s: {}; 503s: {}; resets: {}\nby status: {}\n\n",
        thousands(f.requests),
        thousands(f.api_requests),
        thousands(f.token_requests),
        thousands(f.throttled),
        thousands(f.errors_503),
        thousands(f.resets),
        if statuses.is_empty() {
            "-".to_string()
        } else {
            statuses.join(", ")
        }
    );
    if !f.by_endpoint.is_empty() {
        out.push_str(&f.endpoint_table());
        out.push('\n');
    }
    if !f.quota.is_empty() {
        out.push_str("Quota use (most calls in one rolling window)\n");
        out.push_str(&f.quota_table());
    }
    out
}
