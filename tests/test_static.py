"""Fixed-batch exports: no shape arithmetic in the graphs, parity at the fixed batch, decoders OpenCV DNN loads."""

import json

import numpy as np
import onnx
import pytest
from support import TINY, assert_one_line_error, colour_patch_run, needs_tensorflow, run

pytestmark = needs_tensorflow
VAL_IMAGES = 24  # the patch run's validation split (240 patches, 10%): every parity check runs all of them


@pytest.fixture(scope="module")
def patch_run(tmp_path_factory):
    """A small finished run on 16x16 colour patches (not digits), with its first patches."""
    return colour_patch_run(tmp_path_factory)


@pytest.fixture(scope="module")
def static_export(patch_run, tmp_path_factory):
    """The patch run exported twice into one folder: dynamic ONNX and TFLite, then both again at batch 1."""
    from aekit.exporting.export import ExportOptions, export_run

    output = tmp_path_factory.mktemp("export") / "both"
    run_dir = patch_run[0]
    dynamic = export_run(run_dir, ExportOptions(formats=("onnx", "tflite"), output=output, parity_samples=48))
    fixed = export_run(run_dir, ExportOptions(formats=("onnx", "tflite"), output=output, parity_samples=48, static_batch=1))
    return run_dir, output, dynamic, fixed


def _keras_outputs(run_dir, images):
    from aekit.exporting.export import load_run

    loaded = load_run(run_dir)
    latents = np.asarray(loaded.models["encoder"](images, training=False))
    return loaded, latents, np.asarray(loaded.models["decoder"](latents, training=False))


def _db(a, b) -> float:
    """PSNR of `a` against `b` over b's range (pixels: 1), capped at 100 dB."""
    span = max(1.0, float(np.ptp(b)))
    mse = float(np.mean((np.asarray(a, np.float64) - b) ** 2))
    return min(100.0, 10 * np.log10(span**2 / mse)) if mse > 0 else 100.0


def test_static_files_have_a_fixed_batch_and_no_shape_ops(static_export):
    from aekit.exporting.static import graph_ops, shape_ops

    _, output, dynamic, fixed = static_export
    assert [e.file for e in fixed.entries] == [
        "encoder_batch1.onnx",
        "decoder_batch1.onnx",
        "encoder_batch1.tflite",
        "decoder_batch1.tflite",
    ]
    assert not fixed.failed and not dynamic.failed
    for entry in fixed.entries:
        ops = graph_ops(output / entry.file)
        assert ops and shape_ops(output / entry.file) == [], (entry.file, ops)
        assert entry.static_batch == 1 and entry.inputs[0].shape[0] == 1 and entry.outputs[0].shape[0] == 1
        assert entry.parity.images == VAL_IMAGES and entry.parity.agreement_db > 80 and entry.parity.max_rel_diff < 1e-5
    # the dynamic .tflite encoder beside them computes its batch at run time: what OpenCV DNN 5.0 refuses; the
    # dynamic decoder ("phases": its reshapes to constant shapes) does not, though its batch is dynamic too
    assert {"SHAPE", "STRIDED_SLICE", "PACK"} <= set(shape_ops(output / "encoder.tflite"))
    assert shape_ops(output / "decoder.tflite") == [] and "CONCATENATION" in graph_ops(output / "decoder.tflite")
    graph = onnx.load(output / "decoder_batch1.onnx").graph
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1


