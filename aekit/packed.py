"""Datasets larger than memory: pack a source once into TFRecord shards, then stream them.

`pack` reads any source `aekit train --dataset` reads, with the same train/validation split, and
writes uint8 images into shards of `shard_size` images:

    OUT/train-00000-of-00012.tfrecord ... OUT/val-00000-of-00002.tfrecord
    OUT/dataset.json        written last: shapes, counts, every shard's size and sha256 (`PackManifest`)

One `tf.train.Example` per image: `image` (its raw uint8 bytes, H*W*C of them) and `index` (its position
in its split). Image folders are decoded in parallel worker processes, chunk by chunk, so a folder far
larger than memory streams through; arrays, IDX files and TFDS datasets are loaded as
`aekit.data.load_data` loads them. Every file is written under a `.partial-` name and renamed when
complete; `.pack-state.json` records the finished shards after each one, so running the same `pack`
again after a crash continues where it stopped (and re-checks what it keeps). All paths go through
`tf.io.gfile`, so OUT may be any file system TensorFlow reaches (gs://, ...); sources are local files.

`PackedDataset.open(OUT)` checks the shards against dataset.json and streams them with tf.data:
`train_stream` (endless, epoch order a pure function of (seed, epoch), sharded by file across
workers), `val_batches` (in order) and `read` (the first images of a split, for pictures and calibration).

    >>> pack("photos/", "packed/photos", shard_size=2048)
    >>> data = PackedDataset.open("packed/photos")
    >>> batches = data.train_stream(64, data.steps_per_epoch(64, 1))   # uint8 (64, H, W, C) batches
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import re
import shlex
import signal
import struct
import sys
import time
import types
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from aekit.errors import AekitError
from aekit.lazy import tf
from aekit.pixels import UINT8_MAX, PixelScaling
from aekit.sources import MAX_IMAGE_PIXELS

FORMAT = "aekit-packed"
VERSION = 1
STATE_FORMAT = "aekit-pack-state"
MANIFEST = "dataset.json"
STATE = ".pack-state.json"
PARTIAL = ".partial-"
SPLITS = ("train", "val")
SHARD_SUFFIX = ".tfrecord"
DEFAULT_SHARD_SIZE = 4096
DECODE_CHUNK = 256  # image files per task sent to a decoding process ...
DECODE_CHUNK_BYTES = 16 << 20  # ... fewer when their pixels would take more than this
# "process" (spawned processes) or "thread"; benchmarks/pack_speed.py --threads measures both. On 28x28 PNGs
# threads ran no faster than decoding in-process (Pillow holds the GIL for most of a small image's decode).
DECODE_EXECUTOR = "process"
SHUFFLE_IMAGES = 8192  # at most this many images per shuffle block ...
SHUFFLE_BYTES = 64 << 20  # ... and at most this many bytes of them (a block is held ~3 times while shuffled)
HASH_CHUNK = 8 << 20
AUTO_PARALLEL_IMAGES = 10_000  # workers=0 decodes smaller folders in-process: starting processes would cost more
CHANNELS = (1, 3, 4)  # what aekit's sources give (aekit.sources.check_shape)
RECORD_FRAMING = 16  # a TFRecord's bytes around its payload: length (8), its crc (4), the payload's crc (4)
SHA256_TEXT = re.compile("[0-9a-f]{64}")
CHECK_BATCH = 4096  # records per batch when `PackedDataset.check_records` reads a shard

Progress = Callable[[int, int], None]


# --- dataset.json ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PackOptions:
    """What a pack was asked for; the same options into the same folder continue or confirm that pack.

    Attributes:
        dataset: the source as `--dataset` names it (a resolved path, or a TFDS/bundled name).
        val_split: the held-out fraction for single-split sources.
        shard_size: images per shard.
        fingerprint: sha256 over the source files' names, sizes and mtimes (None for TFDS and the
            bundled sample), so a source changed since it was packed is noticed.
        seed, val_from_end: the split rule (aekit.splits) for single-split sources.
    """

    dataset: str
    val_split: float
    shard_size: int
    fingerprint: str | None = None
    seed: int = 0
    val_from_end: bool = False

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> PackOptions:
        """Raises ValueError/KeyError/TypeError for anything `to_json` does not write."""
        dataset, fingerprint = data["dataset"], data.get("fingerprint")
        if not isinstance(dataset, str) or not dataset:
            raise ValueError(f"options.dataset is {dataset!r}, not a source name")
        if fingerprint is not None and not isinstance(fingerprint, str):
            raise ValueError(f"options.fingerprint is {fingerprint!r}, not a sha256")
        seed = data.get("seed", 0)
        # Packs written before seeded splits held out the last fraction.
        from_end = data.get("val_from_end", True)
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
            raise ValueError(f"options.seed is {seed!r}, not a seed")
        if not isinstance(from_end, bool):
            raise ValueError(f"options.val_from_end is {from_end!r}, not true or false")
        return cls(
            dataset,
            _fraction(data["val_split"], "options.val_split"),
            _count(data["shard_size"], "options.shard_size"),
            fingerprint,
            seed,
            from_end,
        )

    def same_request(self, other: PackOptions) -> bool:
        return self.request() == other.request()

    def request(self) -> tuple:
        return (self.dataset, self.val_split, self.shard_size, self.seed, self.val_from_end)

    def describe(self) -> str:
        split = "the last fraction" if self.val_from_end else f"seed {self.seed}"
        return f"val_split {self.val_split:g} ({split}), shard_size {self.shard_size}"


@dataclass(frozen=True)
class ShardRecord:
    """One finished shard: its file name (inside the pack folder), image count, sha256 and size."""

    file: str
    images: int
    sha256: str
    bytes: int
    high: int | None = None  # its brightest stored value, for the pixel rule (None: packed before it was recorded)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> ShardRecord:
        """Raises ValueError/KeyError/TypeError for anything `to_json` does not write."""
        file, sha256 = _plain_name(data["file"]), data["sha256"]
        if not isinstance(sha256, str) or not SHA256_TEXT.fullmatch(sha256):
            raise ValueError(f"shard {file} has sha256 {sha256!r}, not 64 hex digits")
        high = data.get("high")
        if high is not None and (isinstance(high, bool) or not isinstance(high, int) or not 0 <= high <= UINT8_MAX):
            raise ValueError(f"shard {file} has high {high!r}, not a uint8 value")
        return cls(
            file,
            _count(data["images"], f"shard {file}'s images"),
            sha256,
            _count(data["bytes"], f"shard {file}'s bytes"),
            high,
        )


@dataclass
class PackManifest:
    """The schema of dataset.json, in one place.

    Attributes:
        image_shape: [H, W, C] of every image.
        source, kind, validation, val_split: as `aekit.data.DataSplits` describes the source.
        splits: {"train": {"images": N, "shards": [ShardRecord...]}, "val": {...}}.
        options: the PackOptions the pack was made with.
        stored_as: how source pixels became the stored uint8 ("as-is", "round(x * 255)", ...).
        source_dtype: the source's own dtype.
        note: set when the source is not what was asked for (aekit.data's offline fallback).
        identity: sha256 over every shard's split, name and sha256 (`identity_of`).
    """

    image_shape: list[int]
    source: str
    kind: str
    validation: str
    val_split: float
    splits: dict[str, list[ShardRecord]]
    options: PackOptions
    stored_as: str = "as-is"
    source_dtype: str = "uint8"
    note: str | None = None
    identity: str = ""
    dtype: str = "uint8"
    pixel_scaling: PixelScaling = field(default_factory=lambda: PixelScaling(UINT8_MAX))

    def count(self, split: str) -> int:
        return sum(record.images for record in self.splits[split])

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "version": VERSION,
            "image_shape": list(self.image_shape),
            "dtype": self.dtype,
            "pixel_scaling": self.pixel_scaling.to_json(),
            "source": self.source,
            "kind": self.kind,
            "validation": self.validation,
            "val_split": self.val_split,
            "stored_as": self.stored_as,
            "source_dtype": self.source_dtype,
            "note": self.note,
            "options": self.options.to_json(),
            "splits": {
                split: {"images": self.count(split), "shards": [r.to_json() for r in records]}
                for split, records in self.splits.items()
            },
            "identity": self.identity,
        }

    @classmethod
    def from_json(cls, data: dict) -> PackManifest:
        """Raises ValueError/KeyError/TypeError for anything but a version-1 aekit pack description.

        Every field that decides what training sees is held to what `pack` writes: the uint8 dtype and
        its divide-by-255 scaling, an image_shape aekit's sources can give, plain shard names in their
        order, every shard's count (each but a split's last holds shard_size), each split's total, and
        the identity. `PackedDataset.open` then holds the counts and image_shape to the shards' sizes
        and first records.
        """
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"its format is not {FORMAT!r}")
        if data.get("version") != VERSION:
            raise ValueError(f"version {data.get('version')!r}, this aekit reads version {VERSION}")
        if data.get("dtype") != "uint8":
            raise ValueError(f"dtype {data.get('dtype')!r}, expected 'uint8'")
        shape = _image_shape(data["image_shape"])
        scaling = data["pixel_scaling"]
        divide_by = scaling.get("divide_by") if isinstance(scaling, dict) else None
        pixel_max = scaling.get("pixel_max") if isinstance(scaling, dict) else None
        if isinstance(divide_by, bool) or not isinstance(divide_by, int | float) or not 0 < divide_by <= UINT8_MAX:
            raise ValueError(f"pixel_scaling divide_by is {divide_by!r}; packs store uint8, divided by at most {UINT8_MAX:g}")
        if divide_by != UINT8_MAX and pixel_max != divide_by:
            raise ValueError(f"pixel_scaling divide_by is {divide_by!r} but pixel_max {pixel_max!r}; they must agree")
        options = PackOptions.from_json(data["options"])
        splits = {split: _split_records(data["splits"], split, options.shard_size) for split in SPLITS}
        seen: set[str] = set()
        for split in SPLITS:
            for index, record in enumerate(splits[split]):
                if record.file in seen:
                    raise ValueError(f"shard {record.file} is listed twice")
                seen.add(record.file)
                expected = shard_name(split, index, len(splits[split]))
                if record.file != expected:
                    raise ValueError(f"{split} shard {index} is named {record.file}, not {expected}")
        text = {key: data[key] for key in ("source", "kind", "validation", "identity")}
        text.update({key: data.get(key, default) for key, default in (("stored_as", "as-is"), ("source_dtype", "uint8"))})
        for key, value in text.items():
            if not isinstance(value, str):
                raise ValueError(f"{key} is {value!r}, not text")
        note = data.get("note")
        if note is not None and not isinstance(note, str):
            raise ValueError(f"note is {note!r}, not text")
        manifest = cls(
            image_shape=shape,
            splits=splits,
            options=options,
            val_split=_fraction(data["val_split"], "val_split"),
            note=note,
            pixel_scaling=PixelScaling(float(divide_by), float(pixel_max) if pixel_max is not None else None),
            **text,
        )
        for split in SPLITS:
            listed = data["splits"][split]["images"]
            if isinstance(listed, bool) or listed != manifest.count(split):
                raise ValueError(f"{split} says {listed!r} images but its shards hold {manifest.count(split)}")
        if manifest.identity != identity_of(splits):
            raise ValueError("its identity does not match its shards' sha256s")
        return manifest


def identity_of(splits: dict[str, list[ShardRecord]]) -> str:
    """sha256 over 'split/file sha256' lines of every shard, train then val: equal identity, equal data.

    The rest of what training sees is not hashed but held to the shards when a pack is opened: the
    split of every shard (its name), the image_shape and counts (the shards' sizes and first records)
    and the pixel scaling (always uint8 / 255).
    """
    lines = "".join(f"{split}/{r.file} {r.sha256}\n" for split in SPLITS for r in splits.get(split, []))
    return hashlib.sha256(lines.encode()).hexdigest()


def _count(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} is {value!r}, not a positive whole number")
    return value


def _fraction(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 < value < 1.0:  # NaN fails too
        raise ValueError(f"{what} is {value!r}, not a number between 0 and 1 (exclusive)")
    return float(value)


def _plain_name(name) -> str:
    """A shard's file name as dataset.json lists it: a plain name inside the pack folder, never a path."""
    if (
        not isinstance(name, str)
        or name in ("", ".")
        or any(part in name for part in ("/", "\\", "..", ":", "\0"))
        or os.path.isabs(name)
    ):
        raise ValueError(f"shard file {name!r} is not a plain file name inside the pack folder")
    return name


def _image_shape(value) -> list[int]:
    """[H, W, C] as `pack` writes it: whole numbers, C in CHANNELS, H x W at most MAX_IMAGE_PIXELS."""
    if (
        not isinstance(value, list)
        or len(value) != 3
        or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in value)
        or value[0] * value[1] > MAX_IMAGE_PIXELS
        or value[2] not in CHANNELS
    ):
        raise ValueError(
            f"image_shape {value!r} is not [H, W, C] with H x W from 1 to {MAX_IMAGE_PIXELS:,} pixels and C of 1, 3 or 4"
        )
    return list(value)


