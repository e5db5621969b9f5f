"""Packed datasets (aekit.packed, `aekit data pack`): exact round trips, integrity, resume, streaming.

Small on purpose: a few hundred real MNIST digits in shards of 100, a few dozen PNGs.
"""

import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
from support import read_mnist
from typer.testing import CliRunner

from aekit import AekitError
from aekit.packed import MANIFEST, STATE, PackedDataset, is_packed, pack


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """600 real digits, uint8 (N, 28, 28), in images=; val_split 0.2 gives 480 train / 120 val."""
    path = tmp_path_factory.mktemp("packed-src") / "digits.npz"
    np.savez(path, images=read_mnist(600))
    return path


@pytest.fixture(scope="module")
def reference(digits, tmp_path_factory):
    """An uninterrupted pack of `digits` (shards of 100), shared read-only."""
    out = tmp_path_factory.mktemp("packed") / "digits"
    result = pack(str(digits), out, val_split=0.2, shard_size=100)
    return out, result


def shas(folder):
    data = json.loads((folder / MANIFEST).read_text())
    return {r["file"]: r["sha256"] for split in ("train", "val") for r in data["splits"][split]["shards"]}


def stamp(path):
    stat = os.stat(path)
    return stat.st_ino, stat.st_mtime_ns


class Stop(Exception):
    pass


def interrupt_after(images):
    def on_progress(done, total):
        if done >= images:
            raise Stop

    return on_progress


def collect(ds, batches):
    images, indices = [], []
    for x, i in ds.take(batches):
        images.append(x.numpy())
        indices.append(i.numpy())
    return np.stack(images), np.stack(indices)


# --- packing ----------------------------------------------------------------------------------


def test_pack_round_trips_exactly(reference):
    out, result = reference
    source = read_mnist(600)[..., None]
    data = json.loads((out / MANIFEST).read_text())
    assert data["format"] == "aekit-packed" and data["version"] == 1 and data["dtype"] == "uint8"
    assert data["image_shape"] == [28, 28, 1] and data["pixel_scaling"]["divide_by"] == 255.0
    assert data["splits"]["train"]["images"] == 480 and data["splits"]["val"]["images"] == 120
    assert [r["images"] for r in data["splits"]["train"]["shards"]] == [100, 100, 100, 100, 80]
    assert [r["file"] for r in data["splits"]["val"]["shards"]] == ["val-00000-of-00002.tfrecord", "val-00001-of-00002.tfrecord"]
    assert data["validation"] == "last 0.2 of the source (120 images)" and data["kind"] == "npz"
    assert sorted(p.name for p in out.iterdir()) == sorted([MANIFEST, *shas(out)])  # no state or partial files left
    assert result.written_shards == 7 and result.written_images == 600 and not result.already_packed

    packed = PackedDataset.open(out)
    assert packed.counts == {"train": 480, "val": 120} and packed.image_shape == (28, 28, 1) and is_packed(out)
    assert packed.identity == data["identity"] == result.manifest.identity
    np.testing.assert_array_equal(packed.read("train"), source[:480])
    np.testing.assert_array_equal(packed.read("val"), source[480:])
    np.testing.assert_array_equal(packed.read("val", limit=7), source[480:487])
    batches = list(packed.val_batches(50, with_index=True))
    assert [len(x) for x, _ in batches] == [50, 50, 20]
    assert np.concatenate([i.numpy() for _, i in batches]).tolist() == list(range(120))
    train_index = np.concatenate([i.numpy() for _, i in packed.batches("train", 64, with_index=True)])
    assert train_index.tolist() == list(range(480))
    described = packed.describe()
    assert described["train_images"] == 480 and described["stored_dtype"] == "uint8" and described["packed"] == str(out)
    assert described["source"] == str(reference[1].manifest.source) and described["identity"] == packed.identity


def test_float_sources_are_stored_as_rounded_uint8(tmp_path):
    images = read_mnist(150)
    np.savez(tmp_path / "float.npz", images=images.astype(np.float32) / 255.0)
    result = pack(str(tmp_path / "float.npz"), tmp_path / "out", val_split=0.2, shard_size=64)
    data = json.loads((tmp_path / "out" / MANIFEST).read_text())
    assert data["stored_as"] == "round(x * 255)" and data["source_dtype"] == "float32"
    packed = PackedDataset.open(tmp_path / "out")
    np.testing.assert_array_equal(packed.read("train"), images[:120, ..., None])
    assert result.manifest.count("val") == 30


