"""OpenVINO as a further runtime for .onnx files: its runner, its bench rows and their agreement with onnxruntime.

The files are the hand-built linear autoencoders of test_bench_edge.py (float32 and int8 QDQ): no TensorFlow.
"""

import json

import numpy as np
import pytest

openvino = pytest.importorskip("openvino")

from support import run  # noqa: E402
from test_bench_edge import FAST, _linear_onnx, make_run  # noqa: E402

from aekit import AekitError  # noqa: E402
from aekit.benchmarking import bench  # noqa: E402
from aekit.benchmarking.bench import BenchOptions, bench_run, run_bench  # noqa: E402
from aekit.benchmarking.targets import Target  # noqa: E402
from aekit.edge.runtimes import NoCudaError, OpenVinoRunner, open_runner  # noqa: E402
from aekit.edge.sessions import EncoderSession  # noqa: E402

OPTIONS = BenchOptions(**{**FAST, "batch_sizes": (4,)}, include_keras=False)


@pytest.fixture
def linear_run(tmp_path):
    return make_run(tmp_path)


@pytest.fixture
def edge(monkeypatch):
    """The hand-built run has no Keras models: bench holds to its edge side, in either venv."""
    monkeypatch.setattr(bench, "training_side", lambda: False)


def _agreement_db(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1 / max(np.mean((a.astype(np.float64) - b) ** 2), 1e-10)))


def test_the_f32_hint_reproduces_the_float32_file_at_any_batch_size(linear_run):
    export = linear_run.path / "export"
    images = linear_run.val
    for name in ("encoder.onnx", "encoder_int8.onnx"):
        reference = open_runner(export / name, "cpu", threads=1).run(images)
        runner = open_runner(export / name, "cpu", threads=1, runtime="openvino")
        assert isinstance(runner, OpenVinoRunner) and runner.inference_precision == "f32"
        assert runner.providers == ["OpenVINO CPU/f32"] and runner.device == "cpu" and runner.runtime == "openvino"
        outputs = np.concatenate([runner.run(images[:1]), runner.run(images[1:6]), runner.run(images[6:])])
        assert outputs.shape == reference.shape == (30, 4)
        if name == "encoder.onnx":  # float32: the same arithmetic, to float32 rounding
            assert np.max(np.abs(outputs - reference)) < 1e-5
        else:  # int8 QDQ: OpenVINO's own int8 kernels, within a quantization step of onnxruntime's latents
            assert np.max(np.abs(outputs - reference)) < 0.1
    inputs, outputs = runner.specs()
    assert inputs[0].shape == [None, 8, 8, 1] and outputs[0].shape == [None, 4] and inputs[0].dtype == "float32"


def test_the_default_precision_is_the_plugins_own_choice(linear_run):
    runner = open_runner(linear_run.path / "export" / "encoder.onnx", runtime="openvino", precision="default")
    plugin = openvino.Core().get_property("CPU", "INFERENCE_PRECISION_HINT").get_type_name()
    assert runner.inference_precision == plugin and runner.providers == [f"OpenVINO CPU/{plugin}"]
    with pytest.raises(AekitError, match="precision 'f16' is not one of f32, default"):
        OpenVinoRunner(linear_run.path / "export" / "encoder.onnx", precision="f16")


def test_openvino_takes_onnx_files_on_the_cpu_only(linear_run, tmp_path):
    export = linear_run.path / "export"
    with pytest.raises(NoCudaError, match="aekit runs OpenVINO on its CPU plugin"):
        open_runner(export / "encoder.onnx", "cuda", runtime="openvino")
    assert open_runner(export / "encoder.onnx", "cuda", runtime="openvino", allow_fallback=True).device == "cpu"
    (tmp_path / "encoder.tflite").write_bytes(b"x")
    with pytest.raises(AekitError, match="OpenVINO runs the .onnx exports"):
        open_runner(tmp_path / "encoder.tflite", runtime="openvino")
    (tmp_path / "broken.onnx").write_bytes(b"not a model")
    with pytest.raises(AekitError, match="OpenVINO cannot load .*broken.onnx"):
        open_runner(tmp_path / "broken.onnx", runtime="openvino")
    # a session opens OpenVINO only when asked: the default runtime of an .onnx file stays onnxruntime
    assert EncoderSession(export / "encoder.onnx").runner.runtime == "onnxruntime"


