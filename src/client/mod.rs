//! The blocking HTTP client for the Defender APIs: every call goes through the limiter.
//!
//! A [`Client`] is cheap to clone and meant to be shared by all threads. For each call it
//! finds the route's quota bucket (API host, tenant, app, endpoint class), waits in the
//! limiter's FIFO queue, attaches a cached token, sends over a pooled keep-alive
//! connection, and reads the answer:
//!
//! - 429: the whole bucket pauses until the server's instant (`Retry-After` in seconds or
//!   as a date, `retry-after-ms`, `x-ms-retry-after-ms`, or the body's "maximum allowed N
//!   per HH:MM:SS", which also lowers the bucket's limit when the server's is lower); with
//!   no hint, capped exponential backoff with full jitter. Then it retries; the caller
//!   never sees that 429 unless the budget runs out ([`Error::Throttled`]).
//! - 500, 502, 504, 408 and transport failures: backoff and retry for idempotent methods;
//!   POST and PATCH only when the request certainly was not processed (a 503, a refused
//!   connection). An ambiguous POST failure is returned, never repeated.
//! - 401: the token is refreshed once and the call retried once.
//!
//! ```no_run
//! use quotagate::client::{Client, Credentials};
//!
//! let client = Client::builder()
//!     .credentials(Credentials::ClientSecret {
//!         tenant_id: "tenant".into(),
//!         client_id: "app".into(),
//!         secret: "secret".into(),
//!     })
//!     .build()
//!     .unwrap();
//! for machine in client.items(&quotagate::client::Request::get("/api/machines")) {
//!     println!("{}", machine.unwrap()["computerDnsName"]);
//! }
//! ```

mod auth;
mod error;
mod http;
mod paging;
mod response;
mod retry;
mod routes;
mod secret;

pub use auth::Credentials;
pub use error::{Error, ErrorDetails};
pub use paging::{Items, Pages};
pub use response::Response;
pub use retry::{RetryPolicy, quota_from_message, retry_after};
pub use routes::{DEFAULT_CLASS, Route, RouteTable, default_rates};
pub use secret::Secret;

use crate::limiter::{self, Limiter, Rate, Wait};
use auth::Auth;
use parking_lot::{Condvar, Mutex};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// The commercial Defender for Endpoint API.
pub const DEFAULT_BASE_URL: &str = "https://api.securitycenter.microsoft.com";
/// The commercial login authority.
pub const DEFAULT_AUTHORITY: &str = "https://login.microsoftonline.com";
/// The default limit of one answer's body: 256 MiB (hunting results reach 124 MB).
pub const DEFAULT_MAX_BODY: u64 = 256 << 20;
/// How long a waiting call sleeps at most before it checks for cancellation.
const SLICE: Duration = Duration::from_millis(50);

/// A request: method, path (or absolute URL on the API host), query, headers and body.
/// Cloning keeps the same cancellation handle.
#[derive(Clone)]
pub struct Request {
    method: String,
    target: String,
    query: Vec<(String, String)>,
    headers: Vec<(String, String)>,
    body: Option<Vec<u8>>,
    cancel: Cancel,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("method", &self.method)
            .field("target", &self.target)
            .field("query", &self.query)
            .field(
                "headers",
                &self.headers.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("body_bytes", &self.body.as_ref().map(Vec::len))
            .finish()
    }
}

impl Request {
    /// A request of `method` to `target`: a path such as `/api/machines`, or an absolute
    /// URL on the API host (an `@odata.nextLink`, used exactly as given).
    pub fn new(method: &str, target: &str) -> Self {
        Self {
            method: method.to_ascii_uppercase(),
            target: target.to_string(),
            query: Vec::new(),
            headers: Vec::new(),
            body: None,
            cancel: Cancel::default(),
        }
    }

    /// A GET request.
    pub fn get(target: &str) -> Self {
        Self::new("GET", target)
    }

    /// A POST request.
    pub fn post(target: &str) -> Self {
        Self::new("POST", target)
    }

