//! End-to-end tests of the simulator over HTTP, with ureq as the client.

use super::*;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::thread;

/// A ureq agent that returns 4xx and 5xx answers instead of errors.
fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    fn error_code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    }

    fn error_message(&self) -> String {
        self.json()["error"]["message"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    }
}

fn answer(result: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Answer {
    let mut response = result.expect("transport");
    let headers = response
        .headers()
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    Answer {
        status: response.status().as_u16(),
        headers,
        body: response.body_mut().read_to_string().expect("body"),
    }
}

fn get(agent: &ureq::Agent, url: &str, token: &str) -> Answer {
    answer(
        agent
            .get(url)
            .header("Authorization", format!("Bearer {token}"))
            .call(),
    )
}

fn try_post(
    agent: &ureq::Agent,
    url: &str,
    token: &str,
    body: &Value,
) -> Result<ureq::http::Response<ureq::Body>, ureq::Error> {
    agent
        .post(url)
        .header("Authorization", format!("Bearer {token}"))
        .header("Content-Type", "application/json")
        .send(body.to_string())
}

fn post(agent: &ureq::Agent, url: &str, token: &str, body: &Value) -> Answer {
    answer(try_post(agent, url, token, body))
}

fn token_v2(sim: &Simulator, agent: &ureq::Agent, secret: &str) -> Answer {
    let url = format!("{}/{}/oauth2/v2.0/token", sim.authority(), sim.tenant_id());
    answer(agent.post(&url).send_form([
        ("grant_type", "client_credentials"),
        ("client_id", sim.client_id()),
        ("client_secret", secret),
        ("scope", "https://api.securitycenter.microsoft.com/.default"),
    ]))
}

fn token(sim: &Simulator, agent: &ureq::Agent) -> String {
    let a = token_v2(sim, agent, sim.client_secret());
    assert_eq!(a.status, 200, "{}", a.body);
    a.json()["access_token"].as_str().unwrap().to_owned()
}

fn start(config: SimConfig) -> Simulator {
    Simulator::start(config).expect("simulator starts")
}

#[test]
fn simulator_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Simulator>();
}

#[test]
fn tokens_v1_and_v2_and_their_refusals() {
    let sim = start(SimConfig::default());
    let agent = agent();

    let v2 = token_v2(&sim, &agent, sim.client_secret());
    assert_eq!(v2.status, 200);
    let body = v2.json();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3599);
    assert_eq!(body["ext_expires_in"], 3599);
    assert!(body["access_token"].as_str().unwrap().len() > 40);
    assert!(v2.header("request-id").is_some());
    assert!(
        v2.header("content-type")
            .unwrap()
            .starts_with("application/json")
    );

    let v1_url = format!("{}/{}/oauth2/token", sim.authority(), sim.tenant_id());
    let v1 = answer(agent.post(&v1_url).send_form([
        ("grant_type", "client_credentials"),
        ("client_id", sim.client_id()),
        ("client_secret", sim.client_secret()),
        ("resource", "https://api.securitycenter.microsoft.com"),
    ]));
    assert_eq!(v1.status, 200, "{}", v1.body);
    let v1_token = v1.json()["access_token"].as_str().unwrap().to_owned();
    assert_ne!(v1_token, body["access_token"].as_str().unwrap());
    assert_eq!(
        get(
            &agent,
            &format!("{}/api/machines?$top=1", sim.url()),
            &v1_token
        )
        .status,
        200
    );

    let bad = token_v2(&sim, &agent, "not-the-secret");
    assert_eq!(bad.status, 401);
    assert_eq!(bad.json()["error"], "invalid_client");
    assert!(
        bad.json()["error_description"]
            .as_str()
            .unwrap()
            .starts_with("AADSTS7000215")
    );

    let wrong_tenant = answer(
        agent
            .post(&format!(
                "{}/other-tenant/oauth2/v2.0/token",
                sim.authority()
            ))
            .send_form([
                ("grant_type", "client_credentials"),
                ("client_id", sim.client_id()),
                ("client_secret", sim.client_secret()),
                ("scope", "https://api.securitycenter.microsoft.com/.default"),
            ]),
    );
    assert_eq!(wrong_tenant.status, 400);

    let url = format!("{}/{}/oauth2/v2.0/token", sim.authority(), sim.tenant_id());
    let unknown = answer(agent.post(&url).send_form([
        ("grant_type", "client_credentials"),
        ("client_id", "someone-else"),
        ("client_secret", "x"),
        ("scope", "https://api.securitycenter.microsoft.com/.default"),
    ]));
    assert_eq!(unknown.status, 400);
    assert_eq!(unknown.json()["error"], "unauthorized_client");

    let no_default = answer(agent.post(&url).send_form([
        ("grant_type", "client_credentials"),
        ("client_id", sim.client_id()),
        ("client_secret", sim.client_secret()),
        ("scope", "https://api.securitycenter.microsoft.com"),
    ]));
    assert_eq!(no_default.status, 400);
    assert_eq!(no_default.json()["error"], "invalid_scope");

    assert_eq!(sim.stats().token_requests, 6);
}

#[test]
fn api_calls_need_a_valid_token() {
    let sim = start(SimConfig::default());
    let agent = agent();
    let url = format!("{}/api/machines", sim.url());
    let none = answer(agent.get(&url).call());
    assert_eq!(none.status, 401);
    assert_eq!(none.error_code(), "Unauthorized");
    assert_eq!(
        none.json()["error"]["target"].as_str(),
        none.header("request-id")
    );
    let forged = get(&agent, &url, "forged");
    assert_eq!(forged.status, 401);
    let log = sim.log();
    assert!(log.iter().all(|e| e.client_id.is_none() && !e.counted));
}

#[test]
fn tokens_expire_after_their_scaled_lifetime() {
    let sim = start(
        SimConfig::default()
            .time_scale(0.01)
            .token_lifetime(Duration::from_secs(10)),
    );
    let agent = agent();
    let a = token_v2(&sim, &agent, sim.client_secret());
    assert_eq!(a.json()["expires_in"], 10, "expires_in is in API time");
    let token = a.json()["access_token"].as_str().unwrap().to_owned();
    let url = format!("{}/api/machines?$top=1", sim.url());
    assert_eq!(get(&agent, &url, &token).status, 200);
    thread::sleep(Duration::from_millis(150));
    let expired = get(&agent, &url, &token);
    assert_eq!(expired.status, 401);
    assert!(
        expired.error_message().contains("expired"),
        "{}",
        expired.body
    );
}

