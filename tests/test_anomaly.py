"""aekit.edge.anomaly: thresholds, calibration, ROC AUC and the score/reconstruct jobs.

The exported files here are tiny hand-built ONNX models (4x4 images, 2 latents) with a
real manifest beside them, so every score is known in advance: an encoder with zero
weights and a sigmoid decoder reconstruct every pixel as 0.5, so an image of constant
value v has MSE (v - 0.5)^2 exactly.
"""

import json
import subprocess
import sys
from dataclasses import fields

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from aekit import AekitError
from aekit.cli.main import app
from aekit.core.manifest import MANIFEST, SCHEMA_VERSION, Parity, sha256_of
from aekit.edge.anomaly import Scores, grid_scale, open_sessions, reconstruct, reconstruction_errors, save_grid, score_path
from aekit.edge.report import HISTOGRAM_SIZE, THRESHOLD_COLOUR, evaluate, histogram_bins
from aekit.edge.thresholds import (
    OTHER_IMAGES,
    TRAINING_IMAGES,
    VALIDATION_IMAGES,
    Threshold,
    calibrate,
    calibrate_threshold,
    calibration_origin,
    load_threshold,
    roc_auc,
    score,
)

SIDE, LATENT = 4, 2


def _onnx(path, weight: np.ndarray, role: str) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if role == "encoder":
        inputs, outputs = [SIDE, SIDE, 1], [LATENT]
        nodes = [helper.make_node("Reshape", ["x", "flat"], ["h"]), helper.make_node("MatMul", ["h", "w"], ["y"])]
        inits = [numpy_helper.from_array(np.array([-1, SIDE * SIDE], np.int64), "flat")]
    else:
        inputs, outputs = [LATENT], [SIDE, SIDE, 1]
        nodes = [
            helper.make_node("MatMul", ["x", "w"], ["h"]),
            helper.make_node("Sigmoid", ["h"], ["s"]),
            helper.make_node("Reshape", ["s", "shape"], ["y"]),
        ]
        inits = [numpy_helper.from_array(np.array([-1, SIDE, SIDE, 1], np.int64), "shape")]
    graph = helper.make_graph(
        nodes,
        role,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *inputs])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", *outputs])],
        [numpy_helper.from_array(weight.astype(np.float32), "w"), *inits],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))


def make_export(folder, run="/runs/a", encoder_weight=0.0, decoder_weight=0.0, filters=(8,)):
    """An export folder: encoder.onnx, decoder.onnx and a manifest.json vouching for them."""
    folder.mkdir(parents=True, exist_ok=True)
    _onnx(folder / "encoder.onnx", np.full((SIDE * SIDE, LATENT), encoder_weight), "encoder")
    _onnx(folder / "decoder.onnx", np.full((LATENT, SIDE * SIDE), decoder_weight), "decoder")
    parity = {f.name: 0.0 for f in fields(Parity)} | {"images": 1, "runtime": "onnxruntime"}
    image, code = [None, SIDE, SIDE, 1], [None, LATENT]
    files = [
        {
            "file": f"{role}.onnx",
            "role": role,
            "format": "onnx",
            "precision": "float32",
            "opset": 13,
            "inputs": [{"name": "x", "shape": i, "dtype": "float32"}],
            "outputs": [{"name": "y", "shape": o, "dtype": "float32"}],
            "bytes": (folder / f"{role}.onnx").stat().st_size,
            "sha256": sha256_of(folder / f"{role}.onnx"),
            "status": "passed",
            "parity": parity,
        }
        for role, i, o in (("encoder", image, code), ("decoder", code, image))
    ]
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "run": run,
        "versions": {},
        "model": {"input_shape": [SIDE, SIDE, 1], "latent_dim": LATENT, "filters": list(filters)},
        "pixel_scaling": {"divide_by": 255.0},
        "latent_quantization": None,
        "files": files,
    }
    (folder / MANIFEST).write_text(json.dumps(manifest))
    return folder / "encoder.onnx", folder / "decoder.onnx"


def constant_images(path, values):
    """Float images in [0, 1], each of one constant value; their MSE against 0.5 is (v - 0.5)^2."""
    images = np.stack([np.full((SIDE, SIDE, 1), v, np.float32) for v in values])
    np.save(path, images)
    return path


@pytest.fixture
def export(tmp_path):
    return make_export(tmp_path / "export")


# --- thresholds and ROC AUC on controlled numbers ----------------------------------


