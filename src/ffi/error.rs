//! Result codes and the calling thread's last error text.

use super::boundary::{OutPtr, try_mut_slice};
use crate::client::{self, ErrorDetails};
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
/// What was asked for does not exist (a header, a field).
pub const QG_ERR_NOT_FOUND: qg_result = 104;
/// Paging: there are no more pages or items. Not a failure.
pub const QG_DONE: qg_result = 105;
/// `qg_version_compatible`: the library does not serve a caller built against that
/// header version (another ABI series, or a library older than the header).
pub const QG_ERR_VERSION_MISMATCH: qg_result = 106;
/// A call from inside one of the library's callbacks would wait for the very call that
/// runs the callback: a token provider sending with the client it provides tokens for,
/// a log callback calling `qg_set_logger`. It fails at once instead.
pub const QG_ERR_REENTRANT_CALL: qg_result = 107;

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
/// The shared quota store failed: unreachable until the deadline (or at once with
/// `on_unavailable=fail`), a damaged or newer-format state file, or wrong settings. No call
/// was admitted without it.
pub const QG_ERR_STORE: qg_result = 207;

// 3xx: the client.
/// The server answered with an error status (paging; `qg_client_send` returns `QG_OK` for
/// every answer). `qg_last_error_detail` gives the server's details.
pub const QG_ERR_HTTP_STATUS: qg_result = 300;
/// The connection failed, or the outcome of a request that must not be repeated is
/// unknown (an ambiguous POST failure is reported, never silently repeated).
pub const QG_ERR_TRANSPORT: qg_result = 301;
/// The quota budget (attempts, or the longest wait for quota) ran out while throttled.
pub const QG_ERR_THROTTLED: qg_result = 302;
/// No access token could be obtained (the token endpoint refused the credentials).
pub const QG_ERR_AUTH: qg_result = 303;
/// The answer's body is larger than the configured limit.
pub const QG_ERR_BODY_TOO_LARGE: qg_result = 304;
/// Paging stopped: an `@odata.nextLink` led back to a page already fetched, or the list
/// had more pages than `qg_client_builder_set_max_pages` allows.
pub const QG_ERR_PAGING: qg_result = 305;

// 4xx: the simulator.
/// The simulator could not start (the port is taken, ...).
pub const QG_ERR_IO: qg_result = 400;

/// Field of `qg_last_error_detail` and `qg_response_error_detail`: the HTTP status.
pub const QG_DETAIL_HTTP_STATUS: u32 = 0;
/// Field: the server's `error.code`, such as `ResourceNotFound`.
pub const QG_DETAIL_SERVER_CODE: u32 = 1;
/// Field: the server's `error.message`.
pub const QG_DETAIL_SERVER_MESSAGE: u32 = 2;
/// Field: the server's `error.target` (the correlation id to quote to support).
pub const QG_DETAIL_TARGET: u32 = 3;
/// Field: the `request-id` header.
pub const QG_DETAIL_REQUEST_ID: u32 = 4;
/// Field: the last wait the server asked for, in milliseconds.
pub const QG_DETAIL_RETRY_AFTER_MS: u32 = 5;
/// Field: the attempts made.
pub const QG_DETAIL_ATTEMPTS: u32 = 6;
/// Field: the library's whole message, such as "the server answered with an error
/// (HTTP 404 ResourceNotFound): ... [target ...]", for bindings to show as is.
pub const QG_DETAIL_SUMMARY: u32 = 7;

/// A failure on its way to C: a code and the text for `qg_last_error_message`.
#[derive(Debug)]
pub(crate) struct FfiError {
    pub(crate) code: qg_result,
    pub(crate) message: String,
    pub(crate) details: Option<Box<ErrorDetails>>,
}

