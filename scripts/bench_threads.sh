#!/usr/bin/env bash
# Effect of MAAS_ENGINE_THREADS: median inference time with 1 thread and with all CPUs,
# per model and batch size (matrix products on all threads, and batches split across them
# when their shares are long enough). Prints a Markdown table. The test models and two
# convolutional zoo models (scripts/make_zoo.py, built by scripts/test.sh into target/zoo).
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
  "$root/target/release/examples/threads" "$models/$model.onnx" "$threads" "$runs" 1 8 32
done
zoo=${MAAS_TEST_ZOO:-$root/target/zoo}
"$root/target/release/examples/threads" "$zoo/torch_cnn_legacy.onnx" "$threads" "$runs" 1 8 32
# PaddleOCR's images are 3x48x192 as the zoo's cases (its height and width are dynamic).
MAAS_BENCH_ROW_SHAPE=3,48,192 "$root/target/release/examples/threads" "$zoo/ppocr_cls.onnx" "$threads" "$runs" 1 8 32
