//! Generates the C header from src/ffi into OUT_DIR with the pinned cbindgen:
//!
//! - `quotagate.h`: the header of this build, defining the `QG_FEATURE_*` macro of each
//!   optional part built in (scripts/install installs it);
//! - `quotagate.default.h`: the header of a build with every optional part, which is the
//!   committed include/quotagate.h; tests/header.rs fails when the two differ. With
//!   QUOTAGATE_UPDATE_HEADER=1 it is also written there.

use std::env;
use std::path::{Path, PathBuf};

/// The optional parts a C caller can test for: (Cargo feature, macro). Declarations
/// that exist only with a feature are inside `#if defined(macro)` in the header.
const FEATURES: [(&str, &str); 3] = [
    ("sim", "QG_FEATURE_SIM"),
    ("pfx", "QG_FEATURE_PFX"),
    ("redis", "QG_FEATURE_REDIS"),
];

fn main() {
    let dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    println!("cargo:rerun-if-changed=src/ffi");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    println!("cargo:rerun-if-env-changed=QUOTAGATE_UPDATE_HEADER");
    // The soname carries the ABI's major version (0 while the ABI may still change, see
    // docs/abi.md): a program asks for the ABI it was linked against, and two majors
    // install side by side. scripts/install makes the links the loader and linker need.
    if env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        let major = env::var("CARGO_PKG_VERSION_MAJOR").expect("cargo sets the version");
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libquotagate.so.{major}");
    }

    let built: Vec<&str> = FEATURES
        .iter()
        .filter(|(feature, _)| {
            let var = format!("CARGO_FEATURE_{}", feature.to_uppercase());
            env::var_os(var).is_some()
        })
        .map(|(_, name)| *name)
        .collect();
    let every: Vec<&str> = FEATURES.iter().map(|(_, name)| *name).collect();
    std::fs::write(out.join("quotagate.h"), header(&dir, &built)).expect("OUT_DIR is writable");
    let default = header(&dir, &every);
    std::fs::write(out.join("quotagate.default.h"), &default).expect("OUT_DIR is writable");
    if env::var_os("QUOTAGATE_UPDATE_HEADER").is_some_and(|v| v == "1") {
        std::fs::write(dir.join("include/quotagate.h"), &default).expect("include/ is writable");
    }
}

/// The header, with the `QG_FEATURE_*` macros of `built` defined.
fn header(dir: &Path, built: &[&str]) -> Vec<u8> {
    let mut config =
        cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml parses");
    for (feature, name) in FEATURES {
        config
            .defines
            .insert(format!("feature = {feature}"), name.to_string());
    }
    let v = |name: &str| env::var(name).expect("cargo sets the version variables");
    let (major, minor, patch) = (
        v("CARGO_PKG_VERSION_MAJOR"),
        v("CARGO_PKG_VERSION_MINOR"),
        v("CARGO_PKG_VERSION_PATCH"),
    );
    let mut features = String::from(
        "\n/* The optional parts this library was built with; declarations that need one are\n   \
         inside #if defined(QG_FEATURE_...). qg_features() tells the same at run time. */\n",
    );
    for name in built {
        features.push_str(&format!("#define {name} 1\n"));
    }
    config.after_includes = Some(format!(
        "\n/* The version of this header; pass QG_VERSION_NUMBER to qg_version_compatible(). */\n\
         #define QG_VERSION_MAJOR {major}\n\
         #define QG_VERSION_MINOR {minor}\n\
         #define QG_VERSION_PATCH {patch}\n\
         /* major * 1000000 + minor * 1000 + patch */\n\
         #define QG_VERSION_NUMBER ((QG_VERSION_MAJOR * 1000000) + (QG_VERSION_MINOR * 1000) + QG_VERSION_PATCH)\n\
         #define QG_VERSION_STRING \"{major}.{minor}.{patch}\"\n\
         {features}\n{}",
        config.after_includes.take().unwrap_or_default()
    ));
    // Only src/ffi: an item elsewhere in the crate never reaches the C header.
    let mut text = Vec::new();
    cbindgen::Builder::new()
        .with_src(dir.join("src/ffi/mod.rs"))
        .with_config(config)
        .generate()
        .expect("cbindgen generates the header")
        .write(&mut text);
    text
}