#[test]
fn paging_covers_every_machine_exactly_once() {
    let sim = start(SimConfig::default());
    let agent = agent();
    let token = token(&sim, &agent);
    let mut next = Some(format!("{}/api/machines?$top=40", sim.url()));
    let mut ids = Vec::new();
    let mut pages = 0;
    while let Some(url) = next {
        let a = get(&agent, &url, &token);
        assert_eq!(a.status, 200, "{}", a.body);
        let page = a.json();
        assert!(
            page["@odata.context"]
                .as_str()
                .unwrap()
                .ends_with("#Machines")
        );
        let value = page["value"].as_array().unwrap();
        assert!(value.len() <= 40);
        for m in value {
            assert_eq!(m["id"].as_str().unwrap().len(), 40);
            assert!(m["computerDnsName"].is_string() && m["machineTags"].is_array());
            ids.push(m["id"].as_str().unwrap().to_owned());
        }
        next = page["@odata.nextLink"].as_str().map(str::to_owned);
        pages += 1;
    }
    assert_eq!(pages, 7);
    assert_eq!(ids.len(), 250);
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 250);
    assert_eq!(ids, sim.machine_ids());

    // One machine, and one that does not exist.
    let one = get(
        &agent,
        &format!("{}/api/machines/{}", sim.url(), ids[7]),
        &token,
    );
    assert_eq!(one.status, 200);
    assert_eq!(one.json()["id"], ids[7].as_str());
    let missing = get(
        &agent,
        &format!("{}/api/machines/{}", sim.url(), "0".repeat(40)),
        &token,
    );
    assert_eq!(missing.status, 404);
    assert_eq!(missing.error_code(), "ResourceNotFound");

    // Alerts page the same way; without $top one page holds them all.
    let alerts = get(&agent, &format!("{}/api/alerts", sim.url()), &token).json();
    assert_eq!(alerts["value"].as_array().unwrap().len(), 300);
    assert!(alerts.get("@odata.nextLink").is_none());
}

#[test]
fn top_is_capped_by_the_page_size() {
    let sim = start(SimConfig::default().machines(120).page_size_max(50));
    let agent = agent();
    let token = token(&sim, &agent);
    let page = get(
        &agent,
        &format!("{}/api/machines?$top=1000", sim.url()),
        &token,
    )
    .json();
    assert_eq!(page["value"].as_array().unwrap().len(), 50);
    let next = page["@odata.nextLink"].as_str().unwrap();
    assert_eq!(
        next,
        format!("{}/api/machines?$top=1000&$skip=50", sim.url())
    );
    let page = get(&agent, &format!("{}/api/machines", sim.url()), &token).json();
    assert_eq!(page["value"].as_array().unwrap().len(), 50);
    let bad = get(
        &agent,
        &format!("{}/api/machines?$top=many", sim.url()),
        &token,
    );
    assert_eq!(bad.status, 400);
}

#[test]
fn next_link_keeps_the_filter_byte_for_byte() {
    let sim = start(SimConfig::default());
    let agent = agent();
    let token = token(&sim, &agent);
    let query = "$filter=healthStatus%20eq%20'Active'%20and%20riskScore+eq+'High'&$top=10";
    let first = format!("{}/api/machines?{query}", sim.url());
    let page = get(&agent, &first, &token).json();
    let next = page["@odata.nextLink"].as_str().unwrap().to_owned();
    assert_eq!(next, format!("{first}&$skip=10"));
    let page = get(&agent, &next, &token).json();
    assert_eq!(
        page["@odata.nextLink"].as_str().unwrap(),
        format!("{first}&$skip=20")
    );
    // The log keeps the request target as received, so re-encoding shows.
    let paths: Vec<String> = sim.log().into_iter().map(|e| e.path).collect();
    assert!(paths.contains(&format!("/api/machines?{query}")));
    assert!(paths.contains(&format!("/api/machines?{query}&$skip=10")));
}

#[test]
fn isolate_and_tag_are_applied_and_counted() {
    let sim = start(
        SimConfig::default()
            .time_scale(0.01)
            .action_pending(Duration::from_secs(600)),
    );
    let agent = agent();
    let token = token(&sim, &agent);
    let id = sim.machine_ids()[3].clone();
    let isolate = format!("{}/api/machines/{id}/isolate", sim.url());
    let body = json!({"Comment": "contain", "IsolationType": "Full"});
    let a = post(&agent, &isolate, &token, &body);
    assert_eq!(a.status, 201, "{}", a.body);
    let action = a.json();
    assert_eq!(action["type"], "Isolate");
    assert_eq!(action["machineId"], id.as_str());
    assert_eq!(action["requestorComment"], "contain");
    assert_eq!(sim.action_count(&id, "isolate"), 1);

    // Still in progress: refused, not applied again.
    let again = post(&agent, &isolate, &token, &body);
    assert_eq!(again.status, 400);
    assert_eq!(again.error_code(), "ActiveRequestAlreadyExists");
    assert_eq!(sim.action_count(&id, "isolate"), 1);

    let no_comment = post(&agent, &isolate, &token, &json!({"IsolationType": "Full"}));
    assert_eq!(no_comment.status, 400);
    assert_eq!(no_comment.error_code(), "InvalidRequestBody");
    let elsewhere = format!("{}/api/machines/{}/isolate", sim.url(), "f".repeat(40));
    assert_eq!(post(&agent, &elsewhere, &token, &body).status, 404);

    let tags = format!("{}/api/machines/{id}/tags", sim.url());
    let added = post(
        &agent,
        &tags,
        &token,
        &json!({"Value": "Quarantine", "Action": "Add"}),
    );
    assert_eq!(added.status, 200, "{}", added.body);
    assert!(
        added.json()["machineTags"]
            .as_array()
            .unwrap()
            .contains(&json!("Quarantine"))
    );
    let machine = get(&agent, &format!("{}/api/machines/{id}", sim.url()), &token).json();
    assert!(
        machine["machineTags"]
            .as_array()
            .unwrap()
            .contains(&json!("Quarantine"))
    );
    let removed = post(
        &agent,
        &tags,
        &token,
        &json!({"Value": "Quarantine", "Action": "Remove"}),
    );
    assert!(
        !removed.json()["machineTags"]
            .as_array()
            .unwrap()
            .contains(&json!("Quarantine"))
    );
    let bad = post(
        &agent,
        &tags,
        &token,
        &json!({"Value": "x", "Action": "Toggle"}),
    );
    assert_eq!(bad.status, 400);
    assert_eq!(sim.action_count(&id, "tag"), 2);
    assert_eq!(sim.action_count(&id.to_uppercase(), "tag"), 2);
}

