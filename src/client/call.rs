//! The send path: one call from its request to its final answer, through the route's
//! in-flight cap, the hunting run-time budget, the quota and the token, with retries.
//!
//! A [`Call`] holds what stays the same across a call's attempts (URL, bucket, budget,
//! cancel handle); an [`Attempt`] carries what one attempt leaves to the next (its
//! number, whether the token was refreshed, the token's generation, the last answer
//! retried) and decides, from an answer or a failure, whether the call goes on.

use super::bounds::instant_after;
use super::error::limiter_failure;
use super::token_endpoint::AgentTransport;
use super::{
    Cancel, Client, ClientCore, Error, ErrorDetails, HUNTING_BUDGET_SPENT, HuntingBudgetPolicy,
    Request, Response, Route, SLICE, deadline, gate, http, hunting, is_hunting_query, retry,
    retry_after,
};
use crate::limiter::{self, Nanos, Rate, Wait};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// What a call does after an attempt.
enum Step {
    Done(Response),
    Retry { wait: Option<Duration> },
}

/// One call: what stays the same across its attempts.
struct Call<'a> {
    core: &'a ClientCore,
    req: &'a Request,
    url: String,
    /// The URL's path, for the route, the hunting check and the log.
    path: String,
    /// The quota bucket's key.
    key: String,
    /// An advanced hunting query: its run time counts against the tenant's budget, and
    /// its hold may end before its answer.
    hunting: bool,
    /// The end of the quota-wait budget.
    budget_end: Instant,
    /// This send's copy of the request's cancel handle: it also carries the deadline.
    cancel: Cancel,
}

/// What an attempt leaves to the next one.
#[derive(Default)]
struct Attempt {
    /// 1 for the first attempt.
    number: u32,
    /// The token was refreshed after a 401 already (once per call).
    refreshed: bool,
    /// The generation of the token the attempt sent.
    generation: u64,
    /// What the last answer or failure that was retried said: the details of the error
    /// when the retries run out.
    last: ErrorDetails,
}

