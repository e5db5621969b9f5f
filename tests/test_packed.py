"""Packed datasets (aekit.data.pack, `aekit data pack`): exact round trips, integrity, resume, streaming.

Small on purpose: a few hundred real MNIST digits in shards of 100, a few dozen PNGs.
"""

import hashlib
import json
import os
import re
import shlex
import shutil

import numpy as np
import pytest
import tensorflow as tf
from support import read_mnist
from typer.testing import CliRunner

from aekit import AekitError
from aekit.core.splits import split_indices
from aekit.data.loading import load_data
from aekit.data.pack.reader import PackedDataset, is_packed
from aekit.data.pack.schema import MANIFEST, STATE
from aekit.data.pack.writer import pack


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
    assert data["validation"] == "seeded random 0.2 of the source (120 images, seed 0)" and data["kind"] == "npz"
    assert sorted(p.name for p in out.iterdir()) == sorted([MANIFEST, *shas(out)])  # no state or partial files left
    assert result.written_shards == 7 and result.written_images == 600 and not result.already_packed

    packed = PackedDataset.open(out)
    assert packed.counts == {"train": 480, "val": 120} and packed.image_shape == (28, 28, 1) and is_packed(out)
    assert packed.identity == data["identity"] == result.manifest.identity
    split = split_indices(600, 0.2, seed=0)  # the rule training uses on the same source
    np.testing.assert_array_equal(packed.read("train"), source[split.train])
    np.testing.assert_array_equal(packed.read("val"), source[split.val])
    np.testing.assert_array_equal(packed.read("val", limit=7), source[split.val[:7]])
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
    np.testing.assert_array_equal(packed.read("train"), images[split_indices(150, 0.2).train, ..., None])
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
    np.testing.assert_array_equal(packed.read("val"), read_mnist(600)[split_indices(600, 0.2).val, ..., None])
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
    source = read_mnist(600)[split_indices(600, 0.2).train, ..., None]  # the train split, in its stored order
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

    from aekit.core.sources import read_image_folder

    folder = tmp_path / "pngs"
    for i, digit in enumerate(read_mnist(60)):
        sub = folder / ("a" if i % 3 else "b")  # nested, so the order is read_image_folder's, not the writing order
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(digit).save(sub / f"{i:03d}.png")
    expected = load_data(str(folder))  # the same split, stratified over a/ and b/
    result = pack(str(folder), tmp_path / "out", shard_size=16, workers=2)
    assert result.workers == 2 and result.manifest.kind == "images"
    packed = PackedDataset.open(tmp_path / "out")
    assert packed.counts == {"train": 54, "val": 6} and len(packed.shards["train"]) == 4
    np.testing.assert_array_equal(packed.read("train"), expected.train)
    np.testing.assert_array_equal(packed.read("val"), expected.val)
    assert packed.manifest.validation == expected.validation and "stratified over 2 sub-folders" in expected.validation
    assert read_image_folder(folder).shape == (60, 28, 28, 1)
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


# --- hostile input: dataset.json, shards, signals, wording ----------------------------------------------


def copy_of(reference, tmp_path, name="pack"):
    out = tmp_path / name
    shutil.copytree(reference[0], out)
    return out


def edit_manifest(out, mutate):
    data = json.loads((out / MANIFEST).read_text())
    mutate(data)
    (out / MANIFEST).write_text(json.dumps(data))


def resign(data, out):
    """Makes dataset.json's sha256s and identity those of the shards now in `out` (a forger's edit)."""
    from aekit.data.pack.schema import SPLITS, ShardRecord, identity_of

    for split in SPLITS:
        for shard in data["splits"][split]["shards"]:
            raw = (out / shard["file"]).read_bytes()
            shard["sha256"], shard["bytes"] = hashlib.sha256(raw).hexdigest(), len(raw)
    data["identity"] = identity_of({s: [ShardRecord.from_json(r) for r in data["splits"][s]["shards"]] for s in SPLITS})


def refused_everywhere(out, words, verify=(True, False)):
    """PackedDataset.open (both ways), load_data (what training opens) and `aekit data check` all refuse in one line."""
    from aekit.data.loading import load_data

    for check in verify:
        with pytest.raises(AekitError, match=words) as err:
            PackedDataset.open(out, verify=check)
        assert "\n" not in str(err.value)
    with pytest.raises(AekitError, match=words):
        load_data(str(out))
    result = CliRunner().invoke(data_app(), ["check", str(out)])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert "Traceback" not in result.output
    return str(err.value)


def train_shard(data, index=0):
    return data["splits"]["train"]["shards"][index]


