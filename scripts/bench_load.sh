#!/usr/bin/env bash
# Does a pre-translated NNEF artefact load faster than the ONNX file? For each model, loads
# it in fresh processes (the first load pays every one-time cost, as a Lambda cold start
# does) from ONNX and from NNEF, TRIALS times each, and prints a Markdown table of medians.
#
# Usage: scripts/bench_load.sh [TRIALS]   (needs the venv of scripts/test.sh for the models)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
trials=${1:-7}
source "$root/scripts/bench_models.sh"
cargo build --release -q -p maas --features nnef --example load_timing
bin="$root/target/release/examples/load_timing"

median() { sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

echo "| model | ONNX bytes | NNEF bytes | ONNX first load (ms) | NNEF first load (ms) | ONNX warm load (ms) | NNEF warm load (ms) |"
echo "|---|---|---|---|---|---|---|"
for model in mlp cnn forest large_cnn large_mlp; do
  onnx="$models/$model.onnx"
  artefact="$models/$model.nnef"
  "$bin" prepare "$onnx" "$artefact"
  declare -a onnx_first=() onnx_warm=() nnef_first=() nnef_warm=()
  for _ in $(seq "$trials"); do
    read -r first warm < <("$bin" onnx "$onnx" 5); onnx_first+=("$first"); onnx_warm+=("$warm")
    read -r first warm < <("$bin" nnef "$artefact" 5); nnef_first+=("$first"); nnef_warm+=("$warm")
  done
  printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$model" \
    "$(stat -c %s "$onnx")" "$(stat -c %s "$artefact/model.nnef.tar")" \
    "$(printf '%s\n' "${onnx_first[@]}" | median)" "$(printf '%s\n' "${nnef_first[@]}" | median)" \
    "$(printf '%s\n' "${onnx_warm[@]}" | median)" "$(printf '%s\n' "${nnef_warm[@]}" | median)"
done
