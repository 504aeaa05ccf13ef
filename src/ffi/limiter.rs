//! `qg_limiter_builder`, `qg_limiter`, `qg_ticket` and `qg_bucket_stats`.

use super::boundary::{OutPtr, ceil_ms, free_box, opt_str, timeout_ms, to_box, try_mut, try_ref};
use super::error::{FfiError, QG_ERR_NOT_WAITING, QG_PENDING, qg_result};
use crate::limiter::{BucketStats, Hold, Limiter, LimiterBuilder, Rate, Ticket, Wait};
use std::ffi::c_char;
use std::time::Duration;

/// Configures a limiter before it is built.
///
/// Methods: `qg_limiter_builder_new`, `qg_limiter_builder_add_rate`,
/// `qg_limiter_builder_set_margin`, `qg_limiter_builder_set_hold_lease_ms`,
/// `qg_limiter_builder_set_max_buckets`,
/// `qg_limiter_builder_build`, `qg_limiter_builder_free`.
///
/// Owned by the caller, who frees it with `qg_limiter_builder_free`. Not for use by
/// several threads at once.
pub struct qg_limiter_builder {
    builder: LimiterBuilder,
}

/// A thread-safe limiter of calls by key: exact rolling windows, several at once, FIFO
/// waiting with deadlines, pauses, cancellable waits.
///
/// Methods: `qg_limiter_acquire`, `qg_limiter_try_acquire`, `qg_limiter_hold`,
/// `qg_limiter_try_hold`, `qg_limiter_enqueue_hold`, `qg_limiter_enqueue`,
/// `qg_limiter_pause`, `qg_limiter_set_rates`, `qg_limiter_stats`, `qg_limiter_close`,
/// `qg_limiter_free`.
///
/// Reference counted inside and safe to use from any number of threads at once. Free it
/// once with `qg_limiter_free`; tickets and clients that use it keep what they need alive.
pub struct qg_limiter {
    pub(crate) limiter: Limiter,
}

/// A place in a bucket's queue, taken by `qg_limiter_enqueue`, so that a caller can wait
/// in short slices (and react to Ctrl+C in between) without losing its turn.
///
/// Methods: `qg_ticket_wait`, `qg_ticket_cancel`, `qg_ticket_take_hold`, `qg_ticket_free`.
///
/// One thread may wait on it while another cancels it. `qg_ticket_free` must not run
/// while another thread still uses the ticket.
pub struct qg_ticket {
    ticket: Ticket,
}

/// A call admitted by `qg_limiter_hold` (or `qg_limiter_try_hold`, or taken from an
/// admitted hold ticket with `qg_ticket_take_hold`): its units count in every window of
/// its bucket from admission on, in flight, and from the instant it is released on. Make
/// the call between the two, and release the hold when its answer has come back (or it
/// failed): a server counts a call when it arrives, between the send and the answer, so
/// a slot freed one window after the answer never collides with the server's count.
///
/// Methods: `qg_hold_release`.
///
/// Owned by the caller, who releases it once with `qg_hold_release`. It may be released
/// from another thread than the one that took it. A hold never released counts from its
/// lease's end (`qg_limiter_builder_set_hold_lease_ms`).
pub struct qg_hold {
    /// Released by its drop, when `qg_hold_release` frees the handle.
    _hold: Hold,
}

