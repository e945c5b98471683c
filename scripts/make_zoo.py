#!/usr/bin/env python3
"""Build the model zoo: ONNX models as people export them, from PyPI-installable sources only.

maas (ONNX models served from AWS Lambda, run with the Rust crate tract-onnx 0.23) must load
the models people actually export. This zoo is what the coverage test
(tests/it/zoo.rs) and the engine report (scripts/bench_zoo.sh) run: each model with its
inputs at two batch sizes and onnxruntime's outputs for them, the independent reference.

    python scripts/make_zoo.py build --out DIR [--wheels DIR]
        scikit-learn models converted by skl2onnx with its default options (so ZipMap is on):
          sk_logistic      LogisticRegression on iris
          sk_forest        RandomForestClassifier on iris (100 trees)
          sk_boosting      GradientBoostingClassifier on iris (100 rounds x 3 classes)
          sk_forest_binary, sk_boosting_binary: the same on breast_cancer (two classes)
          sk_forest_reg    RandomForestRegressor on diabetes (100 trees)
          sk_boosting_reg  GradientBoostingRegressor on diabetes (100 rounds)
          sk_scaled_mlp    Pipeline(StandardScaler, MLPClassifier) on breast_cancer: the
                           scaler as ai.onnx.ml's Scaler
          sk_forest_tensor, sk_boosting_tensor: the two classifiers with zipmap=False, which
                           stock tract loads (its tree speed, before and after, in the report)
        tree_{average,min,max}_reg  sk_boosting_reg with another aggregate_function
        onnx_if            an If whose condition depends on the input (onnx.helper)
        torch_*            PyTorch exports (legacy TorchScript exporter and dynamo=True),
                           copied from tests/zoo/ (see `torch` below)
        magika             Google's file-type detector, from the `magika` wheel
        silero_vad         Silero voice activity detector (pytorch export with If, 16 kHz),
                           from the `silero-vad` wheel
        silero_vad_sr, silero_vad_sr8k  the wheel's default silero_vad.onnx, whose `sr` input
                           picks the 16 or 8 kHz network by an If, at 16 and 8 kHz
        ppocr_cls          PaddleOCR text-direction classifier, from the `rapidocr-onnxruntime`
                           wheel
        DIR/zoo.json       [{model, source, bytes, tolerance, batches}], one per model
        DIR/cases.json     [{model, batch, inputs, outputs}] in Open Inference Protocol form
      Wheels are fetched with `pip download --no-deps` into --wheels (default DIR/wheels),
      only when missing.

    python scripts/make_zoo.py torch --out tests/zoo
        Re-exports the torch_* models with torch's two exporters. torch from PyPI is several
        GB (CUDA libraries included), too much for every CI run, so its exports are committed
        (a few KB each) and this mode needs a venv with torch and onnxscript.

Every case's reference comes from onnxruntime. ZipMap outputs (a list of {label: prob}
maps in onnxruntime) are recorded as a [batch, classes] FP32 tensor in class-label order,
which is how maas serves them.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_models import (  # noqa: E402  (the shared helpers of the test-model script)
    graph_inputs,
    ort_session,
    rng_for,
    tensor_json,
)

TORCH_DIR = Path(__file__).resolve().parent.parent / "tests" / "zoo"
# Batch sizes per case; the tree models use 32 too (the engine's speed target).
BATCHES = (1, 8)
# Models whose rows are not independent (an If on sum(x)), and the batch whose rows each get
# a case of their own as well.
ROWS_TIED = {"onnx_if": 8}
TREE_BATCHES = (1, 32)
TOLERANCE = 1e-4
TREE_TOLERANCE = 1e-5
# (package==version, path inside the wheel, zoo name)
WHEEL_MODELS = [
    ("magika==1.0.3", "magika/models/standard_v3_3/model.onnx", "magika"),
    ("silero-vad==6.2.3", "silero_vad/data/silero_vad_half.onnx", "silero_vad"),
    # The file the wheel loads by default: an `sr` input whose value picks the 16 or 8 kHz
    # network through an If; once at each rate.
    ("silero-vad==6.2.3", "silero_vad/data/silero_vad.onnx", "silero_vad_sr"),
    ("silero-vad==6.2.3", "silero_vad/data/silero_vad.onnx", "silero_vad_sr8k"),
    ("rapidocr-onnxruntime==1.4.4", "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
     "ppocr_cls"),
]


# ---------------------------------------------------------------- scikit-learn


def iris() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_iris
    data = load_iris()
    return data.data.astype(np.float32), data.target


def breast_cancer() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_breast_cancer
    data = load_breast_cancer()
    return data.data.astype(np.float32), data.target


def diabetes() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_diabetes
    data = load_diabetes()
    return data.data.astype(np.float32), data.target


def sklearn_models() -> dict[str, tuple[onnx.ModelProto, str]]:
    """Each estimator with scikit-learn's defaults (bar a fixed seed), converted with
    skl2onnx's defaults: no options, no target opset."""
    from skl2onnx import to_onnx
    from sklearn.ensemble import (GradientBoostingClassifier, GradientBoostingRegressor,
                                  RandomForestClassifier, RandomForestRegressor)
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    scaled_mlp = make_pipeline(StandardScaler(), MLPClassifier(max_iter=500, random_state=0))
    estimators = {
        "sk_logistic": (LogisticRegression(max_iter=1000), iris),
        "sk_forest": (RandomForestClassifier(random_state=0), iris),
        "sk_boosting": (GradientBoostingClassifier(random_state=0), iris),
        "sk_forest_binary": (RandomForestClassifier(random_state=0), breast_cancer),
        "sk_boosting_binary": (GradientBoostingClassifier(random_state=0), breast_cancer),
        "sk_forest_reg": (RandomForestRegressor(random_state=0), diabetes),
        "sk_boosting_reg": (GradientBoostingRegressor(random_state=0), diabetes),
        "sk_scaled_mlp": (scaled_mlp, breast_cancer),
    }
    models = {}
    for name, (estimator, dataset) in estimators.items():
        x, y = dataset()
        estimator.fit(x, y)
        source = f"scikit-learn {type(estimator).__name__} on {dataset.__name__}, skl2onnx defaults"
        models[name] = (to_onnx(estimator, x[:1]), source)
        if name in ("sk_forest", "sk_boosting"):
            # The same trees with ZipMap off: what stock tract can load, for the speed report.
            models[f"{name}_tensor"] = (to_onnx(estimator, x[:1], options={"zipmap": False}),
                                        f"{source} but zipmap=False")
    return models


