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
        DIR/two_io.onnx  two inputs, two outputs of different datatypes (onnx.helper):
                         a [N,3], b [N,2] -> y [N,4] FP32, label [N] INT64
        DIR/half_plus_two.onnx  TensorFlow Serving's example model as ONNX: x [N] -> y = 0.5x + 2
        DIR/species.onnx the same trained on the species' names: label is BYTES [N]
        DIR/half.onnx    FP16 MLP built with onnx.helper: x FP16 [N,8] -> y FP16 [N,4]
        DIR/text_io.onnx two inputs, two outputs: x FP32 [N,4], word BYTES [N] ->
                         y FP32 [N,2] (MatMul), id INT64 [N] (CategoryMapper)
        DIR/cases.json   inputs and onnxruntime outputs for each model at batch 1 and 8,
                         in KServe Open Inference Protocol v2 tensor form
        DIR/refuse/      files the model-upload validator must refuse (see REFUSALS):
                         sequence.onnx (valid, but its output is a sequence of tensors),
                         external_data.onnx (weights in a weights.bin that is left out),
                         huge_shape.onnx (input fixed at [200000,200000] FP32, 160 GB),
                         unknown_op.onnx (com.example FancyOp), bad_graph.onnx (an Add
                         reads a tensor nothing makes), cyclic_tree.onnx (a tree that
                         loops), text.onnx (CSV), random.onnx (bytes),
                         label_encoder.onnx (a string operator tract lacks),
                         string_linear.onnx (LogisticRegression on string labels, whose
                         LinearClassifier tract cannot type)

    python scripts/make_models.py example --out scripts/example-store
        models/iris/1/model.onnx     small iris RandomForestClassifier
        models/iris/1/manifest.json  name, version, sha256, size, created, signature
        and prints an example inference request with onnxruntime's answer.

    python scripts/make_models.py large --out DIR
        DIR/large_mlp.onnx  MLP: x [N,1024] -> 8 Gemm 1024x1024, Relu between -> y [N,1024] (32 MB)
        DIR/large_cnn.onnx  ResNet-like CNN: image [N,3,64,64] -> logits [N,100] (8 MB)
    python scripts/make_models.py huge --out DIR
        DIR/huge_mlp.onnx   MLP: x [N,2048] -> 19 Gemm 2048x2048, Relu between -> y [N,2048] (304 MB)
        for benchmarks, not the tests.

Every mode checks each model meant to be served with onnx.checker, runs it with
onnxruntime (the reference) and with the `tract` Python package (the same tract
version as the Rust crate), fails if tract disagrees by more than 1e-5 (1e-4 for
the large models; relative to the value where it exceeds 1) or gives a different
label, and prints how long onnxruntime and tract take to load it. The refusal
corpus is only checked to do with onnxruntime what REFUSALS expects; the script
also prints what onnx.checker says of each file and what tract says of sequence.onnx.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import tempfile
import time
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
from sklearn.linear_model import LogisticRegression

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
LARGE_BATCH_SIZES = (1, 4)
LARGE_TOLERANCE = 1e-4
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
    "UINT8": "u8", "UINT16": "u16", "UINT32": "u32", "UINT64": "u64", "BYTES": "string",
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
    np.dtype(object): "BYTES",  # numpy holds strings as Python objects
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


def finish_model(graph: onnx.GraphProto, extra_opsets: tuple[tuple[str, int], ...] = ()) -> onnx.ModelProto:
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET),
                       *(helper.make_opsetid(domain, version) for domain, version in extra_opsets)],
        producer_name=PRODUCER,
    )
    model.ir_version = IR_VERSION
    return model


def make_mlp(name: str = "mlp", sizes: tuple[int, ...] = (16, 32, 8, 4)) -> onnx.ModelProto:
    """x [batch,sizes[0]] -> Gemm layers with Relu between -> y [batch,sizes[-1]].
    By default x [batch,16] -> Gemm 16->32, Relu, Gemm 32->8, Relu, Gemm 8->4 -> y [batch,4]."""
    rng = rng_for(name)
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
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", sizes[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", sizes[-1]])],
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


