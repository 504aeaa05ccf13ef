//! What the simulator answers: routing, tokens, quotas, faults and the endpoints.
//!
//! Everything a request decides happens in one critical section, so that the instant
//! a call is counted at, the quota state and the log always agree.

use super::config::{
    CLASS_BATCH_UPDATE_ALERTS, CLASS_DEFAULT, CLASS_HUNTING, CLASS_LIVE_RESPONSE, CLASS_TOKEN,
    CLASS_UNROUTED, Faults, Limits, RetryAfterStyle, SimConfig,
};
use super::data::{self, Alert, Machine};
use super::log::LogEntry;
use super::quota::{Decision, QuotaBook, RealLimit, timespan};
use parking_lot::Mutex;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The most rows a hunting query returns, like the real service.
mod api;
mod token;

use token::TokenCall;

const HUNTING_MAX_ROWS: usize = 100_000;

/// What a worker read from the connection.
pub(crate) struct Incoming<'a> {
    pub method: &'a str,
    /// The request target as received: path and raw query.
    pub url: &'a str,
    pub authorization: Option<&'a str>,
    pub client_request_id: Option<&'a str>,
    pub body: &'a [u8],
    /// The delay it waited on its way in ([`Core::inbound_delay`]), for the log.
    pub inbound_delay: Duration,
}

/// What a worker should do with the connection.
pub(crate) struct Outgoing {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
    /// Real time to wait before answering (hunting run time plus latency).
    pub delay: Duration,
    /// Close the connection instead of answering.
    pub reset: bool,
    /// The class whose in-flight count this call holds until its answer is written
    /// ([`Core::leave`]).
    pub in_flight: Option<&'static str>,
}

/// An answer before the common headers are added.
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    delay: Duration,
}

impl Reply {
    fn json(status: u16, value: &Value) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: serde_json::to_vec(value).expect("JSON values always serialize"),
            delay: Duration::ZERO,
        }
    }

    fn empty(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            delay: Duration::ZERO,
        }
    }

    /// The API's error shape: `{"error":{"code","message","target"}}`.
    fn error(status: u16, code: &str, message: &str, target: &str) -> Reply {
        Reply::json(
            status,
            &json!({"error": {"code": code, "message": message, "target": target}}),
        )
    }

    fn header(mut self, name: &'static str, value: impl Into<String>) -> Reply {
        self.headers.push((name, value.into()));
        self
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    Token { tenant: String, v2: bool },
    Machines,
    Machine(String),
    Isolate(String),
    LiveResponse(String),
    Tags(String),
    Alerts,
    Alert(String),
    BatchUpdateAlerts,
    Hunting,
    Unrouted,
}

impl Route {
    /// Routes by method and path; fixed path words match without regard to case, as the
    /// real service does.
    fn parse(method: &str, path: &str) -> Route {
        let segments: Vec<&str> = path
            .trim_start_matches('/')
            .trim_end_matches('/')
            .split('/')
            .collect();
        let lower: Vec<String> = segments.iter().map(|s| s.to_ascii_lowercase()).collect();
        let words: Vec<&str> = lower.iter().map(String::as_str).collect();
        let id = |i: usize| percent_decode(segments[i], false);
        match (method, words.as_slice()) {
            ("POST", [_, "oauth2", "v2.0", "token"]) => Route::Token {
                tenant: id(0),
                v2: true,
            },
            ("POST", [_, "oauth2", "token"]) => Route::Token {
                tenant: id(0),
                v2: false,
            },
            ("GET", ["api", "machines"]) => Route::Machines,
            ("GET", ["api", "machines", _]) => Route::Machine(id(2)),
            ("POST", ["api", "machines", _, "isolate"]) => Route::Isolate(id(2)),
            ("POST", ["api", "machines", _, "tags"]) => Route::Tags(id(2)),
            ("POST", ["api", "machines", _, "runliveresponse"]) => Route::LiveResponse(id(2)),
            ("GET", ["api", "alerts"]) => Route::Alerts,
            ("POST", ["api", "alerts", "batchupdate"]) => Route::BatchUpdateAlerts,
            ("GET", ["api", "alerts", _]) => Route::Alert(id(2)),
            ("POST", ["api", "advancedqueries", "run"]) => Route::Hunting,
            _ => Route::Unrouted,
        }
    }

    /// The quota class, as in the table of published limits.
    fn class(&self) -> &'static str {
        match self {
            Route::Token { .. } => CLASS_TOKEN,
            Route::Hunting => CLASS_HUNTING,
            Route::BatchUpdateAlerts => CLASS_BATCH_UPDATE_ALERTS,
            Route::LiveResponse(_) => CLASS_LIVE_RESPONSE,
            Route::Unrouted => CLASS_UNROUTED,
            _ => CLASS_DEFAULT,
        }
    }
}

struct Token {
    client_id: String,
    expires: Instant,
}

/// Settings that can change while the simulator runs.
pub(crate) struct Live {
    pub limits: Limits,
    pub faults: Faults,
    pub retry_after_style: RetryAfterStyle,
}

