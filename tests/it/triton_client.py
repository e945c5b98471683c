#!/usr/bin/env python3
"""Drives a running `predict serve` with the official Triton HTTP client (tritonclient[http]),
as a user would: liveness, server and model metadata, and inference with the client's defaults
(binary inputs and outputs), with JSON inputs and outputs, with output selection mixing
both, and with compressed (gzip, deflate) request bodies. Every answer is checked against onnxruntime's (the reference cases written by
scripts/make_models.py): floats within 1e-4 relative (absolute below 1), the rest equal.

    triton_client.py ADDRESS CASES_JSON MODEL...

Run by tests/it/triton_client.rs. Prints one JSON line per request with what was sent and
got (headers and sizes); exits non-zero with the reason on the first mismatch.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

TOLERANCE = 1e-4
NUMPY = {"FP32": np.float32, "FP16": np.float16, "INT64": np.int64, "BYTES": np.object_}


def array(tensor: dict) -> np.ndarray:
    """A reference tensor as the numpy array a user would pass (strings as bytes objects)."""
    if tensor["datatype"] == "BYTES":
        data = [s.encode() for s in tensor["data"]]
    else:
        data = tensor["data"]
    return np.array(data, dtype=NUMPY[tensor["datatype"]]).reshape(tensor["shape"])


def check(what: str, got: np.ndarray | None, expected: dict) -> None:
    want = array(expected)
    if got is None:
        sys.exit(f"{what}: output {expected['name']} missing")
    if list(got.shape) != expected["shape"]:
        sys.exit(f"{what}: output {expected['name']} has shape {got.shape}, expected {expected['shape']}")
    if expected["datatype"] == "BYTES":
        # Binary outputs come back as bytes, JSON ones as str.
        as_bytes = [v if isinstance(v, bytes) else v.encode() for v in got.reshape(-1)]
        if as_bytes != list(want.reshape(-1)):
            sys.exit(f"{what}: {expected['name']} is {got.tolist()}, expected {expected['data']}")
        return
    if got.dtype != want.dtype:
        sys.exit(f"{what}: {expected['name']} is {got.dtype}, expected {want.dtype}")
    got64, want64 = got.astype(np.float64), want.astype(np.float64)
    worst = np.max(np.abs(got64 - want64) / np.maximum(1.0, np.abs(want64)))
    if worst > (TOLERANCE if np.issubdtype(want.dtype, np.floating) else 0):
        sys.exit(f"{what}: {expected['name']} differs by {worst}: {got.tolist()} vs {expected['data']}")


def infer(client: httpclient.InferenceServerClient, case: dict, binary_inputs: bool,
          outputs: list[tuple[str, bool]] | None, compression: str | None = None) -> None:
    """One inference; `outputs` None leaves the client's default (every output, binary),
    else each (name, binary) is asked for. `compression` compresses the request body (and asks
    for a compressed response, which maas does not send: the client must cope)."""
    inputs = []
    for tensor in case["inputs"]:
        given = httpclient.InferInput(tensor["name"], tensor["shape"], tensor["datatype"])
        given.set_data_from_numpy(array(tensor), binary_data=binary_inputs)
        inputs.append(given)
    requested = None if outputs is None else [
        httpclient.InferRequestedOutput(name, binary_data=binary) for name, binary in outputs]
    body, header_length = httpclient.InferenceServerClient.generate_request_body(
        inputs, outputs=requested)
    result = client.infer(case["model"], inputs, outputs=requested,
                          request_compression_algorithm=compression,
                          response_compression_algorithm=compression)
    response = result.get_response()
    what = (f"{case['model']} batch {case['batch']} binary inputs {binary_inputs} outputs {outputs}"
            f" compression {compression}")
    expected = {o["name"]: o for o in case["outputs"]}
    names = [name for name, _ in outputs] if outputs is not None else list(expected)
    if [o["name"] for o in response["outputs"]] != names:
        sys.exit(f"{what}: got outputs {[o['name'] for o in response['outputs']]}, asked {names}")
    for output in response["outputs"]:
        binary = "binary_data_size" in output.get("parameters", {})
        wanted = True if outputs is None else dict(outputs)[output["name"]]
        if binary != wanted or ("data" in output) == wanted:
            sys.exit(f"{what}: output {output['name']} came back {'binary' if binary else 'as JSON'}")
        check(what, result.as_numpy(output["name"]), expected[output["name"]])
    print(json.dumps({
        "model": case["model"], "batch": case["batch"], "binary_inputs": binary_inputs,
        "outputs": "default" if outputs is None else outputs, "compression": compression,
        "sent": {"body_bytes": len(body), "inference_header_content_length": header_length},
        "got": {"header": response, "binary_outputs": [
            o["name"] for o in response["outputs"] if "binary_data_size" in o.get("parameters", {})]},
    }))


def main() -> None:
    address, cases_path, *models = sys.argv[1:]
    cases = [c for c in json.load(open(cases_path)) if c["model"] in models]
    if {c["model"] for c in cases} != set(models):
        sys.exit(f"no reference cases for {set(models) - {c['model'] for c in cases}}")
    client = httpclient.InferenceServerClient(address)
    if not client.is_server_live() or not client.is_server_ready():
        sys.exit("server not live and ready")
    server = client.get_server_metadata()
    if "binary_tensor_data" not in server["extensions"]:
        sys.exit(f"binary_tensor_data not advertised: {server}")
    for model in models:
        if not client.is_model_ready(model):
            sys.exit(f"{model} is not ready")
        metadata = client.get_model_metadata(model)
        reference = next(c for c in cases if c["model"] == model)
        declared = {i["name"]: i["datatype"] for i in metadata["inputs"]}
        if declared != {i["name"]: i["datatype"] for i in reference["inputs"]}:
            sys.exit(f"{model} metadata inputs {metadata['inputs']} differ from the reference's")
    for case in cases:
        infer(client, case, binary_inputs=True, outputs=None)
        names = [o["name"] for o in case["outputs"]]
        infer(client, case, binary_inputs=False, outputs=[(n, False) for n in names])
        # Output selection: the last output alone, then all in reverse order mixing forms.
        infer(client, case, binary_inputs=True, outputs=[(names[-1], False)])
        infer(client, case, binary_inputs=False,
              outputs=[(n, i % 2 == 0) for i, n in enumerate(reversed(names))])
        for compression in ("gzip", "deflate"):
            infer(client, case, binary_inputs=True, outputs=None, compression=compression)
    # A mistake comes back as the client's exception with maas's message.
    case = cases[0]
    wrong = httpclient.InferInput(case["inputs"][0]["name"], [1, 1], "FP64")
    wrong.set_data_from_numpy(np.zeros((1, 1), np.float64))
    try:
        client.infer(case["model"], [wrong])
    except InferenceServerException as err:
        print(json.dumps({"error": str(err)}))
        if "FP64" not in str(err):
            sys.exit(f"the error does not name the datatype: {err}")
    else:
        sys.exit("an FP64 input was accepted")
    print(f"tritonclient: {len(cases) * 6 + 1} requests answered as expected")


if __name__ == "__main__":
    main()