impl FfiError {
    pub(crate) fn new(code: qg_result, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            details: None,
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
            limiter::Error::Timeout { .. } => QG_ERR_TIMEOUT,
            limiter::Error::WouldBlock { .. } => QG_ERR_WOULD_BLOCK,
            limiter::Error::Cancelled => QG_ERR_CANCELLED,
            limiter::Error::Closed => QG_ERR_CLOSED,
            limiter::Error::TooManyBuckets { .. } => QG_ERR_TOO_MANY_BUCKETS,
            limiter::Error::InvalidArgument(_) => QG_ERR_INVALID_ARGUMENT,
            limiter::Error::Store(_) => QG_ERR_STORE,
        };
        Self::new(code, e.to_string())
    }
}

impl From<client::Error> for FfiError {
    fn from(e: client::Error) -> Self {
        use client::Error as E;
        let code = match &e {
            E::Http(_) => QG_ERR_HTTP_STATUS,
            E::Throttled(_) => QG_ERR_THROTTLED,
            E::Auth(..) => QG_ERR_AUTH,
            E::Transport(..) => QG_ERR_TRANSPORT,
            E::Timeout(..) => QG_ERR_TIMEOUT,
            E::BodyTooLarge(_) => QG_ERR_BODY_TOO_LARGE,
            E::Cancelled => QG_ERR_CANCELLED,
            E::Closed | E::LimiterClosed => QG_ERR_CLOSED,
            E::InvalidArgument(_) => QG_ERR_INVALID_ARGUMENT,
            E::Store(_) => QG_ERR_STORE,
            E::Paging(_) => QG_ERR_PAGING,
            E::Reentrant(_) => QG_ERR_REENTRANT_CALL,
        };
        Self {
            code,
            message: e.to_string(),
            details: e.details().cloned().map(Box::new),
        }
    }
}

thread_local! {
    static LAST_ERROR: RefCell<(String, Option<Box<ErrorDetails>>)> = const { RefCell::new((String::new(), None)) };
}

/// Records `e` as the calling thread's last error and returns its code.
pub(crate) fn record(e: FfiError) -> qg_result {
    LAST_ERROR.with(|last| *last.borrow_mut() = (e.message, e.details));
    e.code
}

/// One field of an error's details as text ("" when unknown); `None` for an unknown field.
/// `summary` is the whole message of the failure.
pub(crate) fn detail_text(d: Option<&ErrorDetails>, summary: &str, field: u32) -> Option<String> {
    let opt = |v: Option<&String>| v.cloned().unwrap_or_default();
    Some(match field {
        QG_DETAIL_SUMMARY => summary.to_string(),
        QG_DETAIL_HTTP_STATUS => d
            .and_then(|d| d.status)
            .map(|s| s.to_string())
            .unwrap_or_default(),
        QG_DETAIL_SERVER_CODE => opt(d.and_then(|d| d.code.as_ref())),
        QG_DETAIL_SERVER_MESSAGE => opt(d.and_then(|d| d.message.as_ref())),
        QG_DETAIL_TARGET => opt(d.and_then(|d| d.target.as_ref())),
        QG_DETAIL_REQUEST_ID => opt(d.and_then(|d| d.request_id.as_ref())),
        QG_DETAIL_RETRY_AFTER_MS => d
            .and_then(|d| d.retry_after)
            .map(|r| super::boundary::ceil_ms(r).to_string())
            .unwrap_or_default(),
        QG_DETAIL_ATTEMPTS => d.map(|d| d.attempts.to_string()).unwrap_or_default(),
        _ => return None,
    })
}

/// Copies `text` into a caller's buffer with the `(buf, len, written)` convention of
/// `qg_last_error_message`, without touching the last error.
pub(crate) fn copy_out(text: &str, buf: *mut c_char, len: usize, written: *mut usize) -> qg_result {
    let Ok(written) = OutPtr::new(written, "written") else {
        return QG_ERR_NULL_ARGUMENT;
    };
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
}

