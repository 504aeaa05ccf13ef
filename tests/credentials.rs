//! Cloud presets, route tables, token providers, certificate credentials, concurrency caps
//! and the hunting run-time budget, against the local simulator where a server is needed.

use quotagate::client::{
    CertificateCredential, Client, ClientBuilder, Cloud, Error, HuntingBudgetPolicy, Request,
    RetryPolicy, Secret, SignatureAlgorithm,
};
use quotagate::limiter::Rate;
use quotagate::sim::{SimConfig, Simulator};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A client of `sim` without credentials yet.
fn bare(sim: &Simulator) -> ClientBuilder {
    Client::builder()
        .base_url(&sim.url())
        .authority(&sim.authority())
        // Loopback answers come in milliseconds (the slowest here in 600 ms); the
        // simulator's server can leave a connection of a burst unread until another one
        // closes, and such a stall must not hold a test for long.
        .timeout(Duration::from_secs(3))
        .retry_policy(RetryPolicy {
            max_attempts: 6,
            max_quota_wait: Duration::from_secs(30),
            base_backoff: ms(20),
            max_backoff: ms(200),
        })
}

fn get_machine(client: &Client) -> Result<u16, Error> {
    client
        .send(&Request::get("/api/machines?$top=1"))
        .map(|r| r.status())
}

#[test]
fn cloud_presets_resolve_to_their_hosts() {
    let client = |cloud: Cloud| {
        Client::builder()
            .cloud(cloud)
            .tenant_id("t")
            .client_id("c")
            .client_secret("s")
            .build()
            .unwrap()
    };
    let c = client(Cloud::Commercial);
    assert_eq!(c.base_url(), "https://api.securitycenter.microsoft.com");
    assert_eq!(
        c.token_url(),
        "https://login.microsoftonline.com/t/oauth2/v2.0/token"
    );
    assert_eq!(
        c.token_audience(),
        "https://api.securitycenter.microsoft.com/.default"
    );
    for (name, host) in [
        ("us", "us"),
        ("eu", "eu"),
        ("uk", "uk"),
        ("au", "au"),
        ("swa", "swa"),
        ("ina", "ina"),
        ("aea", "aea"),
    ] {
        let c = client(Cloud::from_name(name).unwrap());
        assert_eq!(
            c.base_url(),
            format!("https://{host}.api.security.microsoft.com")
        );
        assert!(
            c.token_url()
                .starts_with("https://login.microsoftonline.com/")
        );
        assert_eq!(
            c.token_audience(),
            "https://api.securitycenter.microsoft.com/.default"
        );
    }
    let gcc = client(Cloud::Gcc);
    assert_eq!(
        gcc.base_url(),
        "https://api-gcc.securitycenter.microsoft.us"
    );
    assert!(
        gcc.token_url()
            .starts_with("https://login.microsoftonline.com/")
    );
    assert_eq!(
        gcc.token_audience(),
        "https://api-gcc.securitycenter.microsoft.us/.default"
    );
    for cloud in [Cloud::GccHigh, Cloud::Dod] {
        let c = client(cloud);
        assert_eq!(c.base_url(), "https://api-gov.securitycenter.microsoft.us");
        assert_eq!(
            c.token_url(),
            "https://login.microsoftonline.us/t/oauth2/v2.0/token"
        );
        assert_eq!(
            c.token_audience(),
            "https://api-gov.securitycenter.microsoft.us/.default"
        );
    }
}

#[test]
fn explicit_settings_override_the_cloud_in_any_order() {
    let c = Client::builder()
        .base_url("https://example.test")
        .authority("https://login.example.test")
        .cloud(Cloud::GccHigh)
        .access_token("x")
        .build()
        .unwrap();
    assert_eq!(c.base_url(), "https://example.test");
    assert!(c.token_url().starts_with("https://login.example.test/"));
    // The cloud still names the audience.
    assert_eq!(
        c.token_audience(),
        "https://api-gov.securitycenter.microsoft.us/.default"
    );
    let c = Client::builder()
        .cloud(Cloud::Eu)
        .resource("https://api.security.microsoft.com")
        .access_token("x")
        .build()
        .unwrap();
    assert_eq!(c.token_audience(), "https://api.security.microsoft.com");
    assert!(c.token_url().ends_with("/oauth2/token"));
}

