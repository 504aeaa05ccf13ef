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
mod builder;
mod call;
mod certificate;
mod cloud;
mod credentials;
mod deadline;
mod error;
mod gate;
mod http;
mod hunting;
mod paging;
mod request;
mod response;
mod retry;
mod routes;
mod secret;
mod stats;
mod token_endpoint;
mod transit;
mod urls;

pub use bounds::{MAX_LEARNED_WINDOW, MAX_SERVER_WAIT, MAX_STATED_RUN_TIME, MAX_TOKEN_LIFETIME};
pub use builder::ClientBuilder;
pub use certificate::{CertificateCredential, SignatureAlgorithm};
pub use cloud::Cloud;
pub use credentials::{Credentials, TokenProvider};
pub use error::{Error, ErrorDetails, HUNTING_BUDGET_SPENT};
pub use hunting::{HuntingBudget, HuntingBudgetPolicy, is_hunting_query};
pub use paging::{DEFAULT_MAX_PAGES, Items, Pages};
pub use request::{Cancel, Request};
pub use response::Response;
pub use retry::{RetryPolicy, quota_from_message, retry_after};
pub use routes::{
    DEFAULT_CLASS, LIVE_RESPONSE_SESSIONS, Route, RouteTable, default_rates, normalize_path,
};
pub use secret::Secret;
pub use stats::{BucketSummary, ClientStats, WindowSummary};

pub(crate) use http::check_header;

use crate::limiter::{Limiter, Rate};
use auth::Auth;
use parking_lot::Mutex;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The commercial Defender for Endpoint API.
pub const DEFAULT_BASE_URL: &str = "https://api.securitycenter.microsoft.com";
/// The commercial login authority.
pub const DEFAULT_AUTHORITY: &str = "https://login.microsoftonline.com";
/// The default limit of one answer's body: 256 MiB (hunting results reach 124 MB).
pub const DEFAULT_MAX_BODY: u64 = 256 << 20;
/// The default limit of one connection's setup.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The default limit of one attempt (an exchange with the server).
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a waiting call sleeps at most before it checks for cancellation.
const SLICE: Duration = Duration::from_millis(50);

/// A client's core, which all its clones share: its settings (endpoints, bucket names,
/// routes, retry policy), its connections, token cache and limiter, and what its calls
/// record as they go (counters, buckets used, in-flight caps, hunting run time, transit
/// times). `build` makes it; nothing changes it but through its locks and atomics.
struct ClientCore {
    agent: ureq::Agent,
    base_url: String,
    /// `scheme://host[:port]` of the base URL: absolute URLs must stay on it.
    origin: String,
    /// `host[:port]` of the base URL, the first part of every bucket key.
    host: String,
    tenant: String,
    app: String,
    auth: Auth,
    routes: RouteTable,
    limiter: Limiter,
    policy: RetryPolicy,
    max_body: u64,
    closed: AtomicBool,
    counters: stats::Counters,
    /// The bucket keys used, for the statistics.
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

impl ClientCore {
    /// The quota bucket of requests under `route` (`None`: a request no route names): its
    /// key (API host, tenant, app and endpoint class) and its rates.
    fn bucket<'a>(&'a self, route: Option<&'a Route>) -> (String, &'a [Rate]) {
        let (class, rates) = self.routes.limits(route);
        let key = format!("{}|{}|{}|{}", self.host, self.tenant, self.app, class);
        (key, rates)
    }
}

/// A thread-safe client of the Defender APIs. Clones share everything (connections,
/// tokens, quotas).
#[derive(Clone)]
pub struct Client {
    core: Arc<ClientCore>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base_url", &self.core.base_url)
            .field("tenant", &self.core.tenant)
            .field("app", &self.core.app)
            .field("auth", &self.core.auth)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Starts configuring a client.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// The limiter that holds this client's quotas.
    pub fn limiter(&self) -> &Limiter {
        &self.core.limiter
    }

    /// The base URL.
    pub fn base_url(&self) -> &str {
        &self.core.base_url
    }

    /// The URL tokens are requested from.
    pub fn token_url(&self) -> &str {
        self.core.auth.token_url()
    }

    /// What tokens are requested for: the v2 scope, or the v1 resource.
    pub fn token_audience(&self) -> &str {
        self.core.auth.audience()
    }

    /// The scope that tokens are requested for, in the v2 form (`…/.default`) even when
    /// the client asks for a v1 resource: what a credential's `get_token` takes.
    pub fn token_scope(&self) -> String {
        self.core.auth.scope()
    }

    /// Closes the client: calls waiting for quota, tokens or backoff end with
    /// [`Error::Closed`], and later calls fail the same way. A shared limiter stays open.
    pub fn close(&self) {
        self.core.closed.store(true, Ordering::Release);
    }

    /// The bucket key of a request: API host, tenant, app and endpoint class.
    pub fn bucket_key(&self, method: &str, path: &str) -> (String, Vec<Rate>) {
        let (key, rates) = self.core.bucket(self.core.routes.find(method, path));
        (key, rates.to_vec())
    }

    /// Iterates over the pages of a list, following `@odata.nextLink` exactly as given.
    pub fn pages(&self, first: &Request) -> Pages {
        Pages::new(self.clone(), first.clone())
    }

    /// Iterates over the items of `value` across all pages.
    pub fn items(&self, first: &Request) -> Items {
        Items::new(self.pages(first))
    }
}
