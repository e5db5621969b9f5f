import io
import json
import os

import numpy as np
import pytest
from PIL import Image
from support import TINY

from aekit import AekitError
from aekit.core import runs
from aekit.core.recipe import TrainConfig, prepare_resume
from aekit.training.loop import TrainCallback, TrainingInterrupted, train
from aekit.training.tensorboard import TensorBoardLog


def tiny(small_npz, **overrides) -> TrainConfig:
    return TrainConfig(**{"dataset": str(small_npz), "epochs": 2, "batch_size": 64, "gpus": 0, **TINY, **overrides})


class Recorder(TrainCallback):
    def __init__(self):
        self.info, self.steps, self.rows = None, [], []

    def on_train_begin(self, info):
        self.info = info

    def on_step_end(self, epoch, step, loss, samples_per_sec):
        self.steps.append((epoch, step, loss, samples_per_sec))

    def on_epoch_end(self, epoch, row):
        self.rows.append(row)


def test_train_writes_a_complete_run_folder(tmp_path, small_npz):
    recorder = Recorder()
    result = train(tiny(small_npz), tmp_path / "run", recorder)
    run = result.run_dir
    for name in (
        runs.CONFIG,
        runs.HISTORY_JSON,
        runs.HISTORY_CSV,
        runs.METRICS,
        runs.LOSS_PLOT,
        runs.RECONSTRUCTIONS,
        *runs.MODEL_FILES.values(),
    ):
        assert (run / name).is_file() and (run / name).stat().st_size > 0, name
    assert not list(run.glob(".partial-*"))

    history = json.loads((run / runs.HISTORY_JSON).read_text())
    assert [row["epoch"] for row in history] == [1, 2]
    for row in history:
        assert 0 < row["train_loss"] < 0.5 and 0 < row["val_mse"] < 0.5
        assert row["val_psnr"] == pytest.approx(row["val_psnr"]) and row["val_psnr"] > 3
        assert row["seconds"] > 0 and row["samples_per_sec"] > 0
    csv_lines = (run / runs.HISTORY_CSV).read_text().splitlines()
    assert csv_lines[0].split(",")[:4] == ["epoch", "train_loss", "val_mse", "val_psnr"] and len(csv_lines) == 3

    metrics = json.loads((run / runs.METRICS).read_text())
    assert metrics["epochs"] == 2 and metrics["final_val_mse"] == pytest.approx(history[-1]["val_mse"])
    assert metrics["params"] == {"encoder": 4484, "decoder": 7569, "autoencoder": 12053}

    config = json.loads((run / runs.CONFIG).read_text())
    assert config["recipe"]["filters"] == [8, 16] and config["model"]["input_shape"] == [28, 28, 1]
    assert config["data"]["train_images"] == 576 and config["data"]["val_images"] == 64
    assert config["placement"]["replicas"] == 1 and config["placement"]["precision"] == "float32"

    # 576 images / batch 64 = 9 steps per epoch; auto K runs a tiny model's epoch in one call, reported per call
    assert recorder.info["steps_per_epoch"] == 9 and recorder.info["steps_per_call"] == 9
    assert [(epoch, step) for epoch, step, *_ in recorder.steps] == [(1, 9), (2, 9)]
    with Image.open(run / runs.RECONSTRUCTIONS) as grid, Image.open(run / runs.LOSS_PLOT) as plot:
        assert grid.width > grid.height and plot.size[0] >= 400

    import keras

    encoder = keras.models.load_model(run / "encoder.keras")
    assert encoder.output.shape[1:] == (4,)


def test_two_replicas_mirror_and_the_loss_falls(tmp_path, small_npz):
    recorder = Recorder()
    result = train(tiny(small_npz, cpu_replicas=2, epochs=4, learning_rate=5e-3), tmp_path / "run", recorder)
    assert recorder.info["placement"]["replicas"] == 2
    assert recorder.info["placement"]["strategy"] == "MirroredStrategy"
    assert recorder.info["placement"]["devices"] == ["/cpu:0", "/cpu:1"]
    losses = [row["train_loss"] for row in result.history]
    assert losses[-1] < 0.8 * losses[0], losses
    config = json.loads((result.run_dir / runs.CONFIG).read_text())
    assert config["placement"]["replicas"] == 2