    /// Adds a query parameter (percent-encoded when sent).
    pub fn query(mut self, name: &str, value: &str) -> Self {
        self.query.push((name.to_string(), value.to_string()));
        self
    }

    /// Sets a header, replacing one of the same name.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.set_header(name, value);
        self
    }

    pub(crate) fn set_header(&mut self, name: &str, value: &str) {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self.headers.push((name.to_string(), value.to_string()));
    }

    pub(crate) fn add_query(&mut self, name: &str, value: &str) {
        self.query.push((name.to_string(), value.to_string()));
    }

    pub(crate) fn set_body(&mut self, body: Vec<u8>, content_type: &str) {
        self.body = Some(body);
        self.set_header("content-type", content_type);
    }

    /// Sets a body with its content type.
    pub fn body(mut self, body: impl Into<Vec<u8>>, content_type: &str) -> Self {
        self.set_body(body.into(), content_type);
        self
    }

    /// Sets a JSON body.
    pub fn json(self, value: &serde_json::Value) -> Self {
        let body = serde_json::to_vec(value).expect("a JSON value serializes");
        self.body(body, "application/json")
    }

    /// The method.
    pub fn method(&self) -> &str {
        &self.method
    }

    /// The handle that cancels this request from another thread.
    pub fn canceller(&self) -> Cancel {
        self.cancel.clone()
    }

    /// True for the methods that may be repeated after any failure.
    fn idempotent(&self) -> bool {
        matches!(
            self.method.as_str(),
            "GET" | "HEAD" | "PUT" | "DELETE" | "OPTIONS"
        )
    }
}

/// Cancels a request's waits (for quota, tokens and backoff) from any thread; a call in
/// progress returns [`Error::Cancelled`] within about 50 ms.
#[derive(Clone, Default)]
pub struct Cancel {
    inner: Arc<CancelInner>,
}

#[derive(Default)]
struct CancelInner {
    cancelled: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
}

impl std::fmt::Debug for Cancel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cancel")
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}

impl Cancel {
    /// Cancels.
    pub fn cancel(&self) {
        self.inner.cancelled.store(true, Ordering::Release);
        let _guard = self.inner.lock.lock();
        self.inner.wake.notify_all();
    }

    /// True once cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.inner.cancelled.load(Ordering::Acquire)
    }

    fn check(&self, client: &ClientShared) -> Result<(), Error> {
        if client.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        if self.is_cancelled() {
            return Err(Error::Cancelled);
        }
        Ok(())
    }

    /// Sleeps `d`, waking early with an error on cancel or close.
    fn sleep(&self, client: &ClientShared, d: Duration) -> Result<(), Error> {
        let until = Instant::now() + d;
        let mut guard = self.inner.lock.lock();
        loop {
            self.check(client)?;
            let now = Instant::now();
            if now >= until {
                return Ok(());
            }
            self.inner
                .wake
                .wait_for(&mut guard, (until - now).min(SLICE));
        }
    }
}

/// Configures a [`Client`].
#[derive(Clone, Debug)]
pub struct ClientBuilder {
    base_url: String,
    authority: String,
    tenant_id: Option<String>,
    client_id: Option<String>,
    secret: Option<Secret>,
    access_token: Option<Secret>,
    credentials: Option<Credentials>,
    scope: Option<String>,
    resource: Option<String>,
    connect_timeout: Duration,
    timeout: Duration,
    proxy: Option<String>,
    user_agent: String,
    max_body: u64,
    policy: RetryPolicy,
    routes: RouteTable,
    margin: Duration,
    limiter: Option<Limiter>,
}

impl Default for ClientBuilder {
    fn default() -> Self {
        Self {
            base_url: DEFAULT_BASE_URL.into(),
            authority: DEFAULT_AUTHORITY.into(),
            tenant_id: None,
            client_id: None,
            secret: None,
            access_token: None,
            credentials: None,
            scope: None,
            resource: None,
            connect_timeout: Duration::from_secs(10),
            timeout: Duration::from_secs(300),
            proxy: None,
            user_agent: concat!("quotagate/", env!("CARGO_PKG_VERSION")).into(),
            max_body: DEFAULT_MAX_BODY,
            policy: RetryPolicy::default(),
            routes: RouteTable::defender(),
            margin: Duration::ZERO,
            limiter: None,
        }
    }
}

