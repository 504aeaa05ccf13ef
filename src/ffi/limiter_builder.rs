//! `qg_limiter_builder`: a limiter's rates and settings, before it is built.

use super::boundary::{OutPtr, free_box, to_box, try_mut, try_ref};
use super::error::{FfiError, qg_result};
use super::limiter::qg_limiter;
use super::settings::{rate, set_store, store_url};
use crate::limiter::{Limiter, LimiterBuilder};
use std::ffi::c_char;
use std::time::Duration;

/// Configures a limiter before it is built.
///
/// Methods: `qg_limiter_builder_new`, `qg_limiter_builder_add_rate`,
/// `qg_limiter_builder_set_margin_ms`, `qg_limiter_builder_set_margin` (deprecated),
/// `qg_limiter_builder_set_hold_lease_ms`,
/// `qg_limiter_builder_set_max_buckets`, `qg_limiter_builder_set_store`,
/// `qg_limiter_builder_build`, `qg_limiter_builder_free`.
///
/// Owned by the caller, who frees it with `qg_limiter_builder_free`. Not for use by
/// several threads at once.
pub struct qg_limiter_builder {
    builder: LimiterBuilder,
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
pub extern "C" fn qg_limiter_builder_set_margin_ms(
    b: *mut qg_limiter_builder,
    margin_ms: u64,
) -> qg_result {
    ffi_boundary! {
        let b = unsafe { try_mut(b, "builder") }?;
        b.builder = std::mem::take(&mut b.builder).margin(Duration::from_millis(margin_ms));
        Ok(())
    }
}

/// Deprecated: `qg_limiter_builder_set_margin_ms`, whose name says its unit; kept for
/// callers written against 0.1.
#[unsafe(no_mangle)]
pub extern "C" fn qg_limiter_builder_set_margin(
    b: *mut qg_limiter_builder,
    margin_ms: u64,
) -> qg_result {
    qg_limiter_builder_set_margin_ms(b, margin_ms)
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
///   server shared by many hosts;
/// - `redis+cluster://[:password@]host:port[,host:port...]/[?prefix=qg]`, or
///   `rediss+cluster://` for TLS: a Redis Cluster, each bucket on the node of its slot.
///
/// All take `on_unavailable=wait` (the default: retry until the call's deadline, then
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
        let url = unsafe { store_url(url) }?;
        set_store(&mut b.builder, url);
        Ok(())
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ffi::error::{QG_ERR_INVALID_ARGUMENT, QG_OK};
    use crate::ffi::limiter::qg_limiter_free;
    use std::ffi::CString;

    #[test]
    fn a_malformed_store_url_leaves_the_builder_as_it_was() {
        let mut b = std::ptr::null_mut();
        assert_eq!(qg_limiter_builder_new(&mut b), QG_OK);
        assert_eq!(qg_limiter_builder_add_rate(b, 5, 1_000), QG_OK);
        let bad = CString::new("ftp://nowhere/state").unwrap();
        assert_eq!(
            qg_limiter_builder_set_store(b, bad.as_ptr()),
            QG_ERR_INVALID_ARGUMENT
        );
        let file = CString::new("file:///nonexistent-dir/state.q").unwrap();
        assert_eq!(qg_limiter_builder_set_store(b, file.as_ptr()), QG_OK);
        assert_eq!(qg_limiter_builder_set_store(b, std::ptr::null()), QG_OK);
        // Still the rate added first, and back in memory: the build opens no store.
        let mut l = std::ptr::null_mut();
        assert_eq!(qg_limiter_builder_build(b, &mut l), QG_OK);
        assert_eq!(unsafe { &*l }.limiter.store_location(), None);
        qg_limiter_free(l);
        qg_limiter_builder_free(b);
    }
}
