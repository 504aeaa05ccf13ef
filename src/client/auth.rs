//! Access tokens: fetched on first use, cached, refreshed before `expires_in` runs out,
//! one refresh at a time while the other threads keep using the current token or wait.

use super::bounds::{MAX_TOKEN_LIFETIME, at_most, bounded_secs, instant_after};
use super::certificate::{ASSERTION_TYPE, CertificateCredential};
use super::error::{Error, ErrorDetails};
use super::http::{encode, exchange};
use super::secret::Secret;
use super::{Cancel, ClientShared};
use parking_lot::{Condvar, Mutex};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// A function that returns an access token and how long it stays valid, or a text that
/// says why it could not. See [`Credentials::Provider`].
pub type TokenProvider = Arc<dyn Fn() -> Result<(Secret, Duration), String> + Send + Sync>;

/// How the client obtains tokens.
#[derive(Clone)]
pub enum Credentials {
    /// OAuth2 client credentials with a client secret.
    ClientSecret {
        /// The tenant (directory) id.
        tenant_id: String,
        /// The application (client) id.
        client_id: String,
        /// The client secret.
        secret: Secret,
    },
    /// OAuth2 client credentials with a certificate: each token request carries a client
    /// assertion signed with the certificate's private key.
    Certificate {
        /// The tenant (directory) id.
        tenant_id: String,
        /// The application (client) id.
        client_id: String,
        /// The certificate and its private key.
        certificate: CertificateCredential,
    },
    /// A token obtained elsewhere, used as is.
    AccessToken(Secret),
    /// Tokens from a function of the caller's (a managed identity, a vault, another
    /// library): the client caches each token for the lifetime returned, asks for the next
    /// one a fifth of that lifetime early (at most five minutes), and after a 401. Calls
    /// come from whichever thread needs a token, one at a time per client, never while
    /// another is under way.
    Provider(TokenProvider),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::ClientSecret {
                tenant_id,
                client_id,
                secret,
            } => f
                .debug_struct("ClientSecret")
                .field("tenant_id", tenant_id)
                .field("client_id", client_id)
                .field("secret", secret)
                .finish(),
            Credentials::Certificate {
                tenant_id,
                client_id,
                certificate,
            } => f
                .debug_struct("Certificate")
                .field("tenant_id", tenant_id)
                .field("client_id", client_id)
                .field("certificate", certificate)
                .finish(),
            Credentials::AccessToken(t) => f.debug_tuple("AccessToken").field(t).finish(),
            Credentials::Provider(_) => f.write_str("Provider(..)"),
        }
    }
}

impl Credentials {
    /// Tokens from `provider`; see [`Credentials::Provider`].
    pub fn provider(
        provider: impl Fn() -> Result<(Secret, Duration), String> + Send + Sync + 'static,
    ) -> Self {
        Credentials::Provider(Arc::new(provider))
    }
}

/// A cached token.
#[derive(Debug)]
pub(crate) struct Token {
    pub(crate) value: Secret,
    /// From here on one thread refreshes it while the others keep using it.
    refresh_at: Instant,
    /// From here on nobody uses it.
    expires_at: Instant,
    pub(crate) generation: u64,
}

#[derive(Default)]
struct State {
    token: Option<Arc<Token>>,
    refreshing: bool,
    generation: u64,
}

/// The token cache of one client.
pub(crate) struct Auth {
    credentials: Credentials,
    token_url: String,
    /// `scope=...` (v2) or `resource=...` (v1).
    audience: (&'static str, String),
    state: Mutex<State>,
    refreshed: Condvar,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("credentials", &self.credentials)
            .field("token_url", &self.token_url)
            .finish_non_exhaustive()
    }
}

/// How early a token is refreshed: a fifth of its life, at most five minutes.
fn refresh_margin(lifetime: Duration) -> Duration {
    (lifetime / 5).min(Duration::from_secs(300))
}

