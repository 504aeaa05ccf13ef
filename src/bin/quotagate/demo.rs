//! `quotagate demo`: what a real script does, against the simulator started in-process
//! with scaled windows: list every machine across pages, tag each one from several
//! threads, run a few hunting queries. Then the client's figures beside the server's.

use crate::exit::{self, Failure};
use crate::progress::{Phase, Style};
use crate::report::{self, ServerFigures, thousands};
use quotagate::client::{Client, ClientStats, Request, RouteTable};
use quotagate::limiter::Rate;
use quotagate::sim::{SimConfig, Simulator};
use serde::Serialize;
use serde_json::json;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub const EXAMPLES: &str = "\
The simulator runs in this process with every window shortened by --time-scale
(0.01: a 60 s window lasts 600 ms, an hour 36 s), and counts each call when it arrives,
after 0 to --inbound-jitter-ms on the way in. The client is configured with the
published limits, scaled the same way and with no margin, so it waits its turn instead
of collecting 429s: each call counts from its admission until its answer.

Examples:
  quotagate demo
  quotagate demo --machines 300 --threads 16
  quotagate demo --json | jq '.server.quota'

Exit codes: 0 when every call succeeded and the server saw no 429 and no quota
exceeded; 1 when a check failed or the server answered with an error.";

const TAG: &str = "quotagate-demo";

/// Hunting queries of the kind SOC scripts run (the simulator answers rows of machines).
const QUERIES: &[&str] = &[
    "DeviceInfo | where OnboardingStatus == 'Onboarded' | summarize arg_max(Timestamp, *) by DeviceId | take 100",
    "DeviceNetworkEvents | where RemotePort == 3389 and ActionType == 'ConnectionSuccess' | take 50",
    "DeviceProcessEvents | where FileName =~ 'powershell.exe' and ProcessCommandLine has '-enc' | take 25",
    "DeviceTvmSoftwareVulnerabilities | where VulnerabilitySeverityLevel == 'Critical' | take 200",
    "DeviceLogonEvents | where LogonType == 'RemoteInteractive' | take 20",
];

#[derive(clap::Args)]
pub struct Args {
    /// Machines in the simulated tenant.
    #[arg(long, default_value_t = 1400)]
    machines: usize,

    /// Threads that tag machines at once.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    threads: u16,

    /// Real seconds per API second: 0.01 makes a 60 s window last 600 ms.
    #[arg(long, default_value_t = 0.01, value_parser = crate::positive)]
    time_scale: f64,

    /// Machines per page when listing ($top).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    page_size: u32,

    /// Advanced hunting queries to run after tagging.
    #[arg(long, default_value_t = 5)]
    queries: u32,

    /// Milliseconds added to every client-side window. None is needed: each call counts
    /// until its answer, which is exact as the server sees it. A margin is for servers
    /// whose clocks run differently.
    #[arg(long, default_value_t = 0)]
    margin_ms: u64,

    /// The simulator's inbound jitter: each request waits 0 to this many (real)
    /// milliseconds on its way in before the server counts it, as on the internet.
    #[arg(long, default_value_t = 40, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    inbound_jitter_ms: u64,

    /// Print the summary as JSON on stdout (progress stays on stderr).
    #[arg(long)]
    json: bool,
}

/// The client's side of the run.
#[derive(Serialize)]
struct ClientFigures {
    /// HTTP exchanges with the API (token requests not included).
    calls: u64,
    pages: u64,
    machines_listed: u64,
    tags: u64,
    queries: u64,
    rows: u64,
    retries: u64,
    /// 429s the client received.
    throttled: u64,
    token_requests: u64,
    /// Calls that waited for quota, their total and longest wait.
    waited_calls: u64,
    total_wait_ms: u64,
    longest_wait_ms: u64,
    stats: ClientStats,
}

