"""Bad input, table-driven: every case is one `error: ...` line, exit code 2, no traceback, nothing destroyed."""

import gzip
import json
import shutil
import struct

import numpy as np
import pytest
from typer.testing import CliRunner

from aekit.cli.main import app
from aekit.core.manifest import MANIFEST
from aekit.exporting.export import ExportOptions, export_run


@pytest.fixture(scope="module")
def world(trained_run, tmp_path_factory):
    """A run with an ONNX export, and a folder of hostile files next to it."""
    root = tmp_path_factory.mktemp("hostile")
    run = root / "run"
    shutil.copytree(trained_run, run)
    export_run(run, ExportOptions(formats=("onnx",)))
    bad = root / "bad"
    bad.mkdir()
    digits = gzip.compress(struct.pack(">iiii", 2051, 3, 28, 28) + bytes(3 * 784))
    (bad / "truncated-images-idx3-ubyte.gz").write_bytes(digits[: len(digits) // 2])
    (bad / "liar-images-idx3-ubyte").write_bytes(struct.pack(">iiii", 2051, 2**31 - 1, 28, 28) + bytes(784))
    (bad / "liar-images-idx3-ubyte.gz").write_bytes(
        gzip.compress(struct.pack(">iiii", 2051, 2**31 - 1, 2**15, 2**15) + bytes(784))
    )
    (bad / "zero-images-idx3-ubyte").write_bytes(struct.pack(">iiii", 2051, 2, 0, 0))
    np.save(bad / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(bad / "nan.npy", np.full((2, 28, 28), np.nan, np.float32))
    (bad / "codes.npz").write_bytes(b"not an npz")
    (bad / "threshold-list.json").write_text("[1, 2]")
    (bad / "threshold-nan.json").write_text(
        '{"metric": "reconstruction_mse", "threshold": NaN, "quantile": 0.99, '
        '"calibration_images": 10, "calibration_source": "x"}'
    )
    listed = root / "list-export"
    shutil.copytree(run / "export", listed)
    (listed / MANIFEST).write_text("[]")
    missing_key = root / "missing-key-export"
    shutil.copytree(run / "export", missing_key)
    data = json.loads((missing_key / MANIFEST).read_text())
    del data["model"]
    (missing_key / MANIFEST).write_text(json.dumps(data))
    return {"run": run, "export": run / "export", "bad": bad, "root": root, "listed": listed, "missing_key": missing_key}


def _cases():
    enc = "{export}/encoder.onnx"
    dec = "{export}/decoder.onnx"
    return [
        # usage errors: Typer's parsing, one line
        ("unknown option", ["export", "--bogus"], "No such option: --bogus"),
        ("missing argument", ["encode"], "Missing argument"),
        ("not a number", ["train", "--epochs", "abc"], "Invalid value for '--epochs'"),
        ("unknown command", ["frobnicate"], "No such command"),
        # impossible options, refused before any work
        ("negative agreement bound", ["export", "--run", "{run}", "--min-agreement-db", "-1"], "--min-agreement-db"),
        ("unknown format", ["export", "--run", "{run}", "--format", "pdf"], "--format pdf"),
        ("bad device", ["encode", "--model", enc, "{bad}/nan.npy", "-o", "{root}/z.npz", "--device", "tpu"], "--device 'tpu'"),
        ("zero batch", ["bench", "--run", "{run}", "--batch-sizes", "0"], "--batch-sizes"),
        # corrupt and lying files
        (
            "truncated gzip",
            ["encode", "--model", enc, "{bad}/truncated-images-idx3-ubyte.gz", "-o", "{root}/z.npz"],
            "truncated-images",
        ),
        (
            "IDX header claims 2^31 images",
            ["encode", "--model", enc, "{bad}/liar-images-idx3-ubyte", "-o", "{root}/z.npz"],
            "liar-images",
        ),
        (
            "gzip IDX header claims 2^61 pixels",
            ["encode", "--model", enc, "{bad}/liar-images-idx3-ubyte.gz", "-o", "{root}/z.npz"],
            "liar-images",
        ),
        ("0x0 images", ["encode", "--model", enc, "{bad}/zero-images-idx3-ubyte", "-o", "{root}/z.npz"], "zero-images"),
        ("pickled object array", ["encode", "--model", enc, "{bad}/objects.npy", "-o", "{root}/z.npz"], "objects.npy"),
        (
            "NaN pixels",
            ["score", "--encoder", enc, "--decoder", dec, "--calibrate", "{bad}/nan.npy", "--threshold", "{root}/t.json"],
            "NaN",
        ),
        ("not a latents file", ["decode", "--model", dec, "{bad}/codes.npz", "-o", "{root}/out"], "codes.npz"),
        (
            "threshold file is a list",
            ["score", "--encoder", enc, "--decoder", dec, "--threshold", "{bad}/threshold-list.json", "{bad}/nan.npy"],
            "threshold-list.json",
        ),
        (
            "threshold is NaN",
            ["score", "--encoder", enc, "--decoder", dec, "--threshold", "{bad}/threshold-nan.json", "{bad}/nan.npy"],
            "threshold-nan.json",
        ),
        (
            "manifest is a list",
            ["encode", "--model", "{listed}/encoder.onnx", "{bad}/nan.npy", "-o", "{root}/z.npz"],
            "expected a JSON object",
        ),
        (
            "manifest misses a key",
            ["encode", "--model", "{missing_key}/encoder.onnx", "{bad}/nan.npy", "-o", "{root}/z.npz"],
            "missing key 'model'",
        ),
        (
            "model file missing",
            ["encode", "--model", "{root}/nope.onnx", "{bad}/nan.npy", "-o", "{root}/z.npz"],
            "does not exist",
        ),
        ("run folder is a file", ["export", "--run", "{bad}/nan.npy"], "is a file"),
        ("bench for ever", ["bench", "--run", "{run}", "--seconds", "nan"], "--seconds"),
        ("bench for infinity", ["bench", "--run", "{run}", "--seconds", "inf"], "--seconds"),
        ("NaN quality floor", ["bench", "--run", "{run}", "--min-psnr", "nan"], "--min-psnr"),
        ("negative warm-up", ["bench", "--run", "{run}", "--warmup", "-1"], "--warmup"),
        ("bench output is a file", ["bench", "--run", "{run}", "--output", "{bad}/nan.npy"], "is a file"),
        ("bench output under a file", ["bench", "--run", "{run}", "--output", "{bad}/nan.npy/sub"], "nan.npy"),
        ("export over the user's files", ["export", "--run", "{run}", "--output", "{bad}"], "did not export"),
        ("train over the user's files", ["train", "--output", "{bad}", "--epochs", "1"], "not an aekit run"),
        ("run name with a path", ["train", "--name", "../escape", "--epochs", "1"], "--name"),
        ("output under a file", ["export", "--run", "{run}", "--output", "{bad}/nan.npy/sub"], "nan.npy"),
    ]


@pytest.mark.parametrize("name, args, words", _cases(), ids=[c[0] for c in _cases()])
def test_bad_input_is_one_line_and_exit_2(world, name, args, words):
    args = [a.format(**{k: str(v) for k, v in world.items()}) for a in args]
    before = sorted(p.name for p in world["export"].iterdir())
    theirs = {p.name: p.stat().st_mtime_ns for p in world["bad"].iterdir()}
    result = CliRunner().invoke(app, args)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, (name, result.output)
    assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception, SystemExit)
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], (name, result.output)
    assert words in errors[0], (name, errors[0])
    assert sorted(p.name for p in world["export"].iterdir()) == before  # nothing of the export touched
    assert {p.name: p.stat().st_mtime_ns for p in world["bad"].iterdir()} == theirs  # nor the user's files


def test_splits_that_disagree_are_refused(tmp_path):
    from aekit import AekitError
    from aekit.data.loading import load_data

    np.savez(
        tmp_path / "mixed.npz",
        x_train=np.random.default_rng(0).random((20, 8, 8), dtype=np.float32),
        x_test=np.full((5, 8, 8), 200, np.uint8),
    )
    with pytest.raises(AekitError, match="training images are float32 but the validation images are uint8"):
        load_data(str(tmp_path / "mixed.npz"))
    folder = tmp_path / "idx"
    folder.mkdir()
    (folder / "a-images-idx3-ubyte").write_bytes(struct.pack(">iiii", 2051, 4, 28, 28) + bytes(4 * 784))
    (folder / "b-images-idx3-ubyte").write_bytes(struct.pack(">iiii", 2051, 4, 32, 32) + bytes(4 * 1024))
    with pytest.raises(AekitError, match="hold images of different sizes"):
        load_data(str(folder))


def test_an_output_that_cannot_be_written_is_refused_before_the_work(world, tmp_path, monkeypatch):
    import tempfile

    enc = str(world["export"] / "encoder.onnx")
    digits = "../shared/data/mnist/t10k-images-idx3-ubyte.gz"
    result = CliRunner().invoke(app, ["encode", "--model", enc, digits, "-o", str(world["bad"] / "nan.npy" / "codes.npz")])
    assert result.exit_code == 2 and "is a file, not a folder" in result.output

    def read_only(*args, **kwargs):  # a read-only folder (permissions do not stop root, so the refusal is simulated)
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", read_only)
    result = CliRunner().invoke(app, ["encode", "--model", enc, digits, "-o", str(tmp_path / "codes.npz")])
    assert result.exit_code == 2 and "Cannot write in" in result.output and "Permission denied" in result.output
    assert not (tmp_path / "codes.npz").exists()


def test_a_write_that_fails_midway_is_one_line(world, tmp_path, monkeypatch):
    import errno

    import aekit.edge.codes as edge

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "codes.npz"))

    monkeypatch.setattr(edge, "_save_npz", disk_full)
    digits = "../shared/data/mnist/t10k-images-idx3-ubyte.gz"
    result = CliRunner().invoke(
        app, ["encode", "--model", str(world["export"] / "encoder.onnx"), digits, "-o", str(tmp_path / "codes.npz")]
    )
    assert result.exit_code == 2 and "Could not write" in result.output and "No space left on device" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "codes.npz").exists()