impl ClientBuilder {
    /// The API's base URL (default: the commercial MDE host).
    pub fn base_url(mut self, url: &str) -> Self {
        self.base_url = url.trim_end_matches('/').to_string();
        self
    }

    /// The login authority (default `https://login.microsoftonline.com`).
    pub fn authority(mut self, url: &str) -> Self {
        self.authority = url.trim_end_matches('/').to_string();
        self
    }

    /// The tenant id, for client-secret credentials.
    pub fn tenant_id(mut self, v: &str) -> Self {
        self.tenant_id = Some(v.to_string());
        self
    }

    /// The application (client) id, for client-secret credentials.
    pub fn client_id(mut self, v: &str) -> Self {
        self.client_id = Some(v.to_string());
        self
    }

    /// The client secret.
    pub fn client_secret(mut self, v: impl Into<Secret>) -> Self {
        self.secret = Some(v.into());
        self
    }

    /// A fixed access token instead of client credentials.
    pub fn access_token(mut self, v: impl Into<Secret>) -> Self {
        self.access_token = Some(v.into());
        self
    }

    /// Credentials in one value (instead of the separate setters).
    pub fn credentials(mut self, c: Credentials) -> Self {
        self.credentials = Some(c);
        self
    }

    /// The v2 token scope (default: the base URL's `/.default`).
    pub fn scope(mut self, v: &str) -> Self {
        self.scope = Some(v.to_string());
        self
    }

    /// A v1 token resource instead of a v2 scope.
    pub fn resource(mut self, v: &str) -> Self {
        self.resource = Some(v.to_string());
        self
    }

