import gzip
import shutil
import time

import numpy as np
import pytest
from PIL import Image
from support import read_mnist

from aekit import AekitError
from aekit.data import loading
from aekit.data.feeds import DeviceImages
from aekit.data.loading import load_data
from aekit.data.network import network_reachable


def test_idx_folder_holds_out_a_seeded_random_fraction(mnist_dir):
    splits = load_data(str(mnist_dir), val_split=0.2)
    assert splits.train.shape == (8000, 28, 28, 1) and splits.val.shape == (2000, 28, 28, 1)
    assert splits.train.dtype == np.uint8 and splits.scaling.divide_by == 255.0
    drawn = splits.split.val
    assert len(drawn) == 2000 and drawn.min() < 500 and drawn.max() > 9500  # from the whole source, not its tail
    np.testing.assert_array_equal(splits.val[..., 0], read_mnist()[drawn])
    assert splits.kind == "idx" and "seeded random 0.2" in splits.validation and "seed 0" in splits.validation
    again, other = load_data(str(mnist_dir), val_split=0.2), load_data(str(mnist_dir), val_split=0.2, seed=1)
    np.testing.assert_array_equal(again.split.val, drawn)  # a pure function of the seed and the source
    assert len(np.intersect1d(other.split.val, drawn)) < 600  # another seed, another draw (~400 shared by chance)


def test_val_from_end_keeps_the_last_fraction_for_ordered_data(mnist_dir):
    splits = load_data(str(mnist_dir), val_split=0.2, val_from_end=True)
    np.testing.assert_array_equal(splits.val[..., 0], read_mnist()[-2000:])
    assert "last 0.2" in splits.validation and splits.describe()["split"]["rule"] == "last"


def test_idx_folder_with_train_and_test_files_uses_the_test_file(tmp_path, mnist_dir):
    shutil.copy(mnist_dir / "t10k-images-idx3-ubyte.gz", tmp_path / "t10k-images-idx3-ubyte.gz")
    header = np.array([2051, 300, 28, 28], ">i4").tobytes()
    (tmp_path / "train-images-idx3-ubyte").write_bytes(header + read_mnist(300).tobytes())  # uncompressed too
    splits = load_data(str(tmp_path))
    assert len(splits.train) == 300 and len(splits.val) == 10_000
    assert "t10k" in splits.validation


def test_truncated_idx_names_the_problem(tmp_path, mnist_dir):
    raw = gzip.decompress((mnist_dir / "t10k-images-idx3-ubyte.gz").read_bytes())
    (tmp_path / "broken-images-idx3-ubyte").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(AekitError, match="corrupt or truncated"):
        load_data(str(tmp_path))


def test_not_gzip_garbage_is_refused(tmp_path):
    (tmp_path / "x-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8bnot really gzip")
    with pytest.raises(AekitError, match="Cannot read IDX"):
        load_data(str(tmp_path))


def test_npz_with_x_train_and_x_test(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x_train=read_mnist(100), x_test=read_mnist(130)[100:])
    splits = load_data(str(path))
    assert splits.train.shape == (100, 28, 28, 1) and splits.val.shape == (30, 28, 28, 1)
    assert splits.validation == "array x_test"


def test_npy_float_images_in_unit_range(tmp_path):
    path = tmp_path / "d.npy"
    np.save(path, np.random.default_rng(0).random((50, 16, 16, 3), dtype=np.float32))
    splits = load_data(str(path), val_split=0.2)
    assert splits.train.shape == (40, 16, 16, 3) and splits.scaling.divide_by == 1.0


