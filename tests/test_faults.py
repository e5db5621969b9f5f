"""Multi-worker training on loopback, and surviving kills: bounded in time, processes cleaned up."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aekit import AekitError
from aekit.core import runs
from aekit.training.distribute import tf_config_for

AEKIT = Path(sys.executable).with_name("aekit")
TINY_ARGS = ["--filters", "8,16", "--latent-dim", "4", "--gpus", "0", "--batch-size", "64"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args, cwd, **popen):
    env = {**os.environ, "AEKIT_OFFLINE": "1"}
    env.pop("TF_CONFIG", None)
    return subprocess.Popen(
        [str(AEKIT), "train", *map(str, args)],
        cwd=cwd,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **popen,
    )


def finish(proc, timeout=240):
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"process did not finish in {timeout} s: {err[-1500:]}")
    return proc.returncode, out, err


def epochs_in(run_dir: Path) -> int:
    try:
        return len(json.loads((run_dir / runs.HISTORY_JSON).read_text()))
    except (OSError, ValueError):
        return 0


def wait_for_epochs(run_dir: Path, count: int, procs, timeout=180):
    deadline = time.monotonic() + timeout
    while epochs_in(run_dir) < count:
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            for p in procs:
                p.kill()
            pytest.fail(f"{run_dir} never reached {count} epochs")
        time.sleep(0.1)


def assert_nothing_truncated(run_dir: Path):
    import keras

    for path in run_dir.rglob("*.json"):
        json.loads(path.read_text())
    for name in runs.MODEL_FILES.values():
        keras.models.load_model(run_dir / name, compile=False)
    for name in (runs.LOSS_PLOT, runs.RECONSTRUCTIONS):
        with Image.open(run_dir / name) as image:
            image.verify()
    assert not list(run_dir.rglob(".partial-*"))


def two_workers(small_npz, tmp_path, epochs, extra=()):
    workers = f"127.0.0.1:{free_port()},127.0.0.1:{free_port()}"
    args = [
        "--dataset",
        small_npz,
        *TINY_ARGS,
        "--epochs",
        epochs,
        "-o",
        tmp_path / "run",
        "--json",
        "--workers",
        workers,
        *extra,
    ]
    return [start([*args, "--task-index", i], tmp_path) for i in (0, 1)]


def worker_scratch() -> set:
    import tempfile

    return set(Path(tempfile.gettempdir()).glob("aekit-worker-ckpt-*"))


def test_two_workers_train_one_model_and_only_the_chief_writes(tmp_path, small_npz):
    scratch_before = worker_scratch()
    procs = two_workers(small_npz, tmp_path, 2)
    results = [finish(p) for p in procs]
    for code, _out, err in results:
        assert code == 0, err[-2000:]
    chief, worker = (json.loads(out) for _, out, _ in results)
    assert chief["placement"]["replicas"] == worker["placement"]["replicas"] == 2
    assert chief["placement"]["strategy"] == "MultiWorkerMirroredStrategy"
    assert (chief["placement"]["task"], worker["placement"]["task"]) == ("worker:0", "worker:1")
    assert chief["weights_sha256"] == worker["weights_sha256"]  # one model, trained in lockstep
    run_dir = tmp_path / "run"
    import keras

    from aekit.training.loop import weights_digest

    saved = keras.models.load_model(run_dir / runs.MODEL_FILES["autoencoder"], compile=False)
    assert weights_digest(saved) == worker["weights_sha256"]  # what the chief saved is what the worker ended with
    assert runs.is_finished(run_dir) and epochs_in(run_dir) == 2
    assert json.loads((run_dir / runs.CONFIG).read_text())["placement"]["replicas"] == 2
    assert_nothing_truncated(run_dir)
    assert worker_scratch() == scratch_before  # the non-chief removed its scratch checkpoints


def test_a_lost_worker_stops_the_other_and_a_restart_resumes(tmp_path, small_npz):
    procs = two_workers(small_npz, tmp_path, 200)
    chief, worker = procs
    try:
        wait_for_epochs(tmp_path / "run", 2, procs)
        worker.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        code, _, err = finish(chief, timeout=90)
        stopped_after = time.monotonic() - killed
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert code == 2 and "Lost contact with another worker" in err and "Restart every worker" in err, err[-1500:]
    assert stopped_after < 60
    done = epochs_in(tmp_path / "run")
    procs = two_workers(small_npz, tmp_path, done + 2)
    results = [finish(p) for p in procs]
    assert all(code == 0 for code, _, _ in results), [err[-800:] for _, _, err in results]
    history = json.loads((tmp_path / "run" / runs.HISTORY_JSON).read_text())
    assert [row["epoch"] for row in history] == list(range(1, done + 3))


def test_sigkill_mid_training_then_resume_matches_an_uninterrupted_run(tmp_path, small_npz):
    args = ["--dataset", small_npz, *TINY_ARGS, "--epochs", 12, "--checkpoint-steps", 3, "--quiet"]
    proc = start([*args, "-o", tmp_path / "killed"], tmp_path)
    try:
        wait_for_epochs(tmp_path / "killed", 3, [proc])
        time.sleep(0.15)  # somewhere inside the next epoch
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    killed_at = epochs_in(tmp_path / "killed")
    assert 3 <= killed_at < 12 and not runs.is_finished(tmp_path / "killed")
    code, _, err = finish(start(["--resume", tmp_path / "killed", "--quiet"], tmp_path))
    assert code == 0, err[-1500:]
    code, _, err = finish(start([*args, "-o", tmp_path / "straight"], tmp_path))
    assert code == 0, err[-1500:]

    resumed = json.loads((tmp_path / "killed" / runs.HISTORY_JSON).read_text())
    straight = json.loads((tmp_path / "straight" / runs.HISTORY_JSON).read_text())
    assert [row["epoch"] for row in resumed] == list(range(1, 13))  # every epoch once
    final = json.loads((tmp_path / "killed" / runs.METRICS).read_text())["final_val_mse"]
    reference = json.loads((tmp_path / "straight" / runs.METRICS).read_text())["final_val_mse"]
    assert final == pytest.approx(reference, rel=0.02), (final, reference)
    np.testing.assert_allclose([r["train_loss"] for r in resumed], [r["train_loss"] for r in straight], rtol=0.02)
    assert_nothing_truncated(tmp_path / "killed")


def test_ctrl_c_saves_a_checkpoint_and_says_how_to_resume(tmp_path, small_npz):
    proc = start(["--dataset", small_npz, *TINY_ARGS, "--epochs", 200, "--quiet", "-o", tmp_path / "run"], tmp_path)
    try:
        wait_for_epochs(tmp_path / "run", 1, [proc])
        proc.send_signal(signal.SIGINT)
        code, _, err = finish(proc, timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 130 and "checkpoint saved. Resume with: aekit train --resume" in err, err[-1500:]
    assert "Traceback" not in err
    done = epochs_in(tmp_path / "run")
    code, _, err = finish(start(["--resume", tmp_path / "run", "--epochs", done + 1, "--quiet"], tmp_path))
    assert code == 0, err[-1500:]
    assert epochs_in(tmp_path / "run") == done + 1


def test_workers_option_builds_tf_config():
    config = json.loads(tf_config_for("10.0.0.1:2222, 10.0.0.2:2222", 1))
    assert config == {"cluster": {"worker": ["10.0.0.1:2222", "10.0.0.2:2222"]}, "task": {"type": "worker", "index": 1}}
    with pytest.raises(AekitError, match="not host:port"):
        tf_config_for("10.0.0.1", 0)
    with pytest.raises(AekitError, match="--task-index 2 is not in 0..1"):
        tf_config_for("a:1,b:2", 2)


def test_workers_with_different_data_stop_with_a_clear_error(tmp_path, small_npz):
    other = tmp_path / "other.npz"
    np.savez(other, images=np.load(small_npz)["images"][:320])
    workers = f"127.0.0.1:{free_port()},127.0.0.1:{free_port()}"
    procs = [
        start(
            ["--dataset", data, *TINY_ARGS, "--epochs", 2, "-o", tmp_path / "run", "--workers", workers, "--task-index", i],
            tmp_path,
        )
        for i, data in enumerate((small_npz, other))
    ]
    results = [finish(p, timeout=120) for p in procs]
    for code, _, err in results:
        assert code == 2 and "The workers disagree on training images" in err, err[-1500:]


def test_multi_worker_needs_a_named_run_folder(tmp_path, small_npz, monkeypatch):
    from typer.testing import CliRunner

    from aekit.cli.main import app

    monkeypatch.setenv("TF_CONFIG", tf_config_for(f"127.0.0.1:{free_port()}", 0))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["train", "--dataset", str(small_npz), "--epochs", "1"])
    assert result.exit_code == 2 and "--output" in result.output and not (tmp_path / "runs").exists()
