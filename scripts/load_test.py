"""Bounded load test of the release `predict` binary served locally (loopback only).

Usage: .venv/bin/python scripts/load_test.py [--quick] [--bin DIR] [--upload-bin PATH]
(defaults: target/release/predict, target/debug/model-upload; build them first)

Builds a temporary model store (a copy of scripts/example-store, plus a few MLPs of a
known size generated with onnx.helper and published through a local `model-upload`
server), then runs three scenarios, each against a fresh `predict serve` process with its
own empty MAAS_CACHE_DIR, each bounded in request count and in duration:

  warm      CONCURRENCY connections, REQUESTS requests to iris, loaded before timing
  cold      a fresh server, COLD_CONCURRENCY simultaneous first requests to an MLP
  eviction  MLPs whose file sizes sum to more than MAAS_MEMORY_CACHE_BYTES, requests
            round-robin across them from every connection (eviction under load)

The client is Python's asyncio speaking HTTP/1.1 keep-alive over raw sockets (standard
library only), so on a small machine it shares the CPUs with the server and the warm
throughput is the client's as much as the server's.

For each scenario it prints requests, errors (any non-200 or broken connection),
p50/p99 latency, throughput, the model loads and memory-cache evictions the server logged
(the warm scenario's one load happens before timing), the server's idle RSS (VmRSS after start-up, before any
request), peak RSS (VmHWM at the end) and RSS at the end (VmRSS, and RssFile: mapped files), and whether

    peak RSS <= idle RSS + MAAS_MEMORY_CACHE_BYTES + SLACK

where SLACK (32 MiB) covers the connections' buffers and the tensors of the requests in
flight; the engine budget (MAAS_ENGINE_MEMORY_BYTES) is a cap, not preallocated, so it is
not added. Exits non-zero on any error, on a scenario that hits its time bound, or on an
RSS check that fails; `--quick` runs the same scenarios with few requests (a smoke test).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
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
    eviction_budget: int
    warm_budget: int
    duration_s: float


FULL = Scale(warm_requests=20000, concurrency=64, cold_concurrency=32,
             eviction_requests=4000, mlp_models=4, mlp_width=512, mlp_layers=6,
             eviction_budget=14 * MIB, warm_budget=64 * MIB, duration_s=180.0)
QUICK = Scale(warm_requests=500, concurrency=16, cold_concurrency=8,
              eviction_requests=200, mlp_models=3, mlp_width=256, mlp_layers=4,
              eviction_budget=2 * MIB + MIB // 2, warm_budget=64 * MIB, duration_s=60.0)


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

    def __init__(self, predict_bin: Path, store: Path, work: Path, budget: int, tag: str):
        self.port = free_port()
        self.cache = Path(tempfile.mkdtemp(prefix=f"cache-{tag}-", dir=work))
        env = dict(os.environ, MAAS_CACHE_DIR=str(self.cache),
                   MAAS_MEMORY_CACHE_BYTES=str(budget), RUST_LOG="maas=info,warn")
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
    evictions: int

    @property
    def limit(self) -> int:
        return self.idle_rss + self.budget + SLACK

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
             concurrency: int, budget: int, duration_s: float) -> Row:
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
               server.count_log("model loaded"), server.count_log("left the memory cache"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few requests; a smoke test")
    parser.add_argument("--bin", type=Path, default=ROOT / "target" / "release",
                        help="directory holding the release `predict` binary")
    parser.add_argument("--upload-bin", type=Path, default=ROOT / "target" / "debug" / "model-upload",
                        help="the `model-upload` binary used to publish the test models")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    scale = QUICK if args.quick else FULL
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
        server = Server(predict_bin, store, work, scale.warm_budget, "warm")
        try:
            asyncio.run(run_load(server.port, [iris], 1, 1, 30, check_body))
            rows.append(scenario(server, "warm", f"iris, {scale.concurrency} connections",
                                 [iris], scale.warm_requests, scale.concurrency,
                                 scale.warm_budget, scale.duration_s))
        finally:
            server.close()

        # 2. cold: simultaneous first requests to a model nobody has loaded.
        server = Server(predict_bin, store, work, scale.warm_budget, "cold")
        try:
            target = ("/v2/models/mlp0/infer", body)
            rows.append(scenario(
                server, "cold", f"mlp0 ({sizes['mlp0'] / MIB:.1f} MiB), "
                f"{scale.cold_concurrency} simultaneous first requests",
                [target], scale.cold_concurrency, scale.cold_concurrency,
                scale.warm_budget, scale.duration_s))
        finally:
            server.close()

        # 3. eviction: round-robin over models whose sizes sum to more than the budget.
        total_size = sum(sizes.values())
        assert total_size > scale.eviction_budget, "models must not fit the budget"
        server = Server(predict_bin, store, work, scale.eviction_budget, "eviction")
        try:
            targets = [(f"/v2/models/{n}/infer", body) for n in mlps]
            rows.append(scenario(
                server, "eviction", f"{len(mlps)} MLPs, {total_size / MIB:.1f} MiB in all, "
                f"round-robin, {scale.concurrency} connections",
                targets, scale.eviction_requests, scale.concurrency, scale.eviction_budget,
                scale.duration_s))
        finally:
            server.close()
    finally:
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)

    print("| scenario | load | requests | errors | p50 (ms) | p99 (ms) | req/s "
          "| model loads | evictions | cache budget (MiB) | idle RSS (MiB) | peak RSS (MiB) | RSS at end (MiB), of it file-backed | limit (MiB) | within |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        res = r.result
        errors = sum(res.errors.values())
        rate = res.sent / res.elapsed if res.elapsed else 0.0  # type: ignore[attr-defined]
        print(f"| {r.scenario} | {r.detail} | {res.sent} | {errors} "
              f"| {pct(res.latencies, 50):.2f} | {pct(res.latencies, 99):.2f} | {rate:.0f} "
              f"| {r.loads} | {r.evictions} | {r.budget / MIB:.1f} | {r.idle_rss / MIB:.1f} | {r.peak_rss / MIB:.1f} | {r.end_rss / MIB:.1f}, {r.end_file_rss / MIB:.1f} "
              f"| {r.limit / MIB:.1f} | {'yes' if r.rss_ok else 'NO'} |")
    failed = False
    for r in rows:
        for what, n in r.result.errors.items():
            print(f"{r.scenario}: {n} x {what}", file=sys.stderr)
        if r.result.timed_out:
            print(f"{r.scenario}: stopped at its {scale.duration_s:.0f} s bound", file=sys.stderr)
        if not r.rss_ok:
            print(f"{r.scenario}: peak RSS above idle RSS + budget + {SLACK // MIB} MiB",
                  file=sys.stderr)
        failed |= not r.ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
