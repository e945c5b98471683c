//! The binary tensor extension through the predict handler: every reference case asked in
//! binary (inputs and outputs) gives the numbers the JSON form gives, within onnxruntime's
//! tolerance; and `GET /v2` advertises the extension. The binary form is written and read
//! here from Triton's description, not with maas's codec.

use std::sync::Arc;

use lambda_http::Body;
use maas_tests::{call, cases, predictor};
use serde_json::{json, Value};

use crate::reference::{
    assert_matches_reference, planned_for, serving_every_reference_model, MODELS,
};

/// One tensor's elements in the binary form: little-endian, BYTES as 4-byte length + bytes.
fn encode(datatype: &str, data: &[Value]) -> Vec<u8> {
    let mut out = Vec::new();
    for value in data {
        match datatype {
            "FP32" => out.extend((value.as_f64().unwrap() as f32).to_le_bytes()),
            "FP16" => out.extend(half::f16::from_f64(value.as_f64().unwrap()).to_le_bytes()),
            "INT64" => out.extend(value.as_i64().unwrap().to_le_bytes()),
            "BYTES" => {
                let text = value.as_str().unwrap().as_bytes();
                out.extend((text.len() as u32).to_le_bytes());
                out.extend(text);
            }
            other => panic!("no encoder for {other}"),
        }
    }
    out
}

/// The elements of one binary output, as the JSON values the JSON form would hold.
fn decode(datatype: &str, bytes: &[u8]) -> Vec<Value> {
    let fixed = |width: usize| bytes.chunks_exact(width).map(<[u8]>::to_vec);
    match datatype {
        "FP32" => fixed(4).map(|b| json!(f32::from_le_bytes(b.try_into().unwrap()))).collect(),
        "FP16" => fixed(2)
            .map(|b| json!(half::f16::from_le_bytes(b.try_into().unwrap()).to_f32()))
            .collect(),
        "INT64" => fixed(8).map(|b| json!(i64::from_le_bytes(b.try_into().unwrap()))).collect(),
        "BYTES" => {
            let (mut rest, mut out) = (bytes, Vec::new());
            while !rest.is_empty() {
                let length = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
                out.push(json!(std::str::from_utf8(&rest[4..4 + length]).unwrap()));
                rest = &rest[4 + length..];
            }
            out
        }
        other => panic!("no decoder for {other}"),
    }
}

/// Sends `header` followed by `data` as Triton's client does; returns the status, the
/// response's JSON header with each binary output's `data` filled in from the binary part,
/// and whether the body was binary.
async fn infer_binary(
    predictor: &maas::Predictor,
    path: &str,
    header: &Value,
    data: &[u8],
) -> (u16, Value, bool) {
    let mut body = header.to_string().into_bytes();
    let length = body.len();
    body.extend_from_slice(data);
    let request = lambda_http::http::Request::builder()
        .method("POST")
        .uri(path)
        .header("Inference-Header-Content-Length", length)
        .body(Body::Binary(body))
        .unwrap();
    let response = predict::handler::handle(predictor, request).await;
    let status = response.status().as_u16();
    let Some(length) = response.headers().get("inference-header-content-length") else {
        return (status, serde_json::from_slice(response.body()).unwrap(), false);
    };
    assert_eq!(response.headers()["content-type"], "application/octet-stream");
    let length: usize = length.to_str().unwrap().parse().unwrap();
    let body = response.body().as_ref();
    let mut answer: Value = serde_json::from_slice(&body[..length]).unwrap();
    let mut rest = &body[length..];
    for output in answer["outputs"].as_array_mut().unwrap() {
        let Some(size) = output["parameters"]["binary_data_size"].as_u64() else { continue };
        assert!(output.get("data").is_none(), "a binary output also has data: {output}");
        let (bytes, after) = rest.split_at(size as usize);
        output["data"] = Value::Array(decode(output["datatype"].as_str().unwrap(), bytes));
        rest = after;
    }
    assert!(rest.is_empty(), "{} bytes after the outputs", rest.len());
    (status, answer, true)
}