impl Auth {
    pub(crate) fn new(
        credentials: Credentials,
        authority: &str,
        scope: Option<String>,
        resource: Option<String>,
        api_base: &str,
    ) -> Self {
        let tenant = match &credentials {
            Credentials::ClientSecret { tenant_id, .. }
            | Credentials::Certificate { tenant_id, .. } => tenant_id.as_str(),
            Credentials::AccessToken(_) | Credentials::Provider(_) => "",
        };
        let authority = authority.trim_end_matches('/');
        let origin = api_base.trim_end_matches('/').to_string();
        let (token_url, audience) = match (scope, resource) {
            (_, Some(r)) => (
                format!("{authority}/{tenant}/oauth2/token"),
                ("resource", r),
            ),
            (Some(s), None) => (
                format!("{authority}/{tenant}/oauth2/v2.0/token"),
                ("scope", s),
            ),
            (None, None) => (
                format!("{authority}/{tenant}/oauth2/v2.0/token"),
                ("scope", format!("{origin}/.default")),
            ),
        };
        Self {
            credentials,
            token_url,
            audience,
            state: Mutex::new(State::default()),
            refreshed: Condvar::new(),
        }
    }

    pub(crate) fn token_url(&self) -> &str {
        &self.token_url
    }

    pub(crate) fn audience(&self) -> &str {
        &self.audience.1
    }

    /// The audience as a v2 scope (a v1 resource `R` is the scope `R/.default`).
    pub(crate) fn scope(&self) -> String {
        match self.audience.0 {
            "resource" => format!("{}/.default", self.audience.1.trim_end_matches('/')),
            _ => self.audience.1.clone(),
        }
    }

    /// A token valid now, fetching or refreshing it if needed.
    pub(crate) fn token(
        &self,
        client: &ClientShared,
        cancel: &Cancel,
    ) -> Result<Arc<Token>, Error> {
        if let Credentials::AccessToken(t) = &self.credentials {
            return Ok(Arc::new(Token {
                value: t.clone(),
                refresh_at: Instant::now() + Duration::from_secs(3600),
                expires_at: Instant::now() + Duration::from_secs(3600),
                generation: 0,
            }));
        }
        let mut st = self.state.lock();
        loop {
            let now = Instant::now();
            if let Some(t) = &st.token {
                if now < t.refresh_at || (now < t.expires_at && st.refreshing) {
                    return Ok(t.clone());
                }
            }
            if !st.refreshing {
                break;
            }
            if self.fetching_on_this_thread() {
                // The credentials' own source called back into this client: waiting for
                // itself would never end.
                return Err(Error::Reentrant(
                    "the token provider sent a call with the client it provides tokens for, which would wait for that very token"
                        .into(),
                ));
            }
            // Another thread is fetching; wait for it, staying responsive to cancel.
            self.refreshed.wait_for(&mut st, Duration::from_millis(50));
            cancel.check(client)?;
        }
        // Cleared on every way out of the fetch, unwinding included, so that a failed
        // refresh fails only the calls that waited for it.
        let refresh = Refresh::start(self, st);
        let fetched = self.fetch(client, cancel);
        let mut st = refresh.finish();
        let (value, lifetime) = fetched?;
        let lifetime = at_most(lifetime, MAX_TOKEN_LIFETIME, "a token lifetime");
        st.generation += 1;
        let now = Instant::now();
        let expires_at = instant_after(now, lifetime);
        let token = Arc::new(Token {
            value,
            refresh_at: expires_at
                .checked_sub(refresh_margin(lifetime))
                .unwrap_or(now),
            expires_at,
            generation: st.generation,
        });
        st.token = Some(token.clone());
        log::debug!(
            "obtained an access token valid for {} s",
            lifetime.as_secs()
        );
        Ok(token)
    }

    /// True while this thread runs this cache's fetch (a provider calling back into its
    /// own client).
    fn fetching_on_this_thread(&self) -> bool {
        FETCHING.with(|f| f.borrow().contains(&(self as *const Auth as usize)))
    }

    /// Forgets the token of `generation` after the API refused it (a 401), unless a newer
    /// one replaced it already. Returns false for a fixed access token.
    pub(crate) fn invalidate(&self, generation: u64) -> bool {
        if matches!(self.credentials, Credentials::AccessToken(_)) {
            return false;
        }
        let mut st = self.state.lock();
        if st
            .token
            .as_ref()
            .is_some_and(|t| t.generation == generation)
        {
            st.token = None;
        }
        true
    }

