#!/usr/bin/env python3
"""Make the small ONNX models that maas tests and ships with.

maas serves ONNX models from AWS Lambda and runs them with the Rust crate
tract-onnx 0.23. Its tests need a few small, realistic models whose correct
outputs are known independently of tract, and the repository ships one example
model for the local server. This script makes both, deterministically (fixed
seeds, fixed timestamps), so re-running it gives byte-identical files.

    python scripts/make_models.py test --out DIR
        DIR/mlp.onnx     MLP built with onnx.helper:  x [N,16] -> y [N,4]
        DIR/cnn.onnx     CNN built with onnx.helper:  image [N,1,12,12] -> logits [N,10]
        DIR/forest.onnx  scikit-learn RandomForestClassifier on iris (skl2onnx,
                         zipmap off): float_input [N,4] -> label [N], probabilities [N,3]
        DIR/cases.json   inputs and onnxruntime outputs for each model at batch 1 and 8,
                         in KServe Open Inference Protocol v2 tensor form

    python scripts/make_models.py example --out scripts/example-store
        models/iris/1/model.onnx     small iris RandomForestClassifier
        models/iris/1/manifest.json  name, version, sha256, size, created, signature
        and prints an example inference request with onnxruntime's answer.

Both modes check every model with onnx.checker, run it with onnxruntime
(the reference) and with the `tract` Python package (the same tract version as
the Rust crate), and fail if tract disagrees by more than 1e-5 or gives a
different label.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import tract
from onnx import TensorProto, helper, numpy_helper
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestClassifier

# Default ONNX domain opset 17 / IR version 8 (what onnx 1.13 wrote): old enough
# for every runtime involved, new enough for everything used here. The ML domain
# is capped at opset 3, so skl2onnx keeps TreeEnsembleClassifier, which tract
# implements (ML opset 5 deprecates it for TreeEnsemble, which tract lacks);
# skl2onnx then declares the lowest ML opset the graph needs (1).
OPSET = 17
ML_OPSET = 3
IR_VERSION = 8
PRODUCER = "maas scripts/make_models.py"

BATCH_SIZES = (1, 8)
TOLERANCE = 1e-5
SEED = 20261129
EXAMPLE_CREATED = "2026-11-29T00:00:00Z"
EXAMPLE_REQUEST_ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]

ELEM_TYPE_TO_DATATYPE = {
    TensorProto.FLOAT: "FP32",
    TensorProto.DOUBLE: "FP64",
    TensorProto.FLOAT16: "FP16",
    TensorProto.INT8: "INT8",
    TensorProto.INT16: "INT16",
    TensorProto.INT32: "INT32",
    TensorProto.INT64: "INT64",
    TensorProto.UINT8: "UINT8",
    TensorProto.UINT16: "UINT16",
    TensorProto.UINT32: "UINT32",
    TensorProto.UINT64: "UINT64",
    TensorProto.BOOL: "BOOL",
    TensorProto.STRING: "BYTES",
}
TRACT_DATUM_TYPES = {
    "FP32": "f32", "FP64": "f64", "FP16": "f16", "BOOL": "bool",
    "INT8": "i8", "INT16": "i16", "INT32": "i32", "INT64": "i64",
    "UINT8": "u8", "UINT16": "u16", "UINT32": "u32", "UINT64": "u64",
}
NUMPY_TO_DATATYPE = {
    np.dtype(np.float32): "FP32",
    np.dtype(np.float64): "FP64",
    np.dtype(np.float16): "FP16",
    np.dtype(np.int8): "INT8",
    np.dtype(np.int16): "INT16",
    np.dtype(np.int32): "INT32",
    np.dtype(np.int64): "INT64",
    np.dtype(np.uint8): "UINT8",
    np.dtype(np.uint16): "UINT16",
    np.dtype(np.uint32): "UINT32",
    np.dtype(np.uint64): "UINT64",
    np.dtype(np.bool_): "BOOL",
}


# ---------------------------------------------------------------- models built by hand


def rng_for(name: str) -> np.random.Generator:
    """A generator seeded from SEED and a name, so each use is independent and fixed."""
    return np.random.default_rng([SEED, *name.encode()])


def weight(rng: np.random.Generator, name: str, shape: tuple[int, ...], fan_in: int) -> TensorProto:
    """He-initialised float32 weights, so activations stay around 1 through the layers."""
    values = rng.normal(0.0, np.sqrt(2.0 / fan_in), size=shape).astype(np.float32)
    return numpy_helper.from_array(values, name)


def bias(rng: np.random.Generator, name: str, size: int) -> TensorProto:
    return numpy_helper.from_array(rng.uniform(-0.1, 0.1, size=size).astype(np.float32), name)


def finish_model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name=PRODUCER,
    )
    model.ir_version = IR_VERSION
    return model


def make_mlp() -> onnx.ModelProto:
    """x [batch,16] -> Gemm 16->32, Relu, Gemm 32->8, Relu, Gemm 8->4 -> y [batch,4]."""
    rng = rng_for("mlp")
    sizes = [16, 32, 8, 4]
    nodes, inits = [], []
    current = "x"
    for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
        last = i == len(sizes) - 2
        gemm_out = "y" if last else f"gemm{i}"
        inits += [weight(rng, f"W{i}", (n_in, n_out), n_in), bias(rng, f"B{i}", n_out)]
        nodes.append(helper.make_node("Gemm", [current, f"W{i}", f"B{i}"], [gemm_out], name=f"gemm{i}"))
        current = gemm_out
        if not last:
            nodes.append(helper.make_node("Relu", [current], [f"relu{i}"], name=f"relu{i}"))
            current = f"relu{i}"
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        initializer=inits,
    )
    return finish_model(graph)


def make_cnn() -> onnx.ModelProto:
    """image [batch,1,12,12] -> Conv 3x3 pad 1 (4), Relu, MaxPool 2x2/2, Conv 3x3 (8), Relu,
    Flatten, Gemm -> logits [batch,10]. Shapes: 1x12x12 -> 4x12x12 -> 4x6x6 -> 8x4x4 -> 128 -> 10."""
    rng = rng_for("cnn")
    inits = [
        weight(rng, "conv1_W", (4, 1, 3, 3), 1 * 9),
        bias(rng, "conv1_B", 4),
        weight(rng, "conv2_W", (8, 4, 3, 3), 4 * 9),
        bias(rng, "conv2_B", 8),
        weight(rng, "fc_W", (128, 10), 128),
        bias(rng, "fc_B", 10),
    ]
    node = helper.make_node
    nodes = [
        node("Conv", ["image", "conv1_W", "conv1_B"], ["conv1"], name="conv1",
             kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        node("Relu", ["conv1"], ["relu1"], name="relu1"),
        node("MaxPool", ["relu1"], ["pool1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
        node("Conv", ["pool1", "conv2_W", "conv2_B"], ["conv2"], name="conv2", kernel_shape=[3, 3]),
        node("Relu", ["conv2"], ["relu2"], name="relu2"),
        node("Flatten", ["relu2"], ["flat"], name="flatten", axis=1),
        node("Gemm", ["flat", "fc_W", "fc_B"], ["logits"], name="fc"),
    ]
    graph = helper.make_graph(
        nodes,
        "cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, 12, 12])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        initializer=inits,
    )
    return finish_model(graph)


# ---------------------------------------------------------------- scikit-learn models


def make_forest(n_estimators: int, max_depth: int) -> onnx.ModelProto:
    """A RandomForestClassifier trained on the iris data that ships with scikit-learn."""
    iris = load_iris()
    clf = RandomForestClassifier(
        n_estimators=n_estimators, max_depth=max_depth, random_state=0, n_jobs=1
    )
    clf.fit(iris.data.astype(np.float32), iris.target)
    model = convert_sklearn(
        clf,
        name="iris_forest",
        initial_types=[("float_input", FloatTensorType([None, 4]))],
        target_opset={"": OPSET, "ai.onnx.ml": ML_OPSET},
        options={id(clf): {"zipmap": False}},
    )
    model.ir_version = IR_VERSION
    model.producer_name = PRODUCER
    model.producer_version = ""
    return model


# ---------------------------------------------------------------- inputs


def mlp_inputs(batch: int) -> dict[str, np.ndarray]:
    rng = rng_for(f"mlp-input-{batch}")
    return {"x": rng.uniform(-1.0, 1.0, size=(batch, 16)).astype(np.float32)}


def cnn_inputs(batch: int) -> dict[str, np.ndarray]:
    rng = rng_for(f"cnn-input-{batch}")
    return {"image": rng.uniform(0.0, 1.0, size=(batch, 1, 12, 12)).astype(np.float32)}


def forest_inputs(batch: int, session: ort.InferenceSession) -> dict[str, np.ndarray]:
    """Real iris rows plus a little noise. Rows whose two best class probabilities are
    nearly tied are skipped, so the expected label never depends on tie-breaking."""
    rng = rng_for(f"forest-input-{batch}")
    data = load_iris().data
    rows = []
    while len(rows) < batch:
        row = data[rng.integers(len(data))] + rng.normal(0.0, 0.1, size=4)
        row = np.maximum(row, 0.1).astype(np.float32)[None, :]
        probabilities = session.run(["probabilities"], {"float_input": row})[0][0]
        top2 = np.sort(probabilities)[-2:]
        if top2[1] - top2[0] > 0.05:
            rows.append(row[0])
    return {"float_input": np.stack(rows)}


# ---------------------------------------------------------------- running and checking


def ort_session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def run_ort(session: ort.InferenceSession, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, inputs)))


def load_tract(path: Path, model: onnx.ModelProto) -> tract.Runnable:
    """Load as shared/src/engine.rs does: set each input's fact with its dynamic dimensions
    as symbols (the dim_param name, or N for an unnamed batch dimension, which is what
    skl2onnx writes), then type and optimise the model for the default CPU runtime."""
    inference_model = tract.onnx().load(str(path))
    for index, value in enumerate(graph_inputs(model)):
        inference_model.set_input_fact(index, tract_fact(index, value))
    return inference_model.into_model().into_runnable()


def tract_fact(index: int, value: onnx.ValueInfoProto) -> str:
    """A tract fact string such as "N,4,f32" for a graph input."""
    tensor_type = value.type.tensor_type
    dims = []
    for axis, dim in enumerate(tensor_type.shape.dim):
        if dim.HasField("dim_value"):
            dims.append(str(dim.dim_value))
        else:
            dims.append(dim.dim_param or ("N" if axis == 0 else f"in{index}_dim{axis}"))
    return ",".join([*dims, TRACT_DATUM_TYPES[ELEM_TYPE_TO_DATATYPE[tensor_type.elem_type]]])


def run_tract(runnable: tract.Runnable, model: onnx.ModelProto, inputs: dict[str, np.ndarray]):
    ordered = [inputs[value.name] for value in graph_inputs(model)]
    outputs = [o.name for o in model.graph.output]
    return dict(zip(outputs, (t.to_numpy() for t in runnable.run(ordered))))


def compare(what: str, expected: dict[str, np.ndarray], actual: dict[str, np.ndarray]) -> float:
    """Fail unless actual matches expected: floats within TOLERANCE, anything else equal.
    Returns the largest absolute float difference."""
    worst = 0.0
    for name, want in expected.items():
        got = actual[name]
        if (got.dtype, got.shape) != (want.dtype, want.shape):
            sys.exit(f"{what}: output {name} is {got.dtype} {got.shape}, expected {want.dtype} {want.shape}")
        if np.issubdtype(want.dtype, np.floating):
            diff = float(np.max(np.abs(got.astype(np.float64) - want))) if want.size else 0.0
            if diff > TOLERANCE:
                sys.exit(f"{what}: output {name} differs by {diff} (> {TOLERANCE})")
            worst = max(worst, diff)
        elif not np.array_equal(got, want):
            sys.exit(f"{what}: output {name} differs: {got.tolist()} vs {want.tolist()}")
    return worst


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The graph's real inputs: old exporters also list initializers as inputs."""
    initializers = {init.name for init in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in initializers]


