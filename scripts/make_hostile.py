#!/usr/bin/env python3
"""Make the hostile ONNX models that maas's hardening tests throw at it.

    python scripts/make_hostile.py --out DIR

writes DIR/*.onnx and DIR/hostile.json, a list of cases:

    {"name", "file", "expect": "refused" | "served", "why",
     "request": {"inputs": [...]} (served models: the request that tries to blow the memory)}

- Models whose intermediate tensor's size comes from an input *value* (Range, ConstantOfShape,
  Expand, Tile, Resize, a NonZero-driven shape; 10 GB to 800 GB with the hostile request).
  The Range ones are "served": harmless on the zeros of model-upload's trial inference, they
  publish, and their request must get a 4xx from predict, which stays up. tract cannot
  translate the others with a variable size input, so they are "refused" at upload.
- "refused" models must be refused at upload with 422 naming the problem: constants that
  fold into huge tensors, declared shapes whose size overflows, protobuf bombs (deep nesting,
  a huge repeated field), external-data paths, cycles, truncated files.

The tests also write every model straight into the store (as a bucket writer could, without
model-upload) and check that predict's load applies the same limits.

Every model meant to load is checked with onnx.checker where the checker accepts it; the
request-driven ones are run with onnxruntime on small values to show they are real models
whose memory grows with the value (the hostile value itself is never run here).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def model_of(name: str, nodes, inputs, outputs, initializers=()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    model.producer_name = "maas-hostile"
    return model


def i64(name: str, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.INT64, shape)


def f32(name: str, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def const_i64(name: str, values) -> TensorProto:
    return numpy_helper.from_array(np.array(values, dtype=np.int64), name)


def reduce_sum(data: str, out: str) -> onnx.NodeProto:
    """Keeps a graph's output small: the big tensor stays an intermediate."""
    return helper.make_node("ReduceSum", [data], [out], keepdims=0)


# Request-driven: sizes from input values. Each returns (model, small request, hostile request).

def range_model():
    nodes = [helper.make_node("Range", ["start", "n", "delta"], ["r"]), reduce_sum("r", "y")]
    model = model_of("range", nodes, [i64("n", [])], [i64("y", [])],
                     [const_i64("start", 0), const_i64("delta", 1)])
    return model, {"n": np.array(10, np.int64)}, {"n": np.array(100_000_000_000, np.int64)}


def constant_of_shape_model():
    value = helper.make_tensor("value", TensorProto.FLOAT, [1], [1.0])
    nodes = [helper.make_node("ConstantOfShape", ["shape"], ["c"], value=value),
             reduce_sum("c", "y")]
    model = model_of("constant_of_shape", nodes, [i64("shape", [2])], [f32("y", [])])
    return model, {"shape": np.array([3, 4], np.int64)}, {"shape": np.array([60000, 60000], np.int64)}


def expand_model():
    nodes = [helper.make_node("Expand", ["x", "shape"], ["e"]), reduce_sum("e", "y")]
    model = model_of("expand", nodes, [f32("x", [1, 1]), i64("shape", [2])], [f32("y", [])])
    ones = np.ones((1, 1), np.float32)
    return (model, {"x": ones, "shape": np.array([3, 4], np.int64)},
            {"x": ones, "shape": np.array([100000, 100000], np.int64)})


def tile_model():
    nodes = [helper.make_node("Tile", ["x", "repeats"], ["t"]), reduce_sum("t", "y")]
    model = model_of("tile", nodes, [f32("x", [1, 2]), i64("repeats", [2])], [f32("y", [])])
    x = np.ones((1, 2), np.float32)
    return (model, {"x": x, "repeats": np.array([3, 2], np.int64)},
            {"x": x, "repeats": np.array([100000, 50000], np.int64)})


def resize_model():
    node = helper.make_node("Resize", ["x", "", "", "sizes"], ["r"], mode="nearest")
    model = model_of("resize", [node, reduce_sum("r", "y")],
                     [f32("x", [1, 1, 2, 2]), i64("sizes", [4])], [f32("y", [])])
    x = np.ones((1, 1, 2, 2), np.float32)
    return (model, {"x": x, "sizes": np.array([1, 1, 4, 4], np.int64)},
            {"x": x, "sizes": np.array([1, 1, 80000, 80000], np.int64)})