def test_a_model_too_large_for_memory_is_one_line(tmp_path):
    from support import read_mnist

    np.save(tmp_path / "digits.npy", read_mnist(64))
    args = ["train", "--dataset", str(tmp_path / "digits.npy"), "--epochs", "1", "--batch-size", "8", "--latent-dim", "999999999"]
    result = CliRunner().invoke(app, [*args, "--output", str(tmp_path / "run")])
    assert result.exit_code == 2 and "Out of memory" in result.output and "--latent-dim" in result.output, result.output
    assert "Traceback" not in result.output and not (tmp_path / "run").exists()


def _damage_history(run):
    (run / "history.json").write_text("{}")


def _drop_a_history_key(run):
    rows = json.loads((run / "history.json").read_text())
    del rows[0]["val_mse"]
    (run / "history.json").write_text(json.dumps(rows))


def _empty_history(run):
    (run / "history.json").write_text("[]")


def _truncate_checkpoint(run):
    data = sorted((run / "checkpoints").glob("ckpt-*.data-*"))[-1]
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])


@pytest.mark.parametrize(
    "damage, words",
    [
        (_damage_history, "history.json is not a list"),
        (_drop_a_history_key, "row 1 is not epoch 1"),
        (_empty_history, "lists 0 epoch(s)"),
        (_truncate_checkpoint, "checkpoint"),
    ],
    ids=["history an object", "history row without val_mse", "history emptied", "checkpoint truncated"],
)
def test_a_damaged_run_is_refused_on_resume_and_left_as_it_was(run_copy, damage, words):
    damage(run_copy)
    before = {p.relative_to(run_copy): p.read_bytes() for p in run_copy.rglob("*") if p.is_file()}
    done = json.loads((run_copy / "metrics.json").read_text())["epochs"]
    result = CliRunner().invoke(app, ["train", "--resume", str(run_copy), "--epochs", str(done + 1)])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and words in lines[0], result.output
    after = {p.relative_to(run_copy): p.read_bytes() for p in run_copy.rglob("*") if p.is_file() and p.name != ".lock"}
    assert after == {k: v for k, v in before.items() if k.name != ".lock"}  # nothing changed


