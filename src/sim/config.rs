//! The simulator's configuration: identity, time scale, quotas, faults and data sizes.

use std::collections::BTreeMap;
use std::time::Duration;

/// The class every request falls back to when its own class has no limits.
pub const CLASS_DEFAULT: &str = "default";
/// `POST /api/advancedqueries/run`.
pub const CLASS_HUNTING: &str = "hunting";
/// `POST /api/alerts/batchUpdate`.
pub const CLASS_BATCH_UPDATE_ALERTS: &str = "batch_update_alerts";
/// `POST /api/machines/{id}/runliveresponse`.
pub const CLASS_LIVE_RESPONSE: &str = "live_response";
/// The token endpoints (v1 and v2), limited per client id given in the form.
pub const CLASS_TOKEN: &str = "token";
/// Requests that match no served endpoint; never authenticated nor limited.
pub const CLASS_UNROUTED: &str = "unrouted";

/// One limit of a class: at most `calls` admitted calls in any window of `window_secs`
/// seconds of API time (the real window is `window_secs * time_scale`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limit {
    /// Calls admitted per window.
    pub calls: u32,
    /// The window in API seconds, before scaling.
    pub window_secs: f64,
}

impl Limit {
    /// A limit of `calls` per `window_secs` API seconds.
    pub fn new(calls: u32, window_secs: f64) -> Limit {
        Limit { calls, window_secs }
    }
}

/// The limits of every class. A class without an entry uses the limits of
/// [`CLASS_DEFAULT`]; every limit of a class applies at once.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    classes: BTreeMap<String, Vec<Limit>>,
}

impl Default for Limits {
    /// The published quotas: 100/min and 1,500/h by default, hunting 45/min and 1,500/h,
    /// alert batch updates 10/min and 500/h, live response 10/min; the token endpoint
    /// 1,000/min per client.
    fn default() -> Limits {
        let mut limits = Limits {
            classes: BTreeMap::new(),
        };
        limits.set(CLASS_DEFAULT, &[(100, 60.0), (1500, 3600.0)]);
        limits.set(CLASS_HUNTING, &[(45, 60.0), (1500, 3600.0)]);
        limits.set(CLASS_BATCH_UPDATE_ALERTS, &[(10, 60.0), (500, 3600.0)]);
        limits.set(CLASS_LIVE_RESPONSE, &[(10, 60.0)]);
        limits.set(CLASS_TOKEN, &[(1000, 60.0)]);
        limits
    }
}

impl Limits {
    /// Replaces the limits of `class` by `(calls, window_secs)` pairs; an empty slice
    /// makes the class unlimited.
    pub fn set(&mut self, class: &str, limits: &[(u32, f64)]) {
        let limits = limits.iter().map(|&(c, w)| Limit::new(c, w)).collect();
        self.classes.insert(class.to_owned(), limits);
    }

    /// Removes the entry of `class`, so that it falls back to [`CLASS_DEFAULT`].
    pub fn clear(&mut self, class: &str) {
        self.classes.remove(class);
    }

