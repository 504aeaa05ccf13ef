//! A local simulator of the Microsoft Defender for Endpoint API, for tests, demos and
//! users who try their scripts offline.
//!
//! It serves, on `127.0.0.1`, the token endpoints (v1 and v2 client credentials) and
//! the API endpoints scripts use most: machines and alerts (paged with `$top`, `$skip`
//! and `@odata.nextLink`), one machine, isolate, tags, advanced hunting and alert batch
//! updates. It enforces the published quotas per (application, endpoint class) with
//! its own rolling windows (written apart from [`crate::limiter`], which it serves to
//! check), answers 429s the way the real service does, and can inject 503s, resets,
//! latency and a varying inbound delay. A `time_scale` shrinks every window and lifetime
//! so that tests run in milliseconds; 429 messages and `Retry-After` hints are in real
//! (scaled) time.
//!
//! | method, path | class | answer |
//! |---|---|---|
//! | `POST /{tenant}/oauth2/v2.0/token`, `POST /{tenant}/oauth2/token` | `token` | a bearer token |
//! | `GET /api/machines`, `GET /api/alerts` | `default` | a page |
//! | `GET /api/machines/{id}`, `GET /api/alerts/{id}` | `default` | the item or 404 |
//! | `POST /api/machines/{id}/isolate` | `default` | 201, a machine action |
//! | `POST /api/machines/{id}/tags` | `default` | 200, the machine |
//! | `POST /api/machines/{id}/runliveresponse` | `live_response` | 201 after `live_response_delay` |
//! | `POST /api/advancedqueries/run` | `hunting` | schema, rows and `Stats.ExecutionTime`; 400 "exceeded the allowed result size" for a query containing `quotagate:too-large`, 400 "preempted" for `quotagate:preempted` |
//! | `POST /api/alerts/batchUpdate` | `batch_update_alerts` | 200, no body |
//! | anything else | `unrouted` | 404 `NotFound` |
//!
//! Rules the tests rely on:
//!
//! - A call is counted at the instant it is decided, once its request has been read and
//!   its inbound delay ([`Faults::inbound_jitter`], none by default) has passed. Only
//!   admitted calls count: 429s, 503s and 401s use no quota (the real service is said
//!   to count throttled calls too).
//! - Faults are drawn per API call (token requests only if [`Faults::token_endpoint`]):
//!   a 503 comes before authentication and quota; a reset comes after the call was
//!   counted and processed, so an isolation that was reset was applied.
//! - Inbound delays are drawn per request, token requests included, from a generator of
//!   their own, and only while [`Faults::inbound_jitter`] is above zero.
//! - [`Simulator::stats`] recomputes the peaks per window from the log, apart from the
//!   admission decisions.
//!
//! ```
//! use quotagate::sim::{SimConfig, Simulator};
//! let sim = Simulator::start(SimConfig::default().time_scale(0.01)).unwrap();
//! let token_url = format!("{}/{}/oauth2/v2.0/token", sim.authority(), sim.tenant_id());
//! assert!(token_url.starts_with("http://127.0.0.1:"));
//! sim.stop();
//! ```

mod assertion;
mod config;
mod data;
mod http;
mod log;
mod net;
mod quota;
mod server;
#[cfg(test)]
mod tests;

pub use config::{
    CLASS_BATCH_UPDATE_ALERTS, CLASS_DEFAULT, CLASS_HUNTING, CLASS_LIVE_RESPONSE, CLASS_TOKEN,
    CLASS_UNROUTED, Faults, Limit, Limits, MAX_INBOUND_JITTER, RetryAfterStyle, SimConfig,
    WindowKind,
};
pub use log::{LogEntry, SimStats, WindowPeak};

use parking_lot::{Condvar, Mutex};
use server::{Core, Incoming};
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The largest request body read (larger ones are cut).
const MAX_BODY: u64 = 16 << 20;

/// A running simulator. Stops on [`Simulator::stop`] or when dropped.
///
/// Safe to share between threads: every method takes `&self` except `stop`.
pub struct Simulator {
    inner: Arc<Inner>,
    /// Each connection is served by a thread of its own, so concurrent clients,
    /// latency and hunting delays never queue behind each other.
    server: Option<net::Server>,
}

struct Inner {
    core: Core,
    addr: SocketAddr,
    stopping: Mutex<bool>,
    wake: Condvar,
}

impl Inner {
    fn stopping(&self) -> bool {
        *self.stopping.lock()
    }

    /// Sleeps `d` unless the simulator stops first.
    fn sleep(&self, d: Duration) {
        if d.is_zero() {
            return;
        }
        let deadline = Instant::now() + d;
        let mut stopping = self.stopping.lock();
        while !*stopping {
            if self.wake.wait_until(&mut stopping, deadline).timed_out() {
                break;
            }
        }
    }
}

impl Simulator {
    /// Starts a simulator on `127.0.0.1` on a free port.
    pub fn start(config: SimConfig) -> io::Result<Simulator> {
        Simulator::start_on(config, 0)
    }

    /// Starts a simulator on `127.0.0.1:port` (0: a free port). Fails on an invalid
    /// configuration (`InvalidInput`) or when the port cannot be bound.
    pub fn start_on(config: SimConfig, port: u16) -> io::Result<Simulator> {
        config
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let listener = TcpListener::bind(("127.0.0.1", port))?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(Inner {
            core: Core::new(config, Instant::now(), format!("http://{addr}")),
            addr,
            stopping: Mutex::new(false),
            wake: Condvar::new(),
        });
        let handler = {
            let inner = Arc::clone(&inner);
            Box::new(move |request: &http::Request| handle(&inner, request))
        };
        let server = net::Server::start(listener, MAX_BODY, handler)?;
        Ok(Simulator {
            inner,
            server: Some(server),
        })
    }

