//! # quotagate
//!
//! Keeps scripts and services inside the published quotas of the Microsoft Defender for
//! Endpoint API, so that callers wait their turn instead of collecting HTTP 429s.
//!
//! - [`limiter`]: a synchronous, thread-safe limiter with exact rolling windows, several
//!   windows per bucket, FIFO waiting with deadlines, pauses on server feedback, and waits
//!   that can be taken in slices and cancelled.
//! - [`sim`] (feature `sim`, on by default): a local simulator of the Defender API that
//!   enforces the quotas on its own, for tests, demos and offline trials of scripts.
//! - `ffi` (not a Rust API): the stable C ABI declared in `include/quotagate.h`.
//!
//! The layout is the architecture: the limiter knows nothing of HTTP and the C ABI only
//! translates. See `ARCHITECTURE.md` for the map.

#![warn(missing_docs)]

pub mod client;
pub mod limiter;
#[cfg(feature = "sim")]
pub mod sim;

mod ffi;
#[cfg(test)]
mod fuzz;

pub use limiter::{Limiter, LimiterBuilder, Rate};
