//! Engine timings of one zoo model (`scripts/make_zoo.py`), for the report made by
//! `scripts/bench_zoo.sh`: stock tract-onnx ("before": `onnx().model_for_path`, then
//! `into_optimized().into_runnable()`, tract's own operators, no fallbacks) or the maas engine
//! ("after": validation's loader and planning, maas's ONNX-ML operators). Run one side per
//! fresh process, so the first load pays every one-time cost as a Lambda cold start does.
//! Both run on one thread.
//!
//! ```text
//! zoo_bench ZOO_DIR MODEL before|after|turns|buckets|buckets-wait RUNS
//! ```
//!
//! Prints one JSON object: `load_ms`, `optimise_ms`, `first_ms` (the first batch-1 run) and
//! `warm_ms` (median of RUNS runs per batch size), or `error` when the side cannot load the
//! model. Importing tract here is deliberate: "before" is tract as a user gets it.
//!
//! `turns` loads both in one process and times their warm runs in turns of ten
//! (`before_ms` and `after_ms` by batch size): warm runs of a few microseconds, before
//! against after, drift with the machine less than across two processes.
//!
//! `buckets` loads the model as "after" does and times the first run of each batch bucket
//! (1 to 32 rows, in that order) as `first_ms` by batch size, what the first request of a
//! new bucket waits for on a model planned per shape, and `warm_ms` by batch size
//! (`scripts/bench_buckets.py`); `buckets-wait` the same with each new bucket waiting for
//! its plan (`Settings::plans_behind` off), as every bucket did before.

use std::path::Path;
use std::time::Instant;

use maas::engine::{self, Model};
use maas::tensor::{Tensor, TensorData};
use serde_json::{json, Value};

#[path = "common/zoo_inputs.rs"]
mod zoo_inputs;
use tract_onnx::prelude::{
    Datum, Framework, InferenceFact, InferenceModel, InferenceModelExt, IntoRunnable, IntoTValue,
    TDim, TValue, TVec, Tensor as TractTensor,
};
use zoo_inputs::inputs_of;

fn ms(started: Instant) -> f64 {
    started.elapsed().as_secs_f64() * 1000.0
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn to_tract(tensor: &Tensor) -> TValue {
    let built = match &tensor.data {
        TensorData::F32(v) => TractTensor::from_shape(&tensor.shape, v),
        TensorData::I32(v) => TractTensor::from_shape(&tensor.shape, v),
        TensorData::I64(v) => TractTensor::from_shape(&tensor.shape, v),
        _ => unreachable!("inputs_of makes only these"),
    };
    built.expect("a tract tensor").into_tvalue()
}

/// Milliseconds of one run of `run` on a copy of `inputs`, made before the clock starts.
fn timed(
    run: &dyn Fn(Vec<Tensor>) -> Result<(), String>,
    inputs: &[Tensor],
) -> Result<f64, String> {
    let owned = inputs.to_vec();
    let started = Instant::now();
    run(owned)?;
    Ok(ms(started))
}

/// `first_ms` and the warm medians of `run` over each case, each timed after one run and
/// `settle` (which waits for what that run started: a plan built behind it).
fn timings(
    cases: &[(u64, Vec<Tensor>)],
    runs: usize,
    run: &dyn Fn(Vec<Tensor>) -> Result<(), String>,
    settle: &dyn Fn(),
) -> Result<(f64, Value), String> {
    let first_ms = timed(run, &cases[0].1)?;
    let mut warm = serde_json::Map::new();
    for (batch, inputs) in cases {
        run(inputs.to_vec())?;
        settle();
        let samples = (0..runs).map(|_| timed(run, inputs)).collect::<Result<Vec<f64>, _>>()?;
        warm.insert(batch.to_string(), json!(median(samples)));
    }
    Ok((first_ms, Value::Object(warm)))
}

/// The input's fact as maas gave it before the engine issue: its type, its fixed dimensions,
/// and a symbol for each dynamic one (the ONNX dimension name, `N` for an unnamed batch).
fn symbolic_fact(
    model: &InferenceModel,
    graph_inputs: &[tract_onnx::pb::ValueInfoProto],
    tensor: &Tensor,
) -> InferenceFact {
    use tract_onnx::pb::{tensor_shape_proto::dimension::Value as Dim, type_proto::Value as Type};
    let declared = graph_inputs.iter().find(|v| v.name == tensor.name);
    let dims = declared.and_then(|v| v.r#type.as_ref()).and_then(|t| match &t.value {
        Some(Type::TensorType(t)) => t.shape.as_ref().map(|s| s.dim.clone()),
        _ => None,
    });
    let shape: Vec<TDim> = dims
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(axis, dim)| match &dim.value {
            Some(Dim::DimValue(n)) if *n > 0 => TDim::from(*n),
            Some(Dim::DimParam(p)) if !p.is_empty() => model.sym(p).into(),
            _ if axis == 0 => model.sym("N").into(),
            _ => model.sym(&format!("{}_{axis}", tensor.name)).into(),
        })
        .collect();
    let datum_type = match tensor.data {
        TensorData::F32(_) => f32::datum_type(),
        TensorData::I32(_) => i32::datum_type(),
        _ => i64::datum_type(),
    };
    InferenceFact::dt_shape(datum_type, shape)
}

