"""int8 on any model: the per-node sensitivity report, sensitive nodes kept float automatically, two kernel sets checked."""

import json

import numpy as np
import pytest
from support import assert_one_line_error, colour_patch_run, needs_tensorflow, run

pytestmark = needs_tensorflow

BOUND = 30.0


@pytest.fixture(scope="module")
def patch_run(tmp_path_factory):
    """A small finished run on colour patches (gradients, stripes, flat blocks) in sub-folders that differ."""
    return colour_patch_run(tmp_path_factory)[0]


def _sensitive_model():
    """latent(8) -> Dense A -> Dense B -> two ordinary Dense layers: A's output holds eight tiny channels and one huge one.

    One int8 scale over A's output (0..1000) rounds the tiny channels (0..0.01), which B scales back up
    by 100, to zero: A's output is the sensitive tensor. With it float the file agrees to int8 rounding.
    """
    import keras

    latent = keras.Input((8,), name="latent")
    a = keras.layers.Dense(9, name="spread")(latent)
    b = keras.layers.Dense(8, name="gather")(a)
    c = keras.layers.Dense(16, activation="relu", name="mix", kernel_initializer=keras.initializers.RandomNormal(0, 0.5, seed=1))(
        b
    )
    d = keras.layers.Dense(
        8, activation="sigmoid", name="out", kernel_initializer=keras.initializers.RandomNormal(0, 0.5, seed=2)
    )(c)
    model = keras.Model(latent, d, name="decoder")
    spread = np.zeros((8, 9), np.float32)
    spread[np.arange(8), np.arange(8)] = 0.01
    spread[0, 8] = 1000.0
    gather = np.zeros((9, 8), np.float32)
    gather[np.arange(8), np.arange(8)] = 100.0
    model.get_layer("spread").set_weights([spread, np.zeros(9, np.float32)])
    model.get_layer("gather").set_weights([gather, np.zeros(8, np.float32)])
    return model


def _measure_against(model, inputs):
    from aekit.core.metrics import psnr_from_mse
    from aekit.edge.runtimes import open_runner, run_batched

    expected = np.asarray(model(inputs))

    def measure(path, kernel_sets, count=None):
        x, want = inputs[:count], expected[:count]
        return {
            k: float(psnr_from_mse(np.mean((run_batched(open_runner(path, "cpu", kernels=k), x) - want) ** 2)))
            for k in kernel_sets
        }

    return measure


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_a_sensitive_tensor_is_kept_float_automatically_and_the_file_passes(tmp_path, fmt):
    from aekit.exporting import int8
    from aekit.exporting.writers import _write_onnx

    model = _sensitive_model()
    inputs = np.random.default_rng(0).random((300, 8)).astype(np.float32)
    if fmt == "onnx":
        _write_onnx(model, "decoder", tmp_path / "float.onnx", 17, "float32")
        quantizer = int8.OnnxQuantizer(tmp_path / "float.onnx", "latent", inputs, tmp_path)
    else:
        quantizer = int8.TFLiteQuantizer(model, "decoder", inputs)
    assert len(quantizer.nodes) >= 2
    measure = _measure_against(model, inputs)
    path, choice = int8.choose(quantizer, measure, BOUND, tmp_path)

    assert min(choice.all_int8_db.values()) < 20  # all int8, the tiny channels are lost
    assert choice.how == "auto" and choice.passed
    assert min(choice.chosen_db.values()) >= BOUND + int8.MARGIN_DB
    kept = {n.name for n in choice.float_nodes}
    assert any("spread" in n for n in kept)  # the layer that makes the sensitive tensor
    assert len(kept) < len(quantizer.nodes)  # not everything: the rest is still int8
    report = {row["node"]: row["agreement_db"] for row in choice.sensitivity}
    assert set(report) == {n.name for n in quantizer.nodes}
    assert all(report[n] < 20 for n in kept)  # each kept node costs the most when quantized alone
    assert path.stat().st_size > 0
    record = choice.to_json()
    assert record["chosen_by"] == "auto" and len(record["float_nodes"]) == len(kept) and "why" in record

    # none: every node int8, reported as failing against the bound
    _, forced = int8.choose(quantizer, measure, BOUND, tmp_path, float_nodes="none")
    assert forced.float_nodes == [] and not forced.passed


