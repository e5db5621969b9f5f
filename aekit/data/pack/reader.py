"""Reading a pack: PackedDataset opens dataset.json, checks the shards, and streams them to training.

Each worker reads only its own shard files; epoch e's order is a function of (seed, e) alone.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from aekit.data.pack.files import _first_line, _folder_name, _join, _q, _sha256, _shape_text, _tf
from aekit.data.pack.records import _first, _read_records, _shard_problem, _starts
from aekit.data.pack.schema import (
    CHECK_BATCH,
    FORMAT,
    MANIFEST,
    SHUFFLE_BYTES,
    SHUFFLE_IMAGES,
    SPLITS,
    PackManifest,
    PackOptions,
    repack_command,
)
from aekit.errors import AekitError

if TYPE_CHECKING:
    from aekit.data.pack.schema import ShardRecord


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
                except tf.errors.DataLossError as exc:
                    raise self.damaged(exc, [(split, path, first)]) from None
                except tf.errors.OpError as exc:
                    raise AekitError(
                        f"{path} is not a file of aekit image records ({_first_line(exc)}; corrupt or changed): {self.fix}."
                    ) from None
                if count != record.images:
                    raise AekitError(f"{path} holds {count:,} images, not the {record.images:,} {MANIFEST} counts: {fresh}.")
                total += count
        return total

    def damaged(self, exc: BaseException, shards: list[tuple[str, str, int]] | None = None) -> AekitError:
        """The AekitError for a DataLossError (a record whose checksum fails) met while reading this pack.

        Reads `shards` ((split, path, index of its first image); default every shard) record by record
        to name the shard and the record; a pack where none fails gets a message naming the pack.
        """
        if shards is None:
            shards = [(split, *shard) for split in SPLITS for shard in zip(self.shards[split], self.starts[split])]
        fresh = f"re-pack into a new folder with `{repack_command(self.manifest.options, 'NEW_OUT')}`"
        found = _damaged_record([path for _, path, _ in shards])
        if found is None:
            return AekitError(
                f"{self.folder} holds a corrupt record ({_first_line(exc)}); find it with `aekit data check "
                f"{_q(self.folder)}`, then {fresh}."
            )
        path, number, detail = found
        split, _, first = next(shard for shard in shards if shard[1] == path)
        return AekitError(
            f"{path}: record {number} (counting from 0; image {first + number} of {split}) is corrupt ({detail}): "
            f"{fresh} (`aekit data check {_q(self.folder)}` checks every record)."
        )

    def describe(self) -> dict:
        """The run's `data` record, shaped like `aekit.data.loading.DataSplits.describe()`, plus the folder and identity."""
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
        except _tf().errors.DataLossError as exc:
            raise self.damaged(exc) from None
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


def _damaged_record(paths: list[str]) -> tuple[str, int, str] | None:
    """(shard, number of its record counted from 0, the reader's words) of the first record in `paths`
    whose checksum or framing fails; None when every record reads."""
    tf = _tf()
    for path in paths:
        number = 0
        try:
            for _ in tf.data.TFRecordDataset(path):
                number += 1
        except tf.errors.DataLossError as exc:
            at = re.search(r"corrupted record at (\d+)", str(exc))
            return path, number, f"its checksum fails, at byte {int(at[1]):,}" if at else _first_line(exc)
        except tf.errors.OpError:
            continue
    return None
