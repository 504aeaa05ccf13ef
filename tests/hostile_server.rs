//! The client against a server that answers what it likes: waits of years, limits of
//! centuries, tokens that never expire, run times past the end of time, paging links
//! that loop. None of it may panic, hang or impose more than the documented maxima.

use quotagate::client::{
    Client, ClientBuilder, Error, MAX_SERVER_WAIT, MAX_TOKEN_LIFETIME, Request, RetryPolicy,
};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// One answer: status, extra headers, body.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn json(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// A request as the server saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    target: String,
}

type Handler = dyn Fn(&Seen, usize) -> Answer + Send + Sync;

/// A loopback HTTP server that answers every request with `handler(request, n)`, where
/// `n` counts the API requests (token requests are answered with a token of an hour
/// unless the handler answers `/oauth2/` targets itself).
struct Script {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Script {
    fn start(handler: impl Fn(&Seen, usize) -> Answer + Send + Sync + 'static) -> Script {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let api_calls = Arc::new(AtomicUsize::new(0));
        let log = seen.clone();
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (handler, log, api_calls) = (handler.clone(), log.clone(), api_calls.clone());
                thread::spawn(move || serve(stream, &*handler, &log, &api_calls));
            }
        });
        Script { url, seen }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn api_calls(&self) -> usize {
        self.seen()
            .iter()
            .filter(|s| !s.target.contains("/oauth2/"))
            .count()
    }
}

fn serve(stream: TcpStream, handler: &Handler, log: &Mutex<Vec<Seen>>, api_calls: &AtomicUsize) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut stream = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (method, target) = (
            parts.next().unwrap_or("").to_string(),
            parts.next().unwrap_or("").to_string(),
        );
        let mut length = 0;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((n, v)) = h.split_once(':') {
                if n.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let seen = Seen { method, target };
        log.lock().unwrap().push(seen.clone());
        let answer = if seen.target.contains("/oauth2/") {
            handler(&seen, usize::MAX)
        } else {
            handler(&seen, api_calls.fetch_add(1, Ordering::SeqCst))
        };
        let mut head = format!(
            "HTTP/1.1 {} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
            answer.status,
            answer.body.len()
        );
        for (n, v) in &answer.headers {
            head.push_str(&format!("{n}: {v}\r\n"));
        }
        head.push_str("\r\n");
        if stream.write_all(head.as_bytes()).is_err()
            || stream.write_all(answer.body.as_bytes()).is_err()
        {
            return;
        }
    }
}

const TOKEN: &str = r#"{"token_type":"Bearer","expires_in":3599,"access_token":"t0k3n"}"#;

/// Answers token requests with an hour's token and API requests with `api`.
fn api(api: impl Fn(&Seen, usize) -> Answer + Send + Sync + 'static) -> Script {
    Script::start(move |seen, n| {
        if seen.target.contains("/oauth2/") {
            Answer::json(200, TOKEN)
        } else {
            api(seen, n)
        }
    })
}

fn builder(server: &Script) -> ClientBuilder {
    Client::builder()
        .base_url(&server.url)
        .authority(&server.url)
        .tenant_id("tenant")
        .client_id("app")
        .client_secret("secret")
        .timeout(Duration::from_secs(10))
        .retry_policy(RetryPolicy {
            max_attempts: 4,
            max_quota_wait: Duration::from_secs(2),
            base_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(50),
        })
}

const THROTTLED: &str =
    r#"{"error":{"code":"TooManyRequests","message":"Rate limit is exceeded."}}"#;

/// The warnings the library logged, from every test of this binary.
fn logged() -> Vec<String> {
    struct Capture(Mutex<Vec<String>>);
    impl log::Log for Capture {
        fn enabled(&self, m: &log::Metadata<'_>) -> bool {
            m.level() <= log::Level::Warn
        }
        fn log(&self, r: &log::Record<'_>) {
            if self.enabled(r.metadata()) {
                self.0.lock().unwrap().push(r.args().to_string());
            }
        }
        fn flush(&self) {}
    }
    static CAPTURE: OnceLock<&'static Capture> = OnceLock::new();
    let capture = CAPTURE.get_or_init(|| {
        let c: &'static Capture = Box::leak(Box::new(Capture(Mutex::new(Vec::new()))));
        log::set_logger(c).unwrap();
        log::set_max_level(log::LevelFilter::Warn);
        c
    });
    capture.0.lock().unwrap().clone()
}