def nonzero_model():
    """k = number of non-zero values of x; builds Range(0, k * 1e8)."""
    nodes = [
        helper.make_node("NonZero", ["x"], ["nz"]),
        helper.make_node("Shape", ["nz"], ["nz_shape"]),
        helper.make_node("Slice", ["nz_shape", "one", "two"], ["k1"]),
        helper.make_node("Squeeze", ["k1", "zero"], ["k"]),
        helper.make_node("Mul", ["k", "scale"], ["limit"]),
        helper.make_node("Range", ["start", "limit", "delta"], ["r"]),
        reduce_sum("r", "y"),
    ]
    model = model_of("nonzero", nodes, [f32("x", ["N"])], [i64("y", [])],
                     [const_i64("one", [1]), const_i64("two", [2]), const_i64("zero", [0]),
                      const_i64("scale", 100_000_000), const_i64("start", 0),
                      const_i64("delta", 1)])
    return (model, {"x": np.array([1, 0, 2], np.float32)}, {"x": np.ones(3000, np.float32)})


# Refused at upload.

def constant_of_shape_constant():
    value = helper.make_tensor("value", TensorProto.FLOAT, [1], [1.0])
    nodes = [helper.make_node("ConstantOfShape", ["shape"], ["c"], value=value),
             helper.make_node("Add", ["x", "c"], ["y"])]
    return model_of("constant_of_shape_constant", nodes, [f32("x", [1, 1])],
                    [f32("y", [60000, 60000])], [const_i64("shape", [60000, 60000])])


def expand_constant():
    nodes = [helper.make_node("Expand", ["x", "shape"], ["e"]), reduce_sum("e", "y")]
    return model_of("expand_constant", nodes, [f32("x", [1, 1])], [f32("y", [])],
                    [const_i64("shape", [60000, 60000])])


def tile_constant():
    nodes = [helper.make_node("Tile", ["w", "repeats"], ["t"]),
             helper.make_node("ReduceSum", ["t"], ["s"], keepdims=0),
             helper.make_node("Add", ["x", "s"], ["y"])]
    return model_of("tile_constant", nodes, [f32("x", [1])], [f32("y", [1])],
                    [numpy_helper.from_array(np.ones((4, 4), np.float32), "w"),
                     const_i64("repeats", [20000, 20000])])


def range_constant():
    nodes = [helper.make_node("Range", ["start", "limit", "delta"], ["r"]),
             helper.make_node("Cast", ["r"], ["rf"], to=TensorProto.FLOAT),
             helper.make_node("ReduceSum", ["rf"], ["s"], keepdims=1),
             helper.make_node("Add", ["x", "s"], ["y"])]
    return model_of("range_constant", nodes, [f32("x", [1])], [f32("y", [1])],
                    [const_i64("start", 0), const_i64("limit", 100_000_000_000),
                     const_i64("delta", 1)])


def overflowing_dims():
    nodes = [helper.make_node("Identity", ["x"], ["y"])]
    huge = 2**62
    return model_of("overflowing_dims", nodes, [f32("x", [huge, huge])], [f32("y", [huge, huge])])


def initializer_without_data():
    """An initializer declaring 40 GB with no bytes behind it."""
    weights = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[100000, 100000])
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"])]
    return model_of("initializer_without_data", nodes, [f32("x", [1, 100000])],
                    [f32("y", [1, 100000])], [weights])


def many_dims():
    """A huge repeated field: one input declared with 200 000 dimensions."""
    nodes = [helper.make_node("Identity", ["x"], ["y"])]
    dims = [2] * 200_000
    return model_of("many_dims", nodes, [f32("x", dims)], [f32("y", dims)])


def length_delimited(field: int, payload: bytes) -> bytes:
    """One protobuf length-delimited field."""
    def varint(n: int) -> bytes:
        out = bytearray()
        while True:
            out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
            n >>= 7
            if not n:
                return bytes(out)
    return varint(field << 3 | 2) + varint(len(payload)) + payload


def deep_nesting(depth: int = 400) -> bytes:
    """A protobuf bomb: If nodes nested `depth` deep through their then-branches. Python's
    protobuf refuses to build it, so it is written field by field (ModelProto.graph = 7,
    GraphProto.node = 1, NodeProto.attribute = 5, AttributeProto.name = 1 and .g = 6)."""
    model = model_of("deep_nesting", [helper.make_node("Identity", ["x"], ["y"])],
                     [f32("x", [1])], [f32("y", [1])])
    graph = b""
    for _ in range(depth):
        attribute = length_delimited(1, b"then_branch") + length_delimited(6, graph)
        node = length_delimited(4, b"If") + length_delimited(5, attribute)
        graph = length_delimited(1, node)
    model.graph.ClearField("node")
    return model.SerializeToString() + length_delimited(7, graph)


