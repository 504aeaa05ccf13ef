//! The shared bucket of the module documentation, in Rust (used by the file store).