pub(crate) struct State {
    pub live: Live,
    /// Calls being answered now, and the most at once, per class (live response only).
    in_flight: HashMap<&'static str, u32>,
    pub max_in_flight: BTreeMap<String, u32>,
    /// `jti`s of accepted client assertions, with their `exp`.
    seen_jti: HashMap<String, i64>,
    pub log: Vec<LogEntry>,
    pub actions: HashMap<(String, String), u64>,
    fault_rng: fastrand::Rng,
    /// Apart from `fault_rng`, so that inbound delays change no fault draw.
    jitter_rng: fastrand::Rng,
    id_rng: fastrand::Rng,
    quota: QuotaBook,
    tokens: HashMap<String, Token>,
    machines: Vec<Machine>,
    machine_index: HashMap<String, usize>,
    alerts: Vec<Alert>,
    isolated_at: HashMap<String, Instant>,
}

impl State {
    /// Counts a call of `class` in flight (and its peak); returns the class to leave.
    fn enter(&mut self, class: &'static str) -> &'static str {
        let n = self.in_flight.entry(class).or_default();
        *n += 1;
        let n = *n;
        let max = self.max_in_flight.entry(class.to_owned()).or_default();
        *max = (*max).max(n);
        class
    }
}

/// The simulator's state and configuration, shared by its workers.
pub(crate) struct Core {
    pub config: SimConfig,
    certificates: Vec<(String, super::assertion::Registered)>,
    pub start: Instant,
    pub base_url: String,
    pub state: Mutex<State>,
}

impl Core {
    pub fn new(config: SimConfig, start: Instant, base_url: String) -> Core {
        let machines = data::machines(config.machines);
        let machine_index = machines
            .iter()
            .enumerate()
            .map(|(i, m)| (m.id.to_ascii_lowercase(), i))
            .collect();
        let alerts = data::alerts(config.alerts, &machines);
        let state = State {
            live: Live {
                limits: config.limits.clone(),
                faults: config.faults.clone(),
                retry_after_style: config.retry_after_style,
            },
            seen_jti: HashMap::new(),
            in_flight: HashMap::new(),
            max_in_flight: BTreeMap::new(),
            log: Vec::new(),
            actions: HashMap::new(),
            fault_rng: fastrand::Rng::with_seed(config.seed),
            jitter_rng: fastrand::Rng::with_seed(data::mix(config.seed ^ 0x171)),
            id_rng: fastrand::Rng::with_seed(data::mix(config.seed ^ 0x1d5)),
            quota: QuotaBook::new(start),
            tokens: HashMap::new(),
            machines,
            machine_index,
            alerts,
            isolated_at: HashMap::new(),
        };
        let certificates = config
            .certificate_clients
            .iter()
            .filter_map(|(id, c)| Some((id.clone(), super::assertion::Registered::parse(c).ok()?)))
            .collect();
        Core {
            certificates,
            config,
            start,
            base_url,
            state: Mutex::new(state),
        }
    }

    /// Draws the delay of a request on its way in, uniform in `0..=inbound_jitter`; draws
    /// nothing when the jitter is zero.
    pub fn inbound_delay(&self) -> Duration {
        let mut st = self.state.lock();
        let jitter = st.live.faults.inbound_jitter;
        if jitter.is_zero() {
            return Duration::ZERO;
        }
        // Validated to at most MAX_INBOUND_JITTER, so the nanoseconds fit.
        let most = u64::try_from(jitter.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(st.jitter_rng.u64(0..=most))
    }

    /// Decides the answer to one request, counts it, and logs it.
    pub fn process(&self, rq: &Incoming<'_>) -> Outgoing {
        let (path, query) = match rq.url.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (rq.url, None),
        };
        let route = Route::parse(rq.method, path);
        let class = route.class();

        let mut st = self.state.lock();
        let st = &mut *st;
        let now = Instant::now();
        let request_id = new_uuid(&mut st.id_rng);
        let faults = Drawn::draw(st, &route);

        let mut entry = LogEntry::of(rq, class, now - self.start, faults.reset);

        let reply = match &route {
            _ if faults.fail_503 => Reply::error(
                503,
                "ServiceUnavailable",
                "The service is temporarily unavailable. Please retry later.",
                &request_id,
            ),
            Route::Unrouted => Reply::error(
                404,
                "NotFound",
                &format!("No endpoint matches {} {path}", rq.method),
                &request_id,
            ),
            Route::Token { tenant, v2 } => {
                let url = format!("{}{path}", self.base_url);
                let call = TokenCall {
                    tenant,
                    v2: *v2,
                    url: &url,
                    body: rq.body,
                };
                self.token(st, &call, now, &request_id, &mut entry)
            }
            _ => self.api(st, &route, query, rq, path, now, &request_id, &mut entry),
        };

        entry.status = reply.status;
        st.log.push(entry);
        let in_flight = (matches!(route, Route::LiveResponse(_)) && reply.status == 201)
            .then(|| st.enter(class));
        Outgoing {
            status: reply.status,
            headers: answer_headers(reply.headers, rq.client_request_id, request_id),
            body: reply.body,
            delay: reply.delay + faults.latency,
            reset: faults.reset,
            in_flight,
        }
    }

