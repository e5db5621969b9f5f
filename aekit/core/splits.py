"""Which images of a single-split source are held out for validation: the one split rule.

TensorFlow-free. Training (`aekit.data.loading`), packing (`aekit.data.pack`) and the edge (a run's
validation images for `aekit score --calibrate val`) all split here, so the same source, seed
and fraction always give the same validation images.

The rule:
- By default a seeded random draw: a pure function of (seed, the number of images, their
  groups), never of the order files happen to sort in. Runs on the same data with the same
  seed are comparable, and a resumed run validates on the same images.
- Image folders with sub-folders are stratified: every sub-folder (each distinct parent folder
  of the images) gives its share, rounded by largest remainder, and at least one image when it
  holds two or more. Without this a sorted folder's "last 10%" is one sub-folder.
- `from_end=True` holds out the LAST fraction instead, for data ordered on purpose (a time
  series, frames of a video), where a random draw would validate on neighbours of training images.

    >>> split = split_indices(1000, 0.1, seed=0)
    >>> len(split.train), len(split.val)
    (900, 100)
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from aekit.errors import AekitError

# Mixed into the seed so the split's draw is not the same stream as the model's initial weights.
SPLIT_SALT = 0x5EED5
RANDOM, STRATIFIED, LAST = "random", "stratified", "last"


@dataclass(frozen=True)
class Split:
    """Train and validation indices (ascending) into a source, and how they were chosen."""

    train: np.ndarray
    val: np.ndarray
    rule: str  # RANDOM, STRATIFIED or LAST
    val_split: float
    seed: int | None  # None for LAST
    groups: dict[str, list[int]] | None = None  # stratified: group -> [train images, validation images]

    def describe(self) -> str:
        """The split in words, for config.json and the train command's summary."""
        n_val = len(self.val)
        if self.rule == LAST:
            return f"last {self.val_split:g} of the source ({n_val} images, --val-from-end)"
        text = f"seeded random {self.val_split:g} of the source ({n_val} images, seed {self.seed})"
        if self.rule == STRATIFIED:
            text += f", stratified over {len(self.groups)} sub-folders"
        return text

    def to_json(self) -> dict:
        record = {"rule": self.rule, "val_split": self.val_split, "seed": self.seed, "val_images": int(len(self.val))}
        if self.groups is not None:
            record["groups"] = {name: {"train": counts[0], "val": counts[1]} for name, counts in self.groups.items()}
        return record


def split_indices(count: int, val_split: float, seed: int = 0, groups: list[str] | None = None, from_end: bool = False) -> Split:
    """The validation split of `count` images.

    Args:
        count: images in the source.
        val_split: the fraction held out, in (0, 1).
        seed: the run's seed (the draw depends on it and on nothing else but the counts and groups).
        groups: a group name per image (image folders: the parent folder); more than one distinct
            name stratifies the draw.
        from_end: hold out the last fraction instead (data ordered on purpose).

    Raises:
        AekitError: too few images to hold any out and keep any to train on.
    """
    n_val = max(1, int(round(count * val_split)))
    if n_val >= count:
        raise AekitError(f"{count} images are too few to hold out {val_split:.0%} for validation. Add images.")
    everything = np.arange(count)
    if from_end:
        return Split(everything[:-n_val], everything[-n_val:], LAST, val_split, None)
    rng = np.random.default_rng([SPLIT_SALT, int(seed)])
    names = sorted(set(groups)) if groups is not None else []
    if len(names) <= 1:
        val = np.sort(rng.permutation(count)[:n_val])
        return Split(np.setdiff1d(everything, val), val, RANDOM, val_split, int(seed))
    labels = np.asarray(groups)
    members = {name: np.flatnonzero(labels == name) for name in names}
    quota = _stratified_quota({name: len(m) for name, m in members.items()}, val_split)
    picked = [rng.permutation(members[name])[: quota[name]] for name in names]  # names in sorted order: deterministic
    val = np.sort(np.concatenate(picked))
    chosen = Counter(labels[val].tolist())
    per_group = {name: [len(members[name]) - chosen[name], chosen[name]] for name in names}
    return Split(np.setdiff1d(everything, val), val, STRATIFIED, val_split, int(seed), per_group)


def _stratified_quota(sizes: dict[str, int], val_split: float) -> dict[str, int]:
    """Validation images per group: val_split of each, by largest remainder, at least one of any group of two or more."""
    total = max(1, int(round(sum(sizes.values()) * val_split)))
    exact = {name: size * val_split for name, size in sizes.items()}
    quota = {name: int(np.floor(value)) for name, value in exact.items()}
    by_remainder = sorted(sizes, key=lambda name: (-(exact[name] - quota[name]), name))
    for name in by_remainder[: max(0, total - sum(quota.values()))]:
        quota[name] += 1
    for name, size in sizes.items():
        if size >= 2:
            quota[name] = min(max(quota[name], 1), size - 1)
    return quota


def spread(total: int, count: int) -> np.ndarray:
    """`count` indices spread evenly over range(total), first and last included (pictures, samples)."""
    return np.linspace(0, total - 1, count).astype(int)


def folder_groups(names: list[str]) -> list[str]:
    """The stratum of each image of a folder: its parent folder relative to the source ("." at the top)."""
    return [name.replace("\\", "/").rpartition("/")[0] or "." for name in names]
