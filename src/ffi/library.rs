//! What the library decides and bindings would otherwise copy: the clouds' names and the
//! defaults of its settings.

use super::boundary::OutPtr;
use super::error::{FfiError, qg_result};
use crate::client::{
    Cloud, DEFAULT_ATTEMPT_TIMEOUT, DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_BODY, DEFAULT_MAX_PAGES,
    HuntingBudget,
};
use crate::limiter::{DEFAULT_HOLD_LEASE, DEFAULT_MAX_BUCKETS, MAX_CALLS, MAX_HOLD_LEASE};
use std::ffi::c_char;
use std::time::Duration;

/// The clouds' names as `Cloud::NAMES` lists them, NUL-terminated, made once.
static CLOUD_NAMES: once_cell::sync::Lazy<Vec<std::ffi::CString>> =
    once_cell::sync::Lazy::new(|| {
        Cloud::NAMES
            .iter()
            .map(|n| std::ffi::CString::new(*n).expect("cloud names hold no NUL"))
            .collect()
    });

/// The name of cloud `index` (from 0) as `qg_client_builder_set_cloud` takes it
/// ("commercial", "us", ..., "gcc-high", "dod"): a static NUL-terminated string, never
/// freed; NULL past the last one. Bindings list the clouds by calling it from 0 until it
/// returns NULL, rather than keeping a copy of the list. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn qg_cloud_name(index: usize) -> *const c_char {
    CLOUD_NAMES
        .get(index)
        .map_or(std::ptr::null(), |name| name.as_ptr())
}

/// `qg_default_value`: the hunting run time allowed per rolling hour, in milliseconds.
pub const QG_DEFAULT_HUNTING_BUDGET_PER_HOUR_MS: u32 = 1;
/// `qg_default_value`: the hunting run time allowed per rolling day, in milliseconds.
pub const QG_DEFAULT_HUNTING_BUDGET_PER_DAY_MS: u32 = 2;
/// `qg_default_value`: the most pages one listing follows.
pub const QG_DEFAULT_MAX_PAGES: u32 = 3;
/// `qg_default_value`: a hold's lease, in milliseconds.
pub const QG_DEFAULT_HOLD_LEASE_MS: u32 = 4;
/// `qg_default_value`: the longest lease a hold may have, in milliseconds.
pub const QG_DEFAULT_MAX_HOLD_LEASE_MS: u32 = 5;
/// `qg_default_value`: the most buckets one in-memory limiter holds.
pub const QG_DEFAULT_MAX_BUCKETS: u32 = 6;
/// `qg_default_value`: the largest `calls` of a rate and cost of a call, in every store.
pub const QG_DEFAULT_MAX_CALLS: u32 = 7;
/// `qg_default_value`: one attempt's time limit, in milliseconds.
pub const QG_DEFAULT_ATTEMPT_TIMEOUT_MS: u32 = 8;
/// `qg_default_value`: one connection's setup time limit, in milliseconds.
pub const QG_DEFAULT_CONNECT_TIMEOUT_MS: u32 = 9;
/// `qg_default_value`: the attempts one call makes at most.
pub const QG_DEFAULT_MAX_ATTEMPTS: u32 = 10;
/// `qg_default_value`: how long one call waits for quota at most, in milliseconds.
pub const QG_DEFAULT_MAX_QUOTA_WAIT_MS: u32 = 11;
/// `qg_default_value`: the largest answer body read, in bytes.
pub const QG_DEFAULT_MAX_BODY_BYTES: u32 = 12;

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The library's value of one setting left unset (`which`: a `QG_DEFAULT_*` constant),
/// in the unit its name says, so that bindings ask rather than copy it. Writes it to
/// `*out`; an unknown `which` gives `QG_ERR_INVALID_ARGUMENT`. `out` must not be NULL.
/// Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn qg_default_value(which: u32, out: *mut u64) -> qg_result {
    ffi_boundary! {
        let out = OutPtr::new(out, "out")?;
        let hunting = HuntingBudget::default();
        let retry = crate::client::RetryPolicy::default();
        let value = match which {
            QG_DEFAULT_HUNTING_BUDGET_PER_HOUR_MS => ms(hunting.per_hour),
            QG_DEFAULT_HUNTING_BUDGET_PER_DAY_MS => ms(hunting.per_day),
            QG_DEFAULT_MAX_PAGES => DEFAULT_MAX_PAGES,
            QG_DEFAULT_HOLD_LEASE_MS => ms(DEFAULT_HOLD_LEASE),
            QG_DEFAULT_MAX_HOLD_LEASE_MS => ms(MAX_HOLD_LEASE),
            QG_DEFAULT_MAX_BUCKETS => DEFAULT_MAX_BUCKETS as u64,
            QG_DEFAULT_MAX_CALLS => u64::from(MAX_CALLS),
            QG_DEFAULT_ATTEMPT_TIMEOUT_MS => ms(DEFAULT_ATTEMPT_TIMEOUT),
            QG_DEFAULT_CONNECT_TIMEOUT_MS => ms(DEFAULT_CONNECT_TIMEOUT),
            QG_DEFAULT_MAX_ATTEMPTS => u64::from(retry.max_attempts),
            QG_DEFAULT_MAX_QUOTA_WAIT_MS => ms(retry.max_quota_wait),
            QG_DEFAULT_MAX_BODY_BYTES => DEFAULT_MAX_BODY,
            other => return Err(FfiError::invalid(format!("unknown default {other}: use a QG_DEFAULT_* constant"))),
        };
        out.write(value);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    #[test]
    fn the_cloud_names_are_the_ones_the_builder_takes() {
        let mut names = Vec::new();
        while let Some(name) = unsafe { qg_cloud_name(names.len()).as_ref() } {
            names.push(unsafe { CStr::from_ptr(name) }.to_str().unwrap().to_owned());
        }
        assert_eq!(names, Cloud::NAMES);
        for name in &names {
            assert_eq!(Cloud::from_name(name).unwrap().name(), name);
        }
    }

    #[test]
    fn defaults_are_the_library_s_own() {
        let value = |which| {
            let mut v = 0u64;
            assert_eq!(qg_default_value(which, &mut v), 0, "{which}");
            v
        };
        assert_eq!(value(QG_DEFAULT_HUNTING_BUDGET_PER_HOUR_MS), 600_000);
        assert_eq!(value(QG_DEFAULT_HUNTING_BUDGET_PER_DAY_MS), 10_800_000);
        assert_eq!(value(QG_DEFAULT_MAX_PAGES), 100_000);
        assert_eq!(value(QG_DEFAULT_HOLD_LEASE_MS), 330_000);
        assert_eq!(value(QG_DEFAULT_MAX_CALLS), 1 << 20);
        assert_eq!(value(QG_DEFAULT_ATTEMPT_TIMEOUT_MS), 300_000);
        let mut v = 7u64;
        assert_ne!(qg_default_value(0, &mut v), 0);
        assert_ne!(qg_default_value(13, &mut v), 0);
        assert_eq!(v, 7, "a refused query writes nothing");
        assert_ne!(qg_default_value(1, std::ptr::null_mut()), 0);
    }
}