def sklearn_inputs(name: str, batch: int, session) -> dict[str, np.ndarray]:
    """Real rows plus a little noise. For classifiers, rows whose two best probabilities are
    within 0.05 are skipped, so the expected label never hangs on float rounding."""
    two_classes = "_binary" in name or name == "sk_scaled_mlp"
    x, _ = (diabetes if "_reg" in name else breast_cancer if two_classes else iris)()
    rng = rng_for(f"{name}-input-{batch}")
    rows = []
    while len(rows) < batch:
        row = (x[rng.integers(len(x))] + rng.normal(0.0, 0.02 * x.std(axis=0))).astype(np.float32)
        if "_reg" not in name:
            probabilities = session.run(None, {"X": row[None, :]})[1][0]
            if isinstance(probabilities, dict):
                probabilities = list(probabilities.values())
            top2 = np.sort(probabilities)[-2:]
            if top2[1] - top2[0] <= 0.05:
                continue
        rows.append(row)
    return {"X": np.stack(rows)}


# ---------------------------------------------------------------- built by hand


def aggregate_variants(regressor: onnx.ModelProto) -> dict[str, tuple[onnx.ModelProto, str]]:
    """The gradient-boosting regressor's trees with AVERAGE, MIN and MAX aggregation, which
    no scikit-learn converter writes but the ONNX-ML specification allows."""
    variants = {}
    for aggregate in ("AVERAGE", "MIN", "MAX"):
        model = onnx.ModelProto()
        model.CopyFrom(regressor)
        node = next(n for n in model.graph.node if n.op_type == "TreeEnsembleRegressor")
        kept = [a for a in node.attribute if a.name != "aggregate_function"]
        del node.attribute[:]
        node.attribute.extend([*kept, helper.make_attribute("aggregate_function", aggregate)])
        variants[f"tree_{aggregate.lower()}_reg"] = (
            model, f"sk_boosting_reg with aggregate_function={aggregate} (edited with onnx)")
    return variants



