//! Which optional parts the loaded library was built with, for callers that decide at run
//! time (bindings) rather than at compile time (`#if defined(QG_FEATURE_SIM)`).

use std::ffi::c_char;

/// Bit of `qg_features`: the local simulator (`qg_sim_*`, macro `QG_FEATURE_SIM`).
pub const QG_FEATURE_BIT_SIM: u32 = 1;
/// Bit of `qg_features`: certificates from PKCS#12/PFX files
/// (`qg_client_builder_set_certificate_pfx_file`, macro `QG_FEATURE_PFX`).
pub const QG_FEATURE_BIT_PFX: u32 = 2;
/// Bit of `qg_features`: the Redis store (`redis://`, `rediss://` and the `+cluster` store
/// URLs, macro `QG_FEATURE_REDIS`).
pub const QG_FEATURE_BIT_REDIS: u32 = 4;

/// Every optional part: its bit, its name (the Cargo feature's), and whether it is built in.
const FEATURES: [(u32, &[u8], bool); 3] = [
    (QG_FEATURE_BIT_SIM, b"sim\0", cfg!(feature = "sim")),
    (QG_FEATURE_BIT_PFX, b"pfx\0", cfg!(feature = "pfx")),
    (QG_FEATURE_BIT_REDIS, b"redis\0", cfg!(feature = "redis")),
];

/// The optional parts this library was built with: an OR of `QG_FEATURE_BIT_*`.
///
/// A part that is missing is missing whole: its functions are not exported (the header
/// declares them only where its `QG_FEATURE_*` macro is defined), or, for a part reached
/// through an existing function (a PFX file, a `redis://` store), that function fails
/// with a message that names the feature. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn qg_features() -> u32 {
    FEATURES
        .iter()
        .filter(|(_, _, built)| *built)
        .fold(0, |bits, (bit, _, _)| bits | bit)
}

/// The name of one `QG_FEATURE_BIT_*` bit as a static NUL-terminated string ("sim", "pfx",
/// "redis"), whether or not it is built in; NULL for any other value. Bindings list the
/// parts by calling it for each bit of `qg_features()`. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn qg_feature_name(bit: u32) -> *const c_char {
    FEATURES
        .iter()
        .find(|(b, _, _)| *b == bit)
        .map_or(std::ptr::null(), |(_, name, _)| name.as_ptr().cast())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    fn name(bit: u32) -> Option<&'static str> {
        let p = qg_feature_name(bit);
        (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_str().unwrap())
    }

    #[test]
    fn the_mask_follows_the_build() {
        let mask = qg_features();
        assert_eq!(mask & QG_FEATURE_BIT_SIM != 0, cfg!(feature = "sim"));
        assert_eq!(mask & QG_FEATURE_BIT_PFX != 0, cfg!(feature = "pfx"));
        assert_eq!(mask & QG_FEATURE_BIT_REDIS != 0, cfg!(feature = "redis"));
        assert_eq!(
            mask & !(QG_FEATURE_BIT_SIM | QG_FEATURE_BIT_PFX | QG_FEATURE_BIT_REDIS),
            0
        );
    }

    #[test]
    fn every_bit_has_one_name() {
        assert_eq!(name(QG_FEATURE_BIT_SIM), Some("sim"));
        assert_eq!(name(QG_FEATURE_BIT_PFX), Some("pfx"));
        assert_eq!(name(QG_FEATURE_BIT_REDIS), Some("redis"));
        for other in [0, 3, 8, 1 << 31, u32::MAX] {
            assert_eq!(name(other), None, "{other}");
        }
    }
}