    /// The time limit of one HTTP exchange (default 300 s, room for 200 s hunting queries).
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = d;
        self
    }

    /// The time limit of connecting (default 10 s).
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// A proxy URL; without one, `HTTPS_PROXY`/`ALL_PROXY` and `NO_PROXY` apply.
    pub fn proxy(mut self, url: &str) -> Self {
        self.proxy = Some(url.to_string());
        self
    }

    /// The largest answer body accepted (default 256 MiB).
    pub fn max_body(mut self, bytes: u64) -> Self {
        self.max_body = bytes;
        self
    }

    /// Attempts per call, the first included (default 8).
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.policy.max_attempts = n;
        self
    }

    /// The longest a call may wait for quota in all (default 15 minutes).
    pub fn max_quota_wait(mut self, d: Duration) -> Self {
        self.policy.max_quota_wait = d;
        self
    }

    /// The whole retry policy.
    pub fn retry_policy(mut self, p: RetryPolicy) -> Self {
        self.policy = p;
        self
    }

    /// Replaces the limits of requests that no route names (default 100/min + 1,500/h).
    pub fn default_rates(mut self, rates: Vec<Rate>) -> Self {
        self.routes.set_default_rates(rates);
        self
    }

    /// Adds a route ahead of the built-in ones (or replaces the one with the same
    /// method and pattern).
    pub fn route(mut self, route: Route) -> Self {
        self.routes.add(route);
        self
    }

    /// Takes the proxy from the environment again (the default).
    pub fn proxy_from_env(mut self) -> Self {
        self.proxy = None;
        self
    }

    /// The route table in use.
    pub fn routes(&self) -> &RouteTable {
        &self.routes
    }

    /// Widens every window of the client's own limiter (not of a shared one).
    pub fn margin(mut self, d: Duration) -> Self {
        self.margin = d;
        self
    }

    /// Shares a limiter (and so the quotas) with other clients.
    pub fn limiter(mut self, l: Limiter) -> Self {
        self.limiter = Some(l);
        self
    }

    /// Builds the client. Fails on missing or contradictory settings.
    pub fn build(&self) -> Result<Client, Error> {
        let bad = |m: &str| Error::InvalidArgument(m.to_string());
        let base: ureq::http::Uri = self
            .base_url
            .parse()
            .map_err(|_| bad("the base URL is not a valid URL"))?;
        let origin = match (base.scheme_str(), base.authority()) {
            (Some(s @ ("http" | "https")), Some(a)) => format!("{s}://{a}"),
            _ => return Err(bad("the base URL needs http:// or https:// and a host")),
        };
        if !self.authority.starts_with("http://") && !self.authority.starts_with("https://") {
            return Err(bad("the authority needs http:// or https://"));
        }
        let credentials = match (&self.credentials, &self.access_token) {
            (Some(c), _) => c.clone(),
            (None, Some(t)) => Credentials::AccessToken(t.clone()),
            (None, None) => match (&self.tenant_id, &self.client_id, &self.secret) {
                (Some(t), Some(c), Some(s)) => Credentials::ClientSecret {
                    tenant_id: t.clone(),
                    client_id: c.clone(),
                    secret: s.clone(),
                },
                _ => {
                    return Err(bad(
                        "credentials are missing: give tenant id, client id and client secret, or an access token",
                    ));
                }
            },
        };
        match &credentials {
            Credentials::ClientSecret {
                tenant_id,
                client_id,
                secret,
            } => {
                if tenant_id.is_empty() || client_id.is_empty() || secret.is_empty() {
                    return Err(bad(
                        "tenant id, client id and client secret must not be empty",
                    ));
                }
                if tenant_id.contains(['/', '?', '#']) {
                    return Err(bad("the tenant id must not contain '/', '?' or '#'"));
                }
            }
            Credentials::AccessToken(t) if t.is_empty() => {
                return Err(bad("the access token is empty"));
            }
            Credentials::AccessToken(_) => {}
        }
        if self.policy.max_attempts == 0 {
            return Err(bad("max_attempts must be at least 1"));
        }
        if self.timeout.is_zero() || self.connect_timeout.is_zero() {
            return Err(bad("timeouts must be longer than zero"));
        }
        for rates in std::iter::once(self.routes.default_rates())
            .chain(self.routes.routes().iter().map(|r| r.rates.as_slice()))
        {
            if rates.is_empty() {
                return Err(bad("every route needs at least one rate"));
            }
            for r in rates {
                r.validate().map_err(Error::InvalidArgument)?;
            }
        }
        let proxy = match &self.proxy {
            Some(p) => Some(ureq::Proxy::new(p).map_err(|_| bad("the proxy URL is not valid"))?),
            None => None,
        };
        let limiter = match &self.limiter {
            Some(l) => l.clone(),
            None => Limiter::builder()
                .rates(self.routes.default_rates().iter().copied())
                .margin(self.margin)
                .build()
                .map_err(|e| Error::InvalidArgument(e.to_string()))?,
        };
        let (tenant, app) = match &credentials {
            Credentials::ClientSecret {
                tenant_id,
                client_id,
                ..
            } => (tenant_id.clone(), client_id.clone()),
            Credentials::AccessToken(_) => ("-".to_string(), "token".to_string()),
        };
        let auth = Auth::new(
            credentials,
            &self.authority,
            self.scope.clone(),
            self.resource.clone(),
            &origin,
        );
        Ok(Client {
            shared: Arc::new(ClientShared {
                agent: http::agent(self.connect_timeout, self.timeout, proxy, &self.user_agent),
                base_url: self.base_url.clone(),
                host: base.authority().map(|a| a.to_string()).unwrap_or_default(),
                origin,
                tenant,
                app,
                auth,
                routes: self.routes.clone(),
                limiter,
                policy: self.policy,
                max_body: self.max_body,
                closed: AtomicBool::new(false),
                counters: Counters::default(),
                keys: Mutex::new(BTreeSet::new()),
            }),
        })
    }
}

#[derive(Default)]
pub(crate) struct Counters {
    requests: AtomicU64,
    retries: AtomicU64,
    throttled: AtomicU64,
    pub(crate) token_requests: AtomicU64,
    transport_failures: AtomicU64,
    learned: AtomicU64,
}