def _split_records(splits: dict, split: str, shard_size: int) -> list[ShardRecord]:
    """A split's shard records; ValueError unless it has some, each but the last holding exactly shard_size."""
    entry = splits[split]
    shards = entry["shards"] if isinstance(entry, dict) else None
    if not isinstance(shards, list):
        raise ValueError(f"{split} lists no shards")
    records = [ShardRecord.from_json(r) for r in shards]
    if not records:
        raise ValueError(f"{split} has no shards; a pack holds at least one {split} image")
    for index, record in enumerate(records):
        last = index == len(records) - 1
        if record.images > shard_size or (not last and record.images != shard_size):
            raise ValueError(
                f"{split} shard {record.file} holds {record.images} images, but the pack's shard_size is {shard_size} "
                "(every shard but a split's last holds exactly that many)"
            )
    return records


def shard_name(split: str, index: int, count: int) -> str:
    return f"{split}-{index:05d}-of-{count:05d}{SHARD_SUFFIX}"


# --- pack ------------------------------------------------------------------------------------


@dataclass
class PackResult:
    """What `pack` did.

    Attributes:
        folder: the pack folder.
        manifest: its dataset.json.
        already_packed: the folder already held this pack, intact: nothing was written.
        written_shards, kept_shards: shards written now, and shards from an earlier run kept after
            their sha256 checked out (a resumed or repaired pack).
        written_images: images decoded and written now.
        seconds: wall time of this call.
        workers: decoding processes used (1: decoded in this process; 0: the source needed none).
    """

    folder: str
    manifest: PackManifest
    already_packed: bool
    written_shards: int
    kept_shards: int
    written_images: int
    seconds: float
    workers: int

    @property
    def bytes(self) -> int:
        return sum(r.bytes for records in self.manifest.splits.values() for r in records)

    @property
    def images_per_sec(self) -> float:
        return self.written_images / self.seconds if self.seconds > 0 else 0.0

    def describe(self) -> dict:
        return {
            "folder": self.folder,
            "already_packed": self.already_packed,
            "train_images": self.manifest.count("train"),
            "val_images": self.manifest.count("val"),
            "train_shards": len(self.manifest.splits["train"]),
            "val_shards": len(self.manifest.splits["val"]),
            "bytes": self.bytes,
            "written_shards": self.written_shards,
            "kept_shards": self.kept_shards,
            "written_images": self.written_images,
            "seconds": round(self.seconds, 3),
            "images_per_sec": round(self.images_per_sec, 1),
            "workers": self.workers,
            "identity": self.manifest.identity,
        }


