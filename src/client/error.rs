//! What a call can end with besides an answer, and the server's error details.

use std::time::Duration;

/// [`ErrorDetails::code`] of a hunting query held back by the run-time budget.
pub const HUNTING_BUDGET_SPENT: &str = "HuntingBudgetSpent";

/// The server's description of a failed call, from the body
/// `{"error":{"code","message","target"}}` and the `request-id` header.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorDetails {
    /// The HTTP status, when there was an answer.
    pub status: Option<u16>,
    /// `error.code`, such as `ResourceNotFound` or `TooManyRequests`.
    pub code: Option<String>,
    /// `error.message`.
    pub message: Option<String>,
    /// `error.target`: the correlation id to quote to support.
    pub target: Option<String>,
    /// The `request-id` header.
    pub request_id: Option<String>,
    /// The last wait the server asked for.
    pub retry_after: Option<Duration>,
    /// Attempts made.
    pub attempts: u32,
}

impl ErrorDetails {
    /// Reads the details of an answer: the error body (MDE's and the token endpoint's
    /// shapes) and the request id.
    pub fn from_answer(status: u16, body: &[u8], request_id: Option<&str>) -> Self {
        let mut d = ErrorDetails {
            status: Some(status),
            request_id: request_id.map(str::to_string),
            ..Default::default()
        };
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
            let text = |v: &serde_json::Value| v.as_str().map(str::to_string);
            match v.get("error") {
                Some(e) if e.is_object() => {
                    d.code = e.get("code").and_then(text);
                    d.message = e.get("message").and_then(text);
                    d.target = e.get("target").and_then(text);
                }
                Some(e) => {
                    // The token endpoint: {"error":"invalid_client","error_description":...}
                    d.code = text(e);
                    d.message = v.get("error_description").and_then(text);
                }
                None => {}
            }
        }
        d
    }

    /// True for the answers that say the same action is already under way
    /// (`ActiveRequestAlreadyExists`, "Action is already in progress").
    pub fn is_already_in_progress(&self) -> bool {
        self.code.as_deref() == Some("ActiveRequestAlreadyExists")
            || self
                .message
                .as_deref()
                .is_some_and(|m| m.to_ascii_lowercase().contains("already in progress"))
    }

    /// True for an advanced hunting answer that says the result was too large ("Query
    /// execution has exceeded the allowed result size"). Never retried: the same query
    /// fails the same way; narrow it.
    pub fn is_result_too_large(&self) -> bool {
        self.status == Some(400) && self.message_contains("exceeded the allowed result size")
    }

    /// True for an advanced hunting answer that says the query was stopped for using too
    /// much CPU ("query execution was preempted"). Never retried as sent.
    pub fn is_preempted(&self) -> bool {
        self.status == Some(400) && self.message_contains("preempted")
    }

    /// True when a hunting query was held back because the tenant's run-time budget is
    /// spent (see [`HuntingBudget`](super::HuntingBudget)); `retry_after` tells when run
    /// time frees up.
    pub fn is_hunting_budget_spent(&self) -> bool {
        self.code.as_deref() == Some(HUNTING_BUDGET_SPENT)
    }

    fn message_contains(&self, needle: &str) -> bool {
        self.message
            .as_deref()
            .is_some_and(|m| m.to_ascii_lowercase().contains(needle))
    }

    fn describe(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(s) = self.status {
            write!(f, " (HTTP {s}")?;
            if let Some(c) = &self.code {
                write!(f, " {c}")?;
            }
            f.write_str(")")?;
        }
        if let Some(m) = &self.message {
            write!(f, ": {m}")?;
        }
        if let Some(t) = &self.target {
            write!(f, " [target {t}]")?;
        }
        if let Some(r) = &self.request_id {
            write!(f, " [request-id {r}]")?;
        }
        if self.attempts > 1 {
            write!(f, " after {} attempts", self.attempts)?;
        }
        Ok(())
    }
}

