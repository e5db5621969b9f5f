"""int8 files that hold on real models: each layer's sensitivity measured, the few sensitive ones kept in float.

An all-int8 file is tried first and measured on both kernel sets (aekit.edge.runtimes.KERNELS). When it
misses the bound and a margin on either, every quantizable node is quantized alone, all others in float,
and the file's agreement with Keras measured: the per-layer sensitivity report. Nodes are then kept in
float, the most damaging first, until the file agrees on both kernel sets (onnxruntime's
`nodes_to_exclude`; the TFLite quantizer's denylisted nodes, as TF's QuantizationDebugger selects them).
Calibration runs once per file; each candidate only re-quantizes. What was kept in float, and why, is
recorded in the manifest entry's `quantization`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from aekit.errors import AekitError
from aekit.lazy import keras, tf
from aekit.quiet import quiet_native_output as _quiet

# A chosen file agrees with Keras to its bound plus this on the selection images (training images, not the
# parity ones), so the parity check on other images, and other CPUs' rounding, keep a clear margin.
MARGIN_DB = 3.0
# What an int8 encoder is chosen to reach, on every kernel set (it is then held to the int8 bound like every
# file): its latents are what a device stores and sends, often to a float decoder, so its share of the round
# trip's error is kept small (40 dB: 1% of the pixel range RMS). A decoder aims at the bound.
AIM_DB = {"encoder": 40.0}
# "auto" keeps at most this share of the quantizable nodes in float: past it, an fp16 file is the better one.
MAX_FLOAT_SHARE = 0.5
SELECTION_IMAGES = 256
PROBE_IMAGES = 64  # each node's sensitivity is measured on the first of them (enough to rank the nodes)
# The kernel sets a choice is measured on (aekit.edge.runtimes.KERNELS): the reference ones are too slow to
# measure every candidate on, and are checked on the chosen file at export (REFERENCE_PARITY_IMAGES).
CHOICE_KERNELS = ("default", "builtin")
# Ops that only move values: quantizing them alone measures nothing (their neighbours carry the scales).
LAYOUT_OPS = {
    "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Shape", "Gather", "Concat", "Slice", "Cast",
    "RESHAPE", "TRANSPOSE", "SHAPE", "STRIDED_SLICE", "PACK", "QUANTIZE", "DEQUANTIZE",
}  # fmt: skip
CHOICES_HELP = "auto (measured per model), none (every node int8), or a comma list of node names from the sensitivity report"


@dataclass(frozen=True)
class Node:
    """One quantizable operation, by the runtime's own name (an ONNX node name; a TFLite op's output tensor)."""

    name: str
    op: str


@dataclass
class Int8Choice:
    """How one int8 file was made: which nodes stayed float, what each candidate measured."""

    how: str  # "all int8", "auto", "given"
    float_nodes: list[Node] = field(default_factory=list)
    all_int8_db: dict[str, float] = field(default_factory=dict)  # kernels -> agreement of the all-int8 file
    chosen_db: dict[str, float] = field(default_factory=dict)  # kernels -> agreement of the file written
    sensitivity: list[dict] | None = None  # [{"node", "op", "agreement_db"}]: that node alone int8
    nodes: int = 0  # quantizable nodes in the graph
    target_db: float = 0.0
    kernels: str = "default"  # the kernel set the sensitivity was measured on
    note: str | None = None  # what keeping these nodes float costs beyond precision (speed), when it does

    @property
    def passed(self) -> bool:
        return bool(self.chosen_db) and min(self.chosen_db.values()) >= self.target_db

    def to_json(self) -> dict:
        alone = {row["node"]: row["agreement_db"] for row in self.sensitivity or []}
        record = {
            "float_nodes": [{"node": n.name, "op": n.op, "agreement_alone_db": alone.get(n.name)} for n in self.float_nodes],
            "chosen_by": self.how,
            "quantizable_nodes": self.nodes,
            "aim_db": self.target_db,
            "all_int8_agreement_db": self.all_int8_db,
            "selection_agreement_db": self.chosen_db,
            "selection_images": "training images (not the parity ones)",
        }
        if self.float_nodes:
            worst = ", ".join(f"{n.op} {n.name}" for n in self.float_nodes[:3])
            record["why"] = (
                f"all int8 agreed to {_fmt(self.all_int8_db)}, below {self.target_db:g} dB (what it aims at and "
                f"a {MARGIN_DB:g} dB margin); quantized alone, {worst}{' …' if len(self.float_nodes) > 3 else ''} "
                f"cost the most, and with {len(self.float_nodes)} of {self.nodes} nodes in float the file agrees "
                f"to {_fmt(self.chosen_db)}"
            )
        if self.note:
            record["note"] = self.note
        if self.sensitivity is not None:
            record["sensitivity"] = {"kernels": self.kernels, "nodes": self.sensitivity}
        return record


def _fmt(agreements: dict[str, float]) -> str:
    return " / ".join(f"{v:.1f} dB ({k})" for k, v in agreements.items())


def noise_power(agreement_db: float) -> float:
    """The mean squared difference a PSNR over [0, 1] stands for."""
    return 10 ** (-agreement_db / 10)


def parse_float_nodes(text: str) -> str | tuple[str, ...]:
    """--int8-float as given: "auto", "none", or node names (a tuple)."""
    text = (text or "auto").strip()
    if text in ("auto", "none"):
        return text
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise AekitError(f"--int8-float {text!r}: expected {CHOICES_HELP}.")
    return names


def choose(
    quantizer,
    measure: Callable[..., dict[str, float]],
    bound_db: float,
    scratch: Path,
    float_nodes: str | tuple[str, ...] = "auto",
    report: bool = False,
    aim_db: float | None = None,
) -> tuple[Path, Int8Choice]:
    """Writes the int8 file that holds (see the module doc) and returns its path and how it was made.

    Args:
        quantizer: an OnnxQuantizer or TFLiteQuantizer, calibrated.
        measure: (a candidate file, kernel sets, images=all) -> {kernels: agreement dB} on the selection images.
        bound_db: the parity bound the file will be held to.
        aim_db: a higher agreement to choose the file for (AIM_DB: encoders), when there is one.
        float_nodes: "auto", "none", or node names to keep in float.
        report: measure every node's sensitivity even when the all-int8 file holds.
    """
    target = max(bound_db, aim_db or bound_db) + MARGIN_DB
    nodes = quantizer.nodes
    measure = _unloadable_as_zero(measure)
    choice = Int8Choice("all int8", nodes=len(nodes), target_db=target)
    candidate = scratch / f"candidate{quantizer.suffix}"
    if isinstance(float_nodes, tuple):
        known = {n.name: n for n in nodes}
        unknown = [n for n in float_nodes if n not in known]
        if unknown:
            shown = ", ".join(sorted(known)[:4])
            raise AekitError(
                f"--int8-float {unknown[0]!r} is not a quantizable node of this file (its nodes include {shown}, …). "
                "Pass names from the manifest's quantization.sensitivity (export with --sensitivity), or --int8-float auto."
            )
        choice.how, choice.float_nodes = "given", [known[n] for n in float_nodes]
        quantizer.write(candidate, [n.name for n in choice.float_nodes])
        choice.chosen_db = measure(candidate, CHOICE_KERNELS)
        return candidate, choice

    quantizer.write(candidate)
    choice.all_int8_db = choice.chosen_db = measure(candidate, CHOICE_KERNELS)
    holds = choice.passed
    if (holds or float_nodes == "none") and not report:
        return candidate, choice
    # Measured on one kernel set: the default one unless only another fails (float ops without XNNPACK are slow).
    failing = [k for k in CHOICE_KERNELS if choice.all_int8_db[k] < target]
    kernels = choice.kernels = "default" if "default" in failing or not failing else failing[0]
    probe = scratch / f"probe{quantizer.suffix}"
    alone = {}
    for node in nodes:  # that node int8, every other in float
        quantizer.write(probe, [n.name for n in nodes if n != node])
        alone[node] = measure(probe, (kernels,), PROBE_IMAGES)[kernels]
    choice.sensitivity = [{"node": n.name, "op": n.op, "agreement_db": round(a, 2)} for n, a in alone.items()]
    if holds or float_nodes == "none":
        quantizer.write(candidate)
        return candidate, choice

    # Noise powers add (near enough): keep the worst in float until the rest is predicted to hold, then measure.
    order = sorted(nodes, key=lambda n: alone[n])
    cap = max(1, math.floor(MAX_FLOAT_SHARE * len(nodes)))
    budget = noise_power(target)
    choice.how = "auto"
    for count in range(1, cap + 1):
        kept = order[:count]
        rest = sum(noise_power(alone[n]) for n in order[count:])
        if rest > budget and count < cap:
            continue
        quantizer.write(candidate, [n.name for n in kept])
        choice.float_nodes, choice.chosen_db = kept, measure(candidate, (kernels,))
        if choice.passed:  # and on the other kernel set too
            choice.chosen_db = measure(candidate, CHOICE_KERNELS)
            if choice.passed:
                break
    return candidate, choice


def _groups(inputs: np.ndarray, batch: int, fixed: bool) -> list[np.ndarray]:
    """Calibration inputs in groups of `batch`; for a fixed-batch file the last group is padded by repeating its
    last input (min/max calibration is unchanged by a repeat)."""
    groups = [inputs[i : i + batch] for i in range(0, len(inputs), batch)]
    if fixed and groups and len(groups[-1]) < batch:
        groups[-1] = np.concatenate([groups[-1], np.repeat(groups[-1][-1:], batch - len(groups[-1]), axis=0)])
    return groups


def _unloadable_as_zero(measure):
    """A candidate a runtime refuses to load (e.g. XNNPACK refusing an int8 scale ratio) agrees to 0 dB there."""

    def measured(path, kernel_sets, *args):
        agreements = {}
        for kernels in kernel_sets:
            try:
                agreements.update(measure(path, (kernels,), *args))
            except AekitError:
                agreements[kernels] = 0.0
        return agreements

    return measured


class OnnxQuantizer:
    """onnxruntime's static QDQ quantizer over one float .onnx file, calibrated once (its calibration cache)."""

    suffix = ".onnx"

    def __init__(self, float_path: Path, input_name: str, calib_inputs: np.ndarray, scratch: Path):
        import onnx
        from onnxruntime.quantization.shape_inference import quant_pre_process

        self.prepared = Path(scratch) / "prepared.onnx"
        self.cache = Path(scratch) / "calibration.json"
        self.input_name, self.calib_inputs = input_name, calib_inputs
        with _quiet():
            quant_pre_process(str(float_path), str(self.prepared), skip_symbolic_shape=True)
        graph = onnx.load(str(self.prepared)).graph
        self.nodes = [Node(n.name, n.op_type) for n in graph.node if n.op_type not in LAYOUT_OPS]
        first = graph.input[0].type.tensor_type.shape.dim[0]
        self.fixed = first.dim_value > 0  # a --static-batch file takes exactly its batch; any other, groups of 32
        self.batch = first.dim_value if self.fixed else 32

    def write(self, path: Path, float_nodes: list[str] | tuple[str, ...] = ()) -> None:
        from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

        groups, name = _groups(self.calib_inputs, self.batch, self.fixed), self.input_name

        class Reader(CalibrationDataReader):
            def __init__(self):
                self.batches = iter([{name: group} for group in groups])

            def get_next(self):
                return next(self.batches, None)

        with _quiet():
            quantize_static(
                str(self.prepared),
                str(path),
                Reader(),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                per_channel=True,
                reduce_range=True,  # QUANTIZATION_SCHEMES["onnx"]: no u8s8 saturation on AVX2-only CPUs
                calibrate_method=CalibrationMethod.MinMax,
                nodes_to_exclude=list(float_nodes),
                calibration_cache_path=str(self.cache),  # calibrated on the first call; later ones only quantize
            )


