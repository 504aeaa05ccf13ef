//! The client's statistics: its own counters, and the use of the buckets and capped
//! routes it touched.

use super::Client;
use crate::limiter::BucketStats;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// What the client counts as it goes (token requests are counted by the token cache).
#[derive(Default)]
pub(crate) struct Counters {
    pub(super) requests: AtomicU64,
    pub(super) retries: AtomicU64,
    pub(super) throttled: AtomicU64,
    pub(super) transport_failures: AtomicU64,
    pub(super) learned: AtomicU64,
}

/// The client's counters and the statistics of the buckets it used.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ClientStats {
    /// HTTP exchanges with the API (retries included, token requests not).
    pub requests: u64,
    /// Exchanges that were retries.
    pub retries: u64,
    /// 429 answers received.
    pub throttled: u64,
    /// Requests to the token endpoint.
    pub token_requests: u64,
    /// Exchanges that failed without an answer.
    pub transport_failures: u64,
    /// Times a bucket adopted a lower limit that the server stated.
    pub learned_limits: u64,
    /// Statistics of each bucket the client used, by key.
    pub buckets: std::collections::BTreeMap<String, BucketSummary>,
    /// For each capped route used (`bucket key|METHOD pattern`): the most calls that were
    /// under way at once.
    pub in_flight_peaks: std::collections::BTreeMap<String, u32>,
    /// Advanced hunting execution time recorded in the last hour, in milliseconds.
    pub hunting_run_ms_hour: u64,
    /// Advanced hunting execution time recorded in the last day, in milliseconds.
    pub hunting_run_ms_day: u64,
}

/// A bucket's statistics in [`ClientStats`].
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct BucketSummary {
    /// Calls admitted.
    pub admitted_calls: u64,
    /// Admitted calls that waited.
    pub waited_calls: u64,
    /// Total wait, in milliseconds.
    pub total_wait_ms: u64,
    /// Longest wait, in milliseconds.
    pub longest_wait_ms: u64,
    /// Pauses (from 429s).
    pub pauses: u64,
    /// Use of each window: `{used, calls, window_ms}`.
    pub windows: Vec<WindowSummary>,
}

/// One window's use in [`BucketSummary`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct WindowSummary {
    /// Units in the window now.
    pub used: u64,
    /// The limit.
    pub calls: u64,
    /// The window, in milliseconds.
    pub window_ms: u64,
}

impl From<&BucketStats> for BucketSummary {
    fn from(b: &BucketStats) -> Self {
        BucketSummary {
            admitted_calls: b.admitted_calls,
            waited_calls: b.waited_calls,
            total_wait_ms: b.total_wait_ns / 1_000_000,
            longest_wait_ms: b.longest_wait_ns / 1_000_000,
            pauses: b.pauses,
            windows: b
                .windows
                .iter()
                .map(|w| WindowSummary {
                    used: w.used,
                    calls: w.calls,
                    window_ms: w.window_ns / 1_000_000,
                })
                .collect(),
        }
    }
}

impl Client {
    /// The client's counters and the statistics of the buckets it used.
    pub fn stats(&self) -> ClientStats {
        let s = &*self.core;
        let run_ms = |window| {
            let spent = s.hunting.lock().spent(s.origin_instant.elapsed(), window);
            u64::try_from(spent.as_millis()).unwrap_or(u64::MAX)
        };
        let c = &s.counters;
        let buckets = s
            .keys
            .lock()
            .iter()
            .map(|k| (k.clone(), BucketSummary::from(&s.limiter.stats(k))))
            .collect();
        let in_flight_peaks = s
            .gates
            .lock()
            .iter()
            .map(|(k, g)| (k.clone(), g.peak()))
            .collect();
        ClientStats {
            requests: c.requests.load(Ordering::Relaxed),
            retries: c.retries.load(Ordering::Relaxed),
            throttled: c.throttled.load(Ordering::Relaxed),
            token_requests: s.auth.token_requests(),
            transport_failures: c.transport_failures.load(Ordering::Relaxed),
            learned_limits: c.learned.load(Ordering::Relaxed),
            buckets,
            in_flight_peaks,
            hunting_run_ms_hour: run_ms(Duration::from_secs(3600)),
            hunting_run_ms_day: run_ms(Duration::from_secs(86_400)),
        }
    }
}
