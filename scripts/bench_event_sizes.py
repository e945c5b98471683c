#!/usr/bin/env python3
"""Warm invocation time of maas's `predict` under a Lambda Runtime API, by event size.

The same request (the README's 2-row iris request to `POST /v2/models/iris/infer`, as the API
Gateway HTTP API event of tests/events/predict-infer.json) is sent at every size: the event is padded to the size with an extra
top-level field, `padding`, which lambda_http ignores, so the model and the compute are the
same and only the bytes that cross the Runtime API grow. For each Runtime API server the
script starts the server and one `predict` (model preloaded from scripts/example-store), then
for each size sends 2 discarded warm-up invocations and --runs measured ones, one after the
other, each on a new connection as the tests make them, and reports the median, min and max in ms. Every answer
must be status 200 with labels [0, 2]; otherwise the run stops.

Servers (--servers, comma-separated; all by default):

    cargo-lambda     `cargo lambda watch --only-lambda-apis`, as the tests run it
    pieces+nagle     scripts/runtime_api.py --stream-event --nagle: cargo-lambda's writes
    pieces+nodelay   scripts/runtime_api.py --stream-event: the same writes, TCP_NODELAY on
    whole+nodelay    scripts/runtime_api.py: the event in one write, TCP_NODELAY on, as
                     AWS's Runtime API serves it

--peer adds a column: the Python + onnxruntime peer of scripts/bench.sh (scripts/peer_onnxruntime_server.py
--lambda, THE COMPARISON) under the whole+nodelay server, the example model downloaded from a
moto server at its init, answering the same events.

The invoker writes each invoke request (head and body) with one `sendall` on a new TCP_NODELAY
connection; --split-invoke writes the head and the body with two, as Python's http.client does.
(A keep-alive invoker hides the stall after the first large event: the emulator's read buffer
for that connection has grown, so it reads and forwards the next event in one piece.)
Results are Markdown on stdout; progress goes to stderr.

    cargo build --profile ci -p predict
    .venv/bin/python scripts/bench_event_sizes.py [--runs 9] [--binary target/ci/predict]
    .venv/bin/python scripts/bench_event_sizes.py --quick   # smoke run: 2 sizes, 1 run each

Only 127.0.0.1 traffic; needs the venv of scripts/requirements.txt (cargo-lambda).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_cold_start import (BUCKET, PREFIX, Abort, free_port, load_benchmark, machine, publish,
                               start_moto, stop, wait_for_port)

ROOT = Path(__file__).resolve().parent.parent
EVENT = ROOT / "tests" / "events" / "predict-infer.json"
STORE = ROOT / "scripts" / "example-store"
RUNTIME_API = ROOT / "scripts" / "runtime_api.py"
PEER = ROOT / "scripts" / "peer_onnxruntime_server.py"
CARGO_LAMBDA = ROOT / ".venv" / "bin" / "cargo-lambda"
KIB = 1024
SIZES = [512, 2 * KIB, 8 * KIB, 16 * KIB, 24 * KIB, 30 * KIB, 64 * KIB, 100 * KIB,
         1024 * KIB, 5 * 1024 * KIB]
QUICK_SIZES = [512, 24 * KIB]
INVOKE_TIMEOUT_S = 60.0
WARM_UP = 2
SERVERS = {
    "cargo-lambda": None,
    "pieces+nagle": ["--stream-event", "--nagle"],
    "pieces+nodelay": ["--stream-event"],
    "whole+nodelay": [],
}
# The comparison: the Python + onnxruntime peer (THE COMPARISON, not part of maas) as a Lambda
# function under the whole+nodelay server, its model downloaded from a moto server at init.
PEER_COLUMN = "peer, whole+nodelay"


def event_of_size(size: int) -> bytes:
    """The sample API Gateway event, cut to the fields the function reads (so that 0.5 KiB is
    reachable), padded with an ignored field to exactly `size` bytes."""
    sample = json.loads(EVENT.read_text())
    http = {k: sample["requestContext"]["http"][k] for k in ("method", "path", "protocol", "sourceIp")}
    event = {**{k: sample[k] for k in ("version", "routeKey", "rawPath", "rawQueryString", "body",
                                       "isBase64Encoded")},
             "headers": {"content-type": "application/json"}, "requestContext": {"http": http}}
    bare = len(json.dumps({**event, "padding": ""}, separators=(",", ":")).encode())
    if size < bare:
        raise Abort(f"{size} bytes is below the unpadded event's {bare} bytes")
    body = json.dumps({**event, "padding": "x" * (size - bare)}, separators=(",", ":")).encode()
    assert len(body) == size
    return body


def check_answer(status: int, data: bytes) -> None:
    """Status 200, an API Gateway response with status 200 and iris's labels [0, 2]."""
    if status != 200:
        raise Abort(f"invoke status {status}: {data[:300]!r}")
    result = json.loads(data)
    served = json.loads(result.get("body") or "null")
    labels = next((o["data"] for o in (served or {}).get("outputs", []) if o["name"] == "label"), None)
    if result.get("statusCode") != 200 or labels != [0, 2]:
        raise Abort(f"unexpected answer: {data[:300]!r}")


