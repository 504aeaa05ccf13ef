//! The client against the local simulator: quotas, Retry-After, learning, tokens, 401s,
//! faults, paging, limits and cancellation. Windows are short so that nothing sleeps long.

use quotagate::client::{Client, ClientBuilder, Error, Request, RetryPolicy};
use quotagate::limiter::Rate;
use quotagate::sim::{Faults, RetryAfterStyle, SimConfig, Simulator};
use std::collections::HashSet;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn builder(sim: &Simulator) -> ClientBuilder {
    Client::builder()
        .base_url(&sim.url())
        .authority(&sim.authority())
        .tenant_id(sim.tenant_id())
        .client_id(sim.client_id())
        .client_secret(sim.client_secret())
        // Loopback answers come in milliseconds: a lost one must not stall a test for minutes.
        .timeout(Duration::from_secs(10))
        .retry_policy(RetryPolicy {
            max_attempts: 10,
            max_quota_wait: Duration::from_secs(30),
            base_backoff: ms(20),
            max_backoff: ms(200),
        })
}

/// Runs `threads` threads that each send `calls` GETs of one machine; all must succeed.
fn hammer(client: &Client, threads: usize, calls: usize) {
    let id = "/api/machines?$top=1";
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let c = client.clone();
            thread::spawn(move || {
                for _ in 0..calls {
                    let r = c.send(&Request::get(id)).unwrap();
                    assert_eq!(r.status(), 200, "{}", r.text());
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

#[test]
fn configured_like_the_server_many_threads_never_see_a_429() {
    let sim =
        Simulator::start(SimConfig::default().limits("default", &[(10, 1.0), (25, 3.0)])).unwrap();
    let client = builder(&sim)
        .default_rates(vec![Rate::new(10, ms(1000)), Rate::new(25, ms(3000))])
        .margin(ms(100))
        .build()
        .unwrap();
    let started = Instant::now();
    hammer(&client, 8, 4);
    let st = sim.stats();
    assert_eq!(st.throttled, 0, "{:?}", st.by_status);
    assert!(st.exceeded().is_empty(), "{:?}", st.max_in_window);
    assert_eq!(st.peak("default", ms(1000)), Some(10));
    // 32 calls at 25 per 3 s need more than 3 s: the hourly-style window held too.
    assert!(started.elapsed() >= ms(3000));
    let stats = client.stats();
    assert_eq!(stats.requests, 32);
    assert_eq!(stats.token_requests, 1, "one token for all threads");
    let bucket = stats.buckets.values().next().unwrap();
    assert_eq!(bucket.admitted_calls, 32);
    assert!(bucket.waited_calls > 0);
}

#[test]
fn a_stricter_server_costs_one_429_then_its_limit_is_learned() {
    let sim = Simulator::start(
        SimConfig::default()
            .limits("default", &[(5, 0.5)])
            .retry_after_style(RetryAfterStyle::BodyOnly),
    )
    .unwrap();
    let client = builder(&sim)
        .default_rates(vec![Rate::new(50, ms(500))])
        .margin(ms(50))
        .build()
        .unwrap();
    for _ in 0..15 {
        assert_eq!(
            client
                .send(&Request::get("/api/machines?$top=1"))
                .unwrap()
                .status(),
            200
        );
    }
    assert_eq!(sim.stats().throttled, 1);
    let stats = client.stats();
    assert_eq!(stats.learned_limits, 1);
    assert_eq!(stats.buckets.values().next().unwrap().windows[0].calls, 5);
    assert!(sim.stats().exceeded().is_empty());
}

#[test]
fn every_retry_after_form_is_honoured() {
    for style in [
        RetryAfterStyle::Seconds,
        RetryAfterStyle::HttpDate,
        RetryAfterStyle::Milliseconds,
        RetryAfterStyle::XmsMilliseconds,
        RetryAfterStyle::None,
    ] {
        let sim = Simulator::start(
            SimConfig::default()
                .limits("default", &[(3, 0.3)])
                .retry_after_style(style),
        )
        .unwrap();
        // The client believes in a much higher limit: only the server's hints hold it back.
        let client = builder(&sim)
            .default_rates(vec![Rate::new(1000, ms(300))])
            .build()
            .unwrap();
        for _ in 0..8 {
            let r = client.send(&Request::get("/api/machines?$top=1")).unwrap();
            assert_eq!(r.status(), 200, "{style:?}");
        }
        let log = sim.log();
        // After each 429, the next call of the bucket came no earlier than the hint.
        for (i, e) in log.iter().enumerate() {
            if let (429, Some(wait)) = (e.status, e.retry_after) {
                if matches!(style, RetryAfterStyle::None) {
                    continue;
                }
                let next = log[i + 1..].iter().find(|n| n.class == "default");
                let next = next.expect("a retry follows a 429");
                // Whole seconds and dates round up; the others are exact.
                assert!(
                    next.instant + ms(5) >= e.instant + wait.min(ms(300)),
                    "{style:?}: retried {:?} after a 429 asking {wait:?}",
                    next.instant - e.instant
                );
            }
        }
        assert!(sim.stats().exceeded().is_empty(), "{style:?}");
        assert!(
            client.stats().throttled >= 1,
            "{style:?}: the server did throttle"
        );
    }
}

#[test]
fn tokens_are_refreshed_early_once_for_all_threads() {
    let sim = Simulator::start(
        SimConfig::default()
            .token_lifetime(ms(1000))
            .limits("default", &[(100_000, 60.0)]),
    )
    .unwrap();
    let client = builder(&sim)
        .default_rates(vec![Rate::new(100_000, Duration::from_secs(60))])
        .build()
        .unwrap();
    let started = Instant::now();
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let c = client.clone();
            thread::spawn(move || {
                while started.elapsed() < ms(2500) {
                    assert_eq!(
                        c.send(&Request::get("/api/machines?$top=1"))
                            .unwrap()
                            .status(),
                        200
                    );
                    thread::sleep(ms(20));
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let st = sim.stats();
    // Tokens live 1 s and are refreshed 200 ms early: about one per 800 ms, never one per thread.
    assert!(
        (3..=5).contains(&st.token_requests),
        "{} token requests",
        st.token_requests
    );
    assert_eq!(
        st.by_status.get(&401),
        None,
        "no call went out with an expired token"
    );
    assert_eq!(client.stats().token_requests, st.token_requests);
}

#[test]
fn a_401_refreshes_the_token_and_retries_once() {
    // expires_in says an hour, but the scaled token dies after about 360 ms of real time.
    let sim = Simulator::start(SimConfig::default().time_scale(0.0001)).unwrap();
    let client = builder(&sim).build().unwrap();
    assert_eq!(
        client
            .send(&Request::get("/api/machines?$top=1"))
            .unwrap()
            .status(),
        200
    );
    thread::sleep(ms(500));
    let r = client.send(&Request::get("/api/machines?$top=1")).unwrap();
    assert_eq!((r.status(), r.attempts()), (200, 2));
    assert_eq!(sim.stats().by_status.get(&401), Some(&1));
    assert_eq!(sim.stats().token_requests, 2);
}

#[test]
fn a_fixed_token_that_is_refused_gives_the_401() {
    let sim = Simulator::start(SimConfig::default()).unwrap();
    let client = Client::builder()
        .base_url(&sim.url())
        .access_token("not-a-token")
        .build()
        .unwrap();
    let r = client.send(&Request::get("/api/machines")).unwrap();
    assert_eq!(r.status(), 401);
    let e = r.error_for_status().unwrap_err();
    assert!(
        matches!(&e, Error::Http(d) if d.code.as_deref() == Some("Unauthorized")),
        "{e}"
    );
    assert!(!e.to_string().contains("not-a-token"));
}

#[test]
fn wrong_credentials_are_an_auth_error_without_the_secret() {
    let sim = Simulator::start(SimConfig::default()).unwrap();
    let client = builder(&sim)
        .client_secret("wrong-secret-value")
        .build()
        .unwrap();
    let e = client.send(&Request::get("/api/machines")).unwrap_err();
    assert!(matches!(e, Error::Auth(..)), "{e}");
    let text = format!("{e} {e:?} {client:?}");
    assert!(!text.contains("wrong-secret-value"), "{text}");
}

#[test]
fn gets_survive_503_and_reset_storms() {
    let sim = Simulator::start(
        SimConfig::default()
            .seed(7)
            .limits("default", &[(100_000, 60.0)])
            .faults(Faults {
                error_503_rate: 0.3,
                reset_rate: 0.3,
                ..Faults::default()
            }),
    )
    .unwrap();
    let client = builder(&sim)
        .default_rates(vec![Rate::new(100_000, Duration::from_secs(60))])
        .build()
        .unwrap();
    hammer(&client, 4, 10);
    let st = sim.stats();
    assert!(st.errors_503 > 0 && st.resets > 0, "{st:?}");
    assert!(client.stats().retries > 0);
}

#[test]
fn an_ambiguous_post_is_reported_and_never_repeated() {
    let sim = Simulator::start(SimConfig::default().faults(Faults {
        reset_rate: 1.0,
        ..Faults::default()
    }))
    .unwrap();
    let id = sim.machine_ids()[0].clone();
    let client = builder(&sim).build().unwrap();
    let req = Request::post(&format!("/api/machines/{id}/isolate"))
        .json(&serde_json::json!({"Comment": "test", "IsolationType": "Full"}));
    let e = client.send(&req).unwrap_err();
    assert!(matches!(e, Error::Transport(..)), "{e}");
    assert!(e.to_string().contains("not repeated"), "{e}");
    assert_eq!(
        sim.action_count(&id, "isolate"),
        1,
        "the machine was isolated once"
    );
}

#[test]
fn a_post_answered_503_is_retried() {
    let sim = Simulator::start(SimConfig::default().seed(3).faults(Faults {
        error_503_rate: 0.5,
        ..Faults::default()
    }))
    .unwrap();
    let id = sim.machine_ids()[1].clone();
    let client = builder(&sim).build().unwrap();
    for _ in 0..5 {
        let req = Request::post(&format!("/api/machines/{id}/tags"))
            .json(&serde_json::json!({"Value": "t", "Action": "Add"}));
        assert_eq!(client.send(&req).unwrap().status(), 200);
    }
    assert_eq!(
        sim.action_count(&id, "tag"),
        5,
        "each tag applied exactly once"
    );
    assert!(sim.stats().errors_503 > 0);
}

#[test]
fn paging_follows_next_links_exactly() {
    let sim = Simulator::start(SimConfig::default().machines(250)).unwrap();
    let client = builder(&sim).build().unwrap();
    let first = Request::get("/api/machines")
        .query("$top", "7")
        .query("$filter", "healthStatus eq 'Active'");
    let ids: Vec<String> = client
        .items(&first)
        .map(|m| m.unwrap()["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 250);
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 250);
    let pages: Vec<_> = sim
        .log()
        .into_iter()
        .filter(|e| e.path.starts_with("/api/machines"))
        .collect();
    assert_eq!(pages.len(), 36);
    // Every page carried the filter exactly as the first request encoded it.
    let filter = "$filter=healthStatus%20eq%20%27Active%27";
    assert!(
        pages.iter().all(|p| p.path.contains(filter)),
        "{:?}",
        pages[1].path
    );
    assert_eq!(client.pages(&first).count(), 36);
}

#[test]
fn an_error_page_ends_paging_with_the_details() {
    let sim = Simulator::start(SimConfig::default()).unwrap();
    let client = builder(&sim).build().unwrap();
    let mut items = client.items(&Request::get("/api/nothing-here"));
    match items.next() {
        Some(Err(Error::Http(d))) => {
            assert_eq!(d.status, Some(404));
            assert_eq!(d.code.as_deref(), Some("NotFound"));
            assert!(d.request_id.is_some() || d.target.is_some());
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn bodies_over_the_limit_fail() {
    let sim = Simulator::start(SimConfig::default()).unwrap();
    let client = builder(&sim).max_body(100).build().unwrap();
    let e = client.send(&Request::get("/api/machines")).unwrap_err();
    assert_eq!(e, Error::BodyTooLarge(100));
}

#[test]
fn a_slow_server_times_out_and_a_patient_client_waits() {
    let sim = Simulator::start(SimConfig::default().latency(ms(300))).unwrap();
    let impatient = builder(&sim)
        .timeout(ms(100))
        .max_attempts(2)
        .build()
        .unwrap();
    let started = Instant::now();
    let e = impatient
        .send(&Request::get("/api/machines?$top=1"))
        .unwrap_err();
    // The token endpoint is slow too, so the first exchange to time out may be the token's.
    let timed_out =
        matches!(e, Error::Timeout(..)) || matches!(&e, Error::Auth(m, _) if m.contains("timeout"));
    assert!(timed_out, "{e}");
    assert!(started.elapsed() < ms(3000));
    let patient = builder(&sim).build().unwrap();
    hammer(&patient, 4, 2);
}

#[test]
fn a_waiting_call_can_be_cancelled_or_closed() {
    let sim = Simulator::start(SimConfig::default()).unwrap();
    // The second call must wait 10 s, well within the 30 s budget, so it really waits.
    let client = builder(&sim)
        .default_rates(vec![Rate::new(1, Duration::from_secs(10))])
        .build()
        .unwrap();
    client.send(&Request::get("/api/machines?$top=1")).unwrap();
    let req = Request::get("/api/machines?$top=1");
    let cancel = req.canceller();
    let c = client.clone();
    let waiter = thread::spawn(move || c.send(&req));
    thread::sleep(ms(100));
    let t = Instant::now();
    cancel.cancel();
    assert_eq!(waiter.join().unwrap().unwrap_err(), Error::Cancelled);
    assert!(t.elapsed() < ms(200));
    let c = client.clone();
    let waiter = thread::spawn(move || c.send(&Request::get("/api/machines?$top=1")));
    thread::sleep(ms(100));
    client.close();
    assert_eq!(waiter.join().unwrap().unwrap_err(), Error::Closed);
    assert_eq!(
        client
            .stats()
            .buckets
            .values()
            .next()
            .unwrap()
            .admitted_calls,
        1,
        "no permit leaked"
    );
}

#[test]
fn the_quota_budget_runs_out_as_throttled() {
    let sim = Simulator::start(SimConfig::default()).unwrap();
    let client = builder(&sim)
        .default_rates(vec![Rate::new(1, Duration::from_secs(60))])
        .max_quota_wait(ms(200))
        .build()
        .unwrap();
    client.send(&Request::get("/api/machines?$top=1")).unwrap();
    let t = Instant::now();
    let e = client
        .send(&Request::get("/api/machines?$top=1"))
        .unwrap_err();
    assert!(matches!(e, Error::Throttled(_)), "{e}");
    assert!(
        t.elapsed() < ms(150),
        "a wait past the budget fails at once"
    );
}

#[test]
fn hunting_has_its_own_bucket() {
    let sim = Simulator::start(SimConfig::default()).unwrap();
    let client = builder(&sim).build().unwrap();
    let r = client
        .send(
            &Request::post("/api/advancedqueries/run")
                .json(&serde_json::json!({"Query": "DeviceInfo | take 3"})),
        )
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().unwrap();
    assert!(v["Results"].is_array() && v["Schema"].is_array());
    client.send(&Request::get("/api/machines?$top=1")).unwrap();
    let keys: Vec<String> = client.stats().buckets.keys().cloned().collect();
    assert_eq!(keys.len(), 2);
    assert!(keys.iter().any(|k| k.ends_with("|hunting")), "{keys:?}");
}

#[test]
fn urls_off_the_api_host_are_refused() {
    let sim = Simulator::start(SimConfig::default()).unwrap();
    let client = builder(&sim).build().unwrap();
    for bad in [
        "https://evil.example/api/machines",
        "api/machines",
        &format!("{}.evil/x", sim.url()),
    ] {
        assert!(
            matches!(
                client.send(&Request::get(bad)),
                Err(Error::InvalidArgument(_))
            ),
            "{bad}"
        );
    }
    let absolute = format!("{}/api/machines?$top=1", sim.url());
    assert_eq!(client.send(&Request::get(&absolute)).unwrap().status(), 200);
}

#[test]
fn bad_configuration_is_refused() {
    assert!(Client::builder().build().is_err(), "no credentials");
    assert!(
        Client::builder()
            .access_token("t")
            .base_url("ftp://x")
            .build()
            .is_err()
    );
    assert!(Client::builder().access_token("").build().is_err());
    assert!(
        Client::builder()
            .access_token("t")
            .max_attempts(0)
            .build()
            .is_err()
    );
    assert!(
        Client::builder()
            .access_token("t")
            .default_rates(vec![])
            .build()
            .is_err()
    );
    assert!(
        Client::builder()
            .tenant_id("a/b")
            .client_id("c")
            .client_secret("s")
            .build()
            .is_err()
    );
}

#[test]
fn clients_can_share_one_limiter() {
    let sim = Simulator::start(SimConfig::default().limits("default", &[(6, 1.0)])).unwrap();
    let limiter = quotagate::Limiter::builder()
        .rate(Rate::new(6, ms(1000)))
        .margin(ms(100))
        .build()
        .unwrap();
    let a = Arc::new(
        builder(&sim)
            .limiter(limiter.clone())
            .default_rates(vec![Rate::new(6, ms(1000))])
            .build()
            .unwrap(),
    );
    let b = builder(&sim)
        .limiter(limiter)
        .default_rates(vec![Rate::new(6, ms(1000))])
        .build()
        .unwrap();
    hammer(&a, 2, 3);
    hammer(&b, 2, 3);
    assert_eq!(sim.stats().throttled, 0);
}

#[test]
fn plain_http_off_loopback_is_refused_unless_allowed() {
    let sim = Simulator::start(SimConfig::default()).unwrap();
    let port = sim.addr().port();
    for (base, authority) in [
        ("http://api.example.com", "https://login.example.com"),
        ("https://api.example.com", "http://login.example.com"),
        ("http://10.0.0.7:8080", "https://login.example.com"),
    ] {
        let b = Client::builder()
            .base_url(base)
            .authority(authority)
            .tenant_id("t")
            .client_id("c")
            .client_secret("s");
        let e = b.build().unwrap_err().to_string();
        assert!(
            e.contains("is not a loopback host")
                && e.contains("unencrypted")
                && e.contains("allow_insecure_http"),
            "{e}"
        );
        assert!(
            b.allow_insecure_http(true).build().is_ok(),
            "{base} {authority}"
        );
    }
    // The simulator on loopback, by address or by name, needs no opt-in.
    for host in ["127.0.0.1", "localhost"] {
        let url = format!("http://{host}:{port}");
        let client = builder(&sim)
            .base_url(&url)
            .authority(&url)
            .build()
            .unwrap();
        let r = client.send(&Request::get("/api/machines?$top=1")).unwrap();
        assert_eq!(r.status(), 200);
    }
}

#[test]
fn user_information_in_urls_is_refused_and_never_printed() {
    let sim = Simulator::start(SimConfig::default()).unwrap();
    let with_password = sim.url().replace("http://", "http://admin:hunter2@");
    for (base, authority) in [
        (with_password.as_str(), sim.authority()),
        (sim.url().as_str(), with_password.clone()),
        (
            "https://us/er:hunter2@api.example.com",
            "https://login.example.com".to_string(),
        ),
    ] {
        let e = builder(&sim)
            .base_url(base)
            .authority(&authority)
            .build()
            .unwrap_err()
            .to_string();
        assert!(e.contains("user name or password"), "{e}");
        assert!(!e.contains("hunter2") && !e.contains("admin"), "{e}");
    }
    // A proxy or store may carry credentials; the builder's debug output hides them.
    let b = builder(&sim)
        .proxy("http://proxyuser:hunter2@proxy.example:3128")
        .store("redis://:hun/ter2@cache:6379/0");
    let shown = format!("{b:?}");
    assert!(
        !shown.contains("hunter2") && !shown.contains("ter2"),
        "{shown}"
    );
    assert!(shown.contains("***@proxy.example:3128"), "{shown}");
    assert!(!shown.contains(sim.client_secret()), "{shown}");
}

#[test]
fn requests_the_wire_would_refuse_fail_before_any_quota_is_taken() {
    let sim = Simulator::start(SimConfig::default()).unwrap();
    let client = builder(&sim).build().unwrap();
    for (name, value) in [("X(A", "v"), ("X-Test", "a\u{1}b"), ("X-Test", "a\u{7f}b")] {
        let r = Request::get("/api/machines").header(name, value);
        match client.send(&r) {
            Err(Error::InvalidArgument(why)) => assert!(why.contains("header"), "{why}"),
            other => panic!("{name:?}: {value:?}: {other:?}"),
        }
    }
    assert!(matches!(
        client.send(&Request::new("GE T", "/api/machines")),
        Err(Error::InvalidArgument(_))
    ));
    // A fragment would silently drop the query after it.
    match client.send(&Request::get("/api/machines#top").query("$top", "1")) {
        Err(Error::InvalidArgument(why)) => assert!(why.contains('#'), "{why}"),
        other => panic!("{other:?}"),
    }
    let stats = client.stats();
    assert_eq!(stats.requests, 0);
    assert!(
        stats.buckets.values().all(|b| b.admitted_calls == 0),
        "{stats:?}"
    );
    assert_eq!(sim.stats().requests, 0);
}

#[test]
fn every_spelling_of_the_hunting_path_takes_the_hunting_quota() {
    let sim = Simulator::start(SimConfig::default()).unwrap();
    let client = builder(&sim).max_attempts(1).build().unwrap();
    let query = serde_json::json!({"Query": "DeviceInfo | take 1"});
    for path in [
        "/api/machines/../advancedqueries/run",
        "/api//advancedqueries/run",
        "/api/advancedqueries/%72un",
    ] {
        // The simulator does not resolve such paths; what counts is the bucket taken.
        let _ = client.send(&Request::post(path).json(&query));
    }
    let stats = client.stats();
    let hunting = stats
        .buckets
        .iter()
        .find(|(k, _)| k.ends_with("|hunting"))
        .map(|(_, b)| b.admitted_calls);
    assert_eq!(hunting, Some(3), "{:?}", stats.buckets.keys());
    assert!(
        stats.buckets.keys().all(|k| !k.ends_with("|default")),
        "{:?}",
        stats.buckets.keys()
    );
}

// A call's deadline (`Request::deadline`): one bound on the quota wait, the token fetch,
// every attempt and the backoff between them, unlike the per-attempt timeout.

fn is_deadline(e: &Error) -> bool {
    matches!(e, Error::Timeout(m, _) if m.contains("deadline of 1.000 s"))
}

#[test]
fn a_deadline_shorter_than_the_quota_wait_fails_with_a_timeout_at_once() {
    let sim = Simulator::start(SimConfig::default()).unwrap();
    let client = builder(&sim)
        .default_rates(vec![Rate::new(1, Duration::from_secs(60))])
        .build()
        .unwrap();
    client.send(&Request::get("/api/machines")).unwrap();
    let started = Instant::now();
    let e = client
        .send(&Request::get("/api/machines").deadline(Duration::from_secs(1)))
        .unwrap_err();
    assert!(is_deadline(&e), "{e}");
    assert!(started.elapsed() < ms(1200), "{:?}", started.elapsed());
    // Without a deadline the same wait is the quota-wait budget's to refuse.
    let e = client.send(&Request::get("/api/machines")).unwrap_err();
    assert!(matches!(e, Error::Throttled(_)), "{e}");
}

#[test]
fn a_deadline_bounds_a_slow_token_endpoint_and_slow_attempts() {
    // The token endpoint answers after 3 s, like the API; attempts may take 10 s each.
    let sim = Simulator::start(SimConfig::default().latency(ms(3000))).unwrap();
    let client = builder(&sim).build().unwrap();
    for req in [
        Request::get("/api/machines"),
        Request::post("/api/machines/m1/tags")
            .json(&serde_json::json!({"Value": "x", "Action": "Add"})),
    ] {
        let started = Instant::now();
        let e = client
            .send(&req.deadline(Duration::from_secs(1)))
            .unwrap_err();
        assert!(is_deadline(&e), "{e}");
        let took = started.elapsed();
        assert!(took >= ms(950) && took < ms(1500), "{took:?}");
    }
}

#[test]
fn a_deadline_that_holds_changes_nothing() {
    let sim = Simulator::start(SimConfig::default()).unwrap();
    let client = builder(&sim).build().unwrap();
    let r = client
        .send(&Request::get("/api/machines").deadline(Duration::from_secs(20)))
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[test]
fn one_deadline_bounds_all_the_pages() {
    let sim = Simulator::start(SimConfig::default().machines(50)).unwrap();
    let client = builder(&sim)
        .default_rates(vec![Rate::new(2, Duration::from_secs(60))])
        .build()
        .unwrap();
    let first = Request::get("/api/machines")
        .query("$top", "10")
        .deadline(Duration::from_secs(1));
    let started = Instant::now();
    let mut pages = client.pages(&first);
    assert!(pages.next().unwrap().is_ok());
    assert!(pages.next().unwrap().is_ok());
    let e = pages.next().unwrap().unwrap_err();
    assert!(is_deadline(&e), "{e}");
    assert!(started.elapsed() < ms(1200));
}

#[test]
fn an_unreachable_token_endpoint_is_a_transport_failure_and_a_closed_limiter_is_named() {
    let sim = Simulator::start(SimConfig::default()).unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let client = builder(&sim)
        .authority(&format!("http://127.0.0.1:{port}"))
        .max_attempts(2)
        .build()
        .unwrap();
    let e = client.send(&Request::get("/api/machines")).unwrap_err();
    assert!(
        matches!(&e, Error::Transport(m, _) if m.contains("token endpoint is unreachable")),
        "{e}"
    );

    let limiter = quotagate::limiter::Limiter::builder()
        .rate(Rate::new(100, Duration::from_secs(60)))
        .build()
        .unwrap();
    let client = builder(&sim).limiter(limiter.clone()).build().unwrap();
    client.send(&Request::get("/api/machines")).unwrap();
    limiter.close();
    let e = client.send(&Request::get("/api/machines")).unwrap_err();
    assert_eq!(e, Error::LimiterClosed);
    assert!(e.to_string().contains("client itself is open"), "{e}");
}
