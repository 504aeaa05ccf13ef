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

    /// The token endpoint: counts the call in the token class, authenticates the client
    /// (secret or assertion) and issues the token.
    fn token(
        &self,
        st: &mut State,
        call: &TokenCall<'_>,
        now: Instant,
        request_id: &str,
        entry: &mut LogEntry,
    ) -> Reply {
        let form = parse_form(call.body);
        let client_id = form.get("client_id").map_or("", String::as_str);
        if self.admit(st, client_id, CLASS_TOKEN, now, entry).is_err() {
            let wait = entry.retry_after.unwrap_or_default();
            return aad_error(
                429,
                "temporarily_unavailable",
                50196,
                "The server terminated an operation because it encountered a client request loop. Please contact your app vendor.",
                request_id,
            )
            .header("Retry-After", ceil_secs(wait).to_string())
            .header("retry-after-ms", ceil_millis(wait).to_string());
        }
        match self.authenticate_client(st, call, &form) {
            Ok(client_id) => self.issue(st, &client_id, call.v2, &form, now, request_id),
            Err(r) => aad_error(r.status, r.error, r.code, &r.text, request_id),
        }
    }

    /// Checks the grant and the tenant, then the client's assertion or secret; returns
    /// the client's id.
    fn authenticate_client(
        &self,
        st: &mut State,
        call: &TokenCall<'_>,
        form: &HashMap<String, String>,
    ) -> Result<String, Refusal> {
        let field = |name: &str| form.get(name).map_or("", String::as_str);
        if field("grant_type") != "client_credentials" {
            return Err(Refusal::new(
                400,
                "unsupported_grant_type",
                70003,
                "The app requested an unsupported grant type; the simulator serves client_credentials only.",
            ));
        }
        if !call.tenant.eq_ignore_ascii_case(&self.config.tenant_id) {
            return Err(Refusal::new(
                400,
                "invalid_request",
                90002,
                format!("Tenant '{}' not found.", call.tenant),
            ));
        }
        match form.get("client_assertion") {
            Some(assertion) => self.check_assertion(st, call, assertion, form),
            None => self.check_secret(call.tenant, field("client_id"), form.get("client_secret")),
        }
    }

    /// Verifies a client assertion (a JWT signed with a registered certificate).
    fn check_assertion(
        &self,
        st: &mut State,
        call: &TokenCall<'_>,
        assertion: &str,
        form: &HashMap<String, String>,
    ) -> Result<String, Refusal> {
        if form.get("client_assertion_type").map(String::as_str)
            != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
        {
            return Err(Refusal::new(
                400,
                "invalid_request",
                50027,
                "client_assertion_type must be urn:ietf:params:oauth:client-assertion-type:jwt-bearer.",
            ));
        }
        let now_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let certificates = |id: &str| {
            self.certificates
                .iter()
                .filter(|(c, _)| c == id)
                .map(|(_, r)| r.clone())
                .collect()
        };
        let client_id = form.get("client_id").map_or("", String::as_str);
        super::assertion::verify(
            assertion,
            client_id,
            call.url,
            &certificates,
            &mut st.seen_jti,
            now_unix,
        )
        .map_err(|r| Refusal::new(401, "invalid_client", r.code, r.text))
    }

    /// Checks a client id and secret against the registered apps.
    fn check_secret(
        &self,
        tenant: &str,
        client_id: &str,
        given: Option<&String>,
    ) -> Result<String, Refusal> {
        if client_id.is_empty() {
            return Err(Refusal::new(
                400,
                "invalid_request",
                900144,
                "The request body must contain the following parameter: 'client_id'.",
            ));
        }
        let Some(secret) = self.secret_of(client_id) else {
            return Err(Refusal::new(
                400,
                "unauthorized_client",
                700016,
                format!(
                    "Application with identifier '{client_id}' was not found in the directory '{tenant}'."
                ),
            ));
        };
        match given {
            None => Err(Refusal::new(
                401,
                "invalid_client",
                7000216,
                "'client_assertion', 'client_secret' or 'request' is required for the 'client_credentials' grant type.",
            )),
            Some(given) if given != secret => Err(Refusal::new(
                401,
                "invalid_client",
                7000215,
                "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID.",
            )),
            Some(_) => Ok(client_id.to_owned()),
        }
    }

    /// The token answer once the client is authenticated: checks the scope (v2) or
    /// resource (v1).
    fn issue(
        &self,
        st: &mut State,
        client_id: &str,
        v2: bool,
        form: &HashMap<String, String>,
        now: Instant,
        request_id: &str,
    ) -> Reply {
        let field = |name: &str| form.get(name).map(String::as_str).unwrap_or("");
        let aad = |status: u16, error: &str, code: u32, text: &str| {
            aad_error(status, error, code, text, request_id)
        };
        if v2 {
            let scope = field("scope");
            if !scope.ends_with("/.default") {
                return aad(
                    400,
                    "invalid_scope",
                    1002012,
                    &format!(
                        "The provided value for scope {scope} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI)."
                    ),
                );
            }
        } else if field("resource").is_empty() {
            return aad(
                400,
                "invalid_request",
                900144,
                "The request body must contain the following parameter: 'resource'.",
            );
        }

        let token = self.mint_token(st, client_id, now);
        // Whole seconds as the real service gives them, rounded up so that a lifetime
        // under a second still reads as a usable token.
        let secs = self.config.token_lifetime.as_millis().div_ceil(1000).max(1);
        Reply::json(
            200,
            &json!({
                "token_type": "Bearer",
                "expires_in": secs,
                "ext_expires_in": secs,
                "access_token": token,
            }),
        )
    }

    /// A new bearer token for `client_id`, valid for the configured lifetime from `now`.
    pub(crate) fn mint_token(&self, st: &mut State, client_id: &str, now: Instant) -> String {
        let lifetime = self.config.real(self.config.token_lifetime);
        // Forget tokens long expired; recently expired ones stay to answer "expired".
        st.tokens
            .retain(|_, t| t.expires + lifetime > now || t.expires > now);
        let token: String = (0..86)
            .map(|_| {
                const ALPHABET: &[u8] =
                    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
                ALPHABET[st.id_rng.usize(..ALPHABET.len())] as char
            })
            .collect();
        st.tokens.insert(
            token.clone(),
            Token {
                client_id: client_id.to_owned(),
                expires: now + lifetime,
            },
        );
        token
    }

    fn secret_of(&self, client_id: &str) -> Option<&str> {
        if client_id == self.config.client_id {
            return Some(&self.config.client_secret);
        }
        self.config
            .extra_clients
            .iter()
            .find(|(id, _)| id == client_id)
            .map(|(_, secret)| secret.as_str())
    }

    /// The client id of a valid, unexpired bearer token.
    fn authenticate(
        &self,
        st: &State,
        header: Option<&str>,
        now: Instant,
    ) -> Result<String, &'static str> {
        let header = header.ok_or("Authorization header is missing.")?;
        let token = match header.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
            _ => return Err("Authorization header is not a bearer token."),
        };
        let known = st.tokens.get(token).ok_or("The access token is invalid.")?;
        if known.expires <= now {
            return Err("The access token has expired.");
        }
        Ok(known.client_id.clone())
    }

    #[allow(clippy::too_many_arguments)]
    fn api(
        &self,
        st: &mut State,
        route: &Route,
        query: Option<&str>,
        rq: &Incoming<'_>,
        path: &str,
        now: Instant,
        request_id: &str,
        entry: &mut LogEntry,
    ) -> Reply {
        let client = match self.authenticate(st, rq.authorization, now) {
            Ok(client) => client,
            Err(why) => {
                return Reply::error(401, "Unauthorized", why, request_id)
                    .header("WWW-Authenticate", "Bearer error=\"invalid_token\"");
            }
        };
        entry.client_id = Some(client.clone());
        let class = route.class();
        if let Err(limit) = self.admit(st, &client, class, now, entry) {
            let wait = entry.retry_after.unwrap_or_default();
            return self.throttled(st.live.retry_after_style, class, wait, limit, request_id);
        }
        match route {
            Route::Machines => {
                let page = paging(query, self.config.page_size_max);
                match page {
                    Ok(page) => self.page(&st.machines, &page, path, "Machines"),
                    Err(why) => Reply::error(400, "ODataError", &why, request_id),
                }
            }
            Route::Alerts => match paging(query, self.config.page_size_max) {
                Ok(page) => self.page(&st.alerts, &page, path, "Alerts"),
                Err(why) => Reply::error(400, "ODataError", &why, request_id),
            },
            Route::Machine(id) => match st.machine_index.get(&id.to_ascii_lowercase()) {
                Some(&i) => {
                    Reply::json(200, &self.with_context(&st.machines[i], "Machines/$entity"))
                }
                None => machine_not_found(id, request_id),
            },
            Route::Alert(id) => match st.alerts.iter().find(|a| a.id == *id) {
                Some(alert) => Reply::json(200, &self.with_context(alert, "Alerts/$entity")),
                None => Reply::error(
                    404,
                    "ResourceNotFound",
                    &format!("Alert {id} was not found"),
                    request_id,
                ),
            },
            Route::Isolate(id) => self.isolate(st, id, &client, rq.body, now, request_id),
            Route::Tags(id) => self.tag(st, id, rq.body, request_id),
            Route::LiveResponse(id) => self.live_response(st, id, &client, rq.body, request_id),
            Route::Hunting => self.hunt(st, rq.body, request_id),
            Route::BatchUpdateAlerts => batch_update(rq.body, request_id),
            Route::Token { .. } | Route::Unrouted => unreachable!("routed before"),
        }
    }

    /// The 429, with the hint the configured style gives.
    fn throttled(
        &self,
        style: RetryAfterStyle,
        class: &str,
        wait: Duration,
        limit: RealLimit,
        request_id: &str,
    ) -> Reply {
        // Advanced hunting answers with the status as its code.
        let code = if class == CLASS_HUNTING {
            "429"
        } else {
            "TooManyRequests"
        };
        let message = match style {
            RetryAfterStyle::None => "Too many requests. Please try again later.".to_owned(),
            _ => format!(
                "API calls quota exceeded! maximum allowed {} per {}",
                limit.calls,
                timespan(limit.window)
            ),
        };
        let reply = Reply::error(429, code, &message, request_id);
        match style {
            RetryAfterStyle::Seconds => reply
                .header("Retry-After", ceil_secs(wait).to_string())
                .header("retry-after-ms", ceil_millis(wait).to_string()),
            RetryAfterStyle::HttpDate => {
                let at = SystemTime::now() + wait;
                let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
                let whole = UNIX_EPOCH + Duration::from_secs(ceil_secs(since));
                reply.header("Retry-After", httpdate::fmt_http_date(whole))
            }
            RetryAfterStyle::Milliseconds => {
                reply.header("retry-after-ms", ceil_millis(wait).to_string())
            }
            RetryAfterStyle::XmsMilliseconds => {
                reply.header("x-ms-retry-after-ms", ceil_millis(wait).to_string())
            }
            RetryAfterStyle::BodyOnly | RetryAfterStyle::None => reply,
        }
    }

    fn with_context<T: serde::Serialize>(&self, item: &T, entity: &str) -> Value {
        let mut value = serde_json::to_value(item).expect("data always serializes");
        if let Value::Object(map) = &mut value {
            map.insert(
                "@odata.context".to_owned(),
                Value::String(format!("{}/api/$metadata#{entity}", self.base_url)),
            );
        }
        value
    }

    fn page<T: serde::Serialize>(
        &self,
        items: &[T],
        page: &Page<'_>,
        path: &str,
        entity: &str,
    ) -> Reply {
        let from = page.skip.min(items.len());
        let to = from.saturating_add(page.top).min(items.len());
        let mut body = json!({
            "@odata.context": format!("{}/api/$metadata#{entity}", self.base_url),
            "value": &items[from..to],
        });
        if to < items.len() && page.top > 0 {
            // The client's own parameters, byte for byte, then the next $skip.
            let mut query = page.kept.join("&");
            if !query.is_empty() {
                query.push('&');
            }
            query.push_str(&format!("$skip={to}"));
            body["@odata.nextLink"] = Value::String(format!("{}{path}?{query}", self.base_url));
        }
        Reply::json(200, &body)
    }

    fn isolate(
        &self,
        st: &mut State,
        id: &str,
        client: &str,
        body: &[u8],
        now: Instant,
        request_id: &str,
    ) -> Reply {
        let (comment, kind) = match isolation_request(body) {
            Ok(request) => request,
            Err(why) => return invalid_body(why, request_id),
        };
        let Some(&index) = st.machine_index.get(&id.to_ascii_lowercase()) else {
            return machine_not_found(id, request_id);
        };
        let machine_id = st.machines[index].id.clone();
        let pending = self.config.real(self.config.action_pending);
        if !pending.is_zero()
            && st
                .isolated_at
                .get(&machine_id)
                .is_some_and(|&at| now < at + pending)
        {
            return Reply::error(
                400,
                "ActiveRequestAlreadyExists",
                "Action is already in progress",
                request_id,
            );
        }
        st.isolated_at.insert(machine_id.clone(), now);
        *st.actions
            .entry((machine_id.clone(), "isolate".to_owned()))
            .or_default() += 1;
        let at = data::iso_now();
        Reply::json(
            201,
            &json!({
                "@odata.context": format!("{}/api/$metadata#MachineActions/$entity", self.base_url),
                "id": new_uuid(&mut st.id_rng),
                "type": "Isolate",
                "title": null,
                "requestor": client,
                "requestorComment": comment,
                "status": "Pending",
                "isolationType": kind,
                "machineId": machine_id,
                "computerDnsName": st.machines[index].computer_dns_name,
                "creationDateTimeUtc": at,
                "lastUpdateDateTimeUtc": at,
                "relatedFileInfo": null,
            }),
        )
    }

    fn tag(&self, st: &mut State, id: &str, body: &[u8], request_id: &str) -> Reply {
        let body: Value = match serde_json::from_slice(body) {
            Ok(value @ Value::Object(_)) => value,
            _ => return invalid_body("The body must be a JSON object.", request_id),
        };
        let value = match body.get("Value").and_then(Value::as_str) {
            Some(v) if !v.trim().is_empty() => v.to_owned(),
            _ => return invalid_body("Value is required.", request_id),
        };
        let add = match body.get("Action").and_then(Value::as_str) {
            Some("Add") => true,
            Some("Remove") => false,
            _ => return invalid_body("Action must be Add or Remove.", request_id),
        };
        let Some(&index) = st.machine_index.get(&id.to_ascii_lowercase()) else {
            return machine_not_found(id, request_id);
        };
        let machine = &mut st.machines[index];
        if add {
            if !machine.machine_tags.contains(&value) {
                machine.machine_tags.push(value);
            }
        } else {
            machine.machine_tags.retain(|t| *t != value);
        }
        let machine_id = machine.id.clone();
        *st.actions
            .entry((machine_id, "tag".to_owned()))
            .or_default() += 1;
        Reply::json(
            200,
            &self.with_context(&st.machines[index], "Machines/$entity"),
        )
    }

    fn live_response(
        &self,
        st: &mut State,
        id: &str,
        client: &str,
        body: &[u8],
        request_id: &str,
    ) -> Reply {
        let commands = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| v.get("Commands").and_then(Value::as_array).cloned());
        let Some(commands) = commands.filter(|c| !c.is_empty()) else {
            return invalid_body("Commands must be a non-empty array.", request_id);
        };
        let Some(&index) = st.machine_index.get(&id.to_ascii_lowercase()) else {
            return machine_not_found(id, request_id);
        };
        let machine_id = st.machines[index].id.clone();
        *st.actions
            .entry((machine_id.clone(), "liveresponse".to_owned()))
            .or_default() += 1;
        let at = data::iso_now();
        let mut reply = Reply::json(
            201,
            &json!({
                "@odata.context": format!("{}/api/$metadata#MachineActions/$entity", self.base_url),
                "id": new_uuid(&mut st.id_rng),
                "type": "LiveResponse",
                "requestor": client,
                "status": "Pending",
                "machineId": machine_id,
                "commands": commands,
                "creationDateTimeUtc": at,
                "lastUpdateDateTimeUtc": at,
            }),
        );
        reply.delay = self.config.real(self.config.live_response_delay);
        reply
    }

    fn hunt(&self, st: &State, body: &[u8], request_id: &str) -> Reply {
        let query = match serde_json::from_slice::<Value>(body) {
            Ok(v) => v.get("Query").and_then(Value::as_str).map(str::to_owned),
            Err(_) => None,
        };
        let Some(query) = query.filter(|q| !q.trim().is_empty()) else {
            return Reply::error(400, "BadRequest", "Query is required.", request_id);
        };
        // Markers that make the service's two "ran, but failed" answers on demand.
        let failed = if query.contains("quotagate:too-large") {
            Some(
                "Query execution has exceeded the allowed result size. Optimize your query by taking fewer rows and/or fewer columns.",
            )
        } else if query.contains("quotagate:preempted") {
            Some("Query execution was preempted. Please try again later.")
        } else {
            None
        };
        if let Some(message) = failed {
            let mut reply = Reply::error(400, "BadRequest", message, request_id);
            reply.delay = self.config.real(self.config.hunting_delay);
            return reply;
        }
        let rows = take_count(&query)
            .unwrap_or(usize::MAX)
            .min(st.machines.len())
            .min(HUNTING_MAX_ROWS);
        let results: Vec<Value> = st.machines[..rows]
            .iter()
            .map(|m| {
                json!({
                    "Timestamp": m.last_seen,
                    "DeviceId": m.id,
                    "DeviceName": m.computer_dns_name,
                    "OSPlatform": m.os_platform,
                    "HealthStatus": m.health_status,
                })
            })
            .collect();
        let mut reply = Reply::json(
            200,
            &json!({
                "Schema": [
                    {"Name": "Timestamp", "Type": "DateTime"},
                    {"Name": "DeviceId", "Type": "String"},
                    {"Name": "DeviceName", "Type": "String"},
                    {"Name": "OSPlatform", "Type": "String"},
                    {"Name": "HealthStatus", "Type": "String"},
                ],
                "Results": results,
                "Stats": {
                    "ExecutionTime": self.config.hunting_delay.as_secs_f64(),
                    "dataset_statistics": [{"table_row_count": rows}],
                },
            }),
        );
        reply.delay = self.config.real(self.config.hunting_delay);
        reply
    }
}

