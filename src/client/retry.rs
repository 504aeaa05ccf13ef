//! What the server tells us about waiting, and how long to back off when it tells nothing.

use super::bounds::{MAX_LEARNED_WINDOW, MAX_SERVER_WAIT, at_most, bounded_secs};
use std::time::{Duration, SystemTime};

/// How many attempts and how much waiting one call may spend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts at most, the first included.
    pub max_attempts: u32,
    /// The longest a call may wait for quota in all (queue, pauses and backoff).
    pub max_quota_wait: Duration,
    /// The first backoff step when the server gives no hint.
    pub base_backoff: Duration,
    /// The longest single backoff step.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 8,
            max_quota_wait: Duration::from_secs(15 * 60),
            base_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// Capped exponential backoff with full jitter for the `retry`-th retry (from 0):
    /// a random wait in `[0, min(max, base * 2^retry)]`.
    pub fn backoff(&self, retry: u32) -> Duration {
        let cap = self
            .base_backoff
            .saturating_mul(1u32.checked_shl(retry.min(30)).unwrap_or(u32::MAX))
            .min(self.max_backoff);
        cap.mul_f64(fastrand::f64())
    }
}

fn parse_ms(v: &str) -> Option<Duration> {
    let ms: f64 = v.trim().parse().ok()?;
    bounded_secs(ms / 1000.0, MAX_SERVER_WAIT, "a Retry-After")
}

/// The wait a throttled answer asks for: `retry-after-ms`, `x-ms-retry-after-ms`, or
/// `Retry-After` in seconds or as an HTTP-date (relative to `now`). A wait longer than
/// [`MAX_SERVER_WAIT`](super::MAX_SERVER_WAIT) gives that maximum (and a warning in the
/// log); a value that is not a number of seconds at least zero, nor a date, counts as
/// absent.
pub fn retry_after<'a>(
    mut header: impl FnMut(&str) -> Option<&'a str>,
    now: SystemTime,
) -> Option<Duration> {
    if let Some(d) = header("retry-after-ms").and_then(parse_ms) {
        return Some(d);
    }
    if let Some(d) = header("x-ms-retry-after-ms").and_then(parse_ms) {
        return Some(d);
    }
    let v = header("retry-after")?.trim();
    if let Ok(secs) = v.parse::<f64>() {
        return bounded_secs(secs, MAX_SERVER_WAIT, "a Retry-After");
    }
    let at = httpdate::parse_http_date(v).ok()?;
    let wait = at.duration_since(now).unwrap_or(Duration::ZERO);
    Some(at_most(wait, MAX_SERVER_WAIT, "a Retry-After date"))
}

/// The limit a throttled answer's message states, such as
/// `API calls quota exceeded! maximum allowed 45 per 00:01:00`: (calls, window).
pub fn quota_from_message(message: &str) -> Option<(u32, Duration)> {
    let lower = message.to_ascii_lowercase();
    let rest = &message[lower.find("maximum allowed")? + "maximum allowed".len()..];
    let mut words = rest.split_whitespace();
    let calls: u32 = words.next()?.parse().ok()?;
    if !words.next()?.eq_ignore_ascii_case("per") {
        return None;
    }
    let span = words.next()?.trim_end_matches(['.', ',', '"']);
    let window = parse_timespan(span)?;
    (calls > 0 && !window.is_zero()).then_some((calls, window))
}

/// The limit a throttled answer's message states, when the client may adopt it: its
/// window is at most [`MAX_LEARNED_WINDOW`](super::MAX_LEARNED_WINDOW). A longer one is
/// refused with a warning, so that no answer can slow a bucket to a call per years.
pub(crate) fn learnable_quota(message: &str) -> Option<(u32, Duration)> {
    let (calls, window) = quota_from_message(message)?;
    if window > MAX_LEARNED_WINDOW {
        log::warn!(
            "the server states a limit of {calls} calls per {} s, a window longer than the {} s a learned limit may have: not adopted",
            window.as_secs(),
            MAX_LEARNED_WINDOW.as_secs()
        );
        return None;
    }
    Some((calls, window))
}