def make_large_cnn() -> onnx.ModelProto:
    """A ResNet-like CNN, about 2M parameters (8 MB): image [batch,3,64,64] -> stem Conv 3x3/2 (32)
    -> four stages, each a residual block (Conv 3x3, Relu, Conv 3x3, Add input, Relu) followed,
    except after the last, by a Conv 3x3/2 that doubles the channels -> GlobalAveragePool,
    Flatten, Gemm -> logits [batch,100]. Shapes: 32x32x32 -> 64x16x16 -> 128x8x8 -> 256x4x4."""
    rng = rng_for("large_cnn")
    nodes, inits = [], []
    node = helper.make_node

    def conv(x: str, name: str, c_in: int, c_out: int, stride: int = 1, relu: bool = True) -> str:
        inits.extend([weight(rng, f"{name}_W", (c_out, c_in, 3, 3), c_in * 9),
                      bias(rng, f"{name}_B", c_out)])
        nodes.append(node("Conv", [x, f"{name}_W", f"{name}_B"], [name], name=name,
                          kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[stride, stride]))
        if not relu:
            return name
        nodes.append(node("Relu", [name], [f"{name}_relu"], name=f"{name}_relu"))
        return f"{name}_relu"

    stages = 4
    channels = 32
    x = conv("image", "stem", 3, channels, stride=2)
    for stage in range(stages):
        block = f"block{stage}"
        h = conv(x, f"{block}_conv1", channels, channels)
        h = conv(h, f"{block}_conv2", channels, channels, relu=False)
        nodes.append(node("Add", [x, h], [f"{block}_add"], name=f"{block}_add"))
        nodes.append(node("Relu", [f"{block}_add"], [f"{block}_out"], name=f"{block}_out"))
        x = f"{block}_out"
        if stage < stages - 1:
            x = conv(x, f"down{stage}", channels, 2 * channels, stride=2)
            channels *= 2
    inits.extend([weight(rng, "fc_W", (channels, 100), channels), bias(rng, "fc_B", 100)])
    nodes += [
        node("GlobalAveragePool", [x], ["pool"], name="pool"),
        node("Flatten", ["pool"], ["flat"], name="flatten", axis=1),
        node("Gemm", ["flat", "fc_W", "fc_B"], ["logits"], name="fc"),
    ]
    graph = helper.make_graph(
        nodes,
        "large_cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 64, 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 100])],
        initializer=inits,
    )
    return finish_model(graph)


def make_value_info_mismatch() -> onnx.ModelProto:
    """What PyTorch's dynamo exporter writes: the input's batch is `batch`, but value_info
    declares an intermediate with another symbol, `s0`. onnxruntime runs it; tract's plain load
    refuses to unify the two, so maas loads it ignoring value_info.
    x [batch,4] -> Relu -> r [s0,4] (value_info) -> MatMul W[4,3] + b -> y [batch,3]."""
    rng = rng_for("value_info")
    node = helper.make_node
    nodes = [
        node("Relu", ["x"], ["r"], name="relu"),
        node("MatMul", ["r", "W"], ["m"], name="matmul"),
        node("Add", ["m", "b"], ["y"], name="add"),
    ]
    graph = helper.make_graph(
        nodes, "value_info", [float_value("x", ["batch", 4])], [float_value("y", ["batch", 3])],
        initializer=[weight(rng, "W", (4, 3), 4), bias(rng, "b", 3)],
        value_info=[float_value("r", ["s0", 4]), float_value("m", ["s0", 3])],
    )
    return finish_model(graph)


def make_constant_if() -> onnx.ModelProto:
    """An `If` whose condition is a constant True, with branches of different shapes (the
    untaken one flattens): exporters leave such graphs behind. onnxruntime runs the taken
    branch; tract refuses to type an `If` whose branches differ, so maas folds it first.
    x [batch,4] -> If(cond=True, then: Relu -> [batch,4], else: Reshape -> [4*batch]) -> y."""
    x = float_value("x", ["batch", 4])
    then_branch = helper.make_graph([helper.make_node("Relu", ["x"], ["taken"], name="relu")],
                                    "then", [], [float_value("taken", ["batch", 4])])
    flat = helper.make_tensor("flat", TensorProto.INT64, [1], [-1])
    else_branch = helper.make_graph([helper.make_node("Reshape", ["x", "flat"], ["untaken"], name="flatten")],
                                    "else", [], [float_value("untaken", ["n"])], initializer=[flat])
    node = helper.make_node("If", ["cond"], ["y"], name="if", then_branch=then_branch, else_branch=else_branch)
    cond = helper.make_tensor("cond", TensorProto.BOOL, [], [True])
    graph = helper.make_graph([node], "constant_if", [x], [float_value("y", ["batch", 4])], [cond])
    return finish_model(graph)