class TFLiteQuantizer:
    """The TFLite converter's full-integer quantizer, calibrated once.

    The converter calibrates (`_experimental_calibrate_only`, as tf.lite.experimental.QuantizationDebugger
    does) and each candidate is quantized from the calibrated model with its own denylist. BatchNorm is
    written as a per-channel 1x1 depthwise convolution first (batchnorm_as_depthwise).

    The quantizer keeps TRANSPOSE_CONV ops int8 whatever their node names (TF 2.21: a denylisted node
    name is ignored for them); only denylisting the op type keeps them float, so they are one node here,
    named by the type (OP_GROUPS).
    """

    OP_GROUPS = ("TRANSPOSE_CONV",)
    # Kept float, the quantizer leaves their weights int8: LiteRT runs them as hybrid kernels, not on XNNPACK.
    SLOW_FLOAT = {
        "TRANSPOSE_CONV": "TRANSPOSE_CONV kept float runs as LiteRT's hybrid kernel (int8 weights, float activations), "
        "which XNNPACK does not take: this file is smaller than the float32 one but slower on LiteRT; for speed "
        "export the decoder with --quantize fp16, or use the ONNX int8 decoder"
    }

    suffix = ".tflite"

    def __init__(self, model, role: str, calib_inputs: np.ndarray):
        converter = tf.lite.TFLiteConverter.from_keras_model(batchnorm_as_depthwise(model))
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        batch = model.input_shape[0]  # a --static-batch model is calibrated on groups of exactly its batch
        groups = _groups(calib_inputs, batch or 1, batch is not None)
        converter.representative_dataset = lambda: ([group] for group in groups)
        converter._experimental_calibrate_only = True
        with _quiet():
            self.calibrated = converter.convert()
        # An edge device feeds what it has (uint8 pixels, or int8 codes) and gets floats back.
        self.input_type = tf.int8 if role == "decoder" else tf.uint8
        from ai_edge_litert.interpreter import Interpreter

        with _quiet():
            interpreter = Interpreter(model_content=self.calibrated)
        tensors = {t["index"]: t["name"] for t in interpreter.get_tensor_details()}
        ops = [op for op in interpreter._get_ops_details() if op["op_name"] not in LAYOUT_OPS and len(op["outputs"])]
        self.nodes = [Node(tensors[op["outputs"][0]], op["op_name"]) for op in ops if op["op_name"] not in self.OP_GROUPS]
        groups = [g for g in self.OP_GROUPS if any(op["op_name"] == g for op in ops)]
        self.nodes += [Node(g, f"{g} (all {sum(op['op_name'] == g for op in ops)})") for g in groups]

    def write(self, path: Path, float_nodes: list[str] | tuple[str, ...] = ()) -> None:
        from tensorflow.lite.python.convert import mlir_quantize

        nodes = [n for n in float_nodes if n not in self.OP_GROUPS]
        ops = [n for n in float_nodes if n in self.OP_GROUPS]
        with _quiet():
            content = mlir_quantize(
                self.calibrated,
                input_data_type=self.input_type,
                output_data_type=tf.float32,
                denylisted_nodes=nodes or None,
                denylisted_ops=ops or None,
            )
        Path(path).write_bytes(content)


