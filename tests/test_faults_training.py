"""Faults around training: pack workers that must die with their parent, a corrupt record met mid-training,
and resource faults (disk, quota, file size, open files, memory) named for what they are."""

import dataclasses
import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image
from support import assert_one_line_error, needs_tensorflow, run

from aekit.core import runs

TINY_ARGS = ["--filters", "8,16", "--latent-dim", "4", "--gpus", "0", "--batch-size", "8", "--epochs", "1", "--quiet"]


def _noise_npz(path, count=80):
    np.savez(path, images=np.random.default_rng(0).integers(0, 256, (count, 16, 16), dtype=np.uint8))
    return path


# --- 1. decoding processes die with `aekit data pack` -------------------------------------------


def _decoding(process) -> bool:
    """A decoding process that has started decoding (Pillow loaded): its initializer has run."""
    import psutil

    try:
        return any("_imaging" in m.path for m in process.memory_maps())
    except psutil.Error:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_pack_workers_die_with_their_parent(tmp_path, sig):
    psutil = pytest.importorskip("psutil")
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8)).save(tmp_path / "one.png")
    for i in range(400):  # hard links: 400 images at no cost; --shard-size 1 keeps the pack busy for many seconds
        os.link(tmp_path / "one.png", folder / f"i{i:04d}.png")
    out = tmp_path / "pack"
    args = [sys.executable, "-m", "aekit.cli", "data", "pack", folder, out, "--workers", "2", "--shard-size", "1", "--quiet"]
    proc = subprocess.Popen([str(a) for a in args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        parent, deadline, children = psutil.Process(proc.pid), time.monotonic() + 60, []
        while time.monotonic() < deadline and proc.poll() is None:
            children = parent.children(recursive=True)
            if sum(map(_decoding, children)) >= 2:
                break
            time.sleep(0.1)
        assert proc.poll() is None and sum(map(_decoding, children)) >= 2, "the pack ended before its workers ran"
        os.kill(proc.pid, sig)
        code = proc.wait(timeout=20)
        _, alive = psutil.wait_procs(children, timeout=10)
        assert alive == [], alive
        assert code == (-signal.SIGKILL if sig == signal.SIGKILL else 128 + signal.SIGTERM), proc.stderr.read()
        if sig == signal.SIGTERM:  # stopped cleanly: no half-written shard left
            assert not [p for p in out.iterdir() if p.name.startswith(".partial-")]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --- 2. a record whose checksum fails, met mid-training ------------------------------------------


@needs_tensorflow
def test_corrupt_record_mid_training_is_one_line_naming_shard_and_record(tmp_path):
    from aekit.data.pack.reader import PackedDataset
    from aekit.data.pack.schema import identity_of

    pack = tmp_path / "pack"
    assert run("data", "pack", _noise_npz(tmp_path / "src.npz"), pack, "--shard-size", "16", "--quiet")[0] == 0
    manifest = json.loads((pack / "dataset.json").read_text())
    record = manifest["splits"]["train"]["shards"][1]
    shard = pack / record["file"]
    data = bytearray(shard.read_bytes())
    data[3 * (len(data) // 16) + 100] ^= 0xFF  # inside record 3's image bytes: only its CRC can tell
    shard.write_bytes(bytes(data))
    # As the tester did: the manifest's sha256 and identity made again, so only the record's CRC catches it.
    record["sha256"] = hashlib.sha256(data).hexdigest()
    opened = PackedDataset.open(pack, verify=False)
    splits = {
        s: [dataclasses.replace(r, sha256=record["sha256"]) if r.file == record["file"] else r for r in rs]
        for s, rs in opened.manifest.splits.items()
    }
    manifest["identity"] = identity_of(splits)
    (pack / "dataset.json").write_text(json.dumps(manifest))

    code, lines = run("train", "--dataset", pack, *TINY_ARGS, "-o", tmp_path / "run")
    assert_one_line_error(code, lines, record["file"], "record 3 ", "image 19 of train", "re-pack", "aekit data check")
    assert not runs.is_finished(tmp_path / "run")


# --- 3. resource faults while saving a checkpoint -----------------------------------------------


def _tf_error(kind, text):
    import tensorflow as tf

    return getattr(tf.errors, kind)(None, None, text)


FAULTS = [  # (what the save raises, words the error line must hold)
    (lambda: OSError(errno.ENOSPC, "No space left on device", "ckpt-1.index"), ["disk is full", "Free space", "-o"]),
    (lambda: OSError(errno.EDQUOT, "Disk quota exceeded"), ["quota", "Free space"]),
    (lambda: OSError(errno.EFBIG, "File too large"), ["file-size limit", "ulimit -f"]),
    (lambda: OSError(errno.EMFILE, "Too many open files"), ["too many files open", "ulimit -n"]),
    (lambda: _tf_error("ResourceExhaustedError", "ckpt-1_temp/part-0.data; No space left on device"), ["disk is full"]),
    (lambda: _tf_error("OutOfRangeError", "ckpt-1_temp/part-0.data; File too large"), ["ulimit -f"]),
    (lambda: _tf_error("ResourceExhaustedError", "ckpt-1.index; Too many open files"), ["ulimit -n"]),
    (lambda: _tf_error("ResourceExhaustedError", "OOM when allocating tensor with shape[8,16]"), ["Out of memory", "--filters"]),
]


@needs_tensorflow
@pytest.mark.parametrize("fault, words", FAULTS)
def test_a_resource_fault_while_checkpointing_is_named_for_what_it_is(tmp_path, monkeypatch, fault, words):
    import tensorflow as tf

    def save(self, *args, **kwargs):
        raise fault()

    monkeypatch.setattr(tf.train.CheckpointManager, "save", save)
    code, lines = run("train", "--dataset", _noise_npz(tmp_path / "src.npz"), *TINY_ARGS, "-o", tmp_path / "run")
    assert_one_line_error(code, lines, "saving a checkpoint" if "Out of memory" not in words else "", *words)
    if "Out of memory" not in words:
        assert "Out of memory" not in lines[0] and "--filters" not in lines[0]
    assert not runs.is_finished(tmp_path / "run")  # not left looking finished


# --- 4. two packs into one folder ----------------------------------------------------------------


@needs_tensorflow
def test_a_second_pack_into_a_folder_being_packed_fails_at_once_and_writes_nothing(tmp_path):
    from aekit.data.pack.writer import PackLock

    out = tmp_path / "pack"
    source = _noise_npz(tmp_path / "src.npz")
    with PackLock(str(out)):  # another `aekit data pack` holds it
        code, lines = run("data", "pack", source, out, "--quiet")
        assert_one_line_error(code, lines, str(out), "being packed by another aekit data pack", f"pid {os.getpid()}")
        assert not out.exists()
    assert run("data", "pack", source, out, "--quiet")[0] == 0  # released: packs, and leaves no lock behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pack", "src.npz"]


@needs_tensorflow
def test_a_full_disk_while_packing_is_named_and_the_next_pack_continues(tmp_path, monkeypatch):
    import aekit.data.pack.writer as writer

    real, calls = writer._write_shard, []

    def full_after_two(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(*args, **kwargs)

    monkeypatch.setattr(writer, "_write_shard", full_after_two)
    out, source = tmp_path / "pack", _noise_npz(tmp_path / "src.npz")
    code, lines = run("data", "pack", source, out, "--shard-size", "16", "--quiet")
    assert_one_line_error(code, lines, "the disk is full", "continues from the shards already written")
    monkeypatch.setattr(writer, "_write_shard", real)
    assert run("data", "pack", source, out, "--shard-size", "16", "--quiet")[0] == 0
    assert (out / "dataset.json").is_file()