def make_data_dependent_if() -> onnx.ModelProto:
    """y = x * 2 if sum(x) > 0 else x - 1: an If tract must evaluate at run time."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])

    def branch(name: str, op: str, constant: float) -> onnx.GraphProto:
        out = helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, ["N", 4])
        return helper.make_graph(
            [helper.make_node("Constant", [], [f"{name}_c"], value=helper.make_tensor(
                f"{name}_cv", TensorProto.FLOAT, [], [constant])),
             helper.make_node(op, ["x", f"{name}_c"], [f"{name}_out"])],
            name, [], [out])

    nodes = [
        helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0),
        helper.make_node("Constant", [], ["zero"], value=helper.make_tensor("z", TensorProto.FLOAT, [], [0.0])),
        helper.make_node("Greater", ["total", "zero"], ["positive"]),
        helper.make_node("If", ["positive"], ["y"], then_branch=branch("then", "Mul", 2.0),
                         else_branch=branch("else", "Sub", 1.0)),
    ]
    graph = helper.make_graph(nodes, "data_dependent_if", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="maas scripts/make_zoo.py")
    model.ir_version = 8
    return model


# ---------------------------------------------------------------- torch (committed exports)


def torch_modules():
    """name -> (module, example input, dynamic axes {input axis: name}). Imported lazily:
    only the `torch` mode needs torch."""
    import torch
    from torch import nn
    torch.manual_seed(0)

    class Cnn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
            self.head = nn.Linear(16, 10)

        def forward(self, x):
            return self.head(self.features(x).flatten(1))

    class Attention(nn.Module):
        """One self-attention block written the way model code often is: shapes read from
        the input at run time (x.shape), reshaped per head."""

        def __init__(self, width: int = 32, heads: int = 4) -> None:
            super().__init__()
            self.heads = heads
            self.qkv, self.out, self.norm = nn.Linear(width, 3 * width), nn.Linear(width, width), nn.LayerNorm(width)

        def forward(self, x):
            batch, steps, width = x.shape
            q, k, v = self.qkv(x).chunk(3, dim=-1)

            def per_head(t):
                return t.reshape(batch, steps, self.heads, width // self.heads).transpose(1, 2)

            q, k, v = per_head(q), per_head(k), per_head(v)
            weights = torch.softmax(q @ k.transpose(-1, -2) / (width // self.heads) ** 0.5, dim=-1)
            y = (weights @ v).transpose(1, 2).reshape(batch, steps, width)
            return self.norm(x + self.out(y))

    mlp = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 4))
    return {
        "mlp": (mlp.eval(), torch.randn(2, 16), {0: "batch"}),
        "cnn": (Cnn().eval(), torch.randn(2, 3, 16, 16), {0: "batch"}),
        "attention": (Attention().eval(), torch.randn(2, 6, 32), {0: "batch", 1: "steps"}),
    }


def export_torch(out: Path) -> None:
    import torch
    out.mkdir(parents=True, exist_ok=True)
    for name, (module, example, axes) in torch_modules().items():
        legacy = out / f"torch_{name}_legacy.onnx"
        torch.onnx.export(module, (example,), str(legacy), input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": axes, "y": axes if name == "attention" else {0: "batch"}}, opset_version=17, dynamo=False)
        dynamo = out / f"torch_{name}_dynamo.onnx"
        dims = {axis: torch.export.Dim(label, min=1, max=1024) for axis, label in axes.items()}
        program = torch.onnx.export(module, (example,), input_names=["x"], output_names=["y"],
                                    dynamic_shapes=(dims,), dynamo=True)
        program.save(str(dynamo))
        for path in (legacy, dynamo):
            print(f"wrote {path} ({path.stat().st_size:,} bytes)")
    (out / "VERSIONS").write_text(f"torch {torch.__version__}\nonnx {onnx.__version__}\n")


# ---------------------------------------------------------------- third-party wheels


def fetch_wheel_models(wheels: Path) -> dict[str, tuple[onnx.ModelProto, str]]:
    wheels.mkdir(parents=True, exist_ok=True)
    models = {}
    for requirement, inner, name in WHEEL_MODELS:
        package, version = requirement.split("==")
        pattern = f"{package.replace('-', '_')}-{version}-*.whl"
        if not list(wheels.glob(pattern)):
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                            "--dest", str(wheels), requirement], check=True)
        wheel = next(iter(wheels.glob(pattern)))
        with zipfile.ZipFile(wheel) as archive:
            models[name] = (onnx.load_from_string(archive.read(inner)), f"{requirement} wheel: {inner}")
    return models


def wheel_inputs(name: str, batch: int) -> dict[str, np.ndarray]:
    rng = rng_for(f"{name}-input-{batch}")
    if name == "magika":
        # Bytes of a file's start, middle and end; 256 pads short files.
        return {"bytes": rng.integers(0, 257, size=(batch, 2048)).astype(np.int32)}
    if name.startswith("silero_vad"):
        # A window of audio per row (512 samples at 16 kHz, 256 at 8 kHz) and the recurrent
        # state; the sample rate too for the model that takes it.
        rate = 8000 if name.endswith("8k") else 16000
        samples = rate // 32
        audio = (0.1 * np.sin(np.arange(samples) / 7.0)[None, :]
                 + rng.normal(0, 0.05, (batch, samples)))
        inputs = {"input": audio.astype(np.float32),
                  "state": rng.normal(0, 0.1, (2, batch, 128)).astype(np.float32)}
        if name != "silero_vad":
            inputs["sr"] = np.array(rate, dtype=np.int64)
        return inputs
    if name == "ppocr_cls":
        return {"x": rng.uniform(-1, 1, size=(batch, 3, 48, 192)).astype(np.float32)}
    raise KeyError(name)


def generic_inputs(model: onnx.ModelProto, batch: int, name: str) -> dict[str, np.ndarray]:
    """Normal values for each FP32 input, dynamic dimensions at `batch` (first) or 6."""
    rng = rng_for(f"{name}-input-{batch}")
    inputs = {}
    for value in graph_inputs(model):
        dims = value.type.tensor_type.shape.dim
        shape = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (batch if axis == 0 else 6)
                 for axis, d in enumerate(dims)]
        inputs[value.name] = rng.normal(0, 1, size=shape).astype(np.float32)
    return inputs


# ---------------------------------------------------------------- reference outputs


def zipmap_labels(model: onnx.ModelProto) -> dict[str, list]:
    """Output name -> class labels, for every ZipMap output."""
    labels = {}
    for node in model.graph.node:
        if node.op_type == "ZipMap":
            attribute = next(a for a in node.attribute if a.name.startswith("classlabels"))
            labels[node.output[0]] = list(attribute.ints) or [s.decode() for s in attribute.strings]
    return labels


def reference(model: onnx.ModelProto, session, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = [o.name for o in session.get_outputs()]
    outputs = dict(zip(names, session.run(names, inputs)))
    for name, labels in zipmap_labels(model).items():
        outputs[name] = np.array([[row[label] for label in labels] for row in outputs[name]],
                                 dtype=np.float32)
    return outputs


def build(out: Path, wheels: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    models: dict[str, tuple[onnx.ModelProto, str]] = {}
    models.update(sklearn_models())
    models.update(aggregate_variants(models["sk_boosting_reg"][0]))
    models["onnx_if"] = (make_data_dependent_if(), "onnx.helper: If on sum(x) > 0")
    for path in sorted(TORCH_DIR.glob("torch_*.onnx")):
        exporter = "dynamo=True" if path.stem.endswith("dynamo") else "legacy exporter"
        models[path.stem] = (onnx.load(str(path)), f"torch.onnx.export, {exporter} (tests/zoo/{path.name})")
    models.update(fetch_wheel_models(wheels))

    zoo, cases = [], []
    for name, (model, source) in models.items():
        path = out / f"{name}.onnx"
        path.write_bytes(model.SerializeToString())
        session = ort_session(path)
        trees = name.startswith(("sk_", "tree_")) and name != "sk_logistic"
        batches = TREE_BATCHES if trees else BATCHES
        for batch in batches:
            if name.startswith(("sk_", "tree_")):
                inputs = sklearn_inputs(name, batch, session)
            elif any(name == w[2] for w in WHEEL_MODELS):
                inputs = wheel_inputs(name, batch)
            else:
                inputs = generic_inputs(model, batch, name)
            # A model whose rows are not independent also gets each row of its batch as a
            # case of its own: what batch-predict must answer for that row read as a record.
            rows = range(batch) if ROWS_TIED.get(name) == batch else range(0)
            alone = [{n: np.asarray(a)[i:i + 1] for n, a in inputs.items()} for i in rows]
            for feed in [inputs, *alone]:
                outputs = reference(model, session, feed)
                cases.append({
                    "model": name,
                    "batch": len(next(iter(feed.values()))),
                    "inputs": [tensor_json(n, np.asarray(a)) for n, a in feed.items()],
                    "outputs": [tensor_json(n, np.asarray(a)) for n, a in outputs.items()],
                })
        zoo.append({"model": name, "source": source, "bytes": path.stat().st_size,
                    "tolerance": TREE_TOLERANCE if trees else TOLERANCE, "batches": list(batches)})
        print(f"  {name}: {path.stat().st_size:,} bytes, {source}")
    (out / "zoo.json").write_text(json.dumps(zoo, indent=1) + "\n")
    lines = ",\n".join("  " + json.dumps(case) for case in cases)
    (out / "cases.json").write_text(f"[\n{lines}\n]\n")
    print(f"wrote {len(zoo)} models, zoo.json and cases.json ({len(cases)} cases) to {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["build", "torch"])
    parser.add_argument("--out", type=Path, required=True, help="directory to write into")
    parser.add_argument("--wheels", type=Path, help="where downloaded wheels are kept")
    args = parser.parse_args()
    if args.mode == "torch":
        export_torch(args.out)
    else:
        build(args.out, args.wheels or args.out / "wheels")


if __name__ == "__main__":
    main()