fn batch_update(body: &[u8], request_id: &str) -> Reply {
    let ids = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("alertIds").and_then(Value::as_array).cloned());
    match ids {
        Some(ids) if !ids.is_empty() && ids.iter().all(Value::is_string) => Reply::empty(200),
        _ => invalid_body(
            "alertIds must be a non-empty array of alert ids.",
            request_id,
        ),
    }
}

fn invalid_body(message: &str, request_id: &str) -> Reply {
    Reply::error(400, "InvalidRequestBody", message, request_id)
}

fn machine_not_found(id: &str, request_id: &str) -> Reply {
    Reply::error(
        404,
        "ResourceNotFound",
        &format!("Machine {id} was not found"),
        request_id,
    )
}

/// Azure AD's error shape: `{"error","error_description","error_codes",...}`.
/// The comment and isolation type of an isolate request's body, or why it is refused.
fn isolation_request(body: &[u8]) -> Result<(String, &'static str), &'static str> {
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(body) else {
        return Err("The body must be a JSON object.");
    };
    let Some(comment) = body.get("Comment").and_then(Value::as_str) else {
        return Err("Comment is required.");
    };
    let kind = match body.get("IsolationType") {
        None | Some(Value::Null) => "Full",
        Some(Value::String(s)) => ["Full", "Selective", "UnManagedDevice"]
            .into_iter()
            .find(|k| k == s)
            .ok_or("IsolationType must be Full, Selective or UnManagedDevice.")?,
        Some(_) => return Err("IsolationType must be Full, Selective or UnManagedDevice."),
    };
    Ok((comment.to_owned(), kind))
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

/// A call of the token endpoint.
struct TokenCall<'a> {
    /// The tenant in the path.
    tenant: &'a str,
    /// Whether it is the v2.0 endpoint (scope rather than resource).
    v2: bool,
    /// The endpoint's URL, the audience of a client assertion.
    url: &'a str,
    /// The form.
    body: &'a [u8],
}

/// Why the token endpoint refuses a client: the HTTP status, the OAuth error, the AADSTS
/// code and its text.
struct Refusal {
    status: u16,
    error: &'static str,
    code: u32,
    text: String,
}

impl Refusal {
    fn new(status: u16, error: &'static str, code: u32, text: impl Into<String>) -> Self {
        Self {
            status,
            error,
            code,
            text: text.into(),
        }
    }
}

fn aad_error(status: u16, error: &str, code: u32, text: &str, request_id: &str) -> Reply {
    let timestamp = data::iso_now();
    Reply::json(
        status,
        &json!({
            "error": error,
            "error_description": format!(
                "AADSTS{code}: {text} Trace ID: {request_id} Correlation ID: {request_id} Timestamp: {timestamp}"
            ),
            "error_codes": [code],
            "timestamp": timestamp,
            "trace_id": request_id,
            "correlation_id": request_id,
        }),
    )
}

/// `$top` and `$skip` of a list request, and the other parameters as received.
struct Page<'a> {
    top: usize,
    skip: usize,
    kept: Vec<&'a str>,
}

