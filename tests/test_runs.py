"""The run folder: one process at a time, options checked before anything is written, runs never lost in silence."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from aekit import AekitError
from aekit.cli.main import app
from aekit.core import runs
from aekit.core.recipe import TrainConfig, plan_run, read_config

AEKIT = Path(sys.executable).parent / "aekit"
TINY_ARGS = ["--filters", "8,16", "--latent-dim", "4", "--gpus", "0", "--batch-size", "64"]


def _hold_lock(folder: Path) -> subprocess.Popen:
    code = (
        f"from aekit.core.runs import RunLock\nimport time\nRunLock({str(folder)!r}).acquire()\n"
        "print('held', flush=True)\ntime.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_run_folder_in_use_is_refused_and_a_killed_holder_leaves_no_stale_lock(tmp_path):
    holder = _hold_lock(tmp_path / "run")
    try:
        with pytest.raises(AekitError, match=rf"run is in use by pid {holder.pid} on .*another --output folder"):
            runs.RunLock(tmp_path / "run").acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    lock = runs.RunLock(tmp_path / "run").acquire()  # the kernel dropped the dead holder's lock
    assert (tmp_path / "run" / ".lock").read_text() == f"pid {os.getpid()} on {os.uname().nodename}"
    lock.release()


def test_train_into_a_folder_in_use_fails_at_once(tmp_path, small_npz):
    holder = _hold_lock(tmp_path / "run")
    try:
        started = time.perf_counter()
        result = CliRunner().invoke(
            app, ["train", "--dataset", str(small_npz), *TINY_ARGS, "--epochs", "1", "-o", str(tmp_path / "run")]
        )
        assert result.exit_code == 2 and f"in use by pid {holder.pid}" in result.output
        assert time.perf_counter() - started < 30
        assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".lock"]  # nothing written
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()


@pytest.mark.parametrize(
    "option, value",
    [
        ("--learning-rate", "inf"),
        ("--learning-rate", "nan"),
        ("--val-split", "1.5"),
        ("--epochs", "0"),
        ("--worker-timeout", "-3"),
        ("--bn-momentum", "1"),
    ],
)
def test_every_option_is_checked_before_a_folder_exists(tmp_path, small_npz, option, value):
    result = CliRunner().invoke(
        app, ["train", "--dataset", str(small_npz), *TINY_ARGS, option, value, "-o", str(tmp_path / "run")]
    )
    assert result.exit_code == 2 and option in result.output
    assert not (tmp_path / "run").exists()


def test_a_run_refused_for_its_data_leaves_no_folder(tmp_path):
    result = CliRunner().invoke(
        app, ["train", "--dataset", str(tmp_path / "missing.npz"), *TINY_ARGS, "-o", str(tmp_path / "run")]
    )
    assert result.exit_code == 2 and not (tmp_path / "run").exists()


def test_a_corrupt_checkpoint_stops_resume_and_changes_nothing(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / runs.CHECKPOINTS / "checkpoint").write_text("garbage {{{")

    def files():  # the run's own files (.lock is the lock's, rewritten by every holder)
        return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in run.rglob("*") if p.is_file() and p.name != ".lock"}

    before = files()
    result = CliRunner().invoke(app, ["train", "--resume", str(run), "--epochs", "9"])
    assert result.exit_code == 2, result.output
    assert (
        "cannot be read" in result.output and "checkpoints/checkpoint" in result.output and "nothing was changed" in result.output
    )
    assert files() == before


def test_a_missing_checkpoint_data_file_stops_resume(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    for data in (run / runs.CHECKPOINTS).glob("*.data-*"):
        data.unlink()
    result = CliRunner().invoke(app, ["train", "--resume", str(run), "--epochs", "9"])
    assert result.exit_code == 2 and "cannot be restored" in result.output


@pytest.mark.parametrize(
    "content, words", [("[]", "expected a JSON object"), ('{"recipe": 3}', "no recipe object"), ("{not json", "is unreadable")]
)
def test_a_malformed_config_json_is_one_line(trained_run, tmp_path, content, words):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / runs.CONFIG).write_text(content)
    with pytest.raises(AekitError, match=words):
        read_config(run)
    result = CliRunner().invoke(app, ["train", "--resume", str(run), "--epochs", "9"])
    assert result.exit_code == 2 and len([line for line in result.output.splitlines() if line.startswith("error:")]) == 1


def test_plan_run_resumes_a_run_folder_with_its_stored_recipe(trained_run):
    folder, config = plan_run(TrainConfig(epochs=9), {"epochs"}, output=trained_run)
    assert folder == trained_run and config.epochs == 9 and config.latent_dim == read_config(trained_run)["model"]["latent_dim"]
    with pytest.raises(AekitError, match="a resumed run keeps its model and data"):
        plan_run(TrainConfig(latent_dim=3), {"latent_dim"}, resume=trained_run)


def test_a_peer_that_never_starts_is_named_after_the_timeout(tmp_path, small_npz):
    env = {
        **os.environ,
        "TF_CONFIG": json.dumps(
            {"cluster": {"worker": ["127.0.0.1:29871", "127.0.0.1:29872"]}, "task": {"type": "worker", "index": 0}}
        ),
    }
    started = time.perf_counter()
    proc = subprocess.run(
        [
            str(AEKIT),
            "train",
            "--dataset",
            str(small_npz),
            *TINY_ARGS,
            "--epochs",
            "1",
            "--worker-timeout",
            "3",
            "-o",
            str(tmp_path / "run"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Could not reach 127.0.0.1:29872 within 3 s" in proc.stderr and "Traceback" not in proc.stderr
    assert time.perf_counter() - started < 60


def test_a_malformed_tf_config_is_one_line(tmp_path, small_npz):
    env = {**os.environ, "TF_CONFIG": "[]"}
    proc = subprocess.run(
        [str(AEKIT), "train", "--dataset", str(small_npz), *TINY_ARGS, "--epochs", "1", "-o", str(tmp_path / "run")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "TF_CONFIG must be an object" in proc.stderr and "Traceback" not in proc.stderr


def test_a_finished_run_folder_holds_no_lock_file(trained_run, tmp_path, small_npz):
    assert runs.is_finished(trained_run) and not (trained_run / runs.RunLock.NAME).exists()
    lock = runs.RunLock(tmp_path / "run").acquire()
    assert (tmp_path / "run" / ".lock").is_file()
    lock.release()
    assert list((tmp_path / "run").iterdir()) == []  # released: the file went with the lock
    with runs.RunLock(tmp_path / "run"):  # and the folder can be taken again
        assert (tmp_path / "run" / ".lock").read_text().startswith(f"pid {os.getpid()} ")
    assert not (tmp_path / "run" / ".lock").exists()


def test_a_lock_won_on_a_file_its_holder_removed_is_taken_again_on_the_new_file(tmp_path, monkeypatch):
    import fcntl

    holder = runs.RunLock(tmp_path / "run").acquire()
    real_flock, calls = fcntl.flock, []

    def flock_after_the_holder_releases(fd, op):
        if not calls:  # the race: we opened the holder's file, then it released (and unlinked) before our flock
            holder.release()
        calls.append(fd)
        return real_flock(fd, op)

    monkeypatch.setattr(fcntl, "flock", flock_after_the_holder_releases)
    second = runs.RunLock(tmp_path / "run").acquire()
    monkeypatch.setattr(fcntl, "flock", real_flock)
    try:
        path = tmp_path / "run" / ".lock"
        assert len(calls) == 2  # the first file, no longer at the path, was let go and the path's new one locked
        assert os.fstat(second.fd).st_ino == os.stat(path).st_ino and path.read_text().startswith(f"pid {os.getpid()} ")
        with pytest.raises(AekitError, match="is in use by pid"):  # and it really holds the folder
            runs.RunLock(tmp_path / "run").acquire()
    finally:
        second.release()
    assert not (tmp_path / "run" / ".lock").exists()


def test_next_hints_name_the_aekit_the_user_can_type(tmp_path, monkeypatch):
    from aekit.cli.render import aekit_command

    other = tmp_path / "elsewhere" / "aekit"  # an aekit on PATH that is not the running one
    other.parent.mkdir()
    other.write_text("#!/bin/sh\n")
    other.chmod(0o755)
    cases = [
        (["/usr/bin/pytest"], str(AEKIT.parent), "aekit"),  # not an aekit entry point (pytest, python -m)
        ([str(AEKIT)], str(AEKIT.parent), "aekit"),  # the running aekit is the one on PATH
        (["aekit"], str(AEKIT.parent), "aekit"),
        ([".venv/bin/aekit"], "/nonexistent", ".venv/bin/aekit"),  # after make install: not on PATH, shown as typed
        ([str(AEKIT)], str(other.parent), str(AEKIT)),  # another aekit on PATH: the one that ran
    ]
    monkeypatch.chdir(AEKIT.parents[2])
    for argv, path, expected in cases:
        monkeypatch.setattr(sys, "argv", argv)
        monkeypatch.setenv("PATH", path)
        assert aekit_command() == expected, (argv, path)
    spaced = tmp_path / "my venv" / "bin" / "aekit"
    monkeypatch.setattr(sys, "argv", [str(spaced)])
    assert aekit_command() == f"'{spaced}'"  # quoted for the shell
