#!/usr/bin/env bash
# Effect of MAAS_ENGINE_THREADS: median inference time with 1 thread and with all CPUs,
# per model and batch size (matrix products on all threads, and batches split across them
# when their shares are long enough). Prints a Markdown table. The test models and two
# convolutional zoo models (scripts/make_zoo.py, built by scripts/test.sh into target/zoo),
# each zoo model followed by onnxruntime with 1 and all intra-op threads on the same inputs
# (scripts/bench_threads_ort.py), the peer's own gain from the CPUs.
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
maas() { "$root/target/release/examples/threads" "$@"; }
peer() { "$venv/bin/python" "$root/scripts/bench_threads_ort.py" "$@"; }
for run in maas peer; do
  $run "$zoo/torch_cnn_legacy.onnx" "$threads" "$runs" 1 8 32
done
# PaddleOCR's images are 3x48x192 as the zoo's cases (its height and width are dynamic).
for run in maas peer; do
  MAAS_BENCH_ROW_SHAPE=3,48,192 $run "$zoo/ppocr_cls.onnx" "$threads" "$runs" 1 8 32
done
