#!/usr/bin/env python3
"""THE COMPARISON, not part of maas: one ONNX model served the way a typical Python Lambda does it.

Init (module import + main): import boto3, numpy and onnxruntime, create the S3 client.
First request: download models/<name>/<version>/model.onnx from S3 into a local directory
(/tmp on Lambda) with boto3, open an onnxruntime.InferenceSession (CPUExecutionProvider),
then run inference. Later requests only run inference.

It answers the same Open Inference Protocol (KServe v2) request as maas's `predict serve`:

    POST /v2/models/<name>/infer
    POST /v2/models/<name>/versions/<version>/infer
    {"inputs": [{"name", "shape", "datatype", "data"}], "outputs"?: [{"name"}], "id"?}
 -> {"model_name", "model_version", "id"?, "outputs": [{"name", "datatype", "shape", "data"}]}

with `data` flat. Errors are {"error": "..."} with 400/404/500. No manifest, no checksum, no
input validation beyond what numpy and onnxruntime do: this is the short path a hand-written
Lambda would take, not a feature-for-feature copy of maas.

    python scripts/peer_onnxruntime_server.py --addr 127.0.0.1:8081 --store s3://bucket/prefix \
        --model iris --version 1 --cache-dir /tmp/peer-cache

As a Lambda function (--lambda, what scripts/bench.sh runs): the model is downloaded to
--cache-dir (/tmp on Lambda) with boto3 and its InferenceSession opened at init, as module-level
code of a Python handler does, then a runtime loop takes API Gateway HTTP API events from the
Runtime API at AWS_LAMBDA_RUNTIME_API (GET .../invocation/next) and posts each answer back.

    AWS_LAMBDA_RUNTIME_API=127.0.0.1:9001/.rt/peer python scripts/peer_onnxruntime_server.py \
        --lambda --store s3://bucket/prefix --model iris --version 1 --cache-dir /tmp

S3 endpoint, region and credentials come from the standard AWS variables (AWS_ENDPOINT_URL,
AWS_REGION, ...); MAAS_S3_FORCE_PATH_STYLE=true selects path-style addressing, as for maas.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

# Imported at process start, as a Lambda's init phase would.
import boto3
import numpy as np
import onnxruntime as ort
from botocore.config import Config

DATATYPE_TO_NUMPY = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
    "UINT64": np.uint64, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32,
    "INT64": np.int64, "FP32": np.float32, "FP64": np.float64,
}
NUMPY_TO_DATATYPE = {np.dtype(t): name for name, t in DATATYPE_TO_NUMPY.items()}


def log(message: str, **fields) -> None:
    """One log line on stderr: `message key=value ...`."""
    print(" ".join([message, *(f"{k}={v}" for k, v in fields.items())]), file=sys.stderr, flush=True)


class Model:
    """The served model: fetched and loaded once, on first use."""

    def __init__(self, s3, bucket: str, prefix: str, name: str, version: str, cache_dir: Path):
        self.s3, self.bucket, self.name, self.version = s3, bucket, name, version
        self.key = f"{prefix}/models/{name}/{version}/model.onnx".lstrip("/")
        self.path = cache_dir / name / version / "model.onnx"
        self.session: ort.InferenceSession | None = None
        self.lock = threading.Lock()

    def get_session(self) -> ort.InferenceSession:
        with self.lock:
            if self.session is None:
                started = time.perf_counter()
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.s3.download_file(self.bucket, self.key, str(self.path))
                fetch_ms = (time.perf_counter() - started) * 1000
                self.session = ort.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
                log("model loaded", model=f"{self.name}@{self.version}", bytes=self.path.stat().st_size,
                    fetch_ms=f"{fetch_ms:.1f}", elapsed_ms=f"{(time.perf_counter() - started) * 1000:.1f}")
            return self.session

    def infer(self, request: dict) -> dict:
        session = self.get_session()
        feeds = {
            tensor["name"]: np.asarray(tensor["data"], dtype=DATATYPE_TO_NUMPY[tensor["datatype"]])
            .reshape(tensor["shape"])
            for tensor in request["inputs"]
        }
        names = [o["name"] for o in request.get("outputs") or []] or [o.name for o in session.get_outputs()]
        results = session.run(names, feeds)
        response = {"model_name": self.name, "model_version": self.version}
        if "id" in request:
            response["id"] = request["id"]
        response["outputs"] = [
            {"name": name, "datatype": NUMPY_TO_DATATYPE[array.dtype], "shape": list(array.shape),
             "data": array.reshape(-1).tolist()}
            for name, array in zip(names, results)
        ]
        return response


def answer(model: Model, path: str, body: bytes) -> tuple[int, dict]:
    """The status and JSON body for one request, as the local server and the Lambda share."""
    parts = path.strip("/").split("/")
    if not (parts in (["v2", "models", model.name, "infer"],
                      ["v2", "models", model.name, "versions", model.version, "infer"])):
        return 404, {"error": f"no route {path}"}
    try:
        request = json.loads(body)
    except ValueError as err:
        return 400, {"error": f"malformed JSON: {err}"}
    try:
        return 200, model.infer(request)
    except (KeyError, TypeError, ValueError) as err:
        return 400, {"error": f"bad request: {err!r}"}
    except Exception as err:  # noqa: BLE001 - onnxruntime raises its own types
        log("request failed", error=repr(err))
        return 500, {"error": "internal error"}


def run_lambda(model: Model) -> None:
    """The Lambda runtime loop: next event, answer, forever (the process is stopped from outside)."""
    api = os.environ["AWS_LAMBDA_RUNTIME_API"]
    base = (api if api.startswith("http") else f"http://{api}") + "/2018-06-01/runtime/invocation"
    while True:
        with urllib.request.urlopen(f"{base}/next", timeout=None) as response:
            request_id = response.headers["lambda-runtime-aws-request-id"]
            event = json.loads(response.read())
        body = event.get("body") or ""
        body = base64.b64decode(body) if event.get("isBase64Encoded") else body.encode()
        status, result = answer(model, event.get("rawPath", "/"), body)
        reply = json.dumps({"statusCode": status, "headers": {"content-type": "application/json"},
                            "body": json.dumps(result, separators=(",", ":"))}).encode()
        post = urllib.request.Request(f"{base}/{request_id}/response", data=reply, method="POST")
        urllib.request.urlopen(post).read()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like maas's server
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall
    model: Model  # set in main()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.reply(*answer(self.model, self.path, body))

    def reply(self, status: int, body: dict) -> None:
        data = json.dumps(body, separators=(",", ":")).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args) -> None:  # no access log, as maas
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--addr", default="127.0.0.1:8081", help="HOST:PORT to listen on")
    parser.add_argument("--lambda", dest="in_lambda", action="store_true",
                        help="run as a Lambda function: fetch and load at init, then the runtime loop")
    parser.add_argument("--store", required=True, help="s3://bucket[/prefix]")
    parser.add_argument("--model", default="iris")
    parser.add_argument("--version", default="1")
    parser.add_argument("--cache-dir", type=Path, default=Path("/tmp"), help="where model.onnx is downloaded")
    args = parser.parse_args()

    if not args.store.startswith("s3://"):
        parser.error("--store must be s3://bucket[/prefix]")
    bucket, _, prefix = args.store[len("s3://"):].partition("/")
    path_style = os.environ.get("MAAS_S3_FORCE_PATH_STYLE", "").lower() == "true"
    s3 = boto3.client("s3", config=Config(s3={"addressing_style": "path" if path_style else "auto"}))

    Handler.model = Model(s3, bucket, prefix.strip("/"), args.model, args.version, args.cache_dir)
    if args.in_lambda:
        Handler.model.get_session()  # init: download to /tmp, open the session
        return run_lambda(Handler.model)
    host, _, port = args.addr.rpartition(":")
    server = ThreadingHTTPServer((host, int(port)), Handler)
    log("serving locally", address=args.addr)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
