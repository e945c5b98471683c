//! Where a cold load of an ONNX file goes, phase by phase, in tract's own steps: decoding
//! the protobuf, translating it into tract's graph (the initializers become tensors),
//! typing and decluttering, optimising (the weights packed for the matrix kernels) and
//! making the plan. The first round runs in a fresh process, as a cold start does; the
//! later ones show what is left once the allocator and the page cache are warm. The engine
//! report's cold-start notes come from it:
//!
//! ```text
//! cargo run --release -p maas --example load_phases -- MODEL.onnx [ROUNDS]
//! ```

use std::time::Instant;

use tract_onnx::prelude::{Framework, InferenceModelExt, IntoRunnable, TractResult};

/// Runs `step`, adding its name and milliseconds to `times`.
fn timed<T>(
    times: &mut Vec<String>,
    name: &str,
    step: impl FnOnce() -> TractResult<T>,
) -> TractResult<T> {
    let started = Instant::now();
    let out = step()?;
    times.push(format!("{name} {:.1}", started.elapsed().as_secs_f64() * 1000.0));
    Ok(out)
}

fn main() -> TractResult<()> {
    let mut args = std::env::args().skip(1);
    let path = args.next().expect("usage: load_phases MODEL.onnx [ROUNDS]");
    let rounds: usize = args.next().map_or(3, |r| r.parse().expect("ROUNDS is a number"));
    let onnx = tract_onnx::onnx();
    for round in 0..rounds {
        let mut times = Vec::new();
        let bytes = timed(&mut times, "read", || Ok(std::fs::read(&path)?))?;
        let proto = timed(&mut times, "decode", || onnx.proto_model_for_read(&mut &bytes[..]))?;
        drop(bytes);
        let model = timed(&mut times, "translate", || onnx.model_for_proto_model(&proto))?;
        drop(proto);
        let typed = timed(&mut times, "type+declutter", || model.into_typed()?.into_decluttered())?;
        let optimised = timed(&mut times, "optimise", || typed.into_optimized())?;
        timed(&mut times, "plan", || optimised.into_runnable())?;
        println!("round {round} (ms): {}", times.join(", "));
    }
    Ok(())
}
