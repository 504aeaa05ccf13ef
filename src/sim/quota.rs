//! The simulator's own quota keeping, written apart from `crate::limiter` on purpose:
//! it is the oracle that checks the limiter and the client.
//!
//! Only admitted calls count: a 429 does not use up quota here. (The real service is
//! said to count throttled calls too, which makes early retries prolong a block; the
//! simulator keeps the stricter, simpler rule so that "calls admitted per window" is
//! exactly what tests compare with the limits.)

use super::config::{Limit, WindowKind, scaled};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// A limit in real time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RealLimit {
    pub calls: u32,
    pub window: Duration,
}

impl RealLimit {
    pub fn from_limit(limit: &Limit, time_scale: f64) -> RealLimit {
        RealLimit {
            calls: limit.calls,
            // A window of zero would admit everything; keep it at least 1 ns.
            window: scaled(limit.window_secs, time_scale).max(Duration::from_nanos(1)),
        }
    }
}

/// The outcome of one admission check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Counted.
    Admit,
    /// Refused: `wait` (real time) until `limit`, the binding one, admits again.
    Throttle { wait: Duration, limit: RealLimit },
}

#[derive(Default)]
struct Bucket {
    /// Instants of admitted calls, oldest first (sliding windows).
    admitted: VecDeque<Instant>,
    /// Per limit: (index of the current fixed window, calls admitted in it).
    fixed: Vec<(u128, u32)>,
}

/// Admitted calls per (client id, class).
pub(crate) struct QuotaBook {
    start: Instant,
    buckets: HashMap<(String, String), Bucket>,
}

impl QuotaBook {
    pub fn new(start: Instant) -> QuotaBook {
        QuotaBook {
            start,
            buckets: HashMap::new(),
        }
    }

    /// Admits (and counts) a call of `class` by `client` at `now`, or says how long to wait.
    /// `now` must not go backwards between calls.
    pub fn check(
        &mut self,
        client: &str,
        class: &str,
        limits: &[RealLimit],
        kind: WindowKind,
        now: Instant,
    ) -> Decision {
        let bucket = self
            .buckets
            .entry((client.to_owned(), class.to_owned()))
            .or_default();
        match kind {
            WindowKind::Sliding => check_sliding(bucket, limits, now),
            WindowKind::Fixed => check_fixed(bucket, limits, now - self.start),
        }
    }
}

/// The violated limit whose wait is longest binds.
fn binding(
    worst: Option<(Duration, RealLimit)>,
    wait: Duration,
    limit: RealLimit,
) -> (Duration, RealLimit) {
    match worst {
        Some((w, l)) if w >= wait => (w, l),
        _ => (wait, limit),
    }
}

fn check_sliding(bucket: &mut Bucket, limits: &[RealLimit], now: Instant) -> Decision {
    let admitted = &mut bucket.admitted;
    let mut worst: Option<(Duration, RealLimit)> = None;
    for &limit in limits {
        // Calls at s with s > now - window are inside the window (now - window, now].
        let first_inside = match now.checked_sub(limit.window) {
            Some(edge) => admitted.partition_point(|&s| s <= edge),
            None => 0,
        };
        let inside = admitted.len() - first_inside;
        if inside >= limit.calls as usize {
            let wait = if limit.calls == 0 {
                limit.window
            } else {
                // Once the call `calls` places from the newest leaves, one more fits.
                let leaving = admitted[admitted.len() - limit.calls as usize];
                (leaving + limit.window).saturating_duration_since(now)
            };
            worst = Some(binding(worst, wait, limit));
        }
    }
    if let Some((wait, limit)) = worst {
        return Decision::Throttle { wait, limit };
    }
    admitted.push_back(now);
    // Forget what no window of these limits can see any more.
    let longest = limits.iter().map(|l| l.window).max().unwrap_or_default();
    if let Some(edge) = now.checked_sub(longest) {
        while admitted.front().is_some_and(|&s| s <= edge) {
            admitted.pop_front();
        }
    }
    Decision::Admit
}

fn check_fixed(bucket: &mut Bucket, limits: &[RealLimit], elapsed: Duration) -> Decision {
    bucket.fixed.resize(limits.len(), (u128::MAX, 0));
    let mut worst: Option<(Duration, RealLimit)> = None;
    let now = elapsed.as_nanos();
    for (limit, slot) in limits.iter().zip(bucket.fixed.iter_mut()) {
        let window = limit.window.as_nanos();
        let index = now / window;
        if slot.0 != index {
            *slot = (index, 0);
        }
        if slot.1 >= limit.calls {
            let end = (index + 1) * window;
            let wait = Duration::from_nanos((end - now).min(u64::MAX as u128) as u64);
            worst = Some(binding(worst, wait, *limit));
        }
    }
    if let Some((wait, limit)) = worst {
        return Decision::Throttle { wait, limit };
    }
    for slot in bucket.fixed.iter_mut() {
        slot.1 += 1;
    }
    Decision::Admit
}

/// The largest number of instants (sorted ascending) inside any window `(t - window, t]`.
pub(crate) fn peak(instants: &[Duration], window: Duration) -> u64 {
    let mut best = 0;
    let mut first = 0;
    for (last, &t) in instants.iter().enumerate() {
        while t.saturating_sub(instants[first]) >= window {
            first += 1;
        }
        best = best.max(last - first + 1);
    }
    best as u64
}

