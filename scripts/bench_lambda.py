#!/usr/bin/env python3
"""maas's `predict` against the Python + onnxruntime peer, both as Lambda functions.

Run by scripts/bench.sh, which installs what this needs and builds the binaries. Both sides
run as Lambda functions under a Runtime API (scripts/runtime_api.py, in this process: it
serves events whole with TCP_NODELAY, as AWS's does; cargo-lambda's emulator adds a ~40 ms
Nagle stall to mid-sized events, see "Event size sweep" in scripts/benchmarks.md), against
one moto S3 server, with the same models and the same Open Inference Protocol events:

1. cold start (process start -> first answer, weights fetched from S3) at three sizes, with
   maas's breakdown: init (process start -> its first `GET /next`), resolve, fetch, engine
   (load and optimise), first inference; the peer's init includes its download and session;
2. warm invocations at batch 1 and 32, and maas's handler overhead (warm - inference);
3. fetch throughput of the largest model: one GET vs parallel ranged GETs, and moto's CPU;
4. package size (zip) of each function against the peer's deployment;
5. cost per million predictions for a cold-heavy and a warm-heavy mix.

Every answer must be 200, and maas's outputs must match the peer's (1e-3). Markdown goes to
--out (scripts/benchmarks.md's bench.sh section) or stdout; progress to stderr.
--smoke: the small model, one run, no timing claims: checks that the benchmark works.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import numpy as np
import onnx
from botocore.config import Config

sys.path.insert(0, str(Path(__file__).resolve().parent))
import runtime_api  # noqa: E402
from bench_cold_start import Abort, free_port, machine, manifest_for, wait_for_port  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PEER = ROOT / "scripts" / "peer_onnxruntime_server.py"
EXAMPLE = ROOT / "scripts" / "example-store" / "models" / "iris" / "1" / "model.onnx"
BUCKET, PREFIX = "bench", "registry"
MIB = 1 << 20
# Lambda's published arm64 price (us-east-1), an input of the cost table.
PRICE_GB_S, PRICE_REQUEST = 0.0000133334, 0.20 / 1e6
LAMBDA_MEMORY_MB = [128, 256, 512, 1024, 1536, 2048, 3008, 4096, 6144, 8192, 10240]
COST_SERVER = "moto"  # whose cold starts the cost table uses
SECTION_START, SECTION_END = "<!-- bench.sh: start -->", "<!-- bench.sh: end -->"


@dataclass
class Model:
    label: str   # small / medium / large
    name: str    # registry name
    data: bytes
    events: dict = field(default_factory=dict)  # batch -> event bytes

    def request(self, batch: int) -> dict:
        """An OIP request of `batch` rows of seeded uniform inputs."""
        graph = onnx.load_from_string(self.data).graph
        inits = {i.name for i in graph.initializer}
        rng = np.random.default_rng(batch)
        inputs = []
        for value in graph.input:
            if value.name in inits:
                continue
            dims = [d.dim_value or batch for d in value.type.tensor_type.shape.dim]
            dims[0] = batch
            data = rng.uniform(-1, 1, size=dims).astype(np.float32)
            inputs.append({"name": value.name, "shape": dims, "datatype": "FP32",
                           "data": [round(float(x), 4) for x in data.reshape(-1)]})
        return {"inputs": inputs}

    def event(self, batch: int) -> bytes:
        """The API Gateway HTTP API event of tests/events/predict-infer.json for this request."""
        if batch not in self.events:
            event = json.loads((ROOT / "tests" / "events" / "predict-infer.json").read_text())
            path = f"/v2/models/{self.name}/infer"
            event.update(rawPath=path, body=json.dumps(self.request(batch)), isBase64Encoded=False)
            event["requestContext"]["http"]["path"] = path
            self.events[batch] = json.dumps(event).encode()
        return self.events[batch]


KEY = "S3RVER"  # s3rver checks signatures against this key pair; moto takes any


@dataclass
class S3Server:
    name: str
    proc: subprocess.Popen
    endpoint: str

    @staticmethod
    def start(name: str, work: Path, s3rver: Path | None = None) -> "S3Server":
        port = free_port()
        if name == "moto":
            argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
        else:
            data = work / "s3rver-data"
            data.mkdir()
            argv = [str(s3rver), "-d", str(data), "-a", "127.0.0.1", "-p", str(port), "--configure-bucket", BUCKET]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(port, proc, name)
        return S3Server(name, proc, f"http://127.0.0.1:{port}")

    def client(self):
        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=KEY, aws_secret_access_key=KEY,
                            config=Config(s3={"addressing_style": "path"}))


class RuntimeApi:
    """scripts/runtime_api.py on a thread of this process, noting when each function first
    asks for an event (the end of its init)."""

    def __init__(self) -> None:
        self.first_next: dict[str, float] = {}
        outer = self

        class Timed(runtime_api.RuntimeApi):
            async def route(self, method, path, headers, body, writer):
                match = runtime_api.RUNTIME.match(path)
                if method == "GET" and match and match["next"]:
                    outer.first_next.setdefault(match["name"], time.perf_counter())
                await super().route(method, path, headers, body, writer)

        self.port = free_port()
        ready = threading.Event()

        async def serve() -> None:
            api = Timed(nagle=False, stream_event=False)
            server = await asyncio.start_server(api.serve, "127.0.0.1", self.port, limit=8 << 20)
            ready.set()
            async with server:
                await server.serve_forever()

        threading.Thread(target=lambda: asyncio.run(serve()), daemon=True).start()
        ready.wait(10)

    def invoke(self, function: str, event: bytes) -> tuple[dict, float]:
        """One invocation on a fresh connection; the function's answer and the seconds taken."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        started = time.perf_counter()
        conn.request("POST", f"/2015-03-31/functions/{function}/invocations", event,
                     {"content-type": "application/json"})
        response = conn.getresponse()
        body = response.read()
        took = time.perf_counter() - started
        conn.close()
        if response.status != 200:
            raise Abort(f"{function}: invocation status {response.status}: {body[:300]!r}")
        answer = json.loads(body)
        if answer.get("statusCode") != 200:
            raise Abort(f"{function}: HTTP {answer.get('statusCode')}: {str(answer)[:300]}")
        return json.loads(answer["body"]), took