#[test]
fn hunting_runs_for_its_scaled_delay() {
    let sim = start(
        SimConfig::default()
            .time_scale(0.01)
            .hunting_delay(Duration::from_secs(20)),
    );
    let agent = agent();
    let token = token(&sim, &agent);
    let url = format!("{}/api/advancedqueries/run", sim.url());
    let began = Instant::now();
    let a = post(
        &agent,
        &url,
        &token,
        &json!({"Query": "DeviceInfo | take 3"}),
    );
    let took = began.elapsed();
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(took >= Duration::from_millis(200), "{took:?}");
    let body = a.json();
    assert_eq!(body["Results"].as_array().unwrap().len(), 3);
    assert_eq!(body["Schema"][1]["Name"], "DeviceId");
    assert_eq!(body["Stats"]["ExecutionTime"], 20.0);
    assert_eq!(
        body["Results"][0]["DeviceId"],
        sim.machine_ids()[0].as_str()
    );
    let empty = post(&agent, &url, &token, &json!({"query": "DeviceInfo"}));
    assert_eq!(empty.status, 400);
    assert_eq!(sim.log().last().unwrap().class, CLASS_HUNTING);
}

#[test]
fn hunting_throttles_with_its_own_code_and_the_real_window() {
    let sim = start(
        SimConfig::default()
            .time_scale(0.01)
            .limits(CLASS_HUNTING, &[(3, 120.0), (1500, 3600.0)]),
    );
    let agent = agent();
    let token = token(&sim, &agent);
    let url = format!("{}/api/advancedqueries/run", sim.url());
    let query = json!({"Query": "DeviceInfo | take 1"});
    let statuses: Vec<u16> = (0..4)
        .map(|_| post(&agent, &url, &token, &query).status)
        .collect();
    assert_eq!(statuses, [200, 200, 200, 429]);
    let a = post(&agent, &url, &token, &query);
    assert_eq!(a.status, 429);
    assert_eq!(a.error_code(), "429");
    assert_eq!(
        a.error_message(),
        "API calls quota exceeded! maximum allowed 3 per 00:00:01.2000000"
    );
    // Other classes keep their own quota.
    assert_eq!(
        get(
            &agent,
            &format!("{}/api/machines?$top=1", sim.url()),
            &token
        )
        .status,
        200
    );
}

/// N+1 quick calls give exactly one 429, whose hint has the configured shape.
#[test]
fn one_call_over_the_limit_is_throttled_with_each_retry_after_style() {
    let styles = [
        RetryAfterStyle::Seconds,
        RetryAfterStyle::HttpDate,
        RetryAfterStyle::Milliseconds,
        RetryAfterStyle::XmsMilliseconds,
        RetryAfterStyle::BodyOnly,
        RetryAfterStyle::None,
    ];
    for style in styles {
        // 60 s at 0.1: a 6 s real window, long enough for six quick calls.
        let sim = start(
            SimConfig::default()
                .time_scale(0.1)
                .limits(CLASS_DEFAULT, &[(5, 60.0), (1500, 3600.0)])
                .retry_after_style(style),
        );
        let agent = agent();
        let token = token(&sim, &agent);
        let url = format!("{}/api/machines?$top=1", sim.url());
        let answers: Vec<Answer> = (0..6).map(|_| get(&agent, &url, &token)).collect();
        let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
        assert_eq!(statuses, [200, 200, 200, 200, 200, 429], "{style:?}");
        let a = &answers[5];
        assert_eq!(a.error_code(), "TooManyRequests");
        let target = a.json()["error"]["target"].as_str().unwrap().to_owned();
        assert_eq!(Some(target.as_str()), a.header("request-id"));
        let wait = sim.log().last().unwrap().retry_after.unwrap();
        assert!(
            wait > Duration::from_secs(5) && wait <= Duration::from_secs(6),
            "{wait:?}"
        );
        let ms = |name| a.header(name).map(|v| v.parse::<u64>().unwrap());
        let message = a.error_message();
        let limit_message = "API calls quota exceeded! maximum allowed 5 per 00:00:06";
        match style {
            RetryAfterStyle::Seconds => {
                assert_eq!(a.header("Retry-After"), Some("6"));
                assert_eq!(
                    ms("retry-after-ms"),
                    Some(wait.as_nanos().div_ceil(1_000_000) as u64)
                );
                assert_eq!(message, limit_message);
            }
            RetryAfterStyle::HttpDate => {
                let at = httpdate::parse_http_date(a.header("Retry-After").unwrap()).unwrap();
                let ahead = at.duration_since(std::time::SystemTime::now()).unwrap();
                assert!(ahead > Duration::from_secs(4) && ahead <= Duration::from_secs(7));
                assert!(a.header("retry-after-ms").is_none());
            }
            RetryAfterStyle::Milliseconds => {
                assert!(a.header("Retry-After").is_none());
                assert!((5000..=6000).contains(&ms("retry-after-ms").unwrap()));
            }
            RetryAfterStyle::XmsMilliseconds => {
                assert!(a.header("Retry-After").is_none() && a.header("retry-after-ms").is_none());
                assert!((5000..=6000).contains(&ms("x-ms-retry-after-ms").unwrap()));
            }
            RetryAfterStyle::BodyOnly => {
                assert!(a.header("Retry-After").is_none());
                assert!(a.header("retry-after-ms").is_none());
                assert!(a.header("x-ms-retry-after-ms").is_none());
                assert_eq!(message, limit_message);
            }
            RetryAfterStyle::None => {
                assert!(a.header("Retry-After").is_none());
                assert!(a.header("x-ms-retry-after-ms").is_none());
                assert!(!message.contains("maximum allowed"));
            }
        }
        let stats = sim.stats();
        assert_eq!(stats.throttled, 1);
        assert_eq!(stats.peak(CLASS_DEFAULT, Duration::from_secs(6)), Some(5));
        assert!(stats.exceeded().is_empty());
        sim.stop();
    }
}

/// Sleeps until `at` after `mark`.
fn sleep_until(mark: Instant, at: Duration) {
    if let Some(left) = at.checked_sub(mark.elapsed()) {
        thread::sleep(left);
    }
}

/// Two bursts of 5 around a window boundary: fixed windows let both through (10 in
/// one rolling window), sliding windows refuse the second.
fn bursts(kind: WindowKind) -> (Vec<u16>, SimStats) {
    // 10 s at 0.1: a 1 s real window.
    let sim = start(
        SimConfig::default()
            .time_scale(0.1)
            .limits(CLASS_DEFAULT, &[(5, 10.0)])
            .window_kind(kind),
    );
    // The simulator's clock started before this mark, so its first fixed window ends
    // at most 1 s after it.
    let mark = Instant::now();
    let agent = agent();
    let token = token(&sim, &agent);
    let url = format!("{}/api/machines?$top=1", sim.url());
    let mut statuses = Vec::new();
    sleep_until(mark, Duration::from_millis(600));
    statuses.extend((0..5).map(|_| get(&agent, &url, &token).status));
    sleep_until(mark, Duration::from_millis(1100));
    statuses.extend((0..5).map(|_| get(&agent, &url, &token).status));
    (statuses, sim.stats())
}