def test_dynamic_and_static_files_live_side_by_side_in_one_manifest(static_export):
    from aekit.core.manifest import Manifest

    run_dir, output, *_ = static_export
    manifest = Manifest.load(output)  # verified: sizes and checksums of every file
    by_name = {e.file: e for e in manifest.files}
    assert set(by_name) == {
        "encoder.onnx",
        "decoder.onnx",
        "encoder.tflite",
        "decoder.tflite",
        "encoder_batch1.onnx",
        "decoder_batch1.onnx",
        "encoder_batch1.tflite",
        "decoder_batch1.tflite",
    }
    assert by_name["encoder.onnx"].static_batch is None and by_name["encoder.onnx"].inputs[0].shape[0] is None
    assert by_name["decoder_batch1.onnx"].form == "crop" and by_name["encoder_batch1.onnx"].form is None
    assert by_name["decoder.onnx"].form == "folded" and by_name["decoder_batch1.tflite"].form == "phases4d"
    assert by_name["decoder.tflite"].form == "phases"  # no TRANSPOSE_CONV (not delegated to XNNPACK), at any batch
    data = json.loads((output / "manifest.json").read_text())
    assert {e["file"]: e["static_batch"] for e in data["files"]}["encoder_batch1.tflite"] == 1


def test_the_static_onnx_decoder_has_no_asymmetric_pads(static_export):
    _, output, *_ = static_export

    def pads(name):
        graph = onnx.load(output / name).graph
        return [
            list(onnx.helper.get_attribute_value(a))
            for n in graph.node
            if n.op_type == "ConvTranspose"
            for a in n.attribute
            if a.name == "pads"
        ]

    assert [0, 0, 1, 1] in pads("decoder.onnx")  # what OpenCV 4.x refuses in the dynamic file
    assert pads("decoder_batch1.onnx") and all(p[:2] == p[2:] for p in pads("decoder_batch1.onnx"))


def test_static_files_run_the_real_images_like_keras(static_export, patch_run):
    from aekit.edge.runtimes import open_runner

    run_dir, output, *_ = static_export
    images = patch_run[1]
    _, latents, recon = _keras_outputs(run_dir, images)
    for fmt in ("onnx", "tflite"):
        encoder = open_runner(output / f"encoder_batch1.{fmt}")  # fed one image at a time
        decoder = open_runner(output / f"decoder_batch1.{fmt}")
        assert encoder.static_batch == decoder.static_batch == 1
        np.testing.assert_allclose(encoder.run(images), latents, atol=1e-4)
        np.testing.assert_allclose(decoder.run(latents), recon, atol=1e-5)


def test_a_batch_that_does_not_divide_the_inputs_is_padded_and_trimmed(patch_run, tmp_path):
    from aekit.edge.runtimes import open_runner
    from aekit.exporting.export import ExportOptions, export_run
    from aekit.exporting.static import shape_ops

    run_dir, images = patch_run
    result = export_run(run_dir, ExportOptions(formats=("onnx",), output=tmp_path / "b5", static_batch=5))
    assert not result.failed and [e.file for e in result.entries] == ["encoder_batch5.onnx", "decoder_batch5.onnx"]
    # 24 images in groups of 5: the last group of 4 padded to 5, its extra output dropped
    assert all(e.parity.images == VAL_IMAGES and e.inputs[0].shape[0] == 5 for e in result.entries)
    assert all(e.parity.agreement_db > 80 for e in result.entries)
    assert shape_ops(result.output / "decoder_batch5.onnx") == []
    runner = open_runner(result.output / "encoder_batch5.onnx")
    with pytest.raises(Exception, match="dimensions"):  # the file itself takes exactly 5
        runner._run(images[:2])
    _, latents, _ = _keras_outputs(run_dir, images[:7])
    assert runner.static_batch == 5
    out = runner.run(images[:7])
    assert out.shape == (7, 8)
    np.testing.assert_allclose(out, latents, atol=1e-4)