def test_calibrated_threshold_is_the_quantile_of_the_normal_scores():
    limit = calibrate_threshold(np.arange(101.0), 0.9, "normal.npy", "e.onnx", "d.onnx", "/runs/a")
    assert (limit.mse, limit.quantile, limit.calibration_images, limit.calibration_source) == (90.0, 0.9, 101, "normal.npy")
    assert calibrate_threshold(np.arange(11.0), 0.95, "s").mse == pytest.approx(9.5)  # linear between order statistics
    assert calibrate_threshold(np.array([0.2, 0.2, 0.2]), 0.99, "s").mse == pytest.approx(0.2)
    for bad in (0.0, 1.0, 1.5, float("nan")):
        with pytest.raises(AekitError, match="--quantile must be between 0 and 1"):
            calibrate_threshold(np.arange(5.0), bad, "s")
    with pytest.raises(AekitError, match="NaN or infinite scores"):
        calibrate_threshold(np.array([0.1, np.nan]), 0.5, "s")
    with pytest.raises(AekitError, match="no scores"):
        calibrate_threshold(np.array([]), 0.5, "s")


def test_roc_auc_on_separated_reversed_and_tied_scores():
    assert roc_auc(np.array([0.1, 0.2]), np.array([0.3, 0.4])) == 1.0
    assert roc_auc(np.array([0.3, 0.4]), np.array([0.1, 0.2])) == 0.0
    assert roc_auc(np.array([0.1, 0.3]), np.array([0.2, 0.3])) == pytest.approx(0.625)  # one tie counts half
    assert roc_auc(np.full(3, 0.5), np.full(4, 0.5)) == 0.5  # all tied
    rng = np.random.default_rng(0)
    normal, anomalies = rng.integers(0, 5, 40).astype(float), rng.integers(2, 7, 30).astype(float)  # many ties
    pairs = (anomalies[:, None] > normal[None, :]).sum() + 0.5 * (anomalies[:, None] == normal[None, :]).sum()
    assert roc_auc(normal, anomalies) == pytest.approx(pairs / (40 * 30), abs=1e-12)
    with pytest.raises(AekitError, match="needs normal and anomaly scores"):
        roc_auc(np.array([]), np.array([1.0]))
    with pytest.raises(AekitError, match="NaN or infinite"):
        roc_auc(np.array([0.1, np.inf]), np.array([1.0]))


def test_threshold_json_round_trips_through_a_file(tmp_path):
    from aekit.core.runs import write_json

    limit = Threshold(0.0123456789, 0.99, 2000, "normal.npy", "export/encoder.onnx", "export/decoder.onnx", "/runs/a")
    limit.calibrated_on = VALIDATION_IMAGES
    assert Threshold.from_json(json.loads(json.dumps(limit.to_json()))) == limit
    assert limit.to_json()["calibrated_on"] == "validation images"
    write_json(tmp_path / "t.json", limit.to_json())
    assert Threshold.load(tmp_path / "t.json") == limit
    old = {k: v for k, v in limit.to_json().items() if k not in ("encoder", "decoder", "run", "metric", "calibrated_on")}
    assert Threshold.from_json(old) == Threshold(0.0123456789, 0.99, 2000, "normal.npy")  # optional keys default


@pytest.mark.parametrize(
    "text, words",
    [
        (
            '{"threshold": NaN, "quantile": 0.99, "calibration_images": 10, "calibration_source": "n"}',
            "threshold nan; expected a finite MSE",
        ),
        ('{"threshold": Infinity, "quantile": 0.99, "calibration_images": 10, "calibration_source": "n"}', "threshold inf"),
        ('{"threshold": -1, "quantile": 0.99, "calibration_images": 10, "calibration_source": "n"}', "threshold -1"),
        ('{"threshold": "0.1", "quantile": 0.99, "calibration_images": 10, "calibration_source": "n"}', "threshold '0.1'"),
        ('{"threshold": true, "quantile": 0.99, "calibration_images": 10, "calibration_source": "n"}', "threshold True"),
        ('{"threshold": 0.1, "quantile": 1.5, "calibration_images": 10, "calibration_source": "n"}', "quantile 1.5"),
        ('{"threshold": 0.1, "quantile": 0.9, "calibration_images": 0, "calibration_source": "n"}', "calibration_images 0"),
        ("[0.1, 0.99]", "holds a JSON list, not a threshold object"),
        ('{"threshold": 0.1}', "has no quantile, calibration_images, calibration_source"),
        (
            '{"threshold": 0.1, "quantile": 0.9, "calibration_images": 1, "calibration_source": "n", "metric": "ssim"}',
            "a threshold on 'ssim'",
        ),
        ("not json", "is not a threshold file"),
    ],
)
def test_threshold_files_that_are_not_valid_thresholds_are_one_line_errors(tmp_path, text, words):
    path = tmp_path / "t.json"
    path.write_text(text)
    with pytest.raises(AekitError) as refused:
        Threshold.load(path)
    message = str(refused.value)
    assert words in message and str(path) in message and "Calibrate again: aekit score --calibrate" in message
    assert "\n" not in message