fn count(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Client {
    /// Sends a request through the limiter, with retries; returns the server's final
    /// answer, whatever its status (see [`Response::error_for_status`]).
    pub fn send(&self, req: &Request) -> Result<Response, Error> {
        let core = &*self.core;
        http::check_head(&req.method, &req.headers)?;
        let (url, path) = core.resolve(req)?;
        // The one lookup of the call's route: it names the bucket and any in-flight cap.
        let route = core.routes.find(&req.method, &path);
        let (key, rates) = core.bucket(route);
        core.limiter
            .ensure_rates(&key, rates)
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        {
            let mut keys = core.keys.lock();
            if !keys.contains(&key) {
                keys.insert(key.clone());
            }
        }
        let started = Instant::now();
        let call = Call {
            core,
            req,
            hunting: is_hunting_query(&req.method, &path),
            url,
            path,
            key,
            budget_end: instant_after(started, core.policy.max_quota_wait),
            cancel: req.cancel.for_send(req.deadline.map(|d| d.fix(started))),
        };
        // A capped route: hold one of its slots for the whole call, retries included.
        let _slot = match route {
            Some(
                route @ Route {
                    max_in_flight: Some(max),
                    ..
                },
            ) => Some(call.take_slot(route, *max)?),
            _ => None,
        };
        if call.hunting {
            core.wait_for_run_time(call.budget_end, &call.cancel)?;
        }
        call.run()
    }
}

impl ClientCore {
    /// The absolute URL and path of a request; absolute URLs must stay on the API's origin
    /// so that the token is never sent elsewhere.
    pub(super) fn resolve(&self, req: &Request) -> Result<(String, String), Error> {
        if req.target.contains('#') {
            // Everything after it, the query included, would silently stay behind.
            return Err(Error::InvalidArgument(
                "a path or URL must not contain '#' (a fragment is never sent; write %23 for the character)"
                    .into(),
            ));
        }
        let mut url = if req.target.starts_with("http://") || req.target.starts_with("https://") {
            let rest = &req.target[self.origin.len().min(req.target.len())..];
            if !req.target.starts_with(&self.origin)
                || !(rest.is_empty() || rest.starts_with(['/', '?']))
            {
                return Err(Error::InvalidArgument(format!(
                    "the URL is not on the API host {}: refusing to send the token elsewhere",
                    self.origin
                )));
            }
            req.target.clone()
        } else if req.target.starts_with('/') {
            format!("{}{}", self.base_url, http::encode_path(&req.target))
        } else {
            return Err(Error::InvalidArgument(
                "a path must start with '/' (or be an absolute URL)".into(),
            ));
        };
        if !req.query.is_empty() {
            url.push(if url.contains('?') { '&' } else { '?' });
            let q: Vec<String> = req
                .query
                .iter()
                .map(|(n, v)| format!("{}={}", http::encode(n), http::encode(v)))
                .collect();
            url.push_str(&q.join("&"));
        }
        let uri: ureq::http::Uri = url
            .parse()
            .map_err(|_| Error::InvalidArgument(format!("not a valid URL: {url}")))?;
        Ok((url, uri.path().to_string()))
    }

    /// Holds a hunting query back while the tenant's run-time budget is spent: waits
    /// (policy `Wait`, within the quota-wait budget) or fails (`Fail`).
    fn wait_for_run_time(&self, budget_end: Instant, cancel: &Cancel) -> Result<(), Error> {
        loop {
            let now = self.origin_instant.elapsed();
            let (wait, binding) = self.hunting.lock().wait(now);
            let Some((budget, window)) = binding else {
                return Ok(());
            };
            let spent = || {
                let mut d = ErrorDetails {
                    code: Some(HUNTING_BUDGET_SPENT.into()),
                    message: Some(format!(
                        "the tenant's advanced hunting run time ({} s per {} s) is spent; run time frees up in {} s",
                        budget.as_secs(),
                        window.as_secs(),
                        wait.as_secs_f64().ceil()
                    )),
                    ..Default::default()
                };
                d.retry_after = Some(wait);
                Error::Throttled(Box::new(d))
            };
            let (end, by_deadline) = deadline::earlier(budget_end, cancel.deadline);
            let fail = self.hunting_policy == HuntingBudgetPolicy::Fail;
            if fail || instant_after(Instant::now(), wait) > end {
                return Err(match cancel.deadline {
                    Some(b) if by_deadline && !fail => {
                        b.error(Some("before the hunting run time frees up"))
                    }
                    _ => spent(),
                });
            }
            log::info!(
                "advanced hunting run time is spent: waiting {} ms",
                wait.as_millis()
            );
            cancel.sleep(&self.closed, wait)?;
        }
    }

    /// Records a hunting answer's execution time: the one it states, else `elapsed`.
    /// Queries refused before they ran (throttled, unauthorized, bad requests) use none.
    fn record_run_time(&self, r: &Response, elapsed: Duration) {
        let ran = r.is_success() || {
            let d = r.error_details();
            d.is_result_too_large() || d.is_preempted()
        };
        if !ran {
            return;
        }
        let run = hunting::stated_execution_time(r.body()).unwrap_or(elapsed);
        self.hunting
            .lock()
            .record(self.origin_instant.elapsed(), run);
    }

    /// Ends an attempt's hold when its exchange ended, `took` after its send. The server
    /// counted the call by then; for a call it works on for long (a hunting query), it
    /// certainly counted it within the learned transit bound after the send, which frees
    /// the slot sooner. Quick answers teach that bound.
    fn end_hold(&self, hold: limiter::Hold, long_work: bool, took: Duration, sent_at: Nanos) {
        let mut transit = self.transit.lock();
        if !long_work {
            transit.record(took);
            drop(transit);
            hold.finish();
            return;
        }
        match transit.bound() {
            Some(bound) if bound < took => {
                drop(transit);
                hold.finish_at(
                    sent_at.saturating_add(u64::try_from(bound.as_nanos()).unwrap_or(u64::MAX)),
                );
            }
            _ => {
                drop(transit);
                hold.finish();
            }
        }
    }

    /// Adopts a limit the server stated when it is lower than the bucket's.
    fn learn(&self, key: &str, calls: u32, window: Duration) -> bool {
        let l = &self.limiter;
        let mut rates = l.rates(key);
        let mut changed = false;
        match rates.iter_mut().find(|r| r.window == window) {
            Some(r) if r.calls > calls => {
                r.calls = calls;
                changed = true;
            }
            Some(_) => {}
            None => {
                rates.push(Rate::new(calls, window));
                changed = true;
            }
        }
        if changed && l.set_rates(key, &rates).is_ok() {
            count(&self.counters.learned);
            log::warn!(
                "the server allows {calls} calls per {} ms on {key}: adopting that limit",
                window.as_millis()
            );
            return true;
        }
        false
    }
}

impl Call<'_> {
    /// Fails once the call is cancelled, its deadline passed or the client closed.
    fn check(&self) -> Result<(), Error> {
        self.cancel.check(&self.core.closed)
    }

    /// The way this call's token requests go.
    fn token_transport(&self) -> AgentTransport<'_> {
        AgentTransport {
            agent: &self.core.agent,
            closed: &self.core.closed,
            cancel: &self.cancel,
        }
    }

    /// Sends attempts until one ends the call: an answer not to retry, a failure not to
    /// retry, or the retry budget spent.
    fn run(&self) -> Result<Response, Error> {
        let mut attempt = Attempt::default();
        loop {
            self.check()?;
            attempt.number += 1;
            let (result, sent_at) = self.send_attempt(&mut attempt)?;
            let step = match result {
                Ok(r) => attempt.on_answer(self, r)?,
                Err(f) => attempt.on_failure(self, f)?,
            };
            match step {
                Step::Done(r) => {
                    if self.hunting {
                        self.core.record_run_time(&r, sent_at.elapsed());
                    }
                    return Ok(r.with_attempts(attempt.number));
                }
                Step::Retry { wait } => self.before_retry(&mut attempt, wait)?,
            }
        }
    }

    /// One exchange: the token, the quota (held until the exchange ends), the request.
    /// Returns its outcome and the instant it was sent.
    fn send_attempt(
        &self,
        attempt: &mut Attempt,
    ) -> Result<(Result<Response, http::Failure>, Instant), Error> {
        let core = self.core;
        let transport = self.token_transport();
        // Obtain the token first, so that a token request never stands between the
        // quota's admission and the call the server counts; after a long wait the
        // second look finds the cached token (or refreshes it if it came due).
        core.auth.token(&transport)?;
        // The attempt's units count from its admission until its answer (the hold).
        let hold = self.wait_for_quota(attempt)?;
        let token = core.auth.token(&transport)?;
        attempt.generation = token.generation;
        // A token fetch can take a while: a call cancelled or closed meanwhile is not sent.
        self.check()?;
        let headers = self.headers(token.value.expose());
        count(&core.counters.requests);
        if attempt.number > 1 {
            count(&core.counters.retries);
        }
        let sent_at = Instant::now();
        let sent_at_clock = core.limiter.now();
        let result = http::exchange(
            &core.agent,
            &self.req.method,
            &self.url,
            &headers,
            self.req.body.as_deref(),
            core.max_body,
            deadline::attempt_limit(self.cancel.deadline),
        );
        drop(headers);
        log::trace!(
            "{} {}: attempt {} {} after {} ms",
            self.req.method,
            self.path,
            attempt.number,
            result.as_ref().map_or_else(
                |f| f.message.clone(),
                |r| format!("answered {}", r.status())
            ),
            sent_at.elapsed().as_millis()
        );
        core.end_hold(hold, self.hunting, sent_at.elapsed(), sent_at_clock);
        Ok((result, sent_at))
    }

    /// The request's headers with the client's token (a caller's own is dropped) and,
    /// unless the caller chose one, `accept: application/json`.
    fn headers(&self, token: &str) -> Vec<(String, String)> {
        let mut headers = self.req.headers.clone();
        headers.retain(|(n, _)| !n.eq_ignore_ascii_case("authorization"));
        headers.push(("authorization".into(), format!("Bearer {token}")));
        if !headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("accept"))
        {
            headers.push(("accept".into(), "application/json".into()));
        }
        headers
    }

    /// Waits `wait` before the next attempt, unless the attempts, the quota-wait budget
    /// or the deadline end the call first.
    fn before_retry(&self, attempt: &mut Attempt, wait: Option<Duration>) -> Result<(), Error> {
        if attempt.number >= self.core.policy.max_attempts {
            return Err(if attempt.last.status == Some(429) {
                Error::Throttled(attempt.take_details())
            } else {
                Error::Transport("the retry budget ran out".into(), attempt.take_details())
            });
        }
        let Some(w) = wait else {
            return Ok(());
        };
        let after_wait = instant_after(Instant::now(), w);
        if let Some(b) = self.cancel.deadline.filter(|b| after_wait > b.at) {
            return Err(b.error(Some("before the next attempt")));
        }
        if after_wait > self.budget_end {
            return Err(Error::Throttled(attempt.take_details()));
        }
        log::debug!(
            "{} {}: retry {} in {} ms",
            self.req.method,
            self.path,
            attempt.number,
            w.as_millis()
        );
        self.cancel.sleep(&self.core.closed, w)
    }

    /// Waits in FIFO order for one of the `max` slots of `route` in the call's bucket.
    fn take_slot(&self, route: &Route, max: u32) -> Result<gate::Permit, Error> {
        let key = &self.key;
        let gate = self
            .core
            .gates
            .lock()
            .entry(format!(
                "{key}|{} {}",
                route.method.as_deref().unwrap_or("*"),
                route.pattern
            ))
            .or_insert_with(|| gate::Gate::new(max))
            .clone();
        let deadline = self.cancel.deadline;
        let (end, by_deadline) = deadline::earlier(self.budget_end, deadline);
        gate.acquire(end, SLICE, || self.check())
            .map_err(|e| match e {
                gate::GateError::Stopped(e) => e,
                gate::GateError::Timeout if by_deadline => deadline
                    .map_or(Error::Cancelled, |b| b.error(Some("before a slot frees up"))),
                gate::GateError::Timeout => Error::Throttled(Box::new(ErrorDetails {
                    message: Some(format!(
                        "all {max} calls allowed under way at once on {key} stayed busy for the quota-wait budget"
                    )),
                    ..Default::default()
                })),
            })
    }

    /// Waits in the bucket's FIFO queue until admitted, in slices so that cancel and close
    /// are noticed. The admission is a hold: it counts until the attempt ends.
    fn wait_for_quota(&self, attempt: &Attempt) -> Result<limiter::Hold, Error> {
        let (core, key) = (self.core, self.key.as_str());
        let (end, by_deadline) = deadline::earlier(self.budget_end, self.cancel.deadline);
        let limiter_error = |e: limiter::Error| match e {
            limiter::Error::Timeout { frees_in } => match self.cancel.deadline {
                Some(b) if by_deadline => b.error(Some(&match frees_in {
                    Some(w) => format!(
                        "before the quota admits the call: it {}",
                        limiter::FreesASlot(w)
                    ),
                    None => "before the quota admits the call".to_owned(),
                })),
                _ => {
                    let mut d = attempt.last.clone();
                    d.attempts = attempt.number - 1;
                    Error::Throttled(Box::new(d))
                }
            },
            limiter::Error::Cancelled => Error::Cancelled,
            limiter::Error::Closed => Error::LimiterClosed,
            other => limiter_failure(other),
        };
        match core.limiter.try_hold_with_lease(key, 1, core.hold_lease) {
            Ok(hold) => return Ok(hold),
            Err(limiter::Error::WouldBlock { wait }) => {
                log::debug!("waiting about {} ms for quota on {key}", wait.as_millis());
            }
            Err(e) => return Err(limiter_error(e)),
        }
        let remaining = end.saturating_duration_since(Instant::now());
        let ticket = core
            .limiter
            .enqueue_hold(key, 1, Some(remaining), Some(core.hold_lease))
            .map_err(limiter_error)?;
        loop {
            match ticket.wait(Some(SLICE)) {
                Ok(Wait::Admitted) => {
                    let hold = ticket.hold().map_err(limiter_error)?;
                    log::debug!(
                        "admitted on {key} after {} ms",
                        hold.admitted().waited.as_millis()
                    );
                    return Ok(hold);
                }
                Ok(Wait::Pending) => self.check()?,
                Err(e) => return Err(limiter_error(e)),
            }
        }
    }
}