/// A duration as a .NET `TimeSpan` prints it: `[d.]hh:mm:ss[.fffffff]`.
pub(crate) fn timespan(d: Duration) -> String {
    let ticks = (d.as_nanos() + 50) / 100;
    let fraction = ticks % 10_000_000;
    let secs = ticks / 10_000_000;
    let (days, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    if days > 0 {
        out.push_str(&format!("{days}."));
    }
    out.push_str(&format!("{h:02}:{m:02}:{s:02}"));
    if fraction > 0 {
        out.push_str(&format!(".{fraction:07}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn lim(calls: u32, window_ms: u64) -> RealLimit {
        RealLimit {
            calls,
            window: ms(window_ms),
        }
    }

    #[test]
    fn timespan_matches_dotnet() {
        assert_eq!(timespan(Duration::from_secs(60)), "00:01:00");
        assert_eq!(timespan(Duration::from_secs(3600)), "01:00:00");
        assert_eq!(timespan(ms(600)), "00:00:00.6000000");
        assert_eq!(timespan(Duration::from_secs(36)), "00:00:36");
        assert_eq!(
            timespan(Duration::from_micros(1_500_250)),
            "00:00:01.5002500"
        );
        assert_eq!(timespan(Duration::from_secs(90_061)), "1.01:01:01");
        assert_eq!(timespan(super::scaled(60.0, 0.01)), "00:00:00.6000000");
    }

    #[test]
    fn sliding_admits_up_to_the_limit_and_names_the_wait() {
        let t0 = Instant::now();
        let mut book = QuotaBook::new(t0);
        let limits = [lim(3, 1000)];
        for i in 0..3 {
            let d = book.check(
                "c",
                "default",
                &limits,
                WindowKind::Sliding,
                t0 + ms(i * 100),
            );
            assert_eq!(d, Decision::Admit);
        }
        // The oldest call (at 0) leaves the window at 1000 ms.
        let d = book.check("c", "default", &limits, WindowKind::Sliding, t0 + ms(400));
        assert_eq!(
            d,
            Decision::Throttle {
                wait: ms(600),
                limit: limits[0]
            }
        );
        // Still refused one nanosecond before, admitted exactly at the edge.
        let before = t0 + ms(1000) - Duration::from_nanos(1);
        assert!(matches!(
            book.check("c", "default", &limits, WindowKind::Sliding, before),
            Decision::Throttle { .. }
        ));
        let d = book.check("c", "default", &limits, WindowKind::Sliding, t0 + ms(1000));
        assert_eq!(d, Decision::Admit);
        // Other clients and classes have their own buckets.
        let d = book.check(
            "other",
            "default",
            &limits,
            WindowKind::Sliding,
            t0 + ms(1000),
        );
        assert_eq!(d, Decision::Admit);
        let d = book.check("c", "hunting", &limits, WindowKind::Sliding, t0 + ms(1000));
        assert_eq!(d, Decision::Admit);
    }

    #[test]
    fn sliding_binding_limit_is_the_longest_wait() {
        let t0 = Instant::now();
        let mut book = QuotaBook::new(t0);
        let limits = [lim(2, 100), lim(3, 10_000)];
        let k = WindowKind::Sliding;
        assert_eq!(book.check("c", "x", &limits, k, t0), Decision::Admit);
        assert_eq!(
            book.check("c", "x", &limits, k, t0 + ms(1)),
            Decision::Admit
        );
        match book.check("c", "x", &limits, k, t0 + ms(50)) {
            Decision::Throttle { wait, limit } => {
                assert_eq!(limit, limits[0]);
                assert_eq!(wait, ms(50));
            }
            d => panic!("{d:?}"),
        }
        assert_eq!(
            book.check("c", "x", &limits, k, t0 + ms(200)),
            Decision::Admit
        );
        // Now the hourly-like limit binds: the call at 0 leaves at 10 s.
        match book.check("c", "x", &limits, k, t0 + ms(400)) {
            Decision::Throttle { wait, limit } => {
                assert_eq!(limit, limits[1]);
                assert_eq!(wait, ms(9_600));
            }
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn fixed_windows_reset_on_their_boundary() {
        let t0 = Instant::now();
        let mut book = QuotaBook::new(t0);
        let limits = [lim(2, 1000)];
        let k = WindowKind::Fixed;
        assert_eq!(
            book.check("c", "x", &limits, k, t0 + ms(900)),
            Decision::Admit
        );
        assert_eq!(
            book.check("c", "x", &limits, k, t0 + ms(950)),
            Decision::Admit
        );
        assert_eq!(
            book.check("c", "x", &limits, k, t0 + ms(960)),
            Decision::Throttle {
                wait: ms(40),
                limit: limits[0]
            }
        );
        // A new window: two more pass, four within 150 ms.
        assert_eq!(
            book.check("c", "x", &limits, k, t0 + ms(1000)),
            Decision::Admit
        );
        assert_eq!(
            book.check("c", "x", &limits, k, t0 + ms(1050)),
            Decision::Admit
        );
        assert!(matches!(
            book.check("c", "x", &limits, k, t0 + ms(1060)),
            Decision::Throttle { .. }
        ));
    }

    #[test]
    fn zero_calls_always_throttle() {
        let t0 = Instant::now();
        let mut book = QuotaBook::new(t0);
        let limits = [lim(0, 500)];
        assert_eq!(
            book.check("c", "x", &limits, WindowKind::Sliding, t0),
            Decision::Throttle {
                wait: ms(500),
                limit: limits[0]
            }
        );
    }

    #[test]
    fn peak_counts_the_fullest_half_open_window() {
        let t: Vec<Duration> = [0, 100, 200, 1000, 1050, 1100, 1150]
            .iter()
            .map(|&n| ms(n))
            .collect();
        assert_eq!(peak(&t, ms(900)), 4); // (250, 1150]
        assert_eq!(peak(&t, ms(1000)), 5); // (150, 1150]
        assert_eq!(peak(&t, ms(1051)), 6); // (99, 1150]
        assert_eq!(peak(&t, ms(100)), 2);
        assert_eq!(peak(&[], ms(100)), 0);
    }
}
