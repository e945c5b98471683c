#!/usr/bin/env bash
# Effect of MAAS_ENGINE_THREADS: median inference time with 1 thread and with all CPUs,
# per model and batch size. Prints a Markdown table.
#
# Usage: scripts/bench_threads.sh [RUNS]   (needs the venv of scripts/test.sh for the models)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
runs=${1:-21}
models="$root/target/bench-models"
venv="$root/.venv"
threads=$(nproc)

[[ -x "$venv/bin/python" ]] || { echo "run scripts/test.sh once first (it makes $venv)" >&2; exit 1; }
"$venv/bin/python" scripts/make_models.py test --out "$models" > /dev/null
"$venv/bin/python" scripts/make_models.py large --out "$models" > /dev/null
cargo build --release -q -p maas --example threads
echo "| model | batch | 1 thread (ms) | $threads threads (ms) | speed-up |"
echo "|---|---|---|---|---|"
for model in mlp cnn large_mlp large_cnn; do
  "$root/target/release/examples/threads" "$models/$model.onnx" "$threads" "$runs" 1 32
done
