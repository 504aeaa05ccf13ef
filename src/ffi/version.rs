//! The library's version at run time, and the one rule that says whether it serves a
//! caller built against a given header (docs/abi.md).

use super::error::{FfiError, QG_ERR_VERSION_MISMATCH, qg_result};
use std::ffi::c_char;

const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "\0");

const fn parse(s: &str) -> u32 {
    let b = s.as_bytes();
    let mut i = 0;
    let mut n = 0u32;
    while i < b.len() {
        n = n * 10 + (b[i] - b'0') as u32;
        i += 1;
    }
    n
}

/// `QG_VERSION_NUMBER`'s formula: major * 1000000 + minor * 1000 + patch.
pub(crate) const VERSION_NUMBER: u32 = parse(env!("CARGO_PKG_VERSION_MAJOR")) * 1_000_000
    + parse(env!("CARGO_PKG_VERSION_MINOR")) * 1_000
    + parse(env!("CARGO_PKG_VERSION_PATCH"));

/// The library's version as a static NUL-terminated string such as "0.1.0".
/// Never NULL; the string lives as long as the library is loaded. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn qg_version() -> *const c_char {
    VERSION.as_ptr().cast()
}

/// The library's version as major * 1000000 + minor * 1000 + patch. To decide whether
/// it serves a caller, pass `QG_VERSION_NUMBER` to `qg_version_compatible` rather than
/// comparing the two numbers for equality. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn qg_version_number() -> u32 {
    VERSION_NUMBER
}

/// Whether a library of version `library` serves a caller built against the header of
/// version `header` (both as `QG_VERSION_NUMBER`): same ABI series, and not older than
/// the header, since a later release of a series only adds. Before 1.0 the series is
/// major.minor (a minor release may break the ABI); from 1.0 it is the major version,
/// which the soname carries.
const fn compatible(library: u32, header: u32) -> bool {
    let (major, minor) = (library / 1_000_000, library / 1000 % 1000);
    let (header_major, header_minor) = (header / 1_000_000, header / 1000 % 1000);
    major == header_major && (major > 0 || minor == header_minor) && library >= header
}

/// Checks that this library serves a caller compiled against the header of version
/// `header_version`; pass `QG_VERSION_NUMBER`. Call it once at start-up: a library from
/// another ABI series, or older than the header (it may lack what the header declares),
/// gives `QG_ERR_VERSION_MISMATCH` with the two versions in the last error text.
/// Returns `QG_OK` otherwise. Bindings pass the header version they were written
/// against. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn qg_version_compatible(header_version: u32) -> qg_result {
    ffi_boundary! {
        if compatible(VERSION_NUMBER, header_version) {
            return Ok(());
        }
        let v = |n: u32| format!("{}.{}.{}", n / 1_000_000, n / 1000 % 1000, n % 1000);
        Err(FfiError::new(
            QG_ERR_VERSION_MISMATCH,
            format!(
                "libquotagate {} cannot serve a caller built against quotagate.h {}: \
                 use a library of the same ABI series ({}), at least as new as the header",
                v(VERSION_NUMBER),
                v(header_version),
                if header_version >= 1_000_000 {
                    format!("{}.x", header_version / 1_000_000)
                } else {
                    format!("0.{}.x", header_version / 1000 % 1000)
                }
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn version_number_matches_the_package() {
        let v = env!("CARGO_PKG_VERSION");
        let parts: Vec<u32> = v.split('.').map(|p| p.parse().unwrap()).collect();
        assert_eq!(
            super::VERSION_NUMBER,
            parts[0] * 1_000_000 + parts[1] * 1000 + parts[2]
        );
        let s = unsafe { std::ffi::CStr::from_ptr(super::qg_version()) };
        assert_eq!(s.to_str().unwrap(), v);
    }

    #[test]
    fn compatibility_follows_the_abi_policy() {
        use super::compatible;
        let v = |major: u32, minor: u32, patch: u32| major * 1_000_000 + minor * 1000 + patch;
        // Before 1.0: the same minor series, the library at least as new as the header.
        assert!(compatible(v(0, 1, 0), v(0, 1, 0)));
        assert!(compatible(v(0, 1, 3), v(0, 1, 2)));
        assert!(!compatible(v(0, 1, 2), v(0, 1, 3)));
        assert!(!compatible(v(0, 2, 0), v(0, 1, 0)));
        assert!(!compatible(v(0, 1, 0), v(0, 2, 0)));
        // From 1.0: the same major, the library at least as new as the header.
        assert!(compatible(v(1, 4, 0), v(1, 2, 7)));
        assert!(compatible(v(1, 2, 7), v(1, 2, 7)));
        assert!(!compatible(v(1, 2, 6), v(1, 2, 7)));
        assert!(!compatible(v(1, 1, 9), v(1, 2, 0)));
        assert!(!compatible(v(2, 0, 0), v(1, 9, 9)));
        assert!(!compatible(v(1, 0, 0), v(0, 9, 0)));
        assert!(!compatible(v(0, 9, 0), v(1, 0, 0)));
    }

    #[test]
    fn a_mismatch_is_an_error_with_both_versions() {
        use super::super::error::{QG_ERR_VERSION_MISMATCH, QG_OK};
        assert_eq!(super::qg_version_compatible(super::VERSION_NUMBER), QG_OK);
        let later_series = super::VERSION_NUMBER + 1_000_000;
        assert_eq!(
            super::qg_version_compatible(later_series),
            QG_ERR_VERSION_MISMATCH
        );
        let mut buf = [0 as std::ffi::c_char; 256];
        let mut n = 0;
        super::super::error::qg_last_error_message(buf.as_mut_ptr(), buf.len(), &mut n);
        let text = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
            .to_str()
            .unwrap();
        assert!(text.contains(env!("CARGO_PKG_VERSION")), "{text}");
        assert!(text.contains("quotagate.h 1.1.0"), "{text}");
    }
}
