//! The `model-upload` function: validated, versioned, aliased model publishing over API
//! Gateway HTTP API events (behind IAM authorisation in `template.yaml`).
//!
//! `main` wires things up; [`handler::handle`] maps a request to a [`maas::Publisher`] call
//! and its result to a response, and is called directly by tests and by the local server.

pub mod handler;
