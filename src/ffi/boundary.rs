//! The plumbing every exported function shares: the panic boundary, pointer checks and
//! string views. Nothing here knows a particular C object.

use super::error::{FfiError, qg_result};
use std::ffi::{CStr, c_char};

/// Runs a body that returns `Result<T, FfiError>`, where `T` is `()` or a [`Success`], so
/// that no panic crosses into C: a success becomes its code (`()` is `QG_OK`), an error is
/// recorded as the thread's last error and its code returned, and a panic becomes
/// `QG_ERR_PANIC` with its message as the last error.
macro_rules! ffi_boundary {
    ($($body:tt)*) => {
        $crate::ffi::boundary::run(move || -> ::std::result::Result<_, $crate::ffi::error::FfiError> {
            $($body)*
        })
    };
}

/// The results a body returns that are not failures, so that they leave by the same road
/// as `QG_OK` and never set the last error. Typed, so that no body can return an error
/// code without recording its text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Success {
    /// `QG_OK`.
    Ok,
    /// `QG_DONE`: a paging run has no more pages or items.
    Done,
    /// `QG_PENDING`: a ticket's slice ran out with its place kept.
    Pending,
}

impl From<()> for Success {
    fn from((): ()) -> Self {
        Success::Ok
    }
}

impl Success {
    fn code(self) -> qg_result {
        match self {
            Success::Ok => super::error::QG_OK,
            Success::Done => super::error::QG_DONE,
            Success::Pending => super::error::QG_PENDING,
        }
    }
}

pub(crate) fn run<T: Into<Success>>(f: impl FnOnce() -> Result<T, FfiError>) -> qg_result {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(success)) => success.into().code(),
        // Asking for a text's size must not replace the error the caller is reading about.
        Ok(Err(e)) if e.code == super::error::QG_ERR_BUFFER_TOO_SMALL => e.code,
        Ok(Err(e)) => super::error::record(e),
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown cause".into());
            super::error::record(FfiError::new(
                super::error::QG_ERR_PANIC,
                format!("internal error (panic): {what}"),
            ))
        }
    }
}

pub(crate) fn run_void(f: impl FnOnce()) {
    run(|| {
        f();
        Ok(())
    });
}

/// Borrows a handle passed as a const pointer.
///
/// # Safety
/// `p` must be NULL or a live handle of type `T` created by this library.
pub(crate) unsafe fn try_ref<'a, T>(p: *const T, name: &str) -> Result<&'a T, FfiError> {
    unsafe { p.as_ref() }.ok_or_else(|| FfiError::null(name))
}

/// Borrows a handle passed as a mutable pointer.
///
/// # Safety
/// `p` must be NULL or a live handle of type `T` created by this library, used by no
/// other thread during the call.
pub(crate) unsafe fn try_mut<'a, T>(p: *mut T, name: &str) -> Result<&'a mut T, FfiError> {
    unsafe { p.as_mut() }.ok_or_else(|| FfiError::null(name))
}

/// Views a caller's buffer of `len` bytes.
///
/// # Safety
/// `p` must be NULL or valid for writes of `len` bytes.
pub(crate) unsafe fn try_mut_slice<'a>(
    p: *mut u8,
    len: usize,
    name: &str,
) -> Result<&'a mut [u8], FfiError> {
    if p.is_null() {
        return Err(FfiError::null(name));
    }
    Ok(unsafe { std::slice::from_raw_parts_mut(p, len) })
}

/// Reads a NUL-terminated UTF-8 string; NULL is an error.
///
/// # Safety
/// `p` must be NULL or point to a NUL-terminated string that outlives `'a`.
pub(crate) unsafe fn try_str<'a>(p: *const c_char, name: &str) -> Result<&'a str, FfiError> {
    if p.is_null() {
        return Err(FfiError::null(name));
    }
    unsafe { CStr::from_ptr(p) }
        .to_str()
        .map_err(|_| FfiError::invalid(format!("{name} is not valid UTF-8")))
}

/// Reads an optional NUL-terminated UTF-8 string; NULL gives `None`.
///
/// # Safety
/// As [`try_str`].
pub(crate) unsafe fn opt_str<'a>(
    p: *const c_char,
    name: &str,
) -> Result<Option<&'a str>, FfiError> {
    if p.is_null() {
        return Ok(None);
    }
    unsafe { try_str(p, name) }.map(Some)
}

