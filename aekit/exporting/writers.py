"""How each format is written: tf2onnx with an explicit signature, onnxruntime's int8 quantizer, the TFLite converter."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from aekit.core.manifest import (
    TensorSpec,
)
from aekit.lazy import keras, tf, tf2onnx
from aekit.quiet import quiet_native_output as _quiet

INPUT_NAMES = {"encoder": "image", "decoder": "latent", "autoencoder": "image"}
OUTPUT_NAMES = {"encoder": "latent", "decoder": "reconstruction", "autoencoder": "reconstruction"}


def _write_onnx(model, role: str, path: Path, opset: int, precision: str, calib_inputs: np.ndarray) -> None:
    spec = tf.TensorSpec((None, *model.input_shape[1:]), tf.float32, name=INPUT_NAMES[role])
    with _quiet():  # tf2onnx prints and logs conversion chatter
        proto, _ = tf2onnx.convert.from_keras(model, input_signature=[spec], opset=opset)
    _name_tensors(proto, OUTPUT_NAMES[role])
    if precision == "float32":
        path.write_bytes(proto.SerializeToString())
        return
    with tempfile.TemporaryDirectory() as scratch:
        float_path = Path(scratch) / "float.onnx"
        float_path.write_bytes(proto.SerializeToString())
        _quantize_onnx(float_path, path, spec.name, calib_inputs)


def _name_tensors(proto, output_name: str) -> None:
    """Names the output and the dynamic batch dimension ("batch", not tf2onnx's unk__N)."""
    for value in [*proto.graph.input, *proto.graph.output]:
        first = value.type.tensor_type.shape.dim[0]
        if not first.HasField("dim_value"):
            first.dim_param = "batch"
    _rename_output(proto, output_name)


def _rename_output(proto, name: str) -> None:
    old = proto.graph.output[0].name
    if old == name:
        return
    for node in proto.graph.node:
        node.output[:] = [name if o == old else o for o in node.output]
    proto.graph.output[0].name = name


def _quantize_onnx(float_path: Path, path: Path, input_name: str, calib_inputs: np.ndarray) -> None:
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{input_name: calib_inputs[i : i + 32]} for i in range(0, len(calib_inputs), 32)])

        def get_next(self):
            return next(self.batches, None)

    prepared = float_path.with_name("prepared.onnx")
    with _quiet():
        quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(path),
            Reader(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            reduce_range=True,  # QUANTIZATION_SCHEMES["onnx"]: no u8s8 saturation on AVX2-only CPUs
            calibrate_method=CalibrationMethod.MinMax,
        )


def _batchnorm_as_depthwise(model):
    """The same function with every image BatchNorm as a 1x1 depthwise convolution (per-channel int8).

    Inference BatchNorm is y = a * x + b per channel, with a = gamma / sqrt(var + eps) and
    b = beta - mean * a: exactly a 1x1 depthwise convolution with kernel a and bias b, which the
    TFLite converter quantizes per channel. Works on aekit's chain models, nested ones included.
    """

    x = inputs = keras.Input(model.input_shape[1:], name=model.inputs[0].name)
    for layer in model.layers[1:]:
        if isinstance(layer, keras.Model):
            x = _batchnorm_as_depthwise(layer)(x)
        elif isinstance(layer, keras.layers.BatchNormalization) and len(layer.input.shape) == 4:
            gamma, beta, mean, var = (np.asarray(w, np.float64) for w in layer.get_weights())
            scale = gamma / np.sqrt(var + layer.epsilon)
            affine = keras.layers.DepthwiseConv2D(1, use_bias=True, name=f"{layer.name}_affine")
            x = affine(x)
            affine.set_weights([scale.reshape(1, 1, -1, 1).astype(np.float32), (beta - mean * scale).astype(np.float32)])
        else:
            twin = layer.__class__.from_config(layer.get_config())
            x = twin(x)
            twin.set_weights(layer.get_weights())
    return keras.Model(inputs, x, name=model.name)


def _write_tflite(model, role: str, path: Path, precision: str, calib_inputs: np.ndarray) -> None:
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if precision == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif precision == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([calib_inputs[i : i + 1]] for i in range(len(calib_inputs)))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        # An edge device feeds what it has (uint8 pixels, or int8 codes) and gets floats back.
        converter.inference_input_type = tf.int8 if role == "decoder" else tf.uint8
        converter.inference_output_type = tf.float32
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
