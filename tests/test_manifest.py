import json
import shutil

import numpy as np
import pytest

from aekit import AekitError
from aekit.core.manifest import EXPORT_FORMATS, FORMATS, MANIFEST, Manifest, export_format, format_of_file
from aekit.edge.runtimes import EDGE_FORMATS, OnnxRunner, TFLiteRunner, open_runner
from aekit.edge.sessions import EncoderSession
from aekit.exporting.export import ExportOptions, export_run


@pytest.fixture(scope="module")
def export_dir(trained_run, tmp_path_factory):
    """The shared run exported once to float32 ONNX and TFLite (encoder + decoder)."""
    out = tmp_path_factory.mktemp("manifest") / "export"
    result = export_run(trained_run, ExportOptions(formats=("onnx", "tflite"), output=out))
    assert not result.failed
    return out


@pytest.fixture
def export_copy(export_dir, tmp_path):
    target = tmp_path / "export"
    shutil.copytree(export_dir, target)
    return target


def test_one_format_table_names_suffixes_runtimes_and_precisions():
    assert FORMATS == ("onnx", "tflite", "savedmodel", "tflm")
    assert len({f.suffix for f in EXPORT_FORMATS}) == len(EXPORT_FORMATS)
    assert export_format("tflite").file_name("encoder", "int8") == "encoder_int8.tflite"
    assert export_format("savedmodel").file_name("decoder", "float32") == "decoder_savedmodel"
    assert format_of_file("x/encoder_int8.onnx").name == "onnx" and format_of_file("a.png") is None
    assert [f.name for f in EDGE_FORMATS] == ["onnx", "tflite"] and not export_format("savedmodel").edge
    assert export_format("tflite").precisions == ("float32", "fp16", "int8")
    with pytest.raises(AekitError, match="--format pdf is not one of onnx, tflite, savedmodel"):
        export_format("pdf")


def test_load_reads_and_verifies_every_file(export_dir):
    manifest = Manifest.load(export_dir)
    assert [e.file for e in manifest.files] == ["encoder.onnx", "decoder.onnx", "encoder.tflite", "decoder.tflite"]
    entry = manifest.entry("decoder.tflite")
    assert entry.role == "decoder" and entry.precision == "float32" and entry.parity.agreement_db > 60
    assert entry.inputs[0].shape == [None, 8] and entry.problem(export_dir) is None
    assert manifest.model["latent_dim"] == 8 and manifest.pixel_scaling["divide_by"] == 255.0
    # the reader is the writer's inverse
    assert Manifest.load(export_dir).to_json() == json.loads((export_dir / MANIFEST).read_text())


def test_a_changed_file_is_named_by_load_and_by_its_entry(export_copy):
    (export_copy / "decoder.onnx").write_bytes(b"not a model")
    with pytest.raises(AekitError, match=r"decoder\.onnx changed since export \(size 11 bytes"):
        Manifest.load(export_copy)
    manifest = Manifest.load(export_copy, verify=False)  # the schema alone still reads
    assert "changed since export" in manifest.entry("decoder.onnx").problem(export_copy)
    (export_copy / "encoder.tflite").unlink()
    assert manifest.entry("encoder.tflite").problem(export_copy) == "encoder.tflite is missing"


@pytest.mark.parametrize(
    "mutate, words",
    [
        (lambda d: [d], "expected a JSON object, found list"),
        (lambda d: {k: v for k, v in d.items() if k != "model"}, "missing key 'model'"),
        (lambda d: {**d, "model": {**d["model"], "input_shape": [28, 0, 1]}}, "input_shape"),
        (lambda d: {**d, "model": {**d["model"], "latent_dim": "8"}}, "latent_dim"),
        (lambda d: {**d, "pixel_scaling": {"divide_by": -1}}, "divide_by"),
        (lambda d: {**d, "files": {"a": 1}}, "files is not a list"),
        (lambda d: {**d, "files": [{**d["files"][0], "file": "../../etc/passwd"}]}, "not a plain file name"),
        (lambda d: {**d, "schema_version": 1}, "schema_version 1 is not 2"),
    ],
)
def test_malformed_manifests_are_one_line_errors(export_copy, mutate, words):
    data = json.loads((export_copy / MANIFEST).read_text())
    (export_copy / MANIFEST).write_text(json.dumps(mutate(data)))
    with pytest.raises(AekitError, match=words) as error:
        Manifest.load(export_copy)
    assert "\n" not in str(error.value) and "Re-export" in str(error.value)


def test_unreadable_manifest_is_a_one_line_error(export_copy):
    (export_copy / MANIFEST).write_bytes(b"\xff\xfe{not json")
    with pytest.raises(AekitError, match="is not readable JSON"):
        Manifest.load(export_copy)


def test_the_edge_side_refuses_a_swapped_file(export_copy, trained_run, tmp_path):
    """A different encoder under the same name: caught by its hash, and by its shapes if the hash is forged too."""
    other = tmp_path / "other"
    export_run(trained_run, ExportOptions(formats=("onnx",), parts=("decoder",), output=other))
    (export_copy / "encoder.onnx").write_bytes((other / "decoder.onnx").read_bytes())
    with pytest.raises(AekitError, match=r"encoder\.onnx changed since export.*not the file the manifest vouches for"):
        EncoderSession(export_copy / "encoder.onnx")
    data = json.loads((export_copy / MANIFEST).read_text())
    entry = next(e for e in data["files"] if e["file"] == "encoder.onnx")
    from aekit.core.manifest import sha256_of

    entry["bytes"], entry["sha256"] = (export_copy / "encoder.onnx").stat().st_size, sha256_of(export_copy / "encoder.onnx")
    (export_copy / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(
        AekitError, match=r"maps \(8,\) to \(28, 28, 1\), but its manifest says an encoder of \(28, 28, 1\) to \(8,\)"
    ):
        EncoderSession(export_copy / "encoder.onnx")


def test_runners_report_their_real_tensors_and_are_chosen_by_the_table(export_dir):
    onnx, tflite = open_runner(export_dir / "encoder.onnx"), open_runner(export_dir / "encoder.tflite")
    assert isinstance(onnx, OnnxRunner) and isinstance(tflite, TFLiteRunner)
    for runner in (onnx, tflite):
        inputs, outputs = runner.specs()
        assert inputs[0].shape == [None, 28, 28, 1] and outputs[0].shape == [None, 8] and inputs[0].dtype == "float32"
        assert runner.run(np.zeros((3, 28, 28, 1), np.float32)).shape == (3, 8)
    with pytest.raises(AekitError, match="expected a .onnx or .tflite file"):
        open_runner(export_dir / MANIFEST)
