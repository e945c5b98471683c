//! The model zoo (`scripts/make_zoo.py`): models as people export them, from scikit-learn
//! with skl2onnx's defaults, PyTorch's two exporters, an `If` on the data, and third-party
//! models shipped in PyPI packages. Each one must publish (validation finds a loader and a
//! planning) and serve the predictions onnxruntime makes, at two batch sizes.

use std::collections::BTreeMap;
use std::sync::Arc;

use maas::engine::Model;
use maas::manifest::{Loader, Planning};
use maas::names::{ModelId, Version};
use maas::tensor::{Tensor, TensorData};
use maas::Predictor;
use maas_tests::{
    call, cases_in, fresh_s3_store, predictor, predictor_with, publish_limits, writer, zoo_dir,
    Case,
};
use serde::Deserialize;
use serde_json::json;

use crate::reference::assert_matches_within;

#[derive(Debug, Deserialize)]
struct ZooModel {
    model: String,
    source: String,
    tolerance: f64,
    batches: Vec<usize>,
}

/// What the zoo must hold, at least: what the engine issue names, and third-party models.
const REQUIRED: &[&str] = &[
    "sk_logistic",
    "sk_forest",
    "sk_boosting",
    "sk_forest_binary",
    "sk_boosting_binary",
    "sk_forest_reg",
    "sk_boosting_reg",
    "sk_scaled_mlp",
    "onnx_if",
    "torch_mlp_legacy",
    "torch_mlp_dynamo",
    "torch_cnn_legacy",
    "torch_cnn_dynamo",
    "torch_attention_legacy",
    "torch_attention_dynamo",
    "magika",
    "silero_vad",
    "silero_vad_sr",
    "silero_vad_sr8k",
    "ppocr_cls",
];

