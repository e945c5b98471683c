//! maas core: everything the Lambda functions share.
//!
//! An ONNX model is published to an object store ([`store`]) under the layout of [`names`]
//! with a [`manifest`]; the [`registry`] pulls it on first use into a disk cache
//! ([`disk_cache`]) and a bounded memory cache, loads it with the [`engine`], and the
//! [`predictor`] runs requests against its [`signature`], decoded by the wire protocols of
//! [`protocol`]; the
//! [`publisher`] validates uploads and publishes them through the registry's write path
//! ([`registry::publish`]). [`http`] holds the glue the HTTP functions share, [`function`]
//! their start-up, [`malloc`] the C allocator's tuning; [`config`] reads the environment.

pub mod batch;
pub mod config;
pub mod disk_cache;
pub mod engine;
pub mod error;
pub mod fetch;
pub mod function;
pub mod http;
pub mod malloc;
pub mod manifest;
pub mod metrics;
pub mod names;
pub mod predictor;
pub mod protocol;
pub mod publisher;
pub mod registry;
pub mod signature;
pub mod stats;
pub mod store;
pub mod tensor;

pub use config::Config;
pub use error::{Error, Result};
pub use predictor::Predictor;
pub use publisher::Publisher;
pub use registry::Registry;

/// Milliseconds since `since`, fractional: sub-millisecond steps are common on warm paths.
pub(crate) fn elapsed_ms(since: std::time::Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

/// A small deterministic pseudo-random source for tests (xorshift64): each call gives a
/// number below its argument.
#[cfg(test)]
pub(crate) fn test_random() -> impl FnMut(u64) -> u64 {
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    move |below| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % below
    }
}
