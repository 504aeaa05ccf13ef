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
mod bounds;
mod certificate;
mod cloud;
mod deadline;
mod error;
mod gate;
mod http;
mod hunting;
mod paging;
mod response;
mod retry;
mod routes;
mod secret;
mod transit;
mod urls;

pub use auth::{Credentials, TokenProvider};
pub use bounds::{MAX_LEARNED_WINDOW, MAX_SERVER_WAIT, MAX_STATED_RUN_TIME, MAX_TOKEN_LIFETIME};
pub use certificate::{CertificateCredential, SignatureAlgorithm};
pub use cloud::Cloud;
pub use error::{Error, ErrorDetails, HUNTING_BUDGET_SPENT};
pub use hunting::{HuntingBudget, HuntingBudgetPolicy, is_hunting_query};
pub use paging::{DEFAULT_MAX_PAGES, Items, Pages};
pub use response::Response;
pub use retry::{RetryPolicy, quota_from_message, retry_after};
pub use routes::{
    DEFAULT_CLASS, LIVE_RESPONSE_SESSIONS, Route, RouteTable, default_rates, normalize_path,
};
pub use secret::Secret;

pub(crate) use http::check_header;

use crate::limiter::{self, Limiter, Nanos, Rate, Wait};
use auth::Auth;
use parking_lot::{Condvar, Mutex};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};
use urls::RedactedUrl;

/// The commercial Defender for Endpoint API.
pub const DEFAULT_BASE_URL: &str = "https://api.securitycenter.microsoft.com";
/// The commercial login authority.
pub const DEFAULT_AUTHORITY: &str = "https://login.microsoftonline.com";
/// The default limit of one answer's body: 256 MiB (hunting results reach 124 MB).
pub const DEFAULT_MAX_BODY: u64 = 256 << 20;
/// How long a waiting call sleeps at most before it checks for cancellation.
const SLICE: Duration = Duration::from_millis(50);

