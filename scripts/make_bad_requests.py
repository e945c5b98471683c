#!/usr/bin/env python3
"""Writes tests/bad_requests/cases.jsonl: hostile requests to the predict and model-upload
handlers, each with the status it must get and a piece of the `{"error": ...}` message.

Usage: scripts/make_bad_requests.py [--out tests/bad_requests/cases.jsonl]

One JSON object per line:
  id           unique, `function/category/what`
  function     "predict" or "model-upload"
  method, path as API Gateway passes them (`rawPath`; `requestContext.http.method`)
  headers      optional header map
  body         optional text body
  body_base64  optional body sent with `isBase64Encoded: true`, exactly as written here
               (it may be garbage that is not base64 at all)
  body_fill    optional {"byte": "x", "count": n, "base64": bool}: a body of n copies of
               one character, made by the test (too large to commit)
  status       the exact status expected (always 4xx)
  error        a substring the error message must contain

The test (tests/it/bad_requests.rs) publishes `iris` (the example model), `mlp` and `cnn`
(from scripts/make_models.py) to a fresh bucket of the moto server and runs every case
through the same API Gateway event conversion as the Lambda runtime, then the handler.
Output is deterministic; re-run after editing and commit the result.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import json
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IRIS = ROOT / "scripts/example-store/models/iris/1/model.onnx"
REQUEST_LIMIT = 6 << 20
# The model-upload limit the test configures (the default, 512 MiB, is past any Lambda payload).
MODEL_LIMIT = 1 << 20

cases: list[dict] = []


def case(function: str, category: str, what: str, method: str, path: str, status: int,
         error: str, *, body: str | None = None, body_base64: str | None = None,
         body_fill: dict | None = None, headers: dict | None = None) -> None:
    entry = {"id": f"{function}/{category}/{what}", "function": function, "method": method,
             "path": path}
    if headers:
        entry["headers"] = headers
    if body is not None:
        entry["body"] = body
    if body_base64 is not None:
        entry["body_base64"] = body_base64
    if body_fill is not None:
        entry["body_fill"] = body_fill
    entry.update(status=status, error=error)
    assert 400 <= status < 500, entry
    cases.append(entry)


JSON = {"content-type": "application/json"}
INFER = "/v2/models/iris/infer"


def predict(category: str, what: str, body, status: int, error: str, *, path: str = INFER,
            method: str = "POST") -> None:
    """A predict case whose body is given as text, or as a JSON value to serialise."""
    text = body if isinstance(body, str) or body is None else json.dumps(body)
    case("predict", category, what, method, path, status, error, body=text, headers=JSON)


def iris(shape, data, datatype: str = "FP32", name: str = "float_input", **extra) -> dict:
    return {"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": data, **extra}]}


ROW = [[5.1, 3.5, 1.4, 0.2]]
BODY = "invalid request body"

# ------------------------------------------------------------------ predict: binary tensors
BINARY_HEADER = json.dumps({"inputs": [{"name": "float_input", "shape": [1, 4], "datatype": "FP32",
                                        "parameters": {"binary_data_size": 16}}]})
for what, length, data, error in [
    ("header-past-body", len(BINARY_HEADER) + 17, bytes(16), "but the body has only"),
    ("header-not-a-number", "twelve", bytes(16), "Inference-Header-Content-Length must be a byte count"),
    ("short-data", len(BINARY_HEADER), bytes(12), "binary_data_size is 16 but only 12 bytes"),
    ("extra-data", len(BINARY_HEADER), bytes(20), "4 bytes of binary data follow"),
    ("header-cuts-json", len(BINARY_HEADER) - 1, bytes(16), BODY),
]:
    body = BINARY_HEADER.encode() + data
    case("predict", "binary", what, "POST", INFER, 400, error,
         body_base64=base64.b64encode(body).decode(),
         headers={"content-type": "application/octet-stream",
                  "inference-header-content-length": str(length)})

# ------------------------------------------------------------------ predict: structure
for what, text, error in [
    ("empty", None, "EOF while parsing"),
    ("whitespace", "   \n\t ", "EOF while parsing"),
    ("not-json", "not json", "expected ident"),
    ("truncated", '{"inputs": [', "EOF while parsing"),
    ("null", "null", "expected struct InferRequest"),
    ("array", "[]", "expected struct InferRequest"),
    ("string", '"inputs"', "expected struct InferRequest"),
    ("number", "42", "expected struct InferRequest"),
    ("bool", "true", "expected struct InferRequest"),
    ("empty-object", "{}", "missing field `inputs`"),
    ("inputs-null", '{"inputs": null}', "invalid type: null, expected a sequence"),
    ("inputs-object", '{"inputs": {}}', "expected a sequence"),
    ("inputs-string", '{"inputs": "x"}', "expected a sequence"),
    ("inputs-number", '{"inputs": 1}', "expected a sequence"),
    ("input-number", '{"inputs": [1]}', "expected struct RequestInput"),
    ("input-null", '{"inputs": [null]}', "expected struct RequestInput"),
    ("input-empty", '{"inputs": [{}]}', "missing field `name`"),
    ("input-no-shape", '{"inputs": [{"name": "float_input", "datatype": "FP32", "data": [1, 2, 3, 4]}]}', "missing field `shape`"),
    ("input-no-datatype", '{"inputs": [{"name": "float_input", "shape": [1, 4], "data": [1, 2, 3, 4]}]}', "missing field `datatype`"),
    ("input-no-data", '{"inputs": [{"name": "float_input", "shape": [1, 4], "datatype": "FP32"}]}',
     "has neither data (a JSON array) nor binary_data_size"),
    ("trailing-garbage", json.dumps(iris([1, 4], ROW)) + " x", "trailing characters"),
    ("two-documents", json.dumps(iris([1, 4], ROW)) * 2, "trailing characters"),
    ("trailing-comma", '{"inputs": [],}', "trailing comma"),
    ("single-quotes", "{'inputs': []}", "key must be a string"),
    ("comment", '{"inputs": [] /* no */}', "expected"),
    # NaN, Infinity and -Infinity are accepted (as Python's json writes them); other spellings are not.
    ("nan-lowercase", json.dumps(iris([1, 4], [[1, 2, 3, 4]])).replace("4]]", "nan]]"), "expected ident"),
    ("infinity-abbreviated", json.dumps(iris([1, 4], [[1, 2, 3, 4]])).replace("4]]", "inf]]"), "expected value"),
    ("byte-order-mark", "\ufeff" + json.dumps(iris([1, 4], ROW)), "expected value"),
    ("duplicate-inputs-key", '{"inputs": [], "inputs": []}', "duplicate field `inputs`"),
    ("duplicate-name-key", '{"inputs": [{"name": "a", "name": "b", "shape": [1], "datatype": "FP32", "data": [1]}]}', "duplicate field `name`"),
    ("unterminated-string", '{"inputs": [{"name": "float_input', "EOF while parsing"),
    ("control-character", '{"inputs": [{"name": "a\u0001b", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}', "control character"),
    ("bad-escape", '{"inputs": [{"name": "\\q", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}', "invalid escape"),
    ("lone-surrogate", '{"inputs": [{"name": "\\ud800", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}', "unexpected end of hex escape"),
    ("id-number", '{"id": 5, "inputs": []}', "expected a string"),
    ("parameters-array", '{"parameters": [], "inputs": []}', "expected a map"),
    ("outputs-object", '{"inputs": [], "outputs": {}}', "expected a sequence"),
    ("output-name-number", '{"inputs": [], "outputs": [{"name": 3}]}', "expected a string"),
    ("output-empty", '{"inputs": [], "outputs": [{}]}', "missing field `name`"),
]:
    predict("structure", what, text, 400, error)

predict("structure", "no-inputs", {"inputs": []}, 400, "input `float_input`: missing")
predict("structure", "input-twice", {"inputs": iris([1, 4], ROW)["inputs"] * 2}, 400, "given more than once")
predict("structure", "unknown-input", iris([1, 4], ROW, name="petals"), 400, "input `petals`: the model has no such input; its inputs are `float_input`")
predict("structure", "unknown-output", {**iris([1, 4], ROW), "outputs": [{"name": "scores"}]}, 400, "requested output `scores` does not exist")
predict("structure", "mlp-input-to-iris", iris([1, 16], [[0] * 16], name="x"), 400, "input `x`: the model has no such input")
predict("structure", "iris-input-to-mlp", iris([1, 4], ROW), 400, "input `float_input`: the model has no such input; its inputs are `x`", path="/v2/models/mlp/infer")

# ------------------------------------------------------------------ predict: types
for what, request, error in [
    ("name-number", {"inputs": [{"name": 5, "shape": [1, 4], "datatype": "FP32", "data": ROW}]}, "expected a string"),
    ("name-null", {"inputs": [{"name": None, "shape": [1, 4], "datatype": "FP32", "data": ROW}]}, "expected a string"),
    ("shape-string", iris("1,4", ROW), "expected a sequence"),
    ("shape-null", iris(None, ROW), "expected a sequence"),
    ("shape-object", iris({"0": 1}, ROW), "expected a sequence"),
    ("shape-string-element", iris([1, "4"], ROW), "expected i64"),
    ("shape-float-element", iris([1.5, 4], ROW), "expected i64"),
    ("shape-exponent-element", iris([1e3, 4], ROW), "expected i64"),
    ("shape-bool-element", iris([True, 4], ROW), "expected i64"),
    ("shape-null-element", iris([None, 4], ROW), "expected i64"),
    ("datatype-number", iris([1, 4], ROW, datatype=32), "expected a string"),
    ("datatype-null", iris([1, 4], ROW, datatype=None), "expected a string"),
]:
    predict("types", what, request, 400, error)

for what, datatype, error in [
    ("lowercase", "fp32", 'unknown datatype "fp32"'),
    ("float", "FLOAT", 'unknown datatype "FLOAT"'),
    ("float32", "FLOAT32", 'unknown datatype "FLOAT32"'),
    ("empty", "", 'unknown datatype ""'),
    ("padded", " FP32", 'unknown datatype " FP32"'),
    ("fp64", "FP64", "datatype is FP64 but the model expects FP32"),
    ("int64", "INT64", "datatype is INT64 but the model expects FP32"),
    ("int32", "INT32", "datatype is INT32 but the model expects FP32"),
    ("uint8", "UINT8", "datatype is UINT8 but the model expects FP32"),
    ("bool", "BOOL", "datatype is BOOL but the model expects FP32"),
    ("fp16", "FP16", "datatype is FP16 but the model expects FP32"),
    ("bytes", "BYTES", "datatype is BYTES but the model expects FP32"),
]:
    predict("types", f"datatype-{what}", iris([1, 4], ROW, datatype=datatype), 400, error)

for what, data, error in [
    ("string", "5.1,3.5,1.4,0.2", "data must be a JSON array"),
    ("object", {"0": 5.1}, "data must be a JSON array"),
    ("null", None, "has neither data (a JSON array) nor binary_data_size"),
    ("number", 5.1, "data must be a JSON array"),
    ("bool", True, "data must be a JSON array"),
    ("string-element", [[5.1, "3.5", 1.4, 0.2]], 'element 1 ("3.5") is not a valid FP32 value'),
    ("null-element", [[5.1, 3.5, None, 0.2]], "element 2 (null) is not a valid FP32 value"),
    ("bool-element", [[True, 3.5, 1.4, 0.2]], "element 0 (true) is not a valid FP32 value"),
    ("object-element", [5.1, {"x": 1}, 1.4, 0.2], "data mixes nested arrays and scalars (element 1)"),
    ("array-after-scalar", [5.1, [3.5], 1.4, 0.2], "data mixes nested arrays and scalars (element 1)"),
    ("scalar-after-array", [[5.1, 3.5, 1.4, 0.2], 1], "nested data has 2 elements at depth 0 where the shape says 1"),
    ("object-in-nested", [[5.1, 3.5, {}, 0.2]], "element 2 ({}) is not a valid FP32 value"),
    ("array-in-row", [[5.1, 3.5, [1.4], 0.2]], "nested data is deeper than the shape's 2 dimensions"),
    ("row-of-scalars-too-shallow", [[5.1, 3.5, 1.4, 0.2], 7], "nested data has 2 elements at depth 0 where the shape says 1"),
]:
    predict("types", f"data-{what}", iris([1, 4], data), 400, error)

# ------------------------------------------------------------------ predict: shapes
for what, shape, data, error in [
    ("rank-0", [], ROW, "does not match the model's shape [-1, 4]"),
    ("rank-1", [4], [5.1, 3.5, 1.4, 0.2], "does not match the model's shape [-1, 4]"),
    ("rank-3", [1, 4, 1], [5.1, 3.5, 1.4, 0.2], "does not match the model's shape [-1, 4]"),
    ("width-3", [1, 3], [5.1, 3.5, 1.4], "shape [1, 3] does not match the model's shape [-1, 4]"),
    ("width-5", [1, 5], [5.1, 3.5, 1.4, 0.2, 1], "shape [1, 5] does not match"),
    ("transposed", [4, 1], [[5.1], [3.5], [1.4], [0.2]], "shape [4, 1] does not match"),
    ("too-few-flat", [2, 4], [1, 2, 3, 4], "needs 8 elements but data has 4"),
    ("too-many-flat", [1, 4], [1, 2, 3, 4, 5], "needs 4 elements but data has 5"),
    ("empty-data", [1, 4], [], "needs 4 elements but data has 0"),
    ("too-few-rows", [2, 4], ROW, "nested data has 1 elements at depth 0 where the shape says 2"),
    ("too-many-rows", [1, 4], ROW * 2, "nested data has 2 elements at depth 0 where the shape says 1"),
    ("ragged", [2, 4], [[1, 2, 3, 4], [1, 2, 3]], "nested data has 3 elements at depth 1 where the shape says 4"),
    ("short-row", [1, 4], [[1, 2, 3]], "nested data has 3 elements at depth 1 where the shape says 4"),
    ("deeper-than-shape", [1, 4], [[[1], [2], [3], [4]]], "nested data is deeper than the shape's 2 dimensions"),
    ("empty-rows", [1, 4], [[]], "nested data has 0 elements at depth 1 where the shape says 4"),
]:
    predict("shapes", what, iris(shape, data), 400, error)
predict("shapes", "mlp-width", iris([1, 15], [[0] * 15], name="x"), 400, "shape [1, 15] does not match the model's shape [-1, 16]", path="/v2/models/mlp/infer")
predict("shapes", "cnn-flat-image", iris([1, 144], [[0] * 144], name="image"), 400, "does not match the model's shape [-1, 1, 12, 12]", path="/v2/models/cnn/infer")
predict("shapes", "cnn-channels", iris([1, 3, 12, 12], [0] * 432, name="image"), 400, "shape [1, 3, 12, 12] does not match", path="/v2/models/cnn/infer")
predict("shapes", "cnn-pixels-missing", iris([1, 1, 12, 12], [0] * 143, name="image"), 400, "needs 144 elements but data has 143", path="/v2/models/cnn/infer")
predict("shapes", "cnn-rows-short", iris([1, 1, 12, 12], [[[[0] * 12] * 11]], name="image"), 400, "nested data has 11 elements at depth 2 where the shape says 12", path="/v2/models/cnn/infer")

# ------------------------------------------------------------------ predict: huge and negative dimensions
for what, shape, error in [
    ("zero-batch", [0, 4], "not a positive integer"),
    ("zero-width", [1, 0], "not a positive integer"),
    ("minus-one-batch", [-1, 4], "not a positive integer"),
    ("negative-width", [1, -4], "not a positive integer"),
    ("i64-min", [-9223372036854775808, 4], "not a positive integer"),
    ("batch-1e12", [1000000000000, 4], "needs 4000000000000 elements but data has 4"),
    ("batch-2e18", [2305843009213693952, 4], "needs 9223372036854775808 elements but data has 4"),
    ("batch-overflows", [4611686018427387904, 4], "has too many elements"),
    ("batch-i64-max", [9223372036854775807, 4], "has too many elements"),
    ("batch-over-i64", [9223372036854775808, 4], BODY),
    ("batch-over-u64", [18446744073709551616, 4], BODY),
    ("batch-huge-literal", [int("9" * 400), 4], BODY),
]:
    predict("dimensions", what, iris(shape, [5.1, 3.5, 1.4, 0.2]), 400, error)
predict("dimensions", "cnn-batch-huge", iris([4294967296, 1, 12, 12], [0] * 144, name="image"), 400, "needs 618475290624 elements but data has 144", path="/v2/models/cnn/infer")
predict("dimensions", "cnn-product-overflows", iris([1 << 62, 1, 12, 12], [0] * 144, name="image"), 400, "has too many elements", path="/v2/models/cnn/infer")
predict("dimensions", "rank-1000", iris([1] * 1000, [5.1, 3.5, 1.4, 0.2]), 400, "does not match the model's shape [-1, 4]")
predict("dimensions", "mlp-nested-huge-batch", iris([1 << 40, 16], [[0] * 16], name="x"), 400, "nested data has 1 elements at depth 0 where the shape says 1099511627776", path="/v2/models/mlp/infer")

# ------------------------------------------------------------------ predict: deep nesting
def nest(depth: int, leaf) -> object:
    for _ in range(depth):
        leaf = [leaf]
    return leaf


def nest_text(depth: int, leaf: str = "1") -> str:
    return "[" * depth + leaf + "]" * depth


predict("nesting", "data-100-deep", iris([1, 4], nest(100, 1.0)), 400, "nested data has 1 elements at depth 1 where the shape says 4")
predict("nesting", "data-120-deep-leaf", iris([1, 4], [[1, 2, 3, nest(117, 4.0)]]), 400, "nested data is deeper than the shape's 2 dimensions")
for depth in (129, 1000, 20000):
    text = '{"inputs": [{"name": "float_input", "shape": [1, 4], "datatype": "FP32", "data": ' + nest_text(depth) + "}]}"
    predict("nesting", f"data-{depth}-deep", text, 400, "recursion limit exceeded")
predict("nesting", "parameters-200-deep", '{"parameters": {"a": ' + nest_text(200) + '}, "inputs": []}', 400, "recursion limit exceeded")
predict("nesting", "id-200-deep", '{"id": {"a": ' + nest_text(200) + '}, "inputs": []}', 400, "invalid type: map, expected a string")
text = '{"inputs": [{"name": "float_input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4], "parameters": ' + '{"a": ' * 300 + "1" + "}" * 300 + "}]}"
predict("nesting", "input-parameters-300-deep-objects", text, 400, "recursion limit exceeded")
predict("nesting", "shape-nested", iris([[1], [4]], ROW), 400, "expected i64")
predict("nesting", "unclosed-10000", "[" * 10000, 400, "invalid type: sequence, expected a string")
predict("nesting", "unclosed-objects-10000", '{"inputs": [{"data": ' + '{"a": ' * 10000, 400, "recursion limit exceeded")

# ------------------------------------------------------------------ predict: numbers out of range
for what, value, error in [
    ("over-fp32-max", 3.5e38, "element 0 (3.5e+38) is not a valid FP32 value"),
    ("under-fp32-min", -3.5e38, "element 0 (-3.5e+38) is not a valid FP32 value"),
    ("fp64-max", 1.7976931348623157e308, "is not a valid FP32 value"),
]:
    predict("numbers", what, iris([1, 4], [[value, 3.5, 1.4, 0.2]]), 400, error)
for what, literal in [
    ("1e400", "1e400"), ("minus-1e400", "-1e400"), ("1e999999", "1e999999"),
    ("huge-mantissa-exponent", "1" + "0" * 400 + "e400"),
]:
    text = '{"inputs": [{"name": "float_input", "shape": [1, 4], "datatype": "FP32", "data": [' + literal + ", 3.5, 1.4, 0.2]}]}"
    predict("numbers", what, text, 400, "number out of range")
for what, literal in [("leading-zero", "01"), ("plus-sign", "+1"), ("bare-dot", ".5"), ("trailing-dot", "1."), ("hex", "0x10"), ("double-minus", "--1"), ("exponent-only", "1e")]:
    text = '{"inputs": [{"name": "float_input", "shape": [1, 4], "datatype": "FP32", "data": [' + literal + ", 3.5, 1.4, 0.2]}]}"
    predict("numbers", f"malformed-{what}", text, 400, BODY)
predict("numbers", "shape-1e400", '{"inputs": [{"name": "float_input", "shape": [1e400, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}', 400, "number out of range")

# ------------------------------------------------------------------ predict: names, unicode and traversal
NAME = "invalid model name"
for what, segment, status, error in [
    ("dot-dot-encoded", "..%2F..%2Fetc", 400, NAME),
    ("dot-dot-encoded-lower", "..%2f..%2fmodels%2firis", 400, NAME),
    ("dot-encoded", "%2e%2e", 404, "no route for /v2/infer"),
    ("hidden", ".hidden", 400, NAME),
    ("dash", "-iris", 400, NAME),
    ("underscore", "_iris", 400, NAME),
    ("encoded-slash", "iris%2F1", 400, NAME),
    ("backslash", "..%5C..%5Cetc", 400, NAME),
    ("nul", "iris%00", 400, NAME),
    ("newline", "iris%0A", 400, NAME),
    ("space", "ir%20is", 400, NAME),
    ("e-acute-encoded", "%C3%A9", 400, NAME),
    ("e-acute-raw", "é", 400, NAME),
    ("cyrillic-lookalike", "іris", 400, NAME),
    ("emoji", "🤖", 400, NAME),
    ("rtl-override", "iris%E2%80%AE", 400, NAME),
    ("zero-width-space", "iris%E2%80%8B", 400, NAME),
    ("fullwidth", "ｉｒｉｓ", 400, NAME),
    ("65-chars", "x" * 65, 400, NAME),
    ("1000-chars", "y" * 1000, 400, NAME),
    ("percent", "iris%", 400, NAME),
    ("unknown", "tulip", 404, "model `tulip` not found"),
    ("case-differs", "IRIS", 404, "model `IRIS` not found"),
    ("dots-inside", "a..b", 404, "model `a..b` not found"),
]:
    predict("names", what, iris([1, 4], ROW), status, error, path=f"/v2/models/{segment}/infer")
VERSION = "invalid model version"
for what, segment, status, error in [
    ("zero", "0", 400, VERSION),
    ("negative", "-1", 400, VERSION),
    ("leading-zero", "01", 400, VERSION),
    ("decimal", "1.0", 400, VERSION),
    ("plus", "+1", 400, VERSION),
    ("over-u64", "18446744073709551616", 400, VERSION),
    ("digit-then-letters", "1abc", 400, VERSION),
    ("dots", "...", 400, VERSION),
    ("dot-dot-encoded", "..%2F1", 400, VERSION),
    ("alias-unicode", "prödüction", 400, "invalid alias"),
    ("alias-encoded-slash", "prod%2Fx", 400, "invalid alias"),
    ("alias-65-chars", "a" * 65, 400, "invalid alias"),
    ("alias-space", "a%20b", 400, "invalid alias"),
    ("latest-uppercase", "LATEST", 404, "model `iris` has no alias `LATEST`"),
    ("unknown-alias", "staging", 404, "model `iris` has no alias `staging`"),
    ("absent-version", "99", 404, "model `iris` has no version 99"),
    ("u64-max", "18446744073709551615", 404, "has no version 18446744073709551615"),
]:
    predict("versions", what, iris([1, 4], ROW), status, error, path=f"/v2/models/iris/versions/{segment}/infer")
    if what in ("zero", "dot-dot-encoded", "alias-unicode", "absent-version"):
        case("predict", "versions", f"{what}-metadata", "GET", f"/v2/models/iris/versions/{segment}", status, error)
for what, name in [
    ("unicode", "flöat_input"), ("traversal", "../../etc/passwd"), ("nul", "float_input\u0000"),
    ("empty", ""), ("long", "n" * 5000), ("rtl", "\u202efloat_input"),
]:
    predict("names", f"input-{what}", iris([1, 4], ROW, name=name), 400, "the model has no such input")
for what, name in [("unicode", "läbel"), ("traversal", "../label"), ("empty", "")]:
    predict("names", f"output-{what}", {**iris([1, 4], ROW), "outputs": [{"name": name}]}, 400, "does not exist; the model's outputs are")

# ------------------------------------------------------------------ predict: methods and routes
for method, path, status, error in [
    ("GET", INFER, 405, "GET is not allowed on /v2/models/iris/infer; use POST"),
    ("PUT", INFER, 405, "use POST"),
    ("DELETE", INFER, 405, "use POST"),
    ("PATCH", INFER, 405, "use POST"),
    ("HEAD", INFER, 405, "use POST"),
    ("OPTIONS", INFER, 405, "use POST"),
    ("BREW", INFER, 405, "BREW is not allowed"),
    ("POST", "/v2", 405, "use GET"),
    ("DELETE", "/v2/models/iris", 405, "use GET"),
    ("POST", "/v2/models/iris/ready", 405, "use GET"),
    ("POST", "/v2/health/live", 405, "use GET"),
    ("PUT", "/v2/models/iris/versions/1", 405, "use GET"),
    ("GET", "/v2/models/iris/versions/1/infer", 405, "use POST"),
    ("POST", "/v1/models/iris/infer", 404, "no route"),
    ("POST", "/v2/models/iris/predict", 404, "no route"),
    ("POST", "/v2/models/iris/versions/1/explain", 404, "no route"),
    ("POST", "/v2/models/iris/infer/extra", 404, "no route"),
    ("GET", "/", 404, "no route"),
    ("GET", "/v2/models", 404, "no route"),
    ("POST", "/v2/models//infer", 404, "no route"),
    ("GET", "/v2/models/iris/../../../etc/passwd", 404, "no route"),
    ("GET", "/models", 404, "no route"),
]:
    case("predict", "methods", f"{method}-{path}", method, path, status, error,
         body=json.dumps(iris([1, 4], ROW)) if method == "POST" else None)

# ------------------------------------------------------------------ predict: oversize
case("predict", "oversize", "spaces", "POST", INFER, 413, f"over the limit of {REQUEST_LIMIT} bytes",
     body_fill={"byte": " ", "count": REQUEST_LIMIT + 1, "base64": False})
case("predict", "oversize", "base64-spaces", "POST", INFER, 413, f"over the limit of {REQUEST_LIMIT} bytes",
     body_fill={"byte": " ", "count": REQUEST_LIMIT + 1, "base64": True})
case("predict", "oversize", "unknown-model", "POST", "/v2/models/tulip/infer", 413, "request body is",
     body_fill={"byte": "[", "count": REQUEST_LIMIT + 1, "base64": False})
case("predict", "oversize", "at-limit-is-parsed", "POST", INFER, 400, "EOF while parsing",
     body_fill={"byte": " ", "count": REQUEST_LIMIT, "base64": False})

# ------------------------------------------------------------------ predict: base64 bodies
B64 = "not valid base64"
GOOD = json.dumps(iris([1, 4], ROW))
for what, text in [
    ("punctuation", "!!!not base64!!!"),
    ("json-as-is", GOOD),
    ("bad-length", "abc"),
    ("bad-padding", "YWJj="),
    ("padding-inside", "YW=Jj"),
    ("url-alphabet", base64.urlsafe_b64encode(b"\xfb\xff" * 8).decode()),
    ("line-breaks", base64.encodebytes(GOOD.encode()).decode()),
    ("spaces", " ".join(base64.b64encode(GOOD.encode()).decode()[i:i + 4] for i in range(0, 40, 4))),
    ("unpadded", base64.b64encode(GOOD.encode()).decode().rstrip("=") + "A"),
    ("unicode", "éé=="),
]:
    case("predict", "base64", f"garbage-{what}", "POST", INFER, 400, B64, body_base64=text)
for what, raw, error in [
    ("empty", b"", "EOF while parsing"),
    ("not-json", b"not json", "expected"),
    ("invalid-utf8", b"\xff\xfe\xfd", BODY),
    ("utf16", GOOD.encode("utf-16"), BODY),
    ("nul-bytes", b"\x00" * 64, BODY),
    ("gzip-magic", b"\x1f\x8b\x08\x00" + b"\x00" * 16, BODY),
    ("truncated-json", GOOD.encode()[:-3], "EOF while parsing"),
    ("wrong-datatype", json.dumps(iris([1, 4], ROW, datatype="FP64")).encode(), "datatype is FP64"),
]:
    case("predict", "base64", f"decodes-to-{what}", "POST", INFER, 400, error,
         body_base64=base64.b64encode(raw).decode())

# ------------------------------------------------------------------ predict: compressed bodies
for what, encoding, raw, status, error in [
    ("gzip-not-gzip", "gzip", GOOD.encode(), 400, "not valid gzip data"),
    ("gzip-truncated", "gzip", gzip.compress(GOOD.encode(), mtime=0)[:-8], 400, "not valid gzip data"),
    ("deflate-is-gzip", "deflate", gzip.compress(GOOD.encode(), mtime=0), 400, "not valid deflate data"),
    ("gzip-of-bad-json", "gzip", gzip.compress(b'{"inputs": [', mtime=0), 400, "EOF while parsing"),
    ("gzip-of-wrong-datatype", "gzip", gzip.compress(json.dumps(iris([1, 4], ROW, datatype="FP64")).encode(), mtime=0),
     400, "datatype is FP64"),
    ("deflate-bomb", "deflate", zlib.compress(b" " * (REQUEST_LIMIT + 1), 9), 413,
     f"inflates to more than {REQUEST_LIMIT} bytes"),
    ("gzip-bomb", "gzip", gzip.compress(b" " * (REQUEST_LIMIT + 1), 9, mtime=0), 413,
     f"inflates to more than {REQUEST_LIMIT} bytes"),
    ("brotli", "br", GOOD.encode(), 415, "Content-Encoding `br` is not supported"),
    ("two-encodings", "gzip, gzip", gzip.compress(gzip.compress(GOOD.encode(), mtime=0), mtime=0), 415,
     "Content-Encoding `gzip, gzip` is not supported"),
]:
    case("predict", "encoding", what, "POST", INFER, status, error,
         body_base64=base64.b64encode(raw).decode(),
         headers={**JSON, "content-encoding": encoding})
case("predict", "encoding", "tfserving-gzip-of-bad-row", "POST", "/v1/models/iris:predict", 400,
     "does not match the model's shape [-1, 4]",
     body_base64=base64.b64encode(gzip.compress(b'{"instances": [1.0]}', mtime=0)).decode(),
     headers={**JSON, "content-encoding": "gzip"})

# ------------------------------------------------------------------ TensorFlow Serving REST API
TF_PREDICT = "/v1/models/iris:predict"
for what, body, error in [
    ("both-forms", {"instances": ROW, "inputs": ROW}, "not both"),
    ("neither-form", {"signature_name": "serving_default"}, "missing `instances`"),
    ("other-signature", {"signature_name": "predict_images", "instances": ROW}, "signature_name `predict_images`"),
    ("empty-instances", {"instances": []}, "`instances` is empty"),
    ("instances-object", {"instances": {"float_input": ROW}}, "`instances` must be a list"),
    ("ragged-rows", {"instances": [[5.1, 3.5, 1.4, 0.2], [5.1, 3.5]]}, "nested data has 2 elements at depth 1"),
    ("scalar-rows", {"instances": [5.1, 3.5, 1.4, 0.2]}, "does not match the model's shape [-1, 4]"),
    ("too-deep", {"instances": [ROW]}, "does not match the model's shape [-1, 4]"),
    ("empty-row", {"instances": [[]]}, "has an empty dimension"),
    ("string-value", {"instances": [[5.1, "3.5", 1.4, 0.2]]}, "is not a valid FP32 value"),
    ("unknown-input", {"instances": [{"x": [5.1, 3.5, 1.4, 0.2]}]}, "the model has no such input"),
    ("mixed-rows", {"instances": [[5.1, 3.5, 1.4, 0.2], {"float_input": [5.1, 3.5, 1.4, 0.2]}]}, "instance 1 is an object"),
    ("columns-object-value", {"inputs": {"float_input": {"b": 1}}}, "is an object"),
    ("b64-for-numbers", {"instances": [[{"b64": "AAAA"}, 3.5, 1.4, 0.2]]}, "is not a valid FP32 value"),
    ("overflowing-fp32", {"inputs": [[1e39, 3.5, 1.4, 0.2]]}, "is not a valid FP32 value"),
]:
    predict("tfserving", what, body, 400, error, path=TF_PREDICT)
predict("tfserving", "not-json", "{\"instances\": [", 400, "invalid request body", path=TF_PREDICT)
for what, method, path, status, error in [
    ("unknown-verb", "POST", "/v1/models/iris:explain", 404, "unknown method `:explain`"),
    ("unknown-suffix", "GET", "/v1/models/iris/signatures", 404, "no route for /v1/models/iris/signatures"),
    ("version-not-number", "POST", "/v1/models/iris/versions/prod:predict", 400, "invalid model version"),
    ("label-is-latest", "GET", "/v1/models/iris/labels/latest", 400, "invalid alias"),
    ("bad-name", "GET", "/v1/models/..%2F..:predict", 400, "invalid model name"),
    ("unknown-model", "POST", "/v1/models/rose:predict", 404, "model `rose` not found"),
    ("unknown-label", "GET", "/v1/models/iris/labels/prod/metadata", 404, "has no alias `prod`"),
    ("get-predict", "GET", TF_PREDICT, 405, "use POST"),
    ("post-status", "POST", "/v1/models/iris", 405, "use GET"),
    ("delete-metadata", "DELETE", "/v1/models/iris/metadata", 405, "use GET, POST"),
]:
    body = None if method != "POST" else json.dumps({"instances": ROW})
    case("predict", "tfserving", what, method, path, status, error, body=body, headers=JSON)

# ------------------------------------------------------------------ model-upload
IRIS_BYTES = IRIS.read_bytes()


def upload(category: str, what: str, method: str, path: str, status: int, error: str, *,
           body: str | None = None, raw: bytes | None = None, body_base64: str | None = None) -> None:
    if raw is not None:
        body_base64 = base64.b64encode(raw).decode()
    case("model-upload", category, what, method, path, status, error, body=body,
         body_base64=body_base64,
         headers={"content-type": "application/octet-stream"} if body_base64 else None)


for what, segment in [
    ("dot-dot-encoded", "..%2F..%2Fmodels"), ("hidden", ".x"), ("dash", "-x"),
    ("encoded-slash", "a%2Fb"), ("backslash", "a%5Cb"), ("nul", "x%00"), ("unicode", "mödel"),
    ("emoji", "%F0%9F%A4%96"), ("65-chars", "m" * 65), ("space", "a%20b"), ("staging", "..%2Fstaging"),
]:
    upload("names", f"put-{what}", "PUT", f"/models/{segment}/versions/1", 400, NAME, raw=IRIS_BYTES[:64])
    upload("names", f"detail-{what}", "GET", f"/models/{segment}", 400, NAME)
for what, segment in [
    ("zero", "0"), ("negative", "-1"), ("leading-zero", "01"), ("decimal", "1.5"),
    ("latest", "latest"), ("alias", "prod"), ("over-u64", "18446744073709551616"),
    ("traversal", "..%2F..%2F1"), ("unicode", "１"),
]:
    upload("versions", f"put-{what}", "PUT", f"/models/fresh/versions/{segment}", 400, VERSION, raw=IRIS_BYTES)
    if what in ("zero", "latest", "traversal"):
        upload("versions", f"delete-{what}", "DELETE", f"/models/iris/versions/{segment}", 400, VERSION)
UPLOAD = "invalid upload id"
for what, segment in [
    ("short", "abc"), ("uppercase", "A" * 32), ("33-digits", "a" * 33), ("traversal", "..%2F..%2Fmodels%2Firis"),
    ("non-hex", "g" * 32), ("unicode", "é" * 16), ("uuid-dashes", "0123abcd-0123-abcd-0123-0123456789ab"),
]:
    upload("uploads", f"commit-{what}", "POST", f"/models/iris/uploads/{segment}/commit", 400, UPLOAD)
upload("uploads", "commit-unknown", "POST", f"/models/iris/uploads/{'0' * 32}/commit", 404, "not found")
upload("uploads", "commit-bad-version-body", "POST", f"/models/iris/uploads/{'0' * 32}/commit", 400, "invalid body", body='{"version": "2"}')
upload("uploads", "start-bad-name", "POST", "/models/..%2Fx/uploads", 400, NAME)
ALIAS = "invalid alias"
for what, segment in [
    ("latest", "latest"), ("digit-first", "1prod"), ("unicode", "pröd"), ("traversal", "..%2F..%2Fx"),
    ("encoded-slash", "a%2Fb"), ("65-chars", "a" * 65), ("underscore-first", "_a"), ("nul", "a%00"),
]:
    upload("aliases", f"set-{what}", "PUT", f"/models/iris/aliases/{segment}", 400, ALIAS, body='{"version": 1}')
upload("aliases", "delete-latest", "DELETE", "/models/iris/aliases/latest", 400, ALIAS)
for what, text, status, error in [
    ("empty", None, 400, "invalid body: EOF while parsing"),
    ("empty-object", "{}", 400, "missing field `version`"),
    ("zero", '{"version": 0}', 400, "version must be a positive integer"),
    ("negative", '{"version": -1}', 400, "invalid body"),
    ("string", '{"version": "1"}', 400, "invalid body"),
    ("float", '{"version": 1.5}', 400, "invalid body"),
    ("exponent", '{"version": 1e0}', 400, "invalid body"),
    ("over-u64", '{"version": 18446744073709551616}', 400, "invalid body"),
    ("1e400", '{"version": 1e400}', 400, "number out of range"),
    ("null", '{"version": null}', 400, "invalid body"),
    ("extra-field", '{"version": 1, "force": true}', 400, "unknown field `force`"),
    ("bare-number", "1", 400, "invalid body"),
    ("text", "nope", 400, "invalid body"),
    ("deep", nest_text(500), 400, "invalid type: sequence, expected u64"),
    ("deep-object", '{"version": 1, "x": ' + '{"a": ' * 500, 400, "unknown field `x`"),
    ("deep-version", '{"version": ' + nest_text(200) + "}", 400, "invalid type: sequence, expected u64"),
    ("duplicate", '{"version": 1, "version": 2}', 400, "duplicate field `version`"),
    ("absent-version", '{"version": 7}', 404, "model `iris` has no version 7"),
    ("u64-max-version", '{"version": 18446744073709551615}', 404, "has no version 18446744073709551615"),
]:
    upload("aliases", f"body-{what}", "PUT", "/models/iris/aliases/prod", status, error, body=text)
upload("aliases", "unknown-model", "PUT", "/models/tulip/aliases/prod", 404, "model `tulip` not found", body='{"version": 1}')
upload("aliases", "delete-absent", "DELETE", "/models/iris/aliases/nothing", 404, "model `iris` has no alias `nothing`")
upload("aliases", "base64-garbage", "PUT", "/models/iris/aliases/prod", 400, B64, body_base64="{{{{")

for what, path_ in [("detail", "/models/tulip"), ("delete", "/models/tulip/versions/1")]:
    upload("missing", what, "GET" if what == "detail" else "DELETE", path_, 404, "model `tulip`")
upload("missing", "delete-absent-version", "DELETE", "/models/iris/versions/42", 404, "model `iris` has no version 42")

for method, path_, status, error in [
    ("POST", "/models", 405, "use GET"),
    ("DELETE", "/models", 405, "use GET"),
    ("PUT", "/models/iris", 405, "use GET"),
    ("DELETE", "/models/iris", 405, "use GET"),
    ("GET", "/models/iris/versions", 405, "use POST"),
    ("PUT", "/models/iris/versions", 405, "use POST"),
    ("GET", "/models/iris/versions/1", 405, "use PUT, DELETE"),
    ("POST", "/models/iris/versions/1", 405, "use PUT, DELETE"),
    ("PATCH", "/models/iris/versions/1", 405, "use PUT, DELETE"),
    ("GET", "/models/iris/uploads", 405, "use POST"),
    ("GET", f"/models/iris/uploads/{'0' * 32}/commit", 405, "use POST"),
    ("GET", "/models/iris/aliases/prod", 405, "use PUT, DELETE"),
    ("POST", "/models/iris/aliases/prod", 405, "use PUT, DELETE"),
    ("GET", "/v2/models/iris", 404, "no route"),
    ("GET", "/models/iris/aliases", 404, "no route"),
    ("PUT", "/models/iris/versions/1/model.onnx", 404, "no route"),
    ("GET", "/models/iris/../../etc/passwd", 404, "no route"),
    ("GET", "/staging/iris", 404, "no route"),
]:
    upload("methods", f"{method}-{path_}", method, path_, status, error)

MODEL = "/models/fresh/versions/1"
upload("models", "empty-body", "PUT", MODEL, 400, "the request body is empty")
upload("models", "empty-body-post", "POST", "/models/fresh/versions", 400, "the request body is empty")
upload("models", "text", "PUT", MODEL, 422, "not an ONNX", body="hello, this is not a model")
upload("models", "json", "PUT", MODEL, 422, "invalid model", body=GOOD)
upload("models", "already-published", "PUT", "/models/iris/versions/1", 409, "version 1 of model `iris` is already published", raw=IRIS_BYTES)
upload("models", "protobuf-huge-length", "PUT", MODEL, 422, "not an ONNX", raw=b"\x3a\xff\xff\xff\xff\x0f")
upload("models", "protobuf-bad-wire-type", "PUT", MODEL, 422, "not an ONNX", raw=b"\x0f\x0f\x0f\x0f")
upload("models", "protobuf-varint-overflow", "PUT", MODEL, 422, "not an ONNX", raw=b"\x08" + b"\xff" * 11)
upload("models", "protobuf-empty-graph", "PUT", MODEL, 422, "no graph with nodes and outputs", raw=b"\x08\x07\x3a\x00")
upload("models", "zeros", "PUT", MODEL, 422, "invalid model", raw=b"\x00" * 256)
for fraction in (2, 3, 4, 5, 8, 16):
    cut = len(IRIS_BYTES) * (fraction - 1) // fraction
    upload("models", f"truncated-at-{cut}", "PUT", MODEL, 422, "invalid model", raw=IRIS_BYTES[:cut])
for what, text in [("punctuation", "!!!!"), ("bad-length", "abcde"), ("url-alphabet", "-_-_"), ("line-breaks", "AAAA\nAAAA")]:
    upload("base64", f"put-garbage-{what}", "PUT", MODEL, 400, B64, body_base64=text)
upload("base64", "post-garbage", "POST", "/models/fresh/versions", 400, B64, body_base64="%%%%")
upload("base64", "put-random", "PUT", MODEL, 422, "not an ONNX", raw=bytes((i * 7919 + 13) % 256 for i in range(512)))
case("model-upload", "oversize", "put", "PUT", MODEL, 413, f"over the limit of {MODEL_LIMIT} bytes",
     body_fill={"byte": "\u0000", "count": MODEL_LIMIT + 1, "base64": True})
case("model-upload", "oversize", "post", "POST", "/models/fresh/versions", 413, f"over the limit of {MODEL_LIMIT} bytes",
     body_fill={"byte": "x", "count": MODEL_LIMIT + 1, "base64": False})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "tests/bad_requests/cases.jsonl")
    args = parser.parse_args()
    ids = [c["id"] for c in cases]
    duplicates = {i for i in ids if ids.count(i) > 1}
    assert not duplicates, duplicates
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", encoding="utf-8") as out:
        for entry in cases:
            out.write(json.dumps(entry, ensure_ascii=False) + "\n")
    print(f"{len(cases)} cases written to {args.out}")


if __name__ == "__main__":
    main()