/// Why a call gave no usable answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The server answered with an error status (from `Response::error_for_status` and
    /// paging).
    Http(Box<ErrorDetails>),
    /// The quota budget (attempts, or the longest wait for quota) ran out while throttled.
    Throttled(Box<ErrorDetails>),
    /// No token could be obtained.
    Auth(String, Box<ErrorDetails>),
    /// The connection failed, or the call's outcome is unknown (an ambiguous failure of a
    /// request that must not be repeated).
    Transport(String, Box<ErrorDetails>),
    /// A call took longer than its time limit.
    Timeout(String, Box<ErrorDetails>),
    /// The answer's body was larger than the configured limit.
    BodyTooLarge(u64),
    /// The request was cancelled.
    Cancelled,
    /// The client was closed.
    Closed,
    /// The limiter the client shares (given to [`ClientBuilder::limiter`]) was closed;
    /// the client itself is still open.
    ///
    /// [`ClientBuilder::limiter`]: super::ClientBuilder::limiter
    LimiterClosed,
    /// An argument can never work.
    InvalidArgument(String),
    /// The shared quota store failed (unreachable past the call's deadline, damaged or
    /// misconfigured). The call was not sent.
    Store(crate::limiter::store::StoreError),
    /// Paging stopped: an `@odata.nextLink` led back to a page already fetched, or the
    /// list had more pages than the client's limit
    /// ([`ClientBuilder::max_pages`](super::ClientBuilder::max_pages)).
    Paging(String),
    /// A call from inside the client's own token provider, on the thread that runs it: it
    /// would wait for the token being fetched. Get the token some other way.
    Reentrant(String),
}

impl Error {
    /// The server's details, when the call reached it.
    pub fn details(&self) -> Option<&ErrorDetails> {
        match self {
            Error::Http(d) | Error::Throttled(d) => Some(d),
            Error::Auth(_, d) | Error::Transport(_, d) | Error::Timeout(_, d) => Some(d),
            _ => None,
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Http(d) => {
                f.write_str("the server answered with an error")?;
                d.describe(f)
            }
            Error::Throttled(d) if d.status == Some(429) => {
                f.write_str("still throttled when the quota budget ran out")?;
                d.describe(f)
            }
            Error::Throttled(d) => {
                f.write_str("the quota would not admit the call within its wait budget")?;
                d.describe(f)
            }
            Error::Auth(m, d) => {
                write!(f, "no access token: {m}")?;
                d.describe(f)
            }
            Error::Transport(m, d) => {
                write!(f, "transport failure: {m}")?;
                d.describe(f)
            }
            Error::Timeout(m, d) => {
                write!(f, "timed out: {m}")?;
                d.describe(f)
            }
            Error::BodyTooLarge(limit) => write!(
                f,
                "the answer's body is larger than the limit of {limit} bytes"
            ),
            Error::Cancelled => f.write_str("the request was cancelled"),
            Error::Closed => f.write_str("the client is closed"),
            Error::LimiterClosed => f.write_str(
                "the limiter that the client shares is closed (the client itself is open)",
            ),
            Error::InvalidArgument(m) => f.write_str(m),
            Error::Store(e) => write!(f, "the quota store failed: {e}"),
            Error::Paging(m) => write!(f, "paging stopped: {m}"),
            Error::Reentrant(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Error {}

/// A limiter failure as the client reports it: the store's own, or a wrong argument.
pub(crate) fn limiter_failure(e: crate::limiter::Error) -> Error {
    match e {
        crate::limiter::Error::Store(e) => Error::Store(e),
        e => Error::InvalidArgument(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn details_from_both_error_shapes() {
        let d = ErrorDetails::from_answer(
            404,
            br#"{"error":{"code":"ResourceNotFound","message":"Machine abc was not found","target":"c-1"}}"#,
            Some("r-1"),
        );
        assert_eq!(d.code.as_deref(), Some("ResourceNotFound"));
        assert_eq!(d.target.as_deref(), Some("c-1"));
        assert_eq!(
            Error::Http(Box::new(d)).to_string(),
            "the server answered with an error (HTTP 404 ResourceNotFound): Machine abc was not found [target c-1] [request-id r-1]"
        );
        let t = ErrorDetails::from_answer(
            401,
            br#"{"error":"invalid_client","error_description":"bad secret"}"#,
            None,
        );
        assert_eq!(
            (t.code.as_deref(), t.message.as_deref()),
            (Some("invalid_client"), Some("bad secret"))
        );
        let none = ErrorDetails::from_answer(500, b"<html>", None);
        assert_eq!(none.code, None);
    }

    #[test]
    fn already_in_progress() {
        let a = ErrorDetails::from_answer(
            400,
            br#"{"error":{"code":"ActiveRequestAlreadyExists","message":"x"}}"#,
            None,
        );
        let b = ErrorDetails::from_answer(
            400,
            br#"{"error":{"code":"BadRequest","message":"Action is already in progress"}}"#,
            None,
        );
        let c = ErrorDetails::from_answer(
            400,
            br#"{"error":{"code":"BadRequest","message":"no"}}"#,
            None,
        );
        assert!(
            a.is_already_in_progress() && b.is_already_in_progress() && !c.is_already_in_progress()
        );
    }
}