def test_crop_form_is_the_same_function_and_the_crop_is_the_last_row_and_column():
    import keras

    from aekit.exporting.static import fixed_batch, written_model
    from aekit.training.model import build_autoencoder

    _, decoder, _ = build_autoencoder((16, 16, 3), TINY["filters"], TINY["latent_dim"])
    rng = np.random.default_rng(3)
    for layer in decoder.layers:  # BatchNorm statistics away from the identity, so every layer matters
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.set_weights([rng.uniform(0.5, 2, w.shape).astype(np.float32) for w in layer.get_weights()])
    latents = rng.normal(0, 2, (5, TINY["latent_dim"])).astype(np.float32)
    expected = np.asarray(decoder(latents, training=False))
    written, form = written_model(decoder, 5, "onnx")
    assert form == "crop" and written.input_shape[0] == 5
    crops = [layer.cropping for layer in _layers(written) if isinstance(layer, keras.layers.Cropping2D)]
    assert crops == [((0, 1), (0, 1)), ((0, 1), (0, 1)), ((1, 1), (1, 1))]  # stride 2: the last row and column
    np.testing.assert_allclose(np.asarray(written(latents, training=False)), expected, atol=2e-6)

    # the other side (the first row and column) is a different function: the test tells the sides apart
    valid = keras.layers.Conv2DTranspose(4, 3, strides=2, padding="valid")
    same = keras.layers.Conv2DTranspose(4, 3, strides=2, padding="same")
    x = rng.normal(0, 1, (2, 5, 5, 3)).astype(np.float32)
    full = np.asarray(valid(x))
    same(x)
    same.set_weights(valid.get_weights())
    ref = np.asarray(same(x))
    np.testing.assert_allclose(full[:, :-1, :-1], ref, atol=1e-6)
    assert np.abs(full[:, 1:, 1:] - ref).max() > 1e-2
    assert fixed_batch(decoder, 2).input_shape == (2, TINY["latent_dim"])


def _layers(model):
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _layers(layer)
        else:
            yield layer


def test_opencv_dnn_loads_every_static_float_file_on_both_engines(static_export, patch_run):
    cv2 = pytest.importorskip("cv2")
    run_dir, output, *_ = static_export
    images = patch_run[1]
    _, latents, recon = _keras_outputs(run_dir, images)
    engines = [getattr(cv2.dnn, n) for n in ("ENGINE_CLASSIC", "ENGINE_NEW") if hasattr(cv2.dnn, n)] or [None]
    measured = {}
    for name, inputs, expected in (
        ("encoder_batch1.onnx", images, latents),
        ("decoder_batch1.onnx", latents, recon),
        # OpenCV's TFLite blobs are NCHW: images (1, C, H, W); the phases4d decoder's latent image (1, L, 1, 1)
        ("encoder_batch1.tflite", images.transpose(0, 3, 1, 2), latents),
        ("decoder_batch1.tflite", latents[:, :, None, None], recon),
    ):
        for engine in engines:
            net = cv2.dnn.readNet(str(output / name)) if engine is None else cv2.dnn.readNet(str(output / name), "", "", engine)
            outs = []
            for one in inputs:
                net.setInput(np.ascontiguousarray(one[None]))
                out = np.asarray(net.forward())
                if name == "decoder_batch1.tflite":  # its NHWC images come back NCHW
                    out = out.transpose(0, 2, 3, 1)
                outs.append(out.reshape(1, *expected.shape[1:]))
            measured[(name, engine)] = _db(np.concatenate(outs), expected)
    assert len(measured) == 4 * len(engines) and min(measured.values()) > 80, measured


def test_the_fixed_batch_tflite_decoder_takes_latents_as_latent_images(static_export, patch_run):
    """decoder_batch1.tflite ("phases4d") reads a (1, 1, 1, L) input; aekit's runners and sessions feed it (N, L)."""
    from aekit.edge.runtimes import TFLiteRunner
    from aekit.edge.sessions import DecoderSession
    from aekit.exporting.static import graph_ops

    run_dir, output, *_ = static_export
    _, latents, recon = _keras_outputs(run_dir, patch_run[1])
    runner = TFLiteRunner(output / "decoder_batch1.tflite")
    assert [list(t.shape) for t in runner.specs()[0]] == [[1, 1, 1, latents.shape[1]]]
    assert not {"FULLY_CONNECTED", "TRANSPOSE_CONV", "DEPTH_TO_SPACE", "TRANSPOSE"} & set(graph_ops(runner.path))
    assert _db(runner.run(latents), recon) > 80
    assert _db(DecoderSession(output / "decoder_batch1.tflite").decode(latents), recon) > 80