def test_threshold_load_names_a_missing_file_and_a_folder(tmp_path):
    with pytest.raises(AekitError, match="No threshold file .*gone.json. Calibrate first"):
        Threshold.load(tmp_path / "gone.json")
    with pytest.raises(AekitError, match="is a folder"):
        Threshold.load(tmp_path)


# --- the jobs, on files whose scores are known ------------------------------------------


def test_calibrate_then_score_return_the_known_values(export, tmp_path):
    encoder, decoder = open_sessions(*export)
    normal = constant_images(tmp_path / "normal.npy", [0.5, 0.45, 0.4])  # MSE 0, 0.0025, 0.01
    limit = calibrate(encoder, decoder, normal, quantile=0.5, threshold_file=tmp_path / "t.json")
    assert limit.mse == pytest.approx(0.0025, rel=1e-4) and limit.calibration_images == 3
    assert limit.run == "/runs/a" and limit.encoder == str(export[0])
    assert Threshold.load(tmp_path / "t.json") == limit

    test = constant_images(tmp_path / "test.npy", [0.5, 0.46, 0.4, 0.3, 0.0])  # MSE 0, 0.0016, 0.01, 0.04, 0.25
    result = score(encoder, decoder, test, limit, output=tmp_path / "scores.csv", batch_size=2)
    np.testing.assert_allclose(result.scores.mse, [0, 0.0016, 0.01, 0.04, 0.25], rtol=1e-4, atol=1e-12)
    assert result.flags.tolist() == [False, False, True, True, True]
    assert (result.anomalies, result.normal, result.scores.names) == (3, 2, ["0", "1", "2", "3", "4"])
    assert result.to_json() == {
        "images": 5,
        "anomalies": 3,
        "normal": 2,
        "threshold": limit.mse,
        "mean_mse": pytest.approx(0.3016 / 5, rel=1e-4),
    }
    rows = (tmp_path / "scores.csv").read_text().splitlines()
    assert rows[0] == "name,mse,psnr,anomaly" and rows[3] == "2,0.01,20.0000,1" and rows[1].endswith(",100.0000,0")


def test_reconstruct_writes_the_csv_and_grid_and_returns_the_scores(export, tmp_path):
    encoder, decoder = open_sessions(*export)
    source = constant_images(tmp_path / "images.npy", [0.5, 0.0, 0.4])
    done = reconstruct(encoder, decoder, source, tmp_path / "out", grid=2)
    assert isinstance(done.scores, Scores) and done.scores.worst == ("1", pytest.approx(0.25))
    assert done.scores.originals.shape == (2, SIDE, SIDE, 1) and np.all(done.scores.reconstructions == 0.5)
    assert done.scores.kept.tolist() == [0, 2]  # spread over the source: first and last, not the first two
    np.testing.assert_allclose(done.scores.originals[:, 0, 0, 0], [0.5, 0.4])
    assert done.csv.read_text().splitlines()[2] == "1,0.25,6.0206"
    with Image.open(done.grid) as picture:
        cells = _cells(np.asarray(picture.convert("L")), 102)  # the 0.4 image: round(0.4 * 255)
        assert cells == [(6, 70, _grid_margin() + 64 + 4, _grid_margin() + 128 + 4)]  # one 4x4 image as a 64x64 cell
    assert reconstruct(encoder, decoder, source, tmp_path / "none", grid=0).grid is None
    with pytest.raises(AekitError, match="--grid must be 0"):
        reconstruct(encoder, decoder, source, tmp_path / "neg", grid=-1)


def _grid_margin() -> int:
    """save_grid's left margin: the widest row label in Pillow's default font, plus padding."""
    from PIL import ImageFont

    return ImageFont.load_default().getbbox("reconstruction")[2] + 12


def _cells(pixels: np.ndarray, value: int) -> list[tuple[int, int, int, int]]:
    """(top, bottom, left, right) of each solid block (8 px or more a side) of `value` in a grey picture, row-major."""

    def runs(line: np.ndarray) -> list[tuple[int, int]]:
        edges = np.flatnonzero(np.diff(np.r_[0, line.astype(np.int8), 0]))
        return list(zip(edges[::2].tolist(), edges[1::2].tolist()))

    mask = pixels == value
    blocks = [(top, bottom, x0, x1) for top, bottom in runs(mask.any(axis=1)) for x0, x1 in runs(mask[top:bottom].any(axis=0))]
    return [(t, b, x0, x1) for t, b, x0, x1 in blocks if b - t >= 8 and x1 - x0 >= 8 and mask[t:b, x0:x1].all()]


