#!/usr/bin/env python3
"""Cold start and warm latency of maas's `predict` against a Python + onnxruntime peer.

Both servers get their model from the same local moto S3 server on their first request.
For each trial, and each server in turn (alternating which goes first), the script starts
the server with a fresh cache directory and measures

    init          process start -> its port accepts connections
    first request the first inference request (S3 fetch + model load + inference)
    cold start    process start -> first response received

then sends --warm sequential requests over one keep-alive connection, reads the peak RSS
(VmHWM) of the server process, and stops it. Every response must be HTTP 200 with the
expected outputs (for the example model: labels [0, 2] for the README request), otherwise
the run aborts. Results are printed as Markdown on stdout; progress goes to stderr.

    .venv/bin/python scripts/bench_cold_start.py [--trials 10] [--warm 200] [--model example]

Needs target/release/predict (cargo build --release -p predict) and the Python venv of
scripts/requirements.txt. Only 127.0.0.1 traffic.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import math
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import boto3
import numpy as np
import onnx
import onnxruntime
from botocore.config import Config
from onnx import TensorProto

ROOT = Path(__file__).resolve().parent.parent
PREDICT = ROOT / "target" / "release" / "predict"
PEER = ROOT / "scripts" / "peer_onnxruntime_server.py"
EXAMPLE_DIR = ROOT / "scripts" / "example-store" / "models" / "iris" / "1"
TEST_MODELS = ROOT / "target" / "test-models"
BUCKET, PREFIX = "bench", "registry"
TOLERANCE = 1e-4
START_TIMEOUT_S = 30.0
REQUEST_TIMEOUT_S = 30.0

# The README's request and maas's documented answer to it.
EXAMPLE_REQUEST = {"inputs": [{"name": "float_input", "shape": [2, 4], "datatype": "FP32",
                               "data": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}]}
EXAMPLE_OUTPUTS = [
    {"name": "label", "datatype": "INT64", "shape": [2], "data": [0, 2]},
    {"name": "probabilities", "datatype": "FP32", "shape": [2, 3],
     "data": [1.0, 0.0, 0.0, 0.0, 0.0038461538, 0.99615383]},
]


class Abort(Exception):
    """A check failed or a server misbehaved: stop everything and report."""


# ---------------------------------------------------------------- the model to serve


@dataclass
class Benchmark:
    name: str              # model name in the registry (and in the URL)
    model: bytes           # model.onnx
    manifest: bytes        # manifest.json
    request: dict          # the inference request body
    expected: list[dict]   # the expected outputs, OIP tensor form, data flat

    @property
    def path(self) -> str:
        return f"/v2/models/{self.name}/infer"


ELEM_TYPE_TO_DATATYPE = {
    TensorProto.FLOAT: "FP32", TensorProto.DOUBLE: "FP64", TensorProto.FLOAT16: "FP16",
    TensorProto.INT8: "INT8", TensorProto.INT16: "INT16", TensorProto.INT32: "INT32",
    TensorProto.INT64: "INT64", TensorProto.UINT8: "UINT8", TensorProto.UINT16: "UINT16",
    TensorProto.UINT32: "UINT32", TensorProto.UINT64: "UINT64", TensorProto.BOOL: "BOOL",
    TensorProto.STRING: "BYTES",
}


def manifest_for(name: str, data: bytes, created: str = "2026-11-29T00:00:00Z") -> bytes:
    """A manifest in the format of scripts/make_models.py (and the committed example)."""
    model = onnx.load_from_string(data)
    initializers = {init.name for init in model.graph.initializer}

    def value_info(value: onnx.ValueInfoProto) -> dict:
        tensor_type = value.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor_type.shape.dim]
        return {"name": value.name, "datatype": ELEM_TYPE_TO_DATATYPE[tensor_type.elem_type], "shape": shape}

    signature = {
        "inputs": [value_info(v) for v in model.graph.input if v.name not in initializers],
        "outputs": [value_info(v) for v in model.graph.output],
    }
    head = {"name": name, "version": 1, "sha256": hashlib.sha256(data).hexdigest(),
            "size": len(data), "created": created}
    tensors = [f'    "{k}": {json.dumps(v)}' for k, v in signature.items()]
    text = (json.dumps(head, indent=2)[: -len("\n}")]
            + ',\n  "signature": {\n' + ",\n".join(tensors) + "\n  }\n}\n")
    return text.encode()


def load_benchmark(which: str) -> Benchmark:
    if which == "example":
        return Benchmark("iris", (EXAMPLE_DIR / "model.onnx").read_bytes(),
                         (EXAMPLE_DIR / "manifest.json").read_bytes(), EXAMPLE_REQUEST, EXAMPLE_OUTPUTS)
    model_path, cases_path = TEST_MODELS / f"{which}.onnx", TEST_MODELS / "cases.json"
    if not model_path.exists() or not cases_path.exists():
        raise Abort(f"{model_path} or {cases_path} is missing: run "
                    "`.venv/bin/python scripts/make_models.py test --out target/test-models`")
    case = next(c for c in json.loads(cases_path.read_text()) if c["model"] == which and c["batch"] == 8)
    data = model_path.read_bytes()
    return Benchmark(which, data, manifest_for(which, data), {"inputs": case["inputs"]}, case["outputs"])


def check_response(server: str, status: int, body: bytes, bench: Benchmark) -> None:
    """HTTP 200, the OIP response shape, and outputs equal to the expected ones (integers
    exactly, floats within TOLERANCE)."""
    if status != 200:
        raise Abort(f"{server}: HTTP {status}: {body[:500]!r}")
    response = json.loads(body)
    if response.get("model_name") != bench.name or response.get("model_version") != "1":
        raise Abort(f"{server}: unexpected model_name/model_version in {body[:300]!r}")
    outputs = {o["name"]: o for o in response.get("outputs", [])}
    for want in bench.expected:
        got = outputs.get(want["name"])
        if got is None or set(got) != {"name", "datatype", "shape", "data"}:
            raise Abort(f"{server}: output {want['name']} missing or malformed: {body[:300]!r}")
        if got["datatype"] != want["datatype"] or got["shape"] != want["shape"]:
            raise Abort(f"{server}: output {want['name']} is {got['datatype']} {got['shape']}, "
                        f"expected {want['datatype']} {want['shape']}")
        if want["datatype"].startswith("FP"):
            ok = np.allclose(got["data"], want["data"], rtol=0, atol=TOLERANCE)
        else:
            ok = got["data"] == want["data"]
        if not ok:
            raise Abort(f"{server}: output {want['name']} = {got['data']}, expected {want['data']}")


# ---------------------------------------------------------------- processes and ports


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, what: str) -> float:
    """Polls until 127.0.0.1:port accepts a connection; returns perf_counter() then."""
    deadline = time.perf_counter() + START_TIMEOUT_S
    while time.perf_counter() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                return time.perf_counter()
        except OSError:
            if proc.poll() is not None:
                raise Abort(f"{what} exited with status {proc.returncode} before listening")
            time.sleep(0.001)
    raise Abort(f"{what} did not listen on port {port} within {START_TIMEOUT_S} s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise Abort(f"no VmHWM for pid {pid}")


def start_moto(log_dir: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    log = open(log_dir / "moto.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, proc, "moto server")
    except Abort:
        stop(proc)
        raise
    return proc, f"http://127.0.0.1:{port}"


def publish(endpoint: str, bench: Benchmark) -> None:
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                      aws_access_key_id="test", aws_secret_access_key="test",
                      config=Config(s3={"addressing_style": "path"}))
    s3.create_bucket(Bucket=BUCKET)
    base = f"{PREFIX}/models/{bench.name}/1"
    s3.put_object(Bucket=BUCKET, Key=f"{base}/model.onnx", Body=bench.model)
    s3.put_object(Bucket=BUCKET, Key=f"{base}/manifest.json", Body=bench.manifest)


# ---------------------------------------------------------------- one trial


@dataclass
class Server:
    name: str
    argv: Callable[[int, Path], list[str]]  # (port, cache_dir) -> argv
    results: list = field(default_factory=list)      # (init_s, first_s, cold_s, rss_mib)
    warm: list = field(default_factory=list)         # every warm request latency, seconds
    logged: list = field(default_factory=list)       # per trial, logged_timings() of its log


LOGGED_EVENT = re.compile(r"\b(model downloaded|model loaded)\b(.*)")
LOGGED_MS = re.compile(r"\b(\w+_ms)=([\d.]+)")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def logged_timings(log: str) -> dict[str, float]:
    """The `*_ms` fields of a server's `model downloaded` / `model loaded` log lines, e.g.
    {"model loaded: elapsed_ms": 4.0}. Both servers log these on their first request."""
    timings = {}
    for line in ANSI.sub("", log).splitlines():
        if m := LOGGED_EVENT.search(line):
            for key, value in LOGGED_MS.findall(m.group(2)):
                timings.setdefault(f"{m.group(1)}: {key}", float(value))
    return timings


def run_trial(server: Server, bench: Benchmark, env: dict, work: Path, trial: int, warm: int,
              record: bool) -> None:
    port = free_port()
    cache_dir = Path(tempfile.mkdtemp(prefix=f"cache-{trial}-", dir=work))
    log_path = work / f"{server.name.split()[0]}-{trial}.log"
    body = json.dumps(bench.request).encode()
    headers = {"Content-Type": "application/json"}
    with open(log_path, "wb") as log:
        started = time.perf_counter()
        proc = subprocess.Popen(server.argv(port, cache_dir), env={**env, "MAAS_CACHE_DIR": str(cache_dir)},
                                stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            listening = wait_for_port(port, proc, server.name)
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT_S)
            sent = time.perf_counter()
            conn.request("POST", bench.path, body, headers)
            response = conn.getresponse()
            data = response.read()
            answered = time.perf_counter()
            check_response(server.name, response.status, data, bench)
            latencies = []
            for _ in range(warm):
                t0 = time.perf_counter()
                conn.request("POST", bench.path, body, headers)
                response = conn.getresponse()
                data = response.read()
                latencies.append(time.perf_counter() - t0)
                check_response(server.name, response.status, data, bench)
            conn.close()
            rss = peak_rss_mib(proc.pid)
        finally:
            stop(proc)
    if not record:
        return
    server.results.append((listening - started, answered - sent, answered - started, rss))
    server.warm.extend(latencies)
    server.logged.append(logged_timings(log_path.read_text(errors="replace")))


# ---------------------------------------------------------------- report


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def run(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def machine() -> str:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    cpu = next((l.split(":", 1)[1].strip() for l in cpuinfo.splitlines() if l.startswith("model name")), "?")
    mem_kib = next(int(l.split()[1]) for l in Path("/proc/meminfo").read_text().splitlines()
                   if l.startswith("MemTotal:"))
    return (f"{os.cpu_count()} CPUs ({len(os.sched_getaffinity(0))} usable), {cpu}, "
            f"{mem_kib / 1024 / 1024:.1f} GiB RAM, Linux {platform.release()}")


def versions(binary: Path) -> str:
    commit = run(["git", "rev-parse", "--short=12", "HEAD"])
    dirty = run(["git", "status", "--porcelain", "--untracked-files=no"])
    built = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(binary.stat().st_mtime))
    return (f"maas commit {commit}{' (working tree has uncommitted changes)' if dirty else ''}, "
            f"`{run([str(binary), '--version'])}` release binary built {built} "
            f"({binary.stat().st_size / 2**20:.1f} MiB); onnxruntime {onnxruntime.__version__}, "
            f"numpy {np.__version__}, boto3 {boto3.__version__}; Python {platform.python_version()}")


def report(servers: list[Server], args: argparse.Namespace, bench: Benchmark, binary: Path) -> str:
    python = os.path.relpath(sys.executable) if not os.path.relpath(sys.executable).startswith("..") \
        else sys.executable
    command = shlex.join([python, *sys.argv])
    ms = lambda s: f"{s * 1000:.1f}"  # noqa: E731
    lines = [
        f"Command: `{command}`",
        "",
        f"Machine: {machine()}",
        "",
        f"Versions: {versions(binary)}",
        "",
        f"Model: {bench.name} ({len(bench.model)} bytes), request `POST {bench.path}` "
        f"({len(json.dumps(bench.request))} bytes); {args.trials} trials per server (after one "
        f"discarded warm-up trial each), {args.warm} warm requests per trial.",
        "",
        "| server | init median / p90 (ms) | first request median / p90 (ms) "
        "| cold start median / p90 (ms) | warm p50 / p90 / p99 (ms) | peak RSS median / max (MiB) |",
        "|---|---|---|---|---|---|",
    ]
    for s in servers:
        cols = list(zip(*s.results))
        cells = [f"{ms(statistics.median(c))} / {ms(percentile(c, 90))}" for c in cols[:3]]
        warm = " / ".join(f"{percentile(s.warm, p) * 1000:.2f}" for p in (50, 90, 99)) if s.warm else "-"
        rss = f"{statistics.median(cols[3]):.1f} / {max(cols[3]):.1f}"
        lines.append(f"| {s.name} | {' | '.join(cells)} | {warm} | {rss} |")
    lines += [
        "",
        "First-request breakdown, from the servers' own log lines (median across trials, ms):",
        "",
        "| server | logged timings |",
        "|---|---|",
    ]
    for s in servers:
        keys = sorted({k for t in s.logged for k in t}, key=lambda k: (k.startswith("model loaded"), k.endswith("elapsed_ms"), k))
        cells = [f"{k} {statistics.median(t[k] for t in s.logged if k in t):g}" for k in keys]
        lines.append(f"| {s.name} | {'; '.join(cells) or 'none logged'} |")
    lines += ["", "Times are nearest-rank percentiles; warm percentiles pool all trials."]
    return "\n".join(lines)


# ---------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=10, help="measured cold starts per server (default 10)")
    parser.add_argument("--warm", type=int, default=200, help="warm requests per trial (default 200)")
    parser.add_argument("--model", choices=["example", "mlp", "cnn", "forest"], default="example",
                        help="example: the committed iris model; others: target/test-models/")
    args = parser.parse_args()
    if not 1 <= args.trials <= 100 or not 0 <= args.warm <= 10_000:
        parser.error("--trials must be 1..100 and --warm 0..10000")
    if not PREDICT.exists():
        parser.error(f"{PREDICT} is missing: cargo build --release -p predict")

    servers = [
        Server("maas predict (tract)", lambda port, cache: [
            str(predict), "serve", "--addr", f"127.0.0.1:{port}", "--store", f"s3://{BUCKET}/{PREFIX}"]),
        Server("Python + onnxruntime", lambda port, cache: [
            sys.executable, str(PEER), "--addr", f"127.0.0.1:{port}", "--store", f"s3://{BUCKET}/{PREFIX}",
            "--model", bench.name, "--version", "1", "--cache-dir", str(cache)]),
    ]
    with tempfile.TemporaryDirectory(prefix="maas-bench-") as tmp:
        work = Path(tmp)
        # A private copy, so a concurrent cargo build cannot swap the binary mid-run.
        predict = work / "predict"
        shutil.copy2(PREDICT, predict)
        moto = None
        try:
            bench = load_benchmark(args.model)
            moto, endpoint = start_moto(work)
            publish(endpoint, bench)
            # Only our variables for AWS: no profile, no real credentials, no real endpoint.
            env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
            env.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test",
                       AWS_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true",
                       MAAS_S3_FORCE_PATH_STYLE="true", RUST_LOG="info", NO_COLOR="1")
            for trial in range(args.trials + 1):
                order = servers if trial % 2 == 0 else servers[::-1]
                for server in order:
                    run_trial(server, bench, env, work, trial, args.warm, record=trial > 0)
                label = "warm-up" if trial == 0 else f"trial {trial}/{args.trials}"
                summary = ", ".join(f"{s.name}: cold {s.results[-1][2] * 1000:.0f} ms"
                                    for s in servers if s.results and trial > 0)
                print(f"{label} done{': ' + summary if summary else ''}", file=sys.stderr)
        except Abort as err:
            print(f"aborted: {err}", file=sys.stderr)
            return 1
        finally:
            if moto is not None:
                stop(moto)
        print(report(servers, args, bench, predict))
    return 0


if __name__ == "__main__":
    sys.exit(main())
