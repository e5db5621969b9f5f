"""aekit bench on the edge install: no TensorFlow, no matplotlib; the exported files only, the Keras row absent.

The run here is built by hand, without TensorFlow: 8x8 grey images in a .npy, and a linear autoencoder
exported as ONNX (encoder: x W, decoder: z W^T, W the first 4 principal directions of the training images),
float32 and an int8 QDQ pair, with a manifest vouching for them. Every quality figure is known in advance:
the round trip is a projection, computed here in numpy. On the full install the tests hold bench to the
edge side (training_side() False, no pyplot), so they measure the same thing in both venvs.
"""

import csv
import json
import subprocess
import sys
from dataclasses import fields
from types import SimpleNamespace

import numpy as np
import pytest
from support import assert_one_line_error, needs_tensorflow, run

from aekit import AekitError
from aekit.benchmarking import bench
from aekit.benchmarking.bench import BenchOptions, Row, bench_run, write_outputs
from aekit.benchmarking.quality import ssim, ssim_numpy, ssim_window
from aekit.core.manifest import MANIFEST, SCHEMA_VERSION, Parity, sha256_of
from aekit.core.recipe import TrainConfig
from aekit.data.loading import load_data

SIDE, LATENT = 8, 4
FAST = dict(batch_sizes=(1, 4), runs=3, warmup=1, min_psnr=5.0)
INT8_SCALE = 1 / 127  # weights and latents of the int8 files: symmetric, one scale each


def _images(count: int, seed: int) -> np.ndarray:
    """Smooth 8x8 grey images (gradients and blobs), uint8: a few principal directions hold most of them."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:SIDE, 0:SIDE] / (SIDE - 1)
    a, b, c = rng.random((3, count, 1, 1))
    pixels = 0.2 + 0.6 * (a * x + (1 - a) * y) * b + 0.2 * c * np.exp(-((x - a) ** 2 + (y - b) ** 2) * 4)
    return (np.clip(pixels, 0, 1) * 255).astype(np.uint8)[..., None]


def _linear_onnx(path, weight: np.ndarray, role: str, int8: bool) -> None:
    """encoder: (N, 8, 8, 1) -> (N, 4) = flat(x) W; decoder: (N, 4) -> (N, 8, 8, 1) = z W^T. int8: QDQ on input and weights."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    matrix = weight if role == "encoder" else weight.T
    image, code = [SIDE, SIDE, 1], [LATENT]
    inputs, outputs = (image, code) if role == "encoder" else (code, image)
    nodes, inits = [], []
    source = "x"
    if int8:  # activations: uint8 pixels (scale 1/255) into the encoder, int8 codes into the decoder; weights int8
        act_scale, act_type = (1 / 255, np.uint8) if role == "encoder" else (INT8_SCALE * 8, np.int8)
        inits += [
            numpy_helper.from_array(np.array(act_scale, np.float32), "a_scale"),
            numpy_helper.from_array(np.array(0, act_type), "a_zero"),
            numpy_helper.from_array(np.clip(np.round(matrix / INT8_SCALE), -127, 127).astype(np.int8), "w_q"),
            numpy_helper.from_array(np.array(INT8_SCALE, np.float32), "w_scale"),
            numpy_helper.from_array(np.array(0, np.int8), "w_zero"),
        ]
        nodes += [
            helper.make_node("QuantizeLinear", ["x", "a_scale", "a_zero"], ["x_q"]),
            helper.make_node("DequantizeLinear", ["x_q", "a_scale", "a_zero"], ["x_dq"]),
            helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w"]),
        ]
        source = "x_dq"
    else:
        inits.append(numpy_helper.from_array(matrix.astype(np.float32), "w"))
    if role == "encoder":
        inits.append(numpy_helper.from_array(np.array([-1, SIDE * SIDE], np.int64), "flat"))
        nodes += [helper.make_node("Reshape", [source, "flat"], ["h"]), helper.make_node("MatMul", ["h", "w"], ["y"])]
    else:
        inits.append(numpy_helper.from_array(np.array([-1, SIDE, SIDE, 1], np.int64), "shape"))
        nodes += [helper.make_node("MatMul", [source, "w"], ["h"]), helper.make_node("Reshape", ["h", "shape"], ["y"])]
    graph = helper.make_graph(
        nodes,
        role,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *inputs])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", *outputs])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))