impl Attempt {
    /// The details of the last answer retried, as the error that ends the call after this
    /// attempt.
    fn take_details(&mut self) -> Box<ErrorDetails> {
        let mut d = std::mem::take(&mut self.last);
        d.attempts = self.number;
        Box::new(d)
    }

    /// What the call does after this attempt's answer: 429 pauses the bucket and retries;
    /// 401 refreshes the token and retries once; 503 retries any method; 500, 502, 504
    /// and 408 retry idempotent ones; anything else is the final answer.
    fn on_answer(&mut self, call: &Call<'_>, r: Response) -> Result<Step, Error> {
        match r.status() {
            429 => self.on_throttled(call, &r),
            401 if !self.refreshed && call.core.auth.invalidate(self.generation) => {
                self.refreshed = true;
                self.last = r.error_details();
                log::info!("401: refreshing the token and retrying once");
                Ok(Step::Retry { wait: None })
            }
            503 => Ok(self.retry_or_return(call, r, true)),
            500 | 502 | 504 | 408 => Ok(self.retry_or_return(call, r, call.req.idempotent())),
            _ => Ok(Step::Done(r)),
        }
    }

    /// A 429: pauses the whole bucket until the server's instant (or learns the limit the
    /// body states, or backs off), then retries.
    fn on_throttled(&mut self, call: &Call<'_>, r: &Response) -> Result<Step, Error> {
        let (core, key) = (call.core, call.key.as_str());
        count(&core.counters.throttled);
        self.last = r.error_details();
        let hint = retry_after(|n| r.header(n), SystemTime::now());
        let learned = self
            .last
            .message
            .as_deref()
            .and_then(retry::learnable_quota)
            .is_some_and(|(calls, window)| core.learn(key, calls, window));
        self.last.retry_after = hint;
        let pause = match (hint, learned) {
            (Some(h), _) => Some(h),
            // The lowered limit makes the limiter itself wait the right time.
            (None, true) => None,
            (None, false) => Some(core.policy.backoff(self.number - 1)),
        };
        if let Some(p) = pause {
            log::info!("429 on {key}: pausing the bucket for {} ms", p.as_millis());
            core.limiter.pause(key, p).map_err(limiter_failure)?;
        }
        // The pause lives in the bucket; the call waits for it in the queue.
        Ok(Step::Retry { wait: None })
    }