fn get(client: &Client) -> Result<quotagate::client::Response, Error> {
    client.send(&Request::get("/api/machines"))
}

#[test]
fn a_429_asking_for_years_pauses_the_bucket_at_most_an_hour() {
    logged();
    for (name, value) in [
        ("Retry-After", "1e20"),
        ("Retry-After", "1e9"),
        ("retry-after-ms", "1e300"),
        ("x-ms-retry-after-ms", "99999999999999999999999"),
    ] {
        let server = api(move |_, _| Answer::json(429, THROTTLED).header(name, value));
        let client = builder(&server).build().unwrap();
        let started = Instant::now();
        match get(&client) {
            Err(Error::Throttled(d)) => {
                assert_eq!(d.status, Some(429));
                assert_eq!(d.retry_after, Some(MAX_SERVER_WAIT), "{name}: {value}");
            }
            other => panic!("{name}: {value}: {other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(5));
        let key = client.bucket_key("GET", "/api/machines").0;
        let wait = client.limiter().wait_time(&key, 1).unwrap();
        assert!(
            wait <= MAX_SERVER_WAIT && wait > MAX_SERVER_WAIT - Duration::from_secs(60),
            "{name}: {value}: the bucket waits {wait:?}"
        );
    }
    let warned = logged();
    assert!(
        warned.iter().any(|l| l.contains(
            "a Retry-After of 100000000000000000000 s is longer than the 3600 s allowed"
        )),
        "{warned:?}"
    );
}

#[test]
fn a_503_asking_for_centuries_ends_the_call_instead_of_a_panic() {
    let server = api(|_, _| {
        Answer::json(503, r#"{"error":{"code":"ServiceUnavailable"}}"#)
            .header("Retry-After", "1e19")
    });
    let client = builder(&server).build().unwrap();
    match get(&client) {
        Err(Error::Throttled(d)) => assert_eq!(d.status, Some(503)),
        other => panic!("{other:?}"),
    }
    assert_eq!(server.api_calls(), 1);
}

#[test]
fn stated_limits_of_centuries_are_neither_a_panic_nor_learned() {
    for message in [
        "API calls quota exceeded! maximum allowed 5 per 213503982334601.07:00:59",
        "API calls quota exceeded! maximum allowed 1 per 99999.00:00:00",
        "API calls quota exceeded! maximum allowed 1 per 99999999999999999.00:00:00",
    ] {
        let body = format!(r#"{{"error":{{"code":"429","message":"{message}"}}}}"#);
        let server = api(move |_, n| {
            if n == 0 {
                Answer::json(429, body.clone())
            } else {
                Answer::json(200, r#"{"value":[]}"#)
            }
        });
        let client = builder(&server).build().unwrap();
        assert_eq!(get(&client).unwrap().status(), 200, "{message}");
        let stats = client.stats();
        assert_eq!(stats.learned_limits, 0, "{message}");
        let windows = &stats.buckets.values().next().unwrap().windows;
        assert!(
            windows.iter().all(|w| w.window_ms <= 3_600_000),
            "{message}: {windows:?}"
        );
    }
}

/// A client whose token endpoint answers `token` first, and a token of an hour after.
fn token_server(token: &'static str) -> Script {
    let tokens = AtomicUsize::new(0);
    Script::start(move |seen, _| {
        if seen.target.contains("/oauth2/") {
            if tokens.fetch_add(1, Ordering::SeqCst) == 0 {
                Answer::json(200, token)
            } else {
                Answer::json(200, TOKEN)
            }
        } else {
            Answer::json(200, r#"{"value":[]}"#)
        }
    })
}

#[test]
fn tokens_that_claim_to_live_for_ever_are_cached_a_day_at_most() {
    for token in [
        r#"{"token_type":"Bearer","expires_in":1e20,"access_token":"a"}"#,
        r#"{"token_type":"Bearer","expires_in":1e19,"access_token":"a"}"#,
        r#"{"token_type":"Bearer","expires_in":"1e300","access_token":"a"}"#,
    ] {
        let server = token_server(token);
        let client = builder(&server).build().unwrap();
        // A panic inside the token fetch used to leave the refresh marked as running:
        // every later call then waited for ever.
        for _ in 0..3 {
            assert_eq!(get(&client).unwrap().status(), 200, "{token}");
        }
        assert_eq!(client.stats().token_requests, 1, "{token}");
    }
    assert_eq!(MAX_TOKEN_LIFETIME, Duration::from_secs(86_400));
}

#[test]
fn a_token_answer_that_makes_no_sense_fails_that_call_only() {
    let server = token_server(r#"{"token_type":"Bearer","expires_in":"soon","access_token":"a"}"#);
    let client = builder(&server).build().unwrap();
    assert!(matches!(get(&client), Err(Error::Auth(..))));
    // The next call refreshes again, and gets the good token.
    assert_eq!(get(&client).unwrap().status(), 200);
}

#[test]
fn a_hunting_answer_stating_years_of_run_time_is_still_returned() {
    logged();
    let server = api(|_, _| {
        Answer::json(
            200,
            r#"{"Schema":[],"Results":[{"a":1}],"Stats":{"ExecutionTime":1e20}}"#,
        )
    });
    let client = builder(&server).build().unwrap();
    let r = client
        .send(&Request::post("/api/advancedqueries/run").json(&serde_json::json!({"Query": "x"})))
        .unwrap();
    assert_eq!(r.status(), 200);
    // The time the exchange took was recorded instead.
    assert!(client.stats().hunting_run_ms_hour < 10_000);
    // And the next query is not held back for years.
    let r = client
        .send(&Request::post("/api/advancedqueries/run").json(&serde_json::json!({"Query": "x"})))
        .unwrap();
    assert_eq!(r.status(), 200);
    let posts = server.seen().iter().filter(|s| s.method == "POST").count();
    assert_eq!(posts, 3, "one token request and two queries");
    let warned = logged();
    assert!(
        warned
            .iter()
            .any(|l| l.contains("states a run time of 100000000000000000000 s")),
        "{warned:?}"
    );
}

#[test]
fn a_token_provider_that_calls_its_own_client_fails_instead_of_waiting_for_itself() {
    let server = api(|_, _| Answer::json(200, r#"{"value":[]}"#));
    let me: Arc<OnceLock<Client>> = Arc::new(OnceLock::new());
    let nested: Arc<Mutex<Option<Error>>> = Arc::default();
    let (inner, seen) = (me.clone(), nested.clone());
    let client = builder(&server)
        .token_provider(move || {
            let client = inner.get().expect("set before the first call");
            match client.send(&Request::get("/api/machines")) {
                Ok(_) => Ok(("nested".into(), Duration::from_secs(60))),
                Err(e) => {
                    let why = e.to_string();
                    *seen.lock().unwrap() = Some(e);
                    Err(why)
                }
            }
        })
        .build()
        .unwrap();
    me.set(client.clone()).unwrap();
    let started = Instant::now();
    match get(&client) {
        Err(Error::Auth(why, _)) => {
            assert!(why.contains("the client it provides tokens for"), "{why}")
        }
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(matches!(*nested.lock().unwrap(), Some(Error::Reentrant(_))));
    assert_eq!(server.api_calls(), 0);
}

/// A list whose every page holds one item and links to `next(n)` (None: the last page).
fn list(next: impl Fn(usize) -> Option<String> + Send + Sync + 'static) -> Script {
    let url = Arc::new(OnceLock::<String>::new());
    let base = url.clone();
    let server = api(move |_, n| {
        let link = next(n)
            .map(|path| format!(r#","@odata.nextLink":"{}{path}""#, base.get().unwrap()))
            .unwrap_or_default();
        Answer::json(200, format!(r#"{{"value":[{n}]{link}}}"#))
    });
    url.set(server.url.clone()).unwrap();
    server
}

fn paging_error(r: Option<Result<serde_json::Value, Error>>) -> String {
    match r {
        Some(Err(Error::Paging(why))) => why,
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_next_link_to_the_same_page_ends_with_an_error_not_a_loop() {
    let server = list(|_| Some("/api/machines".into()));
    let client = builder(&server).build().unwrap();
    let mut items = client.items(&Request::get("/api/machines"));
    assert_eq!(items.next().unwrap().unwrap(), 0);
    let why = paging_error(items.next());
    assert!(why.contains("already fetched"), "{why}");
    assert!(items.next().is_none(), "the run is over");
    assert!(matches!(items.failure(), Some(Error::Paging(_))));
    assert_eq!(server.api_calls(), 1);
}

#[test]
fn next_links_that_cycle_end_at_the_first_repeat() {
    // page0 -> a -> b -> c -> a: the first request is the path, the links are absolute.
    let server = list(|n| Some(["/api/a", "/api/b", "/api/c"][n % 3].into()));
    let client = builder(&server).build().unwrap();
    let got: Vec<_> = client
        .items(&Request::get("/api/machines"))
        .take(10)
        .collect();
    assert_eq!(got.len(), 5, "{got:?}");
    assert!(got[..4].iter().all(Result::is_ok));
    assert!(matches!(got[4], Err(Error::Paging(_))));
    assert_eq!(server.api_calls(), 4);
}

#[test]
fn the_page_limit_ends_an_endless_list() {
    let server = list(|n| Some(format!("/api/machines?page={}", n + 1)));
    let client = builder(&server).max_pages(5).build().unwrap();
    let got: Vec<_> = client
        .items(&Request::get("/api/machines"))
        .take(100)
        .collect();
    assert_eq!(got.len(), 6);
    let why = paging_error(got.into_iter().next_back());
    assert!(why.contains("more than 5 pages"), "{why}");
    assert_eq!(server.api_calls(), 5);
    assert!(builder(&server).max_pages(0).build().is_err());
}

#[test]
fn empty_pages_without_end_stop_at_the_calls_budget() {
    let url = Arc::new(OnceLock::<String>::new());
    let base = url.clone();
    let server = api(move |_, n| {
        thread::sleep(Duration::from_millis(5));
        let link = format!("{}/api/machines?page={}", base.get().unwrap(), n + 1);
        Answer::json(200, format!(r#"{{"value":[],"@odata.nextLink":"{link}"}}"#))
    });
    url.set(server.url.clone()).unwrap();
    let client = builder(&server)
        .max_quota_wait(Duration::from_millis(300))
        .build()
        .unwrap();
    let started = Instant::now();
    let mut items = client.items(&Request::get("/api/machines"));
    match items.next() {
        Some(Err(Error::Timeout(why, _))) => assert!(why.contains("held no items"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(items.next().is_none());
}

#[test]
fn a_failed_page_ends_the_run_and_stays_the_reason() {
    let server = api(|_, n| match n {
        0 => Answer::json(
            200,
            r#"{"value":[1],"@odata.nextLink":"/api/machines?page=2"}"#,
        ),
        _ => Answer::json(404, r#"{"error":{"code":"NotFound","message":"gone"}}"#),
    });
    let client = builder(&server).build().unwrap();
    let mut pages = client.pages(&Request::get("/api/machines"));
    assert!(pages.next_page().unwrap().is_ok());
    assert!(matches!(pages.next_page(), Some(Err(Error::Http(_)))));
    // Nothing more is fetched, and the reason stays: a caller can tell a partial list.
    assert!(pages.next_page().is_none());
    assert!(matches!(pages.failure(), Some(Error::Http(d)) if d.status == Some(404)));
    assert_eq!(server.api_calls(), 2);
}
