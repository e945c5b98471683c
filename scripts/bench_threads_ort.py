#!/usr/bin/env python3
"""The peer of the threads benchmark: onnxruntime's median inference time with one intra-op
thread and with THREADS, per batch size, the two sessions taking turns of ten runs as
`shared/examples/threads.rs` does with the maas engine, on inputs of the same pattern.
Prints one Markdown row per batch size, in the threads benchmark's columns.

    .venv/bin/python scripts/bench_threads_ort.py MODEL.onnx THREADS RUNS BATCH...

MAAS_BENCH_ROW_SHAPE (e.g. 3,48,192) gives the dynamic dimensions of one row of the first
input, as for the threads example; MAAS_BENCH_BACK_TO_BACK=1 makes four turns of a quarter of
the runs each, without pauses, as it does there.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

TURN = 10
PAUSE_S = 0.005
TYPES = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(int32)": np.int32}


def session(model: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])


def feed(sess: ort.InferenceSession, batch: int, row: list[int] | None) -> dict[str, np.ndarray]:
    """Inputs of the declared shapes, the first dimension at `batch`, the other dynamic ones
    from `row` or else at `batch`, filled with (i % 7) / 7 as the threads example fills them."""
    inputs = {}
    for spec in sess.get_inputs():
        shape = []
        for axis, dim in enumerate(spec.shape):
            if isinstance(dim, int) and dim >= 0:
                shape.append(dim)
            elif row is not None and 0 < axis <= len(row):
                shape.append(row[axis - 1])
            else:
                shape.append(batch)
        count = int(np.prod(shape))
        values = (np.arange(count) % 7) / 7.0
        inputs[spec.name] = values.astype(TYPES[spec.type]).reshape(shape)
    return inputs


def medians(sessions: list[ort.InferenceSession], feeds: list[dict], runs: int) -> list[float]:
    """Median milliseconds of `runs` runs of each session on its feed, in turns of TURN runs
    with a pause after each (back to back: four turns, no pause)."""
    back_to_back = os.environ.get("MAAS_BENCH_BACK_TO_BACK") == "1"
    turn, pause = (max(1, -(-runs // 4)), 0.0) if back_to_back else (TURN, PAUSE_S)
    samples: list[list[float]] = [[] for _ in sessions]
    for sess, inputs in zip(sessions, feeds):
        sess.run(None, inputs)
    while len(samples[0]) < runs:
        for sess, inputs, taken in zip(sessions, feeds, samples):
            for _ in range(turn):
                started = time.perf_counter()
                sess.run(None, inputs)
                taken.append((time.perf_counter() - started) * 1e3)
            time.sleep(pause)
    return [float(np.median(taken)) for taken in samples]


def main() -> None:
    if len(sys.argv) < 5:
        sys.exit(__doc__)
    model, threads, runs = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    batches = [int(b) for b in sys.argv[4:]]
    shape = os.environ.get("MAAS_BENCH_ROW_SHAPE")
    row = [int(d) for d in shape.split(",")] if shape else None
    sessions = [session(model, 1), session(model, threads)]
    for batch in batches:
        feeds = [feed(sess, batch, row) for sess in sessions]
        one, many = medians(sessions, feeds, runs)
        print(f"| {model.stem} (onnxruntime) | {batch} | {one:.3f} | {many:.3f} | {one / many:.2f}x |")


if __name__ == "__main__":
    main()