    /// Ends a call counted in flight, before its answer is written (so the count never
    /// exceeds what the client holds).
    pub fn leave(&self, class: &'static str) {
        if let Some(n) = self.state.lock().in_flight.get_mut(class) {
            *n = n.saturating_sub(1);
        }
    }

    /// Admits (and counts) a call of `class` by `client`, or builds the 429.
    fn admit(
        &self,
        st: &mut State,
        client: &str,
        class: &str,
        now: Instant,
        entry: &mut LogEntry,
    ) -> Result<(), RealLimit> {
        let limits: Vec<RealLimit> = st
            .live
            .limits
            .get(class)
            .iter()
            .map(|l| RealLimit::from_limit(l, self.config.time_scale))
            .collect();
        match st
            .quota
            .check(client, class, &limits, self.config.window_kind, now)
        {
            Decision::Admit => {
                entry.counted = true;
                Ok(())
            }
            Decision::Throttle { wait, limit } => {
                entry.retry_after = Some(wait);
                Err(limit)
            }
        }
    }
}

impl LogEntry {
    /// The entry of a request arrived at `instant`, before its answer is decided.
    fn of(rq: &Incoming<'_>, class: &str, instant: Duration, reset: bool) -> Self {
        Self {
            instant,
            inbound_delay: rq.inbound_delay,
            method: rq.method.to_owned(),
            path: rq.url.to_owned(),
            status: 0,
            class: class.to_owned(),
            client_id: None,
            reset,
            counted: false,
            retry_after: None,
        }
    }
}

/// The faults drawn for one request.
struct Drawn {
    /// Answer 503.
    fail_503: bool,
    /// Reset the connection instead of answering.
    reset: bool,
    /// Added before the answer.
    latency: Duration,
}

impl Drawn {
    /// Draws the faults of a request on `route`: none for unrouted paths, and the token
    /// endpoint's only when token faults are on.
    fn draw(st: &mut State, route: &Route) -> Self {
        let faults = &st.live.faults;
        let faulty = match route {
            Route::Unrouted => false,
            Route::Token { .. } => faults.token_endpoint,
            _ => true,
        };
        let (rate_503, rate_reset, latency) =
            (faults.error_503_rate, faults.reset_rate, faults.latency);
        // Draw only for rates in use, so that a seed replays the same faults.
        let fail_503 = faulty && rate_503 > 0.0 && st.fault_rng.f64() < rate_503;
        let reset = faulty && rate_reset > 0.0 && st.fault_rng.f64() < rate_reset && !fail_503;
        Self {
            fail_503,
            reset,
            latency,
        }
    }
}

/// The headers of an answer: the reply's own, then the content type and the ids that
/// Defender for Endpoint sends.
fn answer_headers(
    mut headers: Vec<(&'static str, String)>,
    client_request_id: Option<&str>,
    request_id: String,
) -> Vec<(&'static str, String)> {
    headers.push(("Content-Type", "application/json; charset=utf-8".to_owned()));
    headers.push(("request-id", request_id.clone()));
    headers.push((
        "client-request-id",
        client_request_id.map_or_else(|| request_id.clone(), str::to_owned),
    ));
    headers.push(("x-ms-correlation-id", request_id));
    headers
}

/// Decodes `%XX` escapes (and `+` as a space when `plus` is set); malformed escapes stay.
pub(crate) fn percent_decode(s: &str, plus: bool) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' if plus => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn new_uuid(rng: &mut fastrand::Rng) -> String {
    data::uuid_from(rng.u64(..), rng.u64(..))
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

fn ceil_millis(d: Duration) -> u128 {
    d.as_nanos().div_ceil(1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_classes() {
        let r = Route::parse("POST", "/tenant/oauth2/v2.0/token");
        assert_eq!(
            r,
            Route::Token {
                tenant: "tenant".into(),
                v2: true
            }
        );
        assert_eq!(Route::parse("GET", "/api/Machines/"), Route::Machines);
        assert_eq!(
            Route::parse("GET", "/api/machines/ab%20c"),
            Route::Machine("ab c".into())
        );
        assert_eq!(
            Route::parse("POST", "/api/machines/x/Isolate"),
            Route::Isolate("x".into())
        );
        assert_eq!(
            Route::parse("POST", "/api/alerts/batchUpdate").class(),
            CLASS_BATCH_UPDATE_ALERTS
        );
        assert_eq!(
            Route::parse("POST", "/api/advancedqueries/run").class(),
            CLASS_HUNTING
        );
        assert_eq!(Route::parse("DELETE", "/api/machines"), Route::Unrouted);
        assert_eq!(Route::parse("GET", "/"), Route::Unrouted);
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("%24top", false), "$top");
        assert_eq!(percent_decode("a+b%2", true), "a b%2");
        assert_eq!(percent_decode("%zz%41", false), "%zzA");
        assert_eq!(percent_decode("%", false), "%");
    }
}