/// A snapshot of one bucket's statistics, taken by `qg_limiter_stats`.
///
/// Methods: `qg_bucket_stats_get`, `qg_bucket_stats_window_count`,
/// `qg_bucket_stats_window`, `qg_bucket_stats_free`.
///
/// Immutable: safe to read from several threads. Free it with `qg_bucket_stats_free`.
pub struct qg_bucket_stats {
    stats: BucketStats,
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

fn rate(calls: u32, window_ms: u64) -> Result<Rate, FfiError> {
    let r = Rate::new(calls, Duration::from_millis(window_ms));
    r.validate().map_err(FfiError::invalid)?;
    Ok(r)
}

/// Creates a builder with no rates, no margin and the default bucket limit (65536).
/// On success `*out` receives a builder that the caller frees with
/// `qg_limiter_builder_free`. `out` must not be NULL.
#[unsafe(no_mangle)]
pub extern "C" fn qg_limiter_builder_new(out: *mut *mut qg_limiter_builder) -> qg_result {
    ffi_boundary! {
        let out = OutPtr::new(out, "out")?;
        out.write(to_box(qg_limiter_builder { builder: Limiter::builder() }));
        Ok(())
    }
}

/// Adds a rate of `calls` per `window_ms` milliseconds; every rate applies at once to
/// each bucket without rates of its own. Both must be above zero
/// (`QG_ERR_INVALID_ARGUMENT` otherwise). `b` must not be NULL.
#[unsafe(no_mangle)]
pub extern "C" fn qg_limiter_builder_add_rate(
    b: *mut qg_limiter_builder,
    calls: u32,
    window_ms: u64,
) -> qg_result {
    ffi_boundary! {
        let b = unsafe { try_mut(b, "builder") }?;
        let r = rate(calls, window_ms)?;
        b.builder = std::mem::take(&mut b.builder).rate(r);
        Ok(())
    }
}

/// Widens every window by `margin_ms` milliseconds (0 by default). Holds
/// (`qg_limiter_hold`) already count a call until its answer, which is exact as the
/// server sees it; a margin is for servers whose clocks run differently. `b` must not be
/// NULL.
#[unsafe(no_mangle)]
pub extern "C" fn qg_limiter_builder_set_margin(
    b: *mut qg_limiter_builder,
    margin_ms: u64,
) -> qg_result {
    ffi_boundary! {
        let b = unsafe { try_mut(b, "builder") }?;
        b.builder = std::mem::take(&mut b.builder).margin(Duration::from_millis(margin_ms));
        Ok(())
    }
}

/// Sets the lease of holds (`qg_limiter_hold`): a hold not released within `lease_ms`
/// milliseconds counts from the lease's end, so that a caller that never releases (or a
/// process that dies holding units of a shared store) delays the others by one lease at
/// most. 1 to 3600000 (`QG_ERR_INVALID_ARGUMENT` otherwise, at build time); 330000 by
/// default. `b` must not be NULL.
#[unsafe(no_mangle)]
pub extern "C" fn qg_limiter_builder_set_hold_lease_ms(
    b: *mut qg_limiter_builder,
    lease_ms: u64,
) -> qg_result {
    ffi_boundary! {
        let b = unsafe { try_mut(b, "builder") }?;
        b.builder = std::mem::take(&mut b.builder).hold_lease(Duration::from_millis(lease_ms));
        Ok(())
    }
}

/// Sets the most buckets the limiter holds at once (at least 1); idle buckets are dropped
/// to make room, and beyond that calls on new keys fail with `QG_ERR_TOO_MANY_BUCKETS`.
/// `b` must not be NULL.
#[unsafe(no_mangle)]
pub extern "C" fn qg_limiter_builder_set_max_buckets(
    b: *mut qg_limiter_builder,
    max_buckets: usize,
) -> qg_result {
    ffi_boundary! {
        let b = unsafe { try_mut(b, "builder") }?;
        if max_buckets == 0 {
            return Err(FfiError::invalid("max_buckets must be at least 1"));
        }
        b.builder = std::mem::take(&mut b.builder).max_buckets(max_buckets);
        Ok(())
    }
}

/// Keeps every bucket in a store shared with every process that opens it, instead of
/// in this process's memory:
///
/// - `file:///var/lib/quotagate/tenant.q`: a state file shared by the processes of one
///   host (created if missing; C, Python and PowerShell processes may mix);
/// - `redis://[:password@]host[:port][/db][?prefix=qg]`, or `rediss://` for TLS: a Redis
///   server shared by many hosts.
///
/// Both take `on_unavailable=wait` (the default: retry until the call's deadline, then
/// fail with `QG_ERR_STORE`) or `on_unavailable=fail` (fail at once). A malformed URL
/// fails here with `QG_ERR_INVALID_ARGUMENT`; the store is opened by
/// `qg_limiter_builder_build`, which fails with `QG_ERR_STORE` when it cannot be. NULL
/// goes back to memory. `b` must not be NULL.
#[unsafe(no_mangle)]
pub extern "C" fn qg_limiter_builder_set_store(
    b: *mut qg_limiter_builder,
    url: *const c_char,
) -> qg_result {
    ffi_boundary! {
        let b = unsafe { try_mut(b, "builder") }?;
        let url = unsafe { opt_str(url, "url") }?;
        let next = std::mem::take(&mut b.builder);
        b.builder = match url {
            Some(u) => next.store(checked_store_url(u)?),
            None => next.no_store(),
        };
        Ok(())
    }
}

/// `url` if it is a well-formed store URL; the store itself is opened at build time.
pub(super) fn checked_store_url(url: &str) -> Result<&str, FfiError> {
    crate::limiter::store::StoreConfig::parse(url).map_err(|e| FfiError::invalid(e.message))?;
    Ok(url)
}

/// Builds a limiter from the builder's settings. The builder is not consumed: free it
/// with `qg_limiter_builder_free`, or build again. On success `*out` receives a limiter
/// that the caller frees with `qg_limiter_free`. Fails with `QG_ERR_INVALID_ARGUMENT`
/// when no rate was added. `b` and `out` must not be NULL.
#[unsafe(no_mangle)]
pub extern "C" fn qg_limiter_builder_build(
    b: *const qg_limiter_builder,
    out: *mut *mut qg_limiter,
) -> qg_result {
    ffi_boundary! {
        let b = unsafe { try_ref(b, "builder") }?;
        let out = OutPtr::new(out, "out")?;
        let limiter = b.builder.build()?;
        out.write(to_box(qg_limiter { limiter }));
        Ok(())
    }
}

/// Frees a builder. NULL does nothing; never free the same builder twice.
#[unsafe(no_mangle)]
pub extern "C" fn qg_limiter_builder_free(b: *mut qg_limiter_builder) {
    super::boundary::run_void(|| unsafe { free_box(b) })
}

unsafe fn key<'a>(key: *const c_char) -> Result<&'a str, FfiError> {
    Ok(unsafe { opt_str(key, "key") }?.unwrap_or(""))
}

/// Waits in FIFO order until the bucket of `key` admits a call of `cost` units.
///
/// `key` is a NUL-terminated UTF-8 string naming the bucket; NULL means the default
/// bucket. `cost` is at least 1 and at most the smallest rate's calls
/// (`QG_ERR_INVALID_ARGUMENT` otherwise). `timeout_ms` < 0 waits without a deadline;
/// otherwise the call fails with `QG_ERR_TIMEOUT` at the deadline, or at once when the
/// deadline cannot be met. Returns `QG_ERR_CLOSED` if the limiter is or gets closed.
///
/// The calling thread blocks inside this function; a caller that must react to signals
/// should use `qg_limiter_enqueue` and wait in slices. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn qg_limiter_acquire(
    l: *const qg_limiter,
    key: *const c_char,
    cost: u32,
    timeout_ms: i64,
) -> qg_result {
    ffi_boundary! {
        let l = unsafe { try_ref(l, "limiter") }?;
        let key = unsafe { self::key(key) }?;
        l.limiter.acquire(key, cost, super::boundary::timeout_ms(timeout_ms))?;
        Ok(())
    }
}

