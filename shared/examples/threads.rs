//! Inference time of one model with one thread and with several (`MAAS_ENGINE_THREADS`),
//! for a few batch sizes. Driven by `scripts/bench_threads.sh`. With several threads, matrix
//! products use them all, and batches whose shares take long enough are split across them
//! (`engine::Settings::min_share_micros`); the model is loaded as validation says (loader,
//! planning). `MAAS_ENGINE_MIN_SHARE_MICROS` sets the minimum share as in `predict`.
//!
//! `threads MODEL.onnx THREADS RUNS BATCH...`   prints one Markdown row per batch size

use std::time::Instant;

use maas::engine::{validate, Model, Settings};
use maas::tensor::{Tensor, TensorData};

/// Inputs of the model's declared shapes, dynamic dimensions at `batch`, filled with a fixed
/// pattern (timing does not depend on the values).
fn inputs(model: &Model, batch: usize) -> Vec<Tensor> {
    model
        .signature()
        .inputs
        .iter()
        .map(|spec| {
            let shape: Vec<usize> =
                spec.shape.iter().map(|&d| if d < 0 { batch } else { d as usize }).collect();
            let count = shape.iter().product::<usize>();
            let data = TensorData::F32((0..count).map(|i| (i % 7) as f32 / 7.0).collect());
            Tensor { name: spec.name.clone(), shape, data }
        })
        .collect()
}

/// Median milliseconds of `runs` inferences.
fn median_ms(model: &Model, batch: usize, runs: usize) -> f64 {
    let mut samples: Vec<f64> = (0..runs)
        .map(|_| {
            let batch_inputs = inputs(model, batch);
            let started = Instant::now();
            model.run(batch_inputs).expect("inference runs");
            started.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: threads MODEL.onnx THREADS RUNS BATCH...";
    let (path, threads, runs) = match &args[..] {
        [path, threads, runs, ..] => {
            (path, threads.parse().expect(usage), runs.parse().expect(usage))
        }
        _ => panic!("{usage}"),
    };
    let bytes = std::fs::read(path).expect("the model file");
    let validated = validate(&bytes, &Settings::default()).expect("the model validates");
    let load = |threads| {
        // As predict reads it, to compare values of the minimum share.
        let min_share_micros = std::env::var("MAAS_ENGINE_MIN_SHARE_MICROS")
            .map_or(Settings::default().min_share_micros, |v| v.parse().expect("microseconds"));
        let settings = Settings { threads, min_share_micros, ..Default::default() };
        Model::load_path(path.as_ref(), validated.loader, validated.plans, &settings)
            .expect("the model loads")
    };
    let (single, several) = (load(1), load(threads));
    let name = path.rsplit('/').next().unwrap_or(path);
    for batch in args[3..].iter().map(|b| b.parse::<usize>().expect(usage)) {
        median_ms(&single, batch, 3); // warm up
        let one = median_ms(&single, batch, runs);
        median_ms(&several, batch, 3);
        let many = median_ms(&several, batch, runs);
        println!("| {name} | {batch} | {one:.2} | {many:.2} | {:.2}x |", one / many);
    }
}
