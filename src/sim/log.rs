//! The record of every request, and the figures tests assert against.

use super::config::Limits;
use super::quota::{RealLimit, peak};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// One request the simulator received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// When it was decided and counted, since the simulator started (real time): after
    /// its inbound delay.
    pub instant: Duration,
    /// The delay it waited on its way in, before it was decided (zero without
    /// [`Faults::inbound_jitter`](super::Faults::inbound_jitter)).
    pub inbound_delay: Duration,
    /// The HTTP method.
    pub method: String,
    /// The request target as received: the path and the raw query, not re-encoded.
    pub path: String,
    /// The status answered (for a reset: the status it would have had).
    pub status: u16,
    /// The quota class (`"default"`, `"hunting"`, `"token"`, `"unrouted"`, ...).
    pub class: String,
    /// The application, when a valid token came with the call.
    pub client_id: Option<String>,
    /// The connection was closed instead of answering (after processing the call).
    pub reset: bool,
    /// The call counted toward its class's quota (admitted: neither a 429, a 503 nor a 401).
    pub counted: bool,
    /// For a 429: the real time until the binding window admits again.
    pub retry_after: Option<Duration>,
}

/// One limit of a class, and the most calls ever counted inside one of its windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowPeak {
    /// The limit's calls per window.
    pub calls: u32,
    /// The limit's window in real time.
    pub window: Duration,
    /// The largest number of counted calls of one client inside any rolling window
    /// `(t - window, t]` (the largest over clients).
    pub peak: u64,
}

impl WindowPeak {
    /// Whether more calls were counted in one window than the limit allows.
    pub fn exceeded(&self) -> bool {
        self.peak > u64::from(self.calls)
    }
}

/// Figures over the whole log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Requests received.
    pub requests: u64,
    /// Requests per status answered (resets under the status they would have had).
    pub by_status: BTreeMap<u16, u64>,
    /// Answers with status 429 (the token endpoint's included).
    pub throttled: u64,
    /// Requests to the token endpoints.
    pub token_requests: u64,
    /// Requests answered by closing the connection.
    pub resets: u64,
    /// Answers with status 503.
    pub errors_503: u64,
    /// Per class of counted calls: each current limit with its peak. Computed from the
    /// instants of the counted calls, apart from the admission decisions, so it is
    /// what a test compares with the limits.
    pub max_in_window: BTreeMap<String, Vec<WindowPeak>>,
    /// Per class that tracks it (`live_response`): the most calls the server was
    /// answering at once.
    pub max_in_flight: BTreeMap<String, u32>,
}

impl SimStats {
    pub(crate) fn compute(log: &[LogEntry], limits: &Limits, time_scale: f64) -> SimStats {
        let mut stats = SimStats {
            requests: log.len() as u64,
            ..SimStats::default()
        };
        let mut counted: HashMap<(&str, &str), Vec<Duration>> = HashMap::new();
        for e in log {
            *stats.by_status.entry(e.status).or_default() += 1;
            stats.throttled += u64::from(e.status == 429);
            stats.errors_503 += u64::from(e.status == 503 && !e.reset);
            stats.resets += u64::from(e.reset);
            stats.token_requests += u64::from(e.class == super::config::CLASS_TOKEN);
            if e.counted {
                let client = e.client_id.as_deref().unwrap_or("");
                counted
                    .entry((e.class.as_str(), client))
                    .or_default()
                    .push(e.instant);
            }
        }
        for ((class, _client), mut instants) in counted {
            instants.sort_unstable();
            let peaks = stats
                .max_in_window
                .entry(class.to_owned())
                .or_insert_with(|| {
                    limits
                        .get(class)
                        .iter()
                        .map(|l| {
                            let real = RealLimit::from_limit(l, time_scale);
                            WindowPeak {
                                calls: real.calls,
                                window: real.window,
                                peak: 0,
                            }
                        })
                        .collect()
                });
            for p in peaks.iter_mut() {
                p.peak = p.peak.max(peak(&instants, p.window));
            }
        }
        stats
    }

    /// The peak of `class` for its limit with this real `window`, if there is one.
    pub fn peak(&self, class: &str, window: Duration) -> Option<u64> {
        self.max_in_window
            .get(class)?
            .iter()
            .find(|p| p.window == window)
            .map(|p| p.peak)
    }

    /// Every (class, limit) whose peak went over its calls: empty when quotas held.
    pub fn exceeded(&self) -> Vec<(String, WindowPeak)> {
        self.max_in_window
            .iter()
            .flat_map(|(class, peaks)| {
                peaks
                    .iter()
                    .filter(|p| p.exceeded())
                    .map(move |p| (class.clone(), *p))
            })
            .collect()
    }
}