/// Admits a call of `cost` units now if every window of the bucket allows it and nobody
/// waits before it; never blocks.
///
/// Returns `QG_OK` only when admitted. Returns `QG_ERR_WOULD_BLOCK` when not, and then
/// writes to `*wait_ms` the wait the call would need, rounded up to whole milliseconds (a
/// lower bound when others are queued). `wait_ms` may be NULL; it is written (0) on
/// `QG_OK` too. `key`: as in `qg_limiter_acquire`. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn qg_limiter_try_acquire(
    l: *const qg_limiter,
    key: *const c_char,
    cost: u32,
    wait_ms: *mut u64,
) -> qg_result {
    ffi_boundary! {
        let l = unsafe { try_ref(l, "limiter") }?;
        let key = unsafe { self::key(key) }?;
        report_wait(l.limiter.try_acquire(key, cost), OutPtr::optional(wait_ms))?;
        Ok(())
    }
}

/// The answer of a call that never waits, with the wait it reports: 0 on admission, the
/// wait rounded up to whole milliseconds on `WouldBlock`, nothing on other failures.
fn report_wait<T>(
    result: Result<T, crate::limiter::Error>,
    wait_out: Option<OutPtr<u64>>,
) -> Result<T, FfiError> {
    let wait = match &result {
        Ok(_) => Some(0),
        Err(crate::limiter::Error::WouldBlock { wait }) => Some(ceil_ms(*wait)),
        Err(_) => None,
    };
    if let (Some(w), Some(out)) = (wait, wait_out) {
        out.write(w);
    }
    result.map_err(Into::into)
}