#[test]
fn sliding_windows_hold_where_fixed_windows_let_twice_through() {
    let fixed = thread::spawn(|| bursts(WindowKind::Fixed));
    let (statuses, stats) = bursts(WindowKind::Sliding);
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429, 429, 429, 429]);
    assert_eq!(stats.peak(CLASS_DEFAULT, Duration::from_secs(1)), Some(5));
    assert!(stats.exceeded().is_empty());

    let (statuses, stats) = fixed.join().unwrap();
    assert_eq!(statuses, [200; 10]);
    assert_eq!(stats.peak(CLASS_DEFAULT, Duration::from_secs(1)), Some(10));
    let exceeded = stats.exceeded();
    assert_eq!(exceeded.len(), 1);
    assert_eq!(exceeded[0].0, CLASS_DEFAULT);
}

#[test]
fn batch_update_has_its_own_quota() {
    let sim = start(SimConfig::default().time_scale(0.1));
    let agent = agent();
    let token = token(&sim, &agent);
    let url = format!("{}/api/alerts/batchUpdate", sim.url());
    let body = json!({"alertIds": ["da1", "da2"], "status": "Resolved"});
    let answers: Vec<Answer> = (0..11).map(|_| post(&agent, &url, &token, &body)).collect();
    assert!(
        answers[..10]
            .iter()
            .all(|a| a.status == 200 && a.body.is_empty())
    );
    assert_eq!(answers[10].status, 429);
    assert_eq!(answers[10].error_code(), "TooManyRequests");
    assert_eq!(
        answers[10].error_message(),
        "API calls quota exceeded! maximum allowed 10 per 00:00:06"
    );
    assert_eq!(
        post(&agent, &url, &token, &json!({"alertIds": []})).status,
        429
    );
    assert_eq!(
        get(&agent, &format!("{}/api/alerts?$top=2", sim.url()), &token).status,
        200
    );
}

#[test]
fn token_endpoint_throttles_clients_that_do_not_cache() {
    let sim = start(
        SimConfig::default()
            .time_scale(0.1)
            .limits(CLASS_TOKEN, &[(2, 60.0)]),
    );
    let agent = agent();
    let statuses: Vec<u16> = (0..3)
        .map(|_| token_v2(&sim, &agent, sim.client_secret()).status)
        .collect();
    assert_eq!(statuses, [200, 200, 429]);
    let a = token_v2(&sim, &agent, sim.client_secret());
    assert_eq!(a.json()["error"], "temporarily_unavailable");
    let secs: u64 = a.header("Retry-After").unwrap().parse().unwrap();
    assert!((1..=6).contains(&secs));
    assert_eq!(sim.stats().token_requests, 4);
}

#[test]
fn each_application_has_its_own_quota() {
    let sim = start(
        SimConfig::default()
            .time_scale(0.1)
            .limits(CLASS_DEFAULT, &[(2, 60.0)])
            .add_client("second-app", "second-secret"),
    );
    let agent = agent();
    let first = token(&sim, &agent);
    let url = format!("{}/{}/oauth2/v2.0/token", sim.authority(), sim.tenant_id());
    let second = answer(agent.post(&url).send_form([
        ("grant_type", "client_credentials"),
        ("client_id", "second-app"),
        ("client_secret", "second-secret"),
        ("scope", "api://x/.default"),
    ]))
    .json()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let machines = format!("{}/api/machines?$top=1", sim.url());
    let statuses: Vec<u16> = [&first, &first, &first, &second, &second, &second]
        .iter()
        .map(|t| get(&agent, &machines, t).status)
        .collect();
    assert_eq!(statuses, [200, 200, 429, 200, 200, 429]);
    let clients: HashSet<Option<String>> = sim.log().into_iter().map(|e| e.client_id).collect();
    assert!(clients.contains(&Some("second-app".to_owned())));
}

#[test]
fn faults_503_come_before_quota() {
    let sim = start(SimConfig::default().limits(CLASS_DEFAULT, &[(1, 60.0)]));
    let agent = agent();
    let token = token(&sim, &agent);
    sim.set_faults(Faults {
        error_503_rate: 1.0,
        ..Faults::default()
    })
    .unwrap();
    let url = format!("{}/api/machines?$top=1", sim.url());
    for _ in 0..3 {
        let a = get(&agent, &url, &token);
        assert_eq!(a.status, 503);
        assert_eq!(a.error_code(), "ServiceUnavailable");
    }
    sim.set_faults(Faults::default()).unwrap();
    // None of the 503s used the single call of the quota.
    assert_eq!(get(&agent, &url, &token).status, 200);
    let stats = sim.stats();
    assert_eq!(stats.errors_503, 3);
    assert_eq!(stats.by_status[&503], 3);
    assert!(
        sim.set_faults(Faults {
            reset_rate: 2.0,
            ..Faults::default()
        })
        .is_err()
    );
}

#[test]
fn a_reset_isolation_was_applied_all_the_same() {
    let sim = start(SimConfig::default().reset_rate(1.0));
    let agent = agent();
    let token = token(&sim, &agent); // token requests are spared by default
    let id = sim.machine_ids()[0].clone();
    let url = format!("{}/api/machines/{id}/isolate", sim.url());
    let body = json!({"Comment": "contain", "IsolationType": "Full"});
    let began = Instant::now();
    let result = try_post(&agent, &url, &token, &body);
    assert!(
        result.is_err(),
        "a reset gives a transport error: {result:?}"
    );
    assert!(began.elapsed() < Duration::from_secs(2), "and at once");
    assert_eq!(sim.action_count(&id, "isolate"), 1);
    let entry = sim.log().last().unwrap().clone();
    assert!(entry.reset && entry.counted);
    assert_eq!(entry.status, 201);

    sim.set_faults(Faults::default()).unwrap();
    assert_eq!(post(&agent, &url, &token, &body).status, 201);
    assert_eq!(sim.action_count(&id, "isolate"), 2);
    let stats = sim.stats();
    assert_eq!(stats.resets, 1);
    assert_eq!(stats.by_status[&201], 2);

    // The token endpoint can suffer too, when asked.
    sim.set_faults(Faults {
        reset_rate: 1.0,
        token_endpoint: true,
        ..Faults::default()
    })
    .unwrap();
    let url = format!("{}/{}/oauth2/v2.0/token", sim.authority(), sim.tenant_id());
    assert!(
        agent
            .post(&url)
            .send_form([("grant_type", "client_credentials")])
            .is_err()
    );
}