def make_two_io() -> onnx.ModelProto:
    """Two inputs and two outputs of different datatypes, for codecs that name them:
    a [batch,3], b [batch,2] -> y = Tanh(a Wa + b Wb + c) [batch,4] FP32,
    label = ArgMax(y, axis 1) [batch] INT64."""
    rng = rng_for("two_io")
    node = helper.make_node
    nodes = [
        node("MatMul", ["a", "Wa"], ["from_a"], name="matmul_a"),
        node("MatMul", ["b", "Wb"], ["from_b"], name="matmul_b"),
        node("Add", ["from_a", "from_b"], ["sum"], name="add"),
        node("Add", ["sum", "c"], ["pre"], name="bias"),
        node("Tanh", ["pre"], ["y"], name="tanh"),
        node("ArgMax", ["y"], ["label"], name="argmax", axis=1, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "two_io", [float_value("a", ["batch", 3]), float_value("b", ["batch", 2])],
        [float_value("y", ["batch", 4]),
         helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"])],
        initializer=[weight(rng, "Wa", (3, 4), 3), weight(rng, "Wb", (2, 4), 2), bias(rng, "c", 4)],
    )
    return finish_model(graph)


def make_half() -> onnx.ModelProto:
    """A half-precision MLP: x FP16 [batch,8] -> Cast FP32 -> MatMul 8x16, Relu, MatMul 16x4 ->
    Cast FP16 -> y FP16 [batch,4]. The arithmetic is FP32 inside, as onnxruntime's CPU kernels
    and tract agree on it; the tensors maas carries are FP16."""
    rng = rng_for("half")
    node = helper.make_node
    nodes = [
        node("Cast", ["x"], ["x32"], name="widen", to=TensorProto.FLOAT),
        node("MatMul", ["x32", "W0"], ["h"], name="matmul0"),
        node("Relu", ["h"], ["r"], name="relu"),
        node("MatMul", ["r", "W1"], ["y32"], name="matmul1"),
        node("Cast", ["y32"], ["y"], name="narrow", to=TensorProto.FLOAT16),
    ]
    graph = helper.make_graph(
        nodes, "half",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["batch", 4])],
        initializer=[weight(rng, "W0", (8, 16), 8), weight(rng, "W1", (16, 4), 16)],
    )
    return finish_model(graph)


def make_half_plus_two() -> onnx.ModelProto:
    """TensorFlow Serving's `half_plus_two` example as ONNX: x [batch] -> y = 0.5 x + 2 [batch],
    so its documented request and answer can be replayed."""
    node = helper.make_node
    half = numpy_helper.from_array(np.array(0.5, np.float32), "half")
    two = numpy_helper.from_array(np.array(2.0, np.float32), "two")
    nodes = [node("Mul", ["x", "half"], ["scaled"], name="mul"),
             node("Add", ["scaled", "two"], ["y"], name="add")]
    graph = helper.make_graph(nodes, "half_plus_two", [float_value("x", ["batch"])],
                              [float_value("y", ["batch"])], initializer=[half, two])
    return finish_model(graph)


SPECIES = ["setosa", "versicolor", "virginica"]


def make_text_io() -> onnx.ModelProto:
    """Two inputs and two outputs, one of each a string tensor: x FP32 [batch,4] -> MatMul
    W [4,2] -> y FP32 [batch,2]; word BYTES [batch] -> CategoryMapper (the species' names to
    0, 1, 2, anything else -1) -> id INT64 [batch]."""
    node = helper.make_node
    nodes = [
        node("MatMul", ["x", "W"], ["y"], name="matmul"),
        node("CategoryMapper", ["word"], ["id"], name="vocabulary", domain="ai.onnx.ml",
             cats_strings=SPECIES, cats_int64s=[0, 1, 2], default_int64=-1),
    ]
    graph = helper.make_graph(
        nodes, "text_io",
        [float_value("x", ["batch", 4]),
         helper.make_tensor_value_info("word", TensorProto.STRING, ["batch"])],
        [float_value("y", ["batch", 2]), helper.make_tensor_value_info("id", TensorProto.INT64, ["batch"])],
        initializer=[weight(rng_for("text_io"), "W", (4, 2), 4)],
    )
    return finish_model(graph, (("ai.onnx.ml", ML_OPSET),))