#[test]
fn the_base_url_picks_the_route_table() {
    use quotagate::client::{Route, RouteTable};
    let b = Client::builder().base_url("https://graph.microsoft.com");
    assert_eq!(
        b.routes()
            .lookup("POST", "/v1.0/security/runHuntingQuery")
            .0,
        "graph_hunting"
    );
    let b = b.route(Route::new(
        Some("POST"),
        "/v1.0/security/runHuntingQuery",
        "mine",
        vec![Rate::new(1, Duration::from_secs(1))],
    ));
    assert_eq!(
        b.routes()
            .lookup("POST", "/v1.0/security/runHuntingQuery")
            .0,
        "mine"
    );
    let xdr = Client::builder().cloud(Cloud::Uk).routes();
    assert_eq!(xdr.lookup("GET", "/api/incidents").0, "incidents");
    assert_eq!(
        RouteTable::for_base_url(Cloud::Gcc.base_url())
            .lookup("POST", "/api/advancedqueries/run")
            .0,
        "hunting"
    );
}

#[test]
fn a_token_provider_is_called_once_per_refresh_across_threads() {
    let sim = Arc::new(
        Simulator::start(
            SimConfig::default()
                .token_lifetime(ms(1000))
                .limits("default", &[(100_000, 60.0)]),
        )
        .unwrap(),
    );
    let calls = Arc::new(AtomicU32::new(0));
    let (s, n) = (sim.clone(), calls.clone());
    let client = bare(&sim)
        .token_provider(move || {
            n.fetch_add(1, Ordering::SeqCst);
            // A slow source: the other threads keep the old token or wait, never call too.
            thread::sleep(ms(30));
            Ok((Secret::new(s.issue_token("app")), ms(1000)))
        })
        .tenant_id("tenant")
        .client_id("app")
        .default_rates(vec![Rate::new(100_000, Duration::from_secs(60))])
        .build()
        .unwrap();
    let started = Instant::now();
    let threads: Vec<_> = (0..6)
        .map(|_| {
            let c = client.clone();
            thread::spawn(move || {
                while started.elapsed() < ms(2000) {
                    assert_eq!(get_machine(&c).unwrap(), 200);
                    thread::sleep(ms(20));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // Tokens live 1 s and are refreshed 200 ms early: about one per 800 ms.
    let n = calls.load(Ordering::SeqCst);
    assert!((2..=4).contains(&n), "{n} provider calls");
    assert_eq!(client.stats().token_requests, u64::from(n));
    assert_eq!(sim.stats().by_status.get(&401), None);
    assert!(
        client
            .stats()
            .buckets
            .keys()
            .all(|k| k.contains("|tenant|app|"))
    );
}

#[test]
fn a_refused_provider_token_is_replaced_once_and_failures_are_auth_errors() {
    let sim = Arc::new(Simulator::start(SimConfig::default()).unwrap());
    let calls = Arc::new(AtomicU32::new(0));
    let (s, n) = (sim.clone(), calls.clone());
    let client = bare(&sim)
        .token_provider(move || match n.fetch_add(1, Ordering::SeqCst) {
            0 => Ok((Secret::new("revoked"), Duration::from_secs(3600))),
            _ => Ok((Secret::new(s.issue_token("app")), Duration::from_secs(3600))),
        })
        .build()
        .unwrap();
    assert_eq!(get_machine(&client).unwrap(), 200);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(sim.stats().by_status.get(&401), Some(&1));

    let failing = bare(&sim)
        .token_provider(|| Err("the vault is sealed".into()))
        .build()
        .unwrap();
    match get_machine(&failing) {
        Err(Error::Auth(m, _)) => assert!(m.contains("the vault is sealed"), "{m}"),
        other => panic!("{other:?}"),
    }
    let panicking = bare(&sim)
        .token_provider(|| panic!("bug in the provider"))
        .build()
        .unwrap();
    assert!(matches!(get_machine(&panicking), Err(Error::Auth(..))));
    // The refresh was not left marked as running: the next call asks again.
    assert!(matches!(get_machine(&panicking), Err(Error::Auth(..))));
    let empty = bare(&sim)
        .token_provider(|| Ok((Secret::new(""), Duration::from_secs(60))))
        .build()
        .unwrap();
    assert!(matches!(get_machine(&empty), Err(Error::Auth(..))));
}

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

/// A simulator that knows app.crt for `cert-app` and the expired one for `old-app`.
fn certificate_sim() -> Simulator {
    Simulator::start(
        SimConfig::default()
            .add_certificate_client("cert-app", std::fs::read(data("app.crt")).unwrap())
            .add_certificate_client("old-app", std::fs::read(data("app-expired.crt")).unwrap()),
    )
    .unwrap()
}

fn certificate_client(sim: &Simulator, client_id: &str, cert: CertificateCredential) -> Client {
    bare(sim)
        .tenant_id(sim.tenant_id())
        .client_id(client_id)
        .certificate(cert)
        .build()
        .unwrap()
}

#[test]
fn certificates_from_pem_pkcs8_pkcs1_and_one_file_get_tokens() {
    let sim = certificate_sim();
    let loads = [
        CertificateCredential::from_pem_files(&data("app.crt"), Some(&data("app.key"))),
        CertificateCredential::from_pem_files(&data("app.crt"), Some(&data("app-pkcs1.key"))),
        CertificateCredential::from_pem_files(&data("app.pem"), None),
        CertificateCredential::from_pem(
            &std::fs::read(data("app.crt")).unwrap(),
            &std::fs::read(data("app.key")).unwrap(),
        )
        .map(|c| c.with_algorithm(SignatureAlgorithm::Rs256)),
    ];
    for cert in loads {
        let cert = cert.unwrap();
        let shown = format!("{cert:?}");
        assert!(
            shown.contains("key: \"***\"") && !shown.contains("PRIVATE"),
            "{shown}"
        );
        let client = certificate_client(&sim, "cert-app", cert);
        assert_eq!(get_machine(&client).unwrap(), 200);
        assert_eq!(get_machine(&client).unwrap(), 200);
        assert_eq!(client.stats().token_requests, 1);
    }
    assert_eq!(sim.stats().token_requests, 4);
}

#[test]
fn wrong_keys_and_expired_certificates_are_refused() {
    let sim = certificate_sim();
    let other = CertificateCredential::from_pem_files(&data("other.crt"), Some(&data("other.key")))
        .unwrap();
    match get_machine(&certificate_client(&sim, "cert-app", other)) {
        Err(Error::Auth(m, d)) => {
            assert_eq!(d.status, Some(401));
            assert!(d.message.unwrap().contains("key was not found"), "{m}");
        }
        other => panic!("{other:?}"),
    }
    let expired =
        CertificateCredential::from_pem_files(&data("app-expired.crt"), Some(&data("app.key")))
            .unwrap();
    match get_machine(&certificate_client(&sim, "old-app", expired)) {
        Err(Error::Auth(_, d)) => assert!(d.message.unwrap().contains("expired")),
        other => panic!("{other:?}"),
    }
    // A key that is not the certificate's is caught when loading.
    let mismatched =
        CertificateCredential::from_pem_files(&data("app.crt"), Some(&data("other.key")));
    assert!(matches!(mismatched, Err(Error::InvalidArgument(m)) if m.contains("does not belong")));
    assert!(CertificateCredential::from_pem_files(&data("missing.crt"), None).is_err());
    assert!(
        CertificateCredential::from_pem_files(&data("app.crt"), None).is_err(),
        "no key"
    );
    // A secret and a certificate together are ambiguous.
    let cert = CertificateCredential::from_pem_files(&data("app.pem"), None).unwrap();
    assert!(
        bare(&sim)
            .tenant_id("t")
            .client_id("c")
            .client_secret("s")
            .certificate(cert)
            .build()
            .is_err()
    );
}

/// A client of `sim` whose live-response quota is no obstacle, capped at `cap` calls
/// under way at once.
fn live_response_client(sim: &Simulator, cap: u32, quota_wait: Duration) -> Client {
    use quotagate::client::Route;
    bare(sim)
        .tenant_id(sim.tenant_id())
        .client_id(sim.client_id())
        .client_secret(sim.client_secret())
        .max_quota_wait(quota_wait)
        .route(Route::new(
            Some("POST"),
            "/api/machines/{id}/runliveresponse",
            "live_response",
            vec![Rate::new(10_000, Duration::from_secs(60))],
        ))
        .max_in_flight(Some("POST"), "/api/machines/{id}/runliveresponse", cap)
        .build()
        .unwrap()
}

fn live_response(client: &Client, machine: &str) -> Result<u16, Error> {
    let body =
        serde_json::json!({"Commands": [{"type": "RunScript", "params": []}], "Comment": "t"});
    client
        .send(&Request::post(&format!("/api/machines/{machine}/runliveresponse")).json(&body))
        .map(|r| r.status())
}

#[test]
fn live_response_holds_25_calls_in_flight_and_the_26th_waits() {
    let sim = Simulator::start(
        SimConfig::default()
            .machines(30)
            .live_response_delay(ms(400))
            .limits("live_response", &[(10_000, 60.0)]),
    )
    .unwrap();
    let client = live_response_client(
        &sim,
        quotagate::client::LIVE_RESPONSE_SESSIONS,
        Duration::from_secs(30),
    );
    let started = Instant::now();
    let threads: Vec<_> = sim
        .machine_ids()
        .into_iter()
        .map(|id| {
            let c = client.clone();
            thread::spawn(move || live_response(&c, &id).unwrap())
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), 201);
    }
    // 30 calls of 400 ms with 25 at once take two rounds.
    assert!(started.elapsed() >= ms(800), "{:?}", started.elapsed());
    // Never more than 25 at the server (fewer at once when the simulator's server is
    // slow to read a burst of new connections).
    let at_server = sim.stats().max_in_flight["live_response"];
    assert!((1..=25).contains(&at_server), "{at_server} in flight");
    let peaks = client.stats().in_flight_peaks;
    assert_eq!(
        peaks.values().copied().collect::<Vec<_>>(),
        vec![25],
        "{peaks:?}"
    );
}

#[test]
fn a_call_waiting_for_a_slot_times_out_or_is_cancelled() {
    let sim = Simulator::start(
        SimConfig::default()
            .live_response_delay(ms(600))
            .limits("live_response", &[(10_000, 60.0)]),
    )
    .unwrap();
    let ids = sim.machine_ids();
    let client = live_response_client(&sim, 1, ms(200));
    let (c, id) = (client.clone(), ids[0].clone());
    let busy = thread::spawn(move || live_response(&c, &id));
    thread::sleep(ms(100));
    // The quota-wait budget (200 ms) ends before the slot frees (600 ms).
    match live_response(&client, &ids[1]) {
        Err(Error::Throttled(d)) => assert!(d.message.unwrap().contains("under way")),
        other => panic!("{other:?}"),
    }
    let patient = live_response_client(&sim, 1, Duration::from_secs(30));
    let (c, id) = (patient.clone(), ids[2].clone());
    let holder = thread::spawn(move || live_response(&c, &id));
    thread::sleep(ms(100));
    let body = serde_json::json!({"Commands": [{"type": "RunScript"}]});
    let req = Request::post(&format!("/api/machines/{}/runliveresponse", ids[3])).json(&body);
    let cancel = req.canceller();
    let (c, r) = (patient.clone(), req.clone());
    let waiter = thread::spawn(move || c.send(&r).map(|r| r.status()));
    thread::sleep(ms(100));
    let at = Instant::now();
    cancel.cancel();
    assert!(matches!(waiter.join().unwrap(), Err(Error::Cancelled)));
    assert!(at.elapsed() < ms(300));
    assert_eq!(busy.join().unwrap().unwrap(), 201);
    assert_eq!(holder.join().unwrap().unwrap(), 201);
    // The cancelled waiter gave its place up: the next call goes through.
    assert_eq!(live_response(&patient, &ids[4]).unwrap(), 201);
    assert_eq!(sim.stats().max_in_flight.get("live_response"), Some(&2));
}

fn hunt(client: &Client, query: &str) -> Result<quotagate::client::Response, Error> {
    client
        .send(&Request::post("/api/advancedqueries/run").json(&serde_json::json!({"Query": query})))
}

/// A simulator whose hunting queries state 2 s of execution time (and take 20 ms).
fn hunting_sim() -> Simulator {
    Simulator::start(
        SimConfig::default()
            .time_scale(0.01)
            .hunting_delay(Duration::from_secs(2)),
    )
    .unwrap()
}

fn hunting_client(sim: &Simulator, policy: HuntingBudgetPolicy) -> Client {
    bare(sim)
        .tenant_id(sim.tenant_id())
        .client_id(sim.client_id())
        .client_secret(sim.client_secret())
        .hunting_run_time(Duration::from_secs(5), Duration::from_secs(3600))
        .hunting_budget_policy(policy)
        .build()
        .unwrap()
}

#[test]
fn a_spent_hunting_budget_fails_at_once_with_the_wait() {
    let sim = hunting_sim();
    let client = hunting_client(&sim, HuntingBudgetPolicy::Fail);
    for _ in 0..3 {
        assert_eq!(hunt(&client, "DeviceInfo | take 1").unwrap().status(), 200);
    }
    assert_eq!(client.stats().hunting_run_ms_hour, 6000);
    match hunt(&client, "DeviceInfo | take 1") {
        Err(Error::Throttled(d)) => {
            assert!(d.is_hunting_budget_spent(), "{d:?}");
            let wait = d.retry_after.unwrap();
            assert!(wait > Duration::from_secs(3500) && wait <= Duration::from_secs(3600));
        }
        other => panic!("{other:?}"),
    }
    // Other calls go on.
    assert_eq!(get_machine(&client).unwrap(), 200);
    let hunting_calls = sim.log().iter().filter(|e| e.class == "hunting").count();
    assert_eq!(hunting_calls, 3);
}

#[test]
fn waiting_for_run_time_longer_than_the_quota_budget_fails_at_once() {
    let sim = hunting_sim();
    let client = hunting_client(&sim, HuntingBudgetPolicy::Wait);
    for _ in 0..3 {
        hunt(&client, "DeviceInfo").unwrap();
    }
    let at = Instant::now();
    match hunt(&client, "DeviceInfo") {
        Err(Error::Throttled(d)) => assert!(d.is_hunting_budget_spent()),
        other => panic!("{other:?}"),
    }
    assert!(at.elapsed() < ms(500), "no hopeless wait");
}

#[test]
fn oversized_and_preempted_hunting_answers_are_final_and_recognised() {
    let sim = hunting_sim();
    let client = hunting_client(&sim, HuntingBudgetPolicy::Fail);
    let big = hunt(&client, "DeviceEvents // quotagate:too-large").unwrap();
    assert_eq!(big.status(), 400);
    let d = big.error_details();
    assert!(d.is_result_too_large() && !d.is_preempted(), "{d:?}");
    assert_eq!(big.attempts(), 1);
    let cpu = hunt(&client, "DeviceEvents // quotagate:preempted").unwrap();
    assert!(cpu.error_details().is_preempted());
    assert_eq!(cpu.attempts(), 1);
    assert_eq!(sim.log().iter().filter(|e| e.class == "hunting").count(), 2);
    // They ran, so their time counts (no stated time: the exchange's own).
    let run = client.stats().hunting_run_ms_hour;
    assert!((20..2000).contains(&run), "{run} ms");
}

#[cfg(feature = "pfx")]
#[test]
fn certificates_from_pfx_files_get_tokens() {
    let sim = certificate_sim();
    for file in ["app.pfx", "app-3des.pfx"] {
        let cert = CertificateCredential::from_pkcs12_file(&data(file), "quotagate").unwrap();
        let client = certificate_client(&sim, "cert-app", cert);
        assert_eq!(get_machine(&client).unwrap(), 200, "{file}");
        match CertificateCredential::from_pkcs12_file(&data(file), "wrong") {
            Err(Error::InvalidArgument(m)) => assert!(m.contains("PFX"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
}
