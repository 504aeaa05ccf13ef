//! The library's version at run time, to compare with the header's `QG_VERSION_*` macros.

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

/// The library's version as major * 1000000 + minor * 1000 + patch, to compare with
/// `QG_VERSION_NUMBER` from the header the caller was compiled with. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn qg_version_number() -> u32 {
    VERSION_NUMBER
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
}
