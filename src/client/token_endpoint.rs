//! The token endpoint: a token request's form posted through the client's transport,
//! retried within the client's policy, and the endpoint's answer read.

use super::bounds::{MAX_TOKEN_LIFETIME, bounded_secs};
use super::error::{Error, ErrorDetails};
use super::http::{self, Failure};
use super::response::Response;
use super::retry::{RetryPolicy, retry_after};
use super::secret::Secret;
use super::{Cancel, deadline};
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

/// The largest token answer read.
const MAX_TOKEN_ANSWER: u64 = 1 << 20;

/// What the token cache needs of its client to fetch a token for one call: a way to post
/// a form to the token endpoint, and the call's stops (its cancel handle and deadline,
/// the client's close), so that a fetch ends when the call must.
pub(crate) trait TokenTransport {
    /// Posts `form` (`application/x-www-form-urlencoded`) to `url`, within what is left
    /// of the call's deadline.
    fn post_form(&self, url: &str, form: &[u8]) -> Result<Response, Failure>;
    /// Fails once the call is cancelled, its deadline passed or the client closed.
    fn check(&self) -> Result<(), Error>;
    /// Sleeps `d`, failing early as [`check`](Self::check) does.
    fn sleep(&self, d: Duration) -> Result<(), Error>;
}

/// The client's way to the token endpoint for one call: its pooled HTTP agent, under the
/// call's cancel handle and deadline and the client's close.
pub(crate) struct AgentTransport<'a> {
    pub(crate) agent: &'a ureq::Agent,
    pub(crate) closed: &'a AtomicBool,
    pub(crate) cancel: &'a Cancel,
}

impl TokenTransport for AgentTransport<'_> {
    fn post_form(&self, url: &str, form: &[u8]) -> Result<Response, Failure> {
        let headers = [(
            "content-type".to_string(),
            "application/x-www-form-urlencoded".to_string(),
        )];
        http::exchange(
            self.agent,
            "POST",
            url,
            &headers,
            Some(form),
            MAX_TOKEN_ANSWER,
            deadline::attempt_limit(self.cancel.deadline),
        )
    }

    fn check(&self) -> Result<(), Error> {
        self.cancel.check(self.closed)
    }

    fn sleep(&self, d: Duration) -> Result<(), Error> {
        self.cancel.sleep(self.closed, d)
    }
}

/// The token endpoint of one client: its URL, how its requests are retried, and how many
/// were sent.
#[derive(Debug)]
pub(crate) struct TokenEndpoint {
    url: String,
    policy: RetryPolicy,
    /// Token requests sent (and calls of a token provider, which stand for them).
    requests: AtomicU64,
}

impl TokenEndpoint {
    pub(super) fn new(url: String, policy: RetryPolicy) -> Self {
        Self {
            url,
            policy,
            requests: AtomicU64::new(0),
        }
    }

    pub(super) fn url(&self) -> &str {
        &self.url
    }

    /// The token requests counted so far.
    pub(super) fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub(super) fn count_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Posts a token request's form. Retries 429s (honouring Retry-After), 5xx and
    /// transport failures within the client's retry policy.
    pub(super) fn post_form(
        &self,
        transport: &dyn TokenTransport,
        form: &dyn Fn() -> Result<Secret, Error>,
    ) -> Result<(Secret, Duration), Error> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            transport.check()?;
            self.count_request();
            let body = form()?;
            let result = transport.post_form(&self.url, body.expose().as_bytes());
            drop(body);
            let wait = match result {
                Ok(r) => match self.on_answer(&r, attempt)? {
                    ControlFlow::Break(token) => return Ok(token),
                    ControlFlow::Continue(wait) => wait,
                },
                Err(f) => self.on_failure(transport, f, attempt)?,
            };
            log::debug!(
                "token request {attempt} failed; retrying in {} ms",
                wait.as_millis()
            );
            transport.sleep(wait)?;
        }
    }

    /// What the token endpoint's answer to `attempt` means: the token, the wait before
    /// the next attempt (a 429 or 5xx while attempts remain), or the error that ends
    /// the fetch.
    fn on_answer(
        &self,
        r: &Response,
        attempt: u32,
    ) -> Result<ControlFlow<(Secret, Duration), Duration>, Error> {
        if r.is_success() {
            return parse_token(r).map(ControlFlow::Break);
        }
        let refused = |why: &str| {
            let mut d = r.error_details();
            d.attempts = attempt;
            Error::Auth(why.into(), Box::new(d))
        };
        if r.status() != 429 && r.status() < 500 {
            return Err(refused("the token endpoint refused the credentials"));
        }
        if attempt >= self.policy.max_attempts {
            return Err(refused("the token endpoint kept refusing"));
        }
        let hint = retry_after(|n| r.header(n), SystemTime::now());
        Ok(ControlFlow::Continue(
            hint.unwrap_or_else(|| self.policy.backoff(attempt - 1)),
        ))
    }

    /// The wait before the next attempt after token request `attempt` got no answer, or
    /// the error that ends the fetch.
    fn on_failure(
        &self,
        transport: &dyn TokenTransport,
        f: Failure,
        attempt: u32,
    ) -> Result<Duration, Error> {
        // A token request cut short by the call's deadline is that deadline's.
        transport.check()?;
        if attempt < self.policy.max_attempts {
            return Ok(self.policy.backoff(attempt - 1));
        }
        // Nothing refused the credentials: the network failed.
        let details = Box::new(ErrorDetails {
            attempts: attempt,
            ..Default::default()
        });
        let message = format!("the token endpoint is unreachable: {}", f.message);
        Err(if f.timeout {
            Error::Timeout(message, details)
        } else {
            Error::Transport(message, details)
        })
    }
}

