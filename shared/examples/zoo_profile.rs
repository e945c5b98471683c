//! Per-node profile of one zoo model (`scripts/make_zoo.py`) in the maas engine: the plan the
//! engine runs for the zoo's inputs at one batch size, each node timed over RUNS runs on one
//! thread. The engine report's "Engine speed II" profiles come from here.
//!
//! ```text
//! zoo_profile ZOO_DIR MODEL BATCH RUNS [TOP]
//! ```
//!
//! Prints the TOP (default 15) slowest nodes, their share of the total and their operator as
//! tract prints it, then the total of every node.

use std::path::Path;

use maas::engine;
use serde_json::Value;

#[path = "common/zoo_inputs.rs"]
mod zoo_inputs;
use zoo_inputs::inputs_of;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: zoo_profile ZOO_DIR MODEL BATCH RUNS [TOP]";
    let (zoo, name, batch, runs) = match args.as_slice() {
        [zoo, name, batch, runs, ..] => (zoo, name, batch, runs),
        _ => panic!("{usage}"),
    };
    let batch: u64 = batch.parse().expect(usage);
    let runs: usize = runs.parse().expect(usage);
    let top: usize = args.get(4).map_or(15, |t| t.parse().expect(usage));
    let zoo = Path::new(zoo);
    let cases: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(zoo.join("cases.json")).expect("cases.json"))
            .expect("cases.json parses");
    let case = cases
        .iter()
        .find(|c| c["model"] == name.as_str() && c["batch"].as_u64() == Some(batch))
        .unwrap_or_else(|| panic!("no case for {name} at batch {batch}"));
    let bytes = std::fs::read(zoo.join(format!("{name}.onnx"))).expect("model file");
    let times = engine::profile(&bytes, &inputs_of(case), runs)
        .unwrap_or_else(|e| panic!("{}", maas::error::chain(&e)));
    let total: f64 = times.iter().map(|t| t.ms).sum();
    println!("{name} batch {batch}: {} nodes, {total:.4} ms per run", times.len());
    for time in times.iter().take(top) {
        let op: String = time.op.chars().take(110).collect();
        println!("{:9.4} ms {:5.1}%  {:<40} {op}", time.ms, 100.0 * time.ms / total, time.name);
    }
}