    /// Obtains a token, (value, lifetime), from the credentials' source.
    fn fetch(&self, client: &ClientShared, cancel: &Cancel) -> Result<(Secret, Duration), Error> {
        match &self.credentials {
            Credentials::ClientSecret {
                client_id, secret, ..
            } => {
                let form = || {
                    Ok(Secret::new(format!(
                        "grant_type=client_credentials&client_id={}&client_secret={}&{}={}",
                        encode(client_id),
                        encode(secret.expose()),
                        self.audience.0,
                        encode(&self.audience.1)
                    )))
                };
                self.post_form(client, cancel, &form)
            }
            Credentials::Certificate {
                client_id,
                certificate,
                ..
            } => {
                // A fresh assertion (and jti) for every attempt: the identity platform
                // refuses an assertion it has seen.
                let form = || {
                    let assertion = certificate.assertion(&self.token_url, client_id)?;
                    Ok(Secret::new(format!(
                        "grant_type=client_credentials&client_id={}&client_assertion_type={}&client_assertion={}&{}={}",
                        encode(client_id),
                        encode(ASSERTION_TYPE),
                        assertion,
                        self.audience.0,
                        encode(&self.audience.1)
                    )))
                };
                self.post_form(client, cancel, &form)
            }
            Credentials::Provider(provider) => {
                client
                    .counters
                    .token_requests
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                call_provider(provider)
            }
            Credentials::AccessToken(_) => unreachable!("fixed tokens are never fetched"),
        }
    }

    /// Posts a token request's form. Retries 429s (honouring Retry-After), 5xx and
    /// transport failures within the client's retry policy.
    fn post_form(
        &self,
        client: &ClientShared,
        cancel: &Cancel,
        form: &dyn Fn() -> Result<Secret, Error>,
    ) -> Result<(Secret, Duration), Error> {
        let headers = vec![(
            "content-type".to_string(),
            "application/x-www-form-urlencoded".to_string(),
        )];
        let policy = client.policy;
        let mut attempt = 0;
        loop {
            attempt += 1;
            cancel.check(client)?;
            client
                .counters
                .token_requests
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let body = form()?;
            let result = exchange(
                &client.agent,
                "POST",
                &self.token_url,
                &headers,
                Some(body.expose().as_bytes()),
                1 << 20,
                super::deadline::attempt_limit(cancel.deadline),
            );
            drop(body);
            let wait = match result {
                Ok(r) if r.is_success() => return parse_token(&r),
                Ok(r) if r.status() == 429 || r.status() >= 500 => {
                    let hint = super::retry::retry_after(|n| r.header(n), SystemTime::now());
                    if attempt >= policy.max_attempts {
                        let mut d = r.error_details();
                        d.attempts = attempt;
                        return Err(Error::Auth(
                            "the token endpoint kept refusing".into(),
                            Box::new(d),
                        ));
                    }
                    hint.unwrap_or_else(|| policy.backoff(attempt - 1))
                }
                Ok(r) => {
                    let mut d = r.error_details();
                    d.attempts = attempt;
                    return Err(Error::Auth(
                        "the token endpoint refused the credentials".into(),
                        Box::new(d),
                    ));
                }
                Err(f) => {
                    // A token request cut short by the call's deadline is that deadline's.
                    cancel.check(client)?;
                    if attempt >= policy.max_attempts {
                        // Nothing refused the credentials: the network failed.
                        let details = Box::new(ErrorDetails {
                            attempts: attempt,
                            ..Default::default()
                        });
                        let message = format!("the token endpoint is unreachable: {}", f.message);
                        return Err(if f.timeout {
                            Error::Timeout(message, details)
                        } else {
                            Error::Transport(message, details)
                        });
                    }
                    policy.backoff(attempt - 1)
                }
            };
            log::debug!(
                "token request {attempt} failed; retrying in {} ms",
                wait.as_millis()
            );
            cancel.sleep(client, wait)?;
        }
    }
}

thread_local! {
    /// The token caches whose fetch runs on this thread, by address.
    static FETCHING: std::cell::RefCell<Vec<usize>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The single-flight refresh under way on this thread: `refreshing` is set while it
/// lives and cleared when it ends, however it ends, waking the threads that wait.
struct Refresh<'a> {
    auth: &'a Auth,
    done: bool,
}

