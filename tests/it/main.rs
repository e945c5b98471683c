//! Integration tests of maas against real parts: an S3-compatible server over HTTP (started
//! by `scripts/test.sh`), real tract inference on real ONNX files, reference outputs from
//! onnxruntime, the real `predict` binary as a local server, and the real function binaries
//! under cargo-lambda's Lambda Runtime API emulator.

mod bad_input;
mod bad_requests;
mod batch;
mod binary_tensors;
mod cold_start;
mod conformance;
mod fuzz_corpora;
mod hostile;
mod lambda_emulator;
mod limits;
mod openapi;
mod predict_api;
mod processes;
mod reference;
mod s3_faults;
mod secrets_in_logs;
mod tfserving;
mod triton_client;
mod upload;
mod zoo;
