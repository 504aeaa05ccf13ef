//! The Redis store: buckets shared by many hosts.

use super::{Place, Store, StoreError, StoreErrorKind, Usage, Verdict, Window};

use std::time::Duration;

/// Buckets in a Redis server shared by many hosts.
#[derive(Debug)]
pub struct RedisStore {
    location: String,
}

impl RedisStore {
    /// Opens (creating if needed) the Redis server of `settings`.
    pub fn open(settings: &super::url::RedisSettings) -> Result<Self, StoreError> {
        Err(StoreError::new(
            StoreErrorKind::Invalid,
            format!(
                "the Redis store {} is not available",
                super::url::redact(&settings.url)
            ),
        ))
    }
}

impl Store for RedisStore {
    fn poll(&self, _: &str, _: &[Window], _: u64, _: Place) -> Result<Verdict, StoreError> {
        unreachable!()
    }
    fn leave(&self, _: &str, _: u64) -> Result<(), StoreError> {
        unreachable!()
    }
    fn pause(&self, _: &str, _: Duration) -> Result<(), StoreError> {
        unreachable!()
    }
    fn usage(&self, _: &str, _: &[Window]) -> Result<Usage, StoreError> {
        unreachable!()
    }
    fn location(&self) -> String {
        self.location.clone()
    }
}
