//! What the fuzz tests share. Every parser of outside input (`Retry-After` and throttling
//! bodies, token and hunting answers, store URLs, request paths, the simulator's request
//! reader) has a `fuzz_*` test beside it that:
//!
//! 1. replays every file of `tests/fuzz-corpus/<target>/`, one input per file: the
//!    values an audit found failing and ordinary ones, so a crash found once stays a
//!    regression test;
//! 2. then runs proptest on generated input, [`cases`] cases (`QUOTAGATE_FUZZ_CASES`,
//!    256 by default; `scripts/test` runs many more). A failing case proptest finds is
//!    saved under `proptest-regressions/` and replayed first on later runs; copy it into
//!    the corpus as a file of its own to keep it readable.
//!
//! `cargo test --lib fuzz_` runs them all. Stable Rust suffices: `cargo fuzz` needs
//! nightly.

use proptest::test_runner::Config;
use std::path::PathBuf;

/// Cases per fuzz test: `QUOTAGATE_FUZZ_CASES`, else 256.
pub(crate) fn cases() -> u32 {
    std::env::var("QUOTAGATE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(256)
}

/// The proptest settings of a fuzz test.
pub(crate) fn config() -> Config {
    Config {
        cases: cases(),
        // Generated text is cheap: shrink hard, so a failure reads as a small input.
        max_shrink_iters: 10_000,
        ..Config::default()
    }
}

/// The seed inputs of `target`, one per file of `tests/fuzz-corpus/<target>/`, with their
/// file names. A missing or empty directory is a failure, not a silent pass.
pub(crate) fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz-corpus")
        .join(target);
    let mut inputs: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("the seed corpus {}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).unwrap())
        })
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "no seed inputs in {}", dir.display());
    inputs
}

/// [`corpus`] as text (invalid UTF-8 replaced), one trailing newline removed.
pub(crate) fn corpus_text(target: &str) -> Vec<(String, String)> {
    corpus(target)
        .into_iter()
        .map(|(name, bytes)| {
            let text = String::from_utf8_lossy(&bytes).into_owned();
            let text = text.strip_suffix('\n').map(str::to_owned).unwrap_or(text);
            (name, text)
        })
        .collect()
}