def text_io_inputs(batch: int) -> dict[str, np.ndarray]:
    rng = rng_for(f"text_io-input-{batch}")
    words = rng.choice([*SPECIES, "rose", ""], size=batch)
    return {"x": rng.uniform(-1.0, 1.0, size=(batch, 4)).astype(np.float32),
            "word": np.array([str(w) for w in words], dtype=object)}


# ---------------------------------------------------------------- scikit-learn models


def make_forest(n_estimators: int, max_depth: int, names: bool = False) -> onnx.ModelProto:
    """A RandomForestClassifier trained on the iris data that ships with scikit-learn, with
    ZipMap off, so probabilities are a [N,3] tensor (scripts/make_zoo.py covers the defaults).
    With `names`, trained on the species' names: the label output is a string tensor."""
    iris = load_iris()
    clf = RandomForestClassifier(
        n_estimators=n_estimators, max_depth=max_depth, random_state=0, n_jobs=1
    )
    clf.fit(iris.data.astype(np.float32), np.array(SPECIES)[iris.target] if names else iris.target)
    return sklearn_to_onnx(clf, "iris_species" if names else "iris_forest")


def sklearn_to_onnx(clf, name: str) -> onnx.ModelProto:
    """An iris classifier converted by skl2onnx with ZipMap off, at the opsets and IR version
    of the other models, with a fixed opset order."""
    model = convert_sklearn(
        clf,
        name=name,
        initial_types=[("float_input", FloatTensorType([None, 4]))],
        target_opset={"": OPSET, "ai.onnx.ml": ML_OPSET},
        options={id(clf): {"zipmap": False}},
    )
    model.ir_version = IR_VERSION
    model.producer_name = PRODUCER
    model.producer_version = ""
    # skl2onnx lists opset imports in set order, which can change with PYTHONHASHSEED. Fix it:
    # ML domain first (a stable sort, so the forest keeps the order it always had).
    ordered = [helper.make_opsetid(o.domain, o.version)
               for o in sorted(model.opset_import, key=lambda o: o.domain, reverse=True)]
    del model.opset_import[:]
    model.opset_import.extend(ordered)
    return model


# ---------------------------------------------------------------- inputs


def uniform_inputs(model: onnx.ModelProto, batch: int,
                   low: float = 0.0, high: float = 1.0) -> dict[str, np.ndarray]:
    """Uniform float32 values for each (FP32) graph input, its dynamic dimensions set to batch."""
    rng = rng_for(f"{model.graph.name}-input-{batch}")
    inputs = {}
    for value in graph_inputs(model):
        shape = [d.dim_value if d.HasField("dim_value") else batch for d in value.type.tensor_type.shape.dim]
        inputs[value.name] = rng.uniform(low, high, size=shape).astype(np.float32)
    return inputs


def make_string_linear() -> onnx.ModelProto:
    """A LogisticRegression trained on the species' names: skl2onnx writes a LinearClassifier
    with string labels, which tract cannot type ("String doesn't implement num_traits::Zero")."""
    iris = load_iris()
    clf = LogisticRegression(max_iter=500).fit(iris.data.astype(np.float32), np.array(SPECIES)[iris.target])
    return sklearn_to_onnx(clf, "iris_linear")


def make_label_encoder() -> onnx.ModelProto:
    """A LabelEncoder of the species' names to integers on text [batch]: a string operator
    tract lacks."""
    node = helper.make_node("LabelEncoder", ["text"], ["id"], name="encode", domain="ai.onnx.ml",
                            keys_strings=SPECIES, values_int64s=[0, 1, 2], default_int64=-1)
    text = helper.make_tensor_value_info("text", TensorProto.STRING, ["batch"])
    ids = helper.make_tensor_value_info("id", TensorProto.INT64, ["batch"])
    return one_node_model("label_encoder", node, [text], [ids], extra_opsets=(("ai.onnx.ml", 2),))


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