#[derive(Serialize)]
struct Summary {
    ok: bool,
    machines: usize,
    threads: u16,
    time_scale: f64,
    page_size: u32,
    margin_ms: u64,
    inbound_jitter_ms: u64,
    elapsed_ms: u64,
    /// The elapsed time in API time: what the same run takes against the real service.
    api_elapsed_secs: f64,
    client: ClientFigures,
    server: ServerFigures,
    /// Why `ok` is false.
    problems: Vec<String>,
}

/// The published route table with every window scaled to the simulator's time.
fn scaled_client(sim: &Simulator, time_scale: f64, margin: Duration) -> Client {
    let scale = |rates: &[Rate]| -> Vec<Rate> {
        rates
            .iter()
            .map(|r| Rate::new(r.calls, r.window.mul_f64(time_scale)))
            .collect()
    };
    let table = RouteTable::defender();
    let mut builder = Client::builder()
        .base_url(&sim.url())
        .authority(&sim.authority())
        .tenant_id(sim.tenant_id())
        .client_id(sim.client_id())
        .client_secret(sim.client_secret())
        .default_rates(scale(table.default_rates()))
        .margin(margin)
        // Loopback answers come in milliseconds: a stuck one should not hold the demo long.
        .timeout(Duration::from_secs(30));
    // Each route is added ahead of the others: add them last to first to keep the order.
    for route in table.routes().iter().rev() {
        let mut scaled = route.clone();
        scaled.rates = scale(&route.rates);
        builder = builder.route(scaled);
    }
    builder
        .build()
        .expect("the simulator's settings make a valid client")
}

/// Runs `work` over `items` from `threads` threads; the first error stops them all.
fn in_parallel<T: Sync>(
    threads: usize,
    items: &[T],
    work: impl Fn(&T) -> Result<(), quotagate::client::Error> + Sync,
) -> Result<(), quotagate::client::Error> {
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let first_error = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..threads.min(items.len()).max(1) {
            scope.spawn(|| {
                while !failed.load(Ordering::Relaxed) {
                    let Some(item) = items.get(next.fetch_add(1, Ordering::Relaxed)) else {
                        return;
                    };
                    if let Err(e) = work(item) {
                        failed.store(true, Ordering::Relaxed);
                        first_error.lock().unwrap().get_or_insert(e);
                        return;
                    }
                }
            });
        }
    });
    match first_error.into_inner().unwrap() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The live quota use of the client's busiest window, for the progress bar.
fn quota_status(client: &Client, class: &'static str) -> crate::progress::Status {
    let client = client.clone();
    Box::new(move || {
        let stats = client.stats();
        let Some((_, bucket)) = stats
            .buckets
            .iter()
            .find(|(k, _)| k.rsplit('|').next() == Some(class))
        else {
            return String::new();
        };
        match bucket.windows.first() {
            Some(w) => format!(
                "{class} {}/{} in window, {} waited",
                w.used,
                w.calls,
                thousands(bucket.waited_calls)
            ),
            None => String::new(),
        }
    })
}

pub fn run(args: &Args) -> Result<(), Failure> {
    let config = SimConfig::default()
        .machines(args.machines)
        .time_scale(args.time_scale)
        .inbound_jitter(Duration::from_millis(args.inbound_jitter_ms));
    let sim = Simulator::start(config)
        .map_err(|e| Failure::usage(format!("cannot start the simulator: {e}")))?;
    let client = scaled_client(&sim, args.time_scale, Duration::from_millis(args.margin_ms));
    let style = Style::detect();
    let threads = usize::from(args.threads);
    eprintln!(
        "quotagate demo: {} machines, {threads} threads, time scale {} (a 60 s window lasts {}), \
         0-{} ms on the way in before the server counts a call",
        thousands(args.machines as u64),
        args.time_scale,
        report::duration(Duration::from_secs_f64(60.0 * args.time_scale)),
        args.inbound_jitter_ms
    );
    let started = Instant::now();
    let (ids, pages) = list_machines(&client, style, args)?;
    tag_machines(&client, style, threads, &ids)?;
    let (queries, rows) = hunt(&client, style, threads, args.queries as usize)?;
    let elapsed = started.elapsed();

    let stats = client.stats();
    let server = ServerFigures::new(&sim.stats(), &sim.log(), args.time_scale);
    sim.stop();
    let client_figures = ClientFigures {
        pages,
        machines_listed: ids.len() as u64,
        tags: ids.len() as u64,
        queries,
        rows,
        ..ClientFigures::from(stats)
    };
    let problems = problems(&server, &client_figures, args);
    let summary = Summary {
        ok: problems.is_empty(),
        machines: args.machines,
        threads: args.threads,
        time_scale: args.time_scale,
        page_size: args.page_size,
        margin_ms: args.margin_ms,
        inbound_jitter_ms: args.inbound_jitter_ms,
        elapsed_ms: elapsed.as_millis() as u64,
        api_elapsed_secs: (elapsed.as_secs_f64() / args.time_scale).round(),
        client: client_figures,
        server,
        problems,
    };
    report(&summary, args.json)
}

