#!/usr/bin/env python3
"""The engine report: per zoo model, load / optimise / first run / warm runs for stock tract
("before"), the maas engine ("after") and onnxruntime beside them, in one run.

    .venv/bin/python scripts/bench_zoo.py [--runs 100] [--out target/zoo] [--rounds N | --turns]

Builds the zoo (scripts/make_zoo.py), builds shared/examples/zoo_bench.rs in release mode,
then for each model starts three fresh processes, one per engine, each on one thread:
    before  tract-onnx 0.23.9 as it comes: its own operators, the file's input facts with
            symbolic dynamic dimensions, no fallback loaders
    after   the maas engine: the loader and planning validation picks, maas's ONNX-ML
            operators (shared/src/engine/ml.rs), per-shape plans where needed
    ort     onnxruntime InferenceSession (session creation = load + optimise)
and prints a Markdown table. Times are milliseconds: "first" is the first batch-1 run after
loading, "warm" the median of --runs runs at batch 1 and at the zoo's larger batch.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "target" / "release" / "examples" / "zoo_bench"


def ort_side(zoo: Path, model: str, runs: int) -> dict:
    """Timings of onnxruntime in this (fresh) process."""
    started = time.perf_counter()
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(zoo / f"{model}.onnx"), options, providers=["CPUExecutionProvider"])
    load_ms = (time.perf_counter() - started) * 1e3
    types = {"FP32": np.float32, "INT32": np.int32, "INT64": np.int64}
    cases = [c for c in json.loads((zoo / "cases.json").read_text()) if c["model"] == model]
    feeds = [(c["batch"], {t["name"]: np.array(t["data"], dtype=types[t["datatype"]]).reshape(t["shape"])
                           for t in c["inputs"]}) for c in cases]
    started = time.perf_counter()
    session.run(None, feeds[0][1])
    first_ms = (time.perf_counter() - started) * 1e3
    warm = {}
    for batch, feed in feeds:
        session.run(None, feed)
        samples = []
        for _ in range(runs):
            started = time.perf_counter()
            session.run(None, feed)
            samples.append((time.perf_counter() - started) * 1e3)
        warm[str(batch)] = float(np.median(samples))
    return {"load_ms": load_ms, "first_ms": first_ms, "warm_ms": warm}


def measure(zoo: Path, model: str, side: str, runs: int) -> dict:
    if side == "ort":
        command = [sys.executable, __file__, "--ort", model, "--out", str(zoo), "--runs", str(runs)]
    else:
        command = [str(EXAMPLE), str(zoo), model, side, str(runs)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["exit " + str(done.returncode)])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def cell(result: dict, key: str) -> str:
    return f"{result[key]:.2f}" if key in result else ""


def warm_cell(result: dict) -> str:
    if "warm_ms" not in result:
        return ""
    return " / ".join(f"{v:.3f}" if v < 1 else f"{v:.2f}" for v in result["warm_ms"].values())


def row(model: str, batches: list[int], before: dict, after: dict, ort_result: dict) -> str:
    if "error" in before:
        reason = before["error"]
        before_cells = ["refused: " + (reason[:70] + "…" if len(reason) > 70 else reason), "", "", ""]
    else:
        before_cells = [cell(before, "load_ms"), cell(before, "optimise_ms"), cell(before, "first_ms"),
                        warm_cell(before)]
    if "error" in after:
        after_cells = ["refused (422)", "", "", "", ""]
    else:
        after_cells = [cell(after, "load_ms"), cell(after, "optimise_ms"), cell(after, "first_ms"),
                       warm_cell(after), f"{after['loader']}, {after['plans']}"]
    ort_cells = [cell(ort_result, "load_ms"), cell(ort_result, "first_ms"), warm_cell(ort_result)]
    batch = "/".join(str(b) for b in batches)
    return "| " + " | ".join([model, batch, *before_cells, *after_cells, *ort_cells]) + " |"


def build(zoo: Path, profile: str) -> Path:
    """Makes the zoo in `zoo` and builds zoo_bench with `profile`; returns the example's path."""
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_zoo.py"), "build", "--out", str(zoo)],
                   check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["cargo", "build", "--profile", profile, "--example", "zoo_bench", "-p", "maas"],
                   check=True, cwd=ROOT)
    return ROOT / "target" / profile / "examples" / "zoo_bench"