#[test]
fn fault_draws_replay_with_the_seed() {
    let run = |seed| {
        let sim = start(SimConfig::default().error_503_rate(0.5).seed(seed));
        let agent = agent();
        let token = token(&sim, &agent);
        let url = format!("{}/api/machines?$top=1", sim.url());
        (0..20)
            .map(|_| get(&agent, &url, &token).status)
            .collect::<Vec<_>>()
    };
    let a = run(7);
    assert_eq!(a, run(7));
    assert!(a.contains(&503) && a.contains(&200));
}

#[test]
fn log_and_stats_tell_what_happened() {
    let sim = start(
        SimConfig::default()
            .time_scale(0.1)
            .limits(CLASS_DEFAULT, &[(3, 60.0)]),
    );
    let agent = agent();
    let token = token(&sim, &agent);
    let url = format!("{}/api/machines?$top=2", sim.url());
    assert_eq!(answer(agent.get(&url).call()).status, 401);
    for _ in 0..3 {
        assert_eq!(get(&agent, &url, &token).status, 200);
    }
    assert_eq!(get(&agent, &url, &token).status, 429);
    let unrouted = get(&agent, &format!("{}/api/nothing/here", sim.url()), &token);
    assert_eq!(unrouted.status, 404);
    assert_eq!(unrouted.error_code(), "NotFound");

    let log = sim.log();
    assert_eq!(log.len(), 7);
    assert!(log.windows(2).all(|w| w[0].instant <= w[1].instant));
    let classes: Vec<&str> = log.iter().map(|e| e.class.as_str()).collect();
    assert_eq!(
        classes,
        [
            "token", "default", "default", "default", "default", "default", "unrouted"
        ]
    );
    assert_eq!(log[0].method, "POST");
    assert_eq!(log[2].path, "/api/machines?$top=2");
    assert_eq!(log[2].client_id.as_deref(), Some(sim.client_id()));
    assert!(log[2].counted && !log[5].counted && !log[1].counted);
    assert!(log[5].retry_after.is_some());

    let stats = sim.stats();
    assert_eq!(stats.requests, 7);
    assert_eq!(stats.by_status[&200], 4);
    assert_eq!(stats.by_status[&401], 1);
    assert_eq!(stats.by_status[&429], 1);
    assert_eq!(stats.by_status[&404], 1);
    assert_eq!(
        (stats.throttled, stats.token_requests, stats.resets),
        (1, 1, 0)
    );
    assert_eq!(stats.peak(CLASS_DEFAULT, Duration::from_secs(6)), Some(3));
    assert_eq!(stats.peak(CLASS_TOKEN, Duration::from_secs(6)), Some(1));
    assert!(stats.exceeded().is_empty());
    assert!(!stats.max_in_window.contains_key(CLASS_UNROUTED));
}

#[test]
fn concurrent_clients_are_served_concurrently() {
    let sim = start(SimConfig::default().latency(Duration::from_millis(400)));
    let token = token(&sim, &agent());
    let url = format!("{}/api/machines?$top=1", sim.url());
    let began = Instant::now();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (url, token) = (url.clone(), token.clone());
            thread::spawn(move || get(&agent(), &url, &token).status)
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), 200);
    }
    let took = began.elapsed();
    assert!(took >= Duration::from_millis(400));
    assert!(
        took < Duration::from_millis(1200),
        "served one at a time: {took:?}"
    );
}

#[test]
fn stop_is_prompt_even_with_calls_in_flight() {
    let sim = start(SimConfig::default().hunting_delay(Duration::from_secs(100)));
    let agent = agent();
    let token = token(&sim, &agent);
    // A keep-alive connection stays open in the agent's pool.
    let machines = format!("{}/api/machines?$top=1", sim.url());
    assert_eq!(get(&agent, &machines, &token).status, 200);
    let hunt_url = format!("{}/api/advancedqueries/run", sim.url());
    let (hunt_agent, hunt_token) = (agent.clone(), token.clone());
    let hunt = thread::spawn(move || {
        try_post(
            &hunt_agent,
            &hunt_url,
            &hunt_token,
            &json!({"Query": "DeviceInfo"}),
        )
        .map(|r| r.status().as_u16())
    });
    // Let the hunting query reach the simulator.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !sim.log().iter().any(|e| e.class == CLASS_HUNTING) {
        assert!(Instant::now() < deadline);
        thread::sleep(Duration::from_millis(5));
    }
    let addr = sim.addr();
    let began = Instant::now();
    sim.stop();
    assert!(
        began.elapsed() < Duration::from_millis(500),
        "{:?}",
        began.elapsed()
    );
    // The hunting call was cut short rather than left hanging.
    let _ = hunt.join().unwrap();
    assert!(began.elapsed() < Duration::from_secs(2));
    // Nothing answers any more.
    let began = Instant::now();
    assert!(get_result(&agent, &machines, &token).is_err());
    assert!(began.elapsed() < Duration::from_secs(2));
    let deadline = Instant::now() + Duration::from_secs(2);
    while std::net::TcpStream::connect(addr).is_ok() {
        assert!(Instant::now() < deadline, "the port stays open");
        thread::sleep(Duration::from_millis(10));
    }
}

fn get_result(
    agent: &ureq::Agent,
    url: &str,
    token: &str,
) -> Result<ureq::http::Response<ureq::Body>, ureq::Error> {
    agent
        .get(url)
        .header("Authorization", format!("Bearer {token}"))
        .call()
}

#[test]
fn invalid_configurations_are_refused() {
    let err = Simulator::start(SimConfig::default().time_scale(0.0)).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    let err = Simulator::start(SimConfig::default().limits("x", &[(1, -1.0)])).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    let err = Simulator::start(SimConfig::default().reset_rate(1.5)).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    let too_long = MAX_INBOUND_JITTER + Duration::from_nanos(1);
    let err = Simulator::start(SimConfig::default().inbound_jitter(too_long)).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    assert!(err.to_string().contains("inbound_jitter"), "{err}");
    let sim = start(SimConfig::default().inbound_jitter(MAX_INBOUND_JITTER));
    let faults = Faults {
        inbound_jitter: too_long,
        ..Faults::default()
    };
    assert!(sim.set_faults(faults).is_err());
    assert_eq!(
        sim.current_config().faults.inbound_jitter,
        MAX_INBOUND_JITTER
    );
}