@dataclass
class Side:
    name: str
    cold: dict = field(default_factory=dict)      # model label -> [per-run dict]
    warm: dict = field(default_factory=dict)      # (label, batch) -> [seconds]
    overhead: dict = field(default_factory=dict)  # (label, batch) -> [warm - infer_ms, seconds]
    answers: dict = field(default_factory=dict)   # (label, batch) -> outputs


def logged(log: str) -> dict[str, float]:
    """maas's JSON log fields: the first request's `request` line and the load lines."""
    found: dict[str, float] = {}
    for line in log.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        fields = record.get("fields", {}) if isinstance(record, dict) else {}
        message = fields.get("message")
        if message in ("request", "model loaded", "model downloaded"):
            for key, value in fields.items():
                if key.endswith("_ms") and isinstance(value, (int, float)):
                    found.setdefault(f"{message}.{key}", float(value))
    return found


def request_lines(log: str) -> list[dict]:
    lines = []
    for line in log.splitlines():
        try:
            fields = json.loads(line).get("fields", {})
        except (ValueError, AttributeError):
            continue
        if fields.get("message") == "request":
            lines.append(fields)
    return lines


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path):
        self.args, self.work = args, work
        self.server: S3Server | None = None
        self.api = RuntimeApi()
        self.count = 0
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MAAS_"))}
        self.env.update(AWS_ACCESS_KEY_ID=KEY, AWS_SECRET_ACCESS_KEY=KEY,
                        AWS_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true",
                        MAAS_S3_FORCE_PATH_STYLE="true", RUST_LOG="info", NO_COLOR="1",
                        AWS_LAMBDA_FUNCTION_MEMORY_SIZE="3008", AWS_LAMBDA_FUNCTION_VERSION="$LATEST",
                        OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", ""))
        if not self.env["OMP_NUM_THREADS"]:
            del self.env["OMP_NUM_THREADS"]

    def use(self, server: S3Server, models: list[Model]) -> None:
        """Points both sides at `server` and publishes the models there."""
        self.server = server
        self.env["AWS_ENDPOINT_URL"] = server.endpoint
        s3 = server.client()
        if server.name == "moto":
            s3.create_bucket(Bucket=BUCKET)
        for model in models:
            self.publish(s3, model)

    def publish(self, s3, model: Model) -> None:
        base = f"{PREFIX}/models/{model.name}"
        s3.put_object(Bucket=BUCKET, Key=f"{base}/1/model.onnx", Body=model.data)
        s3.put_object(Bucket=BUCKET, Key=f"{base}/1/manifest.json", Body=manifest_for(model.name, model.data))
        s3.put_object(Bucket=BUCKET, Key=f"{base}/latest", Body=b'{"version": 1}')

    def start(self, side: str, model: Model, extra: dict[str, str]) -> tuple[str, subprocess.Popen, Path, float]:
        self.count += 1
        function = f"{side}-{model.name}-{self.count}"
        cache = Path(tempfile.mkdtemp(prefix=f"{function}-", dir=self.work))
        log = self.work / f"{function}.log"
        env = {**self.env, **extra, "AWS_LAMBDA_FUNCTION_NAME": function, "MAAS_CACHE_DIR": str(cache),
               "MAAS_STORE": f"s3://{BUCKET}/{PREFIX}",
               "AWS_LAMBDA_RUNTIME_API": f"http://127.0.0.1:{self.api.port}/.rt/{function}"}
        if side == "maas":
            argv = [str(self.args.binary)]
        else:
            argv = [sys.executable, str(PEER), "--lambda", "--store", f"s3://{BUCKET}/{PREFIX}",
                    "--model", model.name, "--version", "1", "--cache-dir", str(cache)]
        with open(log, "wb") as out:
            started = time.perf_counter()
            proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=self.work)
        return function, proc, log, started

    def cold_run(self, side: Side, model: Model, batches: list[int], warm: int,
                 extra: dict[str, str] | None = None) -> dict:
        """One cold start of `side` on `model` (first invocation at batches[0]), then `warm`
        invocations per batch size; maas's log fields, peak RSS and the S3 server's CPU."""
        key = "maas" if side.name.startswith("maas") else "peer"
        server_cpu = cpu_seconds(self.server.proc.pid)
        function, proc, log, started = self.start(key, model, extra or {})
        try:
            try:
                outputs, _ = self.api.invoke(function, model.event(batches[0]))
            except TimeoutError as err:
                raise Abort(f"{function} did not answer: {log.read_text(errors='replace')[-2000:]}") from err
            cold = time.perf_counter() - started
            run = {"cold": cold, "init": self.api.first_next[function] - started,
                   "server_cpu": cpu_seconds(self.server.proc.pid) - server_cpu}
            side.answers.setdefault((model.label, batches[0]), outputs)
            for batch in batches:
                event = model.event(batch)
                for _ in range(warm):
                    outputs, took = self.api.invoke(function, event)
                    side.warm.setdefault((model.label, batch), []).append(took)
                side.answers.setdefault((model.label, batch), outputs)
            run["rss"] = peak_rss_mib(proc.pid)
            run["cpu"] = cpu_seconds(proc.pid)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        text = log.read_text(errors="replace")
        if key == "maas":
            run.update(logged(text))
        if key == "maas" and warm:
            # Handler overhead: each warm invocation minus its logged inference, in order.
            warm_lines = request_lines(text)[1:]
            taken = [t for b in batches for t in side.warm[(model.label, b)][-warm:]]
            for fields, took, batch in zip(warm_lines, taken, [b for b in batches for _ in range(warm)]):
                side.overhead.setdefault((model.label, batch), []).append(took - fields.get("infer_ms", 0) / 1000)
        side.cold.setdefault((self.server.name, model.label), []).append(run)
        return run