/// Prints the summary (as JSON with `json`); fails when the demo's checks did.
fn report(summary: &Summary, json: bool) -> Result<(), Failure> {
    if json {
        let text = serde_json::to_string_pretty(summary).expect("the summary serializes");
        println!("{text}");
    } else {
        print!("{}", render(summary));
    }
    if summary.ok {
        Ok(())
    } else {
        Err(Failure::new(
            exit::HTTP,
            format!("the demo's checks failed: {}", summary.problems.join("; ")),
        ))
    }
}

/// Lists every machine, page by page (the demo's first phase); returns their ids and the
/// number of pages.
fn list_machines(
    client: &Client,
    style: Style,
    args: &Args,
) -> Result<(Vec<String>, u64), Failure> {
    let listing = Phase::start(
        style,
        "listing machines",
        args.machines as u64,
        Some(quota_status(client, "default")),
    );
    let first = Request::get("/api/machines").query("$top", &args.page_size.to_string());
    let mut pages = client.pages(&first);
    let mut ids: Vec<String> = Vec::with_capacity(args.machines);
    let mut page_count = 0u64;
    while let Some(page) = pages.next_page() {
        let (_, body) = page?;
        page_count += 1;
        let before = ids.len();
        if let Some(items) = body["value"].as_array() {
            ids.extend(
                items
                    .iter()
                    .filter_map(|m| m["id"].as_str().map(str::to_string)),
            );
        }
        listing.add((ids.len() - before) as u64);
    }
    listing.finish(&format!(
        "{} machines in {} pages",
        thousands(ids.len() as u64),
        thousands(page_count)
    ));
    Ok((ids, page_count))
}

/// Tags each machine, from several threads sharing one client and one quota (the second
/// phase).
fn tag_machines(
    client: &Client,
    style: Style,
    threads: usize,
    ids: &[String],
) -> Result<(), Failure> {
    let tagging = Phase::start(
        style,
        "tagging machines",
        ids.len() as u64,
        Some(quota_status(client, "default")),
    );
    let tag = json!({"Value": TAG, "Action": "Add"});
    in_parallel(threads, ids, |id| {
        let request = Request::post(&format!("/api/machines/{id}/tags")).json(&tag);
        client.send(&request)?.error_for_status()?;
        tagging.inc();
        Ok(())
    })?;
    tagging.finish(&format!("{} tagged", thousands(ids.len() as u64)));
    Ok(())
}

/// Runs `count` advanced hunting queries, a class with its own, lower limit (the third
/// phase); returns how many ran and the rows they returned.
fn hunt(
    client: &Client,
    style: Style,
    threads: usize,
    count: usize,
) -> Result<(u64, u64), Failure> {
    let queries: Vec<&str> = (0..count).map(|i| QUERIES[i % QUERIES.len()]).collect();
    let hunting = Phase::start(
        style,
        "hunting queries",
        queries.len() as u64,
        Some(quota_status(client, "hunting")),
    );
    let rows = AtomicUsize::new(0);
    in_parallel(threads, &queries, |q| {
        let request = Request::post("/api/advancedqueries/run").json(&json!({"Query": q}));
        let answer = client.send(&request)?.error_for_status()?;
        let body: serde_json::Value = answer.json().unwrap_or_default();
        let n = body["Results"].as_array().map_or(0, Vec::len);
        rows.fetch_add(n, Ordering::Relaxed);
        hunting.inc();
        Ok(())
    })?;
    let rows = rows.into_inner() as u64;
    hunting.finish(&format!(
        "{} queries, {} rows",
        queries.len(),
        thousands(rows)
    ));
    Ok((queries.len() as u64, rows))
}

