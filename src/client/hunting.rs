//! The advanced hunting run-time budget: per tenant, so much query execution time per
//! hour and per day. A ledger keeps the execution time of each answered query (a sliding
//! log of instant and duration) and tells how long a new query must wait until enough run
//! time has left the windows.

use super::bounds::MAX_STATED_RUN_TIME;
use std::collections::VecDeque;
use std::time::Duration;

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

/// What a hunting query does when the tenant's run-time budget is spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HuntingBudgetPolicy {
    /// Wait until enough run time leaves the windows, within the call's quota-wait budget
    /// (a wait longer than that fails at once, as [`Error::Throttled`](super::Error)).
    #[default]
    Wait,
    /// Fail at once with [`Error::Throttled`](super::Error) whose details answer
    /// [`ErrorDetails::is_hunting_budget_spent`](super::ErrorDetails::is_hunting_budget_spent)
    /// and carry the wait in `retry_after`.
    Fail,
}

/// The run time advanced hunting queries of one tenant may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HuntingBudget {
    /// Execution time per rolling hour (published: 10 minutes). Zero: no hourly budget.
    pub per_hour: Duration,
    /// Execution time per rolling day (published: 3 hours; one page says 4). Zero: no
    /// daily budget.
    pub per_day: Duration,
    /// What to do when the budget is spent.
    pub policy: HuntingBudgetPolicy,
}

impl Default for HuntingBudget {
    fn default() -> Self {
        Self {
            per_hour: Duration::from_secs(600),
            per_day: Duration::from_secs(3 * 3600),
            policy: HuntingBudgetPolicy::Wait,
        }
    }
}

/// True for the requests that run advanced hunting queries: MDE's
/// `POST /api/advancedqueries/run`, Defender XDR's `POST /api/advancedhunting/run` and
/// Graph's `POST /{v1.0|beta}/security/runHuntingQuery`.
pub fn is_hunting_query(method: &str, path: &str) -> bool {
    if !method.eq_ignore_ascii_case("POST") {
        return false;
    }
    let p = super::routes::normalize_path(path).to_ascii_lowercase();
    p == "/api/advancedqueries/run"
        || p == "/api/advancedhunting/run"
        || p == "/v1.0/security/runhuntingquery"
        || p == "/beta/security/runhuntingquery"
}

/// Execution time recorded per instant, summed over rolling windows. Instants are
/// durations since an origin the owner chooses (a clock of its own), so tests can drive it.
#[derive(Debug, Clone)]
pub(crate) struct Ledger {
    /// (budget, window) pairs; a zero budget is skipped.
    limits: Vec<(Duration, Duration)>,
    /// (instant, execution time), oldest first.
    entries: VecDeque<(Duration, Duration)>,
}

impl Ledger {
    pub(crate) fn new(budget: &HuntingBudget) -> Self {
        Self::with_windows(&[(budget.per_hour, HOUR), (budget.per_day, DAY)])
    }

    pub(crate) fn with_windows(limits: &[(Duration, Duration)]) -> Self {
        Self {
            limits: limits.iter().copied().filter(|l| !l.0.is_zero()).collect(),
            entries: VecDeque::new(),
        }
    }

    /// Records `run` of execution time at `now`.
    pub(crate) fn record(&mut self, now: Duration, run: Duration) {
        let longest = self.limits.iter().map(|l| l.1).max().unwrap_or_default();
        while self
            .entries
            .front()
            .is_some_and(|&(t, _)| t + longest <= now)
        {
            self.entries.pop_front();
        }
        // Keep the log in time order even if instants come slightly out of order.
        let at = self.entries.back().map_or(now, |&(t, _)| t.max(now));
        self.entries.push_back((at, run));
    }

    /// Execution time inside the window `(now - window, now]`.
    pub(crate) fn spent(&self, now: Duration, window: Duration) -> Duration {
        self.entries
            .iter()
            .filter(|&&(t, _)| t + window > now)
            .map(|&(_, r)| r)
            .sum()
    }

    /// How long a new query must wait at `now` until every window holds less than its
    /// budget (zero: it may run now), and the (budget, window) that binds.
    pub(crate) fn wait(&self, now: Duration) -> (Duration, Option<(Duration, Duration)>) {
        let mut longest = (Duration::ZERO, None);
        for &(budget, window) in &self.limits {
            let mut spent = self.spent(now, window);
            if spent < budget {
                continue;
            }
            // Entries leave the window oldest first; find the one whose leaving brings
            // the sum under the budget.
            for &(t, r) in self.entries.iter().filter(|&&(t, _)| t + window > now) {
                spent = spent.saturating_sub(r);
                if spent < budget {
                    let wait = t + window - now;
                    if wait > longest.0 {
                        longest = (wait, Some((budget, window)));
                    }
                    break;
                }
            }
        }
        longest
    }
}