def test_bench_adds_openvino_rows_that_agree_with_onnxruntime(edge, linear_run):
    result = bench_run(linear_run.path, OPTIONS)
    rows = {(r.runtime, r.precision, r.part): r for r in result.rows}
    assert {k for k in rows if k[0] == "openvino"} == {
        ("openvino", p, part) for p in ("float32", "int8") for part in ("encoder", "decoder", "roundtrip")
    }
    assert (
        "openvino" not in result.header["absent"] and result.header["versions"]["openvino"] == openvino.__version__.split("-")[0]
    )
    for (runtime, precision, part), row in rows.items():
        if runtime != "openvino":
            assert row.agreement_db is None
            continue
        twin = rows[("onnxruntime", precision, part)]
        assert row.status == "passed" and row.provider == "OpenVINO CPU/f32" and row.images_per_sec > 0, row
        assert row.mse == pytest.approx(twin.mse, rel=1e-3) and row.file_bytes == twin.file_bytes
        # float32 files: the same sums; int8 files: each runtime's int8 kernels, held to the 30 dB of the export
        assert row.agreement_db > (80 if precision == "float32" else 30), row
    # with --device cuda OpenVINO is left out, and said why; --no-openvino leaves it out too
    base = ["bench", "--run", linear_run.path, "--batch-sizes", "1", "--runs", "2", "--no-keras", "--json", "--parts", "encoder"]
    for extra, why in (
        (
            ["--device", "cuda", "--allow-fallback"],
            "not benchmarked with --device cuda: aekit runs OpenVINO on its CPU plugin only",
        ),
        (["--no-openvino"], "not benchmarked: --no-openvino (include_openvino=False)"),
    ):
        code, lines = run(*base, *extra)
        data = json.loads(lines[-1])
        assert code == 0 and data["header"]["absent"]["openvino"] == why
        assert {r["runtime"] for r in data["rows"]} == {"onnxruntime"}


def test_an_openvino_row_that_disagrees_with_onnxruntime_fails_and_says_so(linear_run, tmp_path):
    """OpenVINO handed a decoder that computes something else (weights 5% off) stands for a file it reads badly."""
    export = linear_run.path / "export"
    _linear_onnx(tmp_path / "decoder.onnx", linear_run.weight * 1.05, "decoder", int8=False)
    reference = Target("onnxruntime", "float32", {"encoder": export / "encoder.onnx", "decoder": export / "decoder.onnx"}, "onnx")
    skewed = Target(
        "openvino",
        "float32",
        {"encoder": export / "encoder.onnx", "decoder": tmp_path / "decoder.onnx"},
        "onnx",
        reference=reference,
        min_agreement_db=60.0,
    )
    result = run_bench([reference, skewed], linear_run.val, OPTIONS)
    recon = open_runner(export / "decoder.onnx").run(open_runner(export / "encoder.onnx").run(linear_run.val))
    skew = open_runner(tmp_path / "decoder.onnx").run(open_runner(export / "encoder.onnx").run(linear_run.val))
    want = _agreement_db(recon, skew)
    assert 20 < want < 60  # the skew is well below the bound, whatever the CPU
    for row in result.rows:
        if row.runtime == "onnxruntime":
            assert row.status == "passed" and row.agreement_db is None
            continue
        assert row.status == "failed" and row.agreement_db == pytest.approx(want, abs=0.05)
        assert "openvino's round trip through decoder.onnx and encoder.onnx agrees with onnxruntime's" in row.reason
        assert (
            "below the 60 dB the files were held to at export" in row.reason
            and "deploy these files with onnxruntime" in row.reason
        )
        assert row.mse is None and row.psnr is None and row.ssim is None and row.images_per_sec > 0


def test_info_lists_openvino():
    code, lines = run("info", "--json")
    assert code == 0 and json.loads(lines[-1])["packages"]["openvino"] == openvino.__version__.split("-")[0]