def _file_errors(function):
    """File system errors (TensorFlow's or the OS's) from `function(source, out, ...)` as one AekitError line."""

    @functools.wraps(function)
    def wrapper(source, out, *args, **kwargs):
        tf = _tf()
        try:
            return function(source, out, *args, **kwargs)
        except (tf.errors.OpError, OSError) as exc:
            text = getattr(exc, "message", None) or getattr(exc, "strerror", None) or str(exc)
            raise AekitError(
                f"Cannot write the pack in {out} ({str(text).splitlines()[0][:160]}). Pass a writable folder as OUT."
            ) from None

    return wrapper


@_file_errors
def pack(
    source: str,
    out: str | Path,
    *,
    val_split: float = 0.1,
    data_dir: str | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    workers: int = 0,
    on_progress: Progress | None = None,
    seed: int = 0,
    val_from_end: bool = False,
    pixel_max: float | None = None,
) -> PackResult:
    """Packs a training source into uint8 TFRecord shards plus dataset.json in `out`.

    Args:
        source: anything `aekit train --dataset` takes: a TFDS name, a folder of IDX files or of
            PNG/JPEG images, a .npz/.npy file, `bundled-mnist-sample`.
        out: the pack folder (local or any tf.io.gfile file system). New, empty, or holding an
            unfinished or finished pack of the same source and options.
        val_split: for single-split sources, the fraction held out for validation, drawn by
            aekit.splits' rule (seeded, stratified over an image folder's sub-folders).
        data_dir: TFDS data directory.
        shard_size: images per shard (the last of a split may hold fewer).
        workers: processes decoding an image folder; 1 = this process only; 0 = one per core for folders
            of AUTO_PARALLEL_IMAGES or more (starting a process costs ~0.25 s), else this process.
        on_progress: called with (images done, images in all) after each chunk written.
        seed, val_from_end: the split rule (aekit.splits): the draw's seed, or the last fraction.
        pixel_max: the source's white level when it is not 0-255 or 0-1 (aekit.pixels). Shards hold
            uint8; an image folder is stored as it is and its scaling decided from the shards'
            brightest values once all are written (a refused range keeps the shards: the same
            command with --pixel-max finishes the pack without writing them again).

    Returns:
        PackResult. Running it again with the same arguments continues an interrupted pack,
        re-writes shards that went missing or corrupt, and otherwise writes nothing.

    Raises:
        AekitError: bad options, an unreadable source, or an `out` that holds something else.
    """
    started = time.perf_counter()
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise AekitError(f"--shard-size must be at least 1 image, got {shard_size}.")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise AekitError(f"--workers must be 0 (every core) or more, got {workers}.")
    if not 0.0 < val_split < 1.0:
        raise AekitError(f"--val-split must be between 0 and 1 (exclusive), got {val_split}.")
    from aekit.pixels import check_pixel_max

    check_pixel_max(pixel_max)
    tf = _tf()
    out = _folder_name(out)
    options, image_list = _options_for(source, val_split, shard_size, seed, val_from_end)
    prior = _claim_folder(tf, out, options)  # refuses foreign folders before the source is read
    reader = (
        _FolderReader(Path(options.dataset), image_list, options)
        if image_list is not None
        else _load_arrays(source, options, data_dir, pixel_max)
    )
    plan = {split: _plan_split(split, reader.counts[split], shard_size) for split in SPLITS}
    total = sum(reader.counts.values())

    tf.io.gfile.makedirs(out)
    _remove_partials(tf, out)
    kept: dict[str, dict[int, ShardRecord]] = {split: {} for split in SPLITS}
    for split in SPLITS:
        for index, name in enumerate(plan[split]):
            record = prior.get(name)
            first, path = index * shard_size, _join(out, name)
            planned = min(shard_size, reader.counts[split] - first)
            if (
                record is not None
                and record.images == planned
                and _shard_intact(tf, path, record)
                and _shard_problem(tf, path, record, first, reader.image_shape) is None
            ):
                kept[split][index] = record
    kept_images = sum(r.images for by_index in kept.values() for r in by_index.values())

    def describe(splits: dict[str, list[ShardRecord]]) -> PackManifest:
        return PackManifest(
            pixel_scaling=reader.pixel_scaling(splits, pixel_max),
            image_shape=list(reader.image_shape),
            source=reader.source,
            kind=reader.kind,
            validation=reader.validation,
            val_split=val_split,
            splits=splits,
            options=options,
            stored_as=reader.stored_as,
            source_dtype=reader.source_dtype,
            note=reader.note,
            identity=identity_of(splits),
        )

    if prior.get(MANIFEST) and all(len(kept[s]) == len(plan[s]) for s in SPLITS):
        manifest = describe({split: [kept[split][i] for i in range(len(plan[split]))] for split in SPLITS})
        if manifest == _read_manifest(tf, out):  # else its description was changed: written again below
            return PackResult(out, manifest, True, 0, sum(map(len, kept.values())), 0, time.perf_counter() - started, 0)

    state = _State(tf, out, options, kept)
    state.save()
    done = kept_images
    if on_progress:
        on_progress(done, total)
    jobs = [(split, index) for split in SPLITS for index in range(len(plan[split])) if index not in kept[split]]
    written_images = 0

    def advance(n: int) -> None:
        nonlocal done
        done += n
        if on_progress:
            on_progress(done, total)

    with reader.session(workers) as chunks_of:
        chunk_stream = chunks_of(
            (split, index * shard_size, min((index + 1) * shard_size, reader.counts[split])) for split, index in jobs
        )
        for split, index in jobs:
            count = min(shard_size, reader.counts[split] - index * shard_size)
            record, unreported = _write_shard(
                tf, out, plan[split][index], index * shard_size, count, chunk_stream, advance, reader.image_shape
            )
            state.add(split, index, record)
            written_images += count
            advance(unreported)  # a shard's last images count as done once the state lists it
    manifest = describe({split: [state.records[split][i] for i in range(len(plan[split]))] for split in SPLITS})
    _write_atomic(tf, _join(out, MANIFEST), json.dumps(manifest.to_json(), indent=2) + "\n")
    if tf.io.gfile.exists(_join(out, STATE)):
        tf.io.gfile.remove(_join(out, STATE))
    return PackResult(
        out,
        manifest,
        False,
        len(jobs),
        sum(map(len, kept.values())),
        written_images,
        time.perf_counter() - started,
        reader.workers,
    )


def is_packed(path: str | Path) -> bool:
    """True when `path` is a folder holding a dataset.json of format aekit-packed."""
    tf = _tf()
    folder = _folder_name(path)
    name = _join(folder, MANIFEST)
    try:
        if not tf.io.gfile.isdir(folder) or not tf.io.gfile.exists(name):
            return False
        with tf.io.gfile.GFile(name, "r") as f:
            data = json.loads(f.read())
    except (OSError, ValueError, tf.errors.OpError):
        return False
    return isinstance(data, dict) and data.get("format") == FORMAT


