"""How each float format is written: tf2onnx with an explicit signature, the TFLite converter, a SavedModel."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from aekit.core.manifest import (
    TensorSpec,
)
from aekit.lazy import tf, tf2onnx
from aekit.quiet import quiet_native_output as _quiet

INPUT_NAMES = {"encoder": "image", "decoder": "latent", "autoencoder": "image"}
OUTPUT_NAMES = {"encoder": "latent", "decoder": "reconstruction", "autoencoder": "reconstruction"}
# The highest opset tf2onnx 1.17 converts to. Higher ones (up to export.MAX_OPSET) are converted at this one,
# then upgraded by onnx's version converter (_upgrade_opset).
TF2ONNX_MAX_OPSET = 18


def _write_onnx(model, role: str, path: Path, opset: int, precision: str) -> None:
    """A float32 .onnx file (int8 ones are quantized from it: aekit.exporting.int8)."""
    if precision != "float32":
        raise ValueError(f"ONNX files are written in float32 here; {precision} is made by aekit.exporting.int8")
    # The model's own batch: None (dynamic), or fixed (aekit.exporting.static), written as a constant shape.
    spec = tf.TensorSpec(tuple(model.input_shape), tf.float32, name=INPUT_NAMES[role])
    with _quiet():  # tf2onnx prints and logs conversion chatter
        proto, _ = tf2onnx.convert.from_keras(model, input_signature=[spec], opset=min(opset, TF2ONNX_MAX_OPSET))
    if opset > TF2ONNX_MAX_OPSET:
        proto = _upgrade_opset(proto, opset)
    _name_tensors(proto, OUTPUT_NAMES[role])
    if model.input_shape[0] is not None:  # a fixed-batch file (aekit.exporting.static) is made for OpenCV DNN too
        _gemm_weights_transposed(proto)
        _slices_simplified(proto)
    path.write_bytes(proto.SerializeToString())


def _gemm_weights_transposed(proto) -> None:
    """Every Gemm with transB=0 and a constant B rewritten as transB=1 with B stored transposed: the same product.

    OpenCV DNN 4.6's ONNX importer reads a Gemm's constant B as (outputs, inputs) whatever transB says, and
    refuses tf2onnx's (inputs, outputs) one ("Assertion failed ... numOutput == blobs[1].total()").
    """
    import onnx
    from onnx import numpy_helper

    initializers = {t.name: t for t in proto.graph.initializer}
    users = {}
    for node in proto.graph.node:
        for name in node.input:
            users[name] = users.get(name, 0) + 1
    for node in proto.graph.node:
        if node.op_type != "Gemm" or len(node.input) < 2 or node.input[1] not in initializers or users[node.input[1]] != 1:
            continue
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if attributes.get("transB", 0) != 0:
            continue
        weight = initializers[node.input[1]]
        weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight).T.copy(), weight.name))
        del node.attribute[:]
        node.attribute.extend(onnx.helper.make_attribute(k, v) for k, v in {**attributes, "transB": 1}.items())


def _upgrade_opset(proto, opset: int):
    """The tf2onnx graph at a higher default-domain opset, checked, with the IR version that opset needs.

    onnx's version converter adapts each node (this model's ops, Conv, ConvTranspose, MatMul, LeakyRelu,
    Mul, Add, Reshape, Transpose, Sigmoid, Shape, Slice, Gather, Concat, Cast, convert 18 -> 21 unchanged
    in meaning). It keeps the IR version, 8 from tf2onnx at opset 18; opset 21 needs IR 10.
    """
    import onnx
    from onnx import version_converter

    upgraded = version_converter.convert_version(proto, opset)
    needed = onnx.helper.find_min_ir_version_for(list(upgraded.opset_import), ignore_unknown=True)
    upgraded.ir_version = max(upgraded.ir_version, needed)
    onnx.checker.check_model(upgraded)
    return upgraded


def _name_tensors(proto, output_name: str) -> None:
    """Names the output and the dynamic batch dimension ("batch", not tf2onnx's unk__N); a fixed batch stays a number."""
    for value in [*proto.graph.input, *proto.graph.output]:
        first = value.type.tensor_type.shape.dim[0]
        if not first.HasField("dim_value"):
            first.dim_param = "batch"
    _rename_output(proto, output_name)


def _slices_simplified(proto) -> None:
    """Every Slice with constant starts/ends/axes (no steps) rewritten to cut only the axes it cuts, in ascending order.

    tf2onnx writes a Keras Cropping2D as a Slice over axes [0, 2, 3, 1] (two of them untouched); OpenCV DNN
    4.6 takes only consecutive ascending axes ("Assertion failed axes[i - 1] == axes[i] - 1"). The same slice.
    """
    from onnx import numpy_helper

    initializers = {t.name: t for t in proto.graph.initializer}
    whole = np.iinfo(np.int64).max // 2  # ends at or beyond this keep the whole axis (tf2onnx writes INT32_MAX too)
    for index, node in enumerate(proto.graph.node):
        if node.op_type != "Slice" or len(node.input) != 4 or not all(n in initializers for n in node.input[1:]):
            continue
        starts, ends, axes = (numpy_helper.to_array(initializers[n]).astype(np.int64) for n in node.input[1:])
        cut = sorted((int(a), int(b), int(e)) for a, b, e in zip(axes, starts, ends) if b != 0 or e < min(whole, 2**31 - 1))
        if not cut or [a for a, *_ in cut] == list(axes):
            continue
        names = []
        for what, values in zip(("starts", "ends", "axes"), zip(*[(b, e, a) for a, b, e in cut])):
            name = f"{node.name or 'slice'}_{index}_{what}"
            proto.graph.initializer.append(numpy_helper.from_array(np.asarray(values, np.int64), name))
            names.append(name)
        node.input[1:] = names
    used = {n for node in proto.graph.node for n in node.input}
    kept = [t for t in proto.graph.initializer if t.name in used]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(kept)


def _rename_output(proto, name: str) -> None:
    old = proto.graph.output[0].name
    if old == name:
        return
    for node in proto.graph.node:
        node.output[:] = [name if o == old else o for o in node.output]
    proto.graph.output[0].name = name


def _write_tflite(model, role: str, path: Path, precision: str) -> None:
    """A float32 or fp16 .tflite file (int8 ones: aekit.exporting.int8)."""
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if precision == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif precision != "float32":
        raise ValueError(f"{precision} TFLite files are made by aekit.exporting.int8")
    with _quiet():
        path.write_bytes(converter.convert())


def _write_savedmodel(model, role: str, path: Path) -> None:
    spec = tf.TensorSpec((None, *model.input_shape[1:]), tf.float32, name=INPUT_NAMES[role])

    class Serving(tf.Module):
        def __init__(self, keras_model):
            super().__init__()
            self.model = keras_model

        @tf.function(input_signature=[spec])
        def serve(self, x):
            return {OUTPUT_NAMES[role]: self.model(x, training=False)}

    module = Serving(model)
    with _quiet():
        tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})


class _SavedModelRunner:
    runtime = "tensorflow-saved-model"

    def __init__(self, path: Path):
        self.fn = tf.saved_model.load(str(path)).signatures["serving_default"]

    def run(self, batch: np.ndarray) -> np.ndarray:
        (name,) = self.fn.structured_input_signature[1]
        return next(iter(self.fn(**{name: np.asarray(batch, np.float32)}).values())).numpy()

    def specs(self):
        (_, kwargs) = self.fn.structured_input_signature
        inputs = [TensorSpec(s.name, [None if d is None else int(d) for d in s.shape], s.dtype.name) for s in kwargs.values()]
        outputs = [
            TensorSpec(k, [None if d is None else int(d) for d in s.shape], s.dtype.name)
            for k, s in self.fn.structured_outputs.items()
        ]
        return inputs, outputs