/// The execution time an advanced hunting answer states (`Stats.ExecutionTime`, seconds),
/// when it is a number of seconds from zero to
/// [`MAX_STATED_RUN_TIME`](super::MAX_STATED_RUN_TIME); anything else counts as not stated.
pub(crate) fn stated_execution_time(body: &[u8]) -> Option<Duration> {
    #[derive(serde::Deserialize)]
    struct Answer {
        #[serde(rename = "Stats")]
        stats: Option<Stats>,
    }
    #[derive(serde::Deserialize)]
    struct Stats {
        #[serde(rename = "ExecutionTime")]
        execution_time: Option<f64>,
    }
    let secs = serde_json::from_slice::<Answer>(body)
        .ok()?
        .stats?
        .execution_time?;
    let stated = Duration::try_from_secs_f64(secs).ok();
    if stated.is_none_or(|d| d > MAX_STATED_RUN_TIME) {
        log::warn!(
            "a hunting answer states a run time of {secs} s, outside 0 to {} s: using the time the exchange took",
            MAX_STATED_RUN_TIME.as_secs()
        );
        return None;
    }
    stated
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn check_hunting_answer(body: &[u8]) {
        if let Some(run) = stated_execution_time(body) {
            assert!(run <= MAX_STATED_RUN_TIME, "{run:?}");
            Ledger::new(&HuntingBudget::default()).record(Duration::ZERO, run);
        }
        let d = super::super::ErrorDetails::from_answer(400, body, None);
        let _ = (d.is_result_too_large(), d.is_preempted());
    }

    #[test]
    fn fuzz_hunting_answer_corpus() {
        for (_, body) in crate::fuzz::corpus("hunting-answer") {
            check_hunting_answer(&body);
        }
    }

    proptest! {
        #![proptest_config(crate::fuzz::config())]

        #[test]
        fn fuzz_hunting_answers(
            time in "-?[0-9]{1,30}(\\.[0-9]{1,8})?([eE][+-]?[0-9]{1,4})?",
            bytes in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            let body = format!(r#"{{"Results":[],"Stats":{{"ExecutionTime":{time}}}}}"#);
            check_hunting_answer(body.as_bytes());
            check_hunting_answer(&bytes);
        }
    }

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn a_spent_hour_waits_until_enough_run_time_leaves_it() {
        // 10 minutes per hour, 3 hours per day.
        let mut l = Ledger::new(&HuntingBudget::default());
        l.record(s(0), s(240));
        l.record(s(100), s(240));
        assert_eq!(l.wait(s(200)), (Duration::ZERO, None));
        l.record(s(200), s(120));
        // 600 s spent in the last hour: the first entry's leaving at 3600 frees enough.
        assert_eq!(l.wait(s(300)), (s(3300), Some((s(600), HOUR))));
        assert_eq!(l.wait(s(3600)).0, Duration::ZERO);
        assert_eq!(l.spent(s(3600), HOUR), s(360));
    }

    #[test]
    fn the_day_binds_when_the_hours_do_not() {
        let mut l = Ledger::new(&HuntingBudget::default());
        // 19 hours of 9.5 minutes each: every hour within budget, the day not.
        for h in 0..19 {
            l.record(s(h * 3600), s(570));
        }
        let now = s(18 * 3600 + 60);
        let (wait, binding) = l.wait(now);
        assert_eq!(binding, Some((s(3 * 3600), DAY)));
        // 19 * 570 = 10830 s; the first entry leaving (at 24 h) brings it to 10260 < 10800.
        assert_eq!(wait, DAY - now);
    }

    #[test]
    fn zero_budgets_are_off_and_old_entries_are_dropped() {
        let mut l = Ledger::with_windows(&[(Duration::ZERO, HOUR), (s(10), s(60))]);
        l.record(s(0), s(10));
        assert_eq!(l.wait(s(1)), (s(59), Some((s(10), s(60)))));
        l.record(s(120), s(1));
        assert_eq!(l.entries.len(), 1);
    }

    #[test]
    fn hunting_paths_and_stated_times() {
        assert!(is_hunting_query("post", "/api/AdvancedQueries/run"));
        assert!(is_hunting_query("POST", "/api/advancedhunting/run/"));
        assert!(is_hunting_query("POST", "/v1.0/security/runHuntingQuery"));
        assert!(!is_hunting_query("GET", "/api/advancedqueries/run"));
        assert_eq!(
            stated_execution_time(br#"{"Results":[1,2],"Stats":{"ExecutionTime":1.5}}"#),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(stated_execution_time(br#"{"results":[]}"#), None);
        // Stated after the server ran the query: a panic here lost its answer.
        for huge in ["1e20", "1e19", "3601", "-1", "1e400"] {
            let body = format!(r#"{{"Results":[],"Stats":{{"ExecutionTime":{huge}}}}}"#);
            assert_eq!(stated_execution_time(body.as_bytes()), None, "{huge}");
        }
        assert_eq!(stated_execution_time(b"not json"), None);
    }
}
