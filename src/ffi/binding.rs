//! `qg_binding`: a limiter's key and cost bound once, for calls that repeat them.

use super::boundary::free_box;
use super::error::qg_result;
use super::limiter::{keyed, qg_limiter};
use crate::limiter::Binding;
use std::ffi::c_char;

/// A key and a cost of one limiter bound once by `qg_limiter_bind`, so that a call that
/// repeats them passes one handle: `qg_binding_try_acquire` is
/// `qg_limiter_try_acquire(l, key, cost, NULL)` (the same admissions, errors and
/// statistics, never ahead of a queued call) without the key's handling and the bucket's
/// lookup on every call.
///
/// Methods: `qg_binding_try_acquire`, `qg_binding_free`.
///
/// A binding keeps its limiter alive (`qg_limiter_free` may come first), and, for a
/// limiter without a store, its bucket: neither the eviction that makes room for new keys
/// nor idle purges drop a bucket that a binding holds, so its count stays exact, and the
/// bucket counts towards the limiter's maximum of buckets until the binding is freed.
/// New rates of the bucket (`qg_limiter_set_rates`) apply to its bindings at once.
/// Safe to use from any number of threads at once; `qg_binding_free` must not run while
/// another thread still uses the binding.
pub struct qg_binding {
    binding: Binding,
}

/// Binds `key` and `cost` of the limiter `l` for `qg_binding_try_acquire`: on success
/// `*out` receives a binding that the caller frees with `qg_binding_free`.
///
/// `key` and `cost`: as in `qg_limiter_acquire`. For a limiter without a store the bucket
/// is created now (`QG_ERR_TOO_MANY_BUCKETS` when none can make room) and `cost` is
/// checked against its rates (`QG_ERR_INVALID_ARGUMENT`); with a store, `cost` is checked
/// against the bucket's rates at each call. Returns `QG_ERR_CLOSED` once the limiter is
/// closed. `l` and `out` must not be NULL. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn qg_limiter_bind(
    l: *const qg_limiter,
    key: *const c_char,
    cost: u32,
    out: *mut *mut qg_binding,
) -> qg_result {
    ffi_boundary! {
        keyed(l, key, out, |l, key| Ok(qg_binding { binding: l.bind(key, cost)? }))
    }
}

/// Admits a call of the bound cost on the bound key now if every window of the bucket
/// allows it and nobody waits before it; never blocks.
///
/// Returns `QG_OK` only when admitted, `QG_ERR_WOULD_BLOCK` when not (the last error's
/// text then says how long the call would wait; `qg_limiter_try_acquire` and
/// `qg_limiter_wait_time` report it as a number), `QG_ERR_CLOSED` once the limiter is
/// closed, `QG_ERR_INVALID_ARGUMENT` when the bucket's rates no longer admit the bound
/// cost, `QG_ERR_STORE` when the store fails. `b` must not be NULL. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn qg_binding_try_acquire(b: *const qg_binding) -> qg_result {
    ffi_boundary! {
        unsafe { super::boundary::try_ref(b, "binding") }?.binding.try_acquire()?;
        Ok(())
    }
}

/// Frees a binding; its bucket may then be dropped when idle. NULL does nothing; never
/// free the same binding twice, nor while another thread uses it.
#[unsafe(no_mangle)]
pub extern "C" fn qg_binding_free(b: *mut qg_binding) {
    super::boundary::run_void(|| unsafe { free_box(b) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ffi::error::{
        QG_ERR_CLOSED, QG_ERR_INVALID_ARGUMENT, QG_ERR_NULL_ARGUMENT, QG_ERR_WOULD_BLOCK, QG_OK,
    };
    use crate::limiter::{Limiter, Rate};
    use std::time::Duration;

    #[test]
    fn a_binding_admits_refuses_and_outlives_its_limiter_handle() {
        let limiter = Limiter::builder()
            .rate(Rate::new(2, Duration::from_secs(3600)))
            .build()
            .unwrap();
        let l = Box::into_raw(Box::new(qg_limiter { limiter }));
        let mut b = std::ptr::null_mut();
        assert_eq!(
            qg_limiter_bind(l, c"k".as_ptr(), 0, &mut b),
            QG_ERR_INVALID_ARGUMENT
        );
        assert_eq!(
            qg_limiter_bind(l, c"k".as_ptr(), 3, &mut b),
            QG_ERR_INVALID_ARGUMENT
        );
        assert_eq!(
            qg_limiter_bind(l, c"k".as_ptr(), 1, std::ptr::null_mut()),
            QG_ERR_NULL_ARGUMENT
        );
        assert!(b.is_null(), "written only on success");
        assert_eq!(qg_limiter_bind(l, c"k".as_ptr(), 1, &mut b), QG_OK);
        super::super::limiter::qg_limiter_free(l);
        assert_eq!(qg_binding_try_acquire(b), QG_OK);
        assert_eq!(qg_binding_try_acquire(b), QG_OK);
        assert_eq!(qg_binding_try_acquire(b), QG_ERR_WOULD_BLOCK);
        let binding = unsafe { &*b };
        assert_eq!(binding.binding.limiter().stats("k").refusals, 1);
        binding.binding.limiter().close();
        assert_eq!(qg_binding_try_acquire(b), QG_ERR_CLOSED);
        assert_eq!(
            qg_binding_try_acquire(std::ptr::null()),
            QG_ERR_NULL_ARGUMENT
        );
        qg_binding_free(b);
        qg_binding_free(std::ptr::null_mut());
    }
}
