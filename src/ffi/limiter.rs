//! `qg_limiter`: admits calls by key within exact rolling windows.

use super::boundary::{OutPtr, ceil_ms, free_box, opt_str, to_box, try_ref};
use super::bucket_stats::qg_bucket_stats;
use super::error::{FfiError, qg_result};
use super::hold::qg_hold;
use super::settings::rate;
use super::ticket::qg_ticket;
use crate::limiter::Limiter;
use std::ffi::c_char;
use std::time::Duration;

/// A thread-safe limiter of calls by key: exact rolling windows, several at once, FIFO
/// waiting with deadlines, pauses, cancellable waits.
///
/// Methods: `qg_limiter_acquire`, `qg_limiter_try_acquire`, `qg_limiter_wait_time`,
/// `qg_limiter_hold`, `qg_limiter_try_hold`, `qg_limiter_enqueue_hold`, `qg_limiter_enqueue`,
/// `qg_limiter_bind`, `qg_limiter_pause`, `qg_limiter_set_rates`, `qg_limiter_stats`,
/// `qg_limiter_close`, `qg_limiter_free`.
///
/// Reference counted inside and safe to use from any number of threads at once. Free it
/// once with `qg_limiter_free`; tickets, bindings and clients that use it keep what they
/// need alive.
pub struct qg_limiter {
    pub(crate) limiter: Limiter,
}

unsafe fn key<'a>(key: *const c_char) -> Result<&'a str, FfiError> {
    if !key.is_null() {
        // Keys are route names, nearly always ASCII: checked a word at a time, where
        // full UTF-8 validation of a short key goes byte by byte.
        let bytes = unsafe { std::ffi::CStr::from_ptr(key) }.to_bytes();
        if bytes.is_ascii() {
            // SAFETY: ASCII is valid UTF-8.
            return Ok(unsafe { std::str::from_utf8_unchecked(bytes) });
        }
    }
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
/// The frame of a limiter call on a key whose handle goes to `*out`: checks the limiter,
/// the key and `out`, runs `call`, and boxes its handle into `*out`.
pub(super) fn keyed<T>(
    l: *const qg_limiter,
    key: *const c_char,
    out: *mut *mut T,
    call: impl FnOnce(&Limiter, &str) -> Result<T, FfiError>,
) -> Result<(), FfiError> {
    // SAFETY: the exported functions pass their callers' pointers, under the contract of
    // their doc comments.
    let l = unsafe { try_ref(l, "limiter") }?;
    let key = unsafe { self::key(key) }?;
    let out = OutPtr::new(out, "out")?;
    out.write(to_box(call(&l.limiter, key)?));
    Ok(())
}

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
        keyed(l, key, out, |l, key| {
            let ticket = l.enqueue(key, cost, super::boundary::timeout_ms(timeout_ms))?;
            Ok(qg_ticket { ticket })
        })
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
        keyed(l, key, out, |l, key| {
            let hold = l.hold(key, cost, super::boundary::timeout_ms(timeout_ms))?;
            Ok(qg_hold { _hold: hold })
        })
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
        keyed(l, key, out, |l, key| {
            let hold = report_wait(l.try_hold(key, cost), OutPtr::optional(wait_ms))?;
            Ok(qg_hold { _hold: hold })
        })
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
        keyed(l, key, out, |l, key| {
            let timeout = super::boundary::timeout_ms(timeout_ms);
            let ticket = l.enqueue_hold(key, cost, timeout, None)?;
            Ok(qg_ticket { ticket })
        })
    }
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
