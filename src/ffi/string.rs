//! Strings the library hands to C through `char **` out-parameters.

use super::error::FfiError;
use std::ffi::{CString, c_char};

/// Moves `s` to a NUL-terminated string that C frees with `qg_string_free`.
pub(crate) fn to_c_string(s: String) -> Result<*mut c_char, FfiError> {
    CString::new(s)
        .map(CString::into_raw)
        .map_err(|_| FfiError::invalid("the text contains a NUL byte"))
}

/// Frees a string returned by the library through a `char **` out-parameter
/// (`qg_pages_next_item`, `qg_client_stats_json`, `qg_sim_log_json`, ...).
/// NULL does nothing; never free the same string twice, nor one from elsewhere.
#[unsafe(no_mangle)]
pub extern "C" fn qg_string_free(s: *mut c_char) {
    super::boundary::run_void(|| {
        if !s.is_null() {
            drop(unsafe { CString::from_raw(s) });
        }
    })
}
