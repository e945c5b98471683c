"""Bounded load test of the release `predict` binary served locally (loopback only).

Usage: .venv/bin/python scripts/load_test.py [--quick] [--bin DIR] [--upload-bin PATH]
    [--env NAME=VALUE]... [--eviction-budget-mib MIB] [--eviction-requests N]
(defaults: target/release/predict, target/debug/model-upload; build them first)

Builds a temporary model store (a copy of scripts/example-store, plus a few MLPs of a
known size generated with onnx.helper and published through a local `model-upload`
server), then runs three scenarios, each against a fresh `predict serve` process with its
own empty MAAS_CACHE_DIR, each bounded in request count and in duration:

  warm      CONCURRENCY connections, REQUESTS requests to iris, loaded before timing
  cold      a fresh server, COLD_CONCURRENCY simultaneous first requests to an MLP
  eviction  MLPs that do not all fit MAAS_MEMORY_CACHE_BYTES, which is set to room for
            EVICTION_ROOM of them as the server weighs them (the `memory_bytes` it logged
            loading one in the cold scenario), requests round-robin across them from every
            connection (eviction under load)

The client is Python's asyncio speaking HTTP/1.1 keep-alive over raw sockets (standard
library only), so on a small machine it shares the CPUs with the server and the warm
throughput is the client's as much as the server's.

For each scenario it prints requests, errors (any non-200 or broken connection),
p50/p99 latency, throughput, the model loads, the evicted models taken back while still in
use, and the memory-cache evictions the server logged (the warm scenario's one load happens
before timing), the server's idle RSS (VmRSS after start-up, before any
request), peak RSS (VmHWM at the end) and RSS at the end (VmRSS, and RssFile: mapped files), and whether

    peak RSS <= idle RSS + MAAS_MEMORY_CACHE_BYTES
                + (models in use beyond the budget) x (loaded weight)
                + LOAD_FACTOR x (largest model file) + SLACK

The second term is the models evicted while requests still run on them: the server keeps
at most one copy of each (it takes an evicted copy still in use back instead of loading
another), so it is bounded by the scenario's models that do not fit the budget, not by the
number of evictions. The third is one load in progress (the server loads one model at a
time): decoded file, graph and optimised copy, measured at ~3.2x the file, allowed 4x.
SLACK (32 MiB) covers the connections' buffers, the tensors of the requests in flight and
the threads running them. The engine budget (MAAS_ENGINE_MEMORY_BYTES) is a cap, not
preallocated, so it is not added. Exits non-zero on any error, on a scenario that hits its time bound, or on an
RSS check that fails; `--quick` runs the same scenarios with few requests (a smoke test).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from bench_cold_start import free_port, stop

ROOT = Path(__file__).resolve().parent.parent
IRIS_BODY = json.dumps({
    "inputs": [{
        "name": "float_input", "shape": [2, 4], "datatype": "FP32",
        "data": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]],
    }]
}).encode()
MIB = 1 << 20
SLACK = 32 * MIB
# What one model load in progress may hold beyond the loaded model, in files.
LOAD_FACTOR = 4
# The eviction scenario's cache budget, in loaded models (the cache weighs what each holds).
EVICTION_ROOM = 2.5
START_TIMEOUT_S = 30.0


@dataclass
class Scale:
    """Request counts, bounds and model sizes of one run."""

    warm_requests: int
    concurrency: int
    cold_concurrency: int
    eviction_requests: int
    mlp_models: int
    mlp_width: int
    mlp_layers: int
    warm_budget: int
    duration_s: float


FULL = Scale(warm_requests=20000, concurrency=64, cold_concurrency=32,
             eviction_requests=4000, mlp_models=4, mlp_width=512, mlp_layers=6,
             warm_budget=64 * MIB, duration_s=180.0)
QUICK = Scale(warm_requests=500, concurrency=16, cold_concurrency=8,
              eviction_requests=200, mlp_models=3, mlp_width=256, mlp_layers=4,
              warm_budget=64 * MIB, duration_s=60.0)


# --- models ---------------------------------------------------------------------------

def make_mlp(seed: int, width: int, layers: int) -> bytes:
    """x [N, width] -> `layers` x (Gemm width x width, Relu) -> y [N, width]; random weights
    from `seed`, so each model is different and weighs about layers * width^2 * 4 bytes."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    prev = "x"
    for i in range(layers):
        w = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
        b = np.zeros(width, dtype=np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        out = "y" if i == layers - 1 else f"h{i}"
        gemm_out = out if i == layers - 1 else f"g{i}"
        nodes.append(helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], [gemm_out]))
        if i < layers - 1:
            nodes.append(helper.make_node("Relu", [gemm_out], [out]))
        prev = out
    graph = helper.make_graph(
        nodes, f"mlp{seed}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", width])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="maas-load-test")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def mlp_body(width: int) -> bytes:
    row = [round(((i * 37) % 100) / 100.0, 2) for i in range(width)]
    return json.dumps({"inputs": [{"name": "x", "shape": [1, width], "datatype": "FP32",
                                   "data": row}]}).encode()


