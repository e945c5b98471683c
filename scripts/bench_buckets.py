#!/usr/bin/env python3
"""First request of each batch bucket: what a request in a batch size not seen before waits
for, maas beside onnxruntime, in one run.

    .venv/bin/python scripts/bench_buckets.py [--runs 20] [--out target/zoo] [--profile release]
        [MODEL ...]

Builds the zoo (scripts/make_zoo.py) and shared/examples/zoo_bench.rs, then for each model
(default: the zoo's models that the engine always plans per input shape) starts three fresh
processes, each on one thread:
    wait    `zoo_bench ZOO MODEL buckets-wait RUNS`: loads the model as `predict` does, then
            runs batches of 1, 2, 4, 8, 16 and 32 rows (the zoo's batch-1 case repeated along
            the batch axes) in that order; each size's first run waits for its bucket's plan
            to be built, as every new bucket did before plans were built behind requests
    behind  `zoo_bench ZOO MODEL buckets RUNS`: the same as maas runs now: the first run of a
            new bucket runs on another bucket's plan while its own is built on a thread of its
            own (each size's first run starts once the plan started before it is ready, as for
            requests spaced apart)
    ort     onnxruntime on the same inputs in the same order
and prints a Markdown table (milliseconds): each size's first run, and its warm median over
RUNS runs once every bucket has its plan. Run it under `taskset -c 0` to give every process
one CPU, so that a plan built behind competes with the requests.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import bench_zoo

ROOT = Path(__file__).resolve().parent.parent
SIZES = [1, 2, 4, 8, 16, 32]


def feeds(zoo: Path, model: str) -> list[tuple[int, dict]]:
    """Each size's inputs: the batch-1 case repeated along the axes where the cases differ."""
    types = {"FP32": np.float32, "INT32": np.int32, "INT64": np.int64}
    cases = [c for c in json.loads((zoo / "cases.json").read_text()) if c["model"] == model]
    one, many = cases[0]["inputs"], cases[1]["inputs"]
    sized = []
    for rows in SIZES:
        feed = {}
        for a, b in zip(one, many):
            value = np.array(a["data"], dtype=types[a["datatype"]]).reshape(a["shape"])
            for axis, (x, y) in enumerate(zip(a["shape"], b["shape"])):
                if x != y:
                    value = np.repeat(value, rows, axis=axis)
            feed[a["name"]] = value
        sized.append((rows, feed))
    return sized


def ort_side(zoo: Path, model: str, runs: int) -> dict:
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(zoo / f"{model}.onnx"), options, providers=["CPUExecutionProvider"])
    sized = feeds(zoo, model)
    first, warm = {}, {}
    for rows, feed in sized:
        started = time.perf_counter()
        session.run(None, feed)
        first[str(rows)] = (time.perf_counter() - started) * 1e3
    for rows, feed in sized:
        samples = []
        for _ in range(runs):
            started = time.perf_counter()
            session.run(None, feed)
            samples.append((time.perf_counter() - started) * 1e3)
        warm[str(rows)] = float(np.median(samples))
    return {"first_ms": first, "warm_ms": warm}


def measure(command: list[str]) -> dict:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["exit " + str(done.returncode)])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def ms(value: float) -> str:
    return f"{value:.3f}" if value < 1 else f"{value:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="*")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--out", type=Path, default=ROOT / "target" / "zoo")
    parser.add_argument("--profile", default="release")
    parser.add_argument("--ort", help=argparse.SUPPRESS)  # internal: time onnxruntime on one model
    args = parser.parse_args()
    if args.ort:
        print(json.dumps(ort_side(args.out, args.ort, args.runs)))
        return
    example = bench_zoo.build(args.out, args.profile)
    # The zoo's models that are always planned per shape (the torch CNNs are when a timing at
    # upload says so, which differs between processes on a noisy machine: name them to see).
    models = args.models or ["magika", "silero_vad", "silero_vad_sr", "silero_vad_sr8k", "ppocr_cls"]
    print("| model | plans | rows | maas, waiting for the plan: first | maas, plan built behind: first "
          "| maas: warm | onnxruntime: first | warm |")
    print("|---" * 8 + "|")
    for model in models:
        wait, behind = (measure([str(example), str(args.out), model, side, str(args.runs)])
                        for side in ("buckets-wait", "buckets"))
        ort = measure([sys.executable, __file__, "--ort", model, "--out", str(args.out),
                       "--runs", str(args.runs)])
        for rows in map(str, SIZES):
            cells = [model, behind.get("plans", behind.get("error", "")), rows]
            cells += [ms(side["first_ms"][rows]) if "first_ms" in side else "" for side in (wait, behind)]
            cells += [ms(behind["warm_ms"][rows]) if "warm_ms" in behind else ""]
            cells += [ms(ort[key][rows]) if key in ort else "" for key in ("first_ms", "warm_ms")]
            print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
