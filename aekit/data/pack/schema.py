"""The pack format, in one place: dataset.json's schema (PackOptions, ShardRecord, PackManifest) and its checks.

Every field that decides what training sees is held to what `pack` writes (see PackManifest.from_json).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from aekit.core.checks import is_count, is_fraction, is_plain_name, is_positive, is_sha256, is_whole
from aekit.core.pixels import UINT8_MAX, PixelScaling
from aekit.core.sources import MAX_IMAGE_PIXELS
from aekit.data.pack.files import _q

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
SHUFFLE_IMAGES = 8192  # at most this many images per shuffle block ...
SHUFFLE_BYTES = 64 << 20  # ... and at most this many bytes of them (a block is held ~3 times while shuffled)


AUTO_PARALLEL_IMAGES = 10_000  # workers=0 decodes smaller folders in-process: starting processes would cost more
CHANNELS = (1, 3, 4)  # what aekit's sources give (aekit.core.sources.check_shape)
RECORD_FRAMING = 16  # a TFRecord's bytes around its payload: length (8), its crc (4), the payload's crc (4)
CHECK_BATCH = 4096  # records per batch when `PackedDataset.check_records` reads a shard

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class PackOptions:
    """What a pack was asked for; the same options into the same folder continue or confirm that pack.

    Attributes:
        dataset: the source as `--dataset` names it (a resolved path, or a TFDS/bundled name).
        val_split: the held-out fraction for single-split sources.
        shard_size: images per shard.
        fingerprint: sha256 over the source files' names, sizes and mtimes (None for TFDS and the
            bundled sample), so a source changed since it was packed is noticed.
        seed, val_from_end: the split rule (aekit.core.splits) for single-split sources.
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
        if not is_whole(seed, 0, 2**32 - 1):
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
        if not is_sha256(sha256):
            raise ValueError(f"shard {file} has sha256 {sha256!r}, not 64 hex digits")
        high = data.get("high")
        if high is not None and not is_whole(high, 0, int(UINT8_MAX)):
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
        source, kind, validation, val_split: as `aekit.data.loading.DataSplits` describes the source.
        splits: {"train": {"images": N, "shards": [ShardRecord...]}, "val": {...}}.
        options: the PackOptions the pack was made with.
        stored_as: how source pixels became the stored uint8 ("as-is", "round(x * 255)", ...).
        source_dtype: the source's own dtype.
        note: set when the source is not what was asked for (aekit.data.loading's offline fallback).
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
        if not is_positive(divide_by) or divide_by > UINT8_MAX:
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
            if not is_whole(listed) or listed != manifest.count(split):
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
    if not is_count(value):
        raise ValueError(f"{what} is {value!r}, not a positive whole number")
    return value


def _fraction(value, what: str) -> float:
    if not is_fraction(value):
        raise ValueError(f"{what} is {value!r}, not a number between 0 and 1 (exclusive)")
    return float(value)


def _plain_name(name) -> str:
    """A shard's file name as dataset.json lists it: a plain name inside the pack folder, never a path."""
    if not is_plain_name(name):
        raise ValueError(f"shard file {name!r} is not a plain file name inside the pack folder")
    return name


def _image_shape(value) -> list[int]:
    """[H, W, C] as `pack` writes it: whole numbers, C in CHANNELS, H x W at most MAX_IMAGE_PIXELS."""
    if (
        not isinstance(value, list)
        or len(value) != 3
        or not all(is_count(d) for d in value)
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


def repack_command(options: PackOptions, out: str) -> str:
    """The `aekit data pack` command that makes (or repairs) the pack `options` describe in `out`."""
    split = " --val-from-end" if options.val_from_end else f" --seed {options.seed}" if options.seed else ""
    return (
        f"aekit data pack {_q(options.dataset)} {_q(out)} --shard-size {options.shard_size} --val-split {options.val_split!r}"
        + split
    )