def _read_manifest(tf, folder: str, shown: str | None = None) -> PackManifest:
    """The dataset.json of a pack folder; AekitError naming the file when it is missing or malformed.

    `shown`: the folder as the user wrote it, for the commands the message suggests.
    """
    name, shown = _join(folder, MANIFEST), shown or folder
    if not tf.io.gfile.exists(name):
        raise AekitError(f"{folder} is not a packed dataset (no {MANIFEST}). Pack one first: aekit data pack SOURCE {_q(shown)}.")
    data = None
    try:
        with tf.io.gfile.GFile(name, "r") as f:
            data = json.loads(f.read())
        return PackManifest.from_json(data)
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError, tf.errors.OpError) as exc:
        reason = str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, KeyError):
            reason = f"no {reason} field"
        try:  # the options it was made with, when those at least are readable
            command = repack_command(PackOptions.from_json(data["options"]), "NEW_OUT")
        except (ValueError, KeyError, TypeError, AttributeError):
            command = "aekit data pack SOURCE NEW_OUT"
        raise AekitError(
            f"{name} is not a valid aekit packed-dataset description ({reason[:200]}). Re-pack into a new folder: {command}."
        ) from None


def repack_command(options: PackOptions, out: str) -> str:
    """The `aekit data pack` command that makes (or repairs) the pack `options` describe in `out`."""
    split = " --val-from-end" if options.val_from_end else f" --seed {options.seed}" if options.seed else ""
    return (
        f"aekit data pack {_q(options.dataset)} {_q(out)} --shard-size {options.shard_size} --val-split {options.val_split!r}"
        + split
    )


# --- the folder: claiming, state, atomic writes ------------------------------------------------


def _claim_folder(tf, out: str, options: PackOptions) -> dict:
    """Shard records an earlier run of this same pack left in `out` (file name -> record), after refusing
    a folder that holds anything else. The key MANIFEST is set when a finished dataset.json was found."""
    if not tf.io.gfile.exists(out):
        return {}
    if not tf.io.gfile.isdir(out):
        raise AekitError(f"{out} is a file. Pick a folder for the pack (a new one, or one aekit data pack made).")
    entries = [e.rstrip("/") for e in tf.io.gfile.listdir(out)]
    has_manifest, has_state = MANIFEST in entries, STATE in entries
    if not has_manifest and not has_state:
        if any(not e.startswith(PARTIAL) for e in entries):
            raise AekitError(
                f"{out} is not empty and is not an aekit pack (no {MANIFEST} or {STATE}). "
                "Pick a new or empty folder for OUT; aekit never deletes files it did not write."
            )
        return {}
    if has_manifest:
        manifest = _read_manifest(tf, out)
        _check_same(out, manifest.options, options, "holds a finished pack")
        records = {r.file: r for split in SPLITS for r in manifest.splits[split]}
        return {**records, MANIFEST: True}
    name = _join(out, STATE)
    try:
        with tf.io.gfile.GFile(name, "r") as f:
            data = json.loads(f.read())
        if data.get("format") != STATE_FORMAT:
            raise ValueError(f"format is not {STATE_FORMAT!r}")
        previous = PackOptions.from_json(data["options"])
        records = {r["file"]: ShardRecord.from_json(r) for r in data["shards"]}
    except (ValueError, KeyError, TypeError, AttributeError, tf.errors.OpError) as exc:
        raise AekitError(
            f"{name} is unreadable ({str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__}). "
            f"Delete {out} (an unfinished pack) and pack again."
        ) from None
    _check_same(out, previous, options, "holds an unfinished pack")
    return records


def _check_same(out: str, previous: PackOptions, options: PackOptions, what: str) -> None:
    if not previous.same_request(options):
        raise AekitError(
            f"{out} {what} of {previous.dataset} ({previous.describe()}), not of {options.dataset} ({options.describe()}). "
            "Pick another OUT, or delete that folder first."
        )
    if previous.fingerprint != options.fingerprint:
        raise AekitError(
            f"{out} {what} of {options.dataset}, but its files have changed since (names, sizes or times). "
            "Delete that folder and pack again, or pick another OUT."
        )


class _State:
    """.pack-state.json: the options and the finished shards, rewritten atomically after every shard."""

    def __init__(self, tf, folder: str, options: PackOptions, kept: dict[str, dict[int, ShardRecord]]):
        self.tf, self.folder, self.options = tf, folder, options
        self.records = {split: dict(kept[split]) for split in SPLITS}

    def add(self, split: str, index: int, record: ShardRecord) -> None:
        self.records[split][index] = record
        self.save()

    def save(self) -> None:
        shards = [r.to_json() for split in SPLITS for _, r in sorted(self.records[split].items())]
        data = {"format": STATE_FORMAT, "version": VERSION, "options": self.options.to_json(), "shards": shards}
        _write_atomic(self.tf, _join(self.folder, STATE), json.dumps(data, indent=1) + "\n")


def _write_atomic(tf, final: str, text: str) -> None:
    folder, name = final.rsplit("/", 1)
    partial = _join(folder, PARTIAL + name)
    with tf.io.gfile.GFile(partial, "w") as f:
        f.write(text)
    tf.io.gfile.rename(partial, final, overwrite=True)


def _remove_partials(tf, folder: str) -> None:
    for entry in tf.io.gfile.listdir(folder):
        if entry.startswith(PARTIAL) and not entry.endswith("/"):
            tf.io.gfile.remove(_join(folder, entry))


def _shard_intact(tf, path: str, record: ShardRecord) -> bool:
    try:
        return tf.io.gfile.exists(path) and tf.io.gfile.stat(path).length == record.bytes and _sha256(tf, path) == record.sha256
    except tf.errors.OpError:
        return False