class Stopwatch:
    """Seconds taken by successive steps."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, step: str) -> None:
        now = time.perf_counter()
        self.laps[step] = now - self._last
        self._last = now

    def __str__(self) -> str:
        steps = " + ".join(f"{step} {seconds * 1e3:.0f}" for step, seconds in self.laps.items())
        total = f"{sum(self.laps.values()) * 1e3:.0f} ms"
        return f"{total} ({steps})" if len(self.laps) > 1 else total


def ort_session(source: onnx.ModelProto | Path) -> ort.InferenceSession:
    """A CPU session for a model in memory or, as the server would, in a file."""
    model = source.SerializeToString() if isinstance(source, onnx.ModelProto) else str(source)
    return ort.InferenceSession(model, providers=["CPUExecutionProvider"])


def run_ort(session: ort.InferenceSession, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, inputs)))


def load_tract(path: Path, model: onnx.ModelProto) -> tuple[tract.Runnable, Stopwatch]:
    """Load as shared/src/engine.rs does: set each input's fact with its dynamic dimensions
    as symbols (the dim_param name, or N for an unnamed batch dimension, which is what
    skl2onnx writes), then type the model (into_model) and optimise it for the default CPU
    runtime (into_runnable). Returns the runnable and the time each step took."""
    watch = Stopwatch()
    inference_model = tract.onnx().load(str(path))
    for index, value in enumerate(graph_inputs(model)):
        inference_model.set_input_fact(index, tract_fact(index, value))
    watch.lap("load")
    typed_model = inference_model.into_model()
    watch.lap("into_model")
    runnable = typed_model.into_runnable()
    watch.lap("into_runnable")
    return runnable, watch


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


def scaled_difference(got: np.ndarray, want: np.ndarray) -> float:
    """The largest |got - want| / max(1, |want|): absolute up to 1, relative for larger values."""
    if not want.size:
        return 0.0
    want = want.astype(np.float64)
    return float(np.max(np.abs(got.astype(np.float64) - want) / np.maximum(1.0, np.abs(want))))


def compare(what: str, expected: dict[str, np.ndarray], actual: dict[str, np.ndarray],
            tolerance: float = TOLERANCE) -> float:
    """Fail unless actual matches expected: floats within tolerance (see scaled_difference),
    anything else equal. Returns the largest float difference."""
    worst = 0.0
    for name, want in expected.items():
        got = actual[name]
        if (got.dtype, got.shape) != (want.dtype, want.shape):
            sys.exit(f"{what}: output {name} is {got.dtype} {got.shape}, expected {want.dtype} {want.shape}")
        if np.issubdtype(want.dtype, np.floating):
            diff = scaled_difference(got, want)
            if diff > tolerance:
                sys.exit(f"{what}: output {name} differs by {diff} (> {tolerance})")
            worst = max(worst, diff)
        elif not np.array_equal(got, want):
            sys.exit(f"{what}: output {name} differs: {got.tolist()} vs {want.tolist()}")
    return worst


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The graph's real inputs: old exporters also list initializers as inputs."""
    initializers = {init.name for init in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in initializers]


