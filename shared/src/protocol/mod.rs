//! The wire protocols predict speaks, each a codec over the protocol-neutral
//! [`Predictor::infer`](crate::Predictor::infer): [`json`] holds the JSON number handling
//! they share, [`oip`] the Open Inference Protocol (KServe v2) with [`binary`], its binary
//! tensor extension, and [`tfserving`] TensorFlow Serving's REST API (KServe v1). Bodies
//! reach them through [`encoding`], which inflates compressed ones.

pub mod binary;
pub mod encoding;
pub mod json;
pub mod oip;
pub mod tfserving;
