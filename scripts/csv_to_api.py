#!/usr/bin/env python3
"""From a CSV to an API: the deployment that started maas, end to end on one machine.

    python scripts/csv_to_api.py [--work DIR] [--bin-dir target/debug]

1. writes the iris data set that ships with scikit-learn as a CSV (WORK/iris.csv);
2. reads it back and trains Pipeline(StandardScaler, MLPClassifier(hidden_layer_sizes=(128, 64)));
3. exports the whole pipeline with skl2onnx (the scaler inside the graph, ZipMap off so the
   probabilities are a tensor) to WORK/iris_mlp.onnx;
4. starts `model-upload serve` and `predict serve` on one local store (WORK/store) and
   publishes the model with `PUT /models/iris_mlp/versions/1`;
5. asks predict for a few rows of the CSV in TensorFlow Serving's row form
   (`POST /v1/models/iris_mlp:predict` with `{"instances": [...]}`) and in the Open Inference
   Protocol (`POST /v2/models/iris_mlp/infer`), and checks both answers against onnxruntime
   (labels equal, probabilities within 1e-4).

The binaries come from --bin-dir (the default, target/debug, is built with
`cargo build -p predict -p model-upload` when they are missing). Exits non-zero on any
failure or disagreement; scripts/test.sh runs it on the binaries it built.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import onnxruntime as ort
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.datasets import load_iris
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

ROOT = Path(__file__).resolve().parent.parent
MODEL = "iris_mlp"
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
TOLERANCE = 1e-4
QUERY_ROWS = [0, 60, 120, 149]  # two setosa-to-virginica extremes and two in between


def write_csv(path: Path) -> None:
    iris = load_iris()
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow([*FEATURES, "species"])
        for row, target in zip(iris.data, iris.target):
            writer.writerow([*(f"{v:g}" for v in row), int(target)])


def read_csv(path: Path) -> tuple[list[list[float]], np.ndarray]:
    """The features as the CSV writes them (5.1, not float32's 5.099999904632568), and labels."""
    with path.open(newline="") as source:
        rows = list(csv.DictReader(source))
    return [[float(r[f]) for f in FEATURES] for r in rows], np.array([int(r["species"]) for r in rows])


def train_and_export(features: np.ndarray, labels: np.ndarray) -> bytes:
    started = time.monotonic()
    scaler = StandardScaler()
    mlp = MLPClassifier(hidden_layer_sizes=(128, 64), max_iter=300, random_state=0)
    pipeline = Pipeline([("scale", scaler), ("mlp", mlp)])
    # One BLAS thread: on a small data set threads only contend (20x slower on a busy machine).
    with threadpool_limits(limits=1):
        pipeline.fit(features, labels)
    print(f"trained on {len(labels)} rows in {time.monotonic() - started:.1f} s: "
          f"accuracy {pipeline.score(features, labels):.3f}")
    model = convert_sklearn(
        pipeline,
        name=MODEL,
        initial_types=[("float_input", FloatTensorType([None, len(FEATURES)]))],
        target_opset={"": 17, "ai.onnx.ml": 3},
        # The scaler as skl2onnx writes it by default: ai.onnx.ml's Scaler.
        options={id(mlp): {"zipmap": False}},
    )
    return model.SerializeToString()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


DEBUG_BINARIES = ROOT / "target" / "debug"


def binaries(bin_dir: Path) -> dict[str, Path]:
    """The two binaries in bin_dir; debug builds are made when missing."""
    paths = {name: bin_dir / name for name in ("predict", "model-upload")}
    if not all(p.exists() for p in paths.values()):
        if bin_dir.resolve() != DEBUG_BINARIES:
            sys.exit(f"predict or model-upload is missing from {bin_dir}")
        print(f"building predict and model-upload into {bin_dir} ...")
        subprocess.run(["cargo", "build", "-p", "predict", "-p", "model-upload"], cwd=ROOT, check=True)
    return paths


def serve(binary: Path, store: Path, cache: Path) -> tuple[subprocess.Popen, str]:
    """Starts `binary serve` on a free port; returns the process and its base URL."""
    addr = f"127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAAS_", "AWS_"))}
    env["MAAS_CACHE_DIR"] = str(cache)
    process = subprocess.Popen([str(binary), "serve", "--store", str(store), "--addr", addr],
                               cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(addr.split(":"), timeout=1).close()
            return process, f"http://{addr}"
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                sys.exit(f"{binary.name} serve did not listen on {addr}")
            time.sleep(0.02)


def http(method: str, url: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, method=method,
                                     headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def check(what: str, labels: list, probabilities: list, expected: dict[str, np.ndarray]) -> None:
    got_labels = np.array(labels, dtype=np.int64)
    got_probabilities = np.array(probabilities, dtype=np.float64)
    if not np.array_equal(got_labels, expected["label"]):
        sys.exit(f"{what}: labels {got_labels.tolist()}, onnxruntime {expected['label'].tolist()}")
    diff = float(np.max(np.abs(got_probabilities - expected["probabilities"])))
    if diff > TOLERANCE:
        sys.exit(f"{what}: probabilities differ from onnxruntime's by {diff} (> {TOLERANCE})")
    print(f"{what}: labels {got_labels.tolist()}, probabilities within {diff:.1e} of onnxruntime")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, help="folder for the CSV, the model and the store "
                        "(default: a temporary folder, removed afterwards)")
    parser.add_argument("--bin-dir", type=Path, default=DEBUG_BINARIES,
                        help="where the predict and model-upload binaries are")
    args = parser.parse_args()
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        csv_path = work / "iris.csv"
        write_csv(csv_path)
        table, labels = read_csv(csv_path)
        model = train_and_export(np.array(table, dtype=np.float32), labels)
        (work / f"{MODEL}.onnx").write_bytes(model)
        rows = [table[i] for i in QUERY_ROWS]
        session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        outputs = session.run(["label", "probabilities"], {"float_input": np.array(rows, dtype=np.float32)})
        expected = dict(zip(["label", "probabilities"], outputs))

        paths = binaries(args.bin_dir)
        processes = []
        try:
            upload, upload_url = serve(paths["model-upload"], work / "store", work / "upload-cache")
            processes.append(upload)
            predict, predict_url = serve(paths["predict"], work / "store", work / "predict-cache")
            processes.append(predict)

            status, manifest = http("PUT", f"{upload_url}/models/{MODEL}/versions/1", model)
            if status != 201:
                sys.exit(f"publishing failed ({status}): {manifest}")
            print(f"published {MODEL} version 1: {manifest['signature']}")

            body = json.dumps({"instances": rows}).encode()
            status, answer = http("POST", f"{predict_url}/v1/models/{MODEL}:predict", body)
            if status != 200:
                sys.exit(f"TensorFlow Serving request failed ({status}): {answer}")
            print(f"POST /v1/models/{MODEL}:predict {body.decode()}\n  -> {json.dumps(answer)}")
            predictions = answer["predictions"]
            check("TensorFlow Serving rows", [p["label"] for p in predictions],
                  [p["probabilities"] for p in predictions], expected)

            oip = {"inputs": [{"name": "float_input", "shape": [len(rows), len(FEATURES)],
                               "datatype": "FP32", "data": rows}]}
            status, answer = http("POST", f"{predict_url}/v2/models/{MODEL}/infer", json.dumps(oip).encode())
            if status != 200:
                sys.exit(f"Open Inference Protocol request failed ({status}): {answer}")
            outputs = {o["name"]: o for o in answer["outputs"]}
            probabilities = np.array(outputs["probabilities"]["data"]).reshape(outputs["probabilities"]["shape"])
            check("Open Inference Protocol", outputs["label"]["data"], probabilities.tolist(), expected)
        finally:
            for process in processes:
                process.terminate()
                process.wait()
    print(f"from a CSV to an API in {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main()