def test_score_path_keeps_images_spread_evenly_over_the_source_across_batches(export, tmp_path):
    encoder, decoder = open_sessions(*export)
    source = constant_images(tmp_path / "ten.npy", np.arange(10) / 10)
    scores = score_path(encoder, decoder, source, batch_size=3, keep=4)
    assert scores.kept.tolist() == [0, 3, 6, 9] and len(scores) == 10
    np.testing.assert_allclose(scores.originals[:, 0, 0, 0], [0.0, 0.3, 0.6, 0.9], atol=1e-6)
    assert score_path(encoder, decoder, source, batch_size=4, keep=50).kept.tolist() == list(range(10))  # all of them
    assert score_path(encoder, decoder, source).originals is None
    batches = ((["a", "b"], np.full((2, SIDE, SIDE, 1), 0.5, np.float32)) for _ in range(3))  # size unknown: the first
    from aekit.edge.anomaly import score_batches

    assert score_batches(encoder, decoder, batches, "stream", keep=3).kept.tolist() == [0, 1, 2]


@pytest.mark.parametrize("side, scale", [(4, 16), (8, 8), (28, 3), (64, 1), (100, 1)])
def test_grid_cells_are_at_least_64_pixels_whatever_the_image_size(side, scale):
    assert grid_scale(side, side) == scale and side * scale >= 64
    assert grid_scale(8, 32) == 8 and grid_scale(30, 12) == 6  # the short side decides


def test_grid_draws_8x8_images_as_64_pixel_cells_with_labels_and_psnr(tmp_path):
    x = np.linspace(0, 1, 8, dtype=np.float32)
    gradients = np.stack([np.broadcast_to(x[None, :, None] * k, (8, 8, 1)) for k in (0.2, 0.6, 1.0)])
    flat = np.full((3, 8, 8, 1), 0.8, np.float32)  # round(0.8 * 255) = 204 in every cell, in no gradient
    size = save_grid(gradients, flat, tmp_path / "g.png", psnr=np.array([20.0, 31.25, 100.0]))
    with Image.open(tmp_path / "g.png") as picture:
        assert picture.size == size and picture.mode == "RGB"
        pixels = np.asarray(picture.convert("L"))
    margin = _grid_margin()
    lefts = [margin + i * (64 + 4) for i in range(3)]
    assert _cells(pixels, 204) == [(6 + 64 + 4, 6 + 128 + 4, left, left + 64) for left in lefts]  # reconstructions
    assert size == (margin + 3 * 64 + 2 * 4 + 6, pixels.shape[0]) and 6 + 128 + 4 < size[1] <= 6 + 128 + 4 + 30
    assert pixels[:, 6 : margin - 6].min() < 64  # row labels drawn in the left margin
    under = pixels[6 + 128 + 4 :, margin:]
    assert under.min() < 64 and (under < 64).any(axis=0).sum() > 3 * 10  # a PSNR figure under each reconstruction
    assert np.all(pixels[6 : 6 + 64, lefts[0] : lefts[0] + 8] == 0)  # nearest neighbour: a gradient's first column, 8 px


# --- labelled normal and anomalous sets ---------------------------------------------------


def test_histogram_bins_are_log_spaced_and_count_every_image():
    edges, normal, anomalous = histogram_bins(np.array([0.0, 1e-4, 1e-3]), np.array([1e-2, 1e-1]), bins=3)
    np.testing.assert_allclose(edges, [1e-4, 1e-3, 1e-2, 1e-1])
    assert normal.tolist() == [2, 1, 0] and anomalous.tolist() == [0, 0, 2]  # an MSE of 0 counts in the first bin
    edges, normal, anomalous = histogram_bins(np.full(4, 0.01), np.full(2, 0.01), bins=2)
    np.testing.assert_allclose(edges, [0.01 / 10**0.5, 0.01, 0.01 * 10**0.5])  # all one value: a decade around it
    assert normal.sum() == 4 and anomalous.sum() == 2