# --- processes ------------------------------------------------------------------------

def wait_ready(port: int, proc: subprocess.Popen, path: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} during start-up")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server on port {port} not ready after {START_TIMEOUT_S} s")


def proc_status(pid: int, key: str) -> int:
    """A `kB` field of /proc/PID/status, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def publish(upload_bin: Path, store: Path, models: dict[str, bytes], log: Path) -> None:
    """Publishes each model as version 1 through a local model-upload server."""
    port = free_port()
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [str(upload_bin), "serve", "--addr", f"127.0.0.1:{port}", "--store", str(store)],
            stdout=out, stderr=out)
    try:
        wait_ready(port, proc, "/models")
        for name, data in models.items():
            req = urllib.request.Request(f"http://127.0.0.1:{port}/models/{name}/versions/1",
                                         data=data, method="PUT")
            with urllib.request.urlopen(req, timeout=120) as r:
                if r.status != 201:
                    raise RuntimeError(f"publishing {name}: {r.status}")
    finally:
        stop(proc)


class Server:
    """One `predict serve` process with its own empty disk cache."""

    def __init__(self, predict_bin: Path, store: Path, work: Path, budget: int, tag: str,
                 extra_env: dict[str, str]):
        self.port = free_port()
        self.cache = Path(tempfile.mkdtemp(prefix=f"cache-{tag}-", dir=work))
        env = dict(os.environ, MAAS_CACHE_DIR=str(self.cache),
                   MAAS_MEMORY_CACHE_BYTES=str(budget), RUST_LOG="maas=info,warn", **extra_env)
        self.log_path = work / f"predict-{tag}.log"
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [str(predict_bin), "serve", "--addr", f"127.0.0.1:{self.port}",
             "--store", str(store)], env=env, stdout=self.log, stderr=self.log)
        wait_ready(self.port, self.proc, "/v2/health/ready")
        time.sleep(0.2)
        self.idle_rss = proc_status(self.proc.pid, "VmRSS")

    def peak_rss(self) -> int:
        return proc_status(self.proc.pid, "VmHWM")

    def count_log(self, message: str) -> int:
        """How many times the server has logged `message` (its logs are at `info`)."""
        return self.log_path.read_text(errors="replace").count(message)

    def loaded_weights(self) -> list[int]:
        """The `memory_bytes` of each `model loaded` line: what the memory cache weighed
        each loaded model at."""
        text = re.sub(r"\x1b\[[0-9;]*m", "", self.log_path.read_text(errors="replace"))
        return [int(m) for m in re.findall(r"model loaded.*?memory_bytes=(\d+)", text)]

    def close(self) -> None:
        stop(self.proc)
        self.log.close()


# --- client ---------------------------------------------------------------------------

@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    sent: int = 0
    timed_out: bool = False

    def error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """Status, body and whether the server keeps the connection open."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            parts.append(await reader.readexactly(size + 2))
            if size == 0:
                break
        body = b"".join(p[:-2] for p in parts)
    else:
        body = await reader.read()
    keep = headers.get("connection", "").lower() != "close"
    return status, body, keep


