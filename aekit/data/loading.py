"""Training data: TFDS names and local files, split into train/validation.

`load_data` turns a `--dataset` string into in-memory train/validation arrays (N, H, W, C) in
their stored dtype plus the `PixelScaling` that maps them to [0, 1] (or a packed dataset, read
through the same questions). Files (IDX, .npz/.npy, image folders) are read by `aekit.core.sources`,
the same reader the edge side uses; the split is `aekit.core.splits`' rule, the scaling
`aekit.core.pixels`'.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from aekit.core.pixels import PixelScaling
from aekit.core.recipe import dataset_identity
from aekit.core.sources import (
    IMAGE_SUFFIXES,
    as_nhwc,
    idx_files,
    image_files,
    npz_keys,
    read_array,
    read_idx,
    read_image_folder,
    source_kind,
    split_key,
)
from aekit.core.splits import Split, folder_groups, split_indices, spread
from aekit.data.network import network_reachable
from aekit.errors import AekitError
from aekit.lazy import tfds

DEFAULT_DATASET = "mnist"
BUNDLED_SAMPLE = "bundled-mnist-sample"


@dataclass
class DataSplits:
    """Training and validation images as loaded, before scaling.

    Attributes:
        train: (N, H, W, C) array, uint8 or float, in the source's own range.
        val: (M, H, W, C) array, same dtype and range.
        scaling: maps stored values to float32 model inputs in [0, 1].
        source: what was loaded, in words (a TFDS name, a path, the bundled sample).
        kind: "tfds", "idx", "npz", "npy", "images" or "bundled".
        validation: where the validation images came from, in words.
        note: set when the source is not what was asked for (offline fallback).
        split: how a single-split source was split (aekit.core.splits), None when the source has two.
    """

    train: np.ndarray
    val: np.ndarray
    scaling: PixelScaling
    source: str
    kind: str
    validation: str
    note: str | None = None
    val_split: float = 0.1
    split: Split | None = None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(int(d) for d in self.train.shape[1:])

    def describe(self) -> dict:
        return {
            "source": self.source,
            "kind": self.kind,
            "train_images": int(len(self.train)),
            "val_images": int(len(self.val)),
            "image_shape": list(self.image_shape),
            "stored_dtype": str(self.train.dtype),
            "validation": self.validation,
            "val_split": self.val_split,
            "split": self.split.to_json() if self.split else {"rule": "given", "val_split": None},
            "pixel_scaling": self.scaling.to_json(),
            "note": self.note,
        }

    def count(self, split: str) -> int:
        """Images in "train" or "val"."""
        return len(self._split(split))

    def head(self, split: str, count: int) -> np.ndarray:
        """The first `count` stored images of a split."""
        return self._split(split)[:count]

    def sample(self, split: str, *counts: int):
        """`count` stored images spread evenly over a split (deterministic; all when it has fewer).

        Several counts give a tuple of samples, one for each.
        """
        images = self._split(split)
        samples = tuple(images if count >= len(images) else images[spread(len(images), count)] for count in counts)
        return samples[0] if len(counts) == 1 else samples

    def model_batches(self, split: str, batch: int):
        """A split as float32 model inputs in [0, 1], `batch` images at a time, in order."""
        images = self._split(split)
        for start in range(0, len(images), batch):
            yield self.scaling.to_model_numpy(images[start : start + batch])

    def _split(self, split: str) -> np.ndarray:
        return {"train": self.train, "val": self.val}[split]


class PackedSplits:
    """A packed dataset (`aekit data pack`) read through the same questions as DataSplits, never whole.

    Training streams its shards (`StreamedImages`); validation, pictures and calibration read
    what they need. `packed` is the `aekit.data.pack.reader.PackedDataset`.
    """

    kind = "packed"

    def __init__(self, packed, val_split: float):
        self.packed, self.val_split = packed, val_split
        self.scaling = packed.scaling
        self.source = packed.folder
        self.note = None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(int(d) for d in self.packed.image_shape)

    def describe(self) -> dict:
        return self.packed.describe()

    def count(self, split: str) -> int:
        return int(self.packed.counts[split])

    def head(self, split: str, count: int) -> np.ndarray:
        return self.packed.read(split, count)

    def sample(self, split: str, *counts: int):
        """Like DataSplits.sample; several counts are read in one streaming pass and returned as a tuple."""
        total = self.count(split)
        wanted = [spread(total, count) if count < total else np.arange(total) for count in counts]
        picked, start = [[] for _ in counts], 0
        for images in self.packed.batches(split, 4096):  # one pass, a batch in memory at a time
            images = images.numpy()
            for indices, out in zip(wanted, picked):
                out.append(images[indices[(indices >= start) & (indices < start + len(images))] - start])
            start += len(images)
        samples = tuple(np.concatenate(out) for out in picked)
        return samples[0] if len(counts) == 1 else samples

    def model_batches(self, split: str, batch: int):
        for images in self.packed.batches(split, batch):
            yield self.scaling.to_model_numpy(images.numpy())


def load_data(
    dataset: str | None = None,
    val_split: float = 0.1,
    data_dir: str | None = None,
    *,
    seed: int = 0,
    val_from_end: bool = False,
    pixel_max: float | None = None,
) -> DataSplits | PackedSplits:
    """Loads a training source named the way `--dataset` names it.

    Args:
        dataset: a TFDS name (`mnist`, `fashion_mnist`, `cifar10`, ...), a folder of
            IDX files, a `.npz`/`.npy` file, a folder of PNG/JPEG images, or a folder
            packed by `aekit data pack` (returned as PackedSplits, split as packed). None
            means TFDS MNIST when it is prepared or downloadable, else the MNIST
            sample bundled with aekit (see `DataSplits.note`).
        val_split: for sources with a single split, the fraction held out for validation: a
            seeded random draw, stratified over the sub-folders of an image folder (aekit.core.splits).
        data_dir: TFDS data directory (TFDS's default when None).
        seed: the draw's seed (the run's seed): same seed and files, same validation images.
        val_from_end: hold out the LAST fraction instead (data ordered on purpose, e.g. time series).
        pixel_max: the value of white when the source is not 0-255 or 0-1 (aekit.core.pixels).

    Returns:
        DataSplits with images shaped (N, H, W, C).

    Example:
        >>> splits = load_data("../shared/data/mnist", val_split=0.2)
        >>> splits.train.shape
        (8000, 28, 28, 1)
    """
    if not 0.0 < val_split < 1.0:
        raise AekitError(f"--val-split must be between 0 and 1 (exclusive), got {val_split}.")
    rule = _SplitRule(val_split, seed, val_from_end, pixel_max, dataset or DEFAULT_DATASET)
    if dataset is not None and _is_pack(dataset):  # shards: checked (sizes and sha256), then streamed, never loaded whole
        from aekit.data.pack.reader import PackedDataset

        # A local pack is recorded by its absolute path: a run, its export and bench find it from any folder.
        packed = PackedDataset.open(dataset if "://" in dataset else str(Path(dataset).expanduser().resolve()))
        splits = PackedSplits(packed, packed.manifest.val_split)
        if pixel_max is not None and splits.scaling.pixel_max != pixel_max:
            raise AekitError(
                f"--pixel-max {pixel_max:g}: {dataset} is a pack, scaled when it was packed ({splits.scaling.describe()}). "
                "Drop --pixel-max, or pack the source again with it."
            )
        return splits
    if dataset is None:
        splits = _load_default(rule, data_dir)
    elif dataset == BUNDLED_SAMPLE:
        splits = _load_bundled(rule)
    else:
        path_text, key = split_key(dataset)
        path = Path(path_text).expanduser()
        if path.exists():
            splits = _load_path(path.resolve(), rule, key)
        elif _looks_like_path(path_text):
            raise AekitError(f"Dataset path {path_text} does not exist. Check the path, or pass a TFDS name such as mnist.")
        else:
            splits = _load_tfds(dataset, rule, data_dir, fallback=False)
    _check_splits(splits, pixel_max)
    splits.val_split = val_split
    return splits


@dataclass(frozen=True)
class _SplitRule:
    """How a source with one split is divided, and the white level named for it."""

    val_split: float
    seed: int
    from_end: bool
    pixel_max: float | None
    source: str = "the source"

    def apply(self, images, groups: list[str] | None = None):
        """(train, val, description, Split) of images (an array, or a list of files to read later)."""
        split = split_indices(len(images), self.val_split, self.seed, groups, self.from_end)
        if isinstance(images, list):
            return [images[i] for i in split.train], [images[i] for i in split.val], split.describe(), split
        return images[split.train], images[split.val], split.describe(), split

    def scaling(self, *parts: np.ndarray) -> PixelScaling:
        """The rule on the whole source; `parts` (train, validation) must be stored alike."""
        if len(parts) == 2 and (parts[0].dtype.kind == "f") != (parts[1].dtype.kind == "f"):
            raise AekitError(
                f"The training images are {parts[0].dtype} but the validation images are {parts[1].dtype}. "
                "Store both splits alike (uint8 0-255, or float 0-1)."
            )
        return PixelScaling.for_images(*parts, pixel_max=self.pixel_max, what=f"The images of {self.source}")


def _is_pack(dataset: str) -> bool:
    """A folder `aekit data pack` wrote: its dataset.json names aekit's format, or is unreadable beside
    shards (PackedDataset.open reports the damage); a folder with another program's dataset.json is an
    ordinary folder."""
    folder = Path(dataset).expanduser()
    if "://" not in dataset and not (folder / "dataset.json").is_file():
        return False  # no pack here: decided without the TensorFlow file system (the edge reads runs' sources)
    from aekit.data.pack.reader import is_packed
    from aekit.data.pack.schema import MANIFEST, SHARD_SUFFIX

    if is_packed(dataset):
        return True
    if "://" in dataset or not (folder / MANIFEST).is_file() or not any(folder.glob(f"*{SHARD_SUFFIX}")):
        return False
    try:
        json.loads((folder / MANIFEST).read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return True  # damaged
    return False


def packed_val_split(dataset: str | None) -> float | None:
    """The validation fraction a pack was split with when `dataset` is a pack (None otherwise, or unreadable)."""
    if not dataset or "://" in dataset:
        return None
    from aekit.data.pack.schema import FORMAT, MANIFEST

    try:
        record = json.loads((Path(dataset).expanduser() / MANIFEST).read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    value = record.get("val_split") if isinstance(record, dict) and record.get("format") == FORMAT else None
    return float(value) if isinstance(value, (int, float)) else None


def check_same_data(record: dict, splits, what: str) -> None:
    """AekitError if a pack a run recorded has changed since (its identity, the hash of its shards, differs)."""
    recorded, found = record.get("identity"), splits.describe().get("identity")
    if recorded and found and recorded != found:
        raise AekitError(
            f"{record.get('packed')} is not the pack {what} was trained on: its shards changed (identity "
            f"{found[:12]}…, the run recorded {recorded[:12]}…). Restore that pack, or train a new run on this one."
        )


def reload_data(record: dict, data_dir: str | None = None) -> DataSplits:
    """Loads the data a run was trained on again, from the `data` record in its config.json.

    The split and the pixel scaling are the recorded ones (a run recorded before seeded splits
    held out the last fraction, and is read that way).
    """
    splits = load_data(dataset_identity(record), record.get("val_split", 0.1), data_dir, **split_options(record))
    check_same_data(record, splits, "the run")
    return splits


def split_options(record: dict) -> dict:
    """load_data's seed, val_from_end and pixel_max as a run's `data` record gives them."""
    split = record.get("split") if isinstance(record.get("split"), dict) else {"rule": "last"}
    scaling = record.get("pixel_scaling") if isinstance(record.get("pixel_scaling"), dict) else {}
    return {
        "seed": int(split.get("seed") or 0),
        "val_from_end": split.get("rule") == "last",
        "pixel_max": scaling.get("pixel_max"),
    }


def validation_images(run_dir: str | Path) -> tuple[np.ndarray, str, PixelScaling]:
    """The stored validation images of a run (N, H, W, C), where they came from in words, and their scaling.

    TensorFlow-free for file sources (what the edge can re-read); a TFDS name or a pack needs
    the training side, and is refused with the fix.
    """
    from aekit.core.recipe import read_config

    record = read_config(Path(run_dir)).get("data") or {}
    if record.get("packed") or record.get("kind") == "tfds":
        raise AekitError(
            f"The run {run_dir} trained on {record.get('packed') or record.get('source')}, which only the training "
            "side reads. Calibrate on a folder or array of normal images instead (--calibrate PATH)."
        )
    splits = reload_data(record)
    return splits.val, f"validation split of {run_dir} ({splits.validation}, {splits.source})", splits.scaling


def _looks_like_path(dataset: str) -> bool:
    return (
        any(sep in dataset for sep in ("/", os.sep))
        or dataset.startswith(".")
        or Path(dataset).suffix.lower()
        in (
            ".npz",
            ".npy",
            ".gz",
            *IMAGE_SUFFIXES,
        )
    )


def _load_default(rule: _SplitRule, data_dir: str | None) -> DataSplits:
    return _load_tfds(DEFAULT_DATASET, rule, data_dir, fallback=True)


def _load_tfds(name: str, rule: _SplitRule, data_dir: str | None, fallback: bool) -> DataSplits:
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as exc:  # TFDS raises its own DatasetNotFoundError and friends
        raise AekitError(
            f"--dataset {name!r} is neither an existing path nor a TFDS dataset name ({type(exc).__name__}). "
            "Pass a folder of IDX files, a .npz/.npy file, a folder of images, or a name from `tfds.list_builders()`."
        ) from None
    if not builder.is_prepared():
        if not network_reachable():
            if fallback:
                return _load_bundled(
                    rule,
                    note=f"TFDS {name} is not prepared and its download host is unreachable; "
                    "trained on the MNIST sample bundled with aekit instead",
                )
            raise AekitError(
                f"TFDS dataset {name!r} is not prepared in {builder.data_dir} and its download host is "
                "unreachable. Connect to the network, set TFDS_DATA_DIR to a prepared copy, or pass local "
                "files with --dataset PATH."
            )
        try:
            builder.download_and_prepare()
        except Exception as exc:
            raise AekitError(
                f"Downloading TFDS dataset {name!r} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}. "
                "Retry, or pass local files with --dataset PATH."
            ) from None
    splits = builder.info.splits
    if "image" not in builder.info.features:
        raise AekitError(f"TFDS dataset {name!r} has no 'image' feature. Pick an image dataset.")
    train = _tfds_images(builder, "train")
    # Split names are known once prepared; when TFDS does not list them, try "test".
    held_out = next((s for s in ("test", "validation") if s in splits), None if splits else "test")
    val, split = None, None
    if held_out:
        try:
            val, validation = _tfds_images(builder, held_out), f"TFDS split '{held_out}'"
        except (ValueError, KeyError):
            val = None
    if val is None:
        train, val, validation, split = rule.apply(train)
    return DataSplits(train, val, rule.scaling(train, val), f"tfds:{name}", "tfds", validation, split=split)


def _tfds_images(builder, split: str) -> np.ndarray:
    # Batched reads, then one concatenation (batch_size=-1 aborts under tfds.testing.mock_data).
    ds = builder.as_dataset(split=split).map(lambda example: example["image"]).batch(4096)
    chunks = list(tfds.as_numpy(ds))
    if not chunks:
        raise AekitError(f"TFDS {builder.name} split {split!r} is empty. Re-prepare the dataset.")
    return as_nhwc(np.concatenate(chunks), f"TFDS {builder.name} {split}")


def _load_bundled(rule: _SplitRule, note: str | None = None) -> DataSplits:
    folder = resources.files("aekit") / "sample"
    with resources.as_file(folder) as path:
        images = read_idx(path / "mnist-sample-images-idx3-ubyte.gz")
    train, val, validation, split = rule.apply(images)
    return DataSplits(train, val, rule.scaling(images), BUNDLED_SAMPLE, "bundled", validation, note=note, split=split)


def _load_path(path: Path, rule: _SplitRule, key: str | None = None) -> DataSplits:
    kind = source_kind(path)
    if key is not None and kind != "npz":
        raise AekitError(f"{path}:{key}: only a .npz file holds named arrays. Drop :{key}.")
    if kind == "idx":
        return _load_idx(idx_files(path), rule, path)
    if kind == "npz":
        return _load_npz(path, rule, key)
    groups = None
    if kind == "npy":
        images = read_array(path)
    else:
        images = read_image_folder(path)
        groups = folder_groups([str(f.relative_to(path)) for f in image_files(path)])
    train, val, validation, split = rule.apply(images, groups)
    return DataSplits(train, val, rule.scaling(images), str(path), kind, validation, split=split)


def _load_idx(files: list[Path], rule: _SplitRule, origin: Path) -> DataSplits:
    by_split = {("test" if f.name.lower().startswith(("t10k", "test")) else "train"): f for f in files}
    split = None
    if "train" in by_split and "test" in by_split:
        train = read_idx(by_split["train"])
        val = read_idx(by_split["test"])
        validation = f"IDX file {by_split['test'].name}"
    else:
        parts = [read_idx(f) for f in files]
        shapes = {f.name: part.shape[1:] for f, part in zip(files, parts)}
        if len(set(shapes.values())) > 1:
            listed = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
            raise AekitError(f"The IDX files in {origin} hold images of different sizes ({listed}). Keep one size per folder.")
        train, val, validation, split = rule.apply(np.concatenate(parts))
    return DataSplits(train, val, rule.scaling(train, val), str(origin), "idx", validation, split=split)


def _load_npz(path: Path, rule: _SplitRule, key: str | None = None) -> DataSplits:
    """A .npz: array `key` split by the rule; else x_train with x_test as validation when both are there."""
    split, source = None, str(path) if key is None else f"{path}:{key}"
    if key is None and {"x_train", "x_test"} <= set(npz_keys(path)):
        train, val, validation = read_array(path, "x_train"), read_array(path, "x_test"), "array x_test"
    else:
        train, val, validation, split = rule.apply(read_array(path, key))
    if train.shape[1:] != val.shape[1:]:
        raise AekitError(f"{path}: x_train images are {train.shape[1:]} but x_test are {val.shape[1:]}. Make them match.")
    return DataSplits(train, val, rule.scaling(train, val), source, "npz", validation, split=split)


def _check_splits(splits: DataSplits, pixel_max: float | None = None) -> None:
    if len(splits.train) == 0 or len(splits.val) == 0:
        raise AekitError(
            f"{splits.source} gave {len(splits.train)} training and {len(splits.val)} validation images. Add images."
        )
    if splits.train.shape[1:] != splits.val.shape[1:]:
        raise AekitError(
            f"{splits.source}: training images are {splits.train.shape[1:]} but validation images are "
            f"{splits.val.shape[1:]}. Give both splits one image size."
        )
    if (splits.train.dtype.kind == "f") != (splits.val.dtype.kind == "f"):
        raise AekitError(
            f"{splits.source}: training images are {splits.train.dtype} but validation images are {splits.val.dtype}. "
            "Store both splits alike (uint8 0-255, or float 0-1)."
        )
    # Each split alone must read as the same units as the whole (a 0-1 split beside a 0-255 one is a mistake).
    for name, part in (("training", splits.train), ("validation", splits.val)):
        try:
            alone = PixelScaling.for_images(part, pixel_max=pixel_max)
        except AekitError:
            continue  # a dim part of a bright whole is not evidence of other units
        if alone != splits.scaling:
            other = "validation" if name == "training" else "training"
            raise AekitError(
                f"{splits.source}: the {name} images read as {alone.describe()} but the {other} images do not "
                f"({splits.scaling.describe()} for both together). Store both splits alike (uint8 0-255, or float 0-1)."
            )
