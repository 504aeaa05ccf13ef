//! Progress on stderr: a bar redrawn in place on a terminal, a few plain lines otherwise.

use parking_lot::{Condvar, Mutex};
use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const REDRAW: Duration = Duration::from_millis(100);
const BAR: usize = 24;
/// Plain lines are printed at each quarter.
const STEPS: u64 = 4;

/// Extra text shown after the bar at each redraw (the quota in use, for instance).
pub type Status = Box<dyn Fn() -> String + Send + Sync>;

/// Where progress goes: chosen once from stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    /// A bar redrawn in place.
    Bar,
    /// A line at the start, at each quarter and at the end.
    Lines,
}

impl Style {
    pub fn detect() -> Self {
        if std::io::stderr().is_terminal() {
            Style::Bar
        } else {
            Style::Lines
        }
    }
}

/// One phase of work with a known total; `inc` is safe from any thread.
pub struct Phase {
    shared: Arc<Shared>,
    ticker: Option<JoinHandle<()>>,
}

struct Shared {
    label: String,
    total: u64,
    done: AtomicU64,
    started: Instant,
    style: Style,
    status: Option<Status>,
    stopped: Mutex<bool>,
    wake: Condvar,
    /// The width of the bar's line on screen, to blank it when a shorter line replaces it.
    width: AtomicUsize,
}

impl Shared {
    fn line(&self, done: u64) -> String {
        let total = self.total.max(1);
        let filled = (done.min(total) as usize * BAR) / total as usize;
        let bar: String = (0..BAR)
            .map(|i| if i < filled { '#' } else { '-' })
            .collect();
        let status = self.status.as_ref().map(|s| s()).unwrap_or_default();
        format!(
            "{:<18} [{bar}] {done:>6}/{:<6} {:>6.1} s  {status}",
            self.label,
            self.total,
            self.started.elapsed().as_secs_f64()
        )
    }

    /// Draws `line` over the current one.
    fn overwrite(&self, line: &str, end: &str) {
        let width = line.chars().count();
        let pad = self
            .width
            .swap(width, Ordering::Relaxed)
            .saturating_sub(width);
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r{line}{:pad$}{end}", "");
        let _ = err.flush();
    }
}

impl Phase {
    /// Starts a phase of `total` steps.
    pub fn start(style: Style, label: &str, total: u64, status: Option<Status>) -> Phase {
        let shared = Arc::new(Shared {
            label: label.to_string(),
            total,
            done: AtomicU64::new(0),
            started: Instant::now(),
            style,
            status,
            stopped: Mutex::new(false),
            wake: Condvar::new(),
            width: AtomicUsize::new(0),
        });
        let ticker = match style {
            Style::Bar => {
                let s = Arc::clone(&shared);
                Some(std::thread::spawn(move || {
                    let mut stopped = s.stopped.lock();
                    while !*stopped {
                        s.overwrite(&s.line(s.done.load(Ordering::Relaxed)), "");
                        s.wake.wait_for(&mut stopped, REDRAW);
                    }
                }))
            }
            Style::Lines => {
                eprintln!("{label}: 0/{total}");
                None
            }
        };
        Phase { shared, ticker }
    }

    /// Counts `n` more steps done.
    pub fn add(&self, n: u64) {
        let s = &*self.shared;
        let before = s.done.fetch_add(n, Ordering::Relaxed);
        if s.style == Style::Lines && s.total > 0 {
            let after = before + n;
            let step = |d: u64| d.min(s.total) * STEPS / s.total;
            if step(after) > step(before) && after < s.total {
                eprintln!(
                    "{}: {after}/{} ({:.1} s)",
                    s.label,
                    s.total,
                    s.started.elapsed().as_secs_f64()
                );
            }
        }
    }

    /// Counts one more step done.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Ends the phase with a line that says what was done (over the bar on a terminal).
    pub fn finish(mut self, summary: &str) {
        self.stop();
        let s = &*self.shared;
        let line = format!(
            "{}: {summary} ({:.1} s)",
            s.label,
            s.started.elapsed().as_secs_f64()
        );
        match s.style {
            Style::Bar => s.overwrite(&line, "\n"),
            Style::Lines => eprintln!("{line}"),
        }
    }

    fn stop(&mut self) {
        *self.shared.stopped.lock() = true;
        self.shared.wake.notify_all();
        if let Some(t) = self.ticker.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Phase {
    /// A phase left unfinished (an error) still ends its bar's line.
    fn drop(&mut self) {
        let had_bar = self.ticker.is_some();
        self.stop();
        if had_bar {
            eprintln!();
        }
    }
}