def test_corrupt_npz_and_wrong_shapes(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 this is no archive")
    with pytest.raises(AekitError, match="Cannot read"):
        load_data(str(bad))
    flat = tmp_path / "flat.npy"
    np.save(flat, np.zeros((10, 784), np.uint8))
    with pytest.raises(AekitError, match=r"shape \(10, 784\)"):
        load_data(str(flat))


def test_nan_pixels_are_refused(tmp_path):
    images = np.random.default_rng(0).random((20, 8, 8), dtype=np.float32)
    images[3, 1, 1] = np.nan
    np.save(tmp_path / "nan.npy", images)
    with pytest.raises(AekitError, match="NaN"):
        load_data(str(tmp_path / "nan.npy"))


def test_image_folder_grey_and_colour(tmp_path):
    grey, colour = tmp_path / "grey", tmp_path / "colour"
    grey.mkdir(), colour.mkdir()
    for i, digit in enumerate(read_mnist(20)):
        Image.fromarray(digit).save(grey / f"{i:03}.png")
        Image.fromarray(np.stack([digit] * 3, -1)).save(colour / f"{i:03}.jpg")
    splits = load_data(str(grey), val_split=0.25)
    assert splits.train.shape == (15, 28, 28, 1)
    np.testing.assert_array_equal(splits.train[0, ..., 0], read_mnist(1)[0])
    assert load_data(str(colour), val_split=0.25).train.shape == (15, 28, 28, 3)


def test_image_folder_problems(tmp_path):
    with pytest.raises(AekitError, match="contains no IDX files"):
        load_data(str(tmp_path))
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "b.png")
    with pytest.raises(AekitError, match="Resize all images"):
        load_data(str(tmp_path))


def test_missing_path_and_unknown_name():
    with pytest.raises(AekitError, match="does not exist"):
        load_data("no/such/folder")
    with pytest.raises(AekitError, match="neither an existing path nor a TFDS dataset name"):
        load_data("surely_not_a_tfds_dataset_name")


def test_tfds_source_offline_with_mock_data(monkeypatch):
    import tensorflow_datasets as tfds

    monkeypatch.setattr(loading, "network_reachable", lambda *a, **k: True)
    with tfds.testing.mock_data(num_examples=24):
        splits = load_data("mnist")
    assert splits.kind == "tfds" and splits.source == "tfds:mnist"
    # mock_data yields at most num_examples random digits per split
    assert 0 < len(splits.train) <= 24 and splits.train.shape[1:] == (28, 28, 1)
    assert splits.train.dtype == np.uint8 and splits.scaling.divide_by == 255.0
    assert 0 < len(splits.val) <= 24 and splits.validation == "TFDS split 'test'"
    assert splits.note is None


def test_default_falls_back_to_the_bundled_sample_within_seconds(tmp_path):
    started = time.perf_counter()
    splits = load_data(None, val_split=0.1, data_dir=str(tmp_path))
    assert time.perf_counter() - started < 10
    assert splits.kind == "bundled" and "bundled" in splits.note
    assert splits.train.shape == (9000, 28, 28, 1) and splits.val.shape == (1000, 28, 28, 1)
    np.testing.assert_array_equal(splits.train[:5, ..., 0], read_mnist(5))  # real MNIST digits


def test_explicit_tfds_name_that_cannot_be_had_is_an_error(tmp_path):
    with pytest.raises(AekitError, match="not prepared.*unreachable"):
        load_data("mnist", data_dir=str(tmp_path))


def test_network_probe_gives_up_fast_on_a_closed_port(monkeypatch):
    import socket

    monkeypatch.delenv("AEKIT_OFFLINE")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.perf_counter()
    assert network_reachable(("127.0.0.1", port), timeout=2.0) is False
    assert time.perf_counter() - started < 3


def test_invalid_val_split():
    with pytest.raises(AekitError, match="--val-split"):
        load_data(None, val_split=1.5)


def epoch_batches(images, scaling, strategy, global_batch, steps, epoch, seed=1, on_gpu=False):
    """What each replica gathers for steps 0..steps-1 of `epoch`: a list (per step) of per-replica arrays."""
    device_images = DeviceImages(images, scaling, strategy, global_batch, seed, on_gpu)
    order = device_images.epoch_order(epoch)
    out = []
    for step in range(steps):
        per_replica = strategy.run(device_images.fetch, args=device_images.args(order, step))
        out.append([np.asarray(part) for part in strategy.experimental_local_results(per_replica)])
    return out


