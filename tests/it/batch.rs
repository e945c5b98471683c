//! batch-predict end to end: the real binary under cargo-lambda's Runtime API emulator,
//! reading inputs from and writing outputs to the real S3 server; every output compared with
//! onnxruntime's reference and with what `predict` answers for the same row. The deadline is
//! tested on the core with a hand-built deadline (the emulator's is fixed).

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use maas::batch::{Batch, BatchSettings, Event};
use maas::config::StoreLocation;
use maas::store::{ObjectStore, S3Store, StoreError};
use maas::{Error, Predictor};
use maas_tests::{
    call, cases, fresh_bucket, model_bytes, publish, s3_client, s3_endpoint, Case, ReferenceOutput,
};
use serde_json::{json, Value};
use sha2::Digest;

use crate::lambda_emulator::{event, Emulator, Process};
use crate::reference::{assert_matches_reference, assert_matches_within};

/// A bucket of its own, its store under the prefix `maas` (so event keys are mapped), with
/// the reference forest published as `iris` (a scikit-learn forest over iris-shaped rows: 4
/// FP32 features in, a label and three probabilities out).
struct Setup {
    client: aws_sdk_s3::Client,
    bucket: String,
    store: Arc<S3Store>,
    predictor: Predictor,
    _cache: tempfile::TempDir,
}

async fn setup() -> Setup {
    let client = s3_client().await;
    let bucket = fresh_bucket(&client).await;
    let store = Arc::new(S3Store::new(client.clone(), bucket.clone(), "maas"));
    let cache = tempfile::tempdir().unwrap();
    let predictor = maas_tests::predictor(store.clone(), &cache);
    publish(&predictor, "iris", 1, model_bytes("forest")).await;
    Setup { client, bucket, store, predictor, _cache: cache }
}

impl Setup {
    /// `batch-predict` under `emulator`, on this bucket.
    fn function(&self, emulator: &Emulator, cache: &Path, extra: &[(&str, &str)]) -> Process {
        let store = format!("s3://{}/maas", self.bucket);
        let endpoint = s3_endpoint();
        let mut env = crate::processes::s3_env(&endpoint);
        env.push(("MAAS_STORE", &store));
        env.push(("MAAS_CACHE_DIR", cache.to_str().unwrap()));
        env.extend_from_slice(extra);
        emulator.function("batch-predict", &env)
    }

    async fn put(&self, key: &str, bytes: impl Into<Bytes>) {
        self.store.put(key, bytes.into()).await.unwrap();
    }

    async fn read(&self, key: &str) -> Option<Bytes> {
        match self.store.get(key).await {
            Ok(object) => Some(object.bytes().await.unwrap()),
            Err(StoreError::NotFound { .. }) => None,
            Err(err) => panic!("{key}: {err}"),
        }
    }

    async fn manifest(&self, key: &str) -> Value {
        let bytes = self.read(key).await.unwrap_or_else(|| panic!("no manifest {key}"));
        serde_json::from_slice(&bytes).unwrap()
    }

    /// The sample URL-encoded event, with one `ObjectCreated` record per store key of this
    /// bucket (keys encoded as S3 encodes them, under the store's prefix).
    fn s3_event(&self, keys: &[&str]) -> Value {
        let mut event = event("batch-s3-encoded.json");
        let template = event["Records"][0].clone();
        let records: Vec<Value> = keys
            .iter()
            .map(|key| {
                let mut record = template.clone();
                record["s3"]["bucket"]["name"] = Value::from(self.bucket.as_str());
                record["s3"]["object"]["key"] = Value::from(encode(&format!("maas/{key}")));
                record
            })
            .collect();
        event["Records"] = Value::from(records);
        event
    }

    /// Multipart uploads still open in the bucket.
    async fn open_uploads(&self) -> Vec<String> {
        let open = self.client.list_multipart_uploads().bucket(&self.bucket).send().await.unwrap();
        open.uploads().iter().filter_map(|u| u.key().map(str::to_owned)).collect()
    }
}