    /// Retries an answer that may be retried while attempts remain, after its
    /// Retry-After or a backoff; else it is the final answer.
    fn retry_or_return(&mut self, call: &Call<'_>, r: Response, may_retry: bool) -> Step {
        let policy = &call.core.policy;
        if !may_retry || self.number >= policy.max_attempts {
            return Step::Done(r);
        }
        self.last = r.error_details();
        let hint = retry_after(|n| r.header(n), SystemTime::now());
        let wait = hint.unwrap_or_else(|| policy.backoff(self.number - 1));
        log::debug!(
            "{} {} answered {}; retrying",
            call.req.method,
            call.req.target,
            r.status()
        );
        Step::Retry { wait: Some(wait) }
    }

    /// What the call does after this attempt got no answer: retries what is idempotent or
    /// certainly was not sent while attempts remain; else fails.
    fn on_failure(&mut self, call: &Call<'_>, f: http::Failure) -> Result<Step, Error> {
        let (core, req) = (call.core, call.req);
        count(&core.counters.transport_failures);
        if let Some(limit) = f.body_too_large {
            return Err(Error::BodyTooLarge(limit));
        }
        if f.invalid {
            return Err(Error::InvalidArgument(f.message));
        }
        let may_repeat = req.idempotent() || f.not_sent;
        if may_repeat && self.number < core.policy.max_attempts {
            self.last = ErrorDetails {
                attempts: self.number,
                ..Default::default()
            };
            log::debug!(
                "{} {} failed ({}); retrying",
                req.method,
                req.target,
                f.message
            );
            return Ok(Step::Retry {
                wait: Some(core.policy.backoff(self.number - 1)),
            });
        }
        if !may_repeat {
            log::warn!(
                "{} {} failed after sending ({}); not repeating it",
                req.method,
                req.target,
                f.message
            );
        }
        let details = Box::new(ErrorDetails {
            attempts: self.number,
            ..Default::default()
        });
        let message = if may_repeat {
            f.message
        } else {
            format!(
                "{}; the request may have been processed, so it was not repeated",
                f.message
            )
        };
        Err(if f.timeout {
            Error::Timeout(message, details)
        } else {
            Error::Transport(message, details)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::HuntingBudgetPolicy;

    /// A client whose hunting ledger allows 100 ms of run time per 300 ms, with 150 ms
    /// spent just now.
    fn spent_client(policy: HuntingBudgetPolicy) -> Client {
        let client = Client::builder()
            .access_token("t")
            .hunting_budget_policy(policy)
            .build()
            .unwrap();
        let s = &client.core;
        let mut ledger = hunting::Ledger::with_windows(&[(
            Duration::from_millis(100),
            Duration::from_millis(300),
        )]);
        ledger.record(s.origin_instant.elapsed(), Duration::from_millis(150));
        *s.hunting.lock() = ledger;
        client
    }

    #[test]
    fn a_spent_run_time_budget_is_waited_out_or_cancelled() {
        let client = spent_client(HuntingBudgetPolicy::Wait);
        let started = Instant::now();
        let far = started + Duration::from_secs(10);
        client
            .core
            .wait_for_run_time(far, &Cancel::default())
            .unwrap();
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(250) && waited < Duration::from_secs(2),
            "{waited:?}"
        );

        let client = spent_client(HuntingBudgetPolicy::Wait);
        let cancel = Cancel::default();
        let c = cancel.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            c.cancel();
        });
        let far = Instant::now() + Duration::from_secs(10);
        assert_eq!(
            client.core.wait_for_run_time(far, &cancel),
            Err(Error::Cancelled)
        );
        t.join().unwrap();

        // A budget that ends before the run time frees up fails at once.
        let client = spent_client(HuntingBudgetPolicy::Wait);
        let soon = Instant::now() + Duration::from_millis(50);
        match client.core.wait_for_run_time(soon, &Cancel::default()) {
            Err(Error::Throttled(d)) => assert!(d.is_hunting_budget_spent()),
            other => panic!("{other:?}"),
        }
    }
}