def test_device_images_scale_batches_and_reshuffle_every_epoch(mnist_dir):
    import tensorflow as tf

    images = read_mnist(100)[..., None]
    splits = load_data(str(mnist_dir), val_split=0.2)
    strategy = tf.distribute.get_strategy()
    first, second = (epoch_batches(images, splits.scaling, strategy, 32, 3, epoch) for epoch in (1, 2))
    batches = [b[0] for b in first + second]
    assert all(b.shape == (32, 28, 28, 1) and b.dtype == np.float32 for b in batches)
    assert 0.0 <= min(b.min() for b in batches) and max(b.max() for b in batches) == pytest.approx(1.0)
    assert not np.array_equal(np.concatenate(batches[:3]), np.concatenate(batches[3:]))  # a new order each epoch
    assert not np.array_equal(batches[0][..., 0], images[:32, ..., 0] / 255.0)  # shuffled


def ids_dataset(count):
    """Images whose single pixel is their index / 1000, so batches can be traced back to examples."""
    from aekit.core.pixels import PixelScaling

    return (np.arange(count, dtype=np.float32) / 1000).reshape(count, 1, 1, 1), PixelScaling(1.0)


def as_ids(batch):
    return np.rint(np.asarray(batch).reshape(-1) * 1000).astype(int)


def test_each_example_once_per_epoch_across_replicas(two_cpu_replicas):
    images, scaling = ids_dataset(100)
    for on_gpu in (False, True):  # one shared table, or a copy per replica (float16 where uint8)
        steps = epoch_batches(images, scaling, two_cpu_replicas, 20, 5, epoch=3, on_gpu=on_gpu)
        seen = [as_ids(part) for step in steps for part in step]
        assert all(len(part) == 10 for part in seen)  # each replica its half of the global batch
        assert sorted(np.concatenate(seen).tolist()) == list(range(100))  # every example exactly once
        assert set(np.concatenate(seen[0::2])).isdisjoint(np.concatenate(seen[1::2]))


def test_a_batch_depends_only_on_seed_epoch_and_step_so_resume_is_exact():
    import tensorflow as tf

    images, scaling = ids_dataset(64)
    strategy = tf.distribute.get_strategy()
    device_images = DeviceImages(images, scaling, strategy, 8, seed=5, on_gpu=False)
    whole = [as_ids(b[0]) for b in epoch_batches(images, scaling, strategy, 8, 8, epoch=2, seed=5)]
    resumed = [as_ids(device_images.fetch(*device_images.args(device_images.epoch_order(2), step))) for step in (3, 7)]
    assert np.array_equal(resumed[0], whole[3]) and np.array_equal(resumed[1], whole[7])
    other_epoch = [as_ids(b[0]) for b in epoch_batches(images, scaling, strategy, 8, 8, epoch=3, seed=5)]
    assert not np.array_equal(np.concatenate(whole), np.concatenate(other_epoch))
    with pytest.raises(AekitError, match="cannot fill"):
        DeviceImages(images, scaling, strategy, 65, seed=0, on_gpu=False)


def test_a_run_record_reloads_the_same_data(tmp_path, small_npz, monkeypatch):
    from aekit.data.loading import reload_data

    fallback = load_data(None, val_split=0.1, data_dir=str(tmp_path))
    again = reload_data(fallback.describe())
    assert again.kind == "bundled" and again.note is None
    np.testing.assert_array_equal(again.val, fallback.val)

    monkeypatch.chdir(small_npz.parent)
    relative = load_data(small_npz.name, val_split=0.25)
    monkeypatch.chdir(tmp_path)  # the record holds an absolute path, so any cwd works
    again = reload_data(relative.describe())
    assert len(again.val) == 160
    np.testing.assert_array_equal(again.val, relative.val)
