//! The `predict` function: the Open Inference Protocol over API Gateway HTTP API events.
//!
//! `main` wires things up; [`handler::handle`] maps a request to a core call and its result
//! to a response, and is called directly by tests and by the local server.

pub mod handler;