/// Like [`copy_out`] inside the boundary: a too-small buffer is a recorded failure.
pub(crate) fn copy_out_checked(
    text: &str,
    buf: *mut c_char,
    len: usize,
    written: *mut usize,
) -> Result<(), FfiError> {
    match copy_out(text, buf, len, written) {
        QG_OK => Ok(()),
        QG_ERR_NULL_ARGUMENT => Err(FfiError::null(if written.is_null() {
            "written"
        } else {
            "buf"
        })),
        code => Err(FfiError::new(
            code,
            format!(
                "the buffer of {len} bytes cannot hold {} bytes and a NUL",
                text.len()
            ),
        )),
    }
}

/// Copies the text of the calling thread's last failure into `buf` as a NUL-terminated
/// UTF-8 string, and its length (without the NUL) into `*written`.
///
/// The text is meaningful only right after a function returned a failure on this thread:
/// successful calls do not clear it, so read after a success it still describes an
/// earlier failure. It stays until the next failure on the same thread; with no failure
/// yet it is empty. Calling this function never changes it.
///
/// Returns `QG_OK`; `QG_ERR_NULL_ARGUMENT` when `written` is NULL, or `buf` is NULL while
/// `len` is not 0; `QG_ERR_BUFFER_TOO_SMALL` when `len` cannot hold the text and its NUL:
/// then, as the one exception to the out-parameter rule, `*written` receives the length
/// needed without the NUL (call with `buf = NULL, len = 0` to ask for it). Every function
/// that copies text this way behaves the same, and a `QG_ERR_BUFFER_TOO_SMALL` never
/// replaces the thread's last error.
#[unsafe(no_mangle)]
pub extern "C" fn qg_last_error_message(
    buf: *mut c_char,
    len: usize,
    written: *mut usize,
) -> qg_result {
    // Not inside `ffi_boundary!`: reading the last error must not replace it.
    std::panic::catch_unwind(|| {
        LAST_ERROR.with(|last| copy_out(&last.borrow().0, buf, len, written))
    })
    .unwrap_or(QG_ERR_PANIC)
}

/// Copies one detail of the calling thread's last failure (a `QG_DETAIL_*` field) as
/// NUL-terminated UTF-8 text into `buf`, with the conventions of `qg_last_error_message`.
///
/// Details exist after client calls that reached the server (HTTP status, the server's
/// code, message and correlation id, request id, Retry-After, attempts); a detail that
/// is unknown gives an empty string. An unknown field gives `QG_ERR_INVALID_ARGUMENT`.
/// Like the text, the details are meaningful only right after a failure: successful
/// calls do not clear them. Calling this function never changes the last error.
#[unsafe(no_mangle)]
pub extern "C" fn qg_last_error_detail(
    field: u32,
    buf: *mut c_char,
    len: usize,
    written: *mut usize,
) -> qg_result {
    std::panic::catch_unwind(|| {
        LAST_ERROR.with(|last| {
            let last = last.borrow();
            match detail_text(last.1.as_deref(), &last.0, field) {
                Some(text) => copy_out(&text, buf, len, written),
                None => QG_ERR_INVALID_ARGUMENT,
            }
        })
    })
    .unwrap_or(QG_ERR_PANIC)
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
        QG_ERR_STORE => b"the shared quota store failed\0",
        QG_ERR_NOT_FOUND => b"not found\0",
        QG_DONE => b"no more pages or items\0",
        QG_ERR_VERSION_MISMATCH => b"the library does not serve this header version\0",
        QG_ERR_REENTRANT_CALL => b"called from inside one of the library's callbacks\0",
        QG_ERR_HTTP_STATUS => b"the server answered with an error status\0",
        QG_ERR_TRANSPORT => b"the connection failed or the outcome is unknown\0",
        QG_ERR_THROTTLED => b"still throttled when the quota budget ran out\0",
        QG_ERR_AUTH => b"no access token could be obtained\0",
        QG_ERR_BODY_TOO_LARGE => b"the answer's body is larger than the limit\0",
        QG_ERR_PAGING => b"paging stopped: the links loop or the page limit was reached\0",
        QG_ERR_IO => b"an input/output operation failed\0",
        _ => b"unknown result code\0",
    };
    s.as_ptr().cast()
}