/// Added to an attempt's timeouts for the lease of its quota hold.
const HOLD_SLACK: Duration = Duration::from_secs(30);

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
    deadline: Option<deadline::Deadline>,
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
            .field("deadline", &self.deadline)
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
            deadline: None,
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

    /// Bounds everything the call does (the quota wait, the token fetch, every attempt,
    /// retries and backoff) to `d` from the start of each send; past it the call fails
    /// with [`Error::Timeout`]. Over [`Client::pages`] and [`Client::items`], `d` bounds
    /// all the pages together, from the first page's send.
    pub fn deadline(mut self, d: Duration) -> Self {
        self.set_deadline(Some(d));
        self
    }

    pub(crate) fn set_deadline(&mut self, d: Option<Duration>) {
        self.deadline = d.map(deadline::Deadline::After);
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
    /// The deadline of the send that uses this copy (never shared with the caller's).
    deadline: Option<deadline::Bound>,
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
        match self.deadline {
            Some(b) if b.passed() => Err(b.error(None)),
            _ => Ok(()),
        }
    }

    /// Sleeps `d`, waking early with an error on cancel or close; fails at once when the
    /// deadline would pass before the sleep ends.
    fn sleep(&self, client: &ClientShared, d: Duration) -> Result<(), Error> {
        let until = bounds::instant_after(Instant::now(), d);
        if let Some(b) = self.deadline.filter(|b| b.at < until) {
            return Err(b.error(Some("before the wait ends")));
        }
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

/// A limiter failure as the client reports it: the store's own, or a wrong argument.
fn limiter_failure(e: limiter::Error) -> Error {
    match e {
        limiter::Error::Store(e) => Error::Store(e),
        e => Error::InvalidArgument(e.to_string()),
    }
}

/// Configures a [`Client`].
#[derive(Clone, Debug)]
pub struct ClientBuilder {
    base_url: Option<RedactedUrl>,
    authority: Option<RedactedUrl>,
    allow_insecure_http: bool,
    cloud: Option<Cloud>,
    tenant_id: Option<String>,
    client_id: Option<String>,
    secret: Option<Secret>,
    certificate: Option<CertificateCredential>,
    access_token: Option<Secret>,
    credentials: Option<Credentials>,
    scope: Option<String>,
    resource: Option<String>,
    connect_timeout: Duration,
    timeout: Duration,
    proxy: Option<RedactedUrl>,
    user_agent: String,
    max_body: u64,
    policy: RetryPolicy,
    user_routes: Vec<Route>,
    in_flight_caps: Vec<(Option<String>, String, Option<u32>)>,
    default_rates: Option<Vec<Rate>>,
    margin: Duration,
    limiter: Option<Limiter>,
    store: Option<RedactedUrl>,
    hunting_budget: HuntingBudget,
    max_pages: u64,
}

impl Default for ClientBuilder {
    fn default() -> Self {
        Self {
            base_url: None,
            authority: None,
            allow_insecure_http: false,
            cloud: None,
            tenant_id: None,
            client_id: None,
            secret: None,
            certificate: None,
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
            user_routes: Vec::new(),
            in_flight_caps: Vec::new(),
            default_rates: None,
            margin: Duration::ZERO,
            limiter: None,
            store: None,
            hunting_budget: HuntingBudget::default(),
            max_pages: DEFAULT_MAX_PAGES,
        }
    }
}

impl ClientBuilder {
    /// The API's base URL (default: the cloud's, else the commercial MDE host). It also
    /// picks the built-in route table ([`RouteTable::for_base_url`]).
    pub fn base_url(mut self, url: &str) -> Self {
        self.base_url = Some(RedactedUrl(url.trim_end_matches('/').to_string()));
        self
    }

    /// The login authority (default: the cloud's, else
    /// `https://login.microsoftonline.com`).
    pub fn authority(mut self, url: &str) -> Self {
        self.authority = Some(RedactedUrl(url.trim_end_matches('/').to_string()));
        self
    }

    /// Accepts `http://` for a base URL or authority that is not a loopback host (default
    /// false). Plain HTTP to another host sends the client secret and every access token
    /// unencrypted over the network, so `build` refuses it unless this is set, for
    /// instance behind a TLS-terminating proxy on a network you trust. `http://` to
    /// `localhost`, 127.0.0.0/8 or `::1` (the simulator) is always accepted.
    pub fn allow_insecure_http(mut self, allow: bool) -> Self {
        self.allow_insecure_http = allow;
        self
    }

    /// A cloud preset: login authority, API base URL and token scope together. Explicit
    /// [`base_url`](Self::base_url), [`authority`](Self::authority),
    /// [`scope`](Self::scope) and [`resource`](Self::resource) override its parts,
    /// whatever the order of the calls.
    pub fn cloud(mut self, cloud: Cloud) -> Self {
        self.cloud = Some(cloud);
        self
    }

    /// The API base URL the client will use.
    pub fn effective_base_url(&self) -> &str {
        self.base_url
            .as_ref()
            .map(RedactedUrl::as_str)
            .or(self.cloud.map(Cloud::base_url))
            .unwrap_or(DEFAULT_BASE_URL)
    }

    /// The login authority the client will use.
    pub fn effective_authority(&self) -> &str {
        self.authority
            .as_ref()
            .map(RedactedUrl::as_str)
            .or(self.cloud.map(Cloud::authority))
            .unwrap_or(DEFAULT_AUTHORITY)
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

    /// Certificate credentials (with [`tenant_id`](Self::tenant_id) and
    /// [`client_id`](Self::client_id)) instead of a client secret.
    pub fn certificate(mut self, c: CertificateCredential) -> Self {
        self.certificate = Some(c);
        self
    }

    /// Changes the certificate set with [`certificate`](Self::certificate), if any (for
    /// instance its [`SignatureAlgorithm`]).
    pub fn map_certificate(
        mut self,
        f: impl FnOnce(CertificateCredential) -> CertificateCredential,
    ) -> Self {
        self.certificate = self.certificate.take().map(f);
        self
    }

    /// A fixed access token instead of client credentials.
    pub fn access_token(mut self, v: impl Into<Secret>) -> Self {
        self.access_token = Some(v.into());
        self
    }

    /// Tokens from a function of the caller's: it returns a token and its lifetime, and is
    /// called when the cached token nears its end or was refused (see
    /// [`Credentials::Provider`]). Set [`tenant_id`](Self::tenant_id) and
    /// [`client_id`](Self::client_id) as well to name the quota buckets after the tenant
    /// and app, as a client-secret client would (so that clients sharing a limiter share
    /// quotas); without them the buckets are named `-` and `provider`.
    pub fn token_provider(
        self,
        provider: impl Fn() -> Result<(Secret, Duration), String> + Send + Sync + 'static,
    ) -> Self {
        self.credentials(Credentials::provider(provider))
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
        self.proxy = Some(RedactedUrl(url.to_string()));
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
        self.default_rates = Some(rates);
        self
    }

    /// Adds a route ahead of the built-in ones (or replaces the one with the same
    /// method and pattern).
    pub fn route(mut self, route: Route) -> Self {
        self.user_routes.retain(|r| {
            !(r.method == route.method && r.pattern.eq_ignore_ascii_case(&route.pattern))
        });
        self.user_routes.push(route);
        self
    }

    /// Takes the proxy from the environment again (the default).
    pub fn proxy_from_env(mut self) -> Self {
        self.proxy = None;
        self
    }

    /// Caps the calls under way at once of requests of `method` (any when `None`) to
    /// `pattern`, per tenant and app: a call beyond the cap waits its turn (FIFO, within
    /// the quota-wait budget, cancellable) until one of them is answered. `max` 0 lifts a
    /// cap, such as the built-in 25 on live response. See
    /// [`RouteTable::set_max_in_flight`].
    pub fn max_in_flight(mut self, method: Option<&str>, pattern: &str, max: u32) -> Self {
        let method = method.map(str::to_ascii_uppercase);
        self.in_flight_caps
            .retain(|(m, p, _)| !(*m == method && p.eq_ignore_ascii_case(pattern)));
        self.in_flight_caps
            .push((method, pattern.to_string(), (max > 0).then_some(max)));
        self
    }

    /// The route table the client will use: the built-in table of the base URL's host
    /// ([`RouteTable::for_base_url`]) with the routes added by [`Self::route`] ahead of it,
    /// and the caps of [`Self::max_in_flight`].
    pub fn routes(&self) -> RouteTable {
        let mut t = RouteTable::for_base_url(self.effective_base_url());
        if let Some(rates) = &self.default_rates {
            t.set_default_rates(rates.clone());
        }
        for r in &self.user_routes {
            t.add(r.clone());
        }
        for (method, pattern, max) in &self.in_flight_caps {
            t.set_max_in_flight(method.as_deref(), pattern, *max);
        }
        t
    }

    /// The routes added by [`Self::route`], oldest first.
    pub fn user_routes(&self) -> &[Route] {
        &self.user_routes
    }

    /// Widens every window of the client's own limiter (not of a shared one).
    pub fn margin(mut self, d: Duration) -> Self {
        self.margin = d;
        self
    }

    /// The tenant's advanced hunting run-time budget (default 10 minutes per hour and 3
    /// hours per day, waiting when spent). The client records each hunting query's
    /// execution time (`Stats.ExecutionTime` when the answer states it, else the time the
    /// exchange took) and holds a new query back while a window is spent. The ledger
    /// belongs to this client and its clones; other clients of the tenant keep their own.
    pub fn hunting_budget(mut self, budget: HuntingBudget) -> Self {
        self.hunting_budget = budget;
        self
    }

    /// The run time hunting queries may use per rolling hour and per rolling day (zero
    /// turns that window off), keeping the policy.
    pub fn hunting_run_time(mut self, per_hour: Duration, per_day: Duration) -> Self {
        self.hunting_budget.per_hour = per_hour;
        self.hunting_budget.per_day = per_day;
        self
    }

    /// What a hunting query does when the run-time budget is spent.
    pub fn hunting_budget_policy(mut self, policy: HuntingBudgetPolicy) -> Self {
        self.hunting_budget.policy = policy;
        self
    }

    /// Shares the quotas with every process that opens the same store:
    /// `file:///path/to/state.q` (one host) or `redis://host:6379/0?prefix=qg` (many
    /// hosts); see [`LimiterBuilder::store`](crate::limiter::LimiterBuilder::store). The
    /// client builds its limiter over that store. Not together with [`Self::limiter`].
    pub fn store(mut self, url: &str) -> Self {
        self.store = Some(RedactedUrl(url.to_string()));
        self
    }

    /// Keeps the client's quotas in memory again (the default).
    pub fn no_store(mut self) -> Self {
        self.store = None;
        self
    }

    /// The most pages one paging run ([`Client::pages`], [`Client::items`]) follows
    /// (default [`DEFAULT_MAX_PAGES`]); past it the run ends with [`Error::Paging`].
    pub fn max_pages(mut self, n: u64) -> Self {
        self.max_pages = n;
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
        let base_url = self.effective_base_url().to_string();
        let authority = self.effective_authority();
        urls::check_endpoint(&base_url, "the base URL", self.allow_insecure_http)?;
        urls::check_endpoint(authority, "the authority", self.allow_insecure_http)?;
        let base: ureq::http::Uri = base_url
            .parse()
            .map_err(|_| bad("the base URL is not a valid URL"))?;
        let origin = match (base.scheme_str(), base.authority()) {
            (Some(s @ ("http" | "https")), Some(a)) => format!("{s}://{a}"),
            _ => return Err(bad("the base URL needs http:// or https:// and a host")),
        };
        if !authority.starts_with("http://") && !authority.starts_with("https://") {
            return Err(bad("the authority needs http:// or https://"));
        }
        let credentials = match (&self.credentials, &self.access_token) {
            (Some(c), _) => c.clone(),
            (None, Some(t)) => Credentials::AccessToken(t.clone()),
            (None, None) => match (
                &self.tenant_id,
                &self.client_id,
                &self.secret,
                &self.certificate,
            ) {
                (Some(_), Some(_), Some(_), Some(_)) => {
                    return Err(bad("give a client secret or a certificate, not both"));
                }
                (Some(t), Some(c), Some(s), None) => Credentials::ClientSecret {
                    tenant_id: t.clone(),
                    client_id: c.clone(),
                    secret: s.clone(),
                },
                (Some(t), Some(c), None, Some(cert)) => Credentials::Certificate {
                    tenant_id: t.clone(),
                    client_id: c.clone(),
                    certificate: cert.clone(),
                },
                _ => {
                    return Err(bad(
                        "credentials are missing: give tenant id, client id and a client secret or certificate, an access token, or a token provider",
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
            Credentials::Certificate {
                tenant_id,
                client_id,
                ..
            } => {
                if tenant_id.is_empty() || client_id.is_empty() {
                    return Err(bad("tenant id and client id must not be empty"));
                }
                if tenant_id.contains(['/', '?', '#']) {
                    return Err(bad("the tenant id must not contain '/', '?' or '#'"));
                }
            }
            Credentials::AccessToken(t) if t.is_empty() => {
                return Err(bad("the access token is empty"));
            }
            Credentials::AccessToken(_) | Credentials::Provider(_) => {}
        }
        if self.policy.max_attempts == 0 {
            return Err(bad("max_attempts must be at least 1"));
        }
        if self.timeout.is_zero() || self.connect_timeout.is_zero() {
            return Err(bad("timeouts must be longer than zero"));
        }
        if self.max_pages == 0 {
            return Err(bad("max_pages must be at least 1"));
        }
        let routes = self.routes();
        for rates in std::iter::once(routes.default_rates())
            .chain(routes.routes().iter().map(|r| r.rates.as_slice()))
        {
            if rates.is_empty() {
                return Err(bad("every route needs at least one rate"));
            }
            for r in rates {
                r.validate().map_err(Error::InvalidArgument)?;
            }
        }
        let proxy = match &self.proxy {
            Some(p) => {
                Some(ureq::Proxy::new(p.as_str()).map_err(|_| bad("the proxy URL is not valid"))?)
            }
            None => None,
        };
        let limiter = match (&self.limiter, &self.store) {
            (Some(_), Some(_)) => {
                return Err(bad(
                    "give the client either a limiter or a store, not both (a shared limiter has its store already)",
                ));
            }
            (Some(l), None) => l.clone(),
            (None, store) => {
                let mut b = Limiter::builder()
                    .rates(routes.default_rates().iter().copied())
                    .margin(self.margin);
                if let Some(url) = store {
                    b = b.store(url.as_str());
                }
                b.build().map_err(limiter_failure)?
            }
        };
        let (tenant, app) = match &credentials {
            Credentials::ClientSecret {
                tenant_id,
                client_id,
                ..
            }
            | Credentials::Certificate {
                tenant_id,
                client_id,
                ..
            } => (tenant_id.clone(), client_id.clone()),
            Credentials::AccessToken(_) => ("-".to_string(), "token".to_string()),
            Credentials::Provider(_) => (
                self.tenant_id.clone().unwrap_or_else(|| "-".into()),
                self.client_id.clone().unwrap_or_else(|| "provider".into()),
            ),
        };
        // An explicit scope or resource wins over the cloud's scope.
        let scope = match (&self.scope, &self.resource, self.cloud) {
            (Some(s), _, _) => Some(s.clone()),
            (None, None, Some(c)) => Some(c.scope()),
            _ => None,
        };
        let auth = Auth::new(
            credentials,
            authority,
            scope,
            self.resource.clone(),
            &origin,
        );
        Ok(Client {
            shared: Arc::new(ClientShared {
                agent: http::agent(self.connect_timeout, self.timeout, proxy, &self.user_agent),
                base_url,
                host: base.authority().map(|a| a.to_string()).unwrap_or_default(),
                origin,
                tenant,
                app,
                auth,
                routes,
                limiter,
                policy: self.policy,
                max_body: self.max_body,
                closed: AtomicBool::new(false),
                counters: Counters::default(),
                keys: Mutex::new(BTreeSet::new()),
                gates: Mutex::new(HashMap::new()),
                hunting: Mutex::new(hunting::Ledger::new(&self.hunting_budget)),
                hunting_policy: self.hunting_budget.policy,
                origin_instant: Instant::now(),
                hold_lease: (self.timeout + self.connect_timeout + HOLD_SLACK)
                    .min(limiter::MAX_HOLD_LEASE),
                transit: Mutex::new(transit::Transit::default()),
                max_pages: self.max_pages,
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
    /// In-flight caps by bucket key and route.
    gates: Mutex<HashMap<String, Arc<gate::Gate>>>,
    /// The tenant's hunting run time, at instants since `origin_instant`.
    hunting: Mutex<hunting::Ledger>,
    hunting_policy: HuntingBudgetPolicy,
    origin_instant: Instant,
    /// How long an attempt may hold its quota units: its timeouts and some slack.
    hold_lease: Duration,
    /// Round trips of recent quick answers: the bound on a request's transit.
    transit: Mutex<transit::Transit>,
    max_pages: u64,
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
    /// For each capped route used (`bucket key|METHOD pattern`): the most calls that were
    /// under way at once.
    pub in_flight_peaks: std::collections::BTreeMap<String, u32>,
    /// Advanced hunting execution time recorded in the last hour, in milliseconds.
    pub hunting_run_ms_hour: u64,
    /// Advanced hunting execution time recorded in the last day, in milliseconds.
    pub hunting_run_ms_day: u64,
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

    /// The URL tokens are requested from.
    pub fn token_url(&self) -> &str {
        self.shared.auth.token_url()
    }

    /// What tokens are requested for: the v2 scope, or the v1 resource.
    pub fn token_audience(&self) -> &str {
        self.shared.auth.audience()
    }

    /// The scope that tokens are requested for, in the v2 form (`…/.default`) even when
    /// the client asks for a v1 resource: what a credential's `get_token` takes.
    pub fn token_scope(&self) -> String {
        self.shared.auth.scope()
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
        if req.target.contains('#') {
            // Everything after it, the query included, would silently stay behind.
            return Err(Error::InvalidArgument(
                "a path or URL must not contain '#' (a fragment is never sent; write %23 for the character)"
                    .into(),
            ));
        }
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
        http::check_head(&req.method, &req.headers)?;
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
        let budget_end = bounds::instant_after(started, s.policy.max_quota_wait);
        // This send's copy of the cancel handle also carries its deadline.
        let cancel = &Cancel {
            deadline: req.deadline.map(|d| d.fix(started)),
            ..req.cancel.clone()
        };
        // A capped route: hold one of its slots for the whole call, retries included.
        let _slot = match s.routes.find(&req.method, &path) {
            Some(
                route @ Route {
                    max_in_flight: Some(max),
                    ..
                },
            ) => Some(self.take_slot(&key, route, *max, budget_end, cancel)?),
            _ => None,
        };
        let hunting = is_hunting_query(&req.method, &path);
        if hunting {
            self.wait_for_run_time(budget_end, cancel)?;
        }
        let mut attempt = 0u32;
        let mut refreshed = false;
        let mut last = ErrorDetails::default();
        loop {
            cancel.check(s)?;
            attempt += 1;
            // Obtain the token first, so that a token request never stands between the
            // quota's admission and the call the server counts; after a long wait the
            // second look finds the cached token (or refreshes it if it came due).
            s.auth.token(s, cancel)?;
            // The attempt's units count from its admission until its answer (the hold).
            let hold = self.wait_for_quota(&key, budget_end, cancel, &last, attempt)?;
            let token = s.auth.token(s, cancel)?;
            // A token fetch can take a while: a call cancelled or closed meanwhile is not sent.
            cancel.check(s)?;
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
            let sent_at = Instant::now();
            let sent_at_clock = s.limiter.now();
            let result = http::exchange(
                &s.agent,
                &req.method,
                &url,
                &headers,
                req.body.as_deref(),
                s.max_body,
                deadline::attempt_limit(cancel.deadline),
            );
            drop(headers);
            log::trace!(
                "{} {}: attempt {attempt} {} after {} ms",
                req.method,
                path,
                result.as_ref().map_or_else(
                    |f| f.message.clone(),
                    |r| format!("answered {}", r.status())
                ),
                sent_at.elapsed().as_millis()
            );
            self.end_hold(hold, hunting, sent_at.elapsed(), sent_at_clock);
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
                Step::Done(r) => {
                    if hunting {
                        self.record_run_time(&r, sent_at.elapsed());
                    }
                    return Ok(r.with_attempts(attempt));
                }
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
                        let after_wait = bounds::instant_after(Instant::now(), w);
                        if let Some(b) = cancel.deadline.filter(|b| after_wait > b.at) {
                            return Err(b.error(Some("before the next attempt")));
                        }
                        if after_wait > budget_end {
                            last.attempts = attempt;
                            return Err(Error::Throttled(Box::new(last)));
                        }
                        log::debug!(
                            "{} {}: retry {attempt} in {} ms",
                            req.method,
                            path,
                            w.as_millis()
                        );
                        cancel.sleep(s, w)?;
                    }
                }
            }
        }
    }

    /// Holds a hunting query back while the tenant's run-time budget is spent: waits
    /// (policy `Wait`, within the quota-wait budget) or fails (`Fail`).
    fn wait_for_run_time(&self, budget_end: Instant, cancel: &Cancel) -> Result<(), Error> {
        let s = &*self.shared;
        loop {
            let now = s.origin_instant.elapsed();
            let (wait, binding) = s.hunting.lock().wait(now);
            let Some((budget, window)) = binding else {
                return Ok(());
            };
            let spent = || {
                let mut d = ErrorDetails {
                    code: Some(HUNTING_BUDGET_SPENT.into()),
                    message: Some(format!(
                        "the tenant's advanced hunting run time ({} s per {} s) is spent; run time frees up in {} s",
                        budget.as_secs(),
                        window.as_secs(),
                        wait.as_secs_f64().ceil()
                    )),
                    ..Default::default()
                };
                d.retry_after = Some(wait);
                Error::Throttled(Box::new(d))
            };
            let (end, by_deadline) = deadline::earlier(budget_end, cancel.deadline);
            if s.hunting_policy == HuntingBudgetPolicy::Fail
                || bounds::instant_after(Instant::now(), wait) > end
            {
                return Err(match cancel.deadline {
                    Some(b) if by_deadline && s.hunting_policy != HuntingBudgetPolicy::Fail => {
                        b.error(Some("before the hunting run time frees up"))
                    }
                    _ => spent(),
                });
            }
            log::info!(
                "advanced hunting run time is spent: waiting {} ms",
                wait.as_millis()
            );
            cancel.sleep(s, wait)?;
        }
    }

    /// Records a hunting answer's execution time: the one it states, else `elapsed`.
    /// Queries refused before they ran (throttled, unauthorized, bad requests) use none.
    fn record_run_time(&self, r: &Response, elapsed: Duration) {
        let ran = r.is_success() || {
            let d = r.error_details();
            d.is_result_too_large() || d.is_preempted()
        };
        if !ran {
            return;
        }
        let run = hunting::stated_execution_time(r.body()).unwrap_or(elapsed);
        let s = &*self.shared;
        s.hunting.lock().record(s.origin_instant.elapsed(), run);
    }

    /// Waits in FIFO order for one of the `max` slots of `route` in bucket `key`.
    fn take_slot(
        &self,
        key: &str,
        route: &Route,
        max: u32,
        budget_end: Instant,
        cancel: &Cancel,
    ) -> Result<gate::Permit, Error> {
        let s = &*self.shared;
        let gate = s
            .gates
            .lock()
            .entry(format!(
                "{key}|{} {}",
                route.method.as_deref().unwrap_or("*"),
                route.pattern
            ))
            .or_insert_with(|| gate::Gate::new(max))
            .clone();
        let (end, by_deadline) = deadline::earlier(budget_end, cancel.deadline);
        gate.acquire(end, SLICE, || cancel.check(s))
            .map_err(|e| match e {
                gate::GateError::Stopped(e) => e,
                gate::GateError::Timeout if by_deadline => cancel
                    .deadline
                    .map_or(Error::Cancelled, |b| b.error(Some("before a slot frees up"))),
                gate::GateError::Timeout => Error::Throttled(Box::new(ErrorDetails {
                    message: Some(format!(
                        "all {max} calls allowed under way at once on {key} stayed busy for the quota-wait budget"
                    )),
                    ..Default::default()
                })),
            })
    }

    /// Ends an attempt's hold when its exchange ended, `took` after its send. The server
    /// counted the call by then; for a call it works on for long (a hunting query), it
    /// certainly counted it within the learned transit bound after the send, which frees
    /// the slot sooner. Quick answers teach that bound.
    fn end_hold(&self, hold: limiter::Hold, long_work: bool, took: Duration, sent_at: Nanos) {
        let mut transit = self.shared.transit.lock();
        if !long_work {
            transit.record(took);
            drop(transit);
            hold.finish();
            return;
        }
        match transit.bound() {
            Some(bound) if bound < took => {
                drop(transit);
                hold.finish_at(
                    sent_at.saturating_add(u64::try_from(bound.as_nanos()).unwrap_or(u64::MAX)),
                );
            }
            _ => {
                drop(transit);
                hold.finish();
            }
        }
    }

    /// Waits in the bucket's FIFO queue until admitted, in slices so that cancel and close
    /// are noticed. The admission is a hold: it counts until the attempt ends.
    fn wait_for_quota(
        &self,
        key: &str,
        budget_end: Instant,
        cancel: &Cancel,
        last: &ErrorDetails,
        attempt: u32,
    ) -> Result<limiter::Hold, Error> {
        let s = &*self.shared;
        let throttled = |last: &ErrorDetails| {
            let mut d = last.clone();
            d.attempts = attempt - 1;
            Error::Throttled(Box::new(d))
        };
        let (end, by_deadline) = deadline::earlier(budget_end, cancel.deadline);
        let limiter_error = |e: limiter::Error, last: &ErrorDetails| match e {
            limiter::Error::Timeout { frees_in } => match cancel.deadline {
                Some(b) if by_deadline => b.error(Some(&match frees_in {
                    Some(w) => format!(
                        "before the quota admits the call: it frees a slot in {:.1} s",
                        w.as_secs_f64()
                    ),
                    None => "before the quota admits the call".to_owned(),
                })),
                _ => throttled(last),
            },
            limiter::Error::Cancelled => Error::Cancelled,
            limiter::Error::Closed => Error::LimiterClosed,
            other => limiter_failure(other),
        };
        match s.limiter.try_hold_with_lease(key, 1, s.hold_lease) {
            Ok(hold) => return Ok(hold),
            Err(limiter::Error::WouldBlock { wait }) => {
                log::debug!("waiting about {} ms for quota on {key}", wait.as_millis());
            }
            Err(e) => return Err(limiter_error(e, last)),
        }
        let remaining = end.saturating_duration_since(Instant::now());
        let ticket = s
            .limiter
            .enqueue_hold(key, 1, Some(remaining), Some(s.hold_lease))
            .map_err(|e| limiter_error(e, last))?;
        loop {
            match ticket.wait(Some(SLICE)) {
                Ok(Wait::Admitted) => {
                    let hold = ticket.hold().map_err(|e| limiter_error(e, last))?;
                    log::debug!(
                        "admitted on {key} after {} ms",
                        hold.admitted().waited.as_millis()
                    );
                    return Ok(hold);
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
                    .and_then(retry::learnable_quota)
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
                    s.limiter.pause(key, p).map_err(limiter_failure)?;
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
        if f.invalid {
            return Err(Error::InvalidArgument(f.message));
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
        let run_ms = |window| {
            let spent = s.hunting.lock().spent(s.origin_instant.elapsed(), window);
            u64::try_from(spent.as_millis()).unwrap_or(u64::MAX)
        };
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
            in_flight_peaks: s
                .gates
                .lock()
                .iter()
                .map(|(k, g)| (k.clone(), g.peak()))
                .collect(),
            hunting_run_ms_hour: run_ms(Duration::from_secs(3600)),
            hunting_run_ms_day: run_ms(Duration::from_secs(86_400)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client whose hunting ledger allows 100 ms of run time per 300 ms, with 150 ms
    /// spent just now.
    fn spent_client(policy: HuntingBudgetPolicy) -> Client {
        let client = Client::builder()
            .access_token("t")
            .hunting_budget_policy(policy)
            .build()
            .unwrap();
        let s = &client.shared;
        let mut ledger = hunting::Ledger::with_windows(&[(
            Duration::from_millis(100),
            Duration::from_millis(300),
        )]);
        ledger.record(s.origin_instant.elapsed(), Duration::from_millis(150));
        *s.hunting.lock() = ledger;
        client
    }

    #[test]
    fn a_spent_run_time_budget_is_waited_out_or_cancelled() {
        let client = spent_client(HuntingBudgetPolicy::Wait);
        let started = Instant::now();
        let far = started + Duration::from_secs(10);
        client.wait_for_run_time(far, &Cancel::default()).unwrap();
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(250) && waited < Duration::from_secs(2),
            "{waited:?}"
        );

        let client = spent_client(HuntingBudgetPolicy::Wait);
        let cancel = Cancel::default();
        let c = cancel.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            c.cancel();
        });
        let far = Instant::now() + Duration::from_secs(10);
        assert_eq!(
            client.wait_for_run_time(far, &cancel),
            Err(Error::Cancelled)
        );
        t.join().unwrap();

        // A budget that ends before the run time frees up fails at once.
        let client = spent_client(HuntingBudgetPolicy::Wait);
        let soon = Instant::now() + Duration::from_millis(50);
        match client.wait_for_run_time(soon, &Cancel::default()) {
            Err(Error::Throttled(d)) => assert!(d.is_hunting_budget_spent()),
            other => panic!("{other:?}"),
        }
    }
}
