//! A request and the handle that cancels it.

use super::deadline::{Bound, Deadline};
use super::{Error, SLICE, bounds};
use parking_lot::{Condvar, Mutex};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// A request: method, path (or absolute URL on the API host), query, headers and body.
/// Cloning keeps the same cancellation handle.
#[derive(Clone)]
pub struct Request {
    pub(super) method: String,
    pub(super) target: String,
    pub(super) query: Vec<(String, String)>,
    pub(super) headers: Vec<(String, String)>,
    pub(super) body: Option<Vec<u8>>,
    pub(super) cancel: Cancel,
    pub(super) deadline: Option<Deadline>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("method", &self.method)
            .field("target", &self.target)
            .field("query", &self.query)
            .field(
                "headers",
                &self.headers.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("body_bytes", &self.body.as_ref().map(Vec::len))
            .field("deadline", &self.deadline)
            .finish()
    }
}

impl Request {
    /// A request of `method` to `target`: a path such as `/api/machines`, or an absolute
    /// URL on the API host (an `@odata.nextLink`, used exactly as given).
    pub fn new(method: &str, target: &str) -> Self {
        Self {
            method: method.to_ascii_uppercase(),
            target: target.to_string(),
            query: Vec::new(),
            headers: Vec::new(),
            body: None,
            cancel: Cancel::default(),
            deadline: None,
        }
    }

    /// A GET request.
    pub fn get(target: &str) -> Self {
        Self::new("GET", target)
    }

    /// A POST request.
    pub fn post(target: &str) -> Self {
        Self::new("POST", target)
    }

    /// Adds a query parameter (percent-encoded when sent).
    pub fn query(mut self, name: &str, value: &str) -> Self {
        self.query.push((name.to_string(), value.to_string()));
        self
    }

    /// Sets a header, replacing one of the same name.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.set_header(name, value);
        self
    }

    pub(crate) fn set_header(&mut self, name: &str, value: &str) {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self.headers.push((name.to_string(), value.to_string()));
    }

    pub(crate) fn add_query(&mut self, name: &str, value: &str) {
        self.query.push((name.to_string(), value.to_string()));
    }

    pub(crate) fn set_body(&mut self, body: Vec<u8>, content_type: &str) {
        self.body = Some(body);
        self.set_header("content-type", content_type);
    }

    /// Sets a body with its content type.
    pub fn body(mut self, body: impl Into<Vec<u8>>, content_type: &str) -> Self {
        self.set_body(body.into(), content_type);
        self
    }

    /// Sets a JSON body.
    pub fn json(self, value: &serde_json::Value) -> Self {
        let body = serde_json::to_vec(value).expect("a JSON value serializes");
        self.body(body, "application/json")
    }

    /// Bounds everything the call does (the quota wait, the token fetch, every attempt,
    /// retries and backoff) to `d` from the start of each send; past it the call fails
    /// with [`Error::Timeout`]. Over [`Client::pages`] and [`Client::items`], `d` bounds
    /// all the pages together, from the first page's send.
    ///
    /// [`Client::pages`]: super::Client::pages
    /// [`Client::items`]: super::Client::items
    pub fn deadline(mut self, d: Duration) -> Self {
        self.set_deadline(Some(d));
        self
    }

    pub(crate) fn set_deadline(&mut self, d: Option<Duration>) {
        self.deadline = d.map(Deadline::After);
    }

    /// The method.
    pub fn method(&self) -> &str {
        &self.method
    }

    /// The handle that cancels this request from another thread.
    pub fn canceller(&self) -> Cancel {
        self.cancel.clone()
    }

    /// True for the methods that may be repeated after any failure.
    pub(super) fn idempotent(&self) -> bool {
        matches!(
            self.method.as_str(),
            "GET" | "HEAD" | "PUT" | "DELETE" | "OPTIONS"
        )
    }
}

/// Cancels a request's waits (for quota, tokens and backoff) from any thread; a call in
/// progress returns [`Error::Cancelled`] within about 50 ms.
#[derive(Clone, Default)]
pub struct Cancel {
    inner: Arc<CancelInner>,
    /// The deadline of the send that uses this copy (never shared with the caller's).
    pub(super) deadline: Option<Bound>,
}

#[derive(Default)]
struct CancelInner {
    cancelled: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
}

impl std::fmt::Debug for Cancel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cancel")
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}

impl Cancel {
    /// Cancels.
    pub fn cancel(&self) {
        self.inner.cancelled.store(true, Ordering::Release);
        let _guard = self.inner.lock.lock();
        self.inner.wake.notify_all();
    }

    /// True once cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.inner.cancelled.load(Ordering::Acquire)
    }

    /// A copy for one send, bounded by that send's deadline (the caller's copy keeps none).
    pub(super) fn for_send(&self, deadline: Option<Bound>) -> Cancel {
        Cancel {
            inner: self.inner.clone(),
            deadline,
        }
    }

    /// Fails once the client is `closed`, the request cancelled or its deadline passed.
    pub(super) fn check(&self, closed: &AtomicBool) -> Result<(), Error> {
        if closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        if self.is_cancelled() {
            return Err(Error::Cancelled);
        }
        match self.deadline {
            Some(b) if b.passed() => Err(b.error(None)),
            _ => Ok(()),
        }
    }

    /// Sleeps `d`, waking early with an error on cancel or close; fails at once when the
    /// deadline would pass before the sleep ends.
    pub(super) fn sleep(&self, closed: &AtomicBool, d: Duration) -> Result<(), Error> {
        let until = bounds::instant_after(Instant::now(), d);
        if let Some(b) = self.deadline.filter(|b| b.at < until) {
            return Err(b.error(Some("before the wait ends")));
        }
        let mut guard = self.inner.lock.lock();
        loop {
            self.check(closed)?;
            let now = Instant::now();
            if now >= until {
                return Ok(());
            }
            self.inner
                .wake
                .wait_for(&mut guard, (until - now).min(SLICE));
        }
    }
}