/// Sends `n` calls one after another, each once the previous one is answered; returns
/// when each was sent, since the simulator started, and the simulator's log.
fn timed_calls(sim: &Simulator, n: usize) -> (Vec<Duration>, Vec<LogEntry>) {
    let agent = agent();
    let token = sim.issue_token(sim.client_id());
    let url = format!("{}/api/machines?$top=1", sim.url());
    let sent = (0..n)
        .map(|_| {
            let at = sim.inner.core.start.elapsed();
            assert_eq!(get(&agent, &url, &token).status, 200);
            at
        })
        .collect();
    (sent, sim.log())
}

fn inbound_delays(log: &[LogEntry]) -> Vec<Duration> {
    log.iter().map(|e| e.inbound_delay).collect()
}

#[test]
fn calls_are_counted_after_an_inbound_delay_that_varies_and_replays_with_the_seed() {
    const JITTER: Duration = Duration::from_millis(200);
    // What reading, parsing and waking add on top of the delay, on a loaded machine.
    const SLACK: Duration = Duration::from_millis(100);
    let run = |seed| {
        let sim = start(SimConfig::default().inbound_jitter(JITTER).seed(seed));
        timed_calls(&sim, 10)
    };
    let ((sent, log), again, other) = thread::scope(|s| {
        let again = s.spawn(|| run(11));
        let other = s.spawn(|| run(12));
        (run(11), again.join().unwrap(), other.join().unwrap())
    });
    assert_eq!(log.len(), sent.len());
    let mut lags = Vec::new();
    for (at, entry) in sent.iter().zip(&log) {
        assert!(entry.counted && entry.inbound_delay <= JITTER, "{entry:?}");
        let lag = entry
            .instant
            .checked_sub(*at)
            .expect("counted after it was sent");
        assert!(
            lag >= entry.inbound_delay && lag < entry.inbound_delay + SLACK,
            "counted {lag:?} after it was sent, with an inbound delay of {:?}",
            entry.inbound_delay
        );
        lags.push(lag);
    }
    let spread = |v: &[Duration]| *v.iter().max().unwrap() - *v.iter().min().unwrap();
    assert!(spread(&lags) > JITTER / 2, "the lags vary: {lags:?}");
    let delays = inbound_delays(&log);
    assert_eq!(
        delays.iter().collect::<HashSet<_>>().len(),
        delays.len(),
        "{delays:?}"
    );
    assert_eq!(
        delays,
        inbound_delays(&again.1),
        "the same seed, the same delays"
    );
    assert_ne!(delays, inbound_delays(&other.1));
}

#[test]
fn without_inbound_jitter_nothing_is_drawn_and_faults_replay_as_before() {
    let statuses = |jitter| {
        let sim = start(
            SimConfig::default()
                .error_503_rate(0.5)
                .seed(7)
                .inbound_jitter(jitter),
        );
        let agent = agent();
        let token = sim.issue_token(sim.client_id());
        let url = format!("{}/api/machines?$top=1", sim.url());
        let statuses: Vec<u16> = (0..20).map(|_| get(&agent, &url, &token).status).collect();
        (statuses, sim.log())
    };
    let (plain, plain_log) = statuses(Duration::ZERO);
    let (jittered, jittered_log) = statuses(Duration::from_millis(10));
    assert_eq!(plain, jittered, "the delays use no fault draw");
    assert!(plain.contains(&503) && plain.contains(&200));
    assert!(plain_log.iter().all(|e| e.inbound_delay.is_zero()));
    assert!(jittered_log.iter().any(|e| !e.inbound_delay.is_zero()));

    // Calls made without jitter draw no delay: turned on later, the delays are those
    // of a simulator that had it from the start.
    let jitter = Duration::from_millis(20);
    let late = start(SimConfig::default().seed(9));
    timed_calls(&late, 3);
    late.set_faults(Faults {
        inbound_jitter: jitter,
        ..Faults::default()
    })
    .unwrap();
    let (_, log) = timed_calls(&late, 4);
    let from_start = start(SimConfig::default().seed(9).inbound_jitter(jitter));
    let (_, first) = timed_calls(&from_start, 4);
    assert_eq!(inbound_delays(&log[3..]), inbound_delays(&first));
}

#[test]
fn stop_cuts_an_inbound_delay_short_and_the_call_is_never_counted() {
    // Seed 3 draws a first delay of several seconds.
    let mut sim = start(
        SimConfig::default()
            .inbound_jitter(MAX_INBOUND_JITTER)
            .seed(3),
    );
    let token = sim.issue_token(sim.client_id());
    let url = format!("{}/api/machines?$top=1", sim.url());
    let call = thread::spawn(move || get_result(&agent(), &url, &token).map(|r| r.status()));
    thread::sleep(Duration::from_millis(300));
    assert!(
        !call.is_finished() && sim.log().is_empty(),
        "still on its way in"
    );
    let began = Instant::now();
    sim.shutdown();
    let took = began.elapsed();
    assert!(took < Duration::from_millis(500), "stop took {took:?}");
    assert!(call.join().unwrap().is_err(), "no answer");
    assert!(sim.log().is_empty(), "never counted");
}

/// The most of `instants` inside one window `(t - window, t]`.
fn most_in_one_window(instants: &[Instant], window: Duration) -> usize {
    let mut sorted = instants.to_vec();
    sorted.sort_unstable();
    (0..sorted.len())
        .map(|last| {
            let first = sorted[..=last].partition_point(|&t| t + window <= sorted[last]);
            last + 1 - first
        })
        .max()
        .unwrap_or(0)
}

/// One call of [`pace_by_send_instants`].
struct Paced {
    sent: Instant,
    /// From the send to the instant the simulator decided the call.
    lag: Duration,
    status: u16,
}