/// A run of one case's inputs, owned as a decoded request owns them (the clock starts after
/// they are copied for it).
type Run<'a> = Box<dyn Fn(Vec<Tensor>) -> Result<(), String> + 'a>;

/// Stock tract's plan of the model at `path` (inputs as `cases` gives them), its load and
/// optimise milliseconds, and a run of it that copies its outputs out as maas does.
fn stock(path: &Path, cases: &[(u64, Vec<Tensor>)]) -> Result<(f64, f64, Run<'static>), String> {
    let started = Instant::now();
    let onnx = tract_onnx::onnx();
    let proto = onnx.proto_model_for_path(path).map_err(|e| format!("{e:#}"))?;
    let mut model = onnx.model_for_proto_model(&proto).map_err(|e| format!("{e:#}"))?;
    let graph_inputs = proto.graph.as_ref().map(|g| g.input.as_slice()).unwrap_or_default();
    for (index, tensor) in cases[0].1.iter().enumerate() {
        let fact = symbolic_fact(&model, graph_inputs, tensor);
        model.set_input_fact(index, fact).map_err(|e| format!("{e:#}"))?;
    }
    let load_ms = ms(started);
    let started = Instant::now();
    let plan =
        model.into_optimized().and_then(|m| m.into_runnable()).map_err(|e| format!("{e:#}"))?;
    let optimise_ms = ms(started);
    let run = move |inputs: Vec<Tensor>| {
        let values: TVec<TValue> = inputs.iter().map(to_tract).collect();
        let outputs = plan.run(values).map_err(|e| format!("{e:#}"))?;
        // Read out as a server must to answer (maas copies each output into its own tensor).
        for output in outputs {
            std::hint::black_box(output.as_bytes().to_vec());
        }
        Ok(())
    };
    Ok((load_ms, optimise_ms, Box::new(run)))
}

fn before(path: &Path, cases: &[(u64, Vec<Tensor>)], runs: usize) -> Result<Value, String> {
    let (load_ms, optimise_ms, run) = stock(path, cases)?;
    let (first_ms, warm_ms) = timings(cases, runs, &run, &|| ())?;
    Ok(
        json!({ "load_ms": load_ms, "optimise_ms": optimise_ms, "first_ms": first_ms, "warm_ms": warm_ms }),
    )
}

/// The model validated as an upload would be and loaded as `predict` loads it, on one thread
/// (new buckets' plans built behind the requests or not; batches run row by row after
/// `MAAS_ENGINE_ROW_BY_ROW_MICROS` as in `predict`).
fn load(path: &Path, plans_behind: bool) -> Result<(engine::Validated, Model), String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let defaults = engine::Settings::default();
    let row_by_row_micros = std::env::var("MAAS_ENGINE_ROW_BY_ROW_MICROS")
        .map_or(Ok(defaults.row_by_row_micros), |v| v.parse().map_err(|e| format!("{e}")))?;
    let settings =
        engine::Settings { max_tensor_bytes: 1 << 30, plans_behind, row_by_row_micros, ..defaults };
    // Validation is what upload does; its parse and optimise times are the load's.
    let validated = engine::validate(&bytes, &settings).map_err(|e| maas::error::chain(&e))?;
    let model = Model::load_path(path, validated.loader, validated.plans, &settings)
        .map_err(|e| maas::error::chain(&e))?;
    Ok((validated, model))
}

/// A run of `model` as `predict` runs it.
fn served(model: &Model) -> Run<'_> {
    Box::new(|inputs: Vec<Tensor>| model.run(inputs).map(drop).map_err(|e| maas::error::chain(&e)))
}

fn after(path: &Path, cases: &[(u64, Vec<Tensor>)], runs: usize) -> Result<Value, String> {
    let (validated, model) = load(path, true)?;
    let (first_ms, warm_ms) = timings(cases, runs, &served(&model), &|| model.wait_for_plans())?;
    Ok(json!({
        "load_ms": validated.report.parse_ms,
        "optimise_ms": validated.report.optimise_ms,
        "first_ms": first_ms,
        "warm_ms": warm_ms,
        "loader": validated.loader,
        "plans": validated.plans,
    }))
}

