//! `qg_bucket_stats`: a snapshot of one bucket's statistics.

use super::boundary::{OutPtr, ceil_ms, free_box, try_ref};
use super::error::{FfiError, qg_result};
use crate::limiter::BucketStats;
use std::time::Duration;

/// A snapshot of one bucket's statistics, taken by `qg_limiter_stats`.
///
/// Methods: `qg_bucket_stats_get`, `qg_bucket_stats_window_count`,
/// `qg_bucket_stats_window`, `qg_bucket_stats_free`.
///
/// Immutable: safe to read from several threads. Free it with `qg_bucket_stats_free`.
pub struct qg_bucket_stats {
    pub(super) stats: BucketStats,
}

/// Field of `qg_bucket_stats_get`: calls admitted.
pub const QG_STAT_ADMITTED_CALLS: u32 = 0;
/// Field of `qg_bucket_stats_get`: units admitted (the sum of costs).
pub const QG_STAT_ADMITTED_UNITS: u32 = 1;
/// Field of `qg_bucket_stats_get`: admitted calls that had to wait.
pub const QG_STAT_WAITED_CALLS: u32 = 2;
/// Field of `qg_bucket_stats_get`: total wait of admitted calls, in microseconds.
pub const QG_STAT_TOTAL_WAIT_US: u32 = 3;
/// Field of `qg_bucket_stats_get`: the longest wait of an admitted call, in microseconds.
pub const QG_STAT_LONGEST_WAIT_US: u32 = 4;
/// Field of `qg_bucket_stats_get`: calls that failed with a timeout.
pub const QG_STAT_TIMEOUTS: u32 = 5;
/// Field of `qg_bucket_stats_get`: waits that were cancelled.
pub const QG_STAT_CANCELLATIONS: u32 = 6;
/// Field of `qg_bucket_stats_get`: try-acquires refused.
pub const QG_STAT_REFUSALS: u32 = 7;
/// Field of `qg_bucket_stats_get`: pauses requested.
pub const QG_STAT_PAUSES: u32 = 8;
/// Field of `qg_bucket_stats_get`: milliseconds the bucket stays paused from the snapshot.
pub const QG_STAT_PAUSED_FOR_MS: u32 = 9;
/// Field of `qg_bucket_stats_get`: calls waiting in the queue at the snapshot.
pub const QG_STAT_QUEUED: u32 = 10;
/// Field of `qg_bucket_stats_get`: units held in flight (admitted as holds, not released)
/// at the snapshot; they count in every window.
pub const QG_STAT_IN_FLIGHT: u32 = 11;
/// Field of `qg_bucket_stats_get`: holds not released within their lease (counted from
/// the lease's end). Kept by this process, like the other counters.
pub const QG_STAT_EXPIRED_HOLDS: u32 = 12;

/// Reads one counter of a snapshot (`field`: one of the `QG_STAT_*` constants) into
/// `*out`. Unknown fields give `QG_ERR_INVALID_ARGUMENT`. `s` and `out` must not be NULL.
#[unsafe(no_mangle)]
pub extern "C" fn qg_bucket_stats_get(
    s: *const qg_bucket_stats,
    field: u32,
    out: *mut u64,
) -> qg_result {
    ffi_boundary! {
        let s = &unsafe { try_ref(s, "stats") }?.stats;
        let out = OutPtr::new(out, "out")?;
        let us = |ns: u64| ns / 1_000;
        let v = match field {
            QG_STAT_ADMITTED_CALLS => s.admitted_calls,
            QG_STAT_ADMITTED_UNITS => s.admitted_units,
            QG_STAT_WAITED_CALLS => s.waited_calls,
            QG_STAT_TOTAL_WAIT_US => us(s.total_wait_ns),
            QG_STAT_LONGEST_WAIT_US => us(s.longest_wait_ns),
            QG_STAT_TIMEOUTS => s.timeouts,
            QG_STAT_CANCELLATIONS => s.cancellations,
            QG_STAT_REFUSALS => s.refusals,
            QG_STAT_PAUSES => s.pauses,
            QG_STAT_PAUSED_FOR_MS => ceil_ms(Duration::from_nanos(s.paused_for_ns)),
            QG_STAT_QUEUED => s.queued,
            QG_STAT_IN_FLIGHT => s.in_flight,
            QG_STAT_EXPIRED_HOLDS => s.expired_holds,
            other => return Err(FfiError::invalid(format!("unknown statistics field {other}"))),
        };
        out.write(v);
        Ok(())
    }
}

/// Writes to `*out` how many rates (windows) the snapshot's bucket has.
/// `s` and `out` must not be NULL.
#[unsafe(no_mangle)]
pub extern "C" fn qg_bucket_stats_window_count(
    s: *const qg_bucket_stats,
    out: *mut usize,
) -> qg_result {
    ffi_boundary! {
        let s = unsafe { try_ref(s, "stats") }?;
        OutPtr::new(out, "out")?.write(s.stats.windows.len());
        Ok(())
    }
}

/// Reads window `index` (in the order the rates were given): the units inside it at the
/// snapshot into `*used`, the rate's limit into `*calls`, and its length including the
/// margin into `*window_ms`. An index past the end gives `QG_ERR_INVALID_ARGUMENT`.
/// No pointer may be NULL.
#[unsafe(no_mangle)]
pub extern "C" fn qg_bucket_stats_window(
    s: *const qg_bucket_stats,
    index: usize,
    used: *mut u64,
    calls: *mut u64,
    window_ms: *mut u64,
) -> qg_result {
    ffi_boundary! {
        let s = unsafe { try_ref(s, "stats") }?;
        let (used, calls, window) = (
            OutPtr::new(used, "used")?,
            OutPtr::new(calls, "calls")?,
            OutPtr::new(window_ms, "window_ms")?,
        );
        let w = s.stats.windows.get(index).ok_or_else(|| {
            FfiError::invalid(format!("window {index} is past the {} windows", s.stats.windows.len()))
        })?;
        used.write(w.used);
        calls.write(w.calls);
        window.write(w.window_ns / 1_000_000);
        Ok(())
    }
}

/// Frees a statistics snapshot. NULL does nothing; never free the same snapshot twice.
#[unsafe(no_mangle)]
pub extern "C" fn qg_bucket_stats_free(s: *mut qg_bucket_stats) {
    super::boundary::run_void(|| unsafe { free_box(s) })
}
