"""Faults a deployment meets in export and bench: a rival export, a full disk, the user's files, older weights, strange files.

Each is one `error:` line (exit 2) that names the fix, and leaves what was there as it was (hashes before and after).
"""

import errno
import hashlib
import json
import os
import shutil
import socket

import pytest
from typer.testing import CliRunner

from aekit.benchmarking.bench import UNLISTED, BenchOptions, bench_run
from aekit.cli.main import app
from aekit.core import runs
from aekit.core.manifest import MANIFEST
from aekit.exporting import export as export_module
from aekit.exporting.export import IN_PROGRESS, ExportOptions, export_run

QUICK_BENCH = ["--batch-sizes", "1", "--runs", "2", "--warmup", "1", "--parts", "encoder", "--quality-images", "32"]


def hashes(folder):
    """Every entry of a folder (dot files included) with the sha256 of its bytes."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir" for p in folder.iterdir()}


def one_error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert result.exit_code == 2 and len(errors) == 1 and lines[-1] == errors[0], result.output
    assert "Traceback" not in result.output
    return errors[0]


@pytest.fixture
def exported(run_copy):
    """A run with a good float32 ONNX export."""
    export_run(run_copy, ExportOptions(formats=("onnx",)))
    return run_copy


def test_a_second_export_into_a_folder_being_written_fails_at_once_naming_the_holder(exported):
    out = exported / "export"
    before = hashes(out)
    with runs.RunLock(out):  # what a running `aekit export` holds on its folder
        held = hashes(out)
        result = CliRunner().invoke(app, ["export", "--run", str(exported), "--format", "tflite"])
        error = one_error_line(result)
        assert f"is being written by another aekit export (pid {os.getpid()} on {socket.gethostname()})" in error
        assert "Wait for it to finish" in error and "--output another folder" in error
        assert hashes(out) == held  # nothing written, the holder's lock file included
    assert hashes(out) == before  # released: the lock file is gone
    result = CliRunner().invoke(app, ["export", "--run", str(exported), "--format", "tflite"])
    assert result.exit_code == 0, result.output
    names = {p.name for p in out.iterdir()}
    assert names == {"encoder.onnx", "decoder.onnx", "encoder.tflite", "decoder.tflite", MANIFEST}  # no .lock left
    assert {e["file"] for e in json.loads((out / MANIFEST).read_text())["files"]} == names - {MANIFEST}


def test_an_export_holds_its_folder_while_it_writes_and_releases_it(exported, monkeypatch):
    seen = []
    real = export_module._write_onnx

    def spy(model, role, path, *args):
        seen.append((path.parent / runs.RunLock.NAME).read_text())
        return real(model, role, path, *args)

    monkeypatch.setattr(export_module, "_write_onnx", spy)
    export_run(exported, ExportOptions(formats=("onnx",), parts=("encoder",)))
    assert seen == [f"pid {os.getpid()} on {socket.gethostname()}"]
    assert not (exported / "export" / runs.RunLock.NAME).exists()


def _full_disk(code):
    """A writer that fills part of its file, then meets `code` (ENOSPC, EFBIG) on the second file it writes."""
    calls = []
    real = export_module._write_onnx

    def writer(model, role, path, *args):
        calls.append(role)
        if len(calls) == 2:
            path.write_bytes(b"half a model")
            raise OSError(code, os.strerror(code), str(path))
        return real(model, role, path, *args)

    return writer


@pytest.mark.parametrize(
    "code, words",
    [(errno.ENOSPC, "the disk is full"), (errno.EFBIG, "a file-size limit was reached"), (errno.EDQUOT, "quota")],
)
def test_a_reexport_that_runs_out_of_space_leaves_the_good_export_as_it_was(exported, monkeypatch, code, words):
    out = exported / "export"
    before = hashes(out)
    monkeypatch.setattr(export_module, "_write_onnx", _full_disk(code))
    result = CliRunner().invoke(app, ["export", "--run", str(exported), "--format", "onnx"], terminal_width=400)
    error = one_error_line(result)
    assert f"Export into {out} stopped writing" in error and words in error and os.strerror(code) in error
    assert "the previous export there, if any, is unchanged" in error
    assert ("Free space" in error) if code != errno.EFBIG else ("ulimit -f" in error)
    assert hashes(out) == before  # same files, same bytes, same manifest; no staged file, lock or marker left
    assert not (out / IN_PROGRESS).exists() and not list(out.glob(".partial-*"))


def test_a_manifest_that_cannot_be_written_swaps_nothing_in(exported, monkeypatch):
    out = exported / "export"
    before = hashes(out)

    def no_space(path, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(runs, "write_json", no_space)
    with pytest.raises(export_module.AekitError, match="the disk is full"):
        export_run(exported, ExportOptions(formats=("onnx",)))
    assert hashes(out) == before


def test_ctrl_c_during_the_swap_puts_the_previous_export_back(exported, monkeypatch):
    out = exported / "export"
    before = hashes(out)
    real = export_module.os.replace
    moves = []

    def interrupted_after_two(source, target):  # Ctrl-C lands once two files have been swapped in
        moves.append(target)
        if len(moves) == 4:
            raise KeyboardInterrupt
        return real(source, target)

    monkeypatch.setattr(export_module.os, "replace", interrupted_after_two)
    with pytest.raises(KeyboardInterrupt):
        export_run(exported, ExportOptions(formats=("onnx",)))
    monkeypatch.setattr(export_module.os, "replace", real)
    assert hashes(out) == before  # the previous files and manifest, byte for byte; nothing staged is left


def test_out_of_memory_while_exporting_is_one_line_and_leaves_the_previous_export(exported, monkeypatch):
    out = exported / "export"
    before = hashes(out)

    def no_memory(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(export_module, "_write_onnx", no_memory)
    result = CliRunner().invoke(app, ["export", "--run", str(exported), "--format", "onnx"], terminal_width=400)
    error = one_error_line(result)
    assert "Out of memory while exporting" in error and "ulimit -v" in error and "unchanged" in error
    assert result.exit_code == 2 and hashes(out) == before


def test_a_first_export_that_runs_out_of_space_leaves_no_folder(run_copy, monkeypatch):
    monkeypatch.setattr(export_module, "_write_onnx", _full_disk(errno.ENOSPC))
    with pytest.raises(export_module.AekitError, match="the disk is full"):
        export_run(run_copy, ExportOptions(formats=("onnx",)))
    assert not (run_copy / "export").exists()


def test_a_file_that_fails_its_check_is_still_a_failed_entry_not_a_stopped_export(exported, monkeypatch):
    out = exported / "export"
    monkeypatch.setattr(export_module, "_parity_problem", lambda parity, precision: "forced to fail")
    failed = export_run(exported, ExportOptions(formats=("onnx",), parts=("decoder",)))
    assert [e.status for e in failed.entries] == ["failed"] and not (out / "decoder.onnx").exists()
    files = {e["file"]: e["status"] for e in json.loads((out / MANIFEST).read_text())["files"]}
    assert files == {"encoder.onnx": "passed", "decoder.onnx": "failed"}


def test_bench_will_not_replace_the_users_files_without_overwrite(exported, tmp_path):
    mine = tmp_path / "results"
    mine.mkdir()
    (mine / "bench.csv").write_text("my own numbers\n")
    before = hashes(mine)
    result = CliRunner().invoke(app, ["bench", "--run", str(exported), *QUICK_BENCH, "-o", str(mine)], terminal_width=400)
    error = one_error_line(result)
    assert f"--output {mine} already holds bench.csv" in error and "--overwrite" in error
    assert hashes(mine) == before and not (exported / "bench").exists()  # refused before benchmarking
    result = CliRunner().invoke(app, ["bench", "--run", str(exported), *QUICK_BENCH, "-o", str(mine), "--overwrite"])
    assert result.exit_code == 0, result.output
    assert {p.name for p in mine.iterdir()} == {"bench.csv", "bench.json", "bench.png"}
    assert (mine / "bench.csv").read_text() != "my own numbers\n"


def test_a_second_bench_writing_the_same_folder_fails_at_once(exported, tmp_path):
    from aekit.edge.outputs import OutputClaim

    folder = tmp_path / "results"
    with OutputClaim(folder):  # another bench is writing its files there
        result = CliRunner().invoke(app, ["bench", "--run", str(exported), "-o", str(folder), *QUICK_BENCH], terminal_width=400)
        assert "being written by another aekit command" in one_error_line(result)
        assert not folder.exists()


def test_bench_replaces_its_own_results_in_the_default_folder(exported):
    for _ in range(2):
        result = CliRunner().invoke(app, ["bench", "--run", str(exported), *QUICK_BENCH])
        assert result.exit_code == 0, result.output
    assert {p.name for p in (exported / "bench").iterdir()} == {"bench.csv", "bench.json", "bench.png"}


def test_bench_warns_when_the_export_is_of_older_weights(exported):
    metrics = json.loads((exported / runs.METRICS).read_text())
    made_from = metrics["weights_sha256"]
    (exported / runs.METRICS).write_text(json.dumps({**metrics, "weights_sha256": "f" * 64}))  # resumed and trained further
    result = bench_run(exported, BenchOptions(batch_sizes=(1,), runs=2, warmup=1, parts=("encoder",), quality_images=32))
    assert result.header["export_weights"]["export_weights_sha256"] == made_from
    assert result.header["export_weights"]["run_weights_sha256"] == "f" * 64
    (warning,) = result.header["warnings"]
    assert "older weights" in warning and warning.endswith(f"Re-export: aekit export --run {exported}")
    assert {r.runtime for r in result.rows} - {"openvino"} == {"keras", "onnxruntime"}  # the Keras rows are the current weights
    cli = CliRunner().invoke(app, ["bench", "--run", str(exported), *QUICK_BENCH], terminal_width=400)
    assert cli.exit_code == 0, cli.output
    assert [line for line in cli.output.splitlines() if line.startswith("warning:")] == [f"warning: {warning}"]
    assert json.loads((exported / "bench" / "bench.json").read_text())["header"]["warnings"] == [warning]


def test_bench_of_current_weights_says_nothing(exported):
    result = bench_run(exported, BenchOptions(batch_sizes=(1,), runs=2, warmup=1, parts=("encoder",), quality_images=32))
    assert result.header["warnings"] == [] and result.header["export_weights"] is None


@pytest.mark.parametrize(
    "case, words",
    [
        ("no manifest beside it", "no manifest.json beside it lists it"),
        ("not in the manifest", "does not list encoder_int8.onnx"),
        ("changed since export", "encoder.onnx changed since export"),
    ],
)
def test_bench_refuses_a_model_file_its_manifest_does_not_vouch_for(exported, tmp_path, case, words):
    out = exported / "export"
    if case == "no manifest beside it":
        model = tmp_path / "loose" / "encoder.onnx"
        model.parent.mkdir()
        shutil.copy(out / "encoder.onnx", model)
    elif case == "not in the manifest":
        model = out / "encoder_int8.onnx"  # a float file under an int8 name: the manifest never listed it
        shutil.copy(out / "encoder.onnx", model)
    else:
        model = out / "encoder.onnx"
        model.write_bytes(model.read_bytes() + b"\0")
    before = hashes(model.parent)
    args = ["bench", "--model", str(model), "--run", str(exported), *QUICK_BENCH, "--json"]
    error = one_error_line(CliRunner().invoke(app, args, terminal_width=400))
    assert f"--model {model}" in error and words in error and "--unlisted" in error
    assert hashes(model.parent) == before and not (exported / "bench").exists()

    if case == "changed since export":
        return  # a damaged file would fail to load: the --unlisted run is shown on the intact copies
    result = CliRunner().invoke(app, [*args, "--unlisted"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["rows"]
    assert rows and all(r["file_check"] == UNLISTED and r["status"] == "passed" and r["part"] == "encoder" for r in rows)
    assert {r["precision"] for r in rows} == {"int8" if case == "not in the manifest" else "float32"}


def test_bench_of_a_listed_model_file_is_checked(exported):
    result = bench_run(
        None,
        BenchOptions(batch_sizes=(1,), runs=2, warmup=1, quality_images=32),
        model=exported / "export" / "decoder.onnx",
    )
    assert result.rows and all(r.file_check is None and r.part == "decoder" for r in result.rows)
