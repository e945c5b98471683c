#!/usr/bin/env python3
"""Checks the running predict and model-upload servers against functions/openapi.yaml.

1. Sends the document's `x-maas-reach` requests in order: each must get its status, the
   status must be documented for its operation, and the body must match the documented
   schema; and every documented (operation, status) must be reached by one of them.
2. Runs schemathesis (property-based requests from the document) against each API: no 5xx,
   every status documented, every response conforming to its schema and content type.

Usage: check_openapi.py --spec functions/openapi.yaml --model iris.onnx --max-model-bytes N
         --server predict=URL --server upload=URL --server predict-down=URL
         --server upload-down=URL [--examples N]
Exits 1 with every problem listed.
"""

import argparse
import copy
import gzip
import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import jsonschema
import yaml


def resolve(node, root):
    """`node` with every local `$ref` replaced by what it points to."""
    if isinstance(node, dict):
        if "$ref" in node:
            target = root
            for part in node["$ref"].lstrip("#/").split("/"):
                target = target[part]
            return resolve(copy.deepcopy(target), root)
        return {key: resolve(value, root) for key, value in node.items()}
    if isinstance(node, list):
        return [resolve(item, root) for item in node]
    return node


def operations(spec):
    """(method, template, regex, operation) for every documented operation, static paths
    before templated ones so `/v2/models/stats` is not taken for `/v2/models/{name}`."""
    found = []
    for template, item in spec["paths"].items():
        pattern = "^" + re.sub(r"\{[^}]+\}", "[^/]+", template) + "$"
        for method, operation in item.items():
            if method in ("get", "post", "put", "delete"):
                found.append((method.upper(), template, re.compile(pattern), operation))
    return sorted(found, key=lambda op: op[1].count("{"))


def find_operation(ops, method, path):
    for op in ops:
        if op[0] == method and op[2].match(path):
            return op
    return None


def body_of(options, args):
    """The bytes and content type a step sends."""
    if "json" in options:
        return json.dumps(options["json"]).encode(), "application/json"
    if "rows" in options:
        rows = [[5.1, 3.5, 1.4, 0.2 + 0.1 * (i % 7)] for i in range(options["rows"])]
        request = {"inputs": [{"name": "float_input", "shape": [len(rows), 4], "datatype": "FP32", "data": rows}]}
        return json.dumps(request).encode(), "application/json"
    if "tf_rows" in options:
        rows = [[5.1, 3.5, 1.4, 0.2 + 0.1 * (i % 7)] for i in range(options["tf_rows"])]
        return json.dumps({"instances": rows}).encode(), "application/json"
    if options.get("file"):
        return Path(args.model).read_bytes(), "application/octet-stream"
    if options.get("garbage"):
        return b"this is not an ONNX file" * 8, "application/octet-stream"
    if options.get("oversize"):
        return b"\0" * (args.max_model_bytes + 1), "application/octet-stream"
    return None, None


def encode(body, encoding):
    """`body` sent with `Content-Encoding: encoding`: compressed for gzip and deflate, as it is
    for encodings maas refuses anyway."""
    if encoding == "gzip":
        return gzip.compress(body)
    if encoding == "deflate":
        return zlib.compress(body)
    return body


def send(url, method, body, content_type, encoding=None):
    request = urllib.request.Request(url, data=body, method=method)
    if content_type:
        request.add_header("content-type", content_type)
    if encoding:
        request.add_header("content-encoding", encoding)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def substitute(text, saved):
    return re.sub(r"\{(\w+)\.(\w+)\}", lambda m: str(saved[m.group(1)][m.group(2)]), text)


def reach(spec, args, servers):
    ops = operations(spec)
    reached, problems, saved = set(), [], {}
    for step in spec["x-maas-reach"]:
        server, method, path, status = step[:4]
        options = step[4] if len(step) > 4 else {}
        path = substitute(path, saved)
        body, content_type = body_of(options, args)
        encoding = options.get("encoding")
        if encoding:
            body = encode(body, encoding)
        url = path if server == "presigned" else servers[server] + path
        got, headers, answer = send(url, method, body, content_type, encoding)
        label = f"{server} {method} {path}"
        if got != status:
            problems.append(f"{label}: got {got}, expected {status}: {answer[:300]!r}")
            continue
        if "save" in options:
            saved[options["save"]] = json.loads(answer)
        if server == "presigned":
            continue
        op = find_operation(ops, method, path)
        if op is None:
            problems.append(f"{label}: no documented operation")
            continue
        response = op[3]["responses"].get(str(status))
        if response is None:
            problems.append(f"{label}: status {status} is not documented for {method} {op[1]}")
            continue
        reached.add((method, op[1], str(status)))
        media = response.get("content", {}).get("application/json")
        if media is not None:
            if not headers.get("content-type", "").startswith("application/json"):
                problems.append(f"{label}: content-type {headers.get('content-type')}")
                continue
            try:
                jsonschema.validate(json.loads(answer), media["schema"])
            except (ValueError, jsonschema.ValidationError) as error:
                problems.append(f"{label}: the answer does not match the document: {error}")
        if "Retry-After" in response.get("headers", {}) and not headers.get("retry-after"):
            problems.append(f"{label}: no Retry-After header")
    for method, template, _, operation in ops:
        for status in operation["responses"]:
            if (method, template, status) not in reached:
                problems.append(f"{method} {template} {status}: documented, never reached")
    print(f"{len(spec['x-maas-reach'])} requests sent, {len(reached)} documented statuses reached")
    return problems


def fuzz(args, servers):
    """schemathesis against each API; its exit status says whether a check failed."""
    problems = []
    for server, paths in (("predict", "^/v[12]"), ("upload", "^/models")):
        command = [
            str(Path(sys.executable).parent / "schemathesis"), "run", args.spec,
            "--url", servers[server], "--include-path-regex", paths,
            "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            "--phases", "examples,coverage,fuzzing", "--max-examples", str(args.examples),
            "--workers", "1", "--suppress-health-check", "all", "--seed", "1",
            # Deliberate 501s (no tf.Example signatures): checked by the reach requests,
            # while schemathesis's first check refuses every 5xx.
            "--exclude-operation-id", "tfClassify", "--exclude-operation-id", "tfRegress",
        ]
        print("+", " ".join(command), flush=True)
        if subprocess.run(command).returncode != 0:
            problems.append(f"schemathesis found problems in the {server} API (output above)")
    return problems


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spec", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--max-model-bytes", type=int, required=True)
    parser.add_argument("--server", action="append", default=[], help="NAME=URL")
    parser.add_argument("--examples", type=int, default=20)
    parser.add_argument("--no-fuzz", action="store_true")
    args = parser.parse_args()
    servers = dict(entry.split("=", 1) for entry in args.server)
    raw = yaml.safe_load(Path(args.spec).read_text())
    spec = resolve(raw, raw)
    problems = reach(spec, args, servers)
    if not args.no_fuzz:
        problems += fuzz(args, servers)
    for problem in problems:
        print("PROBLEM:", problem)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