/// Parses a .NET TimeSpan in its constant form: `[d.]hh:mm:ss[.fffffff]`. `None` when it
/// is malformed or longer than a `Duration` holds.
fn parse_timespan(s: &str) -> Option<Duration> {
    let mut parts = s.split(':');
    let (first, minutes, seconds) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let (days, hours) = match first.split_once('.') {
        Some((d, h)) => (d.parse::<u64>().ok()?, h.parse::<u64>().ok()?),
        None => (0, first.parse::<u64>().ok()?),
    };
    let minutes: u64 = minutes.parse().ok()?;
    let seconds: f64 = seconds.parse().ok()?;
    if minutes >= 60 || !(0.0..60.0).contains(&seconds) {
        return None;
    }
    let whole = days
        .checked_mul(86_400)?
        .checked_add(hours.checked_mul(3600)?)?
        .checked_add(minutes * 60)?;
    Duration::from_secs(whole).checked_add(Duration::try_from_secs_f64(seconds).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn headers<'a>(list: &'a [(&'a str, &'a str)]) -> impl FnMut(&str) -> Option<&'a str> {
        move |name| {
            list.iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| *v)
        }
    }

    #[test]
    fn every_retry_after_form() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        assert_eq!(
            retry_after(headers(&[("Retry-After", "7")]), now),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            retry_after(headers(&[("retry-after", "1.5")]), now),
            Some(Duration::from_millis(1500))
        );
        let date = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            retry_after(headers(&[("Retry-After", &date)]), now),
            Some(Duration::from_secs(30))
        );
        let past = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(
            retry_after(headers(&[("Retry-After", &past)]), now),
            Some(Duration::ZERO)
        );
        assert_eq!(
            retry_after(
                headers(&[("Retry-After", "9"), ("retry-after-ms", "250")]),
                now
            ),
            Some(Duration::from_millis(250)),
            "the precise header wins"
        );
        assert_eq!(
            retry_after(headers(&[("x-ms-retry-after-ms", "40")]), now),
            Some(Duration::from_millis(40))
        );
        assert_eq!(retry_after(headers(&[("Retry-After", "soon")]), now), None);
        assert_eq!(retry_after(headers(&[("Retry-After", "-3")]), now), None);
        assert_eq!(retry_after(headers(&[]), now), None);
    }

    #[test]
    fn quota_messages() {
        assert_eq!(
            quota_from_message("API calls quota exceeded! maximum allowed 45 per 00:01:00"),
            Some((45, Duration::from_secs(60)))
        );
        assert_eq!(
            quota_from_message("API calls quota exceeded! maximum allowed 1500 per 01:00:00."),
            Some((1500, Duration::from_secs(3600)))
        );
        assert_eq!(
            quota_from_message("Maximum allowed 20 per 00:00:00.6000000"),
            Some((20, Duration::from_millis(600)))
        );
        assert_eq!(
            quota_from_message("maximum allowed 5 per 1.00:00:00"),
            Some((5, Duration::from_secs(86_400)))
        );
        assert_eq!(
            quota_from_message("Rate limit is exceeded. Try again in 5 seconds."),
            None
        );
        assert_eq!(
            quota_from_message("maximum allowed many per 00:01:00"),
            None
        );
        assert_eq!(quota_from_message("maximum allowed 0 per 00:01:00"), None);
        assert_eq!(quota_from_message("maximum allowed 5 per 00:99:00"), None);
    }

    #[test]
    fn huge_waits_from_the_server_are_cut_to_the_maximum_never_a_panic() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        for (name, value) in [
            ("Retry-After", "1e20"),
            ("Retry-After", "1e19"),
            ("Retry-After", "1e9"),
            ("Retry-After", "18446744073709551616"),
            ("retry-after-ms", "1e300"),
            ("x-ms-retry-after-ms", "18446744073709551615000"),
            ("Retry-After", "Fri, 31 Dec 9999 23:59:59 GMT"),
        ] {
            assert_eq!(
                retry_after(headers(&[(name, value)]), now),
                Some(MAX_SERVER_WAIT),
                "{name}: {value}"
            );
        }
        for bad in ["NaN", "inf", "-inf", "1e400", "-1e20"] {
            assert_eq!(retry_after(headers(&[("Retry-After", bad)]), now), None);
            assert_eq!(retry_after(headers(&[("retry-after-ms", bad)]), now), None);
        }
    }

    #[test]
    fn stated_limits_never_overflow_and_long_windows_are_not_learned() {
        // A 17-digit day count once wrapped into a 584-year window.
        for message in [
            "maximum allowed 5 per 213503982334601.07:00:59",
            "maximum allowed 5 per 18446744073709551615.00:00:00",
            "maximum allowed 5 per 99999999999999999999:00:00",
        ] {
            assert_eq!(quota_from_message(message), None, "{message}");
            assert_eq!(learnable_quota(message), None, "{message}");
        }
        let years = "maximum allowed 1 per 99999.00:00:00";
        assert_eq!(
            quota_from_message(years),
            Some((1, Duration::from_secs(99_999 * 86_400)))
        );
        assert_eq!(learnable_quota(years), None, "274 years is not a window");
        assert_eq!(
            learnable_quota("maximum allowed 5 per 1.00:00:00"),
            Some((5, MAX_LEARNED_WINDOW))
        );
        assert_eq!(learnable_quota("maximum allowed 5 per 1.00:00:00.5"), None);
        assert_eq!(
            learnable_quota("API calls quota exceeded! maximum allowed 45 per 00:01:00"),
            Some((45, Duration::from_secs(60)))
        );
    }

    /// `retry_after` for one header, with every name it reads.
    fn each_header_form(value: &str) -> Vec<Option<Duration>> {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        ["Retry-After", "retry-after-ms", "x-ms-retry-after-ms"]
            .iter()
            .map(|name| retry_after(headers(&[(name, value)]), now))
            .collect()
    }

    fn check_wait(value: &str) {
        for wait in each_header_form(value).into_iter().flatten() {
            assert!(wait <= MAX_SERVER_WAIT, "{value:?} gave {wait:?}");
        }
    }

    fn check_message(message: &str) {
        if let Some((calls, window)) = quota_from_message(message) {
            assert!(calls > 0 && !window.is_zero(), "{message:?}");
        }
        if let Some((calls, window)) = learnable_quota(message) {
            assert!(calls > 0 && window <= MAX_LEARNED_WINDOW, "{message:?}");
        }
    }

    #[test]
    fn fuzz_retry_after_corpus() {
        for (_, value) in crate::fuzz::corpus_text("retry-after") {
            check_wait(&value);
        }
        for (_, message) in crate::fuzz::corpus_text("throttling-message") {
            check_message(&message);
        }
    }

    proptest! {
        #![proptest_config(crate::fuzz::config())]

        #[test]
        fn fuzz_retry_after(value in prop_oneof![
            any::<String>(),
            "[ +-]?[0-9]{0,25}(\\.[0-9]{0,12})?([eE][+-]?[0-9]{1,4})?[ ]?",
            any::<f64>().prop_map(|f| f.to_string()),
            any::<u64>().prop_map(|s| {
                httpdate::fmt_http_date(SystemTime::UNIX_EPOCH + Duration::from_secs(s % 253_402_300_799))
            }),
        ]) {
            check_wait(&value);
        }

        #[test]
        fn fuzz_throttling_messages(
            calls in prop_oneof![any::<u32>().prop_map(|c| c.to_string()), "[0-9]{0,25}", ".{0,6}"],
            span in prop_oneof![
                "[0-9]{0,22}(\\.[0-9]{0,3})?:[0-9]{0,3}:[0-9]{0,3}(\\.[0-9]{0,12})?[.,\"]?",
                ".{0,30}",
            ],
            prefix in ".{0,20}",
        ) {
            check_message(&format!("{prefix}maximum allowed {calls} per {span}"));
            check_message(&format!("{prefix}Maximum Allowed {calls} PER {span} and more"));
        }
    }

    #[test]
    fn backoff_is_capped_and_jittered() {
        let p = RetryPolicy::default();
        for retry in 0..40 {
            let d = p.backoff(retry);
            assert!(d <= p.max_backoff);
            assert!(d <= p.base_backoff * 2u32.saturating_pow(retry.min(20)));
        }
        let samples: std::collections::HashSet<_> = (0..20).map(|_| p.backoff(3)).collect();
        assert!(samples.len() > 1, "jitter varies the wait");
    }
}
