#!/usr/bin/env python3
"""batch-predict against the obvious alternative: rows/s and peak RSS, side by side.

For each model (the example iris forest, and a 784-input MLP made here) and each row count,
one CSV file is put into a moto S3 server this script starts, then scored twice:

- batch-predict: the release binary (target/release/batch-predict), a fresh process per run,
  served by scripts/runtime_api.py (a Lambda Runtime API) and invoked with the S3 event of
  the file; it streams the file, infers in mini-batches and streams the JSON Lines output
  back as a multipart upload. Peak RSS is the process's VmHWM after the invocation, from
  runs of their own with the binary dropped from the page cache (see `set_page_cache`);
  the timed runs start with it cached.
- pandas + onnxruntime: this script's `--baseline` mode in a venv of its own
  (target/bench-venv: pandas, onnxruntime, boto3): get the object, pd.read_csv in chunks,
  InferenceSession.run per chunk, one JSON line per row, the JSON Lines put back to S3
  (multipart, by boto3). Peak RSS is its ru_maxrss.

Both run with the same threads (the machine's CPUs). Time is the whole job, read to written.
A small job of each side runs first, untimed (moto, the page cache and the libraries warm);
then each file is scored `--repeat` times, the two sides taking turns, and the table gives
the medians (rows/s, peak RSS) and the range of rows/s.

Usage: .venv/bin/python scripts/bench_batch.py [--rows 10000,100000,1000000]
           [--mlp-rows 10000,100000] [--repeat 3] [--binary target/release/batch-predict]
Prints a markdown table (scripts/benchmarks.md has the results).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH_VENV = ROOT / "target" / "bench-venv"
BASELINE_PACKAGES = ["pandas==2.3.3", "onnxruntime==1.32.0", "boto3==1.44.8", "numpy==2.4.6"]
CHUNK = 4096


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str) -> None:
    for _ in range(300):
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except Exception as err:  # noqa: BLE001 - any failure means not up yet
            if getattr(err, "code", None):
                return
            time.sleep(0.1)
    sys.exit(f"{url} did not come up")


def baseline(args: argparse.Namespace) -> None:
    """The pandas + onnxruntime job (run in the bench venv)."""
    import resource

    import boto3
    import numpy as np
    import onnxruntime as ort
    import pandas as pd

    started = time.perf_counter()
    s3 = boto3.client("s3", endpoint_url=args.endpoint)
    session = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    names = [o.name for o in session.get_outputs()]
    body = s3.get_object(Bucket=args.bucket, Key=args.key)["Body"]
    out_path = Path(tempfile.mkstemp(suffix=".jsonl")[1])
    rows = 0
    with out_path.open("w") as out:
        for chunk in pd.read_csv(body, header=None, chunksize=CHUNK, dtype=np.float32):
            outputs = session.run(names, {input_name: chunk.to_numpy()})
            for i in range(len(chunk)):
                line = {"row": rows + i, "outputs": [
                    {"name": n, "shape": [1, *o.shape[1:]], "data": o[i].reshape(-1).tolist()}
                    for n, o in zip(names, outputs)
                ]}
                out.write(json.dumps(line))
                out.write("\n")
            rows += len(chunk)
    s3.upload_file(str(out_path), args.bucket, args.key.replace("batch/input/", "batch/output/") + ".jsonl")
    out_path.unlink()
    elapsed = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"rows": rows, "seconds": elapsed, "peak_rss": peak}))


def ensure_bench_venv() -> Path:
    python = BENCH_VENV / "bin" / "python"
    stamp = BENCH_VENV / ".packages"
    want = "\n".join(BASELINE_PACKAGES)
    if not python.exists() or not stamp.exists() or stamp.read_text() != want:
        subprocess.run([sys.executable, "-m", "venv", str(BENCH_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                        *BASELINE_PACKAGES], check=True)
        stamp.write_text(want)
    return python


def make_mlp(path: Path) -> None:
    """A 784-128-64-10 MLP with random weights, batch dimension dynamic."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(7)
    sizes = [784, 128, 64, 10]
    nodes, inits, previous = [], [], "x"
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        inits.append(numpy_helper.from_array((rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32), f"w{i}"))
        inits.append(numpy_helper.from_array(np.zeros(b, np.float32), f"b{i}"))
        nodes.append(helper.make_node("Gemm", [previous, f"w{i}", f"b{i}"], [f"h{i}"]))
        previous = f"h{i}"
        if b != sizes[-1]:
            nodes.append(helper.make_node("Relu", [previous], [f"r{i}"]))
            previous = f"r{i}"
    nodes.append(helper.make_node("Identity", [previous], ["y"]))
    graph = helper.make_graph(
        nodes, "mlp784",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 784])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