def save_and_verify(model: onnx.ModelProto, path: Path, cases: list[dict[str, np.ndarray]],
                    tolerance: float = TOLERANCE, tract_refuses: str | None = None) -> list[dict]:
    """Write the model, check it, load it with onnxruntime and tract (printing how long each
    takes), and run every input set with both. Returns one {"inputs", "outputs"} record
    (numpy arrays) per input set.

    `tract_refuses`: the model is meant to fail tract's plain load (the Rust engine falls back
    to another loader); the plain load must fail with an error containing this text, and only
    onnxruntime's outputs are recorded."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())
    onnx.checker.check_model(str(path), full_check=True)
    ort_watch = Stopwatch()
    session = ort_session(path)
    ort_watch.lap("InferenceSession")
    runnable = None
    if tract_refuses is None:
        runnable, tract_watch = load_tract(path, model)
        print(f"  {path.name}: {path.stat().st_size:,} bytes; loading takes onnxruntime {ort_watch}, "
              f"tract {tract_watch}")
    else:
        try:
            load_tract(path, model)
        except Exception as error:  # the binding raises a plain Exception with tract's message
            if tract_refuses not in str(error):
                raise
            print(f"  {path.name}: tract's plain load refuses it as intended ({tract_refuses})")
        else:
            sys.exit(f"{path.name}: tract's plain load accepts it; it no longer exercises the fallback")
    records = []
    for inputs in cases:
        expected = run_ort(session, inputs)
        batch = next(iter(inputs.values())).shape[0]
        if runnable is not None and any(a.dtype == object for a in inputs.values()):
            print(f"  {path.name}: batch {batch} not run by tract here: its Python binding takes no "
                  "string tensors (the Rust tests compare maas's outputs with onnxruntime's)")
        elif runnable is not None:
            diff = compare(f"{path.name} batch {batch}", expected, run_tract(runnable, model, inputs), tolerance)
            print(f"  {path.name}: batch {batch} tract matches onnxruntime (max diff {diff:.2e})")
        records.append({"inputs": inputs, "outputs": expected})
    return records


# ---------------------------------------------------------------- refusal corpus

HUGE_DIM = 200_000  # [HUGE_DIM, HUGE_DIM] FP32 is 160 GB
PROBE_LIMIT = 1 << 30  # bytes of zeros ort_verdict will feed a model
REFUSAL_TEXT = """sepal_length,sepal_width,petal_length,petal_width,species
5.1,3.5,1.4,0.2,setosa
7.0,3.2,4.7,1.4,versicolor
6.3,3.3,6.0,2.5,virginica
"""


def float_value(name: str, shape: list[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def one_node_model(name: str, node: onnx.NodeProto, inputs: list[onnx.ValueInfoProto],
                   outputs: list[onnx.ValueInfoProto], initializer: tuple[TensorProto, ...] = (),
                   extra_opsets: tuple[tuple[str, int], ...] = ()) -> onnx.ModelProto:
    graph = helper.make_graph([node], name, inputs, outputs, initializer=list(initializer))
    return finish_model(graph, extra_opsets)


def make_external_data() -> bytes:
    """x [batch,64] MatMul a 64x64 weight that onnx saves to weights.bin beside the model.
    Returns only the model's bytes: the corpus file references a weights.bin that is not there."""
    model = one_node_model(
        "external_data", helper.make_node("MatMul", ["x", "W"], ["y"], name="matmul"),
        [float_value("x", ["batch", 64])], [float_value("y", ["batch", 64])],
        (weight(rng_for("external_data"), "W", (64, 64), 64),),
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "external_data.onnx"
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location="weights.bin", size_threshold=0)
        onnx.checker.check_model(str(path), full_check=True)  # valid while weights.bin is there
        return path.read_bytes()


def make_huge_shape() -> onnx.ModelProto:
    """A valid Relu whose input is fixed at [HUGE_DIM, HUGE_DIM] FP32: one run needs 160 GB."""
    shape = [HUGE_DIM, HUGE_DIM]
    return one_node_model("huge_shape", helper.make_node("Relu", ["x"], ["y"], name="relu"),
                          [float_value("x", shape)], [float_value("y", shape)])


def make_unknown_op() -> onnx.ModelProto:
    """A well-formed model whose one node is com.example FancyOp, which no runtime implements."""
    return one_node_model(
        "unknown_op", helper.make_node("FancyOp", ["x"], ["y"], name="fancy", domain="com.example"),
        [float_value("x", ["batch", 4])], [float_value("y", ["batch", 4])],
        extra_opsets=(("com.example", 1),),
    )


def make_sequence_output() -> onnx.ModelProto:
    """A valid SequenceConstruct of x and x: its output is a sequence, not a tensor."""
    node = helper.make_node("SequenceConstruct", ["x", "x"], ["y"], name="sequence")
    output = helper.make_tensor_sequence_value_info("y", TensorProto.FLOAT, ["batch", 4])
    return one_node_model("sequence", node, [float_value("x", ["batch", 4])], [output])


