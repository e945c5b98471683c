//! Cold-load timing of one model, from its ONNX file or from a pre-translated NNEF artefact.
//! Each mode runs in a fresh process, so the first load includes every one-time cost, as in
//! a Lambda cold start. Driven by `scripts/bench_load.sh`.
//!
//! ```text
//! load_timing prepare MODEL.onnx OUT_DIR   # writes OUT_DIR/model.nnef.tar and signature.json
//! load_timing onnx MODEL.onnx RUNS         # prints: first_ms median_ms
//! load_timing nnef OUT_DIR RUNS            # prints: first_ms median_ms
//! ```

use std::path::Path;
use std::time::Instant;

use maas::engine::{self, Model};
use maas::manifest::{Loader, Planning, Signature};

fn time_ms(load: &dyn Fn() -> Model) -> f64 {
    let started = Instant::now();
    drop(load());
    started.elapsed().as_secs_f64() * 1000.0
}

/// The first load, then the median of `runs` more.
fn first_and_median(runs: usize, load: &dyn Fn() -> Model) -> (f64, f64) {
    let first = time_ms(load);
    let mut samples: Vec<f64> = (0..runs).map(|_| time_ms(load)).collect();
    samples.sort_by(f64::total_cmp);
    (first, samples[samples.len() / 2])
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage =
        "usage: load_timing prepare MODEL.onnx OUT_DIR | onnx MODEL.onnx RUNS | nnef OUT_DIR RUNS";
    let runs = || args.get(2).and_then(|r| r.parse().ok()).expect(usage);
    let (first, median) = match args.first().map(String::as_str) {
        Some("prepare") => {
            let (model, out) = (Path::new(&args[1]), Path::new(&args[2]));
            let bytes = std::fs::read(model).expect("read the model");
            let signature =
                Model::load_path(model, Loader::Plain, Planning::Symbolic, &Default::default())
                    .expect("the model loads")
                    .signature()
                    .clone();
            std::fs::create_dir_all(out).expect("create OUT_DIR");
            std::fs::write(
                out.join("model.nnef.tar"),
                engine::to_nnef(&bytes).expect("NNEF export"),
            )
            .expect("write the NNEF artefact");
            std::fs::write(
                out.join("signature.json"),
                serde_json::to_vec(&signature).expect("JSON"),
            )
            .expect("write the signature");
            return;
        }
        Some("onnx") => {
            let path = Path::new(&args[1]);
            first_and_median(runs(), &|| {
                Model::load_path(path, Loader::Plain, Planning::Symbolic, &Default::default())
                    .expect("ONNX loads")
            })
        }
        Some("nnef") => {
            let dir = Path::new(&args[1]);
            let signature: Signature = serde_json::from_slice(
                &std::fs::read(dir.join("signature.json")).expect("read the signature"),
            )
            .expect("a signature");
            let artefact = dir.join("model.nnef.tar");
            first_and_median(runs(), &|| {
                Model::load_nnef(&artefact, signature.clone(), &Default::default())
                    .expect("NNEF loads")
            })
        }
        _ => panic!("{usage}"),
    };
    println!("{first:.2} {median:.2}");
}