def save_and_verify(model: onnx.ModelProto, path: Path, cases: list[dict[str, np.ndarray]]) -> list[dict]:
    """Write the model, check it, and run every input set with onnxruntime and tract.
    Returns one {"inputs", "outputs"} record (numpy arrays) per input set."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())
    onnx.checker.check_model(str(path), full_check=True)
    session = ort_session(model)
    runnable = load_tract(path, model)
    records = []
    for inputs in cases:
        expected = run_ort(session, inputs)
        batch = next(iter(inputs.values())).shape[0]
        diff = compare(f"{path.name} batch {batch}", expected, run_tract(runnable, model, inputs))
        print(f"  {path.name}: batch {batch} tract matches onnxruntime (max |diff| {diff:.2e})")
        records.append({"inputs": inputs, "outputs": expected})
    return records


# ---------------------------------------------------------------- JSON forms


def tensor_json(name: str, array: np.ndarray) -> dict:
    """A tensor in Open Inference Protocol v2 form, data flat and row-major."""
    return {
        "name": name,
        "datatype": NUMPY_TO_DATATYPE[array.dtype],
        "shape": list(array.shape),
        "data": array.reshape(-1).tolist(),  # float32 -> exact Python float
    }


def value_info_json(value: onnx.ValueInfoProto) -> dict:
    tensor_type = value.type.tensor_type
    shape = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor_type.shape.dim]
    return {"name": value.name, "datatype": ELEM_TYPE_TO_DATATYPE[tensor_type.elem_type], "shape": shape}


def signature(model: onnx.ModelProto) -> dict:
    return {
        "inputs": [value_info_json(v) for v in graph_inputs(model)],
        "outputs": [value_info_json(v) for v in model.graph.output],
    }


def manifest_json(manifest: dict) -> str:
    """The manifest indented by 2, with each signature tensor list on one line."""
    head = {k: v for k, v in manifest.items() if k != "signature"}
    tensors = [f'    "{k}": {json.dumps(v)}' for k, v in manifest["signature"].items()]
    return (json.dumps(head, indent=2)[: -len("\n}")]
            + ',\n  "signature": {\n' + ",\n".join(tensors) + "\n  }\n}\n")


# ---------------------------------------------------------------- modes


def make_test_set(out: Path) -> None:
    forest = make_forest(n_estimators=10, max_depth=4)
    forest_session = ort_session(forest)
    models = {
        "mlp": (make_mlp(), mlp_inputs),
        "cnn": (make_cnn(), cnn_inputs),
        "forest": (forest, lambda batch: forest_inputs(batch, forest_session)),
    }
    cases = []
    for name, (model, inputs_for) in models.items():
        records = save_and_verify(model, out / f"{name}.onnx", [inputs_for(b) for b in BATCH_SIZES])
        for batch, record in zip(BATCH_SIZES, records):
            cases.append({
                "model": name,
                "batch": batch,
                "inputs": [tensor_json(n, a) for n, a in record["inputs"].items()],
                "outputs": [tensor_json(n, a) for n, a in record["outputs"].items()],
            })
    # One case per line: readable, and small diffs when something changes.
    lines = ",\n".join("  " + json.dumps(case) for case in cases)
    (out / "cases.json").write_text(f"[\n{lines}\n]\n")
    print(f"wrote {', '.join(f'{n}.onnx' for n in models)} and cases.json ({len(cases)} cases) to {out}")


def make_example(out: Path) -> None:
    model = make_forest(n_estimators=5, max_depth=3)
    model_dir = out / "models" / "iris" / "1"
    path = model_dir / "model.onnx"
    session = ort_session(model)
    request = {"float_input": np.array(EXAMPLE_REQUEST_ROWS, dtype=np.float32)}
    cases = [*(forest_inputs(batch, session) for batch in BATCH_SIZES), request]
    response = save_and_verify(model, path, cases)[-1]["outputs"]

    data = path.read_bytes()
    manifest = {
        "name": "iris",
        "version": 1,
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "created": EXAMPLE_CREATED,
        "signature": signature(model),
    }
    (model_dir / "manifest.json").write_text(manifest_json(manifest))
    print(f"wrote {path} ({len(data)} bytes) and manifest.json")

    body = {"inputs": [{"name": "float_input", "shape": [2, 4], "datatype": "FP32",
                        "data": EXAMPLE_REQUEST_ROWS}]}
    print("\nexample request:")
    print(json.dumps(body, separators=(",", ":")))
    print("onnxruntime outputs for it:")
    for name, array in response.items():
        print(json.dumps(tensor_json(name, array), separators=(",", ":")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["test", "example"],
                        help="test: models and cases.json for the test suite; "
                             "example: the iris model and manifest shipped for the local server")
    parser.add_argument("--out", type=Path, required=True, help="directory to write into")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    {"test": make_test_set, "example": make_example}[args.mode](args.out)


if __name__ == "__main__":
    main()
