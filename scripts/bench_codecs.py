"""What each of predict's codecs adds to a warm one-row request, against the Open Inference
Protocol's JSON form: the release `predict` binary served locally (as scripts/load_test.py
serves it), iris loaded before timing, one keep-alive connection, requests of every codec
interleaved (so drift in the machine's load falls on all alike), each answer checked.

Usage: .venv/bin/python scripts/bench_codecs.py [--requests N] [--bin DIR]
(default target/release/predict; build it first with `cargo build --release -p predict`)

Codecs, each sending the same row [5.1, 3.5, 1.4, 0.2] to iris (expected label 0):
  oip-json       POST /v2/models/iris/infer, JSON inputs and outputs
  oip-binary     the binary tensor extension both ways (tritonclient's default)
  oip-gzip       oip-json's body compressed (Content-Encoding: gzip)
  tf-rows        POST /v1/models/iris:predict {"instances": [...]}
  tf-columns     POST /v1/models/iris:predict {"inputs": [...]}

Prints a Markdown table: p50, p90 and p99 in microseconds, and p50 minus oip-json's.
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import json
import shutil
import struct
import sys
import tempfile
import time
from pathlib import Path

from load_test import MIB, ROOT, Server, pct

ROW = [5.1, 3.5, 1.4, 0.2]
OIP = "/v2/models/iris/infer"
TF = "/v1/models/iris:predict"
JSON = {"Content-Type": "application/json"}
OIP_JSON = json.dumps({"inputs": [{"name": "float_input", "shape": [1, 4], "datatype": "FP32",
                                   "data": ROW}]}).encode()


def binary_request() -> tuple[bytes, dict[str, str]]:
    header = json.dumps({
        "inputs": [{"name": "float_input", "shape": [1, 4], "datatype": "FP32",
                    "parameters": {"binary_data_size": 16}}],
        "parameters": {"binary_data_output": True},
    }).encode()
    return header + struct.pack("<4f", *ROW), {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(header)),
    }


def oip_label(body: bytes, headers: http.client.HTTPMessage) -> int:
    """The label of an Open Inference Protocol answer, JSON or binary."""
    length = headers.get("Inference-Header-Content-Length")
    if length is None:
        return json.loads(body)["outputs"][0]["data"][0]
    header = json.loads(body[:int(length)])
    offset = int(length)
    for output in header["outputs"]:
        size = output["parameters"]["binary_data_size"]
        if output["name"] == "label":
            return struct.unpack_from("<q", body, offset)[0]
        offset += size
    raise ValueError("no label output")


CODECS = {
    "oip-json": (OIP, OIP_JSON, JSON, oip_label),
    "oip-binary": (OIP, *binary_request(), oip_label),
    "oip-gzip": (OIP, gzip.compress(OIP_JSON, mtime=0), {**JSON, "Content-Encoding": "gzip"},
                 oip_label),
    "tf-rows": (TF, json.dumps({"instances": [ROW]}).encode(), JSON,
                lambda body, _: json.loads(body)["predictions"][0]["label"]),
    "tf-columns": (TF, json.dumps({"inputs": [ROW]}).encode(), JSON,
                   lambda body, _: json.loads(body)["outputs"]["label"][0]),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000, help="timed requests per codec")
    parser.add_argument("--bin", type=Path, default=ROOT / "target" / "release",
                        help="directory holding the release `predict` binary")
    args = parser.parse_args()
    predict_bin = args.bin / "predict"
    if not predict_bin.is_file():
        print(f"missing binary {predict_bin}", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="maas-codecs-"))
    latencies: dict[str, list[float]] = {name: [] for name in CODECS}
    try:
        store = work / "store"
        shutil.copytree(ROOT / "scripts" / "example-store", store)
        server = Server(predict_bin, store, work, 64 * MIB, "codecs", {})
        try:
            connection = http.client.HTTPConnection("127.0.0.1", server.port)
            for i in range(args.requests + 100):  # the first 100 rounds warm up
                for name, (path, body, headers, label) in CODECS.items():
                    t0 = time.perf_counter()
                    connection.request("POST", path, body, headers)
                    response = connection.getresponse()
                    payload = response.read()
                    elapsed = time.perf_counter() - t0
                    if response.status != 200 or label(payload, response.headers) != 0:
                        print(f"{name}: HTTP {response.status} {payload[:200]!r}", file=sys.stderr)
                        return 1
                    if i >= 100:
                        latencies[name].append(elapsed)
        finally:
            server.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = pct(latencies["oip-json"], 50)
    print(f"| codec | requests | p50 (µs) | p90 (µs) | p99 (µs) | p50 - oip-json (µs) |")
    print("|---|---|---|---|---|---|")
    for name, values in latencies.items():
        p50 = pct(values, 50)
        print(f"| {name} | {len(values)} | {p50 * 1000:.0f} | {pct(values, 90) * 1000:.0f} "
              f"| {pct(values, 99) * 1000:.0f} | {(p50 - base) * 1000:+.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
