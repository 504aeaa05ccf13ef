//! The committed C header must be what cbindgen generates from the sources now, and its
//! version macros must match Cargo.toml.

use std::path::Path;

fn committed() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("include/quotagate.h"))
        .expect("include/quotagate.h exists")
}

#[test]
fn committed_header_is_fresh() {
    let fresh = std::fs::read_to_string(concat!(env!("OUT_DIR"), "/quotagate.h"))
        .expect("build.rs generated the header");
    assert!(
        committed() == fresh,
        "include/quotagate.h is stale: regenerate it with `QUOTAGATE_UPDATE_HEADER=1 cargo build` and commit it"
    );
}

#[test]
fn version_macros_match_the_package() {
    let header = committed();
    let macro_value = |name: &str| -> String {
        let prefix = format!("#define {name} ");
        header
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("{name} is missing from the header"))
            .trim()
            .to_string()
    };
    assert_eq!(
        macro_value("QG_VERSION_MAJOR"),
        env!("CARGO_PKG_VERSION_MAJOR")
    );
    assert_eq!(
        macro_value("QG_VERSION_MINOR"),
        env!("CARGO_PKG_VERSION_MINOR")
    );
    assert_eq!(
        macro_value("QG_VERSION_PATCH"),
        env!("CARGO_PKG_VERSION_PATCH")
    );
    assert_eq!(
        macro_value("QG_VERSION_STRING"),
        format!("\"{}\"", env!("CARGO_PKG_VERSION"))
    );
    assert!(header.contains("#ifndef QUOTAGATE_H") && header.contains("extern \"C\" {"));
}