def test_the_sensitivity_report_runs_on_a_small_model_and_lands_in_the_manifest(patch_run):
    code, out = run("export", "--run", str(patch_run), "--format", "onnx,tflite", "--quantize", "int8", "--sensitivity")
    assert code == 0, out
    assert "quantized alone" in " ".join(out)
    manifest = json.loads((patch_run / "export" / "manifest.json").read_text())
    for entry in manifest["files"]:
        q = entry["quantization"]
        rows = q["sensitivity"]["nodes"]
        assert len(rows) == q["quantizable_nodes"] >= 5
        assert all(0 < r["agreement_db"] <= 100 and r["op"] for r in rows)
        assert q["sensitivity"]["kernels"] in ("default", "builtin")
        assert set(q["all_int8_agreement_db"]) == {"default", "builtin"}
        # checked on both kernel sets: the manifest records both agreements, both above the bound
        assert entry["parity"]["kernels"] == "default" and entry["reference_parity"]["kernels"] == "reference"
        assert entry["parity"]["agreement_db"] >= BOUND and entry["reference_parity"]["agreement_db"] >= BOUND
        assert entry["reference_parity"]["images"] == min(64, entry["parity"]["images"])


def test_a_reference_kernel_disagreement_fails_the_file(patch_run, tmp_path, monkeypatch):
    import aekit.exporting.export as export_module

    real = export_module.open_runner

    class Drifting:  # the reference kernels of a device that computes something else
        def __init__(self, runner):
            self.runner, self.runtime = runner, runner.runtime

        def run(self, batch):
            out = self.runner.run(batch)
            drift = np.sign(np.sin(np.arange(out.size))).reshape(out.shape) * 0.5 * np.abs(out).max()
            return (out + drift).astype(np.float32)

    def open_runner(path, device="cpu", *args, kernels="default", **kwargs):
        runner = real(path, device, *args, kernels=kernels, **kwargs)
        return Drifting(runner) if kernels == "reference" else runner

    monkeypatch.setattr(export_module, "open_runner", open_runner)
    from aekit.exporting.export import ExportOptions, export_run

    result = export_run(patch_run, ExportOptions(formats=("onnx",), quantize="int8", parts=("decoder",), output=tmp_path / "out"))
    (entry,) = result.entries
    assert entry.status == "failed", (entry.parity, entry.reference_parity)
    assert entry.parity.agreement_db >= BOUND  # the default kernels agree
    assert entry.reference_parity.agreement_db < BOUND
    assert "graph optimizations off" in entry.reason and "Next:" in entry.reason
    assert not (tmp_path / "out" / entry.file).exists()


def test_kernel_sets_run_the_same_file(patch_run):
    from aekit.edge.runtimes import open_runner

    code, out = run("export", "--run", str(patch_run), "--format", "onnx,tflite", "--quantize", "int8", "--parts", "encoder")
    assert code == 0, out
    images = np.random.default_rng(1).random((4, 16, 16, 3)).astype(np.float32)
    for name in ("encoder_int8.onnx", "encoder_int8.tflite"):
        outputs = {}
        for kernels in ("default", "builtin", "reference"):
            runner = open_runner(patch_run / "export" / name, "cpu", kernels=kernels)
            outputs[kernels] = runner.run(images)
            assert runner.kernels == kernels
        scale = np.abs(outputs["default"]).max()
        for kernels in ("builtin", "reference"):  # int8 steps apart at most, never another function
            assert np.abs(outputs[kernels] - outputs["default"]).max() < 0.1 * scale


