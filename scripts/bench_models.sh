# Sourced by the benchmark scripts: makes the test and large models into $models with the
# venv of scripts/test.sh. Expects $root.
models="$root/target/bench-models"
venv="$root/.venv"
[[ -x "$venv/bin/python" ]] || { echo "run scripts/test.sh once first (it makes $venv)" >&2; exit 1; }
"$venv/bin/python" "$root/scripts/make_models.py" test --out "$models" > /dev/null
"$venv/bin/python" "$root/scripts/make_models.py" large --out "$models" > /dev/null