def invoke(port: int, function: str, body: bytes, split: bool) -> tuple[int, bytes]:
    """One invocation on a new connection (TCP_NODELAY), as the tests' invoke helper makes
    them: the request's head and body in one write, or in two with `split`."""
    head = (f"POST /2015-03-31/functions/{function}/invocations HTTP/1.1\r\n"
            f"host: 127.0.0.1:{port}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", port), timeout=INVOKE_TIMEOUT_S) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if split:
            sock.sendall(head)
            sock.sendall(body)
        else:
            sock.sendall(head + body)
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, response.read()


def start_server(name: str, work: Path) -> tuple[subprocess.Popen, int]:
    log = open(work / f"{name}.log", "wb")
    if SERVERS[name] is None:
        port = free_port()
        # Runs from the repository root: it reads the workspace's metadata to know the functions.
        proc = subprocess.Popen([str(CARGO_LAMBDA), "lambda", "watch", "--only-lambda-apis",
                                 "--ignore-changes", "-A", "127.0.0.1", "-P", str(port)],
                                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        wait_for_port(port, proc, name)
        return proc, port
    proc = subprocess.Popen([sys.executable, str(RUNTIME_API), "--addr", "127.0.0.1:0",
                             *SERVERS[name]], stdout=subprocess.PIPE, stderr=log, text=True)
    line = proc.stdout.readline() if proc.stdout else ""
    if not line.startswith("listening on http://"):
        stop(proc)
        raise Abort(f"{name}: scripts/runtime_api.py did not start: {line!r}")
    return proc, int(line.split()[2].rsplit(":", 1)[1])


def start_predict(binary: Path, port: int, work: Path, name: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MAAS_"))}
    env.update(AWS_LAMBDA_RUNTIME_API=f"http://127.0.0.1:{port}/.rt/predict",
               AWS_LAMBDA_FUNCTION_NAME="predict", AWS_LAMBDA_FUNCTION_MEMORY_SIZE="1024",
               AWS_LAMBDA_FUNCTION_VERSION="$LATEST", MAAS_STORE=str(STORE),
               MAAS_CACHE_DIR=str(work / f"cache-{name}"), MAAS_PRELOAD="iris", RUST_LOG="warn")
    log = open(work / f"predict-{name}.log", "wb")
    return subprocess.Popen([str(binary)], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


def start_peer(port: int, work: Path) -> subprocess.Popen:
    """The Python peer as a Lambda function, the example model published to a moto server of
    its own (stopped with the peer's process group)."""
    moto, endpoint = start_moto(work)
    publish(endpoint, load_benchmark("example"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MAAS_"))}
    env.update(AWS_LAMBDA_RUNTIME_API=f"127.0.0.1:{port}/.rt/predict", AWS_ENDPOINT_URL=endpoint,
               AWS_REGION="us-east-1", AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test",
               MAAS_S3_FORCE_PATH_STYLE="true")
    cache = work / "cache-peer"
    cache.mkdir()
    log = open(work / "peer.log", "wb")
    peer = subprocess.Popen([sys.executable, str(PEER), "--lambda", "--store", f"s3://{BUCKET}/{PREFIX}",
                             "--model", "iris", "--version", "1", "--cache-dir", str(cache)],
                            env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    peer.moto = moto  # type: ignore[attr-defined]
    return peer


def sweep(name: str, binary: Path, sizes: list[int], runs: int, split: bool,
          work: Path) -> dict[int, list[float]]:
    server, port = start_server("whole+nodelay" if name == PEER_COLUMN else name, work)
    predict = None
    try:
        if name == PEER_COLUMN:
            predict = start_peer(port, work)
        else:
            predict = start_predict(binary, port, work, name)
        times: dict[int, list[float]] = {}
        for size in sizes:
            body = event_of_size(size)
            for i in range(WARM_UP + runs):
                started = time.perf_counter()
                status, data = invoke(port, "predict", body, split)
                elapsed = time.perf_counter() - started
                check_answer(status, data)
                if i >= WARM_UP:
                    times.setdefault(size, []).append(elapsed * 1000)
            print(f"{name}: {size} bytes, median {statistics.median(times[size]):.2f} ms",
                  file=sys.stderr)
        if predict.poll() is not None:
            raise Abort(f"predict exited with status {predict.returncode} under {name}")
        return times
    except (OSError, http.client.HTTPException) as err:
        raise Abort(f"{name}: {err!r}; logs in {work}") from err
    finally:
        if predict:
            stop(predict)
            if hasattr(predict, "moto"):
                stop(predict.moto)
        stop(server)


def human(size: int) -> str:
    if size >= 1024 * KIB:
        return f"{size // (1024 * KIB)} MiB"
    return f"{size / KIB:g} KiB"


def report(results: dict[str, dict[int, list[float]]], sizes: list[int], args: argparse.Namespace,
           binary: Path) -> str:
    python = os.path.relpath(sys.executable, ROOT) if sys.executable.startswith(str(ROOT)) else sys.executable
    commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    names = list(results)
    lines = [
        f"Command: `{shlex.join([python, *sys.argv])}`",
        "",
        f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; machine: {machine()}, "
        f"load average {os.getloadavg()[0]:.2f} at the end; "
        f"maas commit {commit}, binary {os.path.relpath(binary, ROOT)} "
        f"({binary.stat().st_size / 2**20:.1f} MiB); invoker writes "
        f"{'head and body separately' if args.split_invoke else 'each request in one write'}.",
        "",
        f"Invocation time in ms, median (min-max) of {args.runs} runs after {WARM_UP} warm-ups:",
        "",
        "| event | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for size in sizes:
        cells = []
        for name in names:
            t = results[name][size]
            cells.append(f"{statistics.median(t):.2f} ({min(t):.2f}-{max(t):.2f})")
        lines.append(f"| {human(size)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=9, help="measured invocations per size (default 9)")
    parser.add_argument("--binary", type=Path, default=ROOT / "target" / "ci" / "predict",
                        help="the predict binary (default target/ci/predict)")
    parser.add_argument("--servers", default=",".join(SERVERS),
                        help=f"comma-separated, from {', '.join(SERVERS)}")
    parser.add_argument("--split-invoke", action="store_true",
                        help="write each invoke request's head and body separately")
    parser.add_argument("--sizes", help="comma-separated event sizes in bytes (default: the sweep)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 sizes, 1 run each")
    parser.add_argument("--peer", action="store_true",
                        help=f"add a column: {PEER_COLUMN} (the Python + onnxruntime peer)")
    args = parser.parse_args()
    servers = args.servers.split(",")
    if unknown := [s for s in servers if s not in SERVERS]:
        parser.error(f"unknown servers: {', '.join(unknown)}")
    if args.quick:
        args.runs = 1
    if not 1 <= args.runs <= 1000:
        parser.error("--runs must be 1..1000")
    binary = args.binary.resolve()
    if not binary.is_file():
        parser.error(f"{binary} is missing: cargo build --profile ci -p predict")
    if "cargo-lambda" in servers and not CARGO_LAMBDA.is_file():
        parser.error(f"{CARGO_LAMBDA} is missing: pip install -r scripts/requirements.txt")
    sizes = QUICK_SIZES if args.quick else SIZES
    if args.sizes:
        sizes = [int(size) for size in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="maas-event-sizes-") as tmp:
        work = Path(tmp)
        # A private copy, so a concurrent cargo build cannot swap the binary mid-run.
        private = work / "predict"
        shutil.copy2(binary, private)
        try:
            columns = servers + ([PEER_COLUMN] if args.peer else [])
            results = {name: sweep(name, private, sizes, args.runs, args.split_invoke, work)
                       for name in columns}
        except Abort as err:
            print(f"aborted: {err}", file=sys.stderr)
            for log in sorted(work.glob("*.log")):
                print(f"--- {log.name}\n{log.read_text(errors='replace')[-2000:]}", file=sys.stderr)
            return 1
    print(report(results, sizes, args, binary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
