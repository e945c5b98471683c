//! Integration tests of maas against real parts: an S3-compatible server over HTTP (started
//! by `scripts/test.sh`), real tract inference on real ONNX files, reference outputs from
//! onnxruntime, and the real `predict` binary.

mod bad_input;
mod cold_start;
mod conformance;
mod predict_api;
mod processes;
mod reference;
mod upload;
