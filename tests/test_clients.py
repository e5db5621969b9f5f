"""The exported files in the deployers' clients of the dev install: tflite-micro and OpenCV DNN 5.

benchmarks/compat.py runs every file in every client (each in its own environment) and writes docs/compat.md;
these tests hold the two that install with the dev tools to what that table says of them.
"""

import importlib.util
import json

import numpy as np
import pytest
from support import needs_tensorflow, read_mnist, run

pytestmark = [
    needs_tensorflow,
    pytest.mark.skipif(
        importlib.util.find_spec("tflite_micro") is None or importlib.util.find_spec("cv2") is None,
        reason="the dev install's clients (tflite-micro, opencv-python-headless) are not installed",
    ),
]

IMAGES = 32
# Agreement with Keras, as aekit export measures it: PSNR (dB) of the reconstructions with the file in place of its Keras
# part against Keras' own. Float32 files measure 135-150 dB in these clients, int8 encoders 45-48 dB (docs/compat.md).
FLOAT32_DB, INT8_DB = 80.0, 30.0


class Keras:
    """The run's Keras encoder and decoder on real digits, and a file's agreement with them."""

    def __init__(self, run_dir):
        from aekit.exporting.export import load_run

        models = load_run(run_dir).models
        self.encoder, self.decoder = models["encoder"], models["decoder"]
        self.images = (read_mnist(IMAGES)[..., None] / 255.0).astype(np.float32)
        self.latents = np.asarray(self.encoder(self.images, training=False))
        self.reconstructions = np.asarray(self.decoder(self.latents, training=False))

    def inputs(self, role: str) -> np.ndarray:
        return self.latents if role == "decoder" else self.images

    def agreement_db(self, role: str, outputs: np.ndarray) -> float:
        """PSNR of the reconstructions with the file in place of its Keras part against Keras' own (an encoder's
        latents go through the Keras decoder)."""
        reconstructions = np.asarray(self.decoder(outputs, training=False)) if role == "encoder" else outputs
        mse = np.mean((reconstructions.astype(np.float64) - self.reconstructions) ** 2)
        return float(10 * np.log10(1.0 / max(mse, 1e-30)))


def _export(run_dir, output, *args):
    code, lines = run("export", "--run", run_dir, "--output", output, *args)
    assert code == 0, lines
    return [e for e in json.loads((output / "manifest.json").read_text())["files"] if e["status"] == "passed"]


@pytest.fixture(scope="module")
def encoders(trained_run, tmp_path_factory):
    """The shared small run's encoder as float32 .onnx and .tflite and int8 .tflite, and its Keras reference."""
    out = tmp_path_factory.mktemp("clients")
    _export(trained_run, out, "--format", "onnx,tflite", "--parts", "encoder")
    _export(trained_run, out, "--format", "tflite", "--quantize", "int8", "--parts", "encoder", "--calibration-samples", "128")
    return out, Keras(trained_run)


def tflite_micro(path, inputs: np.ndarray) -> np.ndarray:
    """The file run by tflite-micro, one input at a time (it runs the shape stored in the file), float in and out."""
    from tflite_micro.python.tflite_micro import runtime

    interpreter = runtime.Interpreter.from_file(str(path))
    into, out = interpreter.get_input_details(0), interpreter.get_output_details(0)
    batch = int(into["shape"][0])
    assert batch >= 1 and len(inputs) % batch == 0
    if into["dtype"] != np.float32:
        params, info = into["quantization_parameters"], np.iinfo(into["dtype"])
        inputs = np.clip(np.round(inputs / params["scales"][0] + params["zero_points"][0]), info.min, info.max)
    outputs = []
    for i in range(0, len(inputs), batch):
        # a "phases4d" decoder reads its latents as (1, 1, L) latent images
        interpreter.set_input(inputs[i : i + batch].astype(into["dtype"]).reshape(into["shape"]), 0)
        interpreter.invoke()
        outputs.append(np.array(interpreter.get_output(0), np.float32))
    outputs = np.concatenate(outputs)
    if out["dtype"] != np.float32:
        params = out["quantization_parameters"]
        outputs = (outputs - params["zero_points"][0]) * params["scales"][0]
    return outputs


