#!/usr/bin/env bash
# One benchmark command: maas's predict against the Python + onnxruntime peer
# (scripts/peer_onnxruntime_server.py, the comparison), both as Lambda functions under a
# Runtime API, against one moto S3 server. Installs what it needs (a venv under
# target/bench/, s3rver from npm, the benchmark models under target/bench-models/), builds the release
# binaries, runs scripts/bench_lambda.py (cold start at three sizes with maas's breakdown,
# warm invocations at batch 1 and 32, fetch throughput, package size, cost) and writes the
# tables, the command, the machine and the date into scripts/benchmarks.md.
#
# Usage: scripts/bench.sh [--runs N]                 full run (7 runs per side and size)
#        scripts/bench.sh --smoke [--bin-dir DIR]    reduced run: the small model, one run,
#                                                    binaries of DIR (default target/ci);
#                                                    checks the benchmark works, no timings,
#                                                    writes nothing
# MAAS_BENCH_VENV=DIR uses an existing venv of scripts/requirements.txt (the test command
# passes its own).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
smoke=false
bin_dir=
runs=7
while (($#)); do
  case $1 in
    --smoke) smoke=true ;;
    --bin-dir) bin_dir=$2; shift ;;
    --runs) runs=$2; shift ;;
    *) echo "usage: scripts/bench.sh [--smoke [--bin-dir DIR]] [--runs N]" >&2; exit 2 ;;
  esac
  shift
done

step() { printf '\n== %s\n' "$*" >&2; }

venv=${MAAS_BENCH_VENV:-$root/target/bench/venv}
step "Python venv ($venv)"
scripts/venv.sh "$venv"

models="$root/target/bench-models"
if $smoke; then
  bin_dir=${bin_dir:-target/ci}
  [[ -x "$bin_dir/predict" ]] || cargo build --profile ci -p predict
  step "Benchmark, smoke run ($bin_dir/predict)"
  exec "$venv/bin/python" scripts/bench_lambda.py --smoke --binary "$bin_dir/predict" \
    --models "$models"
fi

step "Benchmark models ($models)"
[[ -f "$models/large_mlp.onnx" ]] || "$venv/bin/python" scripts/make_models.py large --out "$models"
[[ -f "$models/huge_mlp.onnx" ]] || "$venv/bin/python" scripts/make_models.py huge --out "$models"

step "s3rver (npm): a second S3 server, beside moto, that serves ranged GETs from files"
s3rver="$root/target/bench/s3rver/node_modules/.bin/s3rver"
[[ -x "$s3rver" ]] || npm install --silent --no-audit --no-fund --prefix target/bench/s3rver s3rver@3.7.1

step "Release build"
cargo build --release -p predict -p model-upload -p batch-predict

step "Packages"
# cargo lambda's arm64 zip needs Rust's aarch64 standard library (from rustup's servers, not a
# package registry) and zig (the `ziglang` wheel); without the former, the x86_64 release
# binaries are zipped the way cargo lambda zips them (one `bootstrap` file).
zips=()
arch="x86_64 (no aarch64 Rust target installed: arm64 zips not buildable offline)"
if rustup target list --installed 2>/dev/null | grep -q '^aarch64-unknown-linux-gnu$'; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check ziglang
  PATH="$venv/bin:$PATH" "$venv/bin/cargo-lambda" lambda build --release --arm64 --output-format zip
  arch=arm64
  for f in predict model-upload batch-predict; do
    unzip -o -q "target/lambda/$f/bootstrap.zip" -d "target/lambda/$f/unzipped"
    cp "target/lambda/$f/unzipped/bootstrap" "target/lambda/$f/$f"
    zips+=("target/lambda/$f/$f")
  done
else
  zips=(target/release/predict target/release/model-upload target/release/batch-predict)
fi

step "Benchmark (load: $(cut -d' ' -f1-3 /proc/loadavg))"
"$venv/bin/python" scripts/bench_lambda.py --binary target/release/predict --models "$models" \
  --runs "$runs" --s3rver "$s3rver" --zip "${zips[@]}" --zip-arch "$arch" --out scripts/benchmarks.md \
  --command "scripts/bench.sh --runs $runs"
