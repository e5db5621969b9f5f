"""Opsets above tf2onnx's 18 (19-21, upgraded by onnx's version converter): float and int8 files run in both runtimes."""

import numpy as np
import pytest
from support import assert_one_line_error, colour_patch_run, needs_tensorflow, run

pytestmark = needs_tensorflow


@pytest.fixture(scope="module")
def patch_run(tmp_path_factory):
    """A small finished run on colour patches (gradients, stripes, flat blocks), as in test_int8.py; and a few of its images."""
    return colour_patch_run(tmp_path_factory)


def _both(path, x):
    """(onnxruntime's output, onnx.reference.ReferenceEvaluator's output) for one batch, and the file's proto."""
    import onnx
    import onnxruntime as ort
    from onnx.reference import ReferenceEvaluator

    proto = onnx.load(str(path))
    name = proto.graph.input[0].name
    fast = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {name: x})[0]
    slow = ReferenceEvaluator(proto).run(None, {name: x})[0]
    return fast, slow, proto


def _default_opset(proto) -> int:
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


@pytest.mark.parametrize("opset", [19, 21])
def test_float_files_above_tf2onnx_opsets_run_alike_in_onnxruntime_and_the_reference_evaluator(patch_run, tmp_path, opset):
    import onnx

    run_dir, images = patch_run
    code, out = run("export", "--run", run_dir, "--format", "onnx", "--opset", opset, "--output", tmp_path)
    assert code == 0, out
    latent, _, _ = _both(tmp_path / "encoder.onnx", images)
    for role, x in (("encoder", images), ("decoder", latent.astype(np.float32))):
        fast, slow, proto = _both(tmp_path / f"{role}.onnx", x)
        assert _default_opset(proto) == opset
        onnx.checker.check_model(proto)
        assert proto.graph.output[0].name == ("latent" if role == "encoder" else "reconstruction")
        assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
        np.testing.assert_allclose(slow, fast, rtol=1e-4, atol=1e-5)


def test_int8_files_at_opset_21_run_in_the_reference_evaluator_and_agree_with_onnxruntime(patch_run, tmp_path):
    run_dir, images = patch_run
    code, out = run("export", "--run", run_dir, "--format", "onnx", "--quantize", "int8", "--opset", 21, "--output", tmp_path)
    assert code == 0, out
    latent, _, _ = _both(tmp_path / "encoder_int8.onnx", images)
    for role, x in (("encoder", images), ("decoder", latent.astype(np.float32))):
        fast, slow, proto = _both(tmp_path / f"{role}_int8.onnx", x)
        assert _default_opset(proto) == 21
        ops = {n.op_type for n in proto.graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops, ops
        # The two runtimes may round differently (onnxruntime's fused int8 kernels requantize with
        # their own rounding, the reference evaluator computes each QDQ step in float then rounds
        # half to even), so a value can land an int8 step or a few away: bound at 5% of the range,
        # far below what a wrong scale or zero point would give.
        spread = float(fast.max() - fast.min())
        assert spread > 0
        assert np.abs(slow - fast).max() < 0.05 * spread, (role, np.abs(slow - fast).max(), spread)


@pytest.mark.parametrize("opset", [12, 22])
def test_opsets_outside_13_to_21_are_a_one_line_error(patch_run, tmp_path, opset):
    code, lines = run("export", "--run", patch_run[0], "--format", "onnx", "--opset", opset, "--output", tmp_path)
    # the run is named first ("Exporting run ..."), then the options are checked (ExportOptions.plan)
    assert_one_line_error(code, [line for line in lines if not line.startswith("Exporting run")], f"--opset {opset}", "13 to 21")
    assert not list(tmp_path.iterdir())  # refused before any file is written
