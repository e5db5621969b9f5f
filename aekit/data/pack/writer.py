"""Packing: a source written once into uint8 TFRecord shards plus dataset.json, atomic and resumable.

Every file is written under a `.partial-` name and renamed when complete; a state file lists the
finished shards, so an interrupted pack continues where it stopped and a corrupt shard is written again.
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from aekit.core.resources import FILE_LIMIT_FIXES, WHAT_RAN_OUT, resource_code
from aekit.core.runs import FileLock
from aekit.data.pack.files import _folder_name, _join, _sha256, _tf
from aekit.data.pack.reader import _read_manifest
from aekit.data.pack.records import _shard_problem
from aekit.data.pack.schema import (
    DEFAULT_SHARD_SIZE,
    MANIFEST,
    PARTIAL,
    SPLITS,
    STATE,
    STATE_FORMAT,
    VERSION,
    PackManifest,
    PackOptions,
    ShardRecord,
    identity_of,
    shard_name,
)
from aekit.data.pack.sources import _FolderReader, _load_arrays, _options_for
from aekit.errors import AekitError

if TYPE_CHECKING:
    from aekit.data.pack.schema import Progress


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


class PackLock(FileLock):
    """Holds a local pack folder for one `aekit data pack`: `.<folder>.pack.lock` beside it (see FileLock).

    Beside, not inside: the folder holds only the pack's own files, and its unfinished ones are removed
    by name. Folders on other file systems (gs://...) are not locked.
    """

    def __init__(self, out: str):
        folder = Path(out)
        super().__init__(folder.parent / f".{folder.name}.pack.lock")
        self.folder = folder

    def busy(self, holder: str) -> str:
        return (
            f"{self.folder} is being packed by another aekit data pack ({holder}). Wait for it to finish "
            "(or stop it), or pack into another folder."
        )

    def cannot_create(self, exc: OSError) -> str:
        return f"Cannot create {self.path} beside the pack folder: {exc.strerror}. Pass a writable folder as OUT."


def _file_errors(function):
    """File system errors (TensorFlow's or the OS's) from `function(source, out, ...)` as one AekitError line; the
    pack folder held (PackLock) while `function` writes it."""

    @functools.wraps(function)
    def wrapper(source, out, *args, **kwargs):
        tf = _tf()
        local = "://" not in os.fspath(out)
        # A path under a file is refused by the pack itself, naming it; no lock is made there.
        under_a_file = local and any(p.exists() and not p.is_dir() for p in Path(_folder_name(out)).parents)
        lock = PackLock(_folder_name(out)) if local and not under_a_file else None
        try:
            if lock:
                lock.acquire()
            return function(source, out, *args, **kwargs)
        except (tf.errors.OpError, OSError) as exc:
            code = resource_code(exc)
            if code is not None:
                raise AekitError(
                    f"Packing into {out} stopped: {WHAT_RAN_OUT[code]} ({os.strerror(code)}). "
                    f"{FILE_LIMIT_FIXES.get(code, 'Free space, or pack into a folder on another disk')}; the same "
                    "command then continues from the shards already written."
                ) from None
            text = getattr(exc, "message", None) or getattr(exc, "strerror", None) or str(exc)
            raise AekitError(
                f"Cannot write the pack in {out} ({str(text).splitlines()[0][:160]}). Pass a writable folder as OUT."
            ) from None
        finally:
            if lock:
                lock.release()

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
            aekit.core.splits' rule (seeded, stratified over an image folder's sub-folders).
        data_dir: TFDS data directory.
        shard_size: images per shard (the last of a split may hold fewer).
        workers: processes decoding an image folder; 1 = this process only; 0 = one per core for folders
            of AUTO_PARALLEL_IMAGES or more (starting a process costs ~0.25 s), else this process.
        on_progress: called with (images done, images in all) after each chunk written.
        seed, val_from_end: the split rule (aekit.core.splits): the draw's seed, or the last fraction.
        pixel_max: the source's white level when it is not 0-255 or 0-1 (aekit.core.pixels). Shards hold
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
    from aekit.core.pixels import check_pixel_max

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


def _shard_intact(tf, path: str, record: ShardRecord) -> bool:
    try:
        return tf.io.gfile.exists(path) and tf.io.gfile.stat(path).length == record.bytes and _sha256(tf, path) == record.sha256
    except tf.errors.OpError:
        return False