def publish(s3, bucket: str, name: str, model: Path, signature: dict) -> None:
    import hashlib

    data = model.read_bytes()
    manifest = {
        "name": name, "version": 1, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data),
        "created": "2026-12-01T00:00:00Z", "signature": signature,
    }
    s3.put_object(Bucket=bucket, Key=f"models/{name}/1/model.onnx", Body=data)
    s3.put_object(Bucket=bucket, Key=f"models/{name}/1/manifest.json", Body=json.dumps(manifest).encode())
    # The pointer model-upload writes with each version; without it every job resolves
    # `latest` by listing the model's keys (and moto answers the missing pointer slowly).
    s3.put_object(Bucket=bucket, Key=f"models/{name}/latest", Body=b'{"version": 1}')


def make_csv(path: Path, rows: int, columns: int) -> None:
    """Random values in 0.1-8 with 4 significant digits, as `%.4g` writes them. Formatting is
    slow in Python, so one block of up to 10,000 rows is written as often as the rows need
    (the 1M-row MLP file is 4.7 GB)."""
    import io

    import numpy as np

    rng = np.random.default_rng(rows + columns)
    block_rows = min(rows, 10_000)
    text = io.StringIO()
    np.savetxt(text, rng.uniform(0.1, 8.0, (block_rows, columns)).astype(np.float32),
               delimiter=",", fmt="%.4g")
    block = text.getvalue().encode()
    lines = block.splitlines(keepends=True)
    with path.open("wb") as out:
        for _ in range(rows // block_rows):
            out.write(block)
        out.write(b"".join(lines[: rows % block_rows]))


def vm_hwm(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def set_page_cache(path: Path, cached: bool) -> None:
    """Puts the whole binary in the page cache, or drops it from there. Timed runs start with
    it cached, as the pandas side's libraries are. With the file cached the kernel also maps
    the cached pages around each one a process touches (fault-around), so RSS reads up to
    4 MiB higher than the code used; the memory runs start with it dropped, as on a host that
    has not run the binary, and count the code touched (and the kernel's read-ahead)."""
    if cached:
        with path.open("rb") as f:
            while f.read(1 << 20):
                pass
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def run_batch_predict(binary: Path, endpoint: str, bucket: str, key: str, cache: str, cached: bool) -> dict:
    api_port = free_port()
    api = subprocess.Popen([sys.executable, str(ROOT / "scripts/runtime_api.py"), "--addr", f"127.0.0.1:{api_port}"],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        api.stdout.readline()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MAAS_"))}
        env.update({
            "AWS_LAMBDA_RUNTIME_API": f"http://127.0.0.1:{api_port}/.rt/batch-predict",
            "AWS_LAMBDA_FUNCTION_NAME": "batch-predict", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "2048",
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST", "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1",
            "MAAS_STORE": f"s3://{bucket}", "MAAS_S3_FORCE_PATH_STYLE": "true", "MAAS_CACHE_DIR": cache,
            "RUST_LOG": "warn",
            # moto reads an object whole before its first byte goes out (about 20 s for the
            # 4.7 GB file of 1M MLP rows); S3 streams at once, as the default timeouts expect.
            "MAAS_S3_ATTEMPT_TIMEOUT_MS": "300000", "MAAS_S3_OPERATION_TIMEOUT_MS": "600000",
        })
        log = open(Path(cache).parent / "batch-predict.log", "w")  # noqa: SIM115 - closed with the process
        set_page_cache(binary, cached)
        function = subprocess.Popen([str(binary)], env=env, stdout=log, stderr=log)
        try:
            encoded = urllib.request.quote(key, safe="/")
            sample = json.loads((ROOT / "tests/events/batch-s3-encoded.json").read_text())
            record = sample["Records"][0]
            record["s3"]["bucket"]["name"] = bucket
            record["s3"]["object"]["key"] = encoded
            event = {"Records": [record]}
            request = urllib.request.Request(
                f"http://127.0.0.1:{api_port}/2015-03-31/functions/batch-predict/invocations",
                data=json.dumps(event).encode(), headers={"content-type": "application/json"})
            started = time.perf_counter()
            try:
                answer = json.loads(urllib.request.urlopen(request, timeout=3600).read())
            except urllib.error.HTTPError as err:
                sys.exit(f"batch-predict failed: {err.read().decode()}; its log: {log.name}")
            elapsed = time.perf_counter() - started
            peak = vm_hwm(function.pid)
        finally:
            function.kill()
            function.wait()
    finally:
        api.kill()
        api.wait()
    rows = answer["processed"][0]["rows_ok"]
    return {"rows": rows, "seconds": elapsed, "peak_rss": peak}


def run_baseline(python: Path, endpoint: str, bucket: str, key: str, model: Path) -> dict:
    env = dict(os.environ, AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_DEFAULT_REGION="us-east-1")
    out = subprocess.run([str(python), __file__, "--baseline", "--endpoint", endpoint, "--bucket", bucket,
                          "--key", key, "--model", str(model)], env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def score(s3, work: Path, bucket: str, name: str, model: Path, columns: int, rows: int, binary: Path,
          endpoint: str, bench_python: Path, repeat: int) -> tuple[float, list[dict], list[dict], list[dict]]:
    """Scores a file of `rows` rows `repeat` times by each side, taking turns: batch-predict
    timed with its binary in the page cache, then again with it dropped for its memory."""
    csv = work / f"{name}-{rows}.csv"
    make_csv(csv, rows, columns)
    key = f"batch/input/{name}/{rows} rows.csv"
    s3.upload_file(str(csv), bucket, key)
    size_mb = csv.stat().st_size / 1e6
    csv.unlink()
    ours, cold, theirs = [], [], []
    for _ in range(repeat):
        for runs, cached in ((ours, True), (cold, False)):
            with tempfile.TemporaryDirectory(dir=work) as cache:
                runs.append(run_batch_predict(binary, endpoint, bucket, key, cache, cached))
        theirs.append(run_baseline(bench_python, endpoint, bucket, key, model))
        assert ours[-1]["rows"] == cold[-1]["rows"] == rows == theirs[-1]["rows"], (ours, cold, theirs)
    s3.delete_object(Bucket=bucket, Key=key)
    return size_mb, ours, cold, theirs


def rates(rows: int, runs: list[dict]) -> list[float]:
    return [rows / run["seconds"] for run in runs]


def median(values: list[float]) -> float:
    return statistics.median(values)


def span(values: list[float]) -> str:
    return f"{min(values):,.0f}-{max(values):,.0f}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--baseline", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--endpoint")
    parser.add_argument("--bucket")
    parser.add_argument("--key")
    parser.add_argument("--model")
    parser.add_argument("--rows", default="10000,100000,1000000")
    parser.add_argument("--mlp-rows", default="10000,100000")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--binary", default=str(ROOT / "target/release/batch-predict"))
    args = parser.parse_args()
    if args.baseline:
        baseline(args)
        return

    import boto3

    binary = Path(args.binary)
    if not binary.exists():
        sys.exit(f"{binary} is missing: cargo build --release -p batch-predict")
    bench_python = ensure_bench_venv()
    work = Path(tempfile.mkdtemp(prefix="bench-batch-", dir=ROOT / "target"))
    port = free_port()
    moto = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_for(endpoint + "/")
        s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="test",
                          aws_secret_access_key="test", region_name="us-east-1")
        bucket = "bench"
        s3.create_bucket(Bucket=bucket)
        iris = ROOT / "scripts/example-store/models/iris/1/model.onnx"
        iris_signature = json.loads((iris.parent / "manifest.json").read_text())["signature"]
        publish(s3, bucket, "iris", iris, iris_signature)
        mlp = work / "mlp784.onnx"
        make_mlp(mlp)
        publish(s3, bucket, "mlp784", mlp, {
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 784]}],
            "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 10]}],
        })
        plan = [("iris", iris, 4, int(n)) for n in args.rows.split(",") if n]
        plan += [("mlp784", mlp, 784, int(n)) for n in args.mlp_rows.split(",") if n]
        print(f"machine: {platform.node()}, {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
              f"Linux {platform.release()}; medians of {args.repeat} runs")
        score(s3, work, bucket, "iris", iris, 4, 1000, binary, endpoint, bench_python, 1)  # warm-up
        print("| model | rows | input MB | batch-predict rows/s (range) | batch-predict peak RSS (binary cached) | "
              "pandas+onnxruntime rows/s (range) | pandas+onnxruntime peak RSS | speed-up |")
        print("|---|---|---|---|---|---|---|---|")
        for name, model, columns, rows in plan:
            size_mb, ours, cold, theirs = score(s3, work, bucket, name, model, columns, rows, binary, endpoint,
                                                bench_python, args.repeat)
            ours_rate, theirs_rate = rates(rows, ours), rates(rows, theirs)
            print(f"| {name} | {rows:,} | {size_mb:.1f} | {median(ours_rate):,.0f} ({span(ours_rate)}) | "
                  f"{median([r['peak_rss'] for r in cold]) / 2**20:.1f} MiB "
                  f"({median([r['peak_rss'] for r in ours]) / 2**20:.1f}) | "
                  f"{median(theirs_rate):,.0f} ({span(theirs_rate)}) | "
                  f"{median([r['peak_rss'] for r in theirs]) / 2**20:.0f} MiB | "
                  f"{median(ours_rate) / median(theirs_rate):.1f}x |", flush=True)
    finally:
        moto.kill()
        moto.wait()


if __name__ == "__main__":
    main()
