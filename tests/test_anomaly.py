"""aekit.anomaly: thresholds, calibration, ROC AUC and the score/reconstruct jobs.

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
from aekit.anomaly import (
    Scores,
    Threshold,
    calibrate,
    calibrate_threshold,
    open_sessions,
    reconstruct,
    reconstruction_errors,
    roc_auc,
    score,
)
from aekit.cli.main import app
from aekit.manifest import MANIFEST, SCHEMA_VERSION, Parity, sha256_of

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
    from aekit.runs import write_json

    limit = Threshold(0.0123456789, 0.99, 2000, "normal.npy", "export/encoder.onnx", "export/decoder.onnx", "/runs/a")
    assert Threshold.from_json(json.loads(json.dumps(limit.to_json()))) == limit
    write_json(tmp_path / "t.json", limit.to_json())
    assert Threshold.load(tmp_path / "t.json") == limit
    old = {k: v for k, v in limit.to_json().items() if k not in ("encoder", "decoder", "run", "metric")}
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
    assert done.csv.read_text().splitlines()[2] == "1,0.25,6.0206"
    with Image.open(done.grid) as picture:
        assert picture.size == (SIDE * 2 * 3, (SIDE * 2 + 2) * 3)
    assert reconstruct(encoder, decoder, source, tmp_path / "none", grid=0).grid is None
    with pytest.raises(AekitError, match="--grid must be 0"):
        reconstruct(encoder, decoder, source, tmp_path / "neg", grid=-1)


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
    script = "import sys, aekit.anomaly; assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules"
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
