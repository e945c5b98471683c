//! Entry points of the fuzz targets in `tests/fuzz`, shared with the integration test that
//! replays their committed corpora on stable Rust (`tests/it/fuzz_corpora.rs`). Each takes
//! arbitrary bytes and panics only when it finds a bug: a panic in the code under test, or
//! a broken invariant asserted here.

use std::sync::LazyLock;

use maas::manifest::{Signature, TensorSpec};
use maas::names::{
    alias_key, alias_of_key, staging_key, version_of_manifest_key, AliasName, ModelId, ModelName,
    UploadId, Version, VersionSpec,
};
use maas::protocol::oip::{decode, decode_with_binary, parse_request, ResponseOutput};
use maas::protocol::{binary, json};
use maas::tensor::DataType;
use maas::Error;

/// A fuzz target's entry function.
pub type Entry = fn(&[u8]);

/// The fuzz targets, by the name of their binary and corpus folder.
pub const TARGETS: [(&str, Entry); 4] = [
    ("protocol", protocol),
    ("binary", binary_request),
    ("names", names),
    ("signature", signature),
];

fn spec(name: &str, datatype: DataType, shape: &[i64]) -> TensorSpec {
    TensorSpec { name: name.to_owned(), datatype, shape: shape.to_vec() }
}

/// The signatures requests are decoded against: the example iris model; an image model with
/// fixed dimensions; one input of every datatype maas carries, with batch and inner dynamic
/// dimensions; and half-precision and string inputs together.
static SIGNATURES: LazyLock<Vec<Signature>> = LazyLock::new(|| {
    use DataType::*;
    let outputs = vec![spec("label", I64, &[-1]), spec("probabilities", F32, &[-1, 3])];
    let every_type = [Bool, U8, U16, U32, U64, I8, I16, I32, I64, F16, F32, F64, Bytes];
    vec![
        Signature { inputs: vec![spec("float_input", F32, &[-1, 4])], outputs: outputs.clone() },
        Signature { inputs: vec![spec("image", F32, &[1, 1, 12, 12])], outputs: outputs.clone() },
        Signature {
            inputs: every_type
                .iter()
                .enumerate()
                .map(|(i, &t)| {
                    spec(&format!("x{i}"), t, if i % 2 == 0 { &[-1] } else { &[-1, -1] })
                })
                .collect(),
            outputs: outputs.clone(),
        },
        Signature { inputs: vec![spec("half", F16, &[-1]), spec("text", Bytes, &[-1])], outputs },
    ]
});

fn assert_bad_request(err: &Error) {
    assert_eq!(err.status(), 400, "a request error must be a 400: {err:?}");
    assert!(!err.client_message().is_empty());
}

/// Parses `body` as an inference request and decodes it against each signature: every error
/// is a 400, and a decoded request fits the signature and survives encoding and decoding again
/// unchanged.
pub fn protocol(body: &[u8]) {
    let request = match parse_request(body) {
        Ok(request) => request,
        Err(err) => return assert_bad_request(&err),
    };
    for signature in SIGNATURES.iter() {
        let decoded = match decode(request.clone(), signature).and_then(|r| signature.check(r)) {
            Ok(decoded) => decoded,
            Err(err) => {
                assert_bad_request(&err);
                continue;
            }
        };
        assert_eq!(decoded.inputs.len(), signature.inputs.len());
        for (tensor, spec) in decoded.inputs.iter().zip(&signature.inputs) {
            assert_eq!(tensor.name, spec.name);
            assert_eq!(tensor.datatype(), spec.datatype);
            assert!(spec.accepts_shape(&tensor.shape), "{:?} for {spec:?}", tensor.shape);
            assert_eq!(tensor.data.len(), tensor.shape.iter().product::<usize>());
        }
        for output in &decoded.outputs {
            assert!(signature.outputs.iter().any(|spec| &spec.name == output));
        }
        // What the encoder writes for these tensors decodes to the same tensors.
        let inputs: Vec<serde_json::Value> = decoded
            .inputs
            .iter()
            .map(|tensor| {
                let encoded = json::to_vec(&ResponseOutput::from(tensor.clone()))
                    .expect("decoded tensors encode");
                let encoded: serde_json::Value =
                    json::from_slice(&encoded).expect("encoded tensors parse");
                serde_json::json!({
                    "name": encoded["name"],
                    "shape": encoded["shape"],
                    "datatype": encoded["datatype"],
                    "data": encoded["data"],
                })
            })
            .collect();
        let again = serde_json::json!({ "inputs": inputs }).to_string();
        let again = parse_request(again.as_bytes()).expect("an encoded request parses");
        let again = decode(again, signature)
            .and_then(|r| signature.check(r))
            .expect("an encoded request decodes");
        // Compared as printed so that NaN equals NaN.
        assert_eq!(
            format!("{:?}", again.inputs),
            format!("{:?}", decoded.inputs),
            "encoding and decoding changed the tensors"
        );
    }
}