/// Stock tract and the maas engine in one process, each case's warm runs taken in turns of
/// `TURN` (one engine's turn, then the other's), so that a machine whose speed drifts moves
/// both alike: the medians of `runs` runs each, by batch size, as `before_ms` and `after_ms`.
fn turns(path: &Path, cases: &[(u64, Vec<Tensor>)], runs: usize) -> Result<Value, String> {
    const TURN: usize = 10;
    let (_, _, stock_run) = stock(path, cases)?;
    let (_, model) = load(path, true)?;
    let maas_run = served(&model);
    let (mut before, mut after) = (serde_json::Map::new(), serde_json::Map::new());
    for (batch, inputs) in cases {
        stock_run(inputs.to_vec())?;
        maas_run(inputs.to_vec())?;
        model.wait_for_plans();
        let mut samples = [Vec::with_capacity(runs), Vec::with_capacity(runs)];
        while samples[1].len() < runs {
            for (side, run) in [&stock_run, &maas_run].into_iter().enumerate() {
                for _ in 0..TURN {
                    samples[side].push(timed(run, inputs)?);
                }
            }
        }
        let [stock_samples, maas_samples] = samples;
        before.insert(batch.to_string(), json!(median(stock_samples)));
        after.insert(batch.to_string(), json!(median(maas_samples)));
    }
    Ok(json!({ "before_ms": before, "after_ms": after }))
}

/// `tensor` (one row) repeated `rows` times along `axes`, each of size 1 in it.
fn repeated(tensor: &Tensor, axes: &[usize], rows: usize) -> Tensor {
    fn repeat<T: Copy>(data: &[T], shape: &[usize], axis: usize, rows: usize) -> Vec<T> {
        let inner: usize = shape[axis..].iter().product();
        data.chunks(inner.max(1)).flat_map(|block| block.repeat(rows)).collect()
    }
    let mut out = tensor.clone();
    for &axis in axes {
        out.data = match &out.data {
            TensorData::F32(v) => TensorData::F32(repeat(v, &out.shape, axis, rows)),
            TensorData::I32(v) => TensorData::I32(repeat(v, &out.shape, axis, rows)),
            TensorData::I64(v) => TensorData::I64(repeat(v, &out.shape, axis, rows)),
            _ => unreachable!("inputs_of makes only these"),
        };
        out.shape[axis] = rows;
    }
    out
}

/// The first run of each batch bucket (1 to 32 rows: the batch-1 case repeated along the axes
/// where the zoo's two cases differ in size), in that order, each once the plans being built
/// behind the earlier ones are ready, then each bucket's warm median.
fn buckets(
    path: &Path,
    cases: &[(u64, Vec<Tensor>)],
    runs: usize,
    plans_behind: bool,
) -> Result<Value, String> {
    let (validated, model) = load(path, plans_behind)?;
    let [(1, one), (_, many), ..] = cases else { return Err("no batch-1 case".to_owned()) };
    let batch_axes = |a: &Tensor, b: &Tensor| -> Vec<usize> {
        (0..a.shape.len()).filter(|&axis| a.shape[axis] != b.shape[axis]).collect()
    };
    let axes: Vec<Vec<usize>> = one.iter().zip(many).map(|(a, b)| batch_axes(a, b)).collect();
    let sized: Vec<(u64, Vec<Tensor>)> = [1u64, 2, 4, 8, 16, 32]
        .into_iter()
        .map(|rows| {
            let inputs = one.iter().zip(&axes).map(|(t, a)| repeated(t, a, rows as usize));
            (rows, inputs.collect())
        })
        .collect();
    let run = served(&model);
    let mut first = serde_json::Map::new();
    for (rows, inputs) in &sized {
        model.wait_for_plans();
        first.insert(rows.to_string(), json!(timed(&run, inputs)?));
    }
    model.wait_for_plans();
    let stand_ins = model.stand_in_runs();
    let (_, warm) = timings(&sized, runs, &run, &|| model.wait_for_plans())?;
    Ok(json!({
        "first_ms": first,
        "warm_ms": warm,
        "plans": validated.plans,
        "stand_ins": stand_ins,
        "plan_count": model.plan_count(),
    }))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: zoo_bench ZOO_DIR MODEL before|after|turns|buckets|buckets-wait RUNS";
    let [zoo, name, side, runs] = args.as_slice() else { panic!("{usage}") };
    let runs: usize = runs.parse().expect(usage);
    // As predict runs (stock tract too, in `turns`): malloc keeps freed memory for the next
    // run's tensors.
    maas::malloc::keep_freed(maas::function::SERVING.keep_freed);
    let zoo = Path::new(zoo);
    let cases: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(zoo.join("cases.json")).expect("cases.json"))
            .expect("cases.json parses");
    let cases: Vec<(u64, Vec<Tensor>)> = cases
        .iter()
        .filter(|c| c["model"] == name.as_str())
        .map(|c| (c["batch"].as_u64().unwrap(), inputs_of(c)))
        .collect();
    assert!(!cases.is_empty(), "no cases for {name}");
    let path = zoo.join(format!("{name}.onnx"));
    let result = match side.as_str() {
        "before" => before(&path, &cases, runs),
        "after" => after(&path, &cases, runs),
        "turns" => turns(&path, &cases, runs),
        "buckets" => buckets(&path, &cases, runs, true),
        "buckets-wait" => buckets(&path, &cases, runs, false),
        _ => panic!("{usage}"),
    };
    let line =
        result.unwrap_or_else(|error| json!({ "error": error.lines().next().unwrap_or("") }));
    println!("{line}");
}