def write_manifest(export, run_dir, bounds: dict[str, float] | None = None) -> None:
    """manifest.json vouching for every .onnx file in `export`; `bounds`: min_agreement_db per precision."""
    bounds = {"float32": 60.0, "int8": 30.0, **(bounds or {})}
    image, code = [None, SIDE, SIDE, 1], [None, LATENT]
    files = []
    for path in sorted(export.glob("*.onnx")):
        role, precision = path.stem.split("_")[0], "int8" if "_int8" in path.stem else "float32"
        parity = {f.name: 0.0 for f in fields(Parity)} | {
            "images": 1,
            "runtime": "onnxruntime",
            "agreement_db": 100.0,
            "min_agreement_db": bounds[precision],
        }
        i, o = (image, code) if role == "encoder" else (code, image)
        files.append(
            {
                "file": path.name,
                "role": role,
                "format": "onnx",
                "precision": precision,
                "opset": 13,
                "inputs": [{"name": "x", "shape": i, "dtype": "float32"}],
                "outputs": [{"name": "y", "shape": o, "dtype": "float32"}],
                "bytes": path.stat().st_size,
                "sha256": sha256_of(path),
                "status": "passed",
                "parity": parity,
            }
        )
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "run": str(run_dir),
        "versions": {},
        "model": {"input_shape": [SIDE, SIDE, 1], "latent_dim": LATENT, "filters": [8]},
        "pixel_scaling": {"divide_by": 255.0},
        "latent_quantization": None,
        "files": files,
    }
    (export / MANIFEST).write_text(json.dumps(manifest))


def make_run(root, int8: bool = True, export: bool = True):
    """A finished run folder (config.json, metrics.json, the data as .npy) with a linear autoencoder exported."""
    run_dir = root / "run"
    (run_dir / "export").mkdir(parents=True)
    data = root / "images.npy"
    np.save(data, _images(300, 0))
    splits = load_data(str(data))
    train = splits.train.reshape(len(splits.train), -1).astype(np.float64) / 255
    weight = np.linalg.svd(train, full_matrices=False)[2][:LATENT].T  # (64, 4), orthonormal columns
    config = {
        "recipe": TrainConfig(dataset=str(data), filters=(8,), latent_dim=LATENT).to_json(),
        "model": {"input_shape": [SIDE, SIDE, 1], "filters": [8], "latent_dim": LATENT},
        "data": splits.describe(),
    }
    (run_dir / "config.json").write_text(json.dumps(config))
    val = splits.val.astype(np.float32) / 255
    expected = _project(val, weight)
    (run_dir / "metrics.json").write_text(json.dumps({"final_val_mse": float(np.mean((val - expected) ** 2))}))
    if export:
        for role in ("encoder", "decoder"):
            _linear_onnx(run_dir / "export" / f"{role}.onnx", weight, role, int8=False)
            if int8:
                _linear_onnx(run_dir / "export" / f"{role}_int8.onnx", weight, role, int8=True)
        write_manifest(run_dir / "export", run_dir)
    return SimpleNamespace(path=run_dir, val=val, expected=expected, weight=weight, data=data)


def _project(images: np.ndarray, weight: np.ndarray) -> np.ndarray:
    flat = images.reshape(len(images), -1).astype(np.float64)
    return (flat @ weight @ weight.T).reshape(images.shape)


@pytest.fixture
def edge(monkeypatch):
    """Bench held to the edge side in either venv: no TensorFlow for it, no matplotlib."""
    monkeypatch.setattr(bench, "training_side", lambda: False)
    monkeypatch.setattr(bench, "pyplot", SimpleNamespace(available=False))


@pytest.fixture
def linear_run(tmp_path):
    return make_run(tmp_path)