@pytest.mark.parametrize(
    "mutate, words",
    [
        (lambda d: d["pixel_scaling"].update(divide_by=1.0), r"divide_by is 1\.0 but pixel_max None; they must agree"),
        (lambda d: d["pixel_scaling"].update(divide_by=0), "divide_by is 0;"),
        (lambda d: d["pixel_scaling"].update(divide_by=float("nan")), "divide_by is nan;"),
        (lambda d: d["pixel_scaling"].update(divide_by="255"), "divide_by is '255';"),
        (lambda d: train_shard(d).update(images=0), r"train-00000-of-00005\.tfrecord's images is 0, not a positive whole"),
        (lambda d: train_shard(d).update(images=-5), "images is -5, not a positive whole number"),
        (lambda d: train_shard(d).update(images=99.5), "images is 99.5, not a positive whole number"),
        (lambda d: d["splits"]["train"].update(images=999), "train says 999 images but its shards hold 480"),
        (lambda d: d["splits"].update(val={"images": 0, "shards": []}), "val has no shards; a pack holds at least one val"),
        (lambda d: train_shard(d, 1).update(images=50), r"holds 50 images, but the pack's shard_size is 100"),
        (lambda d: train_shard(d).update(file="../train-00000-of-00005.tfrecord"), "not a plain file name inside the pack"),
        (lambda d: train_shard(d).update(file="/etc/passwd"), "'/etc/passwd' is not a plain file name"),
        (lambda d: train_shard(d).update(file="sub\\train.tfrecord"), "not a plain file name"),
        (lambda d: d["splits"]["train"]["shards"].__setitem__(1, train_shard(d)), "is listed twice"),
        (lambda d: d["splits"]["val"]["shards"].__setitem__(0, train_shard(d)), "is listed twice"),
        (lambda d: train_shard(d).update(file="train-00000-of-00009.tfrecord"), "shard 0 is named .* not train-00000-of-00005"),
        (lambda d: train_shard(d).update(sha256="abc"), "not 64 hex digits"),
        (lambda d: d.update(image_shape=[1000000, 1000000, 1]), r"H x W from 1 to 89,478,485 pixels and C of 1, 3 or 4"),
        (lambda d: d.update(image_shape=[28, 28]), r"image_shape \[28, 28\] is not \[H, W, C\]"),
        (lambda d: d.update(image_shape=[28, 28, 0]), r"image_shape \[28, 28, 0\]"),
        (lambda d: d.update(image_shape=["28", 28, 1]), r"image_shape \['28', 28, 1\]"),
        (lambda d: d.update(val_split=0), "val_split is 0, not a number between 0 and 1"),
        (lambda d: d.update(val_split=float("nan")), "val_split is nan"),
        (lambda d: d.update(val_split=1.5), "val_split is 1.5"),
        (lambda d: d["options"].update(val_split=1.0), r"options\.val_split is 1\.0"),
        (lambda d: d["options"].update(shard_size=0), r"options\.shard_size is 0"),
        (lambda d: d.update(note={"x": 1}), "note is .* not text"),
    ],
)
def test_a_hand_edited_manifest_is_refused(reference, tmp_path, mutate, words):
    out = copy_of(reference, tmp_path)
    edit_manifest(out, mutate)
    message = refused_everywhere(out, "not a valid aekit packed-dataset description .*" + words)
    readable = f"{reference[1].manifest.options.dataset} NEW_OUT --shard-size 100 --val-split 0.2"  # its options, when sound
    assert message.endswith(f"Re-pack into a new folder: aekit data pack {'SOURCE NEW_OUT' if 'options' in words else readable}.")


@pytest.mark.parametrize(
    "mutate, words",
    [
        (lambda d: d.update(image_shape=[28, 28, 3]), r"is 83,\d{3} bytes, not the 240,\d{3} that 100 images of 28x28x3 take"),
        (lambda d: (train_shard(d, 4).update(images=90), d["splits"]["train"].update(images=490)), "that 90 images of 28x28x1"),
        (lambda d: (train_shard(d, 4).update(images=70), d["splits"]["train"].update(images=470)), "that 70 images of 28x28x1"),
    ],
)
def test_a_manifest_that_does_not_describe_its_shards_is_refused_then_repaired(digits, reference, tmp_path, mutate, words):
    out = copy_of(reference, tmp_path)
    edit_manifest(out, mutate)
    message = refused_everywhere(out, words)
    assert (
        f"re-pack with `aekit data pack {reference[1].manifest.options.dataset} {out} --shard-size 100 --val-split 0.2`"
        in message
    )
    result = pack(str(digits), out, val_split=0.2, shard_size=100)  # the fix, as printed: the description is rewritten
    assert not result.already_packed and result.kept_shards + result.written_shards == 7
    assert json.loads((out / MANIFEST).read_text()) == json.loads((reference[0] / MANIFEST).read_text())
    assert PackedDataset.open(out).counts == {"train": 480, "val": 120}


def test_shards_swapped_under_a_resigned_manifest_are_refused_then_repaired(digits, reference, tmp_path):
    """Split assignment: every shard's first record must be the image its place in its split says."""
    out = copy_of(reference, tmp_path)
    a, b = out / "train-00002-of-00005.tfrecord", out / "train-00003-of-00005.tfrecord"  # equal sizes (indices 200-399)
    first, second = a.read_bytes(), b.read_bytes()
    a.write_bytes(second)
    b.write_bytes(first)
    edit_manifest(out, lambda d: resign(d, out))
    refused_everywhere(out, r"train-00002-of-00005\.tfrecord starts with image 300 of 784 bytes, not image 200 of 784 bytes")
    result = pack(str(digits), out, val_split=0.2, shard_size=100)
    assert result.written_shards == 2 and shas(out) == shas(reference[0])