def test_metrics_that_are_not_an_object_are_one_line(run_copy):
    (run_copy / "metrics.json").write_text("[]")
    result = CliRunner().invoke(app, ["export", "--run", str(run_copy)])
    assert result.exit_code == 2 and "metrics.json is not an object" in result.output, result.output


def test_an_interrupted_export_is_finished_by_the_next_and_refused_to_another_run(trained_run, run_copy, tmp_path, monkeypatch):
    import subprocess
    import sys

    from aekit.exporting import export as export_module

    out = tmp_path / "deploy"
    # kill -9 while the manifest is written (Ctrl-C there is rolled back: test_faults_export)
    script = (
        "import os, signal, sys; from pathlib import Path\n"
        "from aekit.exporting import export as e\n"
        "e.Manifest.write = lambda self, folder: os.kill(os.getpid(), signal.SIGKILL)\n"
        "e.export_run(Path(sys.argv[1]), e.ExportOptions(formats=('onnx',), output=Path(sys.argv[2])))\n"
    )
    killed = subprocess.run([sys.executable, "-c", script, str(run_copy), str(out)], capture_output=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert (out / "encoder.onnx").is_file() and not (out / MANIFEST).exists()  # files written, no manifest

    other = CliRunner().invoke(app, ["export", "--run", str(trained_run), "--output", str(out)])
    assert other.exit_code == 2 and "unfinished export of another run" in other.output, other.output
    again = CliRunner().invoke(app, ["export", "--run", str(run_copy), "--output", str(out)])
    assert again.exit_code == 0, again.output
    assert (out / MANIFEST).is_file() and not (out / export_module.IN_PROGRESS).exists()