fn zoo() -> Vec<ZooModel> {
    let path = zoo_dir().join("zoo.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("zoo.json parses")
}

#[tokio::test(flavor = "multi_thread")]
async fn every_zoo_model_publishes_and_matches_onnxruntime() {
    let zoo = zoo();
    for &name in REQUIRED {
        assert!(zoo.iter().any(|m| m.model == name), "the zoo has no {name}");
    }
    let store = Arc::new(fresh_s3_store().await);
    let cache = tempfile::tempdir().unwrap();
    let predictor = predictor(store, &cache);
    let mut failures = Vec::new();
    for model in &zoo {
        match check(&predictor, model, &zoo_cases()[&model.model]).await {
            Ok(outcome) => eprintln!("{}: {outcome}", model.model),
            Err(failure) => failures.push(format!("{} ({}): {failure}", model.model, model.source)),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} zoo models fail:\n{}",
        failures.len(),
        zoo.len(),
        failures.join("\n")
    );
}

fn zoo_cases() -> BTreeMap<String, Vec<Case>> {
    let mut cases: BTreeMap<String, Vec<_>> = BTreeMap::new();
    for case in cases_in(&zoo_dir()) {
        cases.entry(case.model.clone()).or_default().push(case);
    }
    cases
}

/// With two engine threads and no minimum share, every batch of more than one row is tried
/// split in two, one share per thread, after its first whole run measured, and every zoo model
/// still matches onnxruntime; the models with a batch axis did split. (Row by row is tried
/// too, and a split's shares run row by row where that was measured faster.)
#[tokio::test(flavor = "multi_thread")]
async fn batches_split_across_threads_still_match_onnxruntime() {
    let settings = maas::engine::Settings {
        threads: 2,
        min_share_micros: 0,
        row_by_row_micros: 0,
        ..Default::default()
    };
    let split = served_each_way(settings, |model| model.split_runs()).await;
    for name in ["torch_cnn_legacy", "torch_attention_dynamo", "magika", "ppocr_cls", "silero_vad"]
    {
        assert!(split.contains(&name.to_owned()), "{name} never split: {split:?}");
    }
}

/// On one thread with no minimum run, every batch of more than one row is tried row by row
/// after its first whole run measured, and every zoo model still matches onnxruntime; the
/// models with a batch axis did run row by row.
#[tokio::test(flavor = "multi_thread")]
async fn batches_run_row_by_row_still_match_onnxruntime() {
    let settings = maas::engine::Settings { row_by_row_micros: 0, ..Default::default() };
    let by_rows = served_each_way(settings, |model| model.row_by_row_runs()).await;
    for name in ["torch_cnn_legacy", "torch_attention_dynamo", "magika", "ppocr_cls", "silero_vad"]
    {
        assert!(by_rows.contains(&name.to_owned()), "{name} never ran row by row: {by_rows:?}");
    }
}

/// Serves every zoo model's reference cases four times with `settings`, comparing each
/// answer with onnxruntime's outputs (failures fail the test), and names the models whose
/// `runs` of some way of running a batch came to more than none.
async fn served_each_way(
    settings: maas::engine::Settings,
    runs: impl Fn(&Model) -> u64,
) -> Vec<String> {
    let store = Arc::new(maas::store::MemoryStore::new());
    let cache = tempfile::tempdir().unwrap();
    let predictor = predictor_with(store, &cache, settings);
    let cases = zoo_cases();
    let mut failures = Vec::new();
    let mut ran = Vec::new();
    for model in zoo() {
        let (id, published) = publish_zoo_model(&predictor, &model.model).await;
        published.unwrap();
        // Four times: the first run of each batch size runs whole and is measured (or,
        // planned per shape, builds its plan behind the batch, which then runs on another
        // bucket's plan and is not measured: the test waits for the plan); the next tries the
        // other way, but a split waits for the engine's threads, which sleep, so it runs on
        // one thread while they wake, and the one after splits.
        let mut outcome = Ok(());
        for _ in 0..4 {
            outcome = serve_and_compare(&predictor, &id, &model, &cases[&model.model]).await;
            if outcome.is_err() {
                break;
            }
            predictor.registry().load(&id).await.unwrap().model.wait_for_plans();
        }
        if let Err(failure) = outcome {
            failures.push(format!("{}: {failure}", model.model));
            continue;
        }
        if runs(&predictor.registry().load(&id).await.unwrap().model) > 0 {
            ran.push(model.model.clone());
        }
    }
    assert!(failures.is_empty(), "batches run this way fail:\n{}", failures.join("\n"));
    ran
}

/// Publishes one zoo model and compares what it serves with onnxruntime's outputs; says
/// how validation loaded and planned it.
async fn check(predictor: &Predictor, model: &ZooModel, cases: &[Case]) -> Result<String, String> {
    let (id, published) = publish_zoo_model(predictor, &model.model).await;
    let manifest = published.map_err(|e| format!("does not publish: {e}"))?;
    serve_and_compare(predictor, &id, model, cases).await?;
    Ok(format!(
        "{:?} loader, {:?} plans, matches onnxruntime at batches {:?}",
        manifest.loader, manifest.plans, model.batches
    ))
}

/// Serves the reference cases of a published zoo model and compares what it answers with
/// onnxruntime's outputs.
async fn serve_and_compare(
    predictor: &Predictor,
    id: &ModelId,
    model: &ZooModel,
    cases: &[Case],
) -> Result<(), String> {
    // Every batch size has a case (a model whose rows are not independent also has one
    // case per row of its larger batch).
    let mut batches: Vec<usize> = cases.iter().map(|c| c.batch).collect();
    batches.sort_unstable();
    batches.dedup();
    assert_eq!(batches, model.batches, "{}: reference cases", model.model);
    for case in cases {
        let body = json!({ "inputs": case.inputs });
        let path = format!("/v2/models/{}/versions/1/infer", id.name);
        let (status, served) =
            call(predictor, "POST", &path, Some(body.to_string().into_bytes())).await;
        if status != 200 {
            return Err(format!("batch {}: {status} {served}", case.batch));
        }
        let compared = std::panic::catch_unwind(|| {
            assert_matches_within(case, &served, model.tolerance);
        });
        compared.map_err(|panic| {
            let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
            format!("batch {}: {message}", case.batch)
        })?;
    }
    Ok(())
}

/// magika's reference case at batch 8: its rows of bytes (one row's width) and the scores
/// onnxruntime gave them (one row's classes).
fn magika_case() -> (Vec<i32>, usize, Vec<f64>, usize) {
    let case = cases_in(&zoo_dir())
        .into_iter()
        .find(|c| c.model == "magika" && c.batch == 8)
        .expect("a magika case at batch 8");
    let bytes: Vec<i32> = case.inputs[0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap() as i32)
        .collect();
    let expected = case.outputs[0].numbers();
    let (width, classes) = (bytes.len() / 8, expected.len() / 8);
    (bytes, width, expected, classes)
}

/// Runs `rows` of magika's reference rows (repeated past the eighth) on `model` and checks
/// each row's scores against onnxruntime's within 1e-4.
fn run_magika_rows(model: &Model, rows: usize) {
    let (bytes, width, expected, classes) = magika_case();
    let data = bytes.iter().copied().cycle().take(rows * width).collect();
    let input =
        Tensor { name: "bytes".into(), shape: vec![rows, width], data: TensorData::I32(data) };
    let outputs = model.run(vec![input]).unwrap();
    assert_eq!(outputs[0].shape, [rows, classes], "batch {rows}");
    let TensorData::F32(scores) = &outputs[0].data else { panic!("FP32 scores") };
    let expected = expected.iter().cycle();
    for (i, (&got, &want)) in scores.iter().zip(expected).enumerate() {
        assert!((f64::from(got) - want).abs() <= 1e-4, "batch {rows} [{i}]: {got} vs {want}");
    }
}

/// A per-shape model (magika's `BroadcastTo` needs concrete shapes) runs batches of 5 and 8
/// on one plan (5 is padded to 8), keeps at most the configured number of plans, and gives
/// each row what onnxruntime gave it in a batch of 8. The memory it holds counts the plans
/// it keeps, not the ones it dropped.
#[test]
fn per_shape_plans_bucket_batches_and_stay_bounded() {
    let path = zoo_dir().join("magika.onnx");
    let settings = maas::engine::Settings { shape_plans: 2, ..Default::default() };
    let model = Model::load_path(&path, Loader::Plain, Planning::PerShape, &settings).unwrap();
    let mut held = vec![model.memory_bytes()];
    for (rows, plans) in [(5, 1), (8, 1), (3, 2), (1, 2)] {
        run_magika_rows(&model, rows);
        // A new bucket's plan is built behind the batch that asked for it.
        model.wait_for_plans();
        assert_eq!(model.plan_count(), plans, "plans after a batch of {rows}");
        held.push(model.memory_bytes());
    }
    // Plans for 8 and 4 rows each add what they hold; the plan for 1 row takes the place of
    // the one for 8 (about as big: the packed weights dominate), not a third place.
    let (first_plan, second_plan) = (held[1] - held[0], held[3] - held[2]);
    assert!(first_plan > 0 && second_plan > 0 && held[2] == held[1], "{held:?}");
    assert!(held[4].abs_diff(held[3]) < first_plan / 2, "a dropped plan still counts: {held:?}");
}

/// Once a per-shape model has a plan, a batch whose bucket has none runs on that plan (3 rows
/// padded to the plan for 8; 16 rows in two shares of 8) while its own plan is built behind
/// it, each row scored as onnxruntime scored it; the next batch of the bucket finds its own
/// plan. With `plans_behind` off the batch waits for its plan instead.
#[test]
fn a_new_bucket_runs_on_another_buckets_plan_while_its_own_is_built() {
    let path = zoo_dir().join("magika.onnx");
    let model =
        Model::load_path(&path, Loader::Plain, Planning::PerShape, &Default::default()).unwrap();
    run_magika_rows(&model, 8);
    assert_eq!((model.plan_count(), model.stand_in_runs()), (1, 0), "the first plan: built");
    for (rows, plans) in [(3, 2), (16, 3)] {
        let stand_ins = model.stand_in_runs();
        run_magika_rows(&model, rows);
        assert_eq!(model.stand_in_runs(), stand_ins + 1, "batch {rows} ran on the plan for 8");
        model.wait_for_plans();
        assert_eq!(model.plan_count(), plans, "batch {rows}: its own plan, built behind");
        run_magika_rows(&model, rows);
        assert_eq!(model.stand_in_runs(), stand_ins + 1, "batch {rows} again: on its own plan");
    }

    let settings = maas::engine::Settings { plans_behind: false, ..Default::default() };
    let model = Model::load_path(&path, Loader::Plain, Planning::PerShape, &settings).unwrap();
    run_magika_rows(&model, 8);
    run_magika_rows(&model, 3);
    assert_eq!((model.plan_count(), model.stand_in_runs()), (2, 0), "each batch built its plan");
}

/// Silero VAD as its wheel loads it by default picks its 16 or 8 kHz network by the value of
/// its `sr` input: each sample rate gets its own plan. A batch of 5 at 16 kHz runs padded to
/// 8, its recurrent state `[2, batch, 128]` padded along its second axis, and each row gets
/// what onnxruntime gave it in the batch of 8; the 8 kHz case matches whole.
#[test]
fn a_plan_per_sample_rate_and_batches_padded_along_the_state_axis() {
    let cases = cases_in(&zoo_dir());
    let case = |model: &str, batch: usize| {
        cases.iter().find(|c| c.model == model && c.batch == batch).expect("a silero case")
    };
    let path = zoo_dir().join("silero_vad_sr.onnx");
    let model =
        Model::load_path(&path, Loader::FoldConstantIf, Planning::PerShape, &Default::default())
            .unwrap();
    let floats = |value: &serde_json::Value| -> Vec<f32> {
        let data = value["data"].as_array().unwrap();
        data.iter().map(|v| v.as_f64().unwrap() as f32).collect()
    };
    let run = |case: &Case, rows: usize| {
        let (audio, state) = (floats(&case.inputs[0]), floats(&case.inputs[1]));
        let samples = audio.len() / case.batch;
        // The state is [2, batch, 128]: the first `rows` of each of its two layers.
        let state: Vec<f32> =
            state.chunks(case.batch * 128).flat_map(|layer| layer[..rows * 128].to_vec()).collect();
        let rate = case.inputs[2]["data"][0].as_i64().unwrap();
        let inputs = vec![
            Tensor {
                name: "input".into(),
                shape: vec![rows, samples],
                data: TensorData::F32(audio[..rows * samples].to_vec()),
            },
            Tensor {
                name: "state".into(),
                shape: vec![2, rows, 128],
                data: TensorData::F32(state),
            },
            Tensor { name: "sr".into(), shape: vec![], data: TensorData::I64(vec![rate]) },
        ];
        model.run(inputs).unwrap()
    };
    for (case, rows) in [(case("silero_vad_sr", 8), 5), (case("silero_vad_sr8k", 1), 1)] {
        let outputs = run(case, rows);
        let TensorData::F32(speech) = &outputs[0].data else { panic!("FP32 output") };
        let expected = case.outputs[0].numbers();
        assert_eq!(outputs[0].shape, [rows, 1], "{}", case.model);
        for (i, (&got, &want)) in speech.iter().zip(&expected[..rows]).enumerate() {
            assert!((f64::from(got) - want).abs() <= 1e-4, "{} [{i}]: {got} vs {want}", case.model);
        }
        assert_eq!(outputs[1].shape, [2, rows, 128], "{}: the state", case.model);
    }
    assert_eq!(model.plan_count(), 2, "one plan per sample rate");
}

/// magika published in a fresh in-memory store, with its reference case at batch 8 (and the
/// predictor's disk cache, to keep while the predictor serves).
async fn magika_published(
) -> (Case, Predictor, tempfile::TempDir, ModelId, Result<maas::manifest::Manifest, maas::Error>) {
    let case = cases_in(&zoo_dir())
        .into_iter()
        .find(|c| c.model == "magika" && c.batch == 8)
        .expect("a magika case at batch 8");
    let store = Arc::new(maas::store::MemoryStore::new());
    let cache = tempfile::tempdir().unwrap();
    let predictor = predictor(store, &cache);
    let (id, published) = publish_zoo_model(&predictor, "magika").await;
    (case, predictor, cache, id, published)
}

/// Preloading a per-shape model with batch sizes builds their plans before any request: the
/// model holds one plan per bucket and weighs them, and a request in a prepared bucket
/// (5 rows: the bucket of 8) builds none.
#[tokio::test(flavor = "multi_thread")]
async fn preloaded_batch_buckets_are_planned_before_the_first_request() {
    let (case, predictor, _cache, id, published) = magika_published().await;
    published.unwrap();
    let version = maas::names::VersionSpec::Exact(id.version);
    predictor.preload(&[(id.name.clone(), version)], &[1, 8]).await;
    let loaded = predictor.registry().load(&id).await.unwrap();
    assert_eq!(loaded.model.plan_count(), 2, "a plan per prepared bucket");
    assert_eq!(predictor.registry().memory_usage().await, (1, loaded.weight()));
    let mut inputs = case.inputs.clone();
    let width = inputs[0]["shape"][1].as_u64().unwrap() as usize;
    inputs[0]["shape"] = json!([5, width]);
    inputs[0]["data"] = json!(inputs[0]["data"].as_array().unwrap()[..5 * width].to_vec());
    let path = format!("/v2/models/{}/versions/1/infer", id.name);
    let body = json!({ "inputs": inputs }).to_string().into_bytes();
    let (status, served) = call(&predictor, "POST", &path, Some(body)).await;
    assert_eq!(status, 200, "{served}");
    assert_eq!(loaded.model.plan_count(), 2, "the request found its plan ready");
}

/// A per-shape model weighs its plans: loading builds none, a request builds one and the
/// memory cache weighs the model again with it, so eviction follows what the model holds.
#[tokio::test(flavor = "multi_thread")]
async fn a_per_shape_model_weighs_more_in_the_memory_cache_once_it_holds_a_plan() {
    let (case, predictor, _cache, id, published) = magika_published().await;
    assert_eq!(published.unwrap().plans, Planning::PerShape);
    let registry = predictor.registry();
    let loaded = registry.load(&id).await.unwrap();
    let unplanned = loaded.weight();
    assert_eq!(registry.memory_usage().await, (1, unplanned));

    let path = format!("/v2/models/{}/versions/1/infer", id.name);
    let body = json!({ "inputs": case.inputs }).to_string().into_bytes();
    let (status, served) = call(&predictor, "POST", &path, Some(body)).await;
    assert_eq!(status, 200, "{served}");
    let planned = loaded.weight();
    // A plan holds the weights again, packed: it weighs about as much as the model's file.
    assert!(planned > unplanned + unplanned / 2, "{unplanned} bytes, then {planned} with a plan");
    assert_eq!(registry.memory_usage().await, (1, planned), "the cache kept the old weight");
}

/// Inputs that fit a model's signature but that it cannot compute on (here 4 samples of
/// audio, too short for the voice detector's 512-sample windows: no plan can be built for
/// them) are 422 saying so, not a 500.
#[tokio::test(flavor = "multi_thread")]
async fn inputs_a_model_cannot_compute_on_are_422() {
    let store = Arc::new(maas::store::MemoryStore::new());
    let cache = tempfile::tempdir().unwrap();
    let predictor = predictor(store, &cache);
    let (id, published) = publish_zoo_model(&predictor, "silero_vad").await;
    published.unwrap();
    let inputs = json!([
        {"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [0.0, 0.0, 0.0, 0.0]},
        {"name": "state", "datatype": "FP32", "shape": [2, 1, 128], "data": vec![0.0; 256]},
    ]);
    let path = format!("/v2/models/{}/versions/1/infer", id.name);
    let body = json!({ "inputs": inputs }).to_string().into_bytes();
    let (status, served) = call(&predictor, "POST", &path, Some(body)).await;
    assert_eq!(status, 422, "{served}");
    let error = served["error"].as_str().unwrap();
    assert!(error.starts_with("the model cannot run on these inputs: "), "{error}");
}

/// Publishes the zoo's `name` as version 1 (underscores become dashes in the model name).
async fn publish_zoo_model(
    predictor: &Predictor,
    name: &str,
) -> (ModelId, Result<maas::manifest::Manifest, maas::Error>) {
    let bytes = std::fs::read(zoo_dir().join(format!("{name}.onnx"))).unwrap();
    let id = ModelId::new(name.replace('_', "-").parse().unwrap(), Version::new(1).unwrap());
    let published = writer(predictor).publish(&id, bytes.into(), &publish_limits()).await;
    (id, published)
}