impl<'a> Refresh<'a> {
    /// Marks the refresh as running and releases the lock for the fetch.
    fn start(auth: &'a Auth, mut st: parking_lot::MutexGuard<'_, State>) -> Self {
        st.refreshing = true;
        drop(st);
        FETCHING.with(|f| f.borrow_mut().push(auth as *const Auth as usize));
        Self { auth, done: false }
    }

    /// Ends the refresh and hands back the locked state.
    fn finish(mut self) -> parking_lot::MutexGuard<'a, State> {
        self.done = true;
        self.end()
    }

    fn end(&self) -> parking_lot::MutexGuard<'a, State> {
        let me = self.auth as *const Auth as usize;
        FETCHING.with(|f| {
            let mut f = f.borrow_mut();
            if let Some(i) = f.iter().rposition(|&a| a == me) {
                f.remove(i);
            }
        });
        let mut st = self.auth.state.lock();
        st.refreshing = false;
        self.auth.refreshed.notify_all();
        st
    }
}

impl Drop for Refresh<'_> {
    fn drop(&mut self) {
        if !self.done {
            drop(self.end());
        }
    }
}

/// The longest lifetime a token provider may state: the identity platform's tokens live
/// 1 to 24 hours, and a longer one is an expiry instant passed as a lifetime.
const MAX_PROVIDED_LIFETIME: Duration = super::bounds::MAX_TOKEN_LIFETIME;

/// Calls the caller's token function; a panic in it becomes an `Error::Auth` of the call
/// that needed the token instead of unwinding through the client.
fn call_provider(provider: &TokenProvider) -> Result<(Secret, Duration), Error> {
    let auth_error = |m: String| Error::Auth(m, Box::default());
    let answer = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| provider()))
        .map_err(|_| auth_error("the token provider panicked".into()))?;
    let (token, lifetime) =
        answer.map_err(|why| auth_error(format!("the token provider failed: {why}")))?;
    if token.is_empty() {
        return Err(auth_error(
            "the token provider returned an empty token".into(),
        ));
    }
    if lifetime.is_zero() {
        return Err(auth_error(
            "the token provider returned a token with no lifetime".into(),
        ));
    }
    if lifetime > MAX_PROVIDED_LIFETIME {
        return Err(auth_error(format!(
            "the token provider returned a lifetime of {} s, over 24 hours: it must be the \
             seconds the token stays valid, not the instant it expires (such as \
             azure-identity's expires_on, an epoch time)",
            lifetime.as_secs()
        )));
    }
    Ok((token, lifetime))
}

