"""aekit export --format tflm: int8 batch-1 .tflite run by tflite-micro itself, with its C array sources."""

import json
import shutil
import subprocess

import numpy as np
import pytest
from support import colour_patch_run, needs_tensorflow, run

pytestmark = needs_tensorflow
tflite_micro = pytest.importorskip("tflite_micro")


@pytest.fixture(scope="module")
def tflm_export(tmp_path_factory):
    """A small run on colour patches (not digits), exported with aekit export --format tflm."""
    run_dir, images = colour_patch_run(tmp_path_factory)
    output = tmp_path_factory.mktemp("tflm") / "export"
    code, lines = run("export", "--run", run_dir, "--format", "tflm", "--output", output, "--json")
    assert code == 0, lines
    return run_dir, output, json.loads(lines[-1]), images


def test_tflm_writes_the_file_and_its_c_sources_checked_by_tflite_micro(tflm_export):
    from aekit.core.manifest import Manifest
    from aekit.exporting.static import shape_ops

    _, output, printed, _ = tflm_export
    assert sorted(p.name for p in output.iterdir()) == [
        "decoder_tflm.cc",
        "decoder_tflm.h",
        "decoder_tflm.tflite",
        "encoder_tflm.cc",
        "encoder_tflm.h",
        "encoder_tflm.tflite",
        "manifest.json",
    ]
    assert [f["file"] for f in printed["files"]] == ["encoder_tflm.tflite", "decoder_tflm.tflite"]
    manifest = Manifest.load(output)  # verified: the .tflite and both sources, by size and sha256
    for entry in manifest.files:
        assert entry.status == "passed" and entry.format == "tflm" and entry.precision == "int8" and entry.static_batch == 1
        assert entry.parity.runtime == "tflite-micro" and entry.parity.images == 24
        assert entry.parity.agreement_db >= 30 and entry.reference_parity.agreement_db >= 30  # the int8 bound
        assert entry.inputs[0].shape[0] == 1 and shape_ops(output / entry.file) == []
        assert entry.quantization["selection_runtime"] == "tflite-micro"
        assert set(entry.micro["files"]) == {entry.file.replace(".tflite", ".cc"), entry.file.replace(".tflite", ".h")}
    encoder = manifest.entry("encoder_tflm.tflite")
    assert encoder.inputs[0].dtype == "uint8" and manifest.entry("decoder_tflm.tflite").inputs[0].dtype == "int8"


def test_the_recorded_ops_are_the_files_ops(tflm_export):
    from aekit.core.manifest import Manifest
    from aekit.exporting.static import graph_ops

    _, output, _, _ = tflm_export
    for entry in Manifest.load(output).files:
        ops = sorted(set(graph_ops(output / entry.file)))
        assert entry.micro["ops"] == ops and ("CONV_2D" in ops or "TRANSPOSE_CONV" in ops)
        header = (output / entry.file.replace(".tflite", ".h")).read_text()
        assert f"constexpr int {entry.micro['op_count']} = {len(ops)};" in header
        for call in entry.micro["resolver_calls"]:
            assert f"(resolver).{call}();" in header
    from aekit.exporting.micro import resolver_call

    assert [resolver_call(op) for op in ("CONV_2D", "DEPTHWISE_CONV_2D", "LEAKY_RELU", "L2_POOL_2D", "TRANSPOSE_CONV")] == [
        "AddConv2D",
        "AddDepthwiseConv2D",
        "AddLeakyRelu",
        "AddL2Pool2D",
        "AddTransposeConv",
    ]


def test_the_arena_is_what_tflite_micro_needs(tflm_export):
    from tflite_micro import runtime

    from aekit.core.manifest import Manifest

    _, output, _, _ = tflm_export
    for entry in Manifest.load(output).files:
        content = (output / entry.file).read_bytes()
        arena = entry.micro["arena_bytes"]
        assert 1_000 < arena < 1_000_000 and entry.micro["arena_constant"] >= arena and entry.micro["arena_constant"] % 16 == 0
        runtime.Interpreter.from_bytes(content, arena_size=arena)  # allocates in the measured arena
        with pytest.raises(RuntimeError):
            runtime.Interpreter.from_bytes(content, arena_size=arena - 256)  # and not in less
        header = (output / entry.file.replace(".tflite", ".h")).read_text()
        assert f"constexpr int {entry.micro['arena']} = {entry.micro['arena_constant']};" in header