def opencv(path, inputs: np.ndarray, batch: int | None = None) -> np.ndarray:
    """The file run by OpenCV DNN (its default engine) at `batch` (None: all inputs at once)."""
    import cv2

    net = cv2.dnn.readNetFromTFLite(str(path)) if str(path).endswith(".tflite") else cv2.dnn.readNetFromONNX(str(path))
    batch = batch or len(inputs)
    outputs = []
    for i in range(0, len(inputs), batch):
        net.setInput(inputs[i : i + batch])
        outputs.append(np.asarray(net.forward(), np.float32))
    return np.concatenate(outputs)


def litert_reference(path, inputs: np.ndarray) -> np.ndarray:
    from aekit.edge.runtimes import open_runner, run_batched

    return run_batched(open_runner(path, "cpu", kernels="reference"), inputs)


def test_tflite_micro_runs_the_float32_tflite_encoder_as_keras_does(encoders):
    out, keras = encoders
    latents = tflite_micro(out / "encoder.tflite", keras.images)

    assert latents.shape == keras.latents.shape
    assert keras.agreement_db("encoder", latents) > FLOAT32_DB
    assert np.max(np.abs(latents - keras.latents)) < 1e-3 * max(1.0, np.max(np.abs(keras.latents)))


def test_tflite_micro_runs_the_int8_tflite_encoder_as_litert_reference_kernels_do(encoders):
    out, keras = encoders
    latents = tflite_micro(out / "encoder_int8.tflite", keras.images)
    reference = litert_reference(out / "encoder_int8.tflite", keras.images)

    assert latents.shape == keras.latents.shape
    assert keras.agreement_db("encoder", latents) > INT8_DB
    # the same integer arithmetic (what the docs' "reference kernels = what tflite-micro computes" rests on): at most one
    # step of the output's int8 scale apart; measured 0, where LiteRT's XNNPACK kernels differ by 2.4 steps
    step = np.ptp(reference) / 255
    assert np.max(np.abs(latents - reference)) <= step + 1e-6


def test_opencv_5_runs_the_float32_onnx_encoder_at_any_batch_as_keras_does(encoders):
    import cv2

    out, keras = encoders
    assert cv2.__version__.startswith("5."), cv2.__version__
    for batch in (1, IMAGES):
        latents = opencv(out / "encoder.onnx", keras.images, batch).reshape(keras.latents.shape)
        assert keras.agreement_db("encoder", latents) > FLOAT32_DB, batch


def test_fixed_batch_files_run_in_opencv_5_onnx_and_tflite_micro(trained_run, encoders, tmp_path):
    """--static-batch 1: OpenCV 5 runs the float32 .onnx encoder and decoder one input at a time, tflite-micro the .tflite
    ones (OpenCV 5 runs those too: tests/test_static.py, tests/test_forms.py)."""
    keras = encoders[1]
    files = _export(trained_run, tmp_path, "--format", "onnx,tflite", "--static-batch", "1")
    assert sorted((e["role"], e["format"]) for e in files) == [
        ("decoder", "onnx"),
        ("decoder", "tflite"),
        ("encoder", "onnx"),
        ("encoder", "tflite"),
    ]
    for entry in files:
        assert entry["inputs"][0]["shape"][0] == 1 and entry["precision"] == "float32", entry
        role = entry["role"]
        expected = keras.latents if role == "encoder" else keras.reconstructions
        if entry["format"] == "onnx":
            outputs = opencv(tmp_path / entry["file"], keras.inputs(role), batch=1)
        else:
            outputs = tflite_micro(tmp_path / entry["file"], keras.inputs(role))
        assert keras.agreement_db(role, outputs.reshape(expected.shape)) > FLOAT32_DB, entry["file"]
