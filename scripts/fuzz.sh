#!/usr/bin/env bash
# Fuzzes maas's decoders with cargo-fuzz (libFuzzer): every target of tests/fuzz, one at a time,
# for a fixed number of executions, then minimises its corpus (tests/fuzz/corpus/<target>,
# committed and replayed by `cargo test` on stable Rust). Installs cargo-fuzz when missing and
# runs on stable Rust with RUSTC_BOOTSTRAP=1, since libFuzzer needs nightly compiler flags.
#
# Usage: scripts/fuzz.sh [RUNS [TARGET...]]   (RUNS: executions per target, default 1000000;
#                                               targets: protocol, binary, names, signature by default)
#
# A crash stops the script with the input in tests/fuzz/artifacts/<target>/. Fix the code, then
# copy the input to tests/fuzz/regressions/<target>/ so that the integration tests replay it.
# Targets are built optimised with debug assertions and overflow checks, without a sanitizer:
# the code fuzzed is safe Rust, and a sanitizer would halve the executions per second.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
runs=${1:-1000000}
shift || true
targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
  targets=(protocol binary names signature)
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1
fuzz=(--fuzz-dir tests/fuzz --sanitizer none)

for target in "${targets[@]}"; do
  printf '\n== %s: %s executions\n' "$target" "$runs"
  options=(-runs="$runs" -timeout=10 -print_final_stats=1)
  if [[ -f "tests/fuzz/$target.dict" ]]; then
    options+=(-dict="tests/fuzz/$target.dict")
  fi
  cargo fuzz run "${fuzz[@]}" "$target" -- "${options[@]}"
  cargo fuzz cmin "${fuzz[@]}" "$target" -- -set_cover_merge=1 -use_counters=0 -use_cmp=0
  echo "$target: corpus of $(ls "tests/fuzz/corpus/$target" | wc -l) files after minimising"
done
