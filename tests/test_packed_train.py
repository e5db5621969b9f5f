"""Training from packed shards: the round trip through train and export, exact resume, workers' shares."""

import json

import numpy as np
import pytest
from support import TINY, read_mnist
from typer.testing import CliRunner

from aekit import AekitError
from aekit.cli.main import app
from aekit.core import runs
from aekit.core.recipe import TrainConfig, prepare_resume
from aekit.data.pack.reader import PackedDataset
from aekit.data.pack.schema import MANIFEST
from aekit.data.pack.writer import pack
from aekit.training.loop import TrainCallback, TrainingInterrupted, train


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    """600 real digits packed in shards of 60: 480 train (8 shards) / 120 val (2 shards)."""
    source = tmp_path_factory.mktemp("pack-src") / "digits.npz"
    np.savez(source, images=read_mnist(600))
    out = tmp_path_factory.mktemp("packs") / "digits"
    pack(str(source), out, val_split=0.2, shard_size=60)
    return out


def weights(run_dir):
    import keras

    return keras.models.load_model(run_dir / runs.MODEL_FILES["autoencoder"], compile=False).get_weights()


def test_pack_train_export_round_trip(packed, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    monkeypatch.chdir(packed.parent)  # the pack named relative to here; export then runs from elsewhere
    args = ["train", "--dataset", packed.name, "--epochs", "2", "--batch-size", "32", "--gpus", "0", "-o", str(run_dir)]
    args += ["--filters", ",".join(map(str, TINY["filters"])), "--latent-dim", str(TINY["latent_dim"]), "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.output.strip().splitlines()[-1])
    assert metrics["epochs"] == 2 and 0 < metrics["final_val_mse"] < 0.2
    data = json.loads((run_dir / runs.CONFIG).read_text())["data"]
    identity = json.loads((packed / MANIFEST).read_text())["identity"]
    assert data["packed"] == str(packed.resolve()) and data["identity"] == identity  # absolute: found from any folder
    assert (data["train_images"], data["val_images"], data["image_shape"]) == (480, 120, [28, 28, 1])
    assert json.loads((run_dir / runs.CONFIG).read_text())["steps_per_epoch"] == 15  # 480 // 32

    monkeypatch.chdir(tmp_path)
    exported = CliRunner().invoke(app, ["export", "--run", str(run_dir), "--format", "onnx"])
    assert exported.exit_code == 0, exported.output
    manifest = json.loads((run_dir / "export" / "manifest.json").read_text())
    assert {entry["status"] for entry in manifest["files"]} == {"passed"}


def test_validation_streams_the_same_figures_as_in_memory(packed):
    from aekit.data.loading import load_data

    splits = load_data(str(packed))
    whole = PackedDataset.open(packed).read("val")
    assert splits.count("val") == 120 and np.array_equal(splits.head("val", 7), whole[:7])
    np.testing.assert_array_equal(splits.sample("val", 5), whole[np.linspace(0, 119, 5).astype(int)])
    streamed = np.concatenate(list(splits.model_batches("val", 50)))
    np.testing.assert_array_equal(streamed, whole.astype(np.float32) / 255.0)


def test_resume_mid_epoch_from_shards_gives_the_uninterrupted_weights(packed, tmp_path):
    def config(**extra):
        return TrainConfig(
            dataset=str(packed), epochs=2, batch_size=32, gpus=0, steps_per_execution=3, checkpoint_steps=3, **TINY, **extra
        )

    whole = train(config(), tmp_path / "whole")

    class StopMidEpoch(TrainCallback):
        def on_step_end(self, epoch, step, loss, samples_per_sec):
            if (epoch, step) == (2, 6):
                raise KeyboardInterrupt  # as Ctrl-C, 6 of 15 steps into epoch 2

    with pytest.raises(TrainingInterrupted):
        train(config(), tmp_path / "cut", StopMidEpoch())
    resumed = train(prepare_resume(tmp_path / "cut", config(), {"epochs"}), tmp_path / "cut")
    assert resumed.history[-1]["train_loss"] == pytest.approx(whole.history[-1]["train_loss"], rel=1e-5)
    for a, b in zip(weights(tmp_path / "whole"), weights(tmp_path / "cut")):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_two_workers_read_disjoint_shards_and_together_see_every_image_once_per_epoch(packed, two_cpu_replicas):
    import tensorflow as tf

    from aekit.data.feeds import StreamedImages

    dataset = PackedDataset.open(packed)
    steps = dataset.steps_per_epoch(global_batch=40, num_workers=2)  # 4 shards (240 images) each: 12 steps of 20
    assert steps == 12
    streams = StreamedImages(dataset, two_cpu_replicas, 40, steps, seed=3, start_epoch=0, start_step=0)  # 2 replicas
    seen = []
    for worker in (0, 1):  # the InputContext MultiWorkerMirroredStrategy gives each worker's dataset function (1 replica each)
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=worker, num_replicas_in_sync=2)
        batches = list(streams.dataset(context, with_index=True).take(2 * steps))  # two epochs
        seen.append([np.concatenate([i.numpy() for _, i in batches[e * steps : (e + 1) * steps]]) for e in range(2)])
    for epoch in range(2):
        together = np.concatenate([seen[0][epoch], seen[1][epoch]])
        assert sorted(together.tolist()) == list(range(480))  # every training image exactly once
        assert not set(seen[0][epoch]) & set(seen[1][epoch])
    assert not np.array_equal(seen[0][0], seen[0][1])  # a new order each epoch
    with pytest.raises(AekitError, match="has 8 train shard\\(s\\), which cannot feed 9 workers"):
        dataset.steps_per_epoch(global_batch=45, num_workers=9)


def test_a_corrupt_shard_stops_training_in_one_line_naming_it(packed, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(packed, copy)
    shard = sorted(copy.glob("train-*.tfrecord"))[3]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    result = CliRunner().invoke(app, ["train", "--dataset", str(copy), "--epochs", "1", "--gpus", "0", "-o", str(tmp_path / "r")])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert shard.name in lines[0] and "sha256" in lines[0] and "Traceback" not in result.output
    assert not (tmp_path / "r").exists()


def test_two_worker_processes_train_from_their_own_shards(packed, tmp_path):
    from test_faults import finish, free_port, start

    workers = f"127.0.0.1:{free_port()},127.0.0.1:{free_port()}"
    args = ["--dataset", packed, "--filters", "8,16", "--latent-dim", "4", "--gpus", "0", "--batch-size", "32"]
    args += ["--epochs", "1", "-o", tmp_path / "run", "--json", "--workers", workers]
    results = [finish(proc) for proc in [start([*args, "--task-index", i], tmp_path) for i in (0, 1)]]
    for code, _out, err in results:
        assert code == 0, err[-2000:]
    chief, worker = (json.loads(out) for _, out, _ in results)
    assert chief["placement"]["strategy"] == "MultiWorkerMirroredStrategy"
    assert chief["weights_sha256"] == worker["weights_sha256"]  # one model, each worker fed by its own 4 shards
    config = json.loads((tmp_path / "run" / runs.CONFIG).read_text())
    assert config["steps_per_epoch"] == 15  # each worker owns 240 images: 15 steps of 16 per worker
    assert config["data"]["identity"] == json.loads((packed / MANIFEST).read_text())["identity"]


def test_a_run_refuses_a_pack_that_changed_since_it_trained(packed, tmp_path):
    import shutil

    where = tmp_path / "pack"
    shutil.copytree(packed, where)
    run_dir = tmp_path / "run"
    train(TrainConfig(dataset=str(where), epochs=1, batch_size=32, gpus=0, **TINY), run_dir)
    other = tmp_path / "other.npz"
    np.savez(other, images=255 - read_mnist(600))  # other images, packed under the same path
    shutil.rmtree(where)
    pack(str(other), where, val_split=0.2, shard_size=60)

    exported = CliRunner().invoke(app, ["export", "--run", str(run_dir), "--format", "onnx"])
    assert exported.exit_code == 2 and "is not the pack" in exported.output and "changed" in exported.output, exported.output
    assert not (run_dir / "export").exists()
    resumed = CliRunner().invoke(app, ["train", "--resume", str(run_dir), "--epochs", "2"])
    assert resumed.exit_code == 2 and "is not the pack" in resumed.output, resumed.output
    assert len(json.loads((run_dir / runs.HISTORY_JSON).read_text())) == 1  # nothing trained on the other pack


def test_val_split_given_with_a_pack_must_be_the_packs(packed, tmp_path):
    args = ["train", "--dataset", str(packed), "--epochs", "1", "--gpus", "0", "-o", str(tmp_path / "run")]
    result = CliRunner().invoke(app, [*args, "--val-split", "0.5"])
    assert result.exit_code == 2 and "--val-split 0.5" in result.output and "0.2" in result.output, result.output
    assert not (tmp_path / "run").exists()
    config = TrainConfig(dataset=str(packed), epochs=1, batch_size=32, gpus=0, **TINY)
    train(config, tmp_path / "kept")
    recorded = json.loads((tmp_path / "kept" / runs.CONFIG).read_text())
    assert recorded["recipe"]["val_split"] == recorded["data"]["val_split"] == pytest.approx(0.2)


def test_a_folder_with_another_programs_dataset_json_is_an_image_folder(tmp_path):
    from PIL import Image

    from aekit.data.loading import load_data

    for i, image in enumerate(read_mnist(20)):
        Image.fromarray(image).save(tmp_path / f"{i:02d}.png")
    (tmp_path / MANIFEST).write_text(json.dumps({"name": "my digits", "license": "CC0"}))
    splits = load_data(str(tmp_path), val_split=0.25)
    assert (len(splits.train), len(splits.val), splits.image_shape) == (15, 5, (28, 28, 1))