async def run_load(port: int, targets: list[tuple[str, bytes]], total: int,
                   concurrency: int, duration_s: float, check) -> Result:
    """`total` requests from `concurrency` keep-alive connections; request i goes to
    targets[i % len(targets)]. Stops at `total` or after `duration_s`, whichever is first."""
    result = Result()
    deadline = time.monotonic() + duration_s
    counter = iter(range(total))
    start_gate = asyncio.Event()

    async def worker() -> None:
        reader = writer = None
        await start_gate.wait()
        for i in counter:
            if time.monotonic() > deadline:
                result.timed_out = True
                return
            path, body = targets[i % len(targets)]
            request = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                       f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                       "\r\n").encode() + body
            t0 = time.perf_counter()
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(request)
                status, payload, keep = await asyncio.wait_for(
                    read_response(reader), timeout=max(0.1, deadline - time.monotonic()))
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                    asyncio.TimeoutError, ValueError) as e:
                result.error(type(e).__name__)
                if writer is not None:
                    writer.close()
                reader = writer = None
                continue
            result.latencies.append(time.perf_counter() - t0)
            result.sent += 1
            if status != 200:
                result.error(f"HTTP {status}: {payload[:120]!r}")
            elif not check(path, payload):
                result.error(f"unexpected body from {path}: {payload[:120]!r}")
            if not keep:
                writer.close()
                reader = writer = None
        if writer is not None:
            writer.close()

    tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
    t0 = time.perf_counter()
    start_gate.set()
    await asyncio.gather(*tasks)
    result.elapsed = time.perf_counter() - t0  # type: ignore[attr-defined]
    return result


def check_body(path: str, payload: bytes) -> bool:
    try:
        outputs = json.loads(payload)["outputs"]
    except (ValueError, KeyError, TypeError):
        return False
    if "/iris/" in path:
        return outputs[0]["data"] == [0, 2]
    return bool(outputs) and len(outputs[0]["data"]) > 0


# --- scenarios ------------------------------------------------------------------------

@dataclass
class Row:
    scenario: str
    detail: str
    result: Result
    budget: int
    idle_rss: int
    peak_rss: int
    end_rss: int
    end_file_rss: int
    loads: int
    taken_back: int
    evictions: int
    # Bytes allowed beyond the budget for models in use and a load in progress (see the
    # module's doc).
    allowance: int

    @property
    def limit(self) -> int:
        return self.idle_rss + self.budget + self.allowance + SLACK

    @property
    def rss_ok(self) -> bool:
        return self.peak_rss <= self.limit

    @property
    def ok(self) -> bool:
        return not self.result.errors and not self.result.timed_out and self.rss_ok


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))] * 1000


