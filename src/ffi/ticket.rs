//! `qg_ticket`: a place in a bucket's queue, waited on in slices.

use super::boundary::{OutPtr, Success, free_box, timeout_ms, to_box, try_ref};
use super::error::{FfiError, QG_ERR_NOT_WAITING, qg_result};
use super::hold::qg_hold;
use crate::limiter::{Ticket, Wait};

/// A place in a bucket's queue, taken by `qg_limiter_enqueue`, so that a caller can wait
/// in short slices (and react to Ctrl+C in between) without losing its turn.
///
/// Methods: `qg_ticket_wait`, `qg_ticket_cancel`, `qg_ticket_take_hold`, `qg_ticket_free`.
///
/// One thread may wait on it while another cancels it. `qg_ticket_free` must not run
/// while another thread still uses the ticket.
pub struct qg_ticket {
    pub(super) ticket: Ticket,
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

/// Waits for the ticket's admission for at most `slice_ms` milliseconds (< 0: as long as
/// it takes; 0: only checks).
///
/// Returns `QG_OK` once admitted (again on every later call), `QG_PENDING` when the slice
/// ran out with the place kept, `QG_ERR_TIMEOUT` when the ticket's deadline passed or
/// cannot be met, `QG_ERR_CANCELLED` after `qg_ticket_cancel`, `QG_ERR_CLOSED` when the
/// limiter was closed. `t` must not be NULL. Another thread may cancel meanwhile.
#[unsafe(no_mangle)]
pub extern "C" fn qg_ticket_wait(t: *const qg_ticket, slice_ms: i64) -> qg_result {
    ffi_boundary! {
        let t = unsafe { try_ref(t, "ticket") }?;
        Ok(match t.ticket.wait(timeout_ms(slice_ms))? {
            Wait::Admitted => Success::Ok,
            Wait::Pending => Success::Pending,
        })
    }
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
