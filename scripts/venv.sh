#!/usr/bin/env bash
# Makes (or brings up to date) a Python venv of scripts/requirements.txt at DIR: the one
# scripts/test.sh and scripts/bench.sh run their Python tools in.
#
# Usage: scripts/venv.sh DIR
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=$1
stamp="$venv/.requirements.sha256"
want=$(sha256sum "$root/scripts/requirements.txt" | cut -d' ' -f1)
if [[ ! -x "$venv/bin/python" || "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$root/scripts/requirements.txt"
  echo "$want" > "$stamp"
fi
