//! The simulator's token endpoint: the grant, the tenant, the client's secret or signed
//! assertion, and the token it issues.

use super::*;

impl Core {
    /// The token endpoint: counts the call in the token class, authenticates the client
    /// (secret or assertion) and issues the token.
    pub(super) fn token(
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
        crate::sim::assertion::verify(
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
}

/// A call of the token endpoint.
pub(super) struct TokenCall<'a> {
    /// The tenant in the path.
    pub(super) tenant: &'a str,
    /// Whether it is the v2.0 endpoint (scope rather than resource).
    pub(super) v2: bool,
    /// The endpoint's URL, the audience of a client assertion.
    pub(super) url: &'a str,
    /// The form.
    pub(super) body: &'a [u8],
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
