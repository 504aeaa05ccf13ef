//! The simulator's own figures, and the small formatting helpers of the tables.

use quotagate::sim::{LogEntry, SimStats};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// What the simulator saw, from its log: the server's side of a run.
#[derive(Debug, Serialize)]
pub struct ServerFigures {
    /// Requests received, token requests included.
    pub requests: u64,
    /// Requests other than token requests.
    pub api_requests: u64,
    pub token_requests: u64,
    /// 429 answers.
    pub throttled: u64,
    pub errors_503: u64,
    pub resets: u64,
    /// Requests per status answered.
    pub by_status: BTreeMap<u16, u64>,
    /// Requests per endpoint: `METHOD /path` with ids as `{id}`.
    pub by_endpoint: BTreeMap<String, u64>,
    /// Each class's limits with the most calls ever counted in one window.
    pub quota: Vec<QuotaUse>,
}

/// One limit of a class, and its peak.
#[derive(Debug, Serialize)]
pub struct QuotaUse {
    pub class: String,
    /// Calls allowed per window.
    pub limit: u32,
    /// The most calls the server counted inside one rolling window.
    pub peak: u64,
    /// The window in real time.
    pub window_ms: f64,
    /// The window in API time (before the time scale).
    pub api_window_secs: f64,
    /// The class's calls the server counted, as a share of what this limit allowed from
    /// the first of them to the last: `calls / (limit × (span / window + 1))`. Near 1 when
    /// the limit bound the run and the client used all of it.
    pub run_use: f64,
}

impl ServerFigures {
    pub fn new(stats: &SimStats, log: &[LogEntry], time_scale: f64) -> Self {
        let mut by_endpoint = BTreeMap::new();
        for e in log {
            *by_endpoint.entry(endpoint(&e.method, &e.path)).or_insert(0) += 1;
        }
        let mut counted: BTreeMap<&str, Vec<Duration>> = BTreeMap::new();
        for e in log.iter().filter(|e| e.counted) {
            counted.entry(&e.class).or_default().push(e.instant);
        }
        let quota = stats
            .max_in_window
            .iter()
            .flat_map(|(class, peaks)| {
                let instants = counted.get(class.as_str()).map_or(&[][..], Vec::as_slice);
                peaks.iter().map(move |p| QuotaUse {
                    class: class.clone(),
                    limit: p.calls,
                    peak: p.peak,
                    window_ms: p.window.as_secs_f64() * 1e3,
                    api_window_secs: round_to(p.window.as_secs_f64() / time_scale, 1e-6),
                    run_use: run_use(instants, p.calls, p.window),
                })
            })
            .collect();
        ServerFigures {
            requests: stats.requests,
            api_requests: stats.requests - stats.token_requests,
            token_requests: stats.token_requests,
            throttled: stats.throttled,
            errors_503: stats.errors_503,
            resets: stats.resets,
            by_status: stats.by_status.clone(),
            by_endpoint,
            quota,
        }
    }

    /// The limits whose peak went over: empty when the quotas held.
    pub fn exceeded(&self) -> Vec<&QuotaUse> {
        self.quota
            .iter()
            .filter(|q| q.peak > u64::from(q.limit))
            .collect()
    }

    /// The quota table: one row per class and window.
    pub fn quota_table(&self) -> String {
        let rows: Vec<Vec<String>> = self
            .quota
            .iter()
            .map(|q| {
                let api = api_window(q.api_window_secs);
                let real = q.window_ms / 1e3;
                vec![
                    q.class.clone(),
                    // The real window only when the time scale makes it differ.
                    if (real - q.api_window_secs).abs() < 1e-6 {
                        api
                    } else {
                        format!("{api} ({})", duration(Duration::from_secs_f64(real)))
                    },
                    thousands(q.peak),
                    thousands(u64::from(q.limit)),
                    format!("{:.0}%", 100.0 * q.peak as f64 / f64::from(q.limit.max(1))),
                    format!("{:.1}%", 100.0 * q.run_use),
                ]
            })
            .collect();
        table(
            &[
                "class",
                "window (real)",
                "peak",
                "limit",
                "use",
                "over the run",
            ],
            &[false, false, true, true, true, true],
            &rows,
        )
    }

    /// The requests per endpoint, as a table.
    pub fn endpoint_table(&self) -> String {
        let rows: Vec<Vec<String>> = self
            .by_endpoint
            .iter()
            .map(|(e, n)| vec![e.clone(), thousands(*n)])
            .collect();
        table(&["endpoint", "requests"], &[false, true], &rows)
    }
}

/// `calls / (limit × (span / window + 1))` for calls counted at `instants`: the share of
/// what a limit of `limit` per `window` allowed from the first to the last.
fn run_use(instants: &[Duration], limit: u32, window: Duration) -> f64 {
    let (Some(first), Some(last)) = (instants.iter().min(), instants.iter().max()) else {
        return 0.0;
    };
    let windows = (*last - *first).as_secs_f64() / window.as_secs_f64() + 1.0;
    instants.len() as f64 / (f64::from(limit.max(1)) * windows)
}

