//! `qg_client`: sends requests within the quotas and starts paging runs.

use super::boundary::{OutPtr, free_box, to_box, try_ref};
use super::error::{FfiError, copy_out_checked, qg_result};
use super::pages::qg_pages;
use super::request::qg_request;
use super::response::qg_response;
use super::string::to_c_string;
use crate::client::Client;
use std::ffi::c_char;

/// A thread-safe client of the Defender APIs: every call waits for its quota, tokens are
/// cached and refreshed, 429s pause the bucket and are retried, pages are followed.
///
/// Methods: `qg_client_send`, `qg_client_pages`, `qg_client_stats_json`,
/// `qg_client_token_scope`, `qg_client_close`, `qg_client_free`.
///
/// Reference counted inside and safe to use from any number of threads at once; share
/// one client. Free it once with `qg_client_free`.
pub struct qg_client {
    pub(super) client: Client,
}

/// Sends a request through the limiter, with token handling and retries, and blocks until
/// the final answer.
///
/// Returns `QG_OK` whenever the server gave a final answer, whatever its status (check it
/// with `qg_response_status`); `*out` then receives a response to free with
/// `qg_response_free`. Failures: `QG_ERR_THROTTLED` (quota budget ran out),
/// `QG_ERR_TIMEOUT`, `QG_ERR_TRANSPORT` (including an ambiguous POST failure, which is
/// never repeated), `QG_ERR_AUTH`, `QG_ERR_BODY_TOO_LARGE`, `QG_ERR_CANCELLED`,
/// `QG_ERR_CLOSED`, `QG_ERR_INVALID_ARGUMENT`; then `qg_last_error_detail` gives the
/// server's details on the same thread. No argument may be NULL. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn qg_client_send(
    c: *const qg_client,
    r: *const qg_request,
    out: *mut *mut qg_response,
) -> qg_result {
    ffi_boundary! {
        let c = unsafe { try_ref(c, "client") }?;
        let r = unsafe { try_ref(r, "request") }?;
        let out = OutPtr::new(out, "out")?;
        let response = c.client.send(&r.request)?;
        out.write(to_box(qg_response { response }));
        Ok(())
    }
}

/// Starts paging: the first request is `first` (copied, with its cancel handle), and each
/// following page is the previous one's `@odata.nextLink`, used exactly as given. Nothing
/// is sent until `qg_pages_next` or `qg_pages_next_item`. On success `*out` receives
/// pages to free with `qg_pages_free`. No NULL.
#[unsafe(no_mangle)]
pub extern "C" fn qg_client_pages(
    c: *const qg_client,
    first: *const qg_request,
    out: *mut *mut qg_pages,
) -> qg_result {
    ffi_boundary! {
        let c = unsafe { try_ref(c, "client") }?;
        let first = unsafe { try_ref(first, "request") }?;
        let out = OutPtr::new(out, "out")?;
        out.write(to_box(qg_pages { items: c.client.items(&first.request) }));
        Ok(())
    }
}

/// Copies the scope the client's tokens are for into `buf` (the `(buf, len, written)`
/// convention), in the v2 form (`https://api.securitycenter.microsoft.com/.default`)
/// even when the client asks for a v1 resource: what a host's credential object asks
/// its identity library for, before it hands tokens to a token provider. No NULL
/// except `buf` with `len` 0. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn qg_client_token_scope(
    c: *const qg_client,
    buf: *mut c_char,
    len: usize,
    written: *mut usize,
) -> qg_result {
    ffi_boundary! {
        let scope = unsafe { try_ref(c, "client") }?.client.token_scope();
        copy_out_checked(&scope, buf, len, written)
    }
}

/// Writes the client's statistics as a JSON object to `*out` (free with
/// `qg_string_free`): `requests`, `retries`, `throttled`, `token_requests`,
/// `transport_failures`, `learned_limits`, and `buckets` by key with `admitted_calls`,
/// `waited_calls`, `total_wait_ms`, `longest_wait_ms`, `pauses` and `windows`
/// (`used`, `calls`, `window_ms`), and `in_flight_peaks` (for each route with a cap on
/// calls under way, the most there were at once). No NULL. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn qg_client_stats_json(c: *const qg_client, out: *mut *mut c_char) -> qg_result {
    ffi_boundary! {
        let c = unsafe { try_ref(c, "client") }?;
        let out = OutPtr::new(out, "out")?;
        let json = serde_json::to_string(&c.client.stats()).map_err(|e| FfiError::invalid(e.to_string()))?;
        out.write(to_c_string(json)?);
        Ok(())
    }
}

/// Closes the client: calls waiting for quota, a token or a backoff end with
/// `QG_ERR_CLOSED` within about 50 ms, and later calls fail the same way. A shared
/// limiter stays open. The handle stays valid until `qg_client_free`. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn qg_client_close(c: *const qg_client) -> qg_result {
    ffi_boundary! {
        unsafe { try_ref(c, "client") }?.client.close();
        Ok(())
    }
}

/// Releases the caller's reference to the client. NULL does nothing; never free the same
/// handle twice, nor while another thread still uses it.
#[unsafe(no_mangle)]
pub extern "C" fn qg_client_free(c: *mut qg_client) {
    super::boundary::run_void(|| unsafe { free_box(c) })
}