def test_same_pack_again_is_a_no_op(digits, reference, tmp_path):
    out = tmp_path / "again"
    shutil.copytree(reference[0], out)
    before = {p.name: stamp(p) for p in out.iterdir()}
    result = pack(str(digits), out, val_split=0.2, shard_size=100)
    assert result.already_packed and result.written_shards == 0 and result.kept_shards == 7
    assert {p.name: stamp(p) for p in out.iterdir()} == before


def test_every_file_goes_through_tf_io_gfile(digits, tmp_path):
    """TensorFlow's in-memory file system stands in for gs://: nothing may bypass tf.io.gfile."""
    out = f"ram://packs/{tmp_path.name}"
    with pytest.raises(Stop):
        pack(str(digits), out, val_split=0.2, shard_size=100, on_progress=interrupt_after(100))
    assert sorted(tf.io.gfile.listdir(out)) == [STATE, "train-00000-of-00005.tfrecord"]
    result = pack(str(digits), out, val_split=0.2, shard_size=100)
    assert result.kept_shards == 1 and is_packed(out) and not tf.io.gfile.exists(f"{out}/{STATE}")
    packed = PackedDataset.open(out)
    np.testing.assert_array_equal(packed.read("val"), read_mnist(600)[480:, ..., None])
    assert pack(str(digits), out, val_split=0.2, shard_size=100).already_packed


# --- integrity ----------------------------------------------------------------------------------


def test_corrupt_and_missing_shards_are_named(reference, tmp_path):
    out = tmp_path / "bad"
    shutil.copytree(reference[0], out)
    shard = out / "train-00003-of-00005.tfrecord"
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    shard.write_bytes(bytes(raw))
    with pytest.raises(AekitError, match=r"train-00003-of-00005\.tfrecord does not match its sha256 .*aekit data pack") as err:
        PackedDataset.open(out)
    assert "\n" not in str(err.value)
    PackedDataset.open(out, verify=False)  # same size: only the sha256 tells

    (out / "val-00001-of-00002.tfrecord").unlink()
    with pytest.raises(AekitError, match=r"val-00001-of-00002\.tfrecord is missing"):
        PackedDataset.open(out, verify=False)

    result = CliRunner().invoke(data_app(), ["check", str(out)])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert "Traceback" not in result.output and "tfrecord" in lines[0]

    (out / MANIFEST).write_text('{"format": "aekit-packed", "version": 1}')
    with pytest.raises(AekitError, match=r"dataset\.json is not a valid aekit packed-dataset description"):
        PackedDataset.open(out)


def test_pack_repairs_a_corrupt_shard_and_keeps_the_rest(digits, reference, tmp_path):
    out = tmp_path / "repair"
    shutil.copytree(reference[0], out)
    shard = out / "train-00001-of-00005.tfrecord"
    shard.write_bytes(shard.read_bytes()[:-10] + b"0123456789")
    others = {p.name: stamp(p) for p in out.glob("*.tfrecord") if p != shard}
    result = pack(str(digits), out, val_split=0.2, shard_size=100)
    assert not result.already_packed and result.written_shards == 1 and result.kept_shards == 6
    assert shas(out) == shas(reference[0]) and PackedDataset.open(out).identity == reference[1].manifest.identity
    assert {p.name: stamp(p) for p in out.glob("*.tfrecord") if p != shard} == others


# --- resume ---------------------------------------------------------------------------------------


def test_interrupted_pack_resumes_to_the_same_shards(digits, reference, tmp_path):
    out = tmp_path / "interrupted"
    with pytest.raises(Stop):
        pack(str(digits), out, val_split=0.2, shard_size=100, on_progress=interrupt_after(200))  # after the 2nd shard
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [STATE, "train-00000-of-00005.tfrecord", "train-00001-of-00005.tfrecord"]
    )
    kept = {p.name: stamp(p) for p in out.glob("*.tfrecord")}
    result = pack(str(digits), out, val_split=0.2, shard_size=100)
    assert result.kept_shards == 2 and result.written_shards == 5 and result.written_images == 400
    assert shas(out) == shas(reference[0]) and not (out / STATE).exists()
    assert {name: stamp(out / name) for name in kept} == kept  # the finished shards were not rewritten


