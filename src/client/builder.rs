//! [`ClientBuilder`]: the settings of a client, checked and turned into a [`Client`].

use super::auth::Auth;
use super::error::limiter_failure;
use super::urls::{self, RedactedUrl};
use super::{
    CertificateCredential, Client, ClientCore, Cloud, Credentials, DEFAULT_AUTHORITY,
    DEFAULT_BASE_URL, DEFAULT_MAX_BODY, DEFAULT_MAX_PAGES, Error, HuntingBudget,
    HuntingBudgetPolicy, RetryPolicy, Route, RouteTable, Secret, http, hunting, stats, transit,
};
use crate::limiter::{self, Limiter, Rate};
use parking_lot::Mutex;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

/// Added to an attempt's timeouts for the lease of its quota hold.
const HOLD_SLACK: Duration = Duration::from_secs(30);

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
            connect_timeout: super::DEFAULT_CONNECT_TIMEOUT,
            timeout: super::DEFAULT_ATTEMPT_TIMEOUT,
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
    /// instance its [`SignatureAlgorithm`](super::SignatureAlgorithm)).
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
        let endpoints = self.endpoints()?;
        let credentials = self.resolve_credentials()?;
        let routes = self.routes();
        self.validate(&credentials, &routes)?;
        let proxy = match &self.proxy {
            Some(p) => Some(
                ureq::Proxy::new(p.as_str()).map_err(|_| invalid("the proxy URL is not valid"))?,
            ),
            None => None,
        };
        let limiter = self.make_limiter(&routes)?;
        let (tenant, app) = self.bucket_names(&credentials);
        let auth = Auth::new(
            credentials,
            endpoints.authority,
            self.token_scope(),
            self.resource.clone(),
            &endpoints.origin,
            self.policy,
        );
        Ok(Client {
            core: Arc::new(ClientCore {
                agent: http::agent(self.connect_timeout, self.timeout, proxy, &self.user_agent),
                base_url: endpoints.base_url,
                host: endpoints.host,
                origin: endpoints.origin,
                tenant,
                app,
                auth,
                routes,
                limiter,
                policy: self.policy,
                max_body: self.max_body,
                closed: AtomicBool::new(false),
                counters: stats::Counters::default(),
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

    /// The base URL and the authority, checked: where calls and token requests may go.
    fn endpoints(&self) -> Result<Endpoints<'_>, Error> {
        let base_url = self.effective_base_url().to_string();
        let authority = self.effective_authority();
        urls::check_endpoint(&base_url, "the base URL", self.allow_insecure_http)?;
        urls::check_endpoint(authority, "the authority", self.allow_insecure_http)?;
        let base: ureq::http::Uri = base_url
            .parse()
            .map_err(|_| invalid("the base URL is not a valid URL"))?;
        let (origin, host) = match (base.scheme_str(), base.authority()) {
            (Some(s @ ("http" | "https")), Some(a)) => (format!("{s}://{a}"), a.to_string()),
            _ => return Err(invalid("the base URL needs http:// or https:// and a host")),
        };
        if !authority.starts_with("http://") && !authority.starts_with("https://") {
            return Err(invalid("the authority needs http:// or https://"));
        }
        Ok(Endpoints {
            base_url,
            origin,
            host,
            authority,
        })
    }

    /// The credentials the settings name: the one value given to
    /// [`credentials`](Self::credentials), else a fixed token, else a tenant and app with a
    /// secret or a certificate.
    fn resolve_credentials(&self) -> Result<Credentials, Error> {
        if let Some(c) = &self.credentials {
            return Ok(c.clone());
        }
        if let Some(t) = &self.access_token {
            return Ok(Credentials::AccessToken(t.clone()));
        }
        match (
            &self.tenant_id,
            &self.client_id,
            &self.secret,
            &self.certificate,
        ) {
            (Some(_), Some(_), Some(_), Some(_)) => {
                Err(invalid("give a client secret or a certificate, not both"))
            }
            (Some(t), Some(c), Some(s), None) => Ok(Credentials::ClientSecret {
                tenant_id: t.clone(),
                client_id: c.clone(),
                secret: s.clone(),
            }),
            (Some(t), Some(c), None, Some(cert)) => Ok(Credentials::Certificate {
                tenant_id: t.clone(),
                client_id: c.clone(),
                certificate: cert.clone(),
            }),
            _ => Err(invalid(
                "credentials are missing: give tenant id, client id and a client secret or certificate, an access token, or a token provider",
            )),
        }
    }

    /// Refuses credentials with empty parts, a retry policy or timeouts that allow no
    /// call, and routes without usable rates.
    fn validate(&self, credentials: &Credentials, routes: &RouteTable) -> Result<(), Error> {
        check_credentials(credentials)?;
        if self.policy.max_attempts == 0 {
            return Err(invalid("max_attempts must be at least 1"));
        }
        if self.timeout.is_zero() || self.connect_timeout.is_zero() {
            return Err(invalid("timeouts must be longer than zero"));
        }
        if self.max_pages == 0 {
            return Err(invalid("max_pages must be at least 1"));
        }
        for rates in std::iter::once(routes.default_rates())
            .chain(routes.routes().iter().map(|r| r.rates.as_slice()))
        {
            if rates.is_empty() {
                return Err(invalid("every route needs at least one rate"));
            }
            for r in rates {
                r.validate().map_err(Error::InvalidArgument)?;
            }
        }
        Ok(())
    }

    /// The limiter that holds the quotas: the shared one given, or a new one of the
    /// client's own, in memory or over the store given.
    fn make_limiter(&self, routes: &RouteTable) -> Result<Limiter, Error> {
        match (&self.limiter, &self.store) {
            (Some(_), Some(_)) => Err(invalid(
                "give the client either a limiter or a store, not both (a shared limiter has its store already)",
            )),
            (Some(l), None) => Ok(l.clone()),
            (None, store) => {
                let mut b = Limiter::builder()
                    .rates(routes.default_rates().iter().copied())
                    .margin(self.margin);
                if let Some(url) = store {
                    b = b.store(url.as_str());
                }
                b.build().map_err(limiter_failure)
            }
        }
    }

    /// The tenant and app that name the client's quota buckets.
    fn bucket_names(&self, credentials: &Credentials) -> (String, String) {
        match credentials {
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
        }
    }

    /// The v2 scope to ask tokens for, if the settings name one: an explicit scope or
    /// resource wins over the cloud's.
    fn token_scope(&self) -> Option<String> {
        match (&self.scope, &self.resource, self.cloud) {
            (Some(s), _, _) => Some(s.clone()),
            (None, None, Some(c)) => Some(c.scope()),
            _ => None,
        }
    }
}

/// The checked base URL and authority of a client.
struct Endpoints<'a> {
    base_url: String,
    /// `scheme://host[:port]` of the base URL: absolute URLs must stay on it.
    origin: String,
    /// `host[:port]` of the base URL, the first part of every bucket key.
    host: String,
    authority: &'a str,
}

fn invalid(message: &str) -> Error {
    Error::InvalidArgument(message.to_string())
}

/// Refuses credentials whose parts are empty, or a tenant id that would change the token
/// URL's path.
fn check_credentials(credentials: &Credentials) -> Result<(), Error> {
    let check_tenant = |tenant_id: &str| {
        if tenant_id.contains(['/', '?', '#']) {
            return Err(invalid("the tenant id must not contain '/', '?' or '#'"));
        }
        Ok(())
    };
    match credentials {
        Credentials::ClientSecret {
            tenant_id,
            client_id,
            secret,
        } => {
            if tenant_id.is_empty() || client_id.is_empty() || secret.is_empty() {
                return Err(invalid(
                    "tenant id, client id and client secret must not be empty",
                ));
            }
            check_tenant(tenant_id)
        }
        Credentials::Certificate {
            tenant_id,
            client_id,
            ..
        } => {
            if tenant_id.is_empty() || client_id.is_empty() {
                return Err(invalid("tenant id and client id must not be empty"));
            }
            check_tenant(tenant_id)
        }
        Credentials::AccessToken(t) if t.is_empty() => Err(invalid("the access token is empty")),
        Credentials::AccessToken(_) | Credentials::Provider(_) => Ok(()),
    }
}