impl From<ClientStats> for ClientFigures {
    /// The client's own counters; what the demo did is filled in by the caller.
    fn from(stats: ClientStats) -> Self {
        let buckets = || stats.buckets.values();
        Self {
            calls: stats.requests,
            pages: 0,
            machines_listed: 0,
            tags: 0,
            queries: 0,
            rows: 0,
            retries: stats.retries,
            throttled: stats.throttled,
            token_requests: stats.token_requests,
            waited_calls: buckets().map(|b| b.waited_calls).sum(),
            total_wait_ms: buckets().map(|b| b.total_wait_ms).sum(),
            longest_wait_ms: buckets().map(|b| b.longest_wait_ms).max().unwrap_or(0),
            stats,
        }
    }
}

/// What the demo's checks found wrong: 429s, a window over its limit, calls the two
/// sides count differently, machines missing from the listing.
fn problems(server: &ServerFigures, client: &ClientFigures, args: &Args) -> Vec<String> {
    let mut problems = Vec::new();
    if server.throttled > 0 {
        problems.push(format!("the server answered {} 429s", server.throttled));
    }
    for q in server.exceeded() {
        problems.push(format!(
            "class {}: {} calls in one window of {} ms, over the limit of {}",
            q.class, q.peak, q.window_ms, q.limit
        ));
    }
    if client.calls != server.api_requests {
        problems.push(format!(
            "the client counted {} calls, the server {}",
            client.calls, server.api_requests
        ));
    }
    if client.machines_listed != args.machines as u64 {
        problems.push(format!(
            "listed {} machines of {}",
            client.machines_listed, args.machines
        ));
    }
    problems
}

fn render(s: &Summary) -> String {
    let c = &s.client;
    let rows = vec![
        vec![
            "calls".into(),
            thousands(c.calls),
            format!(
                "{} pages, {} tags, {} hunting queries; token requests: {}",
                thousands(c.pages),
                thousands(c.tags),
                thousands(c.queries),
                c.token_requests
            ),
        ],
        vec![
            "pages".into(),
            thousands(c.pages),
            format!("{} machines listed", thousands(c.machines_listed)),
        ],
        vec![
            "calls that waited".into(),
            thousands(c.waited_calls),
            format!(
                "{} in all, longest {}",
                report::duration(Duration::from_millis(c.total_wait_ms)),
                report::duration(Duration::from_millis(c.longest_wait_ms))
            ),
        ],
        vec![
            "429s (server)".into(),
            thousands(s.server.throttled),
            format!("client retries: {}", c.retries),
        ],
        vec![
            "elapsed".into(),
            report::duration(Duration::from_millis(s.elapsed_ms)),
            format!(
                "{} in API time",
                report::duration(Duration::from_secs_f64(s.api_elapsed_secs))
            ),
        ],
    ];
    let mut out = String::from("\n");
    out.push_str(&report::table(&["", "", ""], &[false, true, false], &rows));
    out.push_str(
        "\nQuota use as the server counted it: the most calls in one rolling window, and the \
         calls as a share of what the limit allowed over the run\n",
    );
    out.push_str(&s.server.quota_table());
    out.push_str(&format!(
        "\n{}\n",
        if s.ok {
            "OK: no 429s, every window within its limit, client and server agree on the calls."
                .to_string()
        } else {
            format!("FAILED: {}", s.problems.join("; "))
        }
    ));
    out
}