/// A client that keeps `calls` per window by its own clock, as a limiter that logs a
/// call when it admits it: `calls` threads, each sending once per `period`, every send
/// at least `period` after the thread's previous one, for `rounds` rounds.
fn pace_by_send_instants(
    sim: &Simulator,
    calls: usize,
    period: Duration,
    rounds: u32,
) -> Vec<Paced> {
    let token = sim.issue_token(sim.client_id());
    let base = sim.url();
    let jitter = sim.current_config().faults.inbound_jitter;
    let first = Instant::now() + jitter + Duration::from_millis(100);
    let sent: Vec<(String, Instant, u16)> = thread::scope(|s| {
        let threads: Vec<_> = (0..calls)
            .map(|slot| {
                let (token, base) = (&token, &base);
                s.spawn(move || {
                    let agent = agent();
                    // Opens the thread's connection with a call that is never counted.
                    assert_eq!(get(&agent, &format!("{base}/warm-up"), token).status, 404);
                    let mut next = first;
                    let mut out = Vec::new();
                    for round in 1..=rounds {
                        thread::sleep(next.saturating_duration_since(Instant::now()));
                        let path = format!("/api/machines?$top=1&call={slot}-{round}");
                        let at = Instant::now();
                        let status = get(&agent, &format!("{base}{path}"), token).status;
                        out.push((path, at, status));
                        next = (first + period * round).max(at + period);
                    }
                    out
                })
            })
            .collect();
        threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect()
    });
    let log = sim.log();
    let start = sim.inner.core.start;
    sent.into_iter()
        .map(|(path, sent, status)| {
            let entry = log.iter().find(|e| e.path == path).expect("logged");
            let lag = entry
                .instant
                .checked_sub(sent - start)
                .expect("decided after it was sent");
            Paced { sent, lag, status }
        })
        .collect()
}

#[test]
fn a_client_that_paces_by_its_send_instants_meets_429s_when_arrivals_vary() {
    const CALLS: u32 = 5;
    // 25 API seconds at 0.01: a window of 250 ms. The client waits a margin more.
    let window = Duration::from_millis(250);
    let margin = Duration::from_millis(30);
    let run = |jitter| {
        let sim = start(
            SimConfig::default()
                .time_scale(0.01)
                .limits(CLASS_DEFAULT, &[(CALLS, 25.0)])
                .inbound_jitter(jitter)
                .seed(5),
        );
        let calls = pace_by_send_instants(&sim, CALLS as usize, window + margin, 10);
        (calls, sim.stats())
    };
    let (jittered, steady) = thread::scope(|s| {
        let jittered = s.spawn(|| run(window));
        let steady = run(Duration::ZERO);
        (jittered.join().unwrap(), steady)
    });
    let refused = |calls: &[Paced]| calls.iter().filter(|c| c.status == 429).count();
    for (calls, stats) in [&jittered, &steady] {
        assert!(calls.iter().all(|c| c.status == 200 || c.status == 429));
        let sent: Vec<Instant> = calls.iter().map(|c| c.sent).collect();
        assert!(most_in_one_window(&sent, window + margin) <= CALLS as usize);
        assert!(stats.exceeded().is_empty(), "{stats:?}");
    }
    // Decided within the margin of their sends, calls reach the server at the client's
    // own pace: a 429 needs a call that the way in held back longer than the margin. So
    // without jitter there is none, unless the machine is so loaded that loopback itself
    // is a network whose delay varies that much.
    for c in steady.0.iter().filter(|c| c.status == 429) {
        let decided = |c: &Paced| c.sent + c.lag;
        let held_back = steady.0.iter().any(|other| {
            let t = decided(other);
            let counted = other.status == 200 || std::ptr::eq(other, c);
            counted && t <= decided(c) && t + window > decided(c) && other.lag >= margin
        });
        assert!(
            held_back,
            "refused although every call in its window was decided within {margin:?} of its send"
        );
    }
    assert!(
        refused(&jittered.0) > 0,
        "arrivals that vary by up to a window turn the same pace into 429s"
    );
}

mod assertions {
    use super::*;
    use crate::client::{CertificateCredential, SignatureAlgorithm};

    const APP_CRT: &[u8] = include_bytes!("../../tests/data/app.crt");
    const APP_KEY: &[u8] = include_bytes!("../../tests/data/app.key");
    const EXPIRED_CRT: &[u8] = include_bytes!("../../tests/data/app-expired.crt");
    const OTHER_CRT: &[u8] = include_bytes!("../../tests/data/other.crt");
    const OTHER_KEY: &[u8] = include_bytes!("../../tests/data/other.key");

    fn sim() -> Simulator {
        start(
            SimConfig::default()
                .add_certificate_client("cert-app", APP_CRT)
                .add_certificate_client("old-app", EXPIRED_CRT),
        )
    }

    fn token_url(sim: &Simulator) -> String {
        format!("{}/{}/oauth2/v2.0/token", sim.authority(), sim.tenant_id())
    }

    fn send(sim: &Simulator, client_id: &str, assertion: &str) -> Answer {
        answer(agent().post(&token_url(sim)).send_form([
            ("grant_type", "client_credentials"),
            ("client_id", client_id),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", assertion),
            ("scope", "https://api.securitycenter.microsoft.com/.default"),
        ]))
    }

    fn refusal(a: &Answer) -> String {
        assert_eq!(a.status, 401, "{}", a.body);
        a.json()["error_description"].as_str().unwrap().to_owned()
    }