pub(crate) struct ClientShared {
    agent: ureq::Agent,
    base_url: String,
    origin: String,
    host: String,
    tenant: String,
    app: String,
    auth: Auth,
    routes: RouteTable,
    limiter: Limiter,
    policy: RetryPolicy,
    max_body: u64,
    closed: AtomicBool,
    pub(crate) counters: Counters,
    keys: Mutex<BTreeSet<String>>,
}

/// A thread-safe client of the Defender APIs. Clones share everything (connections,
/// tokens, quotas).
#[derive(Clone)]
pub struct Client {
    shared: Arc<ClientShared>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base_url", &self.shared.base_url)
            .field("tenant", &self.shared.tenant)
            .field("app", &self.shared.app)
            .field("auth", &self.shared.auth)
            .finish_non_exhaustive()
    }
}

/// The client's counters and the statistics of the buckets it used.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ClientStats {
    /// HTTP exchanges with the API (retries included, token requests not).
    pub requests: u64,
    /// Exchanges that were retries.
    pub retries: u64,
    /// 429 answers received.
    pub throttled: u64,
    /// Requests to the token endpoint.
    pub token_requests: u64,
    /// Exchanges that failed without an answer.
    pub transport_failures: u64,
    /// Times a bucket adopted a lower limit that the server stated.
    pub learned_limits: u64,
    /// Statistics of each bucket the client used, by key.
    pub buckets: std::collections::BTreeMap<String, BucketSummary>,
}

/// A bucket's statistics in [`ClientStats`].
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct BucketSummary {
    /// Calls admitted.
    pub admitted_calls: u64,
    /// Admitted calls that waited.
    pub waited_calls: u64,
    /// Total wait, in milliseconds.
    pub total_wait_ms: u64,
    /// Longest wait, in milliseconds.
    pub longest_wait_ms: u64,
    /// Pauses (from 429s).
    pub pauses: u64,
    /// Use of each window: `{used, calls, window_ms}`.
    pub windows: Vec<WindowSummary>,
}

/// One window's use in [`BucketSummary`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct WindowSummary {
    /// Units in the window now.
    pub used: u64,
    /// The limit.
    pub calls: u64,
    /// The window, in milliseconds.
    pub window_ms: u64,
}

enum Step {
    Done(Response),
    Retry { wait: Option<Duration> },
}

impl Client {
    /// Starts configuring a client.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// The limiter that holds this client's quotas.
    pub fn limiter(&self) -> &Limiter {
        &self.shared.limiter
    }

    /// The base URL.
    pub fn base_url(&self) -> &str {
        &self.shared.base_url
    }

    /// Closes the client: calls waiting for quota, tokens or backoff end with
    /// [`Error::Closed`], and later calls fail the same way. A shared limiter stays open.
    pub fn close(&self) {
        self.shared.closed.store(true, Ordering::Release);
    }

    /// The bucket key of a request: API host, tenant, app and endpoint class.
    pub fn bucket_key(&self, method: &str, path: &str) -> (String, Vec<Rate>) {
        let (class, rates) = self.shared.routes.lookup(method, path);
        let s = &self.shared;
        (
            format!("{}|{}|{}|{}", s.host, s.tenant, s.app, class),
            rates.to_vec(),
        )
    }