def median(values) -> float:
    values = list(values)
    return statistics.median(values) if values else float("nan")


def spread(values, scale: float = 1000, digits: int = 1) -> str:
    values = list(values)
    if not values:
        return "-"
    return f"{statistics.median(values) * scale:.{digits}f} ({min(values) * scale:.{digits}f}-{max(values) * scale:.{digits}f})"


def compare_answers(maas: Side, peer: Side) -> None:
    for key, want in peer.answers.items():
        got = maas.answers.get(key)
        if got is None:
            continue
        for a, b in zip(got["outputs"], want["outputs"]):
            if a["shape"] != b["shape"] or not np.allclose(a["data"], b["data"], rtol=1e-3, atol=1e-3):
                raise Abort(f"{key}: maas's {a['name']} differs from the peer's")


def zip_size(paths: list[tuple[Path, str]]) -> int:
    """Bytes of a deflated zip of (path, name in the zip) entries; directories recursively."""
    target = Path(tempfile.mktemp(suffix=".zip"))
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as z:
        for path, name in paths:
            if path.is_dir():
                for file in sorted(path.rglob("*")):
                    if file.is_file() and "__pycache__" not in file.parts:
                        z.write(file, f"{name}/{file.relative_to(path)}")
            elif path.exists():
                z.write(path, name)
    size = target.stat().st_size
    target.unlink()
    return size