    #[test]
    fn a_signed_assertion_gets_a_token_once() {
        let sim = sim();
        let cert = CertificateCredential::from_pem(APP_CRT, APP_KEY).unwrap();
        let assertion = cert.assertion(&token_url(&sim), "cert-app").unwrap();
        let first = send(&sim, "cert-app", &assertion);
        assert_eq!(first.status, 200, "{}", first.body);
        let token = first.json()["access_token"].as_str().unwrap().to_owned();
        let machines = get(&agent(), &format!("{}/api/machines", sim.url()), &token);
        assert_eq!(machines.status, 200);
        // The same assertion again is a replay.
        assert!(refusal(&send(&sim, "cert-app", &assertion)).contains("already used"));
        // RS256 with the SHA-1 thumbprint works too.
        let rs = cert.with_algorithm(SignatureAlgorithm::Rs256);
        let assertion = rs.assertion(&token_url(&sim), "cert-app").unwrap();
        assert!(assertion.starts_with(&base64_json(r#"{"alg":"RS256","typ":"JWT","x5t":"#)));
        assert_eq!(send(&sim, "cert-app", &assertion).status, 200);
        // Without client_id the application is read from the assertion.
        let assertion = rs.assertion(&token_url(&sim), "cert-app").unwrap();
        assert_eq!(send(&sim, "", &assertion).status, 200);
    }

    /// The base64url of a JSON prefix, cut where its last full 3-byte group ends.
    fn base64_json(prefix: &str) -> String {
        use base64::Engine as _;
        let whole = &prefix.as_bytes()[..prefix.len() / 3 * 3];
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(whole)
    }

    #[test]
    fn wrong_keys_expired_certificates_and_bad_claims_are_refused() {
        let sim = sim();
        let url = token_url(&sim);
        let other = CertificateCredential::from_pem(OTHER_CRT, OTHER_KEY).unwrap();
        let a = other.assertion(&url, "cert-app").unwrap();
        assert!(refusal(&send(&sim, "cert-app", &a)).contains("key was not found"));

        // A valid signature over changed claims no longer verifies.
        let cert = CertificateCredential::from_pem(APP_CRT, APP_KEY).unwrap();
        let a = cert.assertion(&url, "cert-app").unwrap();
        let parts: Vec<&str> = a.split('.').collect();
        let b = cert.assertion(&url, "cert-app").unwrap();
        let forged = format!("{}.{}.{}", parts[0], b.split('.').nth(1).unwrap(), parts[2]);
        assert!(refusal(&send(&sim, "cert-app", &forged)).contains("signature does not match"));

        let expired = CertificateCredential::from_pem(EXPIRED_CRT, APP_KEY).unwrap();
        let a = expired.assertion(&url, "old-app").unwrap();
        assert!(refusal(&send(&sim, "old-app", &a)).contains("expired"));

        let a = cert.assertion("https://login.example/t/oauth2/v2.0/token", "cert-app");
        assert!(refusal(&send(&sim, "cert-app", &a.unwrap())).contains("audience"));
        let a = cert.assertion(&url, "cert-app").unwrap();
        assert!(refusal(&send(&sim, "someone-else", &a)).contains("doesn't match"));
        let a = cert.assertion(&url, "unregistered").unwrap();
        assert!(refusal(&send(&sim, "unregistered", &a)).contains("no certificate"));
        assert!(refusal(&send(&sim, "cert-app", "a.b.c")).contains("malformed"));
        let st = sim.stats();
        assert_eq!(st.token_requests, 7);
    }

    #[test]
    fn an_unreadable_certificate_is_a_configuration_error() {
        let e = Simulator::start(SimConfig::default().add_certificate_client("x", b"junk"))
            .err()
            .unwrap();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    }
}

/// Many keep-alive clients that connect at once while a token is refreshed on another
/// connection: every request is answered within a bounded time. Connections stay open
/// until every client is done, as pooled ones do, so a connection that nobody served
/// would wait for the end of the test.
#[test]
fn keep_alive_clients_and_a_token_refresh_are_all_answered() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Barrier, RwLock};

    const CLIENTS: usize = 16;
    const CALLS: usize = 200;
    let sim = Arc::new(start(
        SimConfig::default()
            .token_lifetime(Duration::from_millis(1000))
            .limits(CLASS_DEFAULT, &[(1_000_000, 60.0)])
            .limits(CLASS_TOKEN, &[(1_000_000, 60.0)]),
    ));
    let prompt = || -> ureq::Agent {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(3)))
            .build()
            .into()
    };
    let began = Instant::now();
    // The token connection stays open too, as in a client's pool.
    let token_agent = prompt();
    let token = Arc::new(RwLock::new(token(&sim, &token_agent)));
    let done = Arc::new(AtomicBool::new(false));
    let refresher = {
        let (sim, token, done) = (Arc::clone(&sim), Arc::clone(&token), Arc::clone(&done));
        thread::spawn(move || -> Result<usize, String> {
            let mut refreshed = 0;
            while !done.load(Ordering::Relaxed) {
                thread::sleep(Duration::from_millis(200));
                let a = token_v2(&sim, &token_agent, sim.client_secret());
                let value = a.json()["access_token"].as_str().map(str::to_owned);
                *token.write().unwrap() = value.ok_or(a.body)?;
                refreshed += 1;
            }
            Ok(refreshed)
        })
    };
    let start_line = Arc::new(Barrier::new(CLIENTS));
    let finish_line = Arc::new(Barrier::new(CLIENTS));
    let url = format!("{}/api/machines?$top=1", sim.url());
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (url, token) = (url.clone(), Arc::clone(&token));
            let (start_line, finish_line) = (Arc::clone(&start_line), Arc::clone(&finish_line));
            thread::spawn(move || -> Result<(), String> {
                let agent = prompt();
                start_line.wait();
                let mut outcome = Ok(());
                for call in 0..CALLS {
                    let bearer = token.read().unwrap().clone();
                    let sent = Instant::now();
                    match get_result(&agent, &url, &bearer) {
                        Ok(r) if r.status() == 200 => {}
                        Ok(r) => {
                            outcome = Err(format!("call {call}: status {}", r.status()));
                            break;
                        }
                        Err(e) => {
                            outcome = Err(format!("call {call} after {:?}: {e}", sent.elapsed()));
                            break;
                        }
                    }
                }
                // Keep the connection open until every client is done.
                finish_line.wait();
                drop(agent);
                outcome
            })
        })
        .collect();
    let outcomes: Vec<_> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    done.store(true, Ordering::Relaxed);
    let refreshed = refresher.join().unwrap();
    let failed: Vec<_> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
    assert!(failed.is_empty(), "{failed:?}");
    assert!(refreshed.as_ref().is_ok_and(|&n| n > 0), "{refreshed:?}");
    let stats = sim.stats();
    assert_eq!(
        stats.by_status.get(&200),
        Some(&(CLIENTS as u64 * CALLS as u64 + 1 + *refreshed.as_ref().unwrap() as u64))
    );
    assert!(
        began.elapsed() < Duration::from_secs(15),
        "{:?}",
        began.elapsed()
    );
}

/// Connections opened back to back and all kept open, as a client's pool does: the first
/// request of each is answered at once, whatever the other connections do.
#[test]
fn connections_opened_in_a_burst_and_kept_open_are_all_served() {
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpStream;

    let began = Instant::now();
    for round in 0..5 {
        let sim = start(SimConfig::default());
        let mut connections: Vec<TcpStream> = (0..32)
            .map(|_| TcpStream::connect(sim.addr()).unwrap())
            .collect();
        for c in &mut connections {
            c.write_all(b"GET /api/machines HTTP/1.1\r\nHost: sim\r\n\r\n")
                .unwrap();
        }
        // Every answer is due within the same two seconds.
        let deadline = Instant::now() + Duration::from_secs(2);
        let unanswered: Vec<usize> = connections
            .iter()
            .enumerate()
            .filter(|(_, c)| {
                let left = deadline.saturating_duration_since(Instant::now());
                c.set_read_timeout(Some(left.max(Duration::from_millis(1))))
                    .unwrap();
                let mut status_line = String::new();
                let read = BufReader::new(*c).read_line(&mut status_line);
                !matches!(read, Ok(n) if n > 0 && status_line.starts_with("HTTP/1.1 401 "))
            })
            .map(|(i, _)| i)
            .collect();
        assert!(
            unanswered.is_empty(),
            "round {round}: connections {unanswered:?} of 32 got no answer"
        );
        assert_eq!(sim.stats().by_status.get(&401), Some(&32));
    }
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "{:?}",
        began.elapsed()
    );
}