def test_resume_continues_from_the_last_finished_epoch(tmp_path, small_npz):
    run_dir = tmp_path / "run"
    first = train(tiny(small_npz, epochs=2), run_dir)
    before = json.loads((run_dir / runs.HISTORY_JSON).read_text())
    config = prepare_resume(run_dir, TrainConfig(epochs=3), {"epochs"})
    assert config.filters == (8, 16) and config.epochs == 3
    recorder = Recorder()
    second = train(config, run_dir, recorder)
    assert recorder.info["start_epoch"] == 2 and len(recorder.rows) == 1
    history = json.loads((run_dir / runs.HISTORY_JSON).read_text())
    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert history[:2] == before
    assert second.metrics["epochs"] == 3 and first.metrics["epochs"] == 2


def test_learning_rate_warms_up_then_decays_to_one_percent_by_the_last_step():
    from aekit.training.schedule import _schedule

    rate = _schedule(TrainConfig(epochs=2, learning_rate=1e-2, warmup_steps=20), steps_per_epoch=100)
    at = lambda step: float(rate(step))  # noqa: E731
    assert at(0) == pytest.approx(1e-3) and at(10) == pytest.approx(5.5e-3) and at(20) == pytest.approx(1e-2)
    assert at(110) == pytest.approx(0.505e-2, rel=1e-3) and at(200) == pytest.approx(1e-4)
    capped = _schedule(TrainConfig(epochs=2, learning_rate=1e-2, warmup_steps=1000), steps_per_epoch=100)
    assert float(capped(50)) == pytest.approx(1e-2)  # a warm-up is at most a quarter of the run
    assert float(_schedule(TrainConfig(epochs=2, learning_rate=1e-2, warmup_steps=0), 100)(0)) == pytest.approx(1e-2)
    # a run recorded before the warm-up existed resumes without one
    old = TrainConfig.from_json({"epochs": 3})
    assert old.warmup_steps == 0 and old.adam_beta_2 == 0.999 and TrainConfig().adam_beta_2 == 0.99


def test_resume_keeps_model_settings_and_refuses_a_finished_run(tmp_path, small_npz):
    run_dir = tmp_path / "run"
    train(tiny(small_npz, epochs=1), run_dir)
    with pytest.raises(AekitError, match="latent_dim"):
        prepare_resume(run_dir, TrainConfig(latent_dim=32), {"latent_dim"})
    with pytest.raises(AekitError, match="already finished 1 epoch"):
        train(prepare_resume(run_dir, TrainConfig(), set()), run_dir)


def test_interrupted_run_is_not_finished_and_resumes(tmp_path, small_npz):
    class Stop(TrainCallback):
        def on_epoch_end(self, epoch, row):
            if epoch == 2:
                raise KeyboardInterrupt

    run_dir = tmp_path / "run"
    with pytest.raises(
        TrainingInterrupted, match=f"after epoch 2; checkpoint saved. Resume with: aekit train --resume {run_dir}"
    ):
        train(tiny(small_npz, epochs=3), run_dir, Stop())
    assert not runs.is_finished(run_dir) and runs.is_run_dir(run_dir)
    assert [row["epoch"] for row in json.loads((run_dir / runs.HISTORY_JSON).read_text())] == [1, 2]
    result = train(prepare_resume(run_dir, TrainConfig(), set()), run_dir)
    assert [row["epoch"] for row in result.history] == [1, 2, 3] and runs.is_finished(run_dir)