/// The token and its lifetime from a token endpoint's answer.
fn parse_token(r: &Response) -> Result<(Secret, Duration), Error> {
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
pub(crate) mod tests {
    use super::*;
    use parking_lot::Mutex;
    use proptest::prelude::*;

    pub(crate) fn answer(body: &str) -> Response {
        Response::new(200, Vec::new(), body.as_bytes().to_vec())
    }

    fn check_token_answer(body: &[u8]) {
        let r = Response::new(200, Vec::new(), body.to_vec());
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

    /// A token endpoint that gives scripted outcomes, and records the forms and waits.
    #[derive(Default)]
    pub(crate) struct Scripted {
        pub(crate) outcomes: Mutex<std::collections::VecDeque<Result<Response, Failure>>>,
        pub(crate) forms: Mutex<Vec<String>>,
        pub(crate) slept: Mutex<Vec<Duration>>,
    }

    impl TokenTransport for Scripted {
        fn post_form(&self, url: &str, form: &[u8]) -> Result<Response, Failure> {
            assert_eq!(url, "https://login.example/t/oauth2/v2.0/token");
            self.forms
                .lock()
                .push(String::from_utf8(form.to_vec()).unwrap());
            self.outcomes
                .lock()
                .pop_front()
                .expect("no request past the script")
        }

        fn check(&self) -> Result<(), Error> {
            Ok(())
        }

        fn sleep(&self, d: Duration) -> Result<(), Error> {
            self.slept.lock().push(d);
            Ok(())
        }
    }

    pub(crate) fn status(code: u16, headers: &[(&str, &str)]) -> Result<Response, Failure> {
        let headers = headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        Ok(Response::new(code, headers, b"{}".to_vec()))
    }

    pub(crate) fn unreachable(timeout: bool) -> Result<Response, Failure> {
        Err(Failure {
            message: "connection reset".into(),
            not_sent: false,
            timeout,
            body_too_large: None,
            invalid: false,
        })
    }

    pub(crate) fn scripted(outcomes: Vec<Result<Response, Failure>>) -> Scripted {
        let s = Scripted::default();
        *s.outcomes.lock() = outcomes.into();
        s
    }

    fn endpoint(max_attempts: u32) -> TokenEndpoint {
        TokenEndpoint::new(
            "https://login.example/t/oauth2/v2.0/token".into(),
            RetryPolicy {
                max_attempts,
                base_backoff: Duration::from_millis(40),
                ..RetryPolicy::default()
            },
        )
    }

    fn post(max_attempts: u32, to: &Scripted) -> Result<(Secret, Duration), Error> {
        endpoint(max_attempts).post_form(to, &|| Ok(Secret::from("grant_type=client_credentials")))
    }

    #[test]
    fn a_token_request_ends_on_refusal_or_when_its_attempts_run_out() {
        let refused = scripted(vec![status(400, &[])]);
        match post(4, &refused) {
            Err(Error::Auth(m, d)) => {
                assert!(m.contains("refused the credentials"), "{m}");
                assert_eq!((d.status, d.attempts), (Some(400), 1));
            }
            other => panic!("{other:?}"),
        }
        let throttled = scripted(vec![status(429, &[]), status(500, &[])]);
        match post(2, &throttled) {
            Err(Error::Auth(m, d)) => {
                assert!(m.contains("kept refusing"), "{m}");
                assert_eq!((d.status, d.attempts), (Some(500), 2));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(throttled.slept.lock().len(), 1);
        let down = scripted(vec![unreachable(false), unreachable(true)]);
        match post(2, &down) {
            Err(Error::Timeout(m, d)) => {
                assert!(m.contains("unreachable: connection reset"), "{m}");
                assert_eq!(d.attempts, 2);
            }
            other => panic!("{other:?}"),
        }
        let down = scripted(vec![unreachable(false)]);
        assert!(matches!(post(1, &down), Err(Error::Transport(..))));
    }
}