/// A case's inputs as binary: the header's inputs with their `binary_data_size`, and the
/// binary part.
fn binary_inputs(case: &maas_tests::Case) -> (Vec<Value>, Vec<u8>) {
    let mut data = Vec::new();
    let inputs = case
        .inputs
        .iter()
        .map(|input| {
            let bytes =
                encode(input["datatype"].as_str().unwrap(), input["data"].as_array().unwrap());
            data.extend_from_slice(&bytes);
            json!({"name": input["name"], "shape": input["shape"], "datatype": input["datatype"],
                   "parameters": {"binary_data_size": bytes.len()}})
        })
        .collect();
    (inputs, data)
}

#[tokio::test(flavor = "multi_thread")]
async fn binary_requests_give_the_numbers_json_requests_give() {
    let cache = tempfile::tempdir().unwrap();
    let predictor = serving_every_reference_model(&cache).await;
    let cases = cases();
    for case in cases.iter().filter(|c| MODELS.contains(&c.model.as_str())) {
        planned_for(&predictor, case).await;
        let path = format!("/v2/models/{}/infer", case.model);
        let (inputs, data) = binary_inputs(case);
        let header = json!({"inputs": inputs, "parameters": {"binary_data_output": true}});
        let (status, binary, was_binary) = infer_binary(&predictor, &path, &header, &data).await;
        assert_eq!(status, 200, "{}: {binary}", case.model);
        assert!(was_binary, "{}: binary outputs were asked for", case.model);
        assert_matches_reference(case, &binary);
        let (status, json) = call(
            &predictor,
            "POST",
            &path,
            Some(json!({ "inputs": case.inputs }).to_string().into_bytes()),
        )
        .await;
        assert_eq!(status, 200, "{json}");
        for (b, j) in
            binary["outputs"].as_array().unwrap().iter().zip(json["outputs"].as_array().unwrap())
        {
            // The JSON form writes each FP32 in its shortest form: equal once read as FP32.
            let as_f32 = |v: &Value| v.as_f64().map_or_else(|| v.clone(), |n| json!(n as f32));
            let same =
                |data: &Value| data.as_array().unwrap().iter().map(as_f32).collect::<Vec<_>>();
            assert_eq!(
                same(&b["data"]),
                same(&j["data"]),
                "{} batch {}: binary and JSON differ",
                case.model,
                case.batch
            );
        }
    }
    // Binary inputs with JSON outputs answer in JSON.
    let case = cases.iter().find(|c| c.model == "text_io").unwrap();
    let (inputs, data) = binary_inputs(case);
    let (status, answer, was_binary) =
        infer_binary(&predictor, "/v2/models/text_io/infer", &json!({ "inputs": inputs }), &data)
            .await;
    assert_eq!((status, was_binary), (200, false), "{answer}");
    assert_matches_reference(case, &answer);
    // A binary part shorter than the inputs claim is a 400 naming the input.
    let (status, error, _) = infer_binary(
        &predictor,
        "/v2/models/text_io/infer",
        &json!({ "inputs": inputs }),
        &data[..data.len() - 1],
    )
    .await;
    assert_eq!(status, 400, "{error}");
    assert!(error["error"].as_str().unwrap().contains("input `word`: binary_data_size"), "{error}");
}

#[tokio::test(flavor = "multi_thread")]
async fn server_metadata_advertises_the_binary_extension() {
    let cache = tempfile::tempdir().unwrap();
    let predictor = predictor(Arc::new(maas::store::MemoryStore::new()), &cache);
    let (status, server) = call(&predictor, "GET", "/v2", None).await;
    assert_eq!(status, 200);
    let extensions = server["extensions"].as_array().unwrap();
    assert!(extensions.contains(&json!("binary_tensor_data")), "{server}");
}
