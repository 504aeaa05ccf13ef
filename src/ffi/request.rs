//! `qg_request`: what a client sends.

use super::boundary::{OutPtr, free_box, opt_str, to_box, try_mut, try_ref, try_str};
use super::error::{FfiError, qg_result};
use crate::client::Request;
use std::ffi::c_char;
use std::time::Duration;

/// A request: method, path or URL, query, headers, body.
///
/// Methods: `qg_request_new`, `qg_request_add_query`, `qg_request_set_header`,
/// `qg_request_set_body`, `qg_request_set_deadline_ms`, `qg_request_cancel`,
/// `qg_request_free`.
///
/// Build it on one thread; once sent it may be sent again, and `qg_request_cancel` may be
/// called from any thread while another sends it. Free it with `qg_request_free` when no
/// send uses it.
pub struct qg_request {
    pub(super) request: Request,
}

/// Creates a request of `method` (such as "GET", "POST") to `path_or_url`: a path on the
/// base URL ("/api/machines") or an absolute URL on the same host (an
/// `@odata.nextLink`, used exactly as given). On success `*out` receives a request that
/// the caller frees with `qg_request_free`. No argument may be NULL.
#[unsafe(no_mangle)]
pub extern "C" fn qg_request_new(
    method: *const c_char,
    path_or_url: *const c_char,
    out: *mut *mut qg_request,
) -> qg_result {
    ffi_boundary! {
        let method = unsafe { try_str(method, "method") }?;
        let target = unsafe { try_str(path_or_url, "path_or_url") }?;
        let out = OutPtr::new(out, "out")?;
        if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic()) {
            return Err(FfiError::invalid(format!("{method:?} is not an HTTP method")));
        }
        out.write(to_box(qg_request { request: Request::new(method, target) }));
        Ok(())
    }
}

/// Adds a query parameter; the library percent-encodes name and value. No NULL.
#[unsafe(no_mangle)]
pub extern "C" fn qg_request_add_query(
    r: *mut qg_request,
    name: *const c_char,
    value: *const c_char,
) -> qg_result {
    ffi_boundary! {
        let (n, v) = (unsafe { try_str(name, "name") }?, unsafe { try_str(value, "value") }?);
        unsafe { try_mut(r, "request") }?.request.add_query(n, v);
        Ok(())
    }
}

/// Sets a header, replacing one of the same name (case-insensitive). The client sets
/// `Authorization` itself. A name that is not an RFC 9110 token, or a value with a control
/// character other than tab, gives `QG_ERR_INVALID_ARGUMENT` here (the wire would refuse
/// it). No NULL.
#[unsafe(no_mangle)]
pub extern "C" fn qg_request_set_header(
    r: *mut qg_request,
    name: *const c_char,
    value: *const c_char,
) -> qg_result {
    ffi_boundary! {
        let (n, v) = (unsafe { try_str(name, "name") }?, unsafe { try_str(value, "value") }?);
        crate::client::check_header(n, v)?;
        unsafe { try_mut(r, "request") }?.request.set_header(n, v);
        Ok(())
    }
}

/// Sets the body: `len` bytes copied from `body` (NULL only when `len` is 0), with the
/// content type `content_type` (NULL: "application/json"). `r` must not be NULL.
#[unsafe(no_mangle)]
pub extern "C" fn qg_request_set_body(
    r: *mut qg_request,
    body: *const u8,
    len: usize,
    content_type: *const c_char,
) -> qg_result {
    ffi_boundary! {
        let ct = unsafe { opt_str(content_type, "content_type") }?.unwrap_or("application/json");
        let bytes = if len == 0 {
            Vec::new()
        } else if body.is_null() {
            return Err(FfiError::null("body"));
        } else {
            unsafe { std::slice::from_raw_parts(body, len) }.to_vec()
        };
        unsafe { try_mut(r, "request") }?.request.set_body(bytes, ct);
        Ok(())
    }
}

/// Sets the request's deadline: `deadline_ms` milliseconds from the start of each
/// `qg_client_send` bound everything the call does (the quota wait, the token fetch,
/// every attempt, retries and backoff); past it the call fails with `QG_ERR_TIMEOUT`, at
/// once when a wait could not end in time. With `qg_client_pages` it bounds all the pages
/// together, from the first page's send. Below 0: no deadline (the default). `r` must
/// not be NULL.
#[unsafe(no_mangle)]
pub extern "C" fn qg_request_set_deadline_ms(r: *mut qg_request, deadline_ms: i64) -> qg_result {
    ffi_boundary! {
        let d = u64::try_from(deadline_ms).ok().map(Duration::from_millis);
        unsafe { try_mut(r, "request") }?.request.set_deadline(d);
        Ok(())
    }
}

/// Cancels the request's waits: a `qg_client_send` or `qg_pages_next` using it returns
/// `QG_ERR_CANCELLED` within about 50 ms of this call if it is waiting for quota, a token
/// or a backoff (an exchange on the wire ends at its timeout). Thread-safe; `r` must not
/// be NULL. A cancelled request stays cancelled.
#[unsafe(no_mangle)]
pub extern "C" fn qg_request_cancel(r: *const qg_request) -> qg_result {
    ffi_boundary! {
        unsafe { try_ref(r, "request") }?.request.canceller().cancel();
        Ok(())
    }
}

/// Frees a request. NULL does nothing; never free the same request twice, nor while a
/// send uses it.
#[unsafe(no_mangle)]
pub extern "C" fn qg_request_free(r: *mut qg_request) {
    super::boundary::run_void(|| unsafe { free_box(r) })
}