/// An out-parameter checked for NULL before any work is done, written only on success.
pub(crate) struct OutPtr<T> {
    p: *mut T,
}

impl<T> OutPtr<T> {
    pub(crate) fn new(p: *mut T, name: &str) -> Result<Self, FfiError> {
        if p.is_null() {
            return Err(FfiError::null(name));
        }
        Ok(Self { p })
    }

    /// An optional out-parameter: NULL means the caller does not want the value.
    pub(crate) fn optional(p: *mut T) -> Option<Self> {
        (!p.is_null()).then_some(Self { p })
    }

    pub(crate) fn write(self, v: T) {
        // SAFETY: checked non-NULL at construction; the caller promised it is writable.
        unsafe { self.p.write(v) }
    }
}

/// Moves a value to the heap and hands C a pointer that only `free_box` takes back.
pub(crate) fn to_box<T>(v: T) -> *mut T {
    Box::into_raw(Box::new(v))
}

/// Takes back and drops a value handed out by [`to_box`]. NULL does nothing.
///
/// # Safety
/// `p` must be NULL or come from [`to_box`] with the same `T`, not yet freed.
pub(crate) unsafe fn free_box<T>(p: *mut T) {
    if !p.is_null() {
        drop(unsafe { Box::from_raw(p) });
    }
}

/// Converts a C timeout in milliseconds (negative: none) to a Rust one.
pub(crate) fn timeout_ms(ms: i64) -> Option<std::time::Duration> {
    u64::try_from(ms).ok().map(std::time::Duration::from_millis)
}

/// Rounds a duration up to whole milliseconds, so a caller that sleeps that long is not early.
pub(crate) fn ceil_ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ffi::error::{QG_ERR_PANIC, QG_OK, qg_last_error_message};

    fn last_error() -> String {
        let mut buf = [0 as c_char; 256];
        let mut n = 0;
        assert_eq!(
            qg_last_error_message(buf.as_mut_ptr(), buf.len(), &mut n),
            QG_OK
        );
        unsafe { CStr::from_ptr(buf.as_ptr()) }
            .to_str()
            .unwrap()
            .to_owned()
    }

    #[test]
    fn a_panic_becomes_a_result_code_with_its_message() {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let n = 42;
        let code = ffi_boundary! {
            if n == 42 {
                panic!("boom {n}");
            }
            Ok(())
        };
        std::panic::set_hook(prev);
        assert_eq!(code, QG_ERR_PANIC);
        assert_eq!(last_error(), "internal error (panic): boom 42");
        run_void(|| panic!("in a destructor"));
        assert!(last_error().contains("in a destructor"));
    }

    #[test]
    fn successes_other_than_ok_keep_the_last_error() {
        let failed = ffi_boundary! { Err::<(), _>(FfiError::invalid("the error being read")) };
        assert_eq!(failed, crate::ffi::error::QG_ERR_INVALID_ARGUMENT);
        for (success, code) in [
            (Success::Ok, QG_OK),
            (Success::Done, crate::ffi::error::QG_DONE),
            (Success::Pending, crate::ffi::error::QG_PENDING),
        ] {
            assert_eq!(ffi_boundary! { Ok(success) }, code);
        }
        assert_eq!(ffi_boundary! { Ok(()) }, QG_OK);
        assert_eq!(last_error(), "the error being read");
    }

    #[test]
    fn strings_and_pointers_are_checked() {
        let bad = [0xffu8 as c_char, 0];
        assert_eq!(
            unsafe { try_str(bad.as_ptr(), "key") }.unwrap_err().code,
            101
        );
        assert_eq!(
            unsafe { try_str(std::ptr::null(), "key") }
                .unwrap_err()
                .code,
            100
        );
        assert_eq!(unsafe { opt_str(std::ptr::null(), "key") }.unwrap(), None);
        assert!(OutPtr::<u8>::new(std::ptr::null_mut(), "out").is_err());
        assert_eq!(timeout_ms(-1), None);
        assert_eq!(ceil_ms(std::time::Duration::from_nanos(1)), 1);
    }
}