/// A key as S3 writes it in events: `+` for a space, `%XX` for every byte that is not
/// unreserved or `/`.
fn encode(key: &str) -> String {
    key.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                char::from(b).to_string()
            }
            b' ' => "+".to_owned(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The forest's reference case of 8 rows.
fn forest_case() -> Case {
    cases().into_iter().find(|c| c.model == "forest" && c.batch == 8).expect("forest batch 8")
}

/// The rows of the reference case, as f64 (the values Python wrote).
fn forest_rows(case: &Case) -> Vec<Vec<f64>> {
    let data: Vec<f64> =
        case.inputs[0]["data"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    data.chunks(4).map(<[f64]>::to_vec).collect()
}

/// The reference outputs of row `i` alone, as a one-row case.
fn reference_row(case: &Case, i: usize) -> Case {
    let outputs = case
        .outputs
        .iter()
        .map(|o| {
            let per_row: usize = o.shape[1..].iter().product();
            let mut shape = o.shape.clone();
            shape[0] = 1;
            ReferenceOutput {
                name: o.name.clone(),
                datatype: o.datatype.clone(),
                shape,
                data: o.data[i * per_row..(i + 1) * per_row].to_vec(),
            }
        })
        .collect();
    Case { model: case.model.clone(), batch: 1, inputs: Vec::new(), outputs }
}

/// `predict`'s answer for one row, as a case to compare with.
async fn predicted(predictor: &Predictor, row: &[f64]) -> Case {
    let body = oip_line(row).to_string().into_bytes();
    let (status, answer) = call(predictor, "POST", "/v2/models/iris/infer", Some(body)).await;
    assert_eq!(status, 200, "{answer}");
    let outputs = answer["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| ReferenceOutput {
            name: o["name"].as_str().unwrap().to_owned(),
            datatype: o["datatype"].as_str().unwrap().to_owned(),
            shape: serde_json::from_value(o["shape"].clone()).unwrap(),
            data: o["data"].as_array().unwrap().clone(),
        })
        .collect();
    Case { model: "iris".into(), batch: 1, inputs: Vec::new(), outputs }
}

fn oip_line(row: &[f64]) -> Value {
    json!({"inputs": [{"name": "float_input", "shape": [1, 4], "datatype": "FP32", "data": row}]})
}

fn lines(rows: &[Vec<f64>], line: impl Fn(&[f64]) -> Value) -> String {
    rows.iter().map(|row| format!("{}\n", line(row))).collect()
}

fn csv(rows: &[Vec<f64>]) -> String {
    rows.iter()
        .map(|r| r.iter().map(f64::to_string).collect::<Vec<_>>().join(","))
        .map(|line| format!("{line}\n"))
        .collect()
}

fn gzip(text: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(text).unwrap();
    encoder.finish().unwrap()
}

/// `rows` as a `.npy` file of FP32.
fn npy(rows: &[Vec<f64>]) -> Vec<u8> {
    let mut header =
        format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, 4), }}", rows.len());
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&u16::try_from(header.len()).unwrap().to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for value in rows.iter().flatten() {
        out.extend_from_slice(&(*value as f32).to_le_bytes());
    }
    out
}

