//! Generates the C header from src/ffi into OUT_DIR with the pinned cbindgen, so that
//! tests/header.rs can fail when the committed include/quotagate.h is stale. With
//! QUOTAGATE_UPDATE_HEADER=1 it also writes the committed copy.

use std::env;
use std::path::PathBuf;

fn main() {
    let dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    println!("cargo:rerun-if-changed=src/ffi");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    println!("cargo:rerun-if-env-changed=QUOTAGATE_UPDATE_HEADER");
    // A SONAME lets loaders (Mono's among them) map the library by name once it is loaded.
    if env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libquotagate.so");
    }

    let mut config =
        cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml parses");
    let v = |name: &str| env::var(name).expect("cargo sets the version variables");
    let (major, minor, patch) = (
        v("CARGO_PKG_VERSION_MAJOR"),
        v("CARGO_PKG_VERSION_MINOR"),
        v("CARGO_PKG_VERSION_PATCH"),
    );
    config.after_includes = Some(format!(
        "\n/* The version of this header; compare with qg_version_number() at run time. */\n\
         #define QG_VERSION_MAJOR {major}\n\
         #define QG_VERSION_MINOR {minor}\n\
         #define QG_VERSION_PATCH {patch}\n\
         /* major * 1000000 + minor * 1000 + patch */\n\
         #define QG_VERSION_NUMBER ((QG_VERSION_MAJOR * 1000000) + (QG_VERSION_MINOR * 1000) + QG_VERSION_PATCH)\n\
         #define QG_VERSION_STRING \"{major}.{minor}.{patch}\"\n"
    ));
    let generated = cbindgen::Builder::new()
        .with_crate(&dir)
        .with_config(config)
        .generate()
        .expect("cbindgen generates the header");
    generated.write_to_file(out.join("quotagate.h"));
    if env::var_os("QUOTAGATE_UPDATE_HEADER").is_some_and(|v| v == "1") {
        generated.write_to_file(dir.join("include/quotagate.h"));
    }
}