    /// The absolute URL and path of a request; absolute URLs must stay on the API's origin
    /// so that the token is never sent elsewhere.
    fn resolve(&self, req: &Request) -> Result<(String, String), Error> {
        let s = &self.shared;
        let mut url = if req.target.starts_with("http://") || req.target.starts_with("https://") {
            let rest = &req.target[s.origin.len().min(req.target.len())..];
            if !req.target.starts_with(&s.origin)
                || !(rest.is_empty() || rest.starts_with(['/', '?']))
            {
                return Err(Error::InvalidArgument(format!(
                    "the URL is not on the API host {}: refusing to send the token elsewhere",
                    s.origin
                )));
            }
            req.target.clone()
        } else if req.target.starts_with('/') {
            format!("{}{}", s.base_url, http::encode_path(&req.target))
        } else {
            return Err(Error::InvalidArgument(
                "a path must start with '/' (or be an absolute URL)".into(),
            ));
        };
        if !req.query.is_empty() {
            url.push(if url.contains('?') { '&' } else { '?' });
            let q: Vec<String> = req
                .query
                .iter()
                .map(|(n, v)| format!("{}={}", http::encode(n), http::encode(v)))
                .collect();
            url.push_str(&q.join("&"));
        }
        let uri: ureq::http::Uri = url
            .parse()
            .map_err(|_| Error::InvalidArgument(format!("not a valid URL: {url}")))?;
        Ok((url, uri.path().to_string()))
    }