def external_data(location: str):
    weights = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4])
    weights.data_location = TensorProto.EXTERNAL
    weights.external_data.add(key="location", value=location)
    nodes = [helper.make_node("Add", ["x", "w"], ["y"])]
    return model_of("external_data", nodes, [f32("x", [4])], [f32("y", [4])], [weights])


def cycle():
    nodes = [helper.make_node("Add", ["x", "b"], ["a"]), helper.make_node("Relu", ["a"], ["b"])]
    return model_of("cycle", nodes, [f32("x", [1])], [f32("a", [1])])


# Sized by an input value. tract sizes Range's output from its inputs' values at run time
# (not when the limit comes from NonZero: "undetermined symbol");
# the other operators it cannot translate with a variable size input, so model-upload
# refuses them (and predict refuses them at load when placed by hand).
REQUEST_DRIVEN = {
    "range": (range_model, "served"),
    "nonzero": (nonzero_model, "refused"),
    "constant_of_shape": (constant_of_shape_model, "refused"),
    "expand": (expand_model, "refused"),
    "tile": (tile_model, "refused"),
    "resize": (resize_model, "refused"),
}

REFUSED = {
    "constant_of_shape_constant": (constant_of_shape_constant,
                                   "ConstantOfShape of a constant [60000, 60000]: 14.4 GB"),
    "expand_constant": (expand_constant, "Expand to a constant [60000, 60000]: 14.4 GB"),
    "tile_constant": (tile_constant, "Tile of a 4x4 constant by [20000, 20000]: 102 GB"),
    "range_constant": (range_constant, "Range to a constant 1e11: 800 GB"),
    "overflowing_dims": (overflowing_dims, "declared dimensions whose product overflows"),
    "initializer_without_data": (initializer_without_data,
                                 "a 40 GB initializer with no data behind it"),
    "many_dims": (many_dims, "an input with 200 000 dimensions (huge repeated field)"),
    "deep_nesting": (deep_nesting, "If branches nested 400 deep (protobuf bomb)"),
    "external_absolute": (lambda: external_data("/etc/passwd"), "external data at an absolute path"),
    "external_traversal": (lambda: external_data("../../secrets/weights.bin"),
                           "external data with `..`"),
    "cycle": (cycle, "a graph with a cycle"),
}


def tensor_json(name: str, array: np.ndarray) -> dict:
    datatype = {np.dtype(np.int64): "INT64", np.dtype(np.float32): "FP32"}[array.dtype]
    return {"name": name, "datatype": datatype, "shape": list(array.shape),
            "data": array.reshape(-1).tolist()}


def request_json(inputs: dict[str, np.ndarray]) -> dict:
    return {"inputs": [tensor_json(name, value) for name, value in inputs.items()]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    out = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    cases = []
    for name, (make, expect) in REQUEST_DRIVEN.items():
        model, small, hostile = make()
        onnx.checker.check_model(model, full_check=True)
        path = out / f"{name}.onnx"
        path.write_bytes(model.SerializeToString())
        # A real model: onnxruntime runs it on a small value.
        got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, small)
        print(f"{name}: onnxruntime on a small request gives {got[0]!r}")
        cases.append({"name": name, "file": path.name, "expect": expect,
                      "why": f"{model.graph.node[0].op_type} sized by an input value",
                      "request": request_json(hostile)})
    for name, (make, why) in REFUSED.items():
        path = out / f"{name}.onnx"
        model = make()
        path.write_bytes(model if isinstance(model, bytes) else model.SerializeToString())
        cases.append({"name": name, "file": path.name, "expect": "refused", "why": why})
    # A truncated file: the first half of a valid one.
    whole = (out / "expand.onnx").read_bytes()
    (out / "truncated.onnx").write_bytes(whole[: len(whole) // 2])
    cases.append({"name": "truncated", "file": "truncated.onnx", "expect": "refused",
                  "why": "a truncated file"})
    (out / "hostile.json").write_text(json.dumps(cases, indent=1) + "\n")
    print(f"{len(cases)} hostile models in {out}")


if __name__ == "__main__":
    main()