def test_evaluate_reports_auc_and_the_thresholds_rates_on_known_scores(export, tmp_path):
    encoder, decoder = open_sessions(*export)
    normal = constant_images(tmp_path / "normal.npy", [0.5, 0.48, 0.45, 0.4, 0.3])  # MSE 0, 4e-4, 2.5e-3, 0.01, 0.04
    anomalous = constant_images(tmp_path / "anomalous.npy", [0.45, 0.35, 0.2, 0.0])  # MSE 2.5e-3, 0.0225, 0.09, 0.25
    limit = Threshold(0.02, 0.9, 5, "n", run="/runs/a")
    found = evaluate(encoder, decoder, normal, anomalous, limit, tmp_path / "h.png", batch_size=2)
    # pairs anomalous > normal: 2 + a tie (0.5) + 4 + 5 + 5 = 16.5 of 20
    assert found.auc == pytest.approx(16.5 / 20)
    assert (found.false_positives, found.false_positive_rate) == (1, 0.2)  # the 0.04 normal image
    assert (found.detections, found.detection_rate) == (3, 0.75)  # all but the 2.5e-3 anomaly
    figures = found.to_json()
    assert {k: figures[k] for k in ("normal_images", "anomalous_images", "threshold", "histogram")} == {
        "normal_images": 5,
        "anomalous_images": 4,
        "threshold": 0.02,
        "histogram": str(tmp_path / "h.png"),
    }
    assert figures["normal_mean_mse"] == pytest.approx(0.0529 / 5, rel=1e-4)
    with Image.open(tmp_path / "h.png") as picture:
        assert picture.size == HISTOGRAM_SIZE == (720, 420)
        red = np.all(np.asarray(picture.convert("RGB")) == THRESHOLD_COLOUR, axis=-1)
    assert red.any(axis=0).sum() >= 2  # the threshold line (2 px), plus the legend's swatch
    without = evaluate(encoder, decoder, normal, anomalous)  # no threshold: the AUC alone, no picture
    assert without.auc == found.auc and without.to_json()["false_positive_rate"] is None and without.histogram is None
    with pytest.raises(AekitError, match="calibrated for run /runs/b"):
        evaluate(encoder, decoder, normal, anomalous, Threshold(0.02, 0.9, 5, "n", run="/runs/b"))
    with pytest.raises(AekitError, match=r"--histogram .*h.png already exists. Pass --overwrite"):
        evaluate(encoder, decoder, normal, anomalous, limit, tmp_path / "h.png")