def make_cyclic_tree() -> onnx.ModelProto:
    """A TreeEnsembleRegressor whose tree loops: node 1 goes to 2 and node 2 back to 1 when
    x[0] <= -1 (zeros take the way out, to leaf 3). onnxruntime refuses it at load."""
    node = helper.make_node(
        "TreeEnsembleRegressor", ["x"], ["y"], name="cyclic_tree", domain="ai.onnx.ml", n_targets=1,
        nodes_treeids=[0, 0, 0, 0], nodes_nodeids=[0, 1, 2, 3], nodes_featureids=[0, 0, 0, 0],
        nodes_modes=["BRANCH_LEQ", "BRANCH_LEQ", "BRANCH_LEQ", "LEAF"],
        nodes_values=[0.5, -1.0, -1.0, 0.0], nodes_truenodeids=[1, 2, 1, 0],
        nodes_falsenodeids=[3, 3, 3, 0], target_treeids=[0], target_nodeids=[3], target_ids=[0],
        target_weights=[1.0])
    return one_node_model("cyclic_tree", node, [float_value("x", ["batch", 1])],
                          [float_value("y", ["batch", 1])], extra_opsets=(("ai.onnx.ml", 3),))


def make_bad_graph() -> onnx.ModelProto:
    """A well-formed protobuf whose Add reads a tensor "missing" that nothing makes."""
    return one_node_model("bad_graph", helper.make_node("Add", ["x", "missing"], ["y"], name="add"),
                          [float_value("x", ["batch", 4])], [float_value("y", ["batch", 4])])


# Each file the model-upload validator must refuse: what makes it (bytes or a model), and what
# onnxruntime does with it (see ort_verdict). sequence.onnx is a valid model that onnxruntime
# runs, but its output is a sequence, which the Open Inference Protocol cannot carry (ZipMap's
# sequence of maps is the one exception: maas serves its probabilities as a tensor);
# huge_shape.onnx loads too, but is not run. Truncated models are made by the Rust tests.
REFUSALS = {
    "sequence.onnx": (make_sequence_output, "runs"),
    "external_data.onnx": (make_external_data, "refused"),
    "huge_shape.onnx": (make_huge_shape, "loads"),
    "unknown_op.onnx": (make_unknown_op, "refused"),
    "bad_graph.onnx": (make_bad_graph, "refused"),
    "cyclic_tree.onnx": (make_cyclic_tree, "refused"),
    "text.onnx": (lambda: REFUSAL_TEXT.encode(), "refused"),
    "random.onnx": (lambda: rng_for("random").bytes(4096), "refused"),
    "label_encoder.onnx": (make_label_encoder, "loads"),
    "string_linear.onnx": (make_string_linear, "runs"),
}


def error_text(err: Exception) -> str:
    """An error message on one line, without the Rust backtrace tract may append."""
    return " ".join(str(err).split("\n\nStack backtrace:")[0].split())


def checker_verdict(path: Path) -> str:
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as err:  # protobuf, checker and shape-inference errors alike
        return error_text(err)
    return "valid"


def ort_verdict(path: Path) -> tuple[str, str]:
    """What onnxruntime does with a file: ("refused", error) when it cannot load it; else it runs
    it once on zeros (dynamic dimensions 1): ("runs", output types) or ("fails to run", error),
    unless the inputs would take more than PROBE_LIMIT bytes: ("loads", their size)."""
    try:
        session = ort_session(path)
    except Exception as err:  # onnxruntime raises its own exception types
        return "refused", error_text(err)
    inputs = session.get_inputs()
    if any(i.type != "tensor(float)" for i in inputs):
        return "loads", "not run: an input is not FP32"
    shapes = {i.name: [d if isinstance(d, int) else 1 for d in i.shape] for i in inputs}
    size = sum(4 * math.prod(shape) for shape in shapes.values())
    if size > PROBE_LIMIT:
        return "loads", f"not run: its inputs would take {size / 1e9:,.0f} GB"
    try:
        session.run(None, {name: np.zeros(shape, np.float32) for name, shape in shapes.items()})
    except Exception as err:
        return "fails to run", error_text(err)
    return "runs", ", ".join(f"{o.name} {o.type}" for o in session.get_outputs())


def tract_verdict(path: Path) -> str:
    try:
        load_tract(path, onnx.load(str(path)))
    except tract.TractError as err:
        return f"refused: {error_text(err)}"
    return "loads"