/// A binary-extension request: the first two bytes (little-endian) are the
/// `Inference-Header-Content-Length`, the rest the body. Every error is a 400, and the inputs
/// decoded survive the binary encoding and decoding unchanged.
pub fn binary_request(data: &[u8]) {
    let Some((length, body)) = data.split_first_chunk::<2>() else { return };
    let mut headers = lambda_http::http::HeaderMap::new();
    headers.insert(binary::HEADER_LENGTH, u16::from_le_bytes(*length).into());
    let (header, tensors) = match binary::split(&headers, body) {
        Ok(parts) => parts,
        Err(err) => return assert_bad_request(&err),
    };
    let request = match parse_request(header) {
        Ok(request) => request,
        Err(err) => return assert_bad_request(&err),
    };
    for signature in SIGNATURES.iter() {
        let decoded = decode_with_binary(request.clone(), tensors, signature)
            .and_then(|r| signature.check(r));
        let decoded = match decoded {
            Ok(decoded) => decoded,
            Err(err) => {
                assert_bad_request(&err);
                continue;
            }
        };
        for tensor in &decoded.inputs {
            let mut bytes = Vec::new();
            binary::encode(&tensor.data, &mut bytes);
            assert_eq!(bytes.len(), binary::encoded_len(&tensor.data));
            let again = binary::decode(tensor.datatype(), tensor.data.len(), &bytes)
                .expect("encoded elements decode");
            // Compared as printed so that NaN equals NaN.
            assert_eq!(format!("{again:?}"), format!("{:?}", tensor.data));
        }
    }
}

/// Parses the text as every kind of name the API takes: whatever is accepted stays inside its
/// store prefix and prints back as given; whatever is refused is a 400.
pub fn names(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let model: ModelName = "m".parse().expect("a valid name");
    match text.parse::<ModelName>() {
        Ok(name) => {
            assert_eq!(name.as_str(), text);
            assert!(!text.contains('/') && text != "." && text != "..", "{text:?}");
            assert_eq!(name.prefix(), format!("models/{text}/"));
            let id = ModelId::new(name.clone(), Version::MIN);
            assert_eq!(version_of_manifest_key(&name, &id.manifest_key()), Some(Version::MIN));
            assert!(id.model_key().starts_with(&name.prefix()));
        }
        Err(err) => assert_bad_request(&err),
    }
    match text.parse::<Version>() {
        Ok(version) => {
            assert_eq!(version.to_string(), text);
            let id = ModelId::new(model.clone(), version);
            assert_eq!(version_of_manifest_key(&model, &id.manifest_key()), Some(version));
        }
        Err(err) => assert_bad_request(&err),
    }
    match text.parse::<AliasName>() {
        Ok(alias) => {
            assert_eq!(alias.as_str(), text);
            assert!(text.parse::<Version>().is_err(), "alias {text:?} looks like a version");
            let key = alias_key(&model, &alias);
            assert_eq!(key, format!("models/m/aliases/{text}"));
            assert_eq!(alias_of_key(&model, &key), Some(alias));
        }
        Err(err) => assert_bad_request(&err),
    }
    match text.parse::<VersionSpec>() {
        Ok(VersionSpec::Latest) => assert_eq!(text, "latest"),
        Ok(VersionSpec::Exact(version)) => assert_eq!(version.to_string(), text),
        Ok(VersionSpec::Alias(alias)) => assert_eq!(alias.as_str(), text),
        Err(err) => assert_bad_request(&err),
    }
    match text.parse::<UploadId>() {
        Ok(upload) => {
            assert_eq!(upload.to_string(), text);
            assert_eq!(staging_key(&model, &upload), format!("staging/m/{text}"));
        }
        Err(err) => assert_bad_request(&err),
    }
    // Keys read back from a listing: only a key of the exact form names a version or alias.
    if let Some(version) = version_of_manifest_key(&model, text) {
        assert_eq!(text, format!("models/m/{version}/manifest.json"));
    }
    if let Some(alias) = alias_of_key(&model, text) {
        assert_eq!(text, format!("models/m/aliases/{alias}"));
    }
}

/// Reads `bytes` as an ONNX file's signature: any outcome but a panic is fine, and a
/// signature read has no dimension below -1 (dynamic).
pub fn signature(bytes: &[u8]) {
    if let Ok(signature) = maas::engine::read_signature(bytes) {
        for spec in signature.inputs.iter().chain(&signature.outputs) {
            assert!(spec.shape.iter().all(|&d| d >= -1), "{spec:?}");
        }
    }
}
