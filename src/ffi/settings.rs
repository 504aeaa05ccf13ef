//! Settings that the limiter builder and the client builder both take, checked once for
//! both: a rate, and the store that shares the buckets.

use super::boundary::opt_str;
use super::error::FfiError;
use crate::client::ClientBuilder;
use crate::limiter::{LimiterBuilder, Rate};
use std::ffi::c_char;
use std::time::Duration;

/// A rate of `calls` per `window_ms` milliseconds, refused (`QG_ERR_INVALID_ARGUMENT`)
/// when the limiter would refuse it.
pub(super) fn rate(calls: u32, window_ms: u64) -> Result<Rate, FfiError> {
    let r = Rate::new(calls, Duration::from_millis(window_ms));
    r.validate().map_err(FfiError::invalid)?;
    Ok(r)
}

/// A builder that can keep its buckets in a shared store instead of in memory.
pub(super) trait SharedStore: Default {
    fn store(self, url: &str) -> Self;
    fn no_store(self) -> Self;
}

impl SharedStore for LimiterBuilder {
    fn store(self, url: &str) -> Self {
        LimiterBuilder::store(self, url)
    }
    fn no_store(self) -> Self {
        LimiterBuilder::no_store(self)
    }
}

impl SharedStore for ClientBuilder {
    fn store(self, url: &str) -> Self {
        ClientBuilder::store(self, url)
    }
    fn no_store(self) -> Self {
        ClientBuilder::no_store(self)
    }
}

/// Reads a store URL (NULL: none, back to memory) and checks it: a malformed one fails
/// with `QG_ERR_INVALID_ARGUMENT`. The store itself is opened when the builder builds.
///
/// # Safety
/// `url` must be NULL or a NUL-terminated string that outlives `'a`.
pub(super) unsafe fn store_url<'a>(url: *const c_char) -> Result<Option<&'a str>, FfiError> {
    let url = unsafe { opt_str(url, "url") }?;
    if let Some(u) = url {
        crate::limiter::store::StoreConfig::parse(u).map_err(|e| FfiError::invalid(e.message))?;
    }
    Ok(url)
}

/// Gives `builder` the store of a URL checked by [`store_url`], or none.
pub(super) fn set_store<B: SharedStore>(builder: &mut B, url: Option<&str>) {
    let next = std::mem::take(builder);
    *builder = match url {
        Some(u) => next.store(u),
        None => next.no_store(),
    };
}