def batchnorm_as_depthwise(model):
    """The same function with every image BatchNorm as a 1x1 depthwise convolution (per-channel int8).

    Inference BatchNorm is y = a * x + b per channel, with a = gamma / sqrt(var + eps) and
    b = beta - mean * a: exactly a 1x1 depthwise convolution with kernel a and bias b, which the
    TFLite converter quantizes per channel. Works on any functional model (branches, as in the "phases"
    decoder form, and nested models included); the other layers are shared with `model`.
    """

    made = set()  # ids of the depthwise layers made here

    def clone(layer):
        if not (isinstance(layer, keras.layers.BatchNormalization) and len(layer.input.shape) == 4):
            return layer
        gamma, beta, mean, var = (np.asarray(w, np.float64) for w in layer.get_weights())
        scale = gamma / np.sqrt(var + layer.epsilon)
        affine = keras.layers.DepthwiseConv2D(1, use_bias=True, name=f"{layer.name}_affine")
        affine.build(layer.input.shape)
        affine.set_weights([scale.reshape(1, 1, -1, 1).astype(np.float32), (beta - mean * scale).astype(np.float32)])
        made.add(id(affine))
        return affine

    def call(layer, *args, **kwargs):  # the BatchNorm's call arguments (mask, training) are not the depthwise one's
        return layer(args[0]) if id(layer) in made else layer(*args, **kwargs)

    return keras.models.clone_model(model, clone_function=clone, call_function=call, recursive=True)
