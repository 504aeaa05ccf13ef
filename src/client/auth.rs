//! Access tokens: fetched on first use, cached, refreshed before `expires_in` runs out,
//! one refresh at a time while the other threads keep using the current token or wait.

use super::bounds::{MAX_TOKEN_LIFETIME, at_most, instant_after};
use super::certificate::ASSERTION_TYPE;
use super::credentials::{Credentials, call_provider};
use super::error::Error;
use super::http::encode;
use super::retry::RetryPolicy;
use super::secret::Secret;
use super::token_endpoint::{TokenEndpoint, TokenTransport};
use parking_lot::{Condvar, Mutex};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    endpoint: TokenEndpoint,
    /// `scope=...` (v2) or `resource=...` (v1).
    audience: (&'static str, String),
    state: Mutex<State>,
    refreshed: Condvar,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("credentials", &self.credentials)
            .field("token_url", &self.endpoint.url())
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
        policy: RetryPolicy,
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
            endpoint: TokenEndpoint::new(token_url, policy),
            audience,
            state: Mutex::new(State::default()),
            refreshed: Condvar::new(),
        }
    }

    /// The token requests sent (and provider calls made) so far.
    pub(crate) fn token_requests(&self) -> u64 {
        self.endpoint.requests()
    }

    pub(crate) fn token_url(&self) -> &str {
        self.endpoint.url()
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
    pub(crate) fn token(&self, transport: &dyn TokenTransport) -> Result<Arc<Token>, Error> {
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
            transport.check()?;
        }
        // Cleared on every way out of the fetch, unwinding included, so that a failed
        // refresh fails only the calls that waited for it.
        let refresh = Refresh::start(self, st);
        let fetched = self.fetch(transport);
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
    fn fetch(&self, transport: &dyn TokenTransport) -> Result<(Secret, Duration), Error> {
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
                self.endpoint.post_form(transport, &form)
            }
            Credentials::Certificate {
                client_id,
                certificate,
                ..
            } => {
                // A fresh assertion (and jti) for every attempt: the identity platform
                // refuses an assertion it has seen.
                let form = || {
                    let assertion = certificate.assertion(self.endpoint.url(), client_id)?;
                    Ok(Secret::new(format!(
                        "grant_type=client_credentials&client_id={}&client_assertion_type={}&client_assertion={}&{}={}",
                        encode(client_id),
                        encode(ASSERTION_TYPE),
                        assertion,
                        self.audience.0,
                        encode(&self.audience.1)
                    )))
                };
                self.endpoint.post_form(transport, &form)
            }
            Credentials::Provider(provider) => {
                self.endpoint.count_request();
                call_provider(provider)
            }
            Credentials::AccessToken(_) => unreachable!("fixed tokens are never fetched"),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::token_endpoint::tests::{answer, scripted, status, unreachable};

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

    #[test]
    fn a_refresh_that_unwinds_still_ends() {
        let auth = Auth::new(
            Credentials::provider(|| Err("unused".into())),
            "https://login.example",
            None,
            None,
            "https://api.example",
            RetryPolicy::default(),
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

    fn secret_auth(max_attempts: u32) -> Auth {
        Auth::new(
            Credentials::ClientSecret {
                tenant_id: "t".into(),
                client_id: "c".into(),
                secret: "s&1".into(),
            },
            "https://login.example",
            None,
            None,
            "https://api.example",
            RetryPolicy {
                max_attempts,
                base_backoff: Duration::from_millis(40),
                ..RetryPolicy::default()
            },
        )
    }

    #[test]
    fn a_token_request_waits_out_throttling_and_outages_then_caches_the_token() {
        let auth = secret_auth(4);
        let endpoint = scripted(vec![
            status(429, &[("retry-after", "2")]),
            status(503, &[]),
            unreachable(false),
            Ok(answer(r#"{"access_token":"fresh","expires_in":3599}"#)),
        ]);
        let token = auth.token(&endpoint).unwrap();
        assert_eq!(token.value.expose(), "fresh");
        assert_eq!(auth.token_requests(), 4);
        let slept = endpoint.slept.lock().clone();
        assert_eq!(slept.len(), 3, "{slept:?}");
        assert_eq!(slept[0], Duration::from_secs(2), "Retry-After is honoured");
        assert!(slept[1] <= Duration::from_millis(80), "{slept:?}");
        assert!(slept[2] <= Duration::from_millis(160), "{slept:?}");
        let forms = endpoint.forms.lock().clone();
        assert_eq!(forms.len(), 4);
        assert!(
            forms.iter().all(|f| f.contains("client_secret=s%261")
                && f.contains("scope=https%3A%2F%2Fapi.example%2F.default")),
            "{forms:?}"
        );
        // Cached: the next call asks nobody.
        assert_eq!(auth.token(&endpoint).unwrap().generation, token.generation);
        assert_eq!(auth.token_requests(), 4);
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
            RetryPolicy::default(),
        );
        assert_eq!(v2.token_url(), "https://login.example/t/oauth2/v2.0/token");
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
            RetryPolicy::default(),
        );
        assert_eq!(v1.token_url(), "https://login.example/t/oauth2/token");
        assert_eq!(v1.audience.0, "resource");
        assert!(!format!("{v1:?}").contains("\"s\""), "{v1:?}");
        // Both ask a credential for a v2 scope.
        assert_eq!(v2.scope(), "https://api.example/.default");
        assert_eq!(v1.scope(), "https://api.example/.default");
    }
}
