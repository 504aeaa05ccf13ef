//! `qg_response`: an answer, read through pointers it lends.

use super::boundary::{OutPtr, free_box, try_ref, try_str};
use super::error::{FfiError, QG_ERR_NOT_FOUND, copy_out_checked, detail_text, qg_result};
use crate::client::Response;
use std::ffi::c_char;

/// An answer: status, headers and body, owned by the caller.
///
/// Methods: `qg_response_status`, `qg_response_body`, `qg_response_header`,
/// `qg_response_header_count`, `qg_response_header_at`, `qg_response_attempts`,
/// `qg_response_error_detail`, `qg_response_free`.
///
/// Immutable: safe to read from several threads. Pointers it hands out stay valid until
/// `qg_response_free`.
pub struct qg_response {
    pub(super) response: Response,
}

/// Writes the answer's HTTP status to `*out`. No NULL.
#[unsafe(no_mangle)]
pub extern "C" fn qg_response_status(r: *const qg_response, out: *mut u16) -> qg_result {
    ffi_boundary! {
        let r = unsafe { try_ref(r, "response") }?;
        OutPtr::new(out, "out")?.write(r.response.status());
        Ok(())
    }
}

/// Lends the answer's body: `*data` (not NUL-terminated; NULL-free even when empty) and
/// `*len`, valid until `qg_response_free`. No NULL.
#[unsafe(no_mangle)]
pub extern "C" fn qg_response_body(
    r: *const qg_response,
    data: *mut *const u8,
    len: *mut usize,
) -> qg_result {
    ffi_boundary! {
        let r = unsafe { try_ref(r, "response") }?;
        let (d, l) = (OutPtr::new(data, "data")?, OutPtr::new(len, "len")?);
        let body = r.response.body();
        // An empty Vec's pointer is dangling but never NULL, as documented.
        d.write(body.as_ptr());
        l.write(body.len());
        Ok(())
    }
}

/// Lends the value of the first header called `name` (case-insensitive): `*value` (not
/// NUL-terminated) and `*len`, valid until `qg_response_free`. `QG_ERR_NOT_FOUND` when
/// absent. No NULL.
#[unsafe(no_mangle)]
pub extern "C" fn qg_response_header(
    r: *const qg_response,
    name: *const c_char,
    value: *mut *const u8,
    len: *mut usize,
) -> qg_result {
    ffi_boundary! {
        let r = unsafe { try_ref(r, "response") }?;
        let name = unsafe { try_str(name, "name") }?;
        let (v, l) = (OutPtr::new(value, "value")?, OutPtr::new(len, "len")?);
        let found = r.response.header(name).ok_or_else(|| FfiError::new(QG_ERR_NOT_FOUND, format!("no header {name:?}")))?;
        v.write(found.as_ptr());
        l.write(found.len());
        Ok(())
    }
}

/// Writes the number of headers to `*out`. No NULL.
#[unsafe(no_mangle)]
pub extern "C" fn qg_response_header_count(r: *const qg_response, out: *mut usize) -> qg_result {
    ffi_boundary! {
        let r = unsafe { try_ref(r, "response") }?;
        OutPtr::new(out, "out")?.write(r.response.header_count());
        Ok(())
    }
}

/// Lends header `index` (in the order received; names in lower case): name and value as
/// (pointer, length) pairs, not NUL-terminated, valid until `qg_response_free`. An index
/// past the end gives `QG_ERR_NOT_FOUND`. No NULL.
#[unsafe(no_mangle)]
pub extern "C" fn qg_response_header_at(
    r: *const qg_response,
    index: usize,
    name: *mut *const u8,
    name_len: *mut usize,
    value: *mut *const u8,
    value_len: *mut usize,
) -> qg_result {
    ffi_boundary! {
        let r = unsafe { try_ref(r, "response") }?;
        let outs = (OutPtr::new(name, "name")?, OutPtr::new(name_len, "name_len")?, OutPtr::new(value, "value")?, OutPtr::new(value_len, "value_len")?);
        let (n, v) = r.response.header_at(index).ok_or_else(|| FfiError::new(QG_ERR_NOT_FOUND, format!("no header at {index}")))?;
        outs.0.write(n.as_ptr());
        outs.1.write(n.len());
        outs.2.write(v.as_ptr());
        outs.3.write(v.len());
        Ok(())
    }
}

/// Writes to `*out` how many attempts the answer took (1 when the first was answered).
/// No NULL.
#[unsafe(no_mangle)]
pub extern "C" fn qg_response_attempts(r: *const qg_response, out: *mut u32) -> qg_result {
    ffi_boundary! {
        let r = unsafe { try_ref(r, "response") }?;
        OutPtr::new(out, "out")?.write(r.response.attempts());
        Ok(())
    }
}

/// Copies one of the answer's error details (a `QG_DETAIL_*` field, read from the error
/// body and headers) into `buf`, with the conventions of `qg_last_error_message`; an
/// absent detail gives "". An unknown field gives `QG_ERR_INVALID_ARGUMENT`.
/// `r` and `written` must not be NULL.
#[unsafe(no_mangle)]
pub extern "C" fn qg_response_error_detail(
    r: *const qg_response,
    field: u32,
    buf: *mut c_char,
    len: usize,
    written: *mut usize,
) -> qg_result {
    ffi_boundary! {
        let r = unsafe { try_ref(r, "response") }?;
        let details = r.response.error_details();
        let summary = if r.response.status() >= 400 {
            crate::client::Error::Http(Box::new(details.clone())).to_string()
        } else {
            String::new()
        };
        let text = detail_text(Some(&details), &summary, field).ok_or_else(|| FfiError::invalid(format!("unknown detail field {field}")))?;
        copy_out_checked(&text, buf, len, written)
    }
}

/// Frees a response. NULL does nothing; never free the same response twice.
#[unsafe(no_mangle)]
pub extern "C" fn qg_response_free(r: *mut qg_response) {
    super::boundary::run_void(|| unsafe { free_box(r) })
}