def test_int8_static_files_hold_their_bound_at_the_fixed_batch(patch_run, tmp_path):
    from aekit.exporting.export import ExportOptions, export_run
    from aekit.exporting.static import shape_ops

    run_dir, _ = patch_run
    options = ExportOptions(formats=("onnx", "tflite"), quantize="int8", output=tmp_path / "i8")
    options.static_batch, options.calibration_samples = 1, 64
    result = export_run(run_dir, options)
    assert [e.file for e in result.entries] == [
        "encoder_int8_batch1.onnx",
        "decoder_int8_batch1.onnx",
        "encoder_int8_batch1.tflite",
        "decoder_int8_batch1.tflite",
    ]
    assert not result.failed, [e.reason for e in result.failed]
    for entry in result.entries:
        assert shape_ops(result.output / entry.file) == [], entry.file
        assert entry.inputs[0].shape[0] == 1 and entry.static_batch == 1
        assert entry.parity.agreement_db >= 30 and entry.reference_parity.agreement_db >= 30
    assert result.entries[0].inputs[0].dtype in ("float32", "uint8")


def test_bad_static_batch_options_are_one_line_errors(patch_run):
    run_dir = patch_run[0]
    code, lines = run("export", "--run", run_dir, "--static-batch", "0")
    assert_one_line_error(code, lines, "--static-batch 0", "--static-batch 1")
    code, lines = run("export", "--run", run_dir, "--format", "savedmodel", "--static-batch", "1")
    assert_one_line_error(code, lines, "--static-batch", "onnx and tflite")
    code, lines = run("export", "--run", run_dir, "--format", "tflm", "--static-batch", "2")
    assert_one_line_error(code, lines, "--format tflm", "batch 1")


def test_python_api_takes_static_batch(patch_run, tmp_path):
    import aekit

    result = aekit.export(patch_run[0], "onnx", parts=("encoder",), static_batch=2, output=tmp_path / "api")
    (entry,) = result.entries
    assert entry.file == "encoder_batch2.onnx" and entry.static_batch == 2 and entry.inputs[0].shape[0] == 2
    with pytest.raises(aekit.AekitError, match="static-batch|static_batch"):
        aekit.export(patch_run[0], "onnx", static_batch=-1, output=tmp_path / "bad")


def test_manifests_without_the_new_fields_still_read(static_export, tmp_path):
    import shutil

    from aekit.core.manifest import Manifest

    _, output, *_ = static_export
    copy = tmp_path / "old"
    shutil.copytree(output, copy)
    data = json.loads((copy / "manifest.json").read_text())
    new = ("static_batch", "form", "micro")
    data["files"] = [{k: v for k, v in e.items() if k not in new} for e in data["files"] if "_batch" not in e["file"]]
    (copy / "manifest.json").write_text(json.dumps(data))
    manifest = Manifest.load(copy)
    assert [e.file for e in manifest.files] == ["encoder.onnx", "decoder.onnx", "encoder.tflite", "decoder.tflite"]
    assert all(e.static_batch is None and e.form is None and e.micro is None for e in manifest.files)


def test_fixed_batch_files_go_to_their_own_folder_by_default(patch_run):
    from aekit.core.manifest import Manifest

    run_dir = patch_run[0]
    code, lines = run("export", "--run", run_dir, "--parts", "encoder", "--static-batch", "1", "--json")
    assert code == 0, lines
    printed = json.loads(lines[-1])
    assert printed["output"] == str(run_dir / "export-batch1") and not (run_dir / "export").exists()
    assert [e.file for e in Manifest.load(run_dir / "export-batch1").files] == ["encoder_batch1.onnx"]
    code, lines = run("export", "--run", run_dir, "--parts", "encoder", "--static-batch", "1")  # again: its own folder
    assert code == 0 and any("encoder_batch1.onnx" in line and "passed" in line for line in lines), lines