/// Writes to `*wait_ms` how long a call of `cost` units on `key`'s bucket would wait now,
/// behind the calls already queued, rounded up to whole milliseconds; 0 when
/// `qg_limiter_try_acquire` would admit it. Takes nothing. `key` and `cost`: as in
/// `qg_limiter_acquire`. `l` and `wait_ms` must not be NULL. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn qg_limiter_wait_time(
    l: *const qg_limiter,
    key: *const c_char,
    cost: u32,
    wait_ms: *mut u64,
) -> qg_result {
    ffi_boundary! {
        let l = unsafe { try_ref(l, "limiter") }?;
        let key = unsafe { self::key(key) }?;
        let out = OutPtr::new(wait_ms, "wait_ms")?;
        out.write(ceil_ms(l.limiter.wait_time(key, cost)?));
        Ok(())
    }
}

/// Takes a place in the queue of `key`'s bucket for a call of `cost` units, with a
/// deadline `timeout_ms` from now (< 0: none), without blocking.
///
/// On success `*out` receives a ticket; wait on it with `qg_ticket_wait` (in short slices
/// if the caller must stay responsive) and free it with `qg_ticket_free`, which gives up
/// the place if it was not admitted. A ticket may be admitted at once. `key` and `cost`:
/// as in `qg_limiter_acquire`. `l` and `out` must not be NULL. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn qg_limiter_enqueue(
    l: *const qg_limiter,
    key: *const c_char,
    cost: u32,
    timeout_ms: i64,
    out: *mut *mut qg_ticket,
) -> qg_result {
    ffi_boundary! {
        let l = unsafe { try_ref(l, "limiter") }?;
        let key = unsafe { self::key(key) }?;
        let out = OutPtr::new(out, "out")?;
        let ticket = l.limiter.enqueue(key, cost, super::boundary::timeout_ms(timeout_ms))?;
        out.write(to_box(qg_ticket { ticket }));
        Ok(())
    }
}

/// Waits in FIFO order, like `qg_limiter_acquire`, until the bucket of `key` admits a
/// call of `cost` units, and admits it as a hold: on success `*out` receives a hold whose
/// units count in every window from now on, in flight, and from the instant
/// `qg_hold_release` releases it. Make the call, then release the hold once its answer
/// has come back or it failed.
///
/// `key`, `cost` and `timeout_ms`: as in `qg_limiter_acquire`. `l` and `out` must not be
/// NULL. Blocks the calling thread; for waits in slices use `qg_limiter_enqueue_hold`.
/// Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn qg_limiter_hold(
    l: *const qg_limiter,
    key: *const c_char,
    cost: u32,
    timeout_ms: i64,
    out: *mut *mut qg_hold,
) -> qg_result {
    ffi_boundary! {
        let l = unsafe { try_ref(l, "limiter") }?;
        let key = unsafe { self::key(key) }?;
        let out = OutPtr::new(out, "out")?;
        let hold = l.limiter.hold(key, cost, super::boundary::timeout_ms(timeout_ms))?;
        out.write(to_box(qg_hold { _hold: hold }));
        Ok(())
    }
}

/// Admits a call of `cost` units as a hold now if the bucket allows it and nobody waits
/// before it; never blocks. On `QG_OK`, `*out` receives the hold (see `qg_limiter_hold`)
/// and `*wait_ms` 0; on `QG_ERR_WOULD_BLOCK`, `*wait_ms` receives the wait the call would
/// need (a lower bound while units are in flight) and `*out` is left alone. `wait_ms` may
/// be NULL; `l` and `out` must not be. `key` and `cost`: as in `qg_limiter_acquire`.
/// Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn qg_limiter_try_hold(
    l: *const qg_limiter,
    key: *const c_char,
    cost: u32,
    wait_ms: *mut u64,
    out: *mut *mut qg_hold,
) -> qg_result {
    ffi_boundary! {
        let l = unsafe { try_ref(l, "limiter") }?;
        let key = unsafe { self::key(key) }?;
        let out = OutPtr::new(out, "out")?;
        let hold = report_wait(l.limiter.try_hold(key, cost), OutPtr::optional(wait_ms))?;
        out.write(to_box(qg_hold { _hold: hold }));
        Ok(())
    }
}