def make_refusal_corpus(out: Path) -> None:
    """Write REFUSALS into out, failing unless onnxruntime does with each what is expected."""
    out.mkdir(parents=True, exist_ok=True)
    for name, (make, expected) in REFUSALS.items():
        made = make()
        path = out / name
        path.write_bytes(made if isinstance(made, bytes) else made.SerializeToString())
        outcome, detail = ort_verdict(path)
        print(f"  {out.name}/{name}: {path.stat().st_size:,} bytes; onnx.checker: {checker_verdict(path)}")
        print(f"      onnxruntime {outcome}: {detail}")
        if outcome != expected:
            sys.exit(f"{out.name}/{name}: onnxruntime {outcome}, expected {expected}")
    print(f"  {out.name}/sequence.onnx, tract: {tract_verdict(out / 'sequence.onnx')}")


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
    mlp, cnn = make_mlp(), make_cnn()
    forest = make_forest(n_estimators=10, max_depth=4)
    forest_session = ort_session(forest)
    species = make_forest(n_estimators=10, max_depth=4, names=True)
    half, text_io = make_half(), make_text_io()
    value_info, constant_if = make_value_info_mismatch(), make_constant_if()
    two_io, half_plus_two = make_two_io(), make_half_plus_two()
    # name: (model, inputs for a batch size, what tract's plain load must refuse it with)
    models = {
        "mlp": (mlp, lambda batch: uniform_inputs(mlp, batch, low=-1.0), None),
        "cnn": (cnn, lambda batch: uniform_inputs(cnn, batch), None),
        "forest": (forest, lambda batch: forest_inputs(batch, forest_session), None),
        "value_info": (value_info, lambda batch: uniform_inputs(value_info, batch, low=-1.0),
                       "Impossible to unify"),
        "constant_if": (constant_if, lambda batch: uniform_inputs(constant_if, batch, low=-1.0),
                        "IfThenElse"),
        "two_io": (two_io, lambda batch: uniform_inputs(two_io, batch, low=-1.0), None),
        "half_plus_two": (half_plus_two, lambda batch: uniform_inputs(half_plus_two, batch, low=-4.0, high=4.0), None),
        # tract's own TreeEnsembleClassifier cannot type string labels; maas's replaces it
        # (shared/src/engine/ml.rs), so only onnxruntime's outputs are recorded here.
        "species": (species, lambda batch: forest_inputs(batch, forest_session),
                    "String doesn't implement num_traits::Zero"),
        "half": (half, lambda batch: {k: v.astype(np.float16)
                                      for k, v in uniform_inputs(half, batch, low=-1.0).items()}, None),
        "text_io": (text_io, text_io_inputs, None),
    }
    cases = []
    for name, (model, inputs_for, tract_refuses) in models.items():
        records = save_and_verify(model, out / f"{name}.onnx", [inputs_for(b) for b in BATCH_SIZES],
                                  tract_refuses=tract_refuses)
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
    make_refusal_corpus(out / "refuse")
    print(f"wrote {', '.join(REFUSALS)} to {out / 'refuse'}")


def make_large_set(out: Path) -> None:
    models = {"large_mlp": make_mlp("large_mlp", (1024,) * 9), "large_cnn": make_large_cnn()}
    for name, model in models.items():
        cases = [uniform_inputs(model, batch) for batch in LARGE_BATCH_SIZES]
        save_and_verify(model, out / f"{name}.onnx", cases, LARGE_TOLERANCE)
    print(f"wrote {', '.join(f'{n}.onnx' for n in models)} to {out}")


def make_huge_set(out: Path) -> None:
    """One model of at least 300 MB for cold-start benchmarks (scripts/bench.sh), checked
    against onnxruntime like the large ones."""
    model = make_mlp("huge_mlp", (2048,) * 20)
    cases = [uniform_inputs(model, batch) for batch in LARGE_BATCH_SIZES]
    save_and_verify(model, out / "huge_mlp.onnx", cases, LARGE_TOLERANCE)
    print(f"wrote huge_mlp.onnx to {out}")


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
    parser.add_argument("mode", choices=["test", "example", "large", "huge"],
                        help="test: models, cases.json and refusal corpus for the test suite; "
                             "example: the iris model and manifest shipped for the local server; "
                             "large: bigger models for benchmarks; huge: one of 304 MB")
    parser.add_argument("--out", type=Path, required=True, help="directory to write into")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    modes = {"test": make_test_set, "example": make_example, "large": make_large_set,
             "huge": make_huge_set}
    modes[args.mode](args.out)


if __name__ == "__main__":
    main()
