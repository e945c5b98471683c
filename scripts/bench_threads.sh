#!/usr/bin/env bash
# Effect of MAAS_ENGINE_THREADS: median inference time with 1 thread and with all CPUs,
# per model and batch size. Prints a Markdown table.
#
# Usage: scripts/bench_threads.sh [RUNS]   (needs the venv of scripts/test.sh for the models)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
runs=${1:-21}
source "$root/scripts/bench_models.sh"
threads=$(nproc)
cargo build --release -q -p maas --example threads
echo "| model | batch | 1 thread (ms) | $threads threads (ms) | speed-up |"
echo "|---|---|---|---|---|"
for model in mlp cnn large_mlp large_cnn; do
  "$root/target/release/examples/threads" "$models/$model.onnx" "$threads" "$runs" 1 32
done