def _gradients(count: int, seed: int) -> np.ndarray:
    """Smooth uint8 ramps around mid-grey: what this tiny model (every pixel 0.5) reconstructs well."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(-1, 1, SIDE)
    ramps = [rng.uniform(5, 40) * (ramp[None, :] if rng.random() < 0.5 else ramp[:, None]) for _ in range(count)]
    return np.round(128 + np.stack([np.broadcast_to(r, (SIDE, SIDE)) for r in ramps]))[..., None].astype(np.uint8)


def _expected_mse(images: np.ndarray) -> np.ndarray:
    return ((images.astype(np.float64) / 255 - 0.5) ** 2).reshape(len(images), -1).mean(axis=1)


def test_cli_score_normal_anomalous_reports_auc_rates_and_draws_the_histogram(export, tmp_path):
    folder = tmp_path / "normal"
    folder.mkdir()
    normal = _gradients(30, seed=1)
    for i, image in enumerate(normal):
        Image.fromarray(image[..., 0]).save(folder / f"ramp{i:02d}.png")  # an image folder ...
    rng = np.random.default_rng(2)
    checkers = (np.indices((SIDE, SIDE)).sum(axis=0) % 2 * 255).astype(np.uint8)
    anomalous = np.concatenate([np.stack([checkers] * 10), rng.integers(0, 256, (10, SIDE, SIDE), dtype=np.uint8)])[..., None]
    np.savez(tmp_path / "anomalous.npz", images=anomalous)  # ... against an array
    np.save(tmp_path / "calibration.npy", _gradients(40, seed=3))
    threshold, picture = tmp_path / "t.json", tmp_path / "pictures" / "hist.png"
    args = ["score", "--encoder", str(export[0]), "--decoder", str(export[1]), "--threshold", str(threshold)]
    labelled = ["--normal", str(folder), "--anomalous", str(tmp_path / "anomalous.npz"), "--histogram", str(picture)]
    result = CliRunner().invoke(
        app, [*args, "--calibrate", str(tmp_path / "calibration.npy"), "--quantile", "0.9", *labelled, "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)["evaluation"]
    limit = float(np.quantile(_expected_mse(np.load(tmp_path / "calibration.npy")), 0.9))
    normal_mse, anomalous_mse = _expected_mse(normal), _expected_mse(anomalous)
    assert report["threshold"] == pytest.approx(limit, rel=1e-5)
    assert report["roc_auc"] == pytest.approx(roc_auc(normal_mse, anomalous_mse)) and report["roc_auc"] > 0.99
    assert report["false_positives"] == int((normal_mse > limit).sum()) and report["normal_images"] == 30
    assert report["false_positive_rate"] == pytest.approx((normal_mse > limit).mean())
    assert report["detection_rate"] == pytest.approx((anomalous_mse > limit).mean()) and report["anomalous_images"] == 20
    assert report["histogram"] == str(picture)
    with Image.open(picture) as drawn:
        assert drawn.size == (720, 420)
    # again, reading the saved threshold: the same figures; the picture is not replaced unasked
    again = CliRunner().invoke(app, [*args, *labelled])
    assert again.exit_code == 2 and f"--histogram {picture} already exists. Pass --overwrite" in again.output
    again = CliRunner().invoke(app, [*args, *labelled, "--overwrite"])
    assert again.exit_code == 0, again.output
    line = again.stdout.strip().splitlines()[-1]
    assert line.startswith(f"30 normal, 20 anomalous images: ROC AUC {report['roc_auc']:.4f}; threshold MSE {limit:.5f}")
    assert f"detects {report['detection_rate']:.1%} of anomalous" in line and line.endswith(f"→ {picture}")


def test_cli_score_refuses_half_a_labelled_pair_and_a_stray_histogram(export, tmp_path):
    images = str(constant_images(tmp_path / "x.npy", [0.5]))
    base = ["score", "--encoder", str(export[0]), "--decoder", str(export[1]), "--threshold", str(tmp_path / "t.json")]
    cases = [
        (["--normal", images], "--normal needs --anomalous too"),
        (["--anomalous", images], "--anomalous needs --normal too"),
        (["--calibrate", images, "--histogram", str(tmp_path / "h.png")], "--histogram draws the --normal and --anomalous"),
        (["--normal", images, "--anomalous", images, "--histogram", str(tmp_path / "h.jpg")], "must end in .png"),
        ([], "Nothing to do"),
    ]
    for extra, words in cases:
        result = CliRunner().invoke(app, [*base, *extra])
        lines = result.output.strip().splitlines()
        assert result.exit_code == 2 and len(lines) == 1 and words in lines[0], (extra, result.output)
    assert not (tmp_path / "t.json").exists()


# --- what a threshold was calibrated on ---------------------------------------------------


def make_run(folder, data, val_split=0.25):
    """A run folder with the config.json training writes (recipe, model, the data record), for exports to point at."""
    from aekit.core.recipe import TrainConfig
    from aekit.core.runs import write_json
    from aekit.data.loading import load_data

    folder.mkdir(parents=True)
    record = {"recipe": TrainConfig().to_json(), "model": {}, "data": load_data(str(data), val_split).describe()}
    write_json(folder / "config.json", record)
    return folder


def test_calibration_origin_compares_resolved_paths_with_the_runs_training_source(tmp_path):
    (tmp_path / "data" / "digits").mkdir(parents=True)
    for i in range(8):
        Image.fromarray(np.full((SIDE, SIDE), 30 * i, np.uint8)).save(tmp_path / "data" / "digits" / f"{i}.png")
    run = make_run(tmp_path / "run", tmp_path / "data" / "digits")
    assert calibration_origin(run, tmp_path / "data" / "digits") == TRAINING_IMAGES
    assert calibration_origin(run, tmp_path / "data" / "digits" / ".." / "digits") == TRAINING_IMAGES  # resolved
    assert calibration_origin(run, tmp_path / "data") == TRAINING_IMAGES  # a folder that holds the training images
    assert calibration_origin(run, tmp_path / "data" / "digits" / "3.png") == TRAINING_IMAGES  # inside them
    assert calibration_origin(run, tmp_path / "other") == OTHER_IMAGES
    assert calibration_origin(tmp_path / "gone", tmp_path / "data") == "" and calibration_origin("", tmp_path) == ""
    # an IDX folder with a t10k file: that file is the validation split, the folder holds the training images
    idx = tmp_path / "idx"
    idx.mkdir()
    for name in ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte"):
        header = np.array([2051, 6, SIDE, SIDE], ">i4").tobytes()
        (idx / name).write_bytes(header + np.arange(6 * SIDE * SIDE, dtype=np.uint8).tobytes())
    idx_run = make_run(tmp_path / "idx-run", idx)
    assert calibration_origin(idx_run, idx / "t10k-images-idx3-ubyte") == VALIDATION_IMAGES
    assert calibration_origin(idx_run, idx / "train-images-idx3-ubyte") == TRAINING_IMAGES
    assert calibration_origin(idx_run, idx) == TRAINING_IMAGES


def test_cli_calibrating_on_the_training_images_warns_and_says_so_in_the_threshold(tmp_path):
    train = constant_images(tmp_path / "train.npy", np.linspace(0.3, 0.7, 8))
    fresh = constant_images(tmp_path / "fresh.npy", [0.45, 0.5, 0.55])
    run = make_run(tmp_path / "run", train)
    enc, dec = make_export(tmp_path / "export", run=str(run))
    base = ["score", "--encoder", str(enc), "--decoder", str(dec)]
    result = CliRunner().invoke(app, [*base, "--calibrate", str(train), "--threshold", str(tmp_path / "t.json")])
    assert result.exit_code == 0, result.output
    warning = result.stderr.strip().splitlines()
    assert len(warning) == 1 and warning[0].startswith(f"warning: {train} holds the training images of run {run}.")
    assert "reconstruct better than unseen normal images" in warning[0] and "flags more than 1% of new normal" in warning[0]
    assert "--calibrate val" in warning[0]
    assert json.loads((tmp_path / "t.json").read_text())["calibrated_on"] == "training images"
    assert "(training images)" in result.stdout
    result = CliRunner().invoke(app, [*base, "--calibrate", str(fresh), "--threshold", str(tmp_path / "u.json"), "--json"])
    assert result.exit_code == 0 and result.stderr.strip() == "", result.output
    assert json.loads(result.stdout)["calibration"]["calibrated_on"] == OTHER_IMAGES


def test_calibrate_val_uses_the_runs_validation_split(tmp_path):
    values = np.linspace(0.1, 0.9, 12)
    train = constant_images(tmp_path / "train.npy", values)
    run = make_run(tmp_path / "run", train, val_split=0.25)
    enc, dec = make_export(tmp_path / "export", run=str(run))
    from aekit.data.loading import load_data

    held_out = load_data(str(train), 0.25).val[:, 0, 0, 0]  # the 3 images training never saw
    assert len(held_out) == 3
    limit = calibrate(*open_sessions(enc, dec), "val", quantile=0.5, threshold_file=tmp_path / "t.json")
    assert limit.calibration_images == 3 and limit.calibrated_on == VALIDATION_IMAGES
    assert limit.mse == pytest.approx(np.quantile((held_out - 0.5) ** 2, 0.5), rel=1e-5)
    assert "validation split" in limit.calibration_source and str(run) in limit.calibration_source
    result = CliRunner().invoke(
        app,
        ["score", "--encoder", str(enc), "--decoder", str(dec), "--calibrate", "val", "--threshold", str(tmp_path / "u.json")],
    )
    assert result.exit_code == 0 and result.stderr.strip() == "", result.output
    assert json.loads((tmp_path / "u.json").read_text())["calibrated_on"] == "validation images"
    # no run folder to read: one line naming the fix
    lost = make_export(tmp_path / "lost", run=str(tmp_path / "moved"))
    result = CliRunner().invoke(
        app,
        [
            "score",
            "--encoder",
            str(lost[0]),
            "--decoder",
            str(lost[1]),
            "--calibrate",
            "val",
            "--threshold",
            str(tmp_path / "v.json"),
        ],
    )
    lines = result.output.strip().splitlines()
    assert (
        result.exit_code == 2 and len(lines) == 1 and "which is not there" in lines[0] and "--calibrate NORMAL_IMAGES" in lines[0]
    )


def test_a_missing_threshold_suggests_calibrate_val_when_the_run_is_there(tmp_path):
    run = make_run(tmp_path / "run", constant_images(tmp_path / "train.npy", np.linspace(0.3, 0.7, 8)))
    known, unknown = make_export(tmp_path / "known", run=str(run)), make_export(tmp_path / "unknown", run="/runs/gone")
    with pytest.raises(
        AekitError, match=r"No threshold file .*t.json. Calibrate first on run .*validation split: aekit score --calibrate val"
    ):
        load_threshold(tmp_path / "t.json", known[0])
    with pytest.raises(AekitError) as refused:
        load_threshold(tmp_path / "t.json", unknown[0])
    assert "--calibrate NORMAL_IMAGES" in str(refused.value) and "--calibrate val" not in str(refused.value)
    assert load_threshold(tmp_path / "t.json", known[0], required=False) is None
    result = CliRunner().invoke(
        app, ["score", "--encoder", str(known[0]), "--decoder", str(known[1]), "--threshold", str(tmp_path / "t.json"), str(run)]
    )
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and "--calibrate val" in lines[0]


# --- hostile inputs ------------------------------------------------------------------------


def test_nan_pixels_latents_and_reconstructions_are_refused_naming_the_image(tmp_path):
    images = np.full((3, SIDE, SIDE, 1), 0.5, np.float32)
    images[2, 0, 0, 0] = np.nan
    encoder, decoder = open_sessions(*make_export(tmp_path / "ok"))
    with pytest.raises(AekitError, match=r"Image '2' has NaN or infinite pixels"):
        reconstruction_errors(encoder, decoder, images, ["0", "1", "2"])
    images[2, 0, 0, 0] = np.inf
    with pytest.raises(AekitError, match=r"Image 2 has NaN or infinite pixels"):
        reconstruction_errors(encoder, decoder, images)

    normal = constant_images(tmp_path / "normal.npy", [0.5, 0.4])
    broken = {
        "encoder": make_export(tmp_path / "nan-encoder", encoder_weight=np.nan),
        "decoder": make_export(tmp_path / "inf-decoder", decoder_weight=np.inf),
    }
    wording = {
        "encoder": "encoder.onnx turned image '0' into NaN or infinite latents",
        "decoder": "decoder.onnx turned the latents of image '0' into NaN or infinite pixels",
    }
    for part, files in broken.items():
        encoder, decoder = open_sessions(*files)
        with pytest.raises(AekitError, match=wording[part]):
            calibrate(encoder, decoder, normal, 0.5, tmp_path / f"{part}.json")
        assert not (tmp_path / f"{part}.json").exists()
        with pytest.raises(AekitError, match="Re-export the run"):
            score(encoder, decoder, normal, Threshold(0.01, 0.5, 2, "n"))
    np.save(tmp_path / "nan.npy", images)
    with pytest.raises(AekitError, match=r"Image '2' of .*nan.npy has NaN or infinite pixels"):
        score(*open_sessions(*make_export(tmp_path / "ok")), tmp_path / "nan.npy", Threshold(0.01, 0.5, 2, "n"))
    # the CLI: one line, exit 2, and no JSON claiming "0 anomalies"
    result = CliRunner().invoke(
        app,
        [
            "score",
            "--encoder",
            str(broken["decoder"][0]),
            "--decoder",
            str(broken["decoder"][1]),
            "--calibrate",
            str(normal),
            "--threshold",
            str(tmp_path / "t.json"),
            str(normal),
            "--json",
        ],
    )
    assert result.exit_code == 2 and result.stdout == "" and not (tmp_path / "t.json").exists()
    assert result.output.strip().splitlines() == [
        f"error: {wording['decoder']}, so the file is broken. Re-export the run "
        "(aekit export), after checking that its training loss was finite."
    ]


def test_an_encoder_and_a_decoder_from_different_runs_are_refused(tmp_path):
    (enc_a, _), (_, dec_b) = make_export(tmp_path / "a", run="/runs/a"), make_export(tmp_path / "b", run="/runs/b")
    with pytest.raises(AekitError, match=r"from run /runs/a but .*decoder.onnx from run /runs/b; a decoder cannot read"):
        open_sessions(enc_a, dec_b)
    _, dec_c = make_export(tmp_path / "c", run="/runs/a", filters=(16,))
    with pytest.raises(AekitError, match=r"describe different models \(filters \[8\] vs \[16\]\)"):
        open_sessions(enc_a, dec_c)
    source = constant_images(tmp_path / "x.npy", [0.5])
    runner = CliRunner()
    for command in (
        ["reconstruct", source, "-o", tmp_path / "rec"],
        ["score", "--calibrate", source, "--threshold", tmp_path / "t.json"],
    ):
        result = runner.invoke(app, [*map(str, command), "--encoder", str(enc_a), "--decoder", str(dec_b)])
        lines = result.output.strip().splitlines()
        assert (
            result.exit_code == 2 and len(lines) == 1 and "Pass an encoder and a decoder exported from the same run" in lines[0]
        )
    assert not (tmp_path / "rec").exists() and not (tmp_path / "t.json").exists()


def test_score_refuses_a_threshold_calibrated_for_another_run(tmp_path):
    encoder, decoder = open_sessions(*make_export(tmp_path / "a", run="/runs/a"))
    with pytest.raises(AekitError, match="calibrated for run /runs/b, but .*encoder.onnx comes from run /runs/a"):
        score(encoder, decoder, constant_images(tmp_path / "x.npy", [0.5]), Threshold(0.1, 0.9, 5, "n", run="/runs/b"))


def test_cli_score_names_a_threshold_file_of_the_wrong_shape(export, tmp_path):
    (tmp_path / "t.json").write_text("[0.1]")
    result = CliRunner().invoke(
        app,
        [
            "score",
            "--encoder",
            str(export[0]),
            "--decoder",
            str(export[1]),
            "--threshold",
            str(tmp_path / "t.json"),
            str(constant_images(tmp_path / "x.npy", [0.5])),
        ],
    )
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1
    assert lines[0].startswith(f"error: {tmp_path / 't.json'} holds a JSON list") and "Calibrate again" in lines[0]


def test_the_anomaly_module_imports_without_tensorflow():
    script = (
        "import sys, aekit.edge.anomaly, aekit.edge.report; "
        "assert not {'tensorflow', 'keras', 'matplotlib'} & set(sys.modules), sorted(sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