    /// The API base, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.inner.core.base_url.clone()
    }

    /// The login authority: the same base; token URLs are
    /// `{authority}/{tenant}/oauth2/v2.0/token` and `{authority}/{tenant}/oauth2/token`.
    pub fn authority(&self) -> String {
        self.url()
    }

    /// The address the simulator listens on.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// The tenant id token URLs must name.
    pub fn tenant_id(&self) -> &str {
        &self.inner.core.config.tenant_id
    }

    /// The application (client) id.
    pub fn client_id(&self) -> &str {
        &self.inner.core.config.client_id
    }

    /// The application's secret.
    pub fn client_secret(&self) -> &str {
        &self.inner.core.config.client_secret
    }

    /// The configuration the simulator was started with; changes made while it runs
    /// ([`Simulator::set_faults`], ...) show in [`Simulator::current_config`] only.
    pub fn config(&self) -> &SimConfig {
        &self.inner.core.config
    }

    /// The configuration in force now, with the changes made while running.
    pub fn current_config(&self) -> SimConfig {
        let st = self.inner.core.state.lock();
        let mut config = self.inner.core.config.clone();
        config.limits = st.live.limits.clone();
        config.faults = st.live.faults.clone();
        config.retry_after_style = st.live.retry_after_style;
        config
    }

    /// Every request received so far, in the order decided.
    pub fn log(&self) -> Vec<LogEntry> {
        self.inner.core.state.lock().log.clone()
    }

    /// Figures over the log; peaks are measured against the limits in force now.
    pub fn stats(&self) -> SimStats {
        let st = self.inner.core.state.lock();
        let mut stats =
            SimStats::compute(&st.log, &st.live.limits, self.inner.core.config.time_scale);
        stats.max_in_flight = st.max_in_flight.clone();
        stats
    }

    /// How often `action` (`"isolate"` or `"tag"`) was applied to machine `machine_id`
    /// (resets included: they are applied before the connection is dropped).
    pub fn action_count(&self, machine_id: &str, action: &str) -> u64 {
        let st = self.inner.core.state.lock();
        // Machine ids are stored as generated: lower-case hex.
        let key = (machine_id.to_ascii_lowercase(), action.to_owned());
        st.actions.get(&key).copied().unwrap_or(0)
    }

    /// The ids of the simulated machines, in list order.
    pub fn machine_ids(&self) -> Vec<String> {
        // Generated from the index alone, so no need to lock.
        (0..self.inner.core.config.machines)
            .map(|i| data::hex40(i as u64))
            .collect()
    }

    /// Issues a bearer token for `client_id` without a token request, valid for the
    /// configured `token_lifetime` (scaled) from now: for tests of callers that bring
    /// their own tokens. It is not counted in the log.
    pub fn issue_token(&self, client_id: &str) -> String {
        let core = &self.inner.core;
        let mut st = core.state.lock();
        core.mint_token(&mut st, client_id, Instant::now())
    }

    /// Replaces the faults from now on.
    pub fn set_faults(&self, faults: Faults) -> io::Result<()> {
        faults
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        self.inner.core.state.lock().live.faults = faults;
        Ok(())
    }

    /// Replaces the limits of `class` by `(calls, window_secs)` pairs (API seconds) from
    /// now on. Calls already counted stay counted.
    pub fn set_limits(&self, class: &str, limits: &[(u32, f64)]) -> io::Result<()> {
        let mut st = self.inner.core.state.lock();
        let mut next = st.live.limits.clone();
        next.set(class, limits);
        next.validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        st.live.limits = next;
        Ok(())
    }

    /// Changes how 429s give their hint from now on.
    pub fn set_retry_after_style(&self, style: RetryAfterStyle) {
        self.inner.core.state.lock().live.retry_after_style = style;
    }

    /// Stops serving: the port closes, open keep-alive connections are shut down (a
    /// pending hunting delay or latency is cut short, its call gets no answer; a request
    /// still in its inbound delay is never counted) and every thread of the simulator has
    /// ended when this returns.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let Some(mut server) = self.server.take() else {
            return;
        };
        *self.inner.stopping.lock() = true;
        self.inner.wake.notify_all();
        server.stop();
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulator")
            .field("url", &self.inner.core.base_url)
            .field("running", &self.server.is_some())
            .finish()
    }
}

/// Waits the request's inbound delay, decides the answer, waits its delay, and says how
/// to send it.
fn handle(inner: &Inner, request: &http::Request) -> net::Action {
    // The call is counted when it arrives, so the network's delay comes first.
    let inbound_delay = inner.core.inbound_delay();
    inner.sleep(inbound_delay);
    if inner.stopping() {
        // Cut short by stop: never counted.
        return net::Action::Reset;
    }
    let out = inner.core.process(&Incoming {
        method: &request.method,
        url: &request.target,
        authorization: request.header("Authorization"),
        client_request_id: request.header("client-request-id"),
        body: &request.body,
        inbound_delay,
    });
    inner.sleep(out.delay);
    if let Some(class) = out.in_flight {
        inner.core.leave(class);
    }
    if out.reset || inner.stopping() {
        return net::Action::Reset;
    }
    net::Action::Respond {
        status: out.status,
        headers: out.headers,
        body: out.body,
    }
}
