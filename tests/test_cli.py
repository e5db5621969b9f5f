import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from aekit.cli.main import app
from aekit.core import runs

AEKIT = Path(sys.executable).with_name("aekit")
TINY_ARGS = ["--filters", "8,16", "--latent-dim", "4", "--gpus", "0"]


def aekit(*args, cwd=None):
    env = {**os.environ, "AEKIT_OFFLINE": "1"}
    return subprocess.run([str(AEKIT), *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def test_entry_point_installed_and_cli_not_a_top_level_package(tmp_path):
    assert AEKIT.is_file()
    probe = subprocess.run(
        [sys.executable, "-c", "import aekit.cli.main, importlib.util as u; print(u.find_spec('cli'))"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert probe.returncode == 0 and probe.stdout.strip() == "None", probe.stderr


@pytest.mark.parametrize(
    "args, words",
    [
        (["--dataset", "missing/folder"], "does not exist"),
        (["--dataset", "{npz}", "--filters", "8,16,32,64"], "must divide by 16"),
        (["--dataset", "{npz}", "--batch-size", "5000"], "larger than the 576 training images"),
        (["--dataset", "{npz}", "--gpus", "4"], "TensorFlow sees 0"),
        (["--dataset", "{npz}", "--filters", "a,b"], "--filters"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_no_run_folder(tmp_path, small_npz, args, words):
    args = [a.replace("{npz}", str(small_npz)) for a in args]
    result = CliRunner().invoke(app, ["train", *args, "-o", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and words in lines[0], result.output
    assert not (tmp_path / "run").exists()


def test_corrupt_file_from_a_real_process_has_no_traceback(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 not an archive")
    proc = aekit("train", "--dataset", bad, "-o", tmp_path / "run")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert proc.stderr.startswith("error: Cannot read") and proc.stdout == ""


def test_train_json_prints_one_object_and_rerun_resumes(tmp_path, small_npz):
    run_dir = tmp_path / "run"
    base = ["train", "--dataset", str(small_npz), *TINY_ARGS, "--batch-size", "64", "-o", str(run_dir), "--json"]
    result = CliRunner().invoke(app, [*base, "--epochs", "1"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert metrics["epochs"] == 1 and metrics["run_dir"] == str(run_dir) and 0 < metrics["final_val_mse"] < 0.5
    # the same command with more epochs continues the run folder
    result = CliRunner().invoke(app, [*base, "--epochs", "2"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["epochs"] == 2
    assert [row["epoch"] for row in json.loads((run_dir / runs.HISTORY_JSON).read_text())] == [1, 2]
    # a resumed run may not change its model
    result = CliRunner().invoke(app, ["train", "--resume", str(run_dir), "--latent-dim", "8", "--epochs", "3"])
    assert result.exit_code == 2 and "latent_dim" in result.output


def test_default_dataset_offline_uses_the_bundled_sample_and_says_so(tmp_path):
    proc = aekit("train", "--epochs", "1", *TINY_ARGS, "--name", "demo", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "bundled" in proc.stderr and "runs/demo" in proc.stdout
    config = json.loads((tmp_path / "runs" / "demo" / runs.CONFIG).read_text())
    assert config["data"]["kind"] == "bundled" and "unreachable" in config["data"]["note"]
    assert config["recipe"]["dataset"] is None
    assert runs.is_finished(tmp_path / "runs" / "demo")


def test_info_reports_versions_gpus_and_providers():
    result = CliRunner().invoke(app, ["info", "--json"])
    assert result.exit_code == 0, result.output
    facts = json.loads(result.stdout)
    assert facts["packages"]["tensorflow"].startswith("2.") and facts["packages"]["tf2onnx"]
    assert facts["gpus"] == [] and "CPUExecutionProvider" in facts["onnxruntime_available_providers"]
    assert facts["install"] == "full" and facts["machine"] and facts["libc"].startswith("glibc ")


def test_help_explains_the_global_batch_and_learning_rate():
    result = CliRunner().invoke(app, ["train", "--help"], terminal_width=200)
    assert result.exit_code == 0
    text = " ".join(result.output.replace("│", " ").split())  # Rich wraps help to the terminal's width
    assert "GLOBAL batch size" in text and "256 per GPU on GPUs" in text and "scaled by sqrt(batch/64) up to 0.02" in text


def test_wheel_installs_the_cli_as_aekit_cli_with_the_sample(tmp_path):
    import zipfile

    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(repo)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    (wheel,) = tmp_path.glob("aekit-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "aekit/cli/main.py" in names and "aekit/cli/render.py" in names
    assert "aekit/sample/mnist-sample-images-idx3-ubyte.gz" in names
    assert not any(name.startswith("cli/") for name in names)
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "aekit = aekit.cli.main:app" in entry_points


def test_tf_config_selects_multi_worker_strategy_with_the_same_loop(tmp_path, small_npz):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tf_config = {"cluster": {"worker": [f"127.0.0.1:{port}"]}, "task": {"type": "worker", "index": 0}}
    env = {**os.environ, "AEKIT_OFFLINE": "1", "TF_CONFIG": json.dumps(tf_config)}
    proc = subprocess.run(
        [
            str(AEKIT),
            "train",
            "--dataset",
            str(small_npz),
            *TINY_ARGS,
            "--epochs",
            "2",
            "--batch-size",
            "64",
            "-o",
            str(tmp_path / "run"),
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["epochs"] == 2
    config = json.loads((tmp_path / "run" / runs.CONFIG).read_text())
    assert config["placement"]["strategy"] == "MultiWorkerMirroredStrategy"
    assert config["placement"]["task"] == "worker:0" and config["placement"]["replicas"] == 1
    assert runs.is_finished(tmp_path / "run")


def test_every_recipe_setting_is_a_train_option_with_help():
    import dataclasses
    import inspect

    from aekit.cli import train_cmd

    names = {f.name for f in dataclasses.fields(train_cmd.TrainConfig)}
    assert names <= set(inspect.signature(train_cmd.train).parameters) and names <= set(train_cmd.TRAIN_HELP)
    assert set(train_cmd.RECIPE_FIELDS) == names


def test_a_recipe_file_sets_the_recipe_and_options_win(tmp_path):
    (tmp_path / "recipe.yaml").write_text("filters: [4, 8]\nlatent-dim: 6\nepochs: 3\nval_split: 0.2\nadam_beta_2: 0.98\n")
    printed = CliRunner().invoke(
        app, ["train", "--config", str(tmp_path / "recipe.yaml"), "--epochs", "2", "-o", str(tmp_path / "run"), "--print-recipe"]
    )
    assert printed.exit_code == 0, printed.output
    from aekit.core.recipe import read_recipe_file

    (tmp_path / "printed.yaml").write_text(printed.stdout)
    again = read_recipe_file(tmp_path / "printed.yaml")  # what it prints, --config reads back
    assert again["filters"] == (4, 8) and again["latent_dim"] == 6 and again["epochs"] == 2 and again["val_split"] == 0.2
    assert again["adam_beta_2"] == 0.98 and again["batch_size"] is None and not (tmp_path / "run").exists()
    for text, words in (
        ("filtrs: [4]\n", "filtrs is not a recipe setting. Known: adam_beta_2"),
        ("epochs: 0\n", "--epochs must be at least 1"),
        ("- 1\n- 2\n", "expected a mapping"),
        ("filters: [4\n", "is not valid YAML"),
    ):
        (tmp_path / "bad.yaml").write_text(text)
        result = CliRunner().invoke(app, ["train", "--config", str(tmp_path / "bad.yaml")])
        assert result.exit_code == 2 and words in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
