"""The package version; it must equal the Rust crate's version (checked at build). At
import the library checks that it serves this version (qg_version_compatible)."""

__version__ = "0.1.0"