def package_sizes(args: argparse.Namespace) -> list[str]:
    rows = []
    for binary in args.zip_binaries:
        path = Path(binary)
        rows.append((f"maas `{path.name}` ({args.zip_arch}, `bootstrap` zipped as cargo lambda does)",
                     zip_size([(path, "bootstrap")]), path.stat().st_size))
    site = Path(np.__file__).resolve().parent.parent
    names = ["onnxruntime", "numpy", "numpy.libs", "boto3", "botocore", "s3transfer", "jmespath",
             "dateutil", "urllib3", "six.py"]
    peer = [(PEER, "handler.py"), *((site / n, n) for n in names)]
    unzipped = sum(f.stat().st_size for p, _ in peer if p.exists()
                   for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file())
    rows.append(("peer: handler + onnxruntime + numpy + boto3 (x86_64 wheels, as a layer holds them)",
                 zip_size(peer), unzipped))
    peer_zip = rows[-1][1]
    lines = ["| package | zip (MiB) | unzipped (MiB) | zip vs peer |", "|---|---|---|---|"]
    for name, zipped, raw in rows:
        lines.append(f"| {name} | {zipped / MIB:.1f} | {raw / MIB:.1f} | {zipped / peer_zip:.3f} |")
    return lines


def lambda_memory(rss_mib: float) -> int:
    """The smallest common Lambda memory size that holds the peak RSS with 20% to spare."""
    return next((m for m in LAMBDA_MEMORY_MB if m >= rss_mib * 1.2), LAMBDA_MEMORY_MB[-1])