fn paging(query: Option<&str>, page_size_max: usize) -> Result<Page<'_>, String> {
    let mut page = Page {
        top: page_size_max,
        skip: 0,
        kept: Vec::new(),
    };
    for part in query.unwrap_or("").split('&') {
        if query.is_none() {
            break;
        }
        let (name, value) = part.split_once('=').unwrap_or((part, ""));
        let name = percent_decode(name, true);
        let number = || {
            percent_decode(value, true)
                .trim()
                .parse::<usize>()
                .map_err(|_| format!("Invalid value '{value}' for query option {name}."))
        };
        if name.eq_ignore_ascii_case("$skip") {
            page.skip = number()?;
            continue;
        }
        if name.eq_ignore_ascii_case("$top") {
            page.top = number()?.min(page_size_max);
        }
        page.kept.push(part);
    }
    Ok(page)
}

/// The `take N` or `limit N` of a KQL query, if any.
fn take_count(query: &str) -> Option<usize> {
    let words: Vec<&str> = query
        .split(|c: char| c.is_whitespace() || c == '|' || c == ';')
        .filter(|w| !w.is_empty())
        .collect();
    words.windows(2).find_map(|w| {
        (w[0].eq_ignore_ascii_case("take") || w[0].eq_ignore_ascii_case("limit"))
            .then(|| w[1].parse().ok())
            .flatten()
    })
}

/// `application/x-www-form-urlencoded` fields.
fn parse_form(body: &[u8]) -> HashMap<String, String> {
    String::from_utf8_lossy(body)
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k, true), percent_decode(v, true))
        })
        .collect()
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

    #[test]
    fn paging_keeps_raw_parameters() {
        let p = paging(Some("$filter=a%20eq%20'b'&%24top=5&$skip=10"), 100).unwrap();
        assert_eq!((p.top, p.skip), (5, 10));
        assert_eq!(p.kept, vec!["$filter=a%20eq%20'b'", "%24top=5"]);
        let p = paging(Some("$top=500"), 100).unwrap();
        assert_eq!(p.top, 100);
        assert!(paging(Some("$top=x"), 100).is_err());
        let p = paging(None, 7).unwrap();
        assert_eq!((p.top, p.skip, p.kept.len()), (7, 0, 0));
    }

    #[test]
    fn kql_take() {
        assert_eq!(take_count("DeviceInfo | take 5"), Some(5));
        assert_eq!(take_count("DeviceInfo|limit 7"), Some(7));
        assert_eq!(take_count("DeviceInfo"), None);
    }
}