def scenario(server: Server, name: str, detail: str, targets, total: int,
             concurrency: int, budget: int, allowance: int, duration_s: float) -> Row:
    result = asyncio.run(run_load(server.port, targets, total, concurrency, duration_s,
                                  check_body))
    if server.proc.poll() is not None:
        result.error(f"server exited with {server.proc.returncode}")
        peak = end = end_file = 0
    else:
        peak, end = server.peak_rss(), proc_status(server.proc.pid, "VmRSS")
        end_file = proc_status(server.proc.pid, "RssFile")
    server.log.flush()
    return Row(name, detail, result, budget, server.idle_rss, peak, end, end_file,
               server.count_log("model loaded"), server.count_log("taken back into"),
               server.count_log("left the memory cache"), allowance)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few requests; a smoke test")
    parser.add_argument("--bin", type=Path, default=ROOT / "target" / "release",
                        help="directory holding the release `predict` binary")
    parser.add_argument("--upload-bin", type=Path, default=ROOT / "target" / "debug" / "model-upload",
                        help="the `model-upload` binary used to publish the test models")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="an environment variable for the predict servers (repeatable), "
                        "e.g. MAAS_MALLOC_ARENAS=1 to compare malloc settings")
    parser.add_argument("--eviction-budget-mib", type=float,
                        help="the eviction scenario's cache budget instead of room for "
                        f"{EVICTION_ROOM} loaded models")
    parser.add_argument("--eviction-requests", type=int,
                        help="requests of the eviction scenario (to see whether RSS grows "
                        "with the number of evictions)")
    args = parser.parse_args()
    extra_env = dict(kv.split("=", 1) for kv in args.env)
    scale = QUICK if args.quick else FULL
    if args.eviction_requests:
        scale = dataclasses.replace(scale, eviction_requests=args.eviction_requests)
    predict_bin = args.bin / "predict"
    for b in (predict_bin, args.upload_bin):
        if not b.is_file():
            print(f"missing binary {b}", file=sys.stderr)
            return 2

    work = Path(tempfile.mkdtemp(prefix="maas-load-"))
    rows: list[Row] = []
    try:
        store = work / "store"
        shutil.copytree(ROOT / "scripts" / "example-store", store)
        mlps = {f"mlp{i}": make_mlp(1000 + i, scale.mlp_width, scale.mlp_layers)
                for i in range(scale.mlp_models)}
        publish(args.upload_bin, store, mlps, work / "model-upload.log")
        sizes = {n: len(b) for n, b in mlps.items()}
        body = mlp_body(scale.mlp_width)
        iris = ("/v2/models/iris/infer", IRIS_BODY)

        # 1. warm: iris loaded by one request before timing starts.
        server = Server(predict_bin, store, work, scale.warm_budget, "warm", extra_env)
        try:
            asyncio.run(run_load(server.port, [iris], 1, 1, 30, check_body))
            iris_file = (store / "models" / "iris" / "1" / "model.onnx").stat().st_size
            rows.append(scenario(server, "warm", f"iris, {scale.concurrency} connections",
                                 [iris], scale.warm_requests, scale.concurrency,
                                 scale.warm_budget, LOAD_FACTOR * iris_file, scale.duration_s))
        finally:
            server.close()

        # 2. cold: simultaneous first requests to a model nobody has loaded.
        server = Server(predict_bin, store, work, scale.warm_budget, "cold", extra_env)
        try:
            target = ("/v2/models/mlp0/infer", body)
            rows.append(scenario(
                server, "cold", f"mlp0 ({sizes['mlp0'] / MIB:.1f} MiB), "
                f"{scale.cold_concurrency} simultaneous first requests",
                [target], scale.cold_concurrency, scale.cold_concurrency,
                scale.warm_budget, LOAD_FACTOR * sizes["mlp0"], scale.duration_s))
            # What the memory cache weighs one loaded MLP at (all have the same shapes).
            weight = max(server.loaded_weights(), default=0)
        finally:
            server.close()

        # 3. eviction: round-robin over models that do not all fit the budget: room for
        # EVICTION_ROOM of them, as the cache weighs them.
        if args.eviction_budget_mib is not None:
            eviction_budget = int(args.eviction_budget_mib * MIB)
        else:
            eviction_budget = int(weight * EVICTION_ROOM)
        total_size = sum(sizes.values())
        assert weight * len(mlps) > eviction_budget >= weight, "models must not all fit"
        beyond_budget = len(mlps) - eviction_budget // weight
        allowance = beyond_budget * weight + LOAD_FACTOR * max(sizes.values())
        server = Server(predict_bin, store, work, eviction_budget, "eviction", extra_env)
        try:
            targets = [(f"/v2/models/{n}/infer", body) for n in mlps]
            rows.append(scenario(
                server, "eviction", f"{len(mlps)} MLPs, {total_size / MIB:.1f} MiB of files, "
                f"{weight / MIB:.1f} MiB loaded each, round-robin, "
                f"{scale.concurrency} connections",
                targets, scale.eviction_requests, scale.concurrency, eviction_budget,
                allowance, scale.duration_s))
        finally:
            server.close()
    finally:
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)

    print("| scenario | load | requests | errors | p50 (ms) | p99 (ms) | req/s "
          "| model loads (taken back) | evictions | cache budget (MiB) | idle RSS (MiB) | peak RSS (MiB) | RSS at end (MiB), of it file-backed | limit (MiB) | within |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        res = r.result
        errors = sum(res.errors.values())
        rate = res.sent / res.elapsed if res.elapsed else 0.0  # type: ignore[attr-defined]
        print(f"| {r.scenario} | {r.detail} | {res.sent} | {errors} "
              f"| {pct(res.latencies, 50):.2f} | {pct(res.latencies, 99):.2f} | {rate:.0f} "
              f"| {r.loads} ({r.taken_back}) | {r.evictions} | {r.budget / MIB:.1f} | {r.idle_rss / MIB:.1f} | {r.peak_rss / MIB:.1f} | {r.end_rss / MIB:.1f}, {r.end_file_rss / MIB:.1f} "
              f"| {r.limit / MIB:.1f} | {'yes' if r.rss_ok else 'NO'} |")
    failed = False
    for r in rows:
        for what, n in r.result.errors.items():
            print(f"{r.scenario}: {n} x {what}", file=sys.stderr)
        if r.result.timed_out:
            print(f"{r.scenario}: stopped at its {scale.duration_s:.0f} s bound", file=sys.stderr)
        if not r.rss_ok:
            print(f"{r.scenario}: peak RSS above idle RSS + budget + models in use beyond it "
                  f"+ a load + {SLACK // MIB} MiB", file=sys.stderr)
        failed |= not r.ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