/// `METHOD /path` with the query dropped and ids replaced, so that calls group by endpoint.
pub fn endpoint(method: &str, target: &str) -> String {
    let path = target.split(['?', '#']).next().unwrap_or("");
    let segments: Vec<&str> = path.split('/').collect();
    let token = segments.iter().any(|s| s.eq_ignore_ascii_case("oauth2"));
    let named: Vec<String> = segments
        .iter()
        .enumerate()
        .map(|(i, s)| {
            if token && i == 1 {
                "{tenant}".to_string()
            } else if looks_like_id(s) {
                "{id}".to_string()
            } else {
                s.to_string()
            }
        })
        .collect();
    format!("{method} {}", named.join("/"))
}

/// Machine ids are 40 hex digits, alert and tenant ids GUIDs or long numbers.
fn looks_like_id(segment: &str) -> bool {
    segment.len() >= 8
        && segment.bytes().any(|b| b.is_ascii_digit())
        && segment
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || b == b'-' || b == b'_' || b == b'%')
}

fn round_to(x: f64, step: f64) -> f64 {
    (x / step).round() * step
}

/// `1234567` as `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A duration for people: `850 ms`, `12.3 s`, `4 min 05 s`, `2 h 05 min`.
pub fn duration(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1e3;
    let s = d.as_secs();
    if ms < 1.0 && !d.is_zero() {
        format!("{:.2} ms", ms)
    } else if ms < 1000.0 {
        format!("{:.0} ms", ms)
    } else if ms < 120_000.0 {
        format!("{:.1} s", ms / 1e3)
    } else if s < 7200 {
        format!("{} min {:02} s", s / 60, s % 60)
    } else {
        format!("{} h {:02} min", s / 3600, s % 3600 / 60)
    }
}

/// An API window: `1 min`, `1 h`, `90 s`.
pub fn api_window(secs: f64) -> String {
    let whole = secs.round();
    if (secs - whole).abs() > 1e-6 {
        format!("{secs} s")
    } else if whole >= 3600.0 && whole % 3600.0 == 0.0 {
        format!("{} h", whole / 3600.0)
    } else if whole >= 60.0 && whole % 60.0 == 0.0 {
        format!("{} min", whole / 60.0)
    } else {
        format!("{whole} s")
    }
}

/// A plain text table; `right` says which columns are aligned right. Empty headers
/// leave out the header line.
pub fn table(headers: &[&str], right: &[bool], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut s = String::from(" ");
        for (i, cell) in cells.enumerate() {
            let pad = widths[i].saturating_sub(cell.chars().count());
            s.push_str("  ");
            if right.get(i).copied().unwrap_or(false) {
                s.push_str(&" ".repeat(pad));
                s.push_str(cell);
            } else {
                s.push_str(cell);
                s.push_str(&" ".repeat(pad));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = if headers.iter().all(|h| h.is_empty()) {
        String::new()
    } else {
        line(&mut headers.iter().copied())
    };
    for row in rows {
        out.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_group_by_shape() {
        let id = "a".repeat(39) + "1";
        assert_eq!(
            endpoint("POST", &format!("/api/machines/{id}/tags")),
            "POST /api/machines/{id}/tags"
        );
        assert_eq!(
            endpoint("GET", "/api/machines?$top=50&$skip=100"),
            "GET /api/machines"
        );
        assert_eq!(
            endpoint(
                "POST",
                "/00000000-0000-4000-8000-000000000001/oauth2/v2.0/token"
            ),
            "POST /{tenant}/oauth2/v2.0/token"
        );
        assert_eq!(
            endpoint("GET", "/api/machines/SoftwareInventoryByMachine"),
            "GET /api/machines/SoftwareInventoryByMachine"
        );
    }

    #[test]
    fn numbers_and_durations_for_people() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1400), "1,400");
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(duration(Duration::from_millis(600)), "600 ms");
        assert_eq!(duration(Duration::from_millis(36_000)), "36.0 s");
        assert_eq!(duration(Duration::from_secs(245)), "4 min 05 s");
        assert_eq!(duration(Duration::from_secs(7500)), "2 h 05 min");
        assert_eq!(api_window(60.0), "1 min");
        assert_eq!(api_window(3600.0), "1 h");
        assert_eq!(api_window(90.0), "90 s");
        assert_eq!(api_window(0.5), "0.5 s");
    }

    #[test]
    fn tables_align() {
        let t = table(
            &["a", "n"],
            &[false, true],
            &[
                vec!["xyz".into(), "1".into()],
                vec!["b".into(), "1,000".into()],
            ],
        );
        assert_eq!(t, "   a        n\n   xyz      1\n   b    1,000\n");
    }
}