def test_edge_bench_measures_the_exported_files_and_states_the_keras_row_absent_once(edge, linear_run, tmp_path):
    result = bench_run(linear_run.path, BenchOptions(**FAST))
    kinds = {(r.runtime, r.precision) for r in result.rows}
    assert {("onnxruntime", "float32"), ("onnxruntime", "int8")} <= kinds and "keras" not in {r.runtime for r in result.rows}
    assert kinds - {("onnxruntime", "float32"), ("onnxruntime", "int8")} <= {("openvino", "float32"), ("openvino", "int8")}
    assert len(result.rows) == len(kinds) * 3 * 2 and all(r.status == "passed" for r in result.rows), result.rows
    assert result.header["absent"]["keras"].startswith("not benchmarked: no TensorFlow in this install (aekit[edge])")
    assert result.header["exported_now"] == [] and result.header["images"] == len(linear_run.val) == 30
    assert result.header["data"].endswith("(the run's validation split)")

    # quality: the round trip is a projection, known in numpy; float32 files reproduce it, int8 stays close
    want_mse = float(np.mean((linear_run.val - linear_run.expected) ** 2))
    window = ssim_window((SIDE, SIDE))
    want_ssim = ssim_numpy(linear_run.val, linear_run.expected, window)
    for row in result.rows:
        if row.precision == "float32":
            assert row.mse == pytest.approx(want_mse, rel=1e-4) and row.ssim == pytest.approx(want_ssim, abs=1e-4), row
        else:  # 1/255 pixels and 1/127-step weights: a few 1e-5 of MSE on top of the projection's error
            assert want_mse * 0.9 < row.mse < want_mse + 2e-3 and abs(row.ssim - want_ssim) < 0.02, row
        assert row.psnr > 20 and row.images_per_sec > 0 and row.timed_runs == 3 and row.file_bytes > 0
        assert row.quality_partner is None and row.device == "cpu"
    assert result.header["quality"]["ssim_window"] == window[0] == 7

    # the same files as the full install, the picture skipped and said so
    write_outputs(result, tmp_path / "out", overwrite=False)
    data = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert data["header"]["absent"]["bench.png"].startswith("not drawn: no matplotlib in this install")
    assert set(data["header"]["absent"]) >= {"keras", "bench.png"} and data["header"]["install"] in ("edge", "full")
    with open(tmp_path / "out" / "bench.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(data["rows"]) == len(result.rows) and list(rows[0]) == [f.name for f in fields(Row)]
    assert not (tmp_path / "out" / "bench.png").exists()


def test_edge_bench_with_nothing_exported_names_the_fix(edge, tmp_path):
    empty = make_run(tmp_path, export=False)
    code, lines = run(
        "bench", "--run", empty.path, "--batch-sizes", "1", "--runs", "2", "--json"
    )  # --json: no "Benchmarking run" line
    assert_one_line_error(code, lines, "Nothing is exported in", "no TensorFlow to export it", "aekit export --run", "--model")


def test_edge_bench_of_one_file_completes_the_round_trip_with_the_float32_partner(edge, linear_run):
    model = linear_run.path / "export" / "encoder_int8.onnx"
    result = bench_run(None, BenchOptions(**FAST, include_openvino=False), model=model)
    assert {(r.runtime, r.precision, r.part) for r in result.rows} == {("onnxruntime", "int8", "encoder")}
    assert [r.batch_size for r in result.rows] == [1, 4] and all(r.status == "passed" for r in result.rows)
    want_mse = float(np.mean((linear_run.val - linear_run.expected) ** 2))
    for row in result.rows:
        assert row.quality_partner == "decoder.onnx" and want_mse * 0.9 < row.mse < want_mse + 2e-3
        assert row.quality_note.startswith("round trip through decoder.onnx (only this file is benchmarked)")
    assert "keras" not in result.header["absent"]  # one file: no Keras row is expected, so none is reported absent
    assert result.header["absent"]["openvino"] == "not benchmarked: --no-openvino (include_openvino=False)"

    # an encoder and a decoder named together: every part, no stand-in
    pair = [linear_run.path / "export" / "decoder_int8.onnx", model]
    both = bench_run(None, BenchOptions(**FAST, include_openvino=False), model=pair)
    assert {r.part for r in both.rows} == {"encoder", "decoder", "roundtrip"}
    assert {r.precision for r in both.rows} == {"int8"} and all(r.quality_partner is None for r in both.rows)
    with pytest.raises(AekitError, match="an encoder and a decoder of the same format"):
        bench_run(None, BenchOptions(**FAST), model=[model, model])


def test_edge_bench_reads_the_quality_images_from_dataset_and_refuses_what_needs_tensorflow(edge, linear_run, tmp_path):
    other = tmp_path / "other.npy"
    np.save(other, _images(100, 5))
    result = bench_run(linear_run.path, BenchOptions(**FAST, parts=("roundtrip",), include_openvino=False), dataset=str(other))
    held = load_data(str(other), 0.1).val.astype(np.float32) / 255  # the run's split rule over the named images
    want = float(np.mean((held - _project(held, linear_run.weight)) ** 2))
    assert result.header["images"] == 10 and str(other) in result.header["data"]
    assert all(r.mse == pytest.approx(want, rel=1e-4) for r in result.rows if r.precision == "float32")
    with pytest.raises(AekitError, match="TFDS names need TensorFlow"):
        bench_run(linear_run.path, BenchOptions(**FAST), dataset="mnist")
    config = json.loads((linear_run.path / "config.json").read_text())
    config["data"].update(kind="tfds", source="tfds:mnist")
    (linear_run.path / "config.json").write_text(json.dumps(config))
    with pytest.raises(AekitError, match="which only the training side reads .* --dataset"):
        bench_run(linear_run.path, BenchOptions(**FAST))


def test_edge_bench_without_a_usable_int8_decoder_runs_the_int8_encoder_with_the_float32_one(edge, linear_run):
    (linear_run.path / "export" / "decoder_int8.onnx").write_bytes(b"changed")
    result = bench_run(linear_run.path, BenchOptions(**{**FAST, "batch_sizes": (1,)}, include_openvino=False))
    rows = {(r.precision, r.part): r for r in result.rows}
    assert rows[("int8", "encoder")].status == "passed" and rows[("int8", "encoder")].quality_partner == "decoder.onnx"
    assert "round trip through decoder.onnx (decoder file failed)" in rows[("int8", "encoder")].quality_note
    for part in ("decoder", "roundtrip"):
        assert rows[("int8", part)].status == "failed" and "decoder_int8.onnx changed since export" in rows[("int8", part)].reason


def test_ssim_without_tensorflow_has_the_known_values():
    window = ssim_window((SIDE, SIDE))
    same = _images(4, 1).astype(np.float32) / 255
    assert ssim_numpy(same, same, window) == pytest.approx(1.0, abs=1e-12)
    # constant images a and b: no structure term, SSIM = (2ab + C1) / (a^2 + b^2 + C1) exactly
    a, b, c1 = 0.3, 0.5, 0.01**2
    flat = lambda v: np.full((2, SIDE, SIDE, 3), v, np.float32)  # noqa: E731
    assert ssim_numpy(flat(a), flat(b), window) == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-6)