def report(args, sides: list[Side], models: list[Model], fetch: dict, packages: list[str]) -> str:
    maas, peer = sides
    out = [f"Command: `{args.command}`", "",
           f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load average before the run "
           f"{args.load_before}, after {os.getloadavg()[0]:.2f} (other developers share the machine: "
           "timings are noisy).", "",
           f"Machine: {machine()}", "",
           f"maas: `{args.binary}` ({Path(args.binary).stat().st_size / MIB:.1f} MiB), commit "
           f"{subprocess.run(['git', 'rev-parse', '--short=12', 'HEAD'], capture_output=True, text=True, cwd=ROOT).stdout.strip()}; "
           f"peer: Python {sys.version.split()[0]}, onnxruntime {__import__('onnxruntime').__version__}, "
           f"boto3 {boto3.__version__}. Both with AWS_LAMBDA_FUNCTION_MEMORY_SIZE=3008, under "
           f"scripts/runtime_api.py; {args.runs} runs per side, size and S3 server (after one "
           "discarded warm-up), median (min-max), ms.", "",
           "### 1. Cold start, process start to first answer (weights fetched from S3)", "",
           "Both sides against the same server: moto (the test server; it copies the whole object "
           "for every ranged GET, so maas fetches in one GET there, `MAAS_FETCH_PART_BYTES` above "
           "the file, while boto3's `download_file` still splits files over 8 MB into ranged parts), "
           "and s3rver (npm, serves ranges from files; both sides with their defaults).", "",
           "| server | model | size | maas | peer | peer / maas | maas: init | resolve | fetch | "
           "engine (load+optimise) | first inference | sum of parts / whole |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (server, label), runs in maas.cold.items():
        model = next(m for m in models if m.label == label)
        theirs = peer.cold[(server, label)]
        part = lambda key: median(r.get(key, float("nan")) for r in runs)  # noqa: E731
        init = median(r["init"] for r in runs) * 1000
        parts = [init, part("request.resolve_ms"), part("model loaded.fetch_ms"),
                 part("model loaded.engine_ms"), part("request.infer_ms")]
        whole = median(r["cold"] for r in runs) * 1000
        out.append(f"| {server} | {model.label} ({model.name}) | {len(model.data) / MIB:.2f} MiB "
                   f"| {spread(r['cold'] for r in runs)} | {spread(r['cold'] for r in theirs)} "
                   f"| {median(r['cold'] for r in theirs) / median(r['cold'] for r in runs):.1f}x "
                   + "".join(f"| {p:.1f} " for p in parts) + f"| {sum(parts) / whole:.2f} |")
    out += ["", "maas's parts: init from its own start to its first `GET /next`; resolve, fetch "
            "(manifest and model, overlapped), engine and first inference from its log lines. "
            "The peer's cold start is one piece: import, boto3 download, InferenceSession at init, "
            "then the request.", "",
            "### 2. Warm invocations (through the Runtime API, fresh connection each)", "",
            "| model | batch | event (KiB) | maas | peer | maas handler overhead (warm - inference) |",
            "|---|---|---|---|---|---|"]
    for (label, batch), times in sorted(maas.warm.items(), key=lambda kv: ([m.label for m in models].index(kv[0][0]), kv[0][1])):
        model = next(m for m in models if m.label == label)
        out.append(f"| {label} | {batch} | {len(model.event(batch)) / 1024:.1f} | {spread(times, digits=2)} "
                   f"| {spread(peer.warm.get((label, batch), []), digits=2)} "
                   f"| {spread(maas.overhead.get((label, batch), []), digits=2)} |")
    out += ["", f"### 3. Fetch throughput of the {models[-1].label} model (maas)", "",
            "| server | fetch | maas download (ms) | MB/s | CPU s of the S3 server / of maas, whole cold start | "
            "maas cold start (ms) |", "|---|---|---|---|---|---|"]
    for (server, name), runs in fetch.items():
        ms = median(r.get("model downloaded.elapsed_ms", float("nan")) for r in runs)
        size = len(models[-1].data)
        out.append(f"| {server} | {name} | {ms:.0f} | {size / 1e6 / (ms / 1000):.0f} | "
                   f"{median(r['server_cpu'] for r in runs):.2f} / {median(r['cpu'] for r in runs):.2f} "
                   f"| {spread(r['cold'] for r in runs)} |")
    out += ["", "### 4. Package size", "", *packages, "",
            "### 5. Cost per million predictions (arm64 price as input: "
            f"${PRICE_GB_S} per GB-s, ${PRICE_REQUEST * 1e6:.2f} per million requests)", "",
            "Memory: the smallest Lambda size holding the measured peak RSS with 20% to spare; "
            "a cold invocation bills init and the first request (the cold start), a warm one the "
            "batch-1 warm median. Cold-heavy: 1 invocation in 10 is cold; warm-heavy: 1 in 1000.", "",
            "| model | side | peak RSS (MiB) | memory (MB) | cold (ms) | warm (ms) | cold-heavy GB-s / $ | warm-heavy GB-s / $ |",
            "|---|---|---|---|---|---|---|---|"]
    for model in models:
        for side in sides:
            runs = side.cold[(COST_SERVER, model.label)]
            rss = max(r["rss"] for r in runs)
            memory = lambda_memory(rss)
            cold = median(r["cold"] for r in runs)
            warm = median(side.warm.get((model.label, 1), [float("nan")]))
            cells = []
            for cold_share in (0.1, 0.001):
                gb_s = 1e6 * (cold_share * cold + (1 - cold_share) * warm) * memory / 1024
                cells.append(f"{gb_s:,.0f} / {gb_s * PRICE_GB_S + 1e6 * PRICE_REQUEST:.2f}")
            out.append(f"| {model.label} | {side.name} | {rss:.0f} | {memory} | {cold * 1000:.0f} "
                       f"| {warm * 1000:.2f} | {cells[0]} | {cells[1]} |")
    return "\n".join(out)


def write_section(path: Path, text: str) -> None:
    doc = path.read_text()
    block = f"{SECTION_START}\n{text}\n{SECTION_END}"
    if SECTION_START in doc:
        head, rest = doc.split(SECTION_START, 1)
        doc = head + block + rest.split(SECTION_END, 1)[1]
    else:
        doc = doc.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(doc)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--binary", type=Path, required=True, help="the predict binary")
    parser.add_argument("--models", type=Path, required=True, help="holds large_mlp.onnx, huge_mlp.onnx")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--warm", type=int, default=10, help="warm invocations per batch size and run")
    parser.add_argument("--smoke", action="store_true", help="small model, one run: checks, no timings")
    parser.add_argument("--zip", dest="zip_binaries", nargs="*", default=[], help="binaries to zip")
    parser.add_argument("--zip-arch", default="x86_64")
    parser.add_argument("--s3rver", type=Path, help="s3rver's executable: a second S3 server beside moto")
    parser.add_argument("--maas-env", action="append", default=[], metavar="NAME=VALUE",
                        help="an environment variable for maas's side only (repeatable)")
    parser.add_argument("--out", type=Path, help="write the section of this Markdown file")
    parser.add_argument("--command", default=shlex.join(["scripts/bench_lambda.py", *sys.argv[1:]]),
                        help="the command to report (bench.sh passes its own)")
    args = parser.parse_args()
    args.load_before = f"{os.getloadavg()[0]:.2f}"
    args.binary = args.binary.resolve()
    small = Model("small", "iris", EXAMPLE.read_bytes())
    models = [small] if args.smoke else [
        small, Model("medium", "large_mlp", (args.models / "large_mlp.onnx").read_bytes()),
        Model("large", "huge_mlp", (args.models / "huge_mlp.onnx").read_bytes())]
    runs = 1 if args.smoke else args.runs
    warm = 2 if args.smoke else args.warm
    batches = [1, 32]
    sides = [Side("maas predict (Rust, tract)"), Side("peer: Python + onnxruntime")]
    servers: list[S3Server] = []
    with tempfile.TemporaryDirectory(prefix="maas-bench-") as tmp:
        work = Path(tmp)
        try:
            servers.append(S3Server.start("moto", work))
            if args.s3rver:
                servers.append(S3Server.start("s3rver", work, args.s3rver))
            bench = Bench(args, work)
            one_get = {"MAAS_FETCH_PART_BYTES": str(1 << 40)}
            chosen = dict(item.split("=", 1) for item in args.maas_env)
            for server in servers:
                bench.use(server, models)
                maas_env = {**chosen, **(one_get if server.name == "moto" and not args.smoke else {})}
                for model in models:
                    for run in range(runs + (0 if args.smoke else 1)):
                        order = sides if run % 2 == 0 else sides[::-1]
                        for side in order:
                            # Warm invocations on the first server only: they touch no S3.
                            n = warm if server is servers[0] else 0
                            extra = maas_env if side is sides[0] else {}
                            result = bench.cold_run(side, model, batches, n, extra)
                            if run == 0 and not args.smoke:  # warm-up: page cache, first calls
                                side.cold[(server.name, model.label)].pop()
                                for table in (side.warm, side.overhead):
                                    for key in [k for k in table if k[0] == model.label and n]:
                                        del table[key][-n:]
                            print(f"{server.name} {model.label} run {run} {side.name}: "
                                  f"cold {result['cold'] * 1000:.0f} ms", file=sys.stderr)
            compare_answers(*sides)
            large = models[-1]
            fetch = {}
            # moto answers a ranged GET after copying the whole object: long limits, to measure it.
            patient = {"MAAS_S3_ATTEMPT_TIMEOUT_MS": "120000", "MAAS_S3_OPERATION_TIMEOUT_MS": "300000",
                       "MAAS_S3_BODY_IDLE_TIMEOUT_MS": "120000"}
            parts = {"MAAS_FETCH_PART_BYTES": "1024"} if args.smoke else {}
            for server in servers:
                bench.use(server, [])
                variants = {"one GET": one_get,
                            "parallel ranged GETs (defaults: 8 MiB x 8)" if not args.smoke
                            else "ranged, 1 KiB x 8": {**parts, **patient}}
                for name, extra in variants.items():
                    scratch = Side(sides[0].name)
                    for _ in range(min(runs, 3)):
                        bench.cold_run(scratch, large, [1], 0, extra)
                    fetch[(server.name, name)] = scratch.cold[(server.name, large.label)]
                    took = median(r.get("model downloaded.elapsed_ms", float("nan"))
                                  for r in fetch[(server.name, name)])
                    print(f"fetch {server.name} {name}: {took:.0f} ms", file=sys.stderr)
            packages = package_sizes(args) if args.zip_binaries else []
            text = report(args, sides, models, fetch, packages)
        except Abort as err:
            print(f"aborted: {err}", file=sys.stderr)
            return 1
        finally:
            for server in servers:
                server.proc.kill()
                server.proc.wait()
    if args.smoke:
        for side in sides:
            if not side.cold.get(("moto", "small")) or not side.warm.get(("small", 32)):
                print(f"smoke: {side.name} measured nothing", file=sys.stderr)
                return 1
        if any(not runs or "model downloaded.elapsed_ms" not in runs[0] for runs in fetch.values()):
            print("smoke: a fetch variant logged no download", file=sys.stderr)
            return 1
    if args.out:
        write_section(args.out, text)
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