def test_tflite_micro_output_agrees_with_keras_on_new_images(tflm_export):
    from aekit.exporting.export import load_run
    from aekit.exporting.micro import MicroRunner

    run_dir, output, _, images = tflm_export
    loaded = load_run(run_dir)
    latents = np.asarray(loaded.models["encoder"](images, training=False))
    recon = np.asarray(loaded.models["decoder"](latents, training=False))
    codes = MicroRunner(output / "encoder_tflm.tflite").run(images)
    out = MicroRunner(output / "decoder_tflm.tflite").run(codes)
    assert codes.shape == latents.shape and out.shape == images.shape
    agreement = 10 * np.log10(1 / np.mean((out - recon) ** 2))
    assert agreement > 30, agreement  # the round trip, both files int8 on tflite-micro, against Keras


@pytest.mark.skipif(shutil.which("g++") is None, reason="no C++ compiler")
def test_the_c_sources_compile_and_hold_the_file_byte_for_byte(tflm_export, tmp_path):
    from aekit.core.manifest import Manifest

    _, output, _, _ = tflm_export
    entry = Manifest.load(output).entry("encoder_tflm.tflite")
    names = entry.micro
    resolver = "\n".join(f"  int {call}() {{ return ++count; }}" for call in names["resolver_calls"])
    (tmp_path / "main.cc").write_text(
        f'#include <cstdint>\n#include <cstdio>\n#include "encoder_tflm.h"\n'
        f"struct Resolver {{\n  int count = 0;\n{resolver}\n}};\n"
        "int main() {\n"
        f"  Resolver resolver;\n  {names['register']}(resolver);\n"
        f"  if (resolver.count != {names['op_count']}) return 3;\n"
        f"  if (reinterpret_cast<std::uintptr_t>({names['array']}) % 16 != 0) return 4;\n"
        f'  std::FILE* out = std::fopen("model.bin", "wb");\n'
        f"  std::fwrite({names['array']}, 1, {names['length']}, out);\n  std::fclose(out);\n"
        f"  return {names['arena']} >= {names['arena_bytes']} ? 0 : 5;\n}}\n"
    )
    for name in ("encoder_tflm.cc", "encoder_tflm.h"):
        shutil.copy(output / name, tmp_path / name)
    build = subprocess.run(
        ["g++", "-std=c++17", "-Wall", "-Werror", "main.cc", "encoder_tflm.cc", "-o", "check"], cwd=tmp_path, capture_output=True
    )
    assert build.returncode == 0, build.stderr.decode()
    assert subprocess.run(["./check"], cwd=tmp_path).returncode == 0
    assert (tmp_path / "model.bin").read_bytes() == (output / "encoder_tflm.tflite").read_bytes()


def test_a_changed_header_is_caught_by_the_manifest(tflm_export, tmp_path):
    from aekit.core.manifest import Manifest

    _, output, _, _ = tflm_export
    copy = tmp_path / "copy"
    shutil.copytree(output, copy)
    header = copy / "decoder_tflm.h"
    header.write_text(header.read_text().replace("TensorArenaSize = ", "TensorArenaSize = 1"))
    entry = Manifest.load(copy, verify=False).entry("decoder_tflm.tflite")
    assert "decoder_tflm.h" in entry.problem(copy) and "changed" in entry.problem(copy)
    (copy / "encoder_tflm.cc").unlink()
    assert "missing" in Manifest.load(copy, verify=False).entry("encoder_tflm.tflite").problem(copy)


def test_tflm_is_int8_only_and_not_part_of_all(tflm_export):
    from aekit.exporting.export import ExportOptions

    run_dir = tflm_export[0]
    code, lines = run("export", "--run", run_dir, "--format", "tflm", "--quantize", "fp16")
    assert code == 2 and lines[-1].startswith("error: --format tflm is int8 only")
    plan = ExportOptions.from_text("all").plan()
    assert {fmt for _, fmt, _ in plan} == {"onnx", "tflite", "savedmodel"}
    assert ExportOptions.from_text("tflm", parts="encoder").plan() == [("encoder", "tflm", "int8")]