/// Takes a place in the queue of `key`'s bucket for a hold of `cost` units, like
/// `qg_limiter_enqueue`: wait on the ticket in slices with `qg_ticket_wait`, then take
/// the hold with `qg_ticket_take_hold`. Freeing an admitted ticket whose hold was not
/// taken releases the hold at once. `l` and `out` must not be NULL. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn qg_limiter_enqueue_hold(
    l: *const qg_limiter,
    key: *const c_char,
    cost: u32,
    timeout_ms: i64,
    out: *mut *mut qg_ticket,
) -> qg_result {
    ffi_boundary! {
        let l = unsafe { try_ref(l, "limiter") }?;
        let key = unsafe { self::key(key) }?;
        let out = OutPtr::new(out, "out")?;
        let ticket = l.limiter.enqueue_hold(key, cost, super::boundary::timeout_ms(timeout_ms), None)?;
        out.write(to_box(qg_ticket { ticket }));
        Ok(())
    }
}

/// Takes the hold of an admitted ticket made by `qg_limiter_enqueue_hold`: on success
/// `*out` receives the hold, which the caller releases with `qg_hold_release`. Fails with
/// `QG_ERR_INVALID_ARGUMENT` for a ticket made by `qg_limiter_enqueue`, one not admitted
/// yet, or one whose hold was already taken. `t` and `out` must not be NULL.
#[unsafe(no_mangle)]
pub extern "C" fn qg_ticket_take_hold(t: *const qg_ticket, out: *mut *mut qg_hold) -> qg_result {
    ffi_boundary! {
        let t = unsafe { try_ref(t, "ticket") }?;
        let out = OutPtr::new(out, "out")?;
        let hold = t.ticket.hold()?;
        out.write(to_box(qg_hold { _hold: hold }));
        Ok(())
    }
}

/// Releases a hold: its units count in every window from now on, no longer in flight,
/// and `h` is freed. Call it when the held call's answer has come back or it failed.
/// NULL does nothing; never release the same hold twice.
#[unsafe(no_mangle)]
pub extern "C" fn qg_hold_release(h: *mut qg_hold) {
    super::boundary::run_void(|| unsafe { free_box(h) })
}

/// Waits for the ticket's admission for at most `slice_ms` milliseconds (< 0: as long as
/// it takes; 0: only checks).
///
/// Returns `QG_OK` once admitted (again on every later call), `QG_PENDING` when the slice
/// ran out with the place kept, `QG_ERR_TIMEOUT` when the ticket's deadline passed or
/// cannot be met, `QG_ERR_CANCELLED` after `qg_ticket_cancel`, `QG_ERR_CLOSED` when the
/// limiter was closed. `t` must not be NULL. Another thread may cancel meanwhile.
#[unsafe(no_mangle)]
pub extern "C" fn qg_ticket_wait(t: *const qg_ticket, slice_ms: i64) -> qg_result {
    let pending = std::cell::Cell::new(false);
    let pending_ref = &pending;
    let code = ffi_boundary! {
        let t = unsafe { try_ref(t, "ticket") }?;
        pending_ref.set(t.ticket.wait(timeout_ms(slice_ms))? == Wait::Pending);
        Ok(())
    };
    if pending.get() { QG_PENDING } else { code }
}

/// Cancels a waiting ticket: it leaves the queue without disturbing the others' order,
/// and a thread blocked in `qg_ticket_wait` on it returns `QG_ERR_CANCELLED` at once.
///
/// Returns `QG_OK` when the wait was cancelled, `QG_ERR_NOT_WAITING` when the ticket was
/// no longer waiting (an admitted call keeps its permit). `t` must not be NULL.
/// Safe to call from any thread while another waits on the ticket.
#[unsafe(no_mangle)]
pub extern "C" fn qg_ticket_cancel(t: *const qg_ticket) -> qg_result {
    ffi_boundary! {
        let t = unsafe { try_ref(t, "ticket") }?;
        if t.ticket.cancel() {
            Ok(())
        } else {
            Err(FfiError::new(QG_ERR_NOT_WAITING, "the ticket is no longer waiting"))
        }
    }
}