@needs_tensorflow
def test_ssim_without_tensorflow_is_tensorflows_ssim():
    rng = np.random.default_rng(3)
    for shape in ((6, 28, 28, 1), (3, 16, 16, 3), (4, 8, 8, 1)):
        x = rng.random(shape, dtype=np.float32)
        y = np.clip(x + rng.normal(0, 0.1, shape), 0, 1).astype(np.float32)
        window = ssim_window(shape[1:3])
        assert ssim_numpy(x, y, window) == pytest.approx(ssim(x, y, window), abs=2e-6)


BLOCK = """
import sys
class NoTensorFlow:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "keras", "tf2onnx", "tensorflow_datasets", "matplotlib"):
            raise ImportError(name + " is not installed here")
sys.meta_path.insert(0, NoTensorFlow())
"""


def test_the_bench_command_runs_where_tensorflow_and_matplotlib_cannot_be_imported(linear_run):
    body = f"""
import json
from typer.testing import CliRunner
from aekit.cli.main import app
result = CliRunner().invoke(app, ["bench", "--run", {str(linear_run.path)!r}, "--batch-sizes", "1", "--runs", "2", "--json"])
print(result.exit_code)
print(result.stdout.strip().splitlines()[-1])
print(sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "matplotlib")))
"""
    proc = subprocess.run([sys.executable, "-c", BLOCK + body], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    code, output, heavy = proc.stdout.strip().splitlines()[-3:]
    data = json.loads(output)
    assert code == "0" and heavy == "[]" and data["header"]["install"] == "edge"
    assert {r["runtime"] for r in data["rows"]} <= {"onnxruntime", "openvino"} and len(data["rows"]) >= 6
    assert set(data["header"]["absent"]) >= {"keras", "bench.png"} and data["header"]["gpus"] is None
    assert (linear_run.path / "bench" / "bench.json").is_file() and not (linear_run.path / "bench" / "bench.png").exists()