def spread(values: list[float]) -> str:
    """`low-high (median)` of `values`, or the one value."""
    def text(v: float) -> str:
        return f"{v:.3f}" if v < 1 else f"{v:.2f}"

    if len(values) == 1:
        return text(values[0])
    return f"{text(min(values))}-{text(max(values))} ({text(statistics.median(values))})"


def rounds_table(zoo: list[dict], out: Path, runs: int, rounds: int) -> None:
    """maas and onnxruntime in turn, `rounds` times per model; each round's ratio is maas over
    the onnxruntime run right after it, so a machine whose speed drifts moves both."""
    print("| model | batches | maas warm, low-high (median) | onnxruntime warm | "
          "maas / onnxruntime, first batch | second batch |")
    print("|---" * 6 + "|")
    for entry in zoo:
        model, batches = entry["model"], entry["batches"]
        pairs = [(measure(out, model, "after", runs), measure(out, model, "ort", runs))
                 for _ in range(rounds)]
        if any("error" in side for pair in pairs for side in pair):
            print(f"| {model} | refused or failed | | | | |", flush=True)
            continue
        cells = []
        for side in (0, 1):
            per_batch = [[pair[side]["warm_ms"][str(b)] for pair in pairs] for b in batches]
            cells.append(" / ".join(spread(v) for v in per_batch))
        for b in batches:
            ratios = [maas["warm_ms"][str(b)] / ort["warm_ms"][str(b)] for maas, ort in pairs]
            cells.append(spread(ratios) + "x")
        batch = "/".join(str(b) for b in batches)
        print("| " + " | ".join([model, batch, *cells]) + " |", flush=True)


def turns_table(zoo: list[dict], out: Path, runs: int) -> None:
    """Stock tract and maas in one process per model, warm runs in turns of ten: is any model
    slower than before the engine work? Models stock tract refuses are left out."""
    print("| model | batches | stock tract warm | maas warm | maas / stock tract |")
    print("|---" * 5 + "|")
    for entry in zoo:
        model, batches = entry["model"], entry["batches"]
        result = measure(out, model, "turns", runs)
        if "error" in result:
            continue
        before, after = result["before_ms"], result["after_ms"]
        cells = [" / ".join(f"{side[str(b)] * 1000:.2f}" for b in batches) for side in (before, after)]
        ratios = " / ".join(f"{after[str(b)] / before[str(b)]:.2f}x" for b in batches)
        print("| " + " | ".join([model, "/".join(map(str, batches)), *cells, ratios]) + " |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--out", type=Path, default=ROOT / "target" / "zoo")
    parser.add_argument("--rounds", type=int, default=1,
                        help="above 1: maas and onnxruntime in turn this many times per model, "
                             "ranges and ratios only (no stock tract)")
    parser.add_argument("--turns", action="store_true",
                        help="stock tract and maas in one process, in turns: warm times in µs "
                             "and their ratio, for the models stock tract loads")
    parser.add_argument("--ort", help=argparse.SUPPRESS)  # internal: time onnxruntime on one model
    args = parser.parse_args()
    if args.ort:
        print(json.dumps(ort_side(args.out, args.ort, args.runs)))
        return
    build(args.out, "release")
    zoo = json.loads((args.out / "zoo.json").read_text())
    if args.turns:
        turns_table(zoo, args.out, args.runs)
        return
    if args.rounds > 1:
        rounds_table(zoo, args.out, args.runs, args.rounds)
        return
    print("| model | batches | before: load | optimise | first | warm | after: load | optimise | first "
          "| warm | loader, plans | onnxruntime: session | first | warm |")
    print("|---" * 14 + "|")
    for entry in zoo:
        model = entry["model"]
        results = [measure(args.out, model, side, args.runs) for side in ("before", "after", "ort")]
        print(row(model, entry["batches"], *results), flush=True)


if __name__ == "__main__":
    main()