@pytest.mark.parametrize(
    "args, words",
    [
        (["--quantize", "int8", "--int8-float", "no_such_node", "--parts", "decoder"], ["no_such_node", "--int8-float auto"]),
        (["--quantize", "int8", "--int8-float", "a,b"], ["--parts encoder or --parts decoder"]),
        (["--sensitivity"], ["int8 files only", "--quantize int8"]),
        (["--int8-float", "none"], ["int8 files only"]),
        (["--quantize", "int8", "--int8-float", ","], ["--int8-float", "auto"]),
    ],
)
def test_impossible_int8_options_are_one_line(patch_run, tmp_path, args, words):
    code, out = run("export", "--run", str(patch_run), "--format", "onnx", "--output", str(tmp_path / "o"), *args)
    # a node name is checked against the file's graph, once the export has started (and said so)
    assert_one_line_error(code, [line for line in out if not line.startswith("Exporting run")], *words)


class _CountingQuantizer:
    """A stand-in quantizer: writes which nodes stay float; `_noise_measure` reads them back."""

    suffix = ".txt"

    def __init__(self, nodes):
        from aekit.exporting.int8 import Node

        self.nodes = [Node(name, op) for name, op in nodes]

    def write(self, path, float_nodes=()):
        path.write_text(",".join(float_nodes))


def _noise_measure(noise: dict[str, float]):
    """Agreement in dB of a file whose int8 nodes each add their noise power (the model choose() predicts with)."""
    import math

    def measure(path, kernel_sets, count=None):
        floats = set(path.read_text().split(","))
        total = sum(p for name, p in noise.items() if name not in floats)
        return {k: 100.0 if total == 0 else -10 * math.log10(total) for k in kernel_sets}

    return measure


def test_an_encoder_that_holds_the_bound_but_not_its_aim_keeps_its_costliest_node_float(tmp_path):
    from aekit.exporting import int8

    quantizer = _CountingQuantizer([("conv", "CONV_2D"), ("leaky", "LEAKY_RELU"), ("dense", "FULLY_CONNECTED")])
    # All int8: 1e-5 + 6e-5 + 1e-5 -> 41.0 dB, above the bound's 33 but below the encoder's aim of 43.
    measure = _noise_measure({"conv": 1e-5, "leaky": 6e-5, "dense": 1e-5})

    _, decoder_like = int8.choose(quantizer, measure, BOUND, tmp_path)
    assert decoder_like.how == "all int8" and decoder_like.float_nodes == []
    assert decoder_like.to_json()["aim_db"] == BOUND + int8.MARGIN_DB

    path, encoder = int8.choose(quantizer, measure, BOUND, tmp_path, aim_db=int8.AIM_DB["encoder"])
    assert int8.AIM_DB["encoder"] >= 40.0
    assert encoder.how == "auto" and [n.name for n in encoder.float_nodes] == ["leaky"]
    assert 46.0 < min(encoder.chosen_db.values()) < 48.0  # 2e-5 left: 47.0 dB
    assert path.read_text() == "leaky"
    record = encoder.to_json()
    assert record["aim_db"] == int8.AIM_DB["encoder"] + int8.MARGIN_DB and "aims at" in record["why"]


def test_a_decoder_whose_fast_form_does_not_hold_in_int8_is_tried_in_its_trained_form(patch_run, tmp_path):
    from aekit.exporting.export import ExportOptions, export_run

    # A bound no int8 file reaches: the subpixel form fails, the trained form is tried, and the better one is reported.
    options = ExportOptions(
        formats=("onnx",), parts=("decoder",), quantize="int8", int8_float="none", min_agreement_db=99, output=tmp_path / "x"
    )
    (entry,) = export_run(patch_run, options).entries
    tried = entry.quantization["forms_tried"]
    assert set(tried) == {"subpixel", "native"} and all(10 < db < 99 for db in tried.values()), tried
    assert entry.status == "failed" and entry.form in ("subpixel", None)
    if abs(tried["subpixel"] - tried["native"]) > 0.01:  # the file kept is the form that agreed better
        assert entry.form == ("subpixel" if tried["subpixel"] > tried["native"] else None)
    assert "Tried" in entry.reason
