//! Result codes and the calling thread's last error text.

use super::boundary::{OutPtr, try_mut_slice};
use crate::limiter;
use std::cell::RefCell;
use std::ffi::c_char;

/// The result of every fallible function: `QG_OK` (0) or one of the `QG_ERR_*` codes.
///
/// Codes come in numbered blocks and are never renumbered or reused. Use
/// `qg_result_str()` for a static description and `qg_last_error_message()` for the text
/// of the calling thread's last failure.
#[allow(non_camel_case_types)]
pub type qg_result = u32;

/// Success.
pub const QG_OK: qg_result = 0;

// 1xx: arguments and the boundary itself.
/// A required pointer argument was NULL.
pub const QG_ERR_NULL_ARGUMENT: qg_result = 100;
/// An argument has a value that can never work (invalid UTF-8, zero cost, zero window, ...).
pub const QG_ERR_INVALID_ARGUMENT: qg_result = 101;
/// The caller's buffer is too small; see the function for how the needed size is told.
pub const QG_ERR_BUFFER_TOO_SMALL: qg_result = 102;
/// The library panicked; the operation did not complete. The last error text tells why.
pub const QG_ERR_PANIC: qg_result = 103;

// 2xx: the limiter.
/// The deadline passed, or could not be met, before the quota admitted the call.
pub const QG_ERR_TIMEOUT: qg_result = 200;
/// `qg_limiter_try_acquire`: the call was not admitted; `wait_ms` tells the wait needed.
pub const QG_ERR_WOULD_BLOCK: qg_result = 201;
/// The wait was cancelled.
pub const QG_ERR_CANCELLED: qg_result = 202;
/// The limiter (or client) was closed.
pub const QG_ERR_CLOSED: qg_result = 203;
/// The limiter already holds its maximum number of buckets, none of them idle.
pub const QG_ERR_TOO_MANY_BUCKETS: qg_result = 204;
/// `qg_ticket_wait`: the slice ran out; the ticket keeps its place in the queue.
pub const QG_PENDING: qg_result = 205;
/// `qg_ticket_cancel`: the ticket was no longer waiting (admitted, timed out, cancelled).
pub const QG_ERR_NOT_WAITING: qg_result = 206;

/// A failure on its way to C: a code and the text for `qg_last_error_message`.
#[derive(Debug)]
pub(crate) struct FfiError {
    pub(crate) code: qg_result,
    pub(crate) message: String,
}

impl FfiError {
    pub(crate) fn new(code: qg_result, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub(crate) fn null(name: &str) -> Self {
        Self::new(QG_ERR_NULL_ARGUMENT, format!("{name} is NULL"))
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::new(QG_ERR_INVALID_ARGUMENT, message)
    }
}

impl From<limiter::Error> for FfiError {
    fn from(e: limiter::Error) -> Self {
        let code = match &e {
            limiter::Error::Timeout => QG_ERR_TIMEOUT,
            limiter::Error::WouldBlock { .. } => QG_ERR_WOULD_BLOCK,
            limiter::Error::Cancelled => QG_ERR_CANCELLED,
            limiter::Error::Closed => QG_ERR_CLOSED,
            limiter::Error::TooManyBuckets { .. } => QG_ERR_TOO_MANY_BUCKETS,
            limiter::Error::InvalidArgument(_) => QG_ERR_INVALID_ARGUMENT,
        };
        Self::new(code, e.to_string())
    }
}

thread_local! {
    static LAST_ERROR: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Records `e` as the calling thread's last error and returns its code.
pub(crate) fn record(e: FfiError) -> qg_result {
    LAST_ERROR.with(|last| *last.borrow_mut() = e.message);
    e.code
}

/// Copies the text of the calling thread's last failure into `buf` as a NUL-terminated
/// UTF-8 string, and its length (without the NUL) into `*written`.
///
/// The text stays until the next failure on the same thread; with no failure yet it is
/// empty. Calling this function never changes it.
///
/// Returns `QG_OK`; `QG_ERR_NULL_ARGUMENT` when `written` is NULL, or `buf` is NULL while
/// `len` is not 0; `QG_ERR_BUFFER_TOO_SMALL` when `len` cannot hold the text and its NUL:
/// then, as the one exception to the out-parameter rule, `*written` receives the length
/// needed without the NUL (call with `buf = NULL, len = 0` to ask for it).
#[unsafe(no_mangle)]
pub extern "C" fn qg_last_error_message(
    buf: *mut c_char,
    len: usize,
    written: *mut usize,
) -> qg_result {
    // Not inside `ffi_boundary!`: reading the last error must not replace it.
    let run = || -> qg_result {
        let Ok(written) = OutPtr::new(written, "written") else {
            return QG_ERR_NULL_ARGUMENT;
        };
        LAST_ERROR.with(|last| {
            let text = last.borrow();
            let bytes = text.as_bytes();
            if len < bytes.len() + 1 {
                written.write(bytes.len());
                return QG_ERR_BUFFER_TOO_SMALL;
            }
            let Ok(out) = (unsafe { try_mut_slice(buf.cast::<u8>(), len, "buf") }) else {
                return QG_ERR_NULL_ARGUMENT;
            };
            out[..bytes.len()].copy_from_slice(bytes);
            out[bytes.len()] = 0;
            written.write(bytes.len());
            QG_OK
        })
    };
    std::panic::catch_unwind(run).unwrap_or(QG_ERR_PANIC)
}

/// A static, NUL-terminated description of a result code (never NULL; an unknown code
/// gives "unknown result code"). The string lives as long as the library is loaded.
#[unsafe(no_mangle)]
pub extern "C" fn qg_result_str(code: qg_result) -> *const c_char {
    let s: &'static [u8] = match code {
        QG_OK => b"success\0",
        QG_ERR_NULL_ARGUMENT => b"a required pointer argument was NULL\0",
        QG_ERR_INVALID_ARGUMENT => b"an argument has an invalid value\0",
        QG_ERR_BUFFER_TOO_SMALL => b"the buffer is too small\0",
        QG_ERR_PANIC => b"the library panicked; the operation did not complete\0",
        QG_ERR_TIMEOUT => b"the deadline passed before the quota admitted the call\0",
        QG_ERR_WOULD_BLOCK => b"the quota would not admit the call now\0",
        QG_ERR_CANCELLED => b"the wait was cancelled\0",
        QG_ERR_CLOSED => b"the limiter or client is closed\0",
        QG_ERR_TOO_MANY_BUCKETS => b"the limiter holds its maximum number of buckets\0",
        QG_PENDING => b"still waiting: the ticket keeps its place\0",
        QG_ERR_NOT_WAITING => b"the ticket is no longer waiting\0",
        _ => b"unknown result code\0",
    };
    s.as_ptr().cast()
}