fn parse_lines(bytes: &[u8]) -> Vec<Value> {
    String::from_utf8(bytes.to_vec())
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// Input files of every format, each of the 8 reference rows, by their path below
/// `batch/input/`: spaces and non-ASCII in names, versions and aliases in the model folder.
fn inputs_of_every_format(rows: &[Vec<f64>]) -> Vec<(&'static str, Vec<u8>)> {
    let header = "sepal length,sepal width,petal length,petal width\n";
    vec![
        ("iris/oip.jsonl", lines(rows, oip_line).into_bytes()),
        ("iris@1/instances.jsonl", lines(rows, |r| json!({"instances": [r]})).into_bytes()),
        ("iris@latest/named rows.jsonl", lines(rows, |r| json!({"float_input": r})).into_bytes()),
        ("iris/bare/été 2025.ndjson", lines(rows, |r| json!(r)).into_bytes()),
        ("iris/with header.csv", format!("{header}{}", csv(rows)).into_bytes()),
        ("iris/no header.csv.gz", gzip(csv(rows).as_bytes())),
        ("iris/rows.jsonl.gz", gzip(lines(rows, oip_line).as_bytes())),
        ("iris/rows.npy", npy(rows)),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn batch_outputs_match_onnxruntime_and_predict_in_every_format_and_redelivery_is_identical() {
    let setup = setup().await;
    let case = forest_case();
    let rows = forest_rows(&case);
    let inputs = inputs_of_every_format(&rows);
    for (path, bytes) in &inputs {
        setup.put(&format!("batch/input/{path}"), bytes.clone()).await;
    }
    // Two malformed rows of six (a blank line is no row), and an empty file.
    let malformed = [
        oip_line(&rows[0]).to_string(),
        "{not json".to_owned(),
        oip_line(&rows[1]).to_string(),
        "[1, 2, 3]".to_owned(),
        String::new(),
        oip_line(&rows[2]).to_string(),
        oip_line(&rows[3]).to_string(),
    ]
    .join("\n");
    setup.put("batch/input/iris/malformed.jsonl", malformed).await;
    setup.put("batch/input/iris/empty.csv", Bytes::new()).await;

    let mut keys: Vec<String> =
        inputs.iter().map(|(path, _)| format!("batch/input/{path}")).collect();
    keys.push("batch/input/iris/malformed.jsonl".into());
    keys.push("batch/input/iris/empty.csv".into());
    // A key under the output prefix (a misconfigured notification) is ignored.
    keys.push("batch/output/iris/oip.jsonl.jsonl".into());
    let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let s3_event = setup.s3_event(&key_refs);

    let mut emulator = Emulator::start().await;
    let cache = tempfile::tempdir().unwrap();
    let mut function = setup.function(&emulator, cache.path(), &[]);
    let (status, answer) = emulator.invoke(&mut function, &s3_event).await;
    assert_eq!(status, 200, "{answer}\n{}", function.log());
    assert_eq!(answer["processed"].as_array().map(Vec::len), Some(10), "{answer}");
    assert_eq!(answer["ignored"], json!(["maas/batch/output/iris/oip.jsonl.jsonl"]), "{answer}");

    let mut first_outputs = Vec::new();
    for (path, _) in &inputs {
        let output_key = format!("batch/output/{path}.jsonl");
        let output = setup.read(&output_key).await.unwrap_or_else(|| panic!("no {output_key}"));
        let served = parse_lines(&output);
        assert_eq!(served.len(), rows.len(), "{path}");
        for (i, line) in served.iter().enumerate() {
            assert_eq!(line["row"], i, "{path}: {line}");
            assert_matches_reference(&reference_row(&case, i), line);
            assert_matches_within(&predicted(&setup.predictor, &rows[i]).await, line, 1e-6);
        }
        let manifest = setup.manifest(&format!("batch/output/{path}.manifest.json")).await;
        assert_eq!(manifest["status"], "succeeded", "{path}: {manifest}");
        assert_eq!(manifest["rows"], json!({"ok": 8, "failed": 0}), "{path}");
        assert_eq!(manifest["model"]["name"], "iris");
        assert_eq!(manifest["model"]["version"], 1);
        assert_eq!(manifest["output"]["key"], output_key.as_str());
        assert_eq!(manifest["output"]["sha256"], hex::encode(sha2::Sha256::digest(&output)));
        assert_eq!(manifest["input"]["etag"], s3_event["Records"][0]["s3"]["object"]["eTag"]);
        first_outputs.push((output_key, output));
    }

    let malformed =
        parse_lines(&setup.read("batch/output/iris/malformed.jsonl.jsonl").await.unwrap());
    assert_eq!(malformed.len(), 6, "{malformed:?}");
    for (i, line) in malformed.iter().enumerate() {
        assert_eq!(line["row"], i, "{line}");
    }
    assert!(
        malformed[1]["error"].as_str().is_some_and(|e| e.contains("invalid JSON")),
        "{}",
        malformed[1]
    );
    assert!(
        malformed[3]["error"].as_str().is_some_and(|e| e.contains("float_input")),
        "{}",
        malformed[3]
    );
    for (line, row) in [(0, 0), (2, 1), (4, 2), (5, 3)] {
        assert_matches_reference(&reference_row(&case, row), &malformed[line]);
    }
    let manifest = setup.manifest("batch/output/iris/malformed.jsonl.manifest.json").await;
    assert_eq!(manifest["rows"], json!({"ok": 4, "failed": 2}), "{manifest}");

    assert_eq!(setup.read("batch/output/iris/empty.csv.jsonl").await, Some(Bytes::new()));
    let manifest = setup.manifest("batch/output/iris/empty.csv.manifest.json").await;
    assert_eq!(
        (manifest["status"].as_str(), &manifest["rows"]),
        (Some("succeeded"), &json!({"ok": 0, "failed": 0}))
    );
    // Nothing was written for the ignored key.
    assert_eq!(setup.read("batch/output/iris/oip.jsonl.jsonl.jsonl").await, None);

    // S3 delivers at least once: the same event again overwrites each output with the same
    // bytes (the manifests' timings may differ).
    let (status, answer) = emulator.invoke(&mut function, &s3_event).await;
    assert_eq!(status, 200, "{answer}");
    for (key, bytes) in &first_outputs {
        assert!(setup.read(key).await.as_ref() == Some(bytes), "{key} changed on re-delivery");
    }
    let listed = setup.store.list("batch/output/").await.unwrap();
    assert_eq!(listed.len(), 2 * 10, "{listed:?}");
    assert!(setup.open_uploads().await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_batch_jobs_name_their_error_type_and_write_no_output() {
    let setup = setup().await;
    let rows = forest_rows(&forest_case());
    setup.put("batch/input/nosuch/rows.csv", csv(&rows)).await;
    setup.put("batch/input/rows.jsonl", lines(&rows, oip_line)).await;
    setup.put("batch/input/iris/garbage.jsonl", "nope\n".repeat(20)).await;
    setup.put("batch/input/iris/rows.parquet", "PAR1").await;

    let mut emulator = Emulator::start().await;
    let cache = tempfile::tempdir().unwrap();
    let mut function = setup.function(&emulator, cache.path(), &[]);
    let cases = [
        (
            "batch/input/nosuch/rows.csv",
            "ModelNotFound",
            "model `nosuch` not found",
            Some("batch/output/nosuch/rows.csv"),
        ),
        (
            "batch/input/rows.jsonl",
            "InvalidBatchInput",
            "<model>[@<version or alias>]",
            Some("batch/output/rows.jsonl"),
        ),
        (
            "batch/input/iris/garbage.jsonl",
            "TooManyFailedRows",
            "MAAS_BATCH_MAX_FAILED_RATIO",
            Some("batch/output/iris/garbage.jsonl"),
        ),
        (
            "batch/input/iris/rows.parquet",
            "InvalidBatchInput",
            "unsupported file type",
            Some("batch/output/iris/rows.parquet"),
        ),
    ];
    for (key, error_type, message, output) in cases {
        let (status, error) = emulator.invoke(&mut function, &setup.s3_event(&[key])).await;
        assert_eq!(status, 500, "{key}: {error}");
        assert_eq!(error["errorType"], error_type, "{key}: {error}");
        assert!(
            error["errorMessage"].as_str().is_some_and(|m| m.contains(message)),
            "{key}: {error}"
        );
        let output = output.unwrap();
        assert_eq!(setup.read(&format!("{output}.jsonl")).await, None, "{key}");
        let manifest = setup.manifest(&format!("{output}.manifest.json")).await;
        assert_eq!(manifest["status"], "failed", "{manifest}");
        assert_eq!(manifest["error"]["type"], error_type, "{manifest}");
        assert!(manifest.get("output").is_none(), "{manifest}");
    }

    // Another bucket, and a key outside the store's prefix, are refused.
    let mut elsewhere = setup.s3_event(&["batch/input/iris/x.csv"]);
    elsewhere["Records"][0]["s3"]["bucket"]["name"] = Value::from("someone-elses-bucket");
    let mut outside = setup.s3_event(&["x"]);
    outside["Records"][0]["s3"]["object"]["key"] = Value::from("elsewhere/batch/input/iris/x.csv");
    for event in [elsewhere, outside] {
        let (status, error) = emulator.invoke(&mut function, &event).await;
        assert_eq!(
            (status, error["errorType"].as_str()),
            (500, Some("InvalidBatchInput")),
            "{error}"
        );
    }
    assert!(setup.open_uploads().await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn distributed_map_item_batches_answer_one_result_per_item() {
    let setup = setup().await;
    let case = forest_case();
    let rows = forest_rows(&case);
    let mut emulator = Emulator::start().await;
    let cache = tempfile::tempdir().unwrap();
    let mut function = setup.function(&emulator, cache.path(), &[]);

    // CSV items as the ItemReader makes them: header names as keys, values as strings.
    // Sent as the file's text: a `Value` would sort the columns by name.
    let text = std::fs::read_to_string(
        maas_tests::repo_root().join("tests/events/batch-distributed-map.json"),
    )
    .unwrap();
    let sample: Value = serde_json::from_str(&text).unwrap();
    let (status, answer) = invoke_text(&mut emulator, &mut function, &text).await;
    assert_eq!(status, 200, "{answer}\n{}", function.log());
    assert_eq!(
        (answer["model_name"].as_str(), answer["model_version"].as_str()),
        (Some("iris"), Some("1"))
    );
    let results = answer["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    for (item, result) in sample["Items"].as_array().unwrap().iter().zip(results) {
        let row: Vec<f64> = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
            .iter()
            .map(|k| item[k].as_str().unwrap().parse().unwrap())
            .collect();
        assert_matches_within(&predicted(&setup.predictor, &row).await, result, 1e-6);
    }

    // The reference rows as CSV items (in a column order that is not alphabetical) and as
    // JSON Lines items of every kind, with one bad item.
    // serde_json's maps sort keys: write the items' JSON by hand, in column order.
    let csv_json: Vec<String> = rows
        .iter()
        .map(|r| {
            let fields: Vec<String> = ["z", "y", "x", "w"]
                .iter()
                .zip(r)
                .map(|(name, value)| format!("\"{name}\": \"{value}\""))
                .collect();
            format!("{{{}}}", fields.join(", "))
        })
        .collect();
    let event_text = format!(
        "{{\"Items\": [{}], \"BatchInput\": {{\"model\": \"iris\", \"version\": \"1\"}}}}",
        csv_json.join(", ")
    );
    // Sent as text: a `Value` would sort the keys (w, x, y, z: the columns reversed).
    let (status, answer) = invoke_text(&mut emulator, &mut function, &event_text).await;
    assert_eq!(status, 200, "{answer}");
    for (i, result) in answer["results"].as_array().unwrap().iter().enumerate() {
        assert_matches_reference(&reference_row(&case, i), result);
    }

    let mut items: Vec<Value> = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        items.push(match i % 3 {
            0 => oip_line(row),
            1 => json!(row),
            _ => json!({"float_input": row}),
        });
    }
    items.push(json!("not a row"));
    let jsonl_event = json!({"Items": items, "BatchInput": {"model": "iris"}});
    let (status, answer) = emulator.invoke(&mut function, &jsonl_event).await;
    assert_eq!(status, 200, "{answer}");
    let results = answer["results"].as_array().unwrap();
    assert_eq!(results.len(), 9);
    for (i, result) in results[..8].iter().enumerate() {
        assert_matches_reference(&reference_row(&case, i), result);
    }
    assert!(
        results[8]["error"].as_str().is_some_and(|e| e.contains("object or an array")),
        "{}",
        results[8]
    );

    let (status, error) = emulator
        .invoke(&mut function, &json!({"Items": [[1, 2, 3, 4]], "BatchInput": {"model": "nosuch"}}))
        .await;
    assert_eq!((status, error["errorType"].as_str()), (500, Some("ModelNotFound")), "{error}");
}

/// Invokes with an event's exact text (the emulator's `invoke` sends a `Value`).
async fn invoke_text(emulator: &mut Emulator, function: &mut Process, text: &str) -> (u16, Value) {
    function.assert_running();
    let path = format!("/2015-03-31/functions/{}/invocations", function.name);
    let (status, body) = tokio::time::timeout(
        Duration::from_secs(60),
        maas_tests::http_request(
            &emulator.address(),
            "POST",
            &path,
            &[("content-type", "application/json")],
            text.as_bytes(),
        ),
    )
    .await
    .expect("an answer within 60 s");
    (status, serde_json::from_slice(&body).unwrap())
}

/// Step Functions results too large for a state's payload go to the store.
#[tokio::test(flavor = "multi_thread")]
async fn large_item_batch_results_are_written_to_the_store() {
    let setup = setup().await;
    let rows = forest_rows(&forest_case());
    let settings = BatchSettings { max_inline_result_bytes: 1000, ..BatchSettings::default() };
    let batch = batch(&setup, settings);
    let items: Vec<Value> = rows.iter().cycle().take(50).map(|r| json!(r)).collect();
    let event: Event =
        serde_json::from_value(json!({"Items": items, "BatchInput": {"model": "iris"}})).unwrap();
    let answer = batch.handle(event, None).await.unwrap();
    assert_eq!(answer["count"], 50, "{answer}");
    assert_eq!(answer["results_location"]["bucket"], setup.bucket.as_str());
    let key = answer["results_location"]["key"].as_str().unwrap();
    let store_key = key.strip_prefix("maas/").unwrap();
    assert!(store_key.starts_with("batch/output/items/iris@1/"), "{key}");
    let stored: Value = serde_json::from_slice(&setup.read(store_key).await.unwrap()).unwrap();
    assert_eq!(stored["results"].as_array().map(Vec::len), Some(50));
    assert_eq!(stored["model_version"], "1");
}

/// A model whose `If` decides on the sum of a batch's rows (the zoo's `onnx_if`): each
/// record is answered as onnxruntime answers its row alone, not with the branch a mini-batch
/// of records would take together (two of the eight rows take the other branch alone).
#[tokio::test(flavor = "multi_thread")]
async fn records_of_a_model_whose_rows_decide_an_if_are_answered_alone() {
    let setup = setup().await;
    let zoo = maas_tests::zoo_dir();
    let bytes = std::fs::read(zoo.join("onnx_if.onnx")).unwrap();
    publish(&setup.predictor, "onnx-if", 1, bytes.into()).await;
    let cases: Vec<Case> =
        maas_tests::cases_in(&zoo).into_iter().filter(|c| c.model == "onnx_if").collect();
    let whole = cases.iter().find(|c| c.batch == 8).expect("onnx_if batch 8");
    let data = whole.inputs[0]["data"].as_array().unwrap();
    let rows: Vec<&[Value]> = data.chunks(4).collect();
    let alone = |row: &[Value]| {
        let found = cases
            .iter()
            .find(|c| c.batch == 1 && c.inputs[0]["data"].as_array().unwrap()[..] == *row);
        found.expect("onnx_if's case of a row alone")
    };
    let differs = (0..rows.len()).filter(|&i| {
        alone(rows[i]).outputs[0].data[..] != reference_row(whole, i).outputs[0].data[..]
    });
    assert!(differs.count() >= 1, "no row takes another branch alone: the test cannot fail");
    let batch = batch(&setup, BatchSettings::default());
    let event: Event =
        serde_json::from_value(json!({"Items": rows, "BatchInput": {"model": "onnx-if"}})).unwrap();
    let answer = batch.handle(event, None).await.unwrap();
    let results = answer["results"].as_array().unwrap_or_else(|| panic!("{answer}"));
    assert_eq!(results.len(), rows.len());
    for (row, result) in rows.iter().zip(results) {
        assert_matches_within(alone(row), result, 1e-5);
    }
}

fn batch(setup: &Setup, settings: BatchSettings) -> Batch {
    let location = StoreLocation::S3 { bucket: setup.bucket.clone(), prefix: "maas".into() };
    Batch::new(setup.predictor.clone(), location, settings)
}

/// `rows` reference rows repeated to `count` rows of CSV.
fn big_csv(rows: &[Vec<f64>], count: usize) -> String {
    let many: Vec<Vec<f64>> = rows.iter().cycle().take(count).cloned().collect();
    csv(&many)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_past_its_deadline_aborts_cleanly_and_a_rerun_completes() {
    let setup = setup().await;
    let rows = forest_rows(&forest_case());
    // Far more rows than a job gets through before its deadline, two seconds in (200,000
    // took under two seconds once mini-batches were stacked as read).
    let total = 1_000_000;
    setup.put("batch/input/iris/big.csv", big_csv(&rows, total)).await;
    let margin = Duration::from_secs(1);
    let settings =
        BatchSettings { batch_size: 16, deadline_margin: margin, ..BatchSettings::default() };
    let batch = batch(&setup, settings);
    let event = || -> Event {
        serde_json::from_value(setup.s3_event(&["batch/input/iris/big.csv"])).unwrap()
    };

    let started = Instant::now();
    let stop_at = batch.stop_at(SystemTime::now() + margin + Duration::from_secs(2));
    let err = batch.handle(event(), stop_at).await.unwrap_err();
    assert!(matches!(err, Error::DeadlineExceeded { rows } if rows > 0), "{err:?}");
    assert_eq!(err.kind(), "DeadlineExceeded");
    assert!(started.elapsed() < Duration::from_secs(6), "{:?}", started.elapsed());
    assert_eq!(setup.read("batch/output/iris/big.csv.jsonl").await, None);
    assert_eq!(setup.read("batch/output/iris/big.csv.manifest.json").await, None);
    assert!(setup.open_uploads().await.is_empty(), "{:?}", setup.open_uploads().await);

    let answer = batch.handle(event(), None).await.unwrap();
    assert_eq!(answer["processed"][0]["rows_ok"], total, "{answer}");
    let output = setup.read("batch/output/iris/big.csv.jsonl").await.unwrap();
    assert_eq!(output.iter().filter(|&&b| b == b'\n').count(), total);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_process_killed_mid_job_leaves_no_output_and_a_rerun_completes() {
    let setup = setup().await;
    let rows = forest_rows(&forest_case());
    // About 30 MB of output: several multipart parts.
    setup.put("batch/input/iris/big.csv", big_csv(&rows, 200_000)).await;
    let event = setup.s3_event(&["batch/input/iris/big.csv"]);
    let mut emulator = Emulator::start().await;
    let cache = tempfile::tempdir().unwrap();
    // Small mini-batches: slow enough to be caught mid-way.
    let mut function = setup.function(&emulator, cache.path(), &[("MAAS_BATCH_SIZE", "8")]);

    let address = emulator.address();
    let path = "/2015-03-31/functions/batch-predict/invocations".to_owned();
    let body = event.to_string();
    let pending = tokio::spawn(async move {
        maas_tests::http_request(
            &address,
            "POST",
            &path,
            &[("content-type", "application/json")],
            body.as_bytes(),
        )
        .await
    });
    // Kill it once its output is being uploaded.
    let deadline = Instant::now() + Duration::from_secs(60);
    while setup.open_uploads().await.is_empty() {
        function.assert_running();
        assert!(
            Instant::now() < deadline,
            "no multipart upload started; the log:\n{}",
            function.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    function.kill();
    pending.abort();
    assert_eq!(setup.read("batch/output/iris/big.csv.jsonl").await, None);
    assert_eq!(setup.read("batch/output/iris/big.csv.manifest.json").await, None);

    // A new execution environment gets the retry and completes.
    let cache = tempfile::tempdir().unwrap();
    let mut rerun = setup.function(&emulator, cache.path(), &[]);
    let (status, answer) = emulator.invoke(&mut rerun, &event).await;
    assert_eq!(status, 200, "{answer}\n{}", rerun.log());
    let output = setup.read("batch/output/iris/big.csv.jsonl").await.unwrap();
    assert_eq!(output.iter().filter(|&&b| b == b'\n').count(), 200_000);
    let manifest = setup.manifest("batch/output/iris/big.csv.manifest.json").await;
    assert_eq!(manifest["rows"], json!({"ok": 200_000, "failed": 0}));
}