@pytest.mark.parametrize("precision", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_trains_with_a_float32_output(tmp_path, small_npz, precision):
    result = train(tiny(small_npz, epochs=1, precision=precision), tmp_path / "run")
    assert np.isfinite(result.metrics["final_val_mse"]) and result.metrics["final_val_mse"] < 0.5
    config = json.loads((result.run_dir / runs.CONFIG).read_text())
    assert config["placement"]["precision"] == precision


def test_bad_batch_sizes_are_refused_before_anything_is_written(tmp_path, small_npz):
    with pytest.raises(AekitError, match="does not divide across 2 replicas"):
        train(tiny(small_npz, batch_size=63, cpu_replicas=2), tmp_path / "a")
    with pytest.raises(AekitError, match="larger than the 576 training images"):
        train(tiny(small_npz, batch_size=1024), tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_more_gpus_than_visible_lists_what_is_visible(tmp_path, small_npz):
    with pytest.raises(AekitError, match=r"--gpus 2 asked for 2 GPU\(s\) but TensorFlow sees 0 \(none\)"):
        train(tiny(small_npz, gpus=2), tmp_path / "run")


def test_impossible_options(tmp_path, small_npz):
    with pytest.raises(AekitError, match="exclude each other"):
        train(tiny(small_npz, gpus=1, cpu_replicas=2), tmp_path / "run")
    with pytest.raises(AekitError, match="--precision"):
        train(tiny(small_npz, precision="float8"), tmp_path / "run")
    with pytest.raises(AekitError, match="--epochs"):
        train(tiny(small_npz, epochs=0), tmp_path / "run")
    with pytest.raises(AekitError, match="--warmup-steps"):
        train(tiny(small_npz, warmup_steps=-1), tmp_path / "run")


def test_nan_data_leaves_no_run_folder(tmp_path):
    images = np.random.default_rng(0).random((100, 28, 28), dtype=np.float32)
    images[5, 0, 0] = np.nan
    np.save(tmp_path / "nan.npy", images)
    with pytest.raises(AekitError, match="NaN"):
        train(TrainConfig(dataset=str(tmp_path / "nan.npy"), gpus=0, **TINY), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "model.keras"
    with pytest.raises(RuntimeError):
        with runs.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert os.listdir(tmp_path) == []


def test_a_run_killed_after_its_last_checkpoint_finishes_on_resume(tmp_path, small_npz):
    run_dir = tmp_path / "run"
    train(tiny(small_npz, epochs=2), run_dir)
    for name in (runs.METRICS, *runs.MODEL_FILES.values(), runs.LOSS_PLOT):  # as if killed before the outputs
        (run_dir / name).unlink()
    result = train(prepare_resume(run_dir, TrainConfig(), set()), run_dir)
    assert runs.is_finished(run_dir) and result.metrics["epochs"] == 2 and len(result.history) == 2
    assert (run_dir / runs.MODEL_FILES["encoder"]).is_file()


def test_ctrl_c_mid_epoch_checkpoints_the_exact_step_and_resumes_identically(tmp_path, small_npz):
    import signal

    class CtrlC(TrainCallback):
        def on_step_end(self, epoch, step, loss, samples_per_sec):
            if (epoch, step) == (2, 4):
                os.kill(os.getpid(), signal.SIGINT)  # arrives mid-run; training stops after this step

    config = tiny(small_npz, epochs=3, steps_per_execution=1)  # calls of one step: Ctrl-C lands after step 4
    straight = train(config, tmp_path / "straight")
    with pytest.raises(TrainingInterrupted, match="after epoch 1 and 4 steps of the next"):
        train(config, tmp_path / "run", CtrlC())
    resumed = train(prepare_resume(tmp_path / "run", TrainConfig(), set()), tmp_path / "run")
    for a, b in zip(resumed.history, straight.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["val_mse"] == pytest.approx(b["val_mse"], rel=1e-5)


def read_event_files(folder) -> dict:
    """{tag: {step: value}} from every TensorBoard event file in `folder`; images as (width, height, png)."""
    import tensorflow as tf

    found = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                data = tf.make_ndarray(value.tensor)
                found.setdefault(value.tag, {})[event.step] = float(data) if data.dtype != object else tuple(data)
    return found


def test_tensorboard_holds_each_epoch_and_a_resumed_run_appends(tmp_path, small_npz):
    run_dir = tmp_path / "run"
    train(tiny(small_npz, epochs=2), run_dir)
    train(prepare_resume(run_dir, TrainConfig(epochs=3), {"epochs"}), run_dir)
    history = json.loads((run_dir / runs.HISTORY_JSON).read_text())
    board = run_dir / runs.TENSORBOARD
    assert len(list((board / "train").glob("events.out.tfevents.*"))) == 2  # one per session, read as one run
    written = {part: read_event_files(board / part) for part in ("train", "validation")}

    expected = {
        ("train", "epoch_loss"): "train_loss",
        ("train", "epoch_learning_rate"): "learning_rate",
        ("train", "epoch_samples_per_sec"): "samples_per_sec",
        ("validation", "epoch_loss"): "val_mse",
        ("validation", "epoch_psnr"): "val_psnr",
    }
    for (part, tag), field_name in expected.items():
        steps = written[part][tag]
        assert sorted(steps) == [1, 2, 3], (part, tag)
        assert [steps[row["epoch"]] for row in history] == pytest.approx([row[field_name] for row in history], rel=1e-6)
    images = written["validation"]["reconstructions"]
    assert sorted(images) == [1, 2, 3]
    width, height, png = images[3]
    with Image.open(io.BytesIO(png)) as grid:  # 10 originals above their 10 reconstructions
        assert (int(width), int(height)) == grid.size == (280, 56)
    # workers other than the chief write nothing
    TensorBoardLog(tmp_path / "worker", enabled=False).write_epoch(history[0], np.zeros((56, 280, 1), np.float32))
    assert not (tmp_path / "worker").exists()


def _weights(run_dir):
    import keras

    return keras.models.load_model(run_dir / runs.MODEL_FILES["autoencoder"], compile=False).get_weights()


def test_k_steps_per_call_give_the_weights_of_one_step_per_call(tmp_path, small_npz):
    """Float32, one device, same seed: 9 steps per epoch as 9 calls of 1 step, or 3 calls of 4, 4 and 1 steps."""
    one = train(tiny(small_npz, steps_per_execution=1), tmp_path / "k1")
    recorder = Recorder()
    four = train(tiny(small_npz, steps_per_execution=4), tmp_path / "k4", recorder)
    assert recorder.info["steps_per_call"] == 4
    assert [s[:2] for s in recorder.steps] == [(1, 4), (1, 8), (1, 9), (2, 4), (2, 8), (2, 9)]  # a call never crosses an epoch
    for a, b in zip(_weights(tmp_path / "k1"), _weights(tmp_path / "k4")):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)  # the same arithmetic, rounding aside
    for row_one, row_four in zip(one.history, four.history):
        assert row_four["train_loss"] == pytest.approx(row_one["train_loss"], rel=1e-4)
        assert row_four["val_mse"] == pytest.approx(row_one["val_mse"], rel=1e-4)


def test_resume_at_a_call_boundary_is_exact(tmp_path, small_npz):
    whole = train(tiny(small_npz, epochs=2, steps_per_execution=3, checkpoint_steps=3), tmp_path / "whole")

    class StopAfterSix(TrainCallback):
        def on_step_end(self, epoch, step, loss, samples_per_sec):
            if (epoch, step) == (2, 6):
                raise KeyboardInterrupt  # as Ctrl-C at a call boundary

    with pytest.raises(TrainingInterrupted):
        train(tiny(small_npz, epochs=2, steps_per_execution=3, checkpoint_steps=3), tmp_path / "cut", StopAfterSix())
    resumed = train(prepare_resume(tmp_path / "cut", tiny(small_npz, epochs=2), {"epochs"}), tmp_path / "cut")
    assert resumed.history[-1]["train_loss"] == pytest.approx(whole.history[-1]["train_loss"], rel=1e-5)
    for a, b in zip(_weights(tmp_path / "whole"), _weights(tmp_path / "cut")):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("overrides", [{"precision": "mixed_float16"}, {"cpu_replicas": 2}], ids=["mixed_float16", "2-replicas"])
def test_k_steps_per_call_train_under_loss_scaling_and_replicas(tmp_path, small_npz, overrides):
    recorder = Recorder()
    result = train(tiny(small_npz, epochs=3, learning_rate=5e-3, steps_per_execution=3, **overrides), tmp_path / "run", recorder)
    assert recorder.info["steps_per_call"] == 3 and len(recorder.steps) == 9
    losses = [row["train_loss"] for row in result.history]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]


def test_auto_steps_per_call_fill_ten_milliseconds_of_a_gpu_a_quarter_second_of_a_cpu():
    from aekit.training.model import build_autoencoder
    from aekit.training.steps import model_macs, steps_per_call

    encoder, decoder, autoencoder = build_autoencoder()
    assert model_macs(encoder) == 1_009_792 and model_macs(autoencoder) == 6_704_768  # docs/design.md: ~1.0 M and ~6.7 M

    step_macs = 3 * 6.7e6 * 64  # the reference model, batch 64
    assert steps_per_call(0, step_macs, on_gpu=False, steps_per_epoch=125) == 10  # ~26 ms per step at 100 GFLOP/s
    assert steps_per_call(0, 3 * 1e3 * 64, on_gpu=False, steps_per_epoch=500) == 100  # a tiny model: capped on a CPU
    assert steps_per_call(0, step_macs, on_gpu=True, steps_per_epoch=937) == 98  # ~103 us per step on a GPU
    assert steps_per_call(0, step_macs, on_gpu=True, steps_per_epoch=60) == 60  # never past an epoch
    assert steps_per_call(7, step_macs, on_gpu=True, steps_per_epoch=60) == 7


def test_the_default_batch_fills_the_gpus_and_the_rate_and_warm_up_follow_it():
    cpu = TrainConfig().resolve(gpus=0)
    assert (cpu.batch_size, cpu.learning_rate, cpu.warmup_steps) == (64, 5e-3, 150)
    two_gpus = TrainConfig().resolve(gpus=2)  # 256 per GPU: global 512, sqrt(8) x 5e-3
    assert (two_gpus.batch_size, two_gpus.warmup_steps) == (512, 19) and two_gpus.learning_rate == pytest.approx(5e-3 * 8**0.5)
    assert TrainConfig().resolve(gpus=8).learning_rate == 2e-2  # 2048: clipped at the highest rate measured to train well
    explicit = TrainConfig(batch_size=128).resolve(gpus=4)  # an explicit batch is the global batch
    assert explicit.batch_size == 128 and explicit.learning_rate == pytest.approx(5e-3 * 2**0.5) and explicit.warmup_steps == 75
    kept = TrainConfig(batch_size=1024, learning_rate=3e-3, warmup_steps=0).resolve(gpus=2)
    assert (kept.batch_size, kept.learning_rate, kept.warmup_steps) == (1024, 3e-3, 0)


def test_resume_with_more_epochs_continues_the_learning_rate_without_a_jump(tmp_path):
    """30 then --epochs 40 once jumped the rate from 5e-5 back to 9e-4; the plan now continues from where it was."""
    from aekit.core.recipe import prepare_resume

    rng = np.random.default_rng(0)
    source = tmp_path / "patches.npz"
    np.savez(source, images=rng.integers(0, 256, (128, 8, 8, 3), dtype=np.uint8))
    run = tmp_path / "run"
    common = {"batch_size": 32, "gpus": 0, "filters": (4,), "latent_dim": 4, "warmup_steps": 2}
    first = train(TrainConfig(dataset=str(source), epochs=3, **common), run)  # 9 steps, cosine to 1% of the peak
    rates = [row["learning_rate"] for row in first.history]
    assert rates[-1] == pytest.approx(0.01 * 5e-3, rel=1e-3)
    resumed = train(prepare_resume(run, TrainConfig(epochs=5), {"epochs"}), run)
    later = [row["learning_rate"] for row in resumed.history[3:]]
    assert max(later) <= rates[-1] * 1.001  # no jump back up: it goes on from the rate it reached
    plan = json.loads((run / "config.json").read_text())["lr_plan"]
    assert plan["base_total_steps"] == 9 and plan["extensions"] == [
        {"from_step": 9, "to_step": 15, "from_lr": pytest.approx(rates[-1], rel=1e-4), "to_lr": pytest.approx(5e-5)}
    ]
    again = train(prepare_resume(run, TrainConfig(epochs=6), {"epochs"}), run)  # a second extension, still smooth
    assert again.history[-1]["learning_rate"] <= later[-1] * 1.001
