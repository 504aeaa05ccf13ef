//! Exactness as the server sees it. The simulator counts each call when it arrives, after
//! an inbound delay that varies (0-60 ms), as a server on the internet does; a client
//! configured exactly like it, with no margin, never meets a 429, because each attempt
//! holds its units until its answer and they count from there.

use quotagate::client::{Client, ClientBuilder, Request, RetryPolicy};
use quotagate::limiter::Rate;
use quotagate::sim::{RetryAfterStyle, SimConfig, Simulator, WindowKind};
use std::thread;
use std::time::Duration;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

const JITTER: Duration = Duration::from_millis(60);

fn jittery(limits: &[(u32, f64)]) -> SimConfig {
    SimConfig::default()
        .limits("default", limits)
        .inbound_jitter(JITTER)
        .seed(12)
}

fn builder(sim: &Simulator, rates: &[(u32, u64)]) -> ClientBuilder {
    Client::builder()
        .base_url(&sim.url())
        .authority(&sim.authority())
        .tenant_id(sim.tenant_id())
        .client_id(sim.client_id())
        .client_secret(sim.client_secret())
        .default_rates(
            rates
                .iter()
                .map(|&(calls, window)| Rate::new(calls, ms(window)))
                .collect(),
        )
        .timeout(Duration::from_secs(10))
        .retry_policy(RetryPolicy {
            max_attempts: 10,
            max_quota_wait: Duration::from_secs(60),
            base_backoff: ms(20),
            max_backoff: ms(200),
        })
}

/// `threads` threads each send `calls` GETs; every one must succeed.
fn hammer(client: &Client, threads: usize, calls: usize) {
    let handles: Vec<_> = (0..threads)
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
}

/// The instants at which the simulator counted the default class's calls, sorted.
fn counted(sim: &Simulator) -> Vec<Duration> {
    let mut v: Vec<Duration> = sim
        .log()
        .into_iter()
        .filter(|e| e.counted && e.class == "default")
        .map(|e| e.instant)
        .collect();
    v.sort();
    v
}

/// The share of what a server of `calls` per `window` allowed over the span of `counted`
/// that was used: `n / (calls × (span / window + 1))`.
fn quota_use(counted: &[Duration], calls: u32, window: Duration) -> f64 {
    let span = *counted.last().unwrap() - counted[0];
    counted.len() as f64 / (f64::from(calls) * (span.as_secs_f64() / window.as_secs_f64() + 1.0))
}

#[test]
fn configured_like_the_server_eight_threads_under_jitter_never_see_a_429() {
    let sim = Simulator::start(jittery(&[(20, 2.0)])).unwrap();
    let client = builder(&sim, &[(20, 2000)]).build().unwrap();
    assert_eq!(client.limiter().margin(), Duration::ZERO);
    hammer(&client, 8, 25);
    let st = sim.stats();
    assert_eq!(st.throttled, 0, "{:?}", st.by_status);
    assert!(st.exceeded().is_empty(), "{:?}", st.max_in_window);
    let calls = counted(&sim);
    assert_eq!(calls.len(), 200);
    let used = quota_use(&calls, 20, ms(2000));
    println!("quota use: {:.1} %", used * 100.0);
    assert!(
        used >= 0.95,
        "the client used {:.1} % of the quota",
        used * 100.0
    );
    assert_eq!(client.stats().throttled, 0);
}

#[test]
fn one_thread_under_jitter_never_sees_a_429() {
    let sim = Simulator::start(jittery(&[(10, 1.0)])).unwrap();
    let client = builder(&sim, &[(10, 1000)]).build().unwrap();
    hammer(&client, 1, 40);
    assert_eq!(sim.stats().throttled, 0);
    assert!(sim.stats().exceeded().is_empty());
}

/// A server stricter than the configuration: one burst of 429s (at most one per call in
/// flight when the first arrives), then none: the stated limit is adopted and counted
/// from end instants.
#[test]
fn a_stricter_server_costs_one_burst_then_none() {
    let sim = Simulator::start(jittery(&[(10, 2.0)])).unwrap();
    let client = builder(&sim, &[(20, 2000)]).build().unwrap();
    hammer(&client, 8, 5);
    let st = sim.stats();
    assert!(
        st.throttled >= 1,
        "the server is stricter: {:?}",
        st.by_status
    );
    assert!(st.throttled <= 8, "{} 429s from 8 threads", st.throttled);
    assert_eq!(client.stats().learned_limits, 1);
    // Every 429 belongs to the first burst: within one window of the first.
    let refused: Vec<Duration> = sim
        .log()
        .iter()
        .filter(|e| e.status == 429)
        .map(|e| e.instant)
        .collect();
    let span = *refused.last().unwrap() - refused[0];
    assert!(
        span < ms(2000),
        "the 429s came over {span:?}, not in one burst"
    );
}

/// A fixed-window server with no hint at all in its 429s: configured alike, the client
/// meets none, since calls counted from their end instants within any window of the
/// rate's length fit every fixed window, wherever its edges lie.
#[test]
fn a_fixed_window_server_without_hints_sees_no_burst_past_the_first() {
    let sim = Simulator::start(
        jittery(&[(10, 1.0)])
            .window_kind(WindowKind::Fixed)
            .retry_after_style(RetryAfterStyle::None),
    )
    .unwrap();
    let client = builder(&sim, &[(10, 1000)]).build().unwrap();
    hammer(&client, 8, 5);
    let st = sim.stats();
    assert!(st.throttled <= 8, "{:?}", st.by_status);
    assert!(st.exceeded().is_empty(), "{:?}", st.max_in_window);
    assert_eq!(st.throttled, 0, "{:?}", st.by_status);
}

/// A hunting query that the server works on for 1 s: its hold ends within the learned
/// transit bound after the send, not at the answer, so the hunting window frees sooner;
/// and still no 429.
#[test]
fn long_hunting_queries_free_their_slot_at_the_transit_bound_and_meet_no_429() {
    let sim = Simulator::start(
        jittery(&[(100, 2.0)])
            .limits("hunting", &[(2, 2.0)])
            .hunting_delay(Duration::from_secs(1)),
    )
    .unwrap();
    let client = builder(&sim, &[(100, 2000)])
        .route(quotagate::client::Route::new(
            Some("POST"),
            "/api/advancedqueries/run",
            "advanced_hunting",
            vec![Rate::new(2, ms(2000))],
        ))
        .build()
        .unwrap();
    // Quick answers teach the transit bound.
    hammer(&client, 1, 12);
    let started = std::time::Instant::now();
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let c = client.clone();
            thread::spawn(move || {
                for _ in 0..3 {
                    let r = c
                        .send(
                            &Request::post("/api/advancedqueries/run")
                                .json(&serde_json::json!({"Query": "DeviceInfo | take 1"})),
                        )
                        .unwrap();
                    assert_eq!(r.status(), 200, "{}", r.text());
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let took = started.elapsed();
    let st = sim.stats();
    assert_eq!(st.throttled, 0, "{:?}", st.by_status);
    assert!(st.exceeded().is_empty(), "{:?}", st.max_in_window);
    // Six queries of 1 s at 2 per 2 s: holds ended at the answer would need three rounds
    // of (1 s run + 2 s window) = at least 7 s; ended at the transit bound, about 5 s.
    println!("six hunting queries took {took:?}");
    assert!(took < ms(6500), "{took:?}");
}
