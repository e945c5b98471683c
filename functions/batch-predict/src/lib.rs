//! `batch-predict` as a library, so tests can call its handler with hand-built events.

pub mod handler;