@pytest.mark.parametrize(
    "forgery, words", [("length", r"image 110 is 783 bytes, not the 784 of a 28x28x1"), ("index", "numbered 999")]
)
def test_the_full_check_reads_every_record(reference, tmp_path, forgery, words):
    out = copy_of(reference, tmp_path)
    shard = out / "train-00001-of-00005.tfrecord"
    records = [tf.train.Example.FromString(r.numpy()) for r in tf.data.TFRecordDataset(str(shard))]
    for number, example in enumerate(records):  # the shard keeps its size, its first record and its count
        image, index = example.features.feature["image"].bytes_list.value, example.features.feature["index"].int64_list.value
        if forgery == "length" and number in (10, 11):
            image[0] = image[0][:-1] if number == 10 else image[0] + b"\0"
        if forgery == "index" and number == 50:
            index[0] = 999
    with tf.io.TFRecordWriter(str(shard)) as writer:
        for example in records:
            writer.write(example.SerializeToString(deterministic=True))
    edit_manifest(out, lambda d: resign(d, out))
    packed = PackedDataset.open(out)  # sizes, sha256s and first records all agree ...
    fast = CliRunner().invoke(data_app(), ["check", str(out), "--fast"])
    assert fast.exit_code == 0, fast.output
    result = CliRunner().invoke(data_app(), ["check", str(out)])  # ... reading every record does not
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and "train-00001-of-00005.tfrecord" in lines[0], result.output
    assert re.search(words, lines[0]) and "re-pack into a new folder" in lines[0], lines[0]
    if forgery == "length":  # the readers refuse the odd record too, in one line
        with pytest.raises(AekitError, match=r"holds an image that is not 28x28x1 \(784 bytes\)") as err:
            packed.read("train")
        assert "\n" not in str(err.value)


def test_a_full_check_counts_records(reference):
    packed = PackedDataset.open(reference[0])
    assert packed.check_records() == 600
    result = CliRunner().invoke(data_app(), ["check", str(reference[0])])
    assert result.exit_code == 0 and "match their sha256 and hold those images" in result.output, result.output


def test_the_repack_hint_is_a_command_that_works(digits, reference, tmp_path, monkeypatch):
    out = copy_of(reference, tmp_path, "damaged")
    (out / "val-00001-of-00002.tfrecord").unlink()
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(data_app(), ["check", "./damaged/"])
    assert result.exit_code == 2, result.output
    command = re.search(r"re-pack with `aekit data (pack [^`]+)`", result.output).group(1)
    assert command == f"pack {digits} ./damaged/ --shard-size 100 --val-split 0.2"  # the OUT given, the options used
    repaired = CliRunner().invoke(data_app(), [*shlex.split(command), "--quiet"])
    assert repaired.exit_code == 0 and "kept 6 finished shard(s), wrote 1" in repaired.output, repaired.output
    assert PackedDataset.open(out).identity == reference[1].manifest.identity


def test_decoding_processes_start_with_ctrl_c_held_and_ignore_it():
    """Ctrl-C reaches every process of the terminal's group: a decoding process still importing must not
    print a KeyboardInterrupt traceback. It starts with SIGINT blocked, then ignores it (the initializer)."""
    import signal
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from aekit.data.pack.sources import _ignore_interrupts, _ordered_map

    executor = ProcessPoolExecutor(1, mp_context=get_context("spawn"), initializer=_ignore_interrupts)
    try:
        [blocked] = _ordered_map(executor, signal.pthread_sigmask, [(signal.SIG_BLOCK, [])], lookahead=1)
        [handler] = _ordered_map(executor, signal.getsignal, [(signal.SIGINT,)], lookahead=1)
    finally:
        executor.shutdown()
    assert signal.SIGINT in blocked and handler == signal.SIG_IGN
    assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, [])  # this process takes Ctrl-C again


def test_pack_and_check_name_their_own_arguments(tmp_path):
    (tmp_path / "notes.txt").write_text("not a pack")
    for args, words, wrong in (
        (["pack", "surely_not_a_source", str(tmp_path / "out")], "SOURCE 'surely_not_a_source' is neither", "--dataset"),
        (
            ["pack", str(tmp_path / "missing.npz"), str(tmp_path / "out")],
            f"SOURCE {tmp_path / 'missing.npz'} does not",
            "--dataset",
        ),
        (["check", str(tmp_path / "notes.txt")], "notes.txt is a file, not a pack folder", "does not exist"),
    ):
        result = CliRunner().invoke(data_app(), args)
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 2 and len(lines) == 1 and words in lines[0] and wrong not in lines[0], result.output
    assert not (tmp_path / "out").exists()