    /// The limits that apply to `class`: its own, or else those of [`CLASS_DEFAULT`].
    pub fn get(&self, class: &str) -> &[Limit] {
        self.classes
            .get(class)
            .or_else(|| self.classes.get(CLASS_DEFAULT))
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// The classes that have their own entry.
    pub fn classes(&self) -> impl Iterator<Item = &str> {
        self.classes.keys().map(String::as_str)
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        for (class, limits) in &self.classes {
            for limit in limits {
                if !(limit.window_secs.is_finite() && limit.window_secs > 0.0) {
                    return Err(format!(
                        "class {class}: window must be a positive number of seconds"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// How the admitted calls of a window are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WindowKind {
    /// A rolling window: the calls admitted in the last `window` of real time.
    #[default]
    Sliding,
    /// Fixed windows aligned on the simulator's start: a burst at the end of one window
    /// and another at the start of the next both pass (up to twice the limit in one
    /// rolling window).
    Fixed,
}

/// How a 429 tells the client when to come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RetryAfterStyle {
    /// `Retry-After: <whole seconds, rounded up>` and `retry-after-ms: <ms, rounded up>`,
    /// both in real time.
    #[default]
    Seconds,
    /// `Retry-After: <HTTP-date>`, rounded up to the next whole second.
    HttpDate,
    /// `retry-after-ms` only.
    Milliseconds,
    /// `x-ms-retry-after-ms` only.
    XmsMilliseconds,
    /// No header: only the body's message names the limit and its real window.
    BodyOnly,
    /// No hint at all: no header, and a body message without the limit.
    None,
}

/// The largest [`Faults::inbound_jitter`]: a delay on the way in longer than this is a
/// configuration mistake, not a network.
pub const MAX_INBOUND_JITTER: Duration = Duration::from_secs(10);

/// Failures injected into API calls (and into token requests if `token_endpoint`), and
/// the network's delays, which every request suffers.
#[derive(Debug, Clone, PartialEq)]
pub struct Faults {
    /// Share of requests answered 503 `ServiceUnavailable` before any quota counting (0..1).
    pub error_503_rate: f64,
    /// Share of requests that are processed (quota counted, actions applied) and then
    /// get no answer: the connection is closed (0..1).
    pub reset_rate: f64,
    /// Real time added before each answer (and before each reset).
    pub latency: Duration,
    /// The most real time a request spends on its way in: each request, token requests
    /// included, waits a delay drawn uniformly from `0..=inbound_jitter` after it was
    /// read and before the call is decided and counted, as a real server counts a call
    /// when it arrives. So a call sent exactly one window after another can arrive
    /// inside the same window. Delays come from their own generator seeded by
    /// [`SimConfig::seed`] (the n-th request read gets the n-th delay), so turning them
    /// on changes no fault draw. At most [`MAX_INBOUND_JITTER`]; zero (the default)
    /// draws nothing.
    pub inbound_jitter: Duration,
    /// Whether the token endpoints suffer the 503s and resets too.
    pub token_endpoint: bool,
}

impl Default for Faults {
    fn default() -> Faults {
        Faults {
            error_503_rate: 0.0,
            reset_rate: 0.0,
            latency: Duration::ZERO,
            inbound_jitter: Duration::ZERO,
            token_endpoint: false,
        }
    }
}

impl Faults {
    pub(crate) fn validate(&self) -> Result<(), String> {
        for (name, rate) in [
            ("error_503_rate", self.error_503_rate),
            ("reset_rate", self.reset_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!("{name} must be within 0..=1, got {rate}"));
            }
        }
        if self.inbound_jitter > MAX_INBOUND_JITTER {
            return Err(format!(
                "inbound_jitter must be at most {MAX_INBOUND_JITTER:?}, got {:?}",
                self.inbound_jitter
            ));
        }
        Ok(())
    }
}

/// Everything the simulator is started with.
///
/// `Default` gives a tenant of 250 machines and 300 alerts, real time (`time_scale`
/// 1.0), the published quotas, sliding windows, `Retry-After` in seconds and no faults.
/// Build a variant with the setters:
///
/// ```
/// use quotagate::sim::{SimConfig, WindowKind};
/// let config = SimConfig::default()
///     .machines(40)
///     .time_scale(0.01) // a 60 s window lasts 600 ms
///     .limits("default", &[(5, 60.0)])
///     .window_kind(WindowKind::Fixed);
/// assert_eq!(config.machines, 40);
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct SimConfig {
    /// Machines in the tenant.
    pub machines: usize,
    /// Alerts in the tenant.
    pub alerts: usize,
    /// The tenant id that token URLs must name.
    pub tenant_id: String,
    /// The application (client) id.
    pub client_id: String,
    /// The application's secret.
    pub client_secret: String,
    /// Further applications `(client id, secret)`: each has quotas of its own.
    pub extra_clients: Vec<(String, String)>,
    /// Certificates registered for applications `(client id, certificate DER or PEM)`:
    /// such an application may sign in with a client assertion made with the
    /// certificate's key. An id that is neither the main client nor an extra one is an
    /// application of its own with its own quotas.
    pub certificate_clients: Vec<(String, Vec<u8>)>,
    /// Real seconds per API second: windows, token lifetimes, the hunting delay and the
    /// in-progress time of actions are multiplied by it.
    pub time_scale: f64,
    /// Token lifetime in API time (`expires_in`); it lasts `token_lifetime * time_scale`.
    pub token_lifetime: Duration,
    /// Quotas per class.
    pub limits: Limits,
    /// Sliding or fixed windows.
    pub window_kind: WindowKind,
    /// How 429s give their hint.
    pub retry_after_style: RetryAfterStyle,
    /// Injected failures.
    pub faults: Faults,
    /// Seed of the fault draws, the inbound delays and the generated ids, for
    /// reproducible runs.
    pub seed: u64,
    /// The largest page (`$top` is capped to it; it is also the default page).
    pub page_size_max: usize,
    /// Simulated run time of a hunting query, in API time.
    pub hunting_delay: Duration,
    /// How long, in API time, `runliveresponse` takes to answer; [`SimStats::max_in_flight`]
    /// shows how many such calls the server held at once.
    ///
    /// [`SimStats::max_in_flight`]: super::SimStats::max_in_flight
    pub live_response_delay: Duration,
    /// How long, in API time, an isolation stays "in progress": a second isolate of the
    /// same machine within it answers 400 `ActiveRequestAlreadyExists`. Zero turns the
    /// check off.
    pub action_pending: Duration,
}

impl Default for SimConfig {
    fn default() -> SimConfig {
        SimConfig {
            machines: 250,
            alerts: 300,
            tenant_id: "00000000-0000-4000-8000-000000000001".to_owned(),
            client_id: "quotagate-sim-client".to_owned(),
            client_secret: "quotagate-sim-secret".to_owned(),
            extra_clients: Vec::new(),
            certificate_clients: Vec::new(),
            time_scale: 1.0,
            token_lifetime: Duration::from_secs(3599),
            limits: Limits::default(),
            window_kind: WindowKind::Sliding,
            retry_after_style: RetryAfterStyle::Seconds,
            faults: Faults::default(),
            seed: 0x5eed,
            page_size_max: 10_000,
            hunting_delay: Duration::ZERO,
            live_response_delay: Duration::ZERO,
            action_pending: Duration::ZERO,
        }
    }
}

impl SimConfig {
    /// Sets the number of machines.
    pub fn machines(mut self, n: usize) -> Self {
        self.machines = n;
        self
    }

    /// Sets the number of alerts.
    pub fn alerts(mut self, n: usize) -> Self {
        self.alerts = n;
        self
    }

    /// Sets the tenant id.
    pub fn tenant_id(mut self, id: impl Into<String>) -> Self {
        self.tenant_id = id.into();
        self
    }

    /// Sets the client id.
    pub fn client_id(mut self, id: impl Into<String>) -> Self {
        self.client_id = id.into();
        self
    }

    /// Sets the client secret.
    pub fn client_secret(mut self, secret: impl Into<String>) -> Self {
        self.client_secret = secret.into();
        self
    }

    /// Registers one more application, with quotas of its own.
    pub fn add_client(mut self, id: impl Into<String>, secret: impl Into<String>) -> Self {
        self.extra_clients.push((id.into(), secret.into()));
        self
    }

    /// Registers a certificate (DER, or PEM text) for the application `id`: token requests
    /// with a client assertion signed by its key (PS256 or RS256, `x5t#S256` or `x5t`)
    /// are accepted while the certificate is valid. Several certificates per application
    /// may be registered, as during a rollover.
    pub fn add_certificate_client(
        mut self,
        id: impl Into<String>,
        certificate: impl AsRef<[u8]>,
    ) -> Self {
        self.certificate_clients
            .push((id.into(), certificate.as_ref().to_vec()));
        self
    }

    /// Sets the real seconds per API second (must be positive).
    pub fn time_scale(mut self, scale: f64) -> Self {
        self.time_scale = scale;
        self
    }

    /// Sets the token lifetime in API time.
    pub fn token_lifetime(mut self, lifetime: Duration) -> Self {
        self.token_lifetime = lifetime;
        self
    }

    /// Replaces the limits of `class` by `(calls, window_secs)` pairs (API seconds).
    pub fn limits(mut self, class: &str, limits: &[(u32, f64)]) -> Self {
        self.limits.set(class, limits);
        self
    }

    /// Replaces all limits.
    pub fn all_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Sets sliding or fixed windows.
    pub fn window_kind(mut self, kind: WindowKind) -> Self {
        self.window_kind = kind;
        self
    }

    /// Sets how 429s give their hint.
    pub fn retry_after_style(mut self, style: RetryAfterStyle) -> Self {
        self.retry_after_style = style;
        self
    }

    /// Replaces all fault settings.
    pub fn faults(mut self, faults: Faults) -> Self {
        self.faults = faults;
        self
    }

    /// Sets the share of API calls answered 503.
    pub fn error_503_rate(mut self, rate: f64) -> Self {
        self.faults.error_503_rate = rate;
        self
    }

    /// Sets the share of API calls processed and then left unanswered.
    pub fn reset_rate(mut self, rate: f64) -> Self {
        self.faults.reset_rate = rate;
        self
    }

    /// Sets the real time added before each answer.
    pub fn latency(mut self, latency: Duration) -> Self {
        self.faults.latency = latency;
        self
    }

    /// Sets the most real time a request waits on its way in, before it is counted (see
    /// [`Faults::inbound_jitter`]; at most [`MAX_INBOUND_JITTER`]).
    pub fn inbound_jitter(mut self, jitter: Duration) -> Self {
        self.faults.inbound_jitter = jitter;
        self
    }

    /// Sets the seed of the fault draws and inbound delays.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Sets the largest page.
    pub fn page_size_max(mut self, n: usize) -> Self {
        self.page_size_max = n;
        self
    }

    /// Sets the simulated run time of a hunting query (API time).
    pub fn hunting_delay(mut self, delay: Duration) -> Self {
        self.hunting_delay = delay;
        self
    }

    /// Sets how long `runliveresponse` takes to answer (API time).
    pub fn live_response_delay(mut self, delay: Duration) -> Self {
        self.live_response_delay = delay;
        self
    }

    /// Sets how long an isolation stays in progress (API time; zero: never).
    pub fn action_pending(mut self, pending: Duration) -> Self {
        self.action_pending = pending;
        self
    }

    /// `api` scaled to real time.
    pub fn real(&self, api: Duration) -> Duration {
        scaled(api.as_secs_f64(), self.time_scale)
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        if !(self.time_scale.is_finite() && self.time_scale > 0.0) {
            return Err(format!(
                "time_scale must be positive, got {}",
                self.time_scale
            ));
        }
        if self.page_size_max == 0 {
            return Err("page_size_max must be at least 1".to_owned());
        }
        for (id, cert) in &self.certificate_clients {
            super::assertion::Registered::parse(cert)
                .map_err(|e| format!("certificate of {id}: {e}"))?;
        }
        self.limits.validate()?;
        self.faults.validate()
    }
}

/// `secs * scale` as a duration, rounded to the nanosecond (so that 60 s at 0.01 is
/// exactly 600 ms, which the 429 message shows).
pub(crate) fn scaled(secs: f64, scale: f64) -> Duration {
    let nanos = (secs * scale * 1e9).round();
    if nanos <= 0.0 {
        Duration::ZERO
    } else if nanos >= u64::MAX as f64 {
        Duration::from_nanos(u64::MAX)
    } else {
        Duration::from_nanos(nanos as u64)
    }
}