    /// Sends a request through the limiter, with retries; returns the server's final
    /// answer, whatever its status (see [`Response::error_for_status`]).
    pub fn send(&self, req: &Request) -> Result<Response, Error> {
        let s = &*self.shared;
        let (url, path) = self.resolve(req)?;
        let (key, rates) = self.bucket_key(&req.method, &path);
        s.limiter
            .ensure_rates(&key, &rates)
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        {
            let mut keys = s.keys.lock();
            if !keys.contains(&key) {
                keys.insert(key.clone());
            }
        }
        let started = Instant::now();
        let budget_end = started + s.policy.max_quota_wait;
        let mut attempt = 0u32;
        let mut refreshed = false;
        let mut last = ErrorDetails::default();
        loop {
            req.cancel.check(s)?;
            attempt += 1;
            // Obtain the token first, so that a token request never stands between the
            // quota's admission and the call the server counts; after a long wait the
            // second look finds the cached token (or refreshes it if it came due).
            s.auth.token(s, &req.cancel)?;
            self.wait_for_quota(&key, budget_end, &req.cancel, &last, attempt)?;
            let token = s.auth.token(s, &req.cancel)?;
            // A token fetch can take a while: a call cancelled or closed meanwhile is not sent.
            req.cancel.check(s)?;
            let mut headers = req.headers.clone();
            // The client's token is the one that counts; a caller's own is dropped.
            headers.retain(|(n, _)| !n.eq_ignore_ascii_case("authorization"));
            headers.push((
                "authorization".into(),
                format!("Bearer {}", token.value.expose()),
            ));
            if !headers
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case("accept"))
            {
                headers.push(("accept".into(), "application/json".into()));
            }
            s.counters.requests.fetch_add(1, Ordering::Relaxed);
            if attempt > 1 {
                s.counters.retries.fetch_add(1, Ordering::Relaxed);
            }
            let result = http::exchange(
                &s.agent,
                &req.method,
                &url,
                &headers,
                req.body.as_deref(),
                s.max_body,
            );
            drop(headers);
            let step = match result {
                Ok(r) => self.on_answer(
                    req,
                    &key,
                    r,
                    attempt,
                    &mut refreshed,
                    token.generation,
                    &mut last,
                )?,
                Err(f) => self.on_failure(req, f, attempt, &mut last)?,
            };
            match step {
                Step::Done(r) => return Ok(r.with_attempts(attempt)),
                Step::Retry { wait } => {
                    if attempt >= s.policy.max_attempts {
                        last.attempts = attempt;
                        return Err(if last.status == Some(429) {
                            Error::Throttled(Box::new(last))
                        } else {
                            Error::Transport("the retry budget ran out".into(), Box::new(last))
                        });
                    }
                    if let Some(w) = wait {
                        if Instant::now() + w > budget_end {
                            last.attempts = attempt;
                            return Err(Error::Throttled(Box::new(last)));
                        }
                        log::debug!(
                            "{} {}: retry {attempt} in {} ms",
                            req.method,
                            path,
                            w.as_millis()
                        );
                        req.cancel.sleep(s, w)?;
                    }
                }
            }
        }
    }

    /// Waits in the bucket's FIFO queue until admitted, in slices so that cancel and close
    /// are noticed.
    fn wait_for_quota(
        &self,
        key: &str,
        budget_end: Instant,
        cancel: &Cancel,
        last: &ErrorDetails,
        attempt: u32,
    ) -> Result<(), Error> {
        let s = &*self.shared;
        let throttled = |last: &ErrorDetails| {
            let mut d = last.clone();
            d.attempts = attempt - 1;
            Error::Throttled(Box::new(d))
        };
        let limiter_error = |e: limiter::Error, last: &ErrorDetails| match e {
            limiter::Error::Timeout => throttled(last),
            limiter::Error::Cancelled => Error::Cancelled,
            limiter::Error::Closed => Error::Closed,
            other => Error::InvalidArgument(other.to_string()),
        };
        match s.limiter.try_acquire(key, 1) {
            Ok(()) => return Ok(()),
            Err(limiter::Error::WouldBlock { wait }) => {
                log::debug!("waiting about {} ms for quota on {key}", wait.as_millis());
            }
            Err(e) => return Err(limiter_error(e, last)),
        }
        let remaining = budget_end.saturating_duration_since(Instant::now());
        let ticket = s
            .limiter
            .enqueue(key, 1, Some(remaining))
            .map_err(|e| limiter_error(e, last))?;
        loop {
            match ticket.wait(Some(SLICE)) {
                Ok(Wait::Admitted) => {
                    if let Some(a) = ticket.admitted() {
                        log::debug!("admitted on {key} after {} ms", a.waited.as_millis());
                    }
                    return Ok(());
                }
                Ok(Wait::Pending) => cancel.check(s)?,
                Err(e) => return Err(limiter_error(e, last)),
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_answer(
        &self,
        req: &Request,
        key: &str,
        r: Response,
        attempt: u32,
        refreshed: &mut bool,
        generation: u64,
        last: &mut ErrorDetails,
    ) -> Result<Step, Error> {
        let s = &*self.shared;
        let status = r.status();
        match status {
            429 => {
                s.counters.throttled.fetch_add(1, Ordering::Relaxed);
                *last = r.error_details();
                let hint = retry_after(|n| r.header(n), SystemTime::now());
                let learned = last
                    .message
                    .as_deref()
                    .and_then(quota_from_message)
                    .is_some_and(|(calls, window)| self.learn(key, calls, window));
                last.retry_after = hint;
                let pause = match (hint, learned) {
                    (Some(h), _) => Some(h),
                    // The lowered limit makes the limiter itself wait the right time.
                    (None, true) => None,
                    (None, false) => Some(s.policy.backoff(attempt - 1)),
                };
                if let Some(p) = pause {
                    log::info!("429 on {key}: pausing the bucket for {} ms", p.as_millis());
                    s.limiter
                        .pause(key, p)
                        .map_err(|e| Error::InvalidArgument(e.to_string()))?;
                }
                // The pause lives in the bucket; the call waits for it in the queue.
                Ok(Step::Retry { wait: None })
            }
            401 if !*refreshed && s.auth.invalidate(generation) => {
                *refreshed = true;
                *last = r.error_details();
                log::info!("401: refreshing the token and retrying once");
                Ok(Step::Retry { wait: None })
            }
            503 => self.retry_or_return(req, r, attempt, last, true),
            500 | 502 | 504 | 408 => self.retry_or_return(req, r, attempt, last, req.idempotent()),
            _ => Ok(Step::Done(r)),
        }
    }

    fn retry_or_return(
        &self,
        req: &Request,
        r: Response,
        attempt: u32,
        last: &mut ErrorDetails,
        may_retry: bool,
    ) -> Result<Step, Error> {
        if !may_retry || attempt >= self.shared.policy.max_attempts {
            return Ok(Step::Done(r));
        }
        *last = r.error_details();
        let hint = retry_after(|n| r.header(n), SystemTime::now());
        let wait = hint.unwrap_or_else(|| self.shared.policy.backoff(attempt - 1));
        log::debug!(
            "{} {} answered {}; retrying",
            req.method,
            req.target,
            r.status()
        );
        Ok(Step::Retry { wait: Some(wait) })
    }

    fn on_failure(
        &self,
        req: &Request,
        f: http::Failure,
        attempt: u32,
        last: &mut ErrorDetails,
    ) -> Result<Step, Error> {
        let s = &*self.shared;
        s.counters
            .transport_failures
            .fetch_add(1, Ordering::Relaxed);
        if let Some(limit) = f.body_too_large {
            return Err(Error::BodyTooLarge(limit));
        }
        let mut d = ErrorDetails {
            attempts: attempt,
            ..Default::default()
        };
        if req.idempotent() || f.not_sent {
            if attempt < s.policy.max_attempts {
                *last = d;
                log::debug!(
                    "{} {} failed ({}); retrying",
                    req.method,
                    req.target,
                    f.message
                );
                return Ok(Step::Retry {
                    wait: Some(s.policy.backoff(attempt - 1)),
                });
            }
        } else {
            log::warn!(
                "{} {} failed after sending ({}); not repeating it",
                req.method,
                req.target,
                f.message
            );
        }
        d.attempts = attempt;
        let message = if f.not_sent || req.idempotent() {
            f.message
        } else {
            format!(
                "{}; the request may have been processed, so it was not repeated",
                f.message
            )
        };
        Err(if f.timeout {
            Error::Timeout(message, Box::new(d))
        } else {
            Error::Transport(message, Box::new(d))
        })
    }

    /// Adopts a limit the server stated when it is lower than the bucket's.
    fn learn(&self, key: &str, calls: u32, window: Duration) -> bool {
        let l = &self.shared.limiter;
        let mut rates = l.rates(key);
        let mut changed = false;
        match rates.iter_mut().find(|r| r.window == window) {
            Some(r) if r.calls > calls => {
                r.calls = calls;
                changed = true;
            }
            Some(_) => {}
            None => {
                rates.push(Rate::new(calls, window));
                changed = true;
            }
        }
        if changed && l.set_rates(key, &rates).is_ok() {
            self.shared.counters.learned.fetch_add(1, Ordering::Relaxed);
            log::warn!(
                "the server allows {calls} calls per {} ms on {key}: adopting that limit",
                window.as_millis()
            );
            return true;
        }
        false
    }

    /// Iterates over the pages of a list, following `@odata.nextLink` exactly as given.
    pub fn pages(&self, first: &Request) -> Pages {
        Pages::new(self.clone(), first.clone())
    }

    /// Iterates over the items of `value` across all pages.
    pub fn items(&self, first: &Request) -> Items {
        Items::new(self.pages(first))
    }

    /// The client's counters and the statistics of the buckets it used.
    pub fn stats(&self) -> ClientStats {
        let s = &*self.shared;
        let c = &s.counters;
        let buckets = s
            .keys
            .lock()
            .iter()
            .map(|k| {
                let b = s.limiter.stats(k);
                (
                    k.clone(),
                    BucketSummary {
                        admitted_calls: b.admitted_calls,
                        waited_calls: b.waited_calls,
                        total_wait_ms: b.total_wait_ns / 1_000_000,
                        longest_wait_ms: b.longest_wait_ns / 1_000_000,
                        pauses: b.pauses,
                        windows: b
                            .windows
                            .iter()
                            .map(|w| WindowSummary {
                                used: w.used,
                                calls: w.calls,
                                window_ms: w.window_ns / 1_000_000,
                            })
                            .collect(),
                    },
                )
            })
            .collect();
        ClientStats {
            requests: c.requests.load(Ordering::Relaxed),
            retries: c.retries.load(Ordering::Relaxed),
            throttled: c.throttled.load(Ordering::Relaxed),
            token_requests: c.token_requests.load(Ordering::Relaxed),
            transport_failures: c.transport_failures.load(Ordering::Relaxed),
            learned_limits: c.learned.load(Ordering::Relaxed),
            buckets,
        }
    }
}