def _sha256(tf, path: str) -> str:
    digest = hashlib.sha256()
    with tf.io.gfile.GFile(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _plan_split(split: str, count: int, shard_size: int) -> list[str]:
    shards = math.ceil(count / shard_size)
    return [shard_name(split, i, shards) for i in range(shards)]


def _write_shard(tf, folder, name, first_index, count, chunk_stream, advance, image_shape) -> tuple[ShardRecord, int]:
    """Writes `count` images from `chunk_stream` as one shard (under a .partial- name, then renamed).

    Calls advance(n) for each chunk but the last; returns (record, the last chunk's n) for the caller
    to report once the shard is recorded as finished.
    """
    partial, final = _join(folder, PARTIAL + name), _join(folder, name)
    example = tf.train.Example()
    feature = example.features.feature
    image_value, index_value = feature["image"].bytes_list.value, feature["index"].int64_list.value
    image_value.append(b"")
    index_value.append(0)
    written = last = high = 0
    try:
        with tf.io.TFRecordWriter(partial) as writer:
            while written < count:
                chunk = next(chunk_stream)
                if chunk.shape[1:] != tuple(image_shape) or chunk.dtype != np.uint8:
                    raise AssertionError(f"chunk {chunk.shape} {chunk.dtype} in a pack of {image_shape} uint8")
                high = max(high, int(chunk.max())) if chunk.size else high
                for image in chunk:
                    image_value[0] = image.tobytes()
                    index_value[0] = first_index + written
                    writer.write(example.SerializeToString(deterministic=True))
                    written += 1
                if written < count:
                    advance(len(chunk))
                else:
                    last = len(chunk)
        if written != count:
            raise AssertionError(f"{name}: wrote {written} images, planned {count}")
        record = ShardRecord(name, count, _sha256(tf, partial), tf.io.gfile.stat(partial).length, high)
        tf.io.gfile.rename(partial, final, overwrite=True)
        return record, last
    except BaseException:
        if tf.io.gfile.exists(partial):
            tf.io.gfile.remove(partial)
        raise


# --- sources -----------------------------------------------------------------------------------


def _options_for(
    source: str, val_split: float, shard_size: int, seed: int = 0, val_from_end: bool = False
) -> tuple[PackOptions, list[Path] | None]:
    """(the options identifying a pack, the image files when the source is an image folder), from the
    source's file listing: no pixels read."""
    from aekit.sources import idx_files, image_files, source_kind

    if not isinstance(source, str) or not source:
        raise AekitError("Name a source to pack: a TFDS name, a folder of IDX files or images, or a .npz/.npy file.")
    path = Path(source).expanduser()
    if not path.exists():
        return PackOptions(source, val_split, shard_size, None, seed, val_from_end), None
    path = path.resolve()
    if path.is_dir() and is_packed(str(path)):
        raise AekitError(f"{path} is already a packed dataset. Train from it directly: aekit train --dataset {_q(str(path))}.")
    kind = source_kind(path)
    files = idx_files(path) if kind == "idx" else image_files(path) if kind == "images" else [path]
    digest = hashlib.sha256()
    for file in files:
        stat = file.stat()
        name = file.relative_to(path) if path.is_dir() else file.name
        digest.update(f"{name}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    options = PackOptions(str(path), val_split, shard_size, digest.hexdigest(), seed, val_from_end)
    return options, files if kind == "images" else None


def _load_arrays(source: str, options: PackOptions, data_dir: str | None, pixel_max: float | None) -> _ArrayReader:
    """The source loaded as aekit.data loads `--dataset`; its errors name SOURCE, pack's argument."""
    from aekit.data import load_data

    try:
        splits = load_data(
            source, options.val_split, data_dir, seed=options.seed, val_from_end=options.val_from_end, pixel_max=pixel_max
        )
        return _ArrayReader(splits)
    except AekitError as exc:
        text = str(exc)
        for said, meant in (
            ("--dataset PATH", "a local path as SOURCE"),
            ("--dataset ", "SOURCE "),
            ("Dataset path ", "SOURCE "),
        ):
            text = text.replace(said, meant)
        raise AekitError(text) from None


class _ArrayReader:
    """A source aekit.data loads into memory; chunks are slices converted to uint8."""

    workers = 0

    def __init__(self, splits):
        self.arrays = {"train": splits.train, "val": splits.val}
        self.counts = {split: len(array) for split, array in self.arrays.items()}
        self.image_shape = tuple(int(d) for d in splits.train.shape[1:])
        self.source, self.kind, self.validation, self.note = splits.source, splits.kind, splits.validation, splits.note
        self.scaling, self.source_dtype = splits.scaling, str(splits.train.dtype)
        if splits.train.dtype == np.uint8:
            self.stored_as = "as-is"  # and divided by the source's own scaling (255, or its --pixel-max)
        elif splits.scaling.divide_by == UINT8_MAX:
            self.stored_as = "round(x)"
        elif splits.scaling.divide_by == 1.0:
            self.stored_as = "round(x * 255)"
        else:
            self.stored_as = f"round(x * 255 / {splits.scaling.divide_by:g})"

    def to_uint8(self, images: np.ndarray) -> np.ndarray:
        if images.dtype == np.uint8:
            return np.ascontiguousarray(images)
        if self.scaling.divide_by != UINT8_MAX:
            images = np.asarray(images, np.float64) * (UINT8_MAX / self.scaling.divide_by)
        return np.clip(np.rint(images), 0, UINT8_MAX).astype(np.uint8)

    def pixel_scaling(self, splits, pixel_max: float | None) -> PixelScaling:
        """How the stored uint8 become model inputs: the source's own scaling when stored as-is, else / 255."""
        return self.scaling if self.stored_as == "as-is" else PixelScaling(UINT8_MAX)

    @contextmanager
    def session(self, workers: int):
        """Yields chunks_of(ranges): for each (split, start, stop), that slice as one uint8 chunk. No workers needed."""

        def chunks_of(ranges: Iterable[tuple[str, int, int]]) -> Iterator[np.ndarray]:
            for split, start, stop in ranges:
                yield self.to_uint8(self.arrays[split][start:stop])

        yield chunks_of


class _FolderReader:
    """A folder of PNG/JPEG images, decoded in parallel processes chunk by chunk (never whole).

    The files, their order, the mode picked from the first image, the size check and the split are
    those of `aekit.sources.read_image_folder` and `aekit.data.load_data`.
    """

    kind = "images"
    source_dtype = "uint8"
    stored_as = "as-is"
    note = None

    def __init__(self, folder: Path, files: list[Path], options: PackOptions):
        """`files`: aekit.sources.image_files(folder), the order read_image_folder reads."""
        from aekit.sources import ACCEPTED, IMAGE_SUFFIXES, read_image
        from aekit.splits import folder_groups, split_indices

        self.folder = folder
        if not files:
            raise AekitError(f"{folder} contains no IDX files and no {'/'.join(IMAGE_SUFFIXES)} images. Pass {ACCEPTED}.")
        groups = folder_groups([str(f.relative_to(folder)) for f in files])
        split = split_indices(len(files), options.val_split, options.seed, groups, options.val_from_end)
        self.validation = split.describe()
        self.files = {"train": [files[i] for i in split.train], "val": [files[i] for i in split.val]}
        self.counts = {split: len(names) for split, names in self.files.items()}
        pixels, self.mode = read_image(files[0])
        self.first = (str(files[0].relative_to(folder)), pixels.shape)
        self.image_shape = (*pixels.shape[:2], pixels.shape[2] if pixels.ndim == 3 else 1)
        self.source = str(folder)
        self.workers = 1
        self.chunk = max(1, min(DECODE_CHUNK, DECODE_CHUNK_BYTES // math.prod(self.image_shape)))

    def pixel_scaling(self, splits, pixel_max: float | None) -> PixelScaling:
        """The pixel rule (aekit.pixels) on the shards' brightest values: the folder is stored as it is."""
        from aekit.pixels import PixelRange

        highs = [record.high for records in splits.values() for record in records]
        high = UINT8_MAX if any(h is None for h in highs) else float(max(highs, default=0))
        found = PixelRange("u", 0.0, high, sum(record.images for records in splits.values() for record in records))
        return PixelScaling.for_range(found, pixel_max, f"The images of {self.folder}")

    @contextmanager
    def session(self, workers: int):
        """Yields chunks_of(ranges): the images of each (split, start, stop), decoded `workers` processes wide."""
        from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
        from multiprocessing import get_context

        count = workers or (_cpu_count() if sum(self.counts.values()) >= AUTO_PARALLEL_IMAGES else 1)
        self.workers = count
        executor = None
        if count > 1 and DECODE_EXECUTOR == "thread":
            executor = ThreadPoolExecutor(count)
        elif count > 1:  # spawned, not forked: forking a process that runs TensorFlow's threads can deadlock
            executor = ProcessPoolExecutor(count, mp_context=get_context("spawn"), initializer=_ignore_interrupts)

        def tasks(ranges):
            for split, start, stop in ranges:
                for begin in range(start, stop, self.chunk):
                    names = [str(p) for p in self.files[split][begin : min(begin + self.chunk, stop)]]
                    yield (names, self.mode, self.first, str(self.folder))

        def chunks_of(ranges):
            if executor is None:
                return (decode_files(*task) for task in tasks(ranges))
            return _ordered_map(executor, decode_files, tasks(ranges), lookahead=4 * count)

        try:
            yield chunks_of
        finally:
            if executor is not None:
                executor.shutdown(wait=True, cancel_futures=True)


def decode_files(names: list[str], mode: str, first: tuple[str, tuple], folder: str) -> np.ndarray:
    """(n, H, W, C) uint8 of image files, read as `aekit.sources.read_image_folder` reads them.

    Runs in the decoding processes; `first` is (name relative to `folder`, pixel shape) of the
    folder's first image, which every image must match.
    """
    from aekit.sources import read_image

    arrays = []
    for name in names:
        file = Path(name)
        pixels, _ = read_image(file, mode)
        if pixels.shape != first[1]:
            raise AekitError(
                f"Image {file.relative_to(folder)} is {pixels.shape[1]}x{pixels.shape[0]} but {first[0]} is "
                f"{first[1][1]}x{first[1][0]} (width x height). Resize all images to one size."
            )
        arrays.append(pixels)
    images = np.stack(arrays)
    return images[..., None] if images.ndim == 3 else images


def _ignore_interrupts() -> None:
    """Decoding processes leave Ctrl-C to the parent, which stops them (no traceback per process)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _ordered_map(executor, fn, tasks: Iterable[tuple], lookahead: int) -> Iterator:
    """fn(*task) for every task, computed `lookahead` tasks ahead in `executor`, yielded in order."""
    from concurrent.futures.process import BrokenProcessPool

    def submit(task):
        with _main_hidden(), _interrupts_held():
            return executor.submit(fn, *task)

    tasks = iter(tasks)
    pending = deque()
    for task in tasks:
        pending.append(submit(task))
        if len(pending) >= lookahead:
            break
    while pending:
        try:
            result = pending.popleft().result()
        except BrokenProcessPool:
            raise AekitError(
                "A decoding process died (killed, or out of memory?). Run the same command again with fewer --workers; "
                "the finished shards are kept."
            ) from None
        task = next(tasks, None)
        if task is not None:
            pending.append(submit(task))
        yield result


@contextmanager
def _main_hidden():
    """Hides the __main__ module while decoding processes may start (they start inside submit()).

    A spawned process re-runs the parent's main script unless it is a module run with -m; a script
    that calls pack() without an `if __name__ == "__main__":` guard would then pack again in every
    decoding process. The decoders need nothing from __main__, so they get none.
    """
    saved = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        if saved is not None:
            sys.modules["__main__"] = saved


@contextmanager
def _interrupts_held():
    """Holds back Ctrl-C (SIGINT) in this thread while decoding processes may start (inside submit()).

    A process started now inherits the block, so a Ctrl-C while it is still importing stays pending
    until `_ignore_interrupts` discards it, instead of printing a KeyboardInterrupt traceback from
    every process. This process gets a Ctrl-C that came meanwhile once the block is lifted.
    """
    if not hasattr(signal, "pthread_sigmask"):  # Windows: the initializer alone
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# --- reading a pack ----------------------------------------------------------------------------


class PackedDataset:
    """A pack folder, checked against its dataset.json, streamed with tf.data as uint8 batches.

    Attributes:
        folder: the pack folder.
        manifest: its PackManifest.
        image_shape: (H, W, C).
        scaling: PixelScaling of the stored uint8 (divide by 255).
        counts: {"train": N, "val": M}.
        shards: {"train": [shard paths, in order], "val": [...]}.
        starts: {"train": [the index in its split of each shard's first image], "val": [...]}.
        identity: sha256 identifying the packed data (equal identity, equal bytes).
        fix: what to do when a shard proves damaged: the `aekit data pack` command, with the pack's
            options, that repairs it in place.
        wrong_image: the error when a record read is not one image_shape image.
    """

    def __init__(self, folder: str, manifest: PackManifest, shown: str | None = None):
        """`shown`: the folder as the user wrote it, for the command `fix` suggests."""
        self.folder, self.manifest = folder, manifest
        self.image_shape = tuple(manifest.image_shape)
        self.scaling = manifest.pixel_scaling
        self.counts = {split: manifest.count(split) for split in SPLITS}
        self.shards = {split: [_join(folder, r.file) for r in manifest.splits[split]] for split in SPLITS}
        self.starts = {split: _starts(manifest.splits[split]) for split in SPLITS}
        self.identity = manifest.identity
        self.fix = f"re-pack with `{repack_command(manifest.options, shown or folder)}`"
        self.wrong_image = (
            f"{folder} holds an image that is not {_shape_text(self.image_shape)} ({math.prod(self.image_shape):,} bytes) "
            f"as its {MANIFEST} says: re-pack into a new folder with `{repack_command(manifest.options, 'NEW_OUT')}`"
        )

    @classmethod
    def open(cls, folder: str | Path, verify: bool = True) -> PackedDataset:
        """Reads dataset.json and checks every shard against it, reading at most its first record (with
        verify, all of it for its sha256): the shard is there, its size is the one listed and the one its
        image count of image_shape images takes, and its first record is one such image at its index.

        Raises:
            AekitError naming dataset.json, or the shard that is missing, truncated or changed or that
            dataset.json does not describe, with the `aekit data pack` command that repairs the pack.
        """
        tf = _tf()
        shown = os.fspath(folder)
        folder = _folder_name(folder)
        if not tf.io.gfile.isdir(folder):
            if tf.io.gfile.exists(folder):
                raise AekitError(
                    f"{shown} is a file, not a pack folder. Pass the folder aekit data pack wrote (the one holding {MANIFEST})."
                )
            raise AekitError(
                f"Packed dataset {shown} does not exist. Check the path, or pack one: aekit data pack SOURCE {_q(shown)}."
            )
        data = cls(folder, _read_manifest(tf, folder, shown), shown)
        for split in SPLITS:
            for record, path, first in zip(data.manifest.splits[split], data.shards[split], data.starts[split]):
                data._check_shard(tf, path, record, first, verify)
        return data

    def _check_shard(self, tf, path: str, record: ShardRecord, first: int, verify: bool) -> None:
        fix = self.fix
        if not tf.io.gfile.exists(path):
            raise AekitError(f"{path} is missing (listed in {MANIFEST}): {fix}.")
        size = tf.io.gfile.stat(path).length
        if size != record.bytes or (verify and _sha256(tf, path) != record.sha256):
            what = (
                f"is {size:,} bytes, not the {record.bytes:,} in {MANIFEST}"
                if size != record.bytes
                else (f"does not match its sha256 in {MANIFEST}")
            )
            raise AekitError(f"{path} {what} (corrupt or changed): {fix}.")
        problem = _shard_problem(tf, path, record, first, self.image_shape)
        if problem:
            raise AekitError(f"{path} {problem} ({MANIFEST} changed, or the shard): {fix}.")

    def check_records(self) -> int:
        """Reads every record of every shard: each must be one image_shape image at its place in its split,
        and each shard hold as many as dataset.json counts. Returns the images read.

        Raises:
            AekitError naming the shard and what in it dataset.json does not describe.
        """
        tf = _tf()
        spec = {"image": tf.io.FixedLenFeature([], tf.string), "index": tf.io.FixedLenFeature([], tf.int64)}
        image_bytes, shape = math.prod(self.image_shape), _shape_text(self.image_shape)
        # A shard whose sha256 matches but whose records do not is kept by a re-pack in place.
        fresh = f"re-pack into a new folder with `{repack_command(self.manifest.options, 'NEW_OUT')}`"

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)], autograph=False)  # traced once, for every shard
        def lengths(serialized):
            features = tf.io.parse_example(serialized, spec)
            return tf.strings.length(features["image"]), features["index"]

        total = 0
        for split in SPLITS:
            for record, path, first in zip(self.manifest.splits[split], self.shards[split], self.starts[split]):
                count = 0
                try:
                    for serialized in tf.data.TFRecordDataset(path).batch(CHECK_BATCH):
                        sizes, index = (t.numpy() for t in lengths(serialized))
                        expected = np.arange(first + count, first + count + len(index))
                        for at in np.flatnonzero(sizes != image_bytes)[:1]:
                            raise AekitError(
                                f"{path}: image {expected[at]} is {sizes[at]:,} bytes, not the {image_bytes:,} of a {shape} "
                                f"image as {MANIFEST} says: {fresh}."
                            )
                        for at in np.flatnonzero(index != expected)[:1]:
                            raise AekitError(
                                f"{path}: image {expected[at]} of {split} is numbered {index[at]} in the shard: {fresh}."
                            )
                        count += len(index)
                except tf.errors.OpError as exc:
                    raise AekitError(
                        f"{path} is not a file of aekit image records ({_first_line(exc)}; corrupt or changed): {self.fix}."
                    ) from None
                if count != record.images:
                    raise AekitError(f"{path} holds {count:,} images, not the {record.images:,} {MANIFEST} counts: {fresh}.")
                total += count
        return total

    def describe(self) -> dict:
        """The run's `data` record, shaped like `aekit.data.DataSplits.describe()`, plus the folder and identity."""
        m = self.manifest
        return {
            "source": m.source,
            "kind": m.kind,
            "train_images": self.counts["train"],
            "val_images": self.counts["val"],
            "image_shape": list(self.image_shape),
            "stored_dtype": "uint8",
            "validation": m.validation,
            "val_split": m.val_split,
            "pixel_scaling": self.scaling.to_json(),
            "note": m.note,
            "packed": self.folder,
            "identity": self.identity,
        }

    # --- training -----------------------------------------------------------------------------

    def worker_shards(self, num_shards: int = 1, shard_index: int = 0) -> tuple[list[str], int]:
        """(train shard paths worker `shard_index` of `num_shards` reads, the images they hold).

        Worker w reads the shards i with i % num_shards == w.
        """
        files = self.shards["train"]
        if num_shards < 1 or not 0 <= shard_index < num_shards:
            raise AekitError(
                f"Worker index {shard_index} is outside 0..{num_shards - 1}. Pass a task index below the worker count."
            )
        if len(files) < num_shards:
            train = self.counts["train"]
            if train < num_shards:
                raise AekitError(f"{self.folder} has {train} train images, too few for {num_shards} workers. Add images.")
            size = train // num_shards
            raise AekitError(
                f"{self.folder} has {len(files)} train shard(s), which cannot feed {num_shards} workers. "
                f"Re-pack with --shard-size {size} (or smaller): "
                f"{repack_command(dataclasses.replace(self.manifest.options, shard_size=size), 'NEW_OUT')}."
            )
        records = self.manifest.splits["train"][shard_index::num_shards]
        return files[shard_index::num_shards], sum(r.images for r in records)

    def steps_per_epoch(self, global_batch: int, num_workers: int = 1) -> int:
        """Batches per epoch every worker can fill: min over workers of (images it owns) // (global_batch // num_workers)."""
        per_worker = global_batch // max(num_workers, 1)
        if per_worker < 1:
            raise AekitError(f"A global batch of {global_batch} cannot be split over {num_workers} workers. Raise --batch-size.")
        owned = [self.worker_shards(num_workers, w)[1] for w in range(num_workers)]
        steps = min(owned) // per_worker
        if steps < 1:
            raise AekitError(
                f"{self.folder}: a worker owns {min(owned)} train images, fewer than its batch of {per_worker}. "
                "Lower --batch-size or add images."
            )
        return steps

    def shuffle_images(self, batch_size: int = 1) -> int:
        """Images per shuffle block: SHUFFLE_IMAGES, fewer for large images (SHUFFLE_BYTES), never below a batch."""
        return max(batch_size, min(SHUFFLE_IMAGES, SHUFFLE_BYTES // math.prod(self.image_shape)))

    def train_stream(
        self,
        batch_size: int,
        steps_per_epoch: int,
        *,
        seed: int = 0,
        start_epoch: int = 0,
        skip_batches: int = 0,
        num_shards: int = 1,
        shard_index: int = 0,
        with_index: bool = False,
        shuffle_images: int | None = None,
    ):
        """The endless training stream of this worker: uint8 (batch_size, H, W, C) batches.

        Epoch e reads this worker's shards in an order shuffled by (seed, e), four at a time
        interleaved image by image, then shuffles blocks of `shuffle_images` images, each by a
        stateless shuffle seeded by (seed, e, block), and takes exactly `steps_per_epoch` full
        batches: no image twice in an epoch, and every batch a pure function of (seed, e, its
        position) whatever TensorFlow's global seed, so a run resumed at (start_epoch,
        skip_batches) sees exactly the batches an uninterrupted run would.

        Args:
            batch_size: images per batch from this worker (its per-worker batch).
            steps_per_epoch: batches per epoch (see `steps_per_epoch()`).
            num_shards, shard_index: the workers and this one's index (file-level sharding).
            with_index: yield (images, int64 indices in the train split) pairs instead.
            shuffle_images: images per shuffle block (default `shuffle_images()`).
        """
        tf = _tf()
        files, owned = self.worker_shards(num_shards, shard_index)
        if batch_size < 1 or steps_per_epoch < 1:
            raise AekitError(f"Need a batch size and steps per epoch of at least 1, got {batch_size} and {steps_per_epoch}.")
        if steps_per_epoch * batch_size > owned:
            raise AekitError(
                f"Worker {shard_index} of {num_shards} owns {owned} train images of {self.folder}, too few for "
                f"{steps_per_epoch} batches of {batch_size}. Lower --batch-size or add images."
            )
        block = shuffle_images or self.shuffle_images(batch_size)
        parse = self._parser()
        file_table = tf.constant(files)
        cycle = min(4, len(files))
        root = tf.constant([seed, 0], tf.int64)
        fold_in = tf.random.experimental.stateless_fold_in
        take = steps_per_epoch * batch_size

        @tf.autograph.experimental.do_not_convert
        def one_epoch(epoch):
            key = fold_in(root, epoch)
            order = tf.random.experimental.stateless_shuffle(tf.range(len(files), dtype=tf.int64), seed=fold_in(key, 0))
            block_key = fold_in(key, 1)

            def shuffle_block(number, serialized):
                images, index = parse(serialized)
                permutation = tf.random.experimental.stateless_shuffle(
                    tf.range(tf.shape(index)[0]), seed=fold_in(block_key, number)
                )
                return tf.gather(images, permutation), tf.gather(index, permutation)

            records = tf.data.Dataset.from_tensor_slices(tf.gather(file_table, order)).interleave(
                _read_records, cycle_length=cycle, block_length=1, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
            )
            # One block in flight at a time: its memory (serialized, parsed, permuted) stays bounded.
            blocks = records.batch(block).enumerate().map(shuffle_block)
            return blocks.unbatch().take(take).batch(batch_size, drop_remainder=True)

        ds = tf.data.Dataset.range(start_epoch, 2**62).flat_map(one_epoch).skip(skip_batches)
        if not with_index:
            ds = ds.map(_first, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return ds.prefetch(tf.data.AUTOTUNE)

    # --- validation, pictures, calibration ---------------------------------------------------

    def val_batches(self, batch_size: int, with_index: bool = False):
        """The val split in order as uint8 (batch_size, H, W, C) batches; the last may be shorter. One pass."""
        return self.batches("val", batch_size, with_index)

    def batches(self, split: str, batch_size: int, with_index: bool = False):
        """A split in stored order as uint8 batches (with int64 indices when with_index); the last may be shorter."""
        if split not in SPLITS:
            raise AekitError(f"Split {split!r} is not in a pack. Pick one of {', '.join(SPLITS)}.")
        return self._in_order(split, batch_size, with_index)

    def read(self, split: str, limit: int | None = None) -> np.ndarray:
        """The first `limit` images (all when None) of a split as one uint8 (N, H, W, C) array.

        Reads only the shards those images are in.
        """
        if split not in SPLITS:
            raise AekitError(f"Split {split!r} is not in a pack. Pick one of {', '.join(SPLITS)}.")
        count = self.counts[split] if limit is None else max(0, min(int(limit), self.counts[split]))
        out = np.empty((count, *self.image_shape), np.uint8)
        if count == 0:
            return out
        filled = 0
        try:
            for images, _ in self._in_order(split, min(count, 4096), False, limit=count, pairs=True):
                out[filled : filled + len(images)] = images.numpy()
                filled += len(images)
        except _tf().errors.OpError as exc:
            if self.wrong_image in str(exc):
                raise AekitError(f"{self.wrong_image}.") from None
            raise AekitError(f"Cannot read the {split} images of {self.folder} ({_first_line(exc)}): {self.fix}.") from None
        return out

    def _in_order(self, split: str, batch_size: int, with_index: bool, limit: int | None = None, pairs: bool = False):
        tf = _tf()
        if batch_size < 1:
            raise AekitError(f"--batch-size must be at least 1, got {batch_size}.")
        files, held = self.shards[split], 0
        if limit is not None:  # only the shards holding the first `limit` images
            needed = 0
            for record in self.manifest.splits[split]:
                if held >= limit:
                    break
                held += record.images
                needed += 1
            files = files[:needed]
        ds = tf.data.TFRecordDataset(files)
        if limit is not None:
            ds = ds.take(limit)
        ds = ds.batch(batch_size).map(self._parser(), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        if not (with_index or pairs):
            ds = ds.map(_first)
        return ds.prefetch(tf.data.AUTOTUNE)

    def _parser(self):
        """serialized Examples (a vector) -> (uint8 (n, H, W, C) images, int64 (n,) indices)."""
        tf = _tf()
        spec = {"image": tf.io.FixedLenFeature([], tf.string), "index": tf.io.FixedLenFeature([], tf.int64)}
        shape, image_bytes = [-1, *self.image_shape], math.prod(self.image_shape)
        wrong = self.wrong_image

        @tf.autograph.experimental.do_not_convert
        def parse(serialized):
            features = tf.io.parse_example(serialized, spec)
            check = tf.debugging.assert_equal(tf.strings.length(features["image"]), image_bytes, message=wrong, summarize=1)
            with tf.control_dependencies([check]):
                images = tf.reshape(tf.io.decode_raw(features["image"], tf.uint8), shape)
            return images, features["index"]

        return parse


def _first(images, _index):
    return images


def _read_records(path):
    return _tf().data.TFRecordDataset(path)


def _starts(records: list[ShardRecord]) -> list[int]:
    """The index in its split of each shard's first image."""
    starts, first = [], 0
    for record in records:
        starts.append(first)
        first += record.images
    return starts


def _varint_bytes(n: int) -> int:
    size = 1
    while n >= 0x80:
        n >>= 7
        size += 1
    return size


def _field_bytes(n: int) -> int:
    """A length-delimited protobuf field of n bytes with a one-byte tag."""
    return 1 + _varint_bytes(n) + n


def _record_bytes(image_bytes: int, index: int) -> int:
    """The TFRecord of one image as `_write_shard` writes it: Example{image: bytes_list, index: int64_list}."""
    image = _field_bytes(_field_bytes(_field_bytes(image_bytes)))  # Feature{bytes_list{value: [image]}} as a map value
    position = _field_bytes(_field_bytes(_field_bytes(_varint_bytes(index))))  # Feature{int64_list{packed [index]}}
    entries = _field_bytes(_field_bytes(len("image")) + image) + _field_bytes(_field_bytes(len("index")) + position)
    return RECORD_FRAMING + _field_bytes(entries)


def _shard_bytes(first: int, count: int, image_bytes: int) -> int:
    """The size of a shard of `count` images of `image_bytes` bytes, indexed from `first` (a record's size
    depends on its index only through the varint length of the index)."""
    total, start, stop, digits = 0, first, first + count, 1
    while start < stop:
        end = min(stop, 1 << (7 * digits))  # the indices whose varint takes `digits` bytes end here
        if start < end:
            total += (end - start) * _record_bytes(image_bytes, start)
            start = end
        digits += 1
    return total


def _shard_problem(tf, path: str, record: ShardRecord, first: int, image_shape) -> str | None:
    """What is wrong with a shard, of `record.bytes` bytes, as the `record.images` images of `image_shape`
    from image `first` of its split: its size is not theirs, or its first record is not the first of them.
    None when nothing is. Reads the first record only."""
    image_bytes, shape = math.prod(image_shape), _shape_text(image_shape)
    expected = _shard_bytes(first, record.images, image_bytes)
    if record.bytes != expected:
        return f"is {record.bytes:,} bytes, not the {expected:,} that {record.images:,} images of {shape} take"
    try:
        head = _first_record(tf, path, record.bytes)
    except tf.errors.OpError as exc:
        return f"cannot be read ({_first_line(exc)})"
    if head is None:
        return "does not start with an aekit image record"
    if head != (image_bytes, first):
        return f"starts with image {head[1]} of {head[0]:,} bytes, not image {first} of {image_bytes:,} bytes ({shape})"
    return None


def _first_record(tf, path: str, limit: int) -> tuple[int, int] | None:
    """(image bytes, index) of a shard's first record, reading just it; None when it does not start with one."""
    from google.protobuf.message import DecodeError

    with tf.io.gfile.GFile(path, "rb") as f:
        header = f.read(12)  # payload length (uint64), its crc
        if len(header) < 12:
            return None
        (length,) = struct.unpack("<Q", header[:8])
        if length > limit:
            return None
        payload = f.read(length)
    if len(payload) != length:
        return None
    try:
        feature = tf.train.Example.FromString(payload).features.feature
    except (DecodeError, ValueError):
        return None
    if "image" not in feature or "index" not in feature:
        return None
    images, index = feature["image"].bytes_list.value, feature["index"].int64_list.value
    if len(images) != 1 or len(index) != 1:
        return None
    return len(images[0]), int(index[0])


# --- small helpers -----------------------------------------------------------------------------


def _tf():
    return tf


def _folder_name(path: str | Path) -> str:
    """A folder as tf.io.gfile takes it: URLs (gs://...) unchanged, local paths expanded."""
    text = os.fspath(path)
    if "://" in text:
        return text.rstrip("/")
    return str(Path(text).expanduser())


def _join(folder: str, name: str) -> str:
    return f"{folder.rstrip('/')}/{name}"


def _q(text: str) -> str:
    return shlex.quote(text)


def _shape_text(shape) -> str:
    return "x".join(map(str, shape))


def _first_line(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc)
    return (str(text).strip().splitlines() or [type(exc).__name__])[0][:200]