def test_resume_rechecks_kept_shards_and_cleans_partials(digits, reference, tmp_path):
    out = tmp_path / "lost"
    with pytest.raises(Stop):
        pack(str(digits), out, val_split=0.2, shard_size=100, on_progress=interrupt_after(400))
    (out / "train-00003-of-00005.tfrecord").unlink()  # a finished shard lost ...
    corrupt = out / "train-00000-of-00005.tfrecord"  # ... one changed in place ...
    corrupt.write_bytes(b"\0" + corrupt.read_bytes()[1:])
    (out / ".partial-train-00004-of-00005.tfrecord").write_bytes(b"half a shard")  # ... and a stale partial
    untouched = {name: stamp(out / name) for name in ("train-00001-of-00005.tfrecord", "train-00002-of-00005.tfrecord")}
    result = pack(str(digits), out, val_split=0.2, shard_size=100)
    assert result.kept_shards == 2 and result.written_shards == 5
    assert shas(out) == shas(reference[0])
    assert {name: stamp(out / name) for name in untouched} == untouched
    assert not list(out.glob(".partial-*"))


# --- refusals ----------------------------------------------------------------------------------------


def test_refusals(digits, reference, tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(AekitError, match=r"is not empty and is not an aekit pack"):
        pack(str(digits), foreign)
    assert (foreign / "notes.txt").read_text() == "keep me" and len(list(foreign.iterdir())) == 1

    other = tmp_path / "other.npz"
    np.savez(other, images=read_mnist(300))
    with pytest.raises(AekitError, match=r"holds a finished pack of .*digits\.npz.*Pick another OUT, or delete"):
        pack(str(other), reference[0], val_split=0.2, shard_size=100)
    with pytest.raises(AekitError, match=r"holds a finished pack"):
        pack(str(digits), reference[0], val_split=0.2, shard_size=50)  # same source, other options
    for kwargs, words in (
        ({"shard_size": 0}, "--shard-size must be at least 1"),
        ({"workers": -1}, "--workers must be 0"),
        ({"val_split": 1.0}, "--val-split must be between"),
    ):
        with pytest.raises(AekitError, match=words):
            pack(str(digits), tmp_path / "never", **kwargs)
    assert not (tmp_path / "never").exists()
    with pytest.raises(AekitError, match="already a packed dataset"):
        pack(str(reference[0]), tmp_path / "never")


# --- streaming -----------------------------------------------------------------------------------------


def test_train_stream_is_a_pure_function_of_seed_and_epoch(reference):
    packed = PackedDataset.open(reference[0], verify=False)
    source = read_mnist(600)[..., None]
    steps = packed.steps_per_epoch(32, 1)
    assert steps == 15

    def stream(**kwargs):
        return PackedDataset.open(reference[0], verify=False).train_stream(
            32, steps, with_index=True, shuffle_images=128, **kwargs
        )

    images, index = collect(stream(seed=7), 2 * steps)
    again_images, again_index = collect(stream(seed=7), 2 * steps)
    np.testing.assert_array_equal(index, again_index)
    np.testing.assert_array_equal(images, again_images)
    np.testing.assert_array_equal(images, source[index])  # every image is the one its index names
    epoch0, epoch1 = index[:steps].ravel(), index[steps:].ravel()
    assert sorted(epoch0) == sorted(epoch1) == list(range(480))  # each image once per epoch (480 = 15 x 32)
    assert not np.array_equal(epoch0, epoch1)
    assert not np.array_equal(collect(stream(seed=8), steps)[1], index[:steps])

    resumed = collect(stream(seed=7, start_epoch=1, skip_batches=4), steps - 4)[1]
    np.testing.assert_array_equal(resumed, index[steps + 4 :])
    np.testing.assert_array_equal(collect(stream(seed=7, skip_batches=5), 3)[1], index[5:8])

    tf.random.set_seed(1234)  # TensorFlow's global seed does not enter the order
    try:
        np.testing.assert_array_equal(collect(stream(seed=7), steps)[1], index[:steps])
    finally:
        tf.random.set_seed(None)
    plain = next(iter(packed.train_stream(32, steps, seed=7, shuffle_images=128)))
    assert plain.dtype == tf.uint8 and plain.shape == (32, 28, 28, 1)
    np.testing.assert_array_equal(plain.numpy(), images[0])


def test_two_workers_split_the_shards(tmp_path):
    path = tmp_path / "even.npz"
    np.savez(path, images=read_mnist(500))
    pack(str(path), tmp_path / "even", val_split=0.2, shard_size=100)  # 400 train images in 4 shards
    packed = PackedDataset.open(tmp_path / "even", verify=False)
    steps = packed.steps_per_epoch(40, 2)
    assert steps == 10
    seen = []
    for worker in (0, 1):
        ds = packed.train_stream(20, steps, seed=3, num_shards=2, shard_index=worker, with_index=True)
        _, index = collect(ds, 2 * steps)
        assert sorted(index[:steps].ravel()) == sorted(index[steps:].ravel())  # the same 200 images every epoch
        seen.append(set(index[:steps].ravel().tolist()))
        assert len(seen[-1]) == 200
    assert not seen[0] & seen[1] and seen[0] | seen[1] == set(range(400))
    assert seen[0] == set(range(0, 100)) | set(range(200, 300))  # worker 0 reads shards 0 and 2
    with pytest.raises(AekitError, match=r"4 train shard\(s\), which cannot feed 5 workers.*--shard-size 80"):
        packed.train_stream(10, 1, num_shards=5, shard_index=0)
    with pytest.raises(AekitError, match=r"cannot feed 5 workers"):
        packed.steps_per_epoch(50, 5)


# --- image folders ------------------------------------------------------------------------------------


def test_image_folder_packs_in_parallel_like_read_image_folder(tmp_path):
    from PIL import Image

    from aekit.sources import read_image_folder

    folder = tmp_path / "pngs"
    for i, digit in enumerate(read_mnist(60)):
        sub = folder / ("a" if i % 3 else "b")  # nested, so the order is read_image_folder's, not the writing order
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(digit).save(sub / f"{i:03d}.png")
    expected = read_image_folder(folder)
    result = pack(str(folder), tmp_path / "out", shard_size=16, workers=2)
    assert result.workers == 2 and result.manifest.kind == "images"
    packed = PackedDataset.open(tmp_path / "out")
    assert packed.counts == {"train": 54, "val": 6} and len(packed.shards["train"]) == 4
    np.testing.assert_array_equal(packed.read("train"), expected[:54])
    np.testing.assert_array_equal(packed.read("val"), expected[54:])
    assert packed.manifest.validation == "last 0.1 of the source (6 images)"
    serial = pack(str(folder), tmp_path / "serial", shard_size=16)  # workers=0: too few images to start processes
    assert serial.workers == 1 and serial.manifest.identity == result.manifest.identity

    Image.fromarray(np.zeros((20, 20), np.uint8)).save(folder / "b" / "zz-odd.png")
    with pytest.raises(AekitError, match=r"Image b/zz-odd\.png is 20x20 but a/001\.png is 28x28"):
        pack(str(folder), tmp_path / "out2", shard_size=16, workers=2)


# --- the command ------------------------------------------------------------------------------------------


def data_app():
    from aekit.cli.data_cmd import data_app

    return data_app


def test_cli_packs_and_refuses_in_one_line(digits, tmp_path):
    out = tmp_path / "cli"
    result = CliRunner().invoke(data_app(), ["pack", str(digits), str(out), "--shard-size", "200", "--quiet"])
    assert result.exit_code == 0, result.output
    assert f"aekit train --dataset {out}" in result.output and "540" in result.output
    assert PackedDataset.open(out).counts == {"train": 540, "val": 60}
    again = CliRunner().invoke(data_app(), ["pack", str(digits), str(out), "--shard-size", "200", "--quiet"])
    assert again.exit_code == 0 and "already packed" in again.output

    for args, words in (
        (["pack", str(digits), str(tmp_path / "x"), "--shard-size", "0"], "--shard-size must be at least 1"),
        (["pack", str(digits), str(out), "--shard-size", "100"], "holds a finished pack"),
        (["pack", str(tmp_path / "missing.npz"), str(tmp_path / "y")], "does not exist"),
    ):
        result = CliRunner().invoke(data_app(), args)
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 2, result.output
        assert len(lines) == 1 and lines[0].startswith("error:") and words in lines[0], result.output
        assert "Traceback" not in result.output
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_an_output_under_a_file_is_one_line(digits, tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    result = CliRunner().invoke(data_app(), ["pack", str(digits), str(tmp_path / "a-file" / "out"), "--quiet"])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and "not a directory" in lines[0] and "writable folder" in lines[0]
    assert "Traceback" not in result.output