/// Frees a ticket, giving up its place if it was not admitted. NULL does nothing; never
/// free the same ticket twice, nor while another thread uses it.
#[unsafe(no_mangle)]
pub extern "C" fn qg_ticket_free(t: *mut qg_ticket) {
    super::boundary::run_void(|| unsafe { free_box(t) })
}

/// Makes every caller of `key`'s bucket wait until `duration_ms` from now. A later pause
/// extends the current one; a shorter one never shortens it. `key`: as in
/// `qg_limiter_acquire`. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn qg_limiter_pause(
    l: *const qg_limiter,
    key: *const c_char,
    duration_ms: u64,
) -> qg_result {
    ffi_boundary! {
        let l = unsafe { try_ref(l, "limiter") }?;
        let key = unsafe { self::key(key) }?;
        l.limiter.pause(key, Duration::from_millis(duration_ms))?;
        Ok(())
    }
}

/// Gives `key`'s bucket its own rates: `count` rates of `calls[i]` per `window_ms[i]`
/// milliseconds, all applying at once. Creates the bucket or replaces its rates; calls
/// already admitted stay counted. `calls` and `window_ms` point to `count` elements each
/// (`count` at least 1). `key`: as in `qg_limiter_acquire`. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn qg_limiter_set_rates(
    l: *const qg_limiter,
    key: *const c_char,
    calls: *const u32,
    window_ms: *const u64,
    count: usize,
) -> qg_result {
    ffi_boundary! {
        let l = unsafe { try_ref(l, "limiter") }?;
        let key = unsafe { self::key(key) }?;
        if calls.is_null() {
            return Err(FfiError::null("calls"));
        }
        if window_ms.is_null() {
            return Err(FfiError::null("window_ms"));
        }
        if count == 0 {
            return Err(FfiError::invalid("a bucket needs at least one rate"));
        }
        let calls = unsafe { std::slice::from_raw_parts(calls, count) };
        let windows = unsafe { std::slice::from_raw_parts(window_ms, count) };
        let rates = calls
            .iter()
            .zip(windows)
            .map(|(&c, &w)| rate(c, w))
            .collect::<Result<Vec<_>, _>>()?;
        l.limiter.set_rates(key, &rates)?;
        Ok(())
    }
}

/// Takes a snapshot of the statistics of `key`'s bucket (zeros, with the default rates'
/// windows, for a bucket not used yet). On success `*out` receives a snapshot that the
/// caller frees with `qg_bucket_stats_free`. With a store, the windows, pause and queue
/// are the store's (all processes'), the counters this process's own; `QG_ERR_STORE`
/// when the store cannot answer. `l` and `out` must not be NULL. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn qg_limiter_stats(
    l: *const qg_limiter,
    key: *const c_char,
    out: *mut *mut qg_bucket_stats,
) -> qg_result {
    ffi_boundary! {
        let l = unsafe { try_ref(l, "limiter") }?;
        let key = unsafe { self::key(key) }?;
        let out = OutPtr::new(out, "out")?;
        out.write(to_box(qg_bucket_stats { stats: l.limiter.try_stats(key)? }));
        Ok(())
    }
}

/// Closes the limiter: every waiter wakes with `QG_ERR_CLOSED` and later calls fail the
/// same way. The handle stays valid until `qg_limiter_free`. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn qg_limiter_close(l: *const qg_limiter) -> qg_result {
    ffi_boundary! {
        unsafe { try_ref(l, "limiter") }?.limiter.close();
        Ok(())
    }
}

/// Releases the caller's reference to the limiter. NULL does nothing; never free the same
/// handle twice. Waiters are not woken: close first if threads may still wait on it.
#[unsafe(no_mangle)]
pub extern "C" fn qg_limiter_free(l: *mut qg_limiter) {
    super::boundary::run_void(|| unsafe { free_box(l) })
}

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
