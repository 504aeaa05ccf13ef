//! `qg_hold`: a call admitted whose units count in flight until it is released.

use super::boundary::free_box;
use crate::limiter::Hold;

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
    pub(super) _hold: Hold,
}

/// Releases a hold: its units count in every window from now on, no longer in flight,
/// and `h` is freed. Call it when the held call's answer has come back or it failed.
/// NULL does nothing; never release the same hold twice.
#[unsafe(no_mangle)]
pub extern "C" fn qg_hold_release(h: *mut qg_hold) {
    super::boundary::run_void(|| unsafe { free_box(h) })
}