fn parse_token(r: &super::Response) -> Result<(Secret, Duration), Error> {
    #[derive(serde::Deserialize)]
    struct Answer {
        access_token: String,
        expires_in: Option<serde_json::Value>,
    }
    let bad = |m: &str| {
        Error::Auth(
            m.to_string(),
            Box::new(ErrorDetails {
                status: Some(r.status()),
                ..Default::default()
            }),
        )
    };
    let a: Answer = r
        .json()
        .map_err(|_| bad("the token endpoint's answer is not a token"))?;
    // v1 sends expires_in as a string, v2 as a number.
    let secs = match a.expires_in {
        Some(serde_json::Value::Number(n)) => n.as_f64(),
        Some(serde_json::Value::String(s)) => s.parse().ok(),
        _ => None,
    }
    .filter(|s| *s > 0.0)
    .and_then(|s| bounded_secs(s, MAX_TOKEN_LIFETIME, "a token lifetime"))
    // A positive number below a nanosecond is no lifetime either.
    .filter(|d| !d.is_zero())
    .ok_or_else(|| bad("the token endpoint's answer has no valid expires_in"))?;
    Ok((Secret::new(a.access_token), secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_provided_lifetime_over_a_day_is_an_expiry_instant_and_refused() {
        let day = Duration::from_secs(24 * 3600);
        let provider: TokenProvider = Arc::new(move || Ok((Secret::from("t"), day)));
        assert!(call_provider(&provider).is_ok());
        let epoch: TokenProvider =
            Arc::new(|| Ok((Secret::from("t"), Duration::from_secs(1_764_000_000))));
        let e = call_provider(&epoch).unwrap_err().to_string();
        assert!(
            e.contains("over 24 hours") && e.contains("expires_on"),
            "{e}"
        );
    }

    #[test]
    fn refresh_margin_is_a_fifth_up_to_five_minutes() {
        assert_eq!(
            refresh_margin(Duration::from_secs(3599)),
            Duration::from_secs(300)
        );
        assert_eq!(
            refresh_margin(Duration::from_secs(10)),
            Duration::from_secs(2)
        );
    }

    fn answer(body: &str) -> super::super::Response {
        super::super::Response::new(200, Vec::new(), body.as_bytes().to_vec())
    }

    fn check_token_answer(body: &[u8]) {
        let r = super::super::Response::new(200, Vec::new(), body.to_vec());
        if let Ok((_, lifetime)) = parse_token(&r) {
            assert!(
                !lifetime.is_zero() && lifetime <= MAX_TOKEN_LIFETIME,
                "{lifetime:?} from {:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn fuzz_token_answer_corpus() {
        for (_, body) in crate::fuzz::corpus("token-answer") {
            check_token_answer(&body);
        }
    }

    proptest! {
        #![proptest_config(crate::fuzz::config())]

        #[test]
        fn fuzz_token_answers(
            expires in prop_oneof![
                "-?[0-9]{1,30}(\\.[0-9]{1,8})?([eE][+-]?[0-9]{1,4})?",
                "\"[ +-]?[0-9]{0,30}(\\.[0-9]{0,8})?([eE][+-]?[0-9]{1,4})?\"",
                "\"(NaN|inf|-inf|infinity|1e400)\"",
                any::<String>().prop_map(|s| serde_json::Value::String(s).to_string()),
            ],
            bytes in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            check_token_answer(format!(r#"{{"access_token":"t","expires_in":{expires}}}"#).as_bytes());
            check_token_answer(&bytes);
        }
    }

    #[test]
    fn huge_lifetimes_are_cut_and_nonsense_is_refused_never_a_panic() {
        for expires in ["1e20", "1e19", "\"1e300\"", "18446744073709551616"] {
            let body = format!(r#"{{"access_token":"t","expires_in":{expires}}}"#);
            let (_, lifetime) = parse_token(&answer(&body)).unwrap();
            assert_eq!(lifetime, MAX_TOKEN_LIFETIME, "{expires}");
        }
        let (_, lifetime) =
            parse_token(&answer(r#"{"access_token":"t","expires_in":"3599"}"#)).unwrap();
        assert_eq!(lifetime, Duration::from_secs(3599));
        for expires in ["0", "-1", "\"NaN\"", "\"inf\"", "\"1e400\"", "null", "true"] {
            let body = format!(r#"{{"access_token":"t","expires_in":{expires}}}"#);
            assert!(
                matches!(parse_token(&answer(&body)), Err(Error::Auth(..))),
                "{expires}"
            );
        }
    }

    #[test]
    fn a_refresh_that_unwinds_still_ends() {
        let auth = Auth::new(
            Credentials::provider(|| Err("unused".into())),
            "https://login.example",
            None,
            None,
            "https://api.example",
        );
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _refresh = Refresh::start(&auth, auth.state.lock());
            assert!(auth.fetching_on_this_thread());
            panic!("a fetch that fails the hard way");
        }));
        assert!(unwound.is_err());
        assert!(
            !auth.state.lock().refreshing,
            "the flag outlived the refresh"
        );
        assert!(!auth.fetching_on_this_thread());
    }

    #[test]
    fn token_urls_and_audiences() {
        let creds = Credentials::ClientSecret {
            tenant_id: "t".into(),
            client_id: "c".into(),
            secret: "s".into(),
        };
        let v2 = Auth::new(
            creds.clone(),
            "https://login.example/",
            None,
            None,
            "https://api.example",
        );
        assert_eq!(v2.token_url, "https://login.example/t/oauth2/v2.0/token");
        assert_eq!(
            v2.audience,
            ("scope", "https://api.example/.default".to_string())
        );
        let v1 = Auth::new(
            creds,
            "https://login.example",
            None,
            Some("https://api.example".into()),
            "x",
        );
        assert_eq!(v1.token_url, "https://login.example/t/oauth2/token");
        assert_eq!(v1.audience.0, "resource");
        assert!(!format!("{v1:?}").contains("\"s\""), "{v1:?}");
        // Both ask a credential for a v2 scope.
        assert_eq!(v2.scope(), "https://api.example/.default");
        assert_eq!(v1.scope(), "https://api.example/.default");
    }
}
