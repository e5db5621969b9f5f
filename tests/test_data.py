import gzip
import shutil
import time

import numpy as np
import pytest
from PIL import Image
from support import read_mnist

from aekit import AekitError, data
from aekit.data import load_data, make_dataset, network_reachable


def test_idx_folder_takes_the_last_fraction_as_validation(mnist_dir):
    splits = load_data(str(mnist_dir), val_split=0.2)
    assert splits.train.shape == (8000, 28, 28, 1) and splits.val.shape == (2000, 28, 28, 1)
    assert splits.train.dtype == np.uint8 and splits.scaling.divide_by == 255.0
    np.testing.assert_array_equal(splits.val[..., 0], read_mnist()[-2000:])
    assert splits.kind == "idx" and "last 0.2" in splits.validation


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

    monkeypatch.setattr(data, "network_reachable", lambda *a, **k: True)
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


def test_pipeline_scales_batches_and_reshuffles_every_epoch(mnist_dir):
    images = read_mnist(100)[..., None]
    splits = load_data(str(mnist_dir), val_split=0.2)
    ds = make_dataset(images, splits.scaling, 32, steps_per_epoch=3, seed=1)
    batches = [b.numpy() for b in ds.take(6)]  # endless: two epochs of three batches
    assert all(b.shape == (32, 28, 28, 1) and b.dtype == np.float32 for b in batches)
    assert 0.0 <= min(b.min() for b in batches) and max(b.max() for b in batches) == pytest.approx(1.0)
    first, second = np.concatenate(batches[:3]), np.concatenate(batches[3:])
    assert not np.array_equal(first, second)  # a new order each epoch
    assert not np.array_equal(first[..., 0], images[:96, ..., 0] / 255.0)  # shuffled


def ids_dataset(count):
    """Images whose single pixel is their index / 1000, so batches can be traced back to examples."""
    from aekit.pixels import PixelScaling

    return (np.arange(count, dtype=np.float32) / 1000).reshape(count, 1, 1, 1), PixelScaling(1.0)


def batches_of_ids(ds, n):
    return [np.rint(b.numpy().reshape(-1) * 1000).astype(int) for b in ds.take(n)]


def test_each_example_once_per_epoch_across_worker_shards():
    images, scaling = ids_dataset(100)
    per_worker = [batches_of_ids(make_dataset(images, scaling, 10, 5, seed=3, num_shards=2, shard_index=i), 10) for i in range(2)]
    for epoch in range(2):
        seen = np.concatenate([b for worker in per_worker for b in worker[epoch * 5 : (epoch + 1) * 5]])
        assert sorted(seen.tolist()) == list(range(100))  # every example exactly once, split between workers
    assert set(np.concatenate(per_worker[0][:5])).isdisjoint(np.concatenate(per_worker[1][:5]))


def test_resumed_stream_continues_exactly_where_it_stopped():
    images, scaling = ids_dataset(64)
    whole = batches_of_ids(make_dataset(images, scaling, 8, 8, seed=5), 24)  # three epochs
    resumed = batches_of_ids(make_dataset(images, scaling, 8, 8, seed=5, start_epoch=1, skip_batches=3), 13)
    assert all(np.array_equal(a, b) for a, b in zip(whole[11:], resumed))
    with pytest.raises(AekitError, match="cannot fill"):
        make_dataset(images, scaling, 8, 9)


def test_a_run_record_reloads_the_same_data(tmp_path, small_npz, monkeypatch):
    from aekit.data import reload_data

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
