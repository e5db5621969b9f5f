"""How pixels become model inputs: the one place that knows the scaling.

Models take float32 images in [0, 1], computed as `stored / divide_by`. The rule that picks
`divide_by` for a source (training, packing, export calibration, bench and every edge command
apply it, to the whole source, never per batch):

- `pixel_max` given (`--pixel-max N`): divide by N; every value must lie in [0, N]. This is how
  a source in other units is named: 0-16 digits, 12-bit (4095) or 16-bit (65535) sensors.
- integers (uint8, uint16, ...) reaching 64 to 255: 0-255 values, divide by 255.
- floats reaching 0.25 to 1: 0-1 values, divide by 1.
- floats reaching 64 to 255: 0-255 values, divide by 255.
- anything else is refused with the fix, never trained in silence: integers or floats above 255
  (12- or 16-bit data: `--pixel-max 4095`, `65535`), and sources whose brightest pixel is far
  below white (integers or floats up to 63, floats under 0.25: 0-16 digits, masks of 0/1, or
  0-255 data divided by 255 twice) — `--pixel-max` names what white is, `--pixel-max 255` (or
  1) says the images really are that dark.

A run records the scaling in config.json and the export in its manifest, so the edge scales
new images the way the model was trained. A single frame given to an edge session is not judged
for darkness (one dark frame is no evidence): `PixelScaling.for_model` scales it by the model's rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from aekit.errors import AekitError
from aekit.lazy import tf

UINT8_MAX = 255.0
# A whole source whose brightest pixel is below DIM of its range's white is taken for other units.
DIM_FRACTION = 64 / 255


@dataclass(frozen=True)
class PixelRange:
    """What the rule looks at: the dtype kind ("u"/"i" integers, "f" floats) and the extremes of a whole source."""

    kind: str
    low: float
    high: float
    images: int = 0

    @classmethod
    def of(cls, images: np.ndarray, what: str = "The images") -> PixelRange:
        """The range of an array; AekitError for dtypes other than integers and floats, or NaN/inf pixels."""
        images = np.asarray(images)
        if images.dtype == np.bool_ or images.dtype.kind not in "uif":
            raise AekitError(
                f"{what} have dtype {images.dtype}; expected uint8 or float. Convert the array to uint8 (0-255) or float32 (0-1)."
            )
        if images.size == 0:
            return cls(images.dtype.kind, 0.0, 0.0, 0)
        if images.dtype.kind == "f" and not np.isfinite(images).all():
            bad = int(images.size - np.isfinite(images).sum())
            raise AekitError(f"{what} contain {bad} NaN or infinite pixel values. Clean or drop those images.")
        return cls(images.dtype.kind, float(images.min()), float(images.max()), int(len(images)))

    def merge(self, other: PixelRange) -> PixelRange:
        """The range of two parts of one source (train and validation, or batches of a stream)."""
        if not other.images:
            return self
        if not self.images:
            return other
        if (self.kind == "f") != (other.kind == "f"):
            raise AekitError(
                "Part of the images are integers and part are floats. Store the whole source alike (uint8 0-255, or float 0-1)."
            )
        return PixelRange(self.kind, min(self.low, other.low), max(self.high, other.high), self.images + other.images)


@dataclass(frozen=True)
class PixelScaling:
    """Affine map from stored pixel values to model inputs: ``x / divide_by``.

    Args:
        divide_by: 255.0 for 0-255 data, 1.0 for data already in [0, 1], or the `pixel_max` named.
        pixel_max: the white level the user named (`--pixel-max`), None when the rule chose.
    """

    divide_by: float = UINT8_MAX
    pixel_max: float | None = None

    @classmethod
    def for_images(cls, *parts: np.ndarray, pixel_max: float | None = None, what: str = "The images") -> PixelScaling:
        """The scaling for a whole source (all its parts, never one batch), by the module's rule."""
        found = PixelRange.of(parts[0], what)
        for part in parts[1:]:
            found = found.merge(PixelRange.of(part, what))
        return cls.for_range(found, pixel_max, what)

    @classmethod
    def for_range(cls, found: PixelRange, pixel_max: float | None = None, what: str = "The images") -> PixelScaling:
        """The rule itself, on a source's range: a scaling, or AekitError with the fix."""
        check_pixel_max(pixel_max)
        low, high = found.low, found.high
        if pixel_max is not None:
            if low < 0 or high > pixel_max:
                raise AekitError(
                    f"{what} span [{low:g}, {high:g}], outside [0, {pixel_max:g}] that --pixel-max {pixel_max:g} names. "
                    f"Pass the source's real white level (--pixel-max {_suggest_max(found)}), or fix the images."
                )
            return cls(float(pixel_max), float(pixel_max))
        if low < 0:
            raise AekitError(
                f"{what} span [{low:g}, {high:g}]: pixels must not be negative. Rescale them to 0-255 or 0-1 "
                "(e.g. (x - x.min()) / (x.max() - x.min())) and train again."
            )
        if high > UINT8_MAX:
            raise AekitError(
                f"{what} reach {high:g}, above 255: they are not 8-bit pixels. If {_suggest_max(found)} is white "
                f"(e.g. a {_bits(high)}-bit sensor), pass --pixel-max {_suggest_max(found)}."
            )
        if found.kind == "f" and high <= 1.0:
            if high < DIM_FRACTION:
                raise _dim_error(what, low, high, white="1")
            return cls(1.0)
        if high < DIM_FRACTION * UINT8_MAX:
            raise _dim_error(what, low, high, white="255")
        return cls(UINT8_MAX)

    def for_model(self, found: PixelRange, pixel_max: float | None = None, what: str = "The images") -> PixelScaling:
        """The scaling for new images given to a model trained with this scaling.

        A model trained with a named `pixel_max` takes images in those units (unless another one is
        named now); otherwise the images' own dtype decides as in training (integers 0-255; floats
        0-1, or 0-255 when they reach above 1), without the darkness test (one frame is no evidence).
        """
        check_pixel_max(pixel_max)
        named = pixel_max if pixel_max is not None else self.pixel_max
        if named is not None or found.low < 0 or found.high > UINT8_MAX:
            return PixelScaling.for_range(found, named, what)
        if found.kind == "f" and found.high <= 1.0:
            return PixelScaling(1.0)
        return PixelScaling(UINT8_MAX)

    def to_model_numpy(self, images: np.ndarray) -> np.ndarray:
        """Scales a numpy batch to float32 model inputs in [0, 1]."""
        return np.asarray(images, dtype=np.float32) / np.float32(self.divide_by)

    def to_model_tf(self, images):
        """Scales a TensorFlow tensor to float32 model inputs in [0, 1]."""

        return tf.cast(images, tf.float32) / self.divide_by

    def describe(self) -> str:
        """The rule that was applied, in words."""
        if self.pixel_max is not None:
            return f"stored / {self.pixel_max:g} (--pixel-max {self.pixel_max:g})"
        return "stored / 255 (0-255 values)" if self.divide_by == UINT8_MAX else "stored as is (0-1 values)"

    def to_json(self) -> dict:
        return {
            "input_range": [0.0, 1.0],
            "model_input": "float32 = stored / divide_by",
            "divide_by": self.divide_by,
            "pixel_max": self.pixel_max,
            "rule": self.describe(),
        }

    @classmethod
    def from_json(cls, data: dict) -> PixelScaling:
        """From `to_json` output (older records have only divide_by)."""
        pixel_max = data.get("pixel_max")
        return cls(float(data["divide_by"]), float(pixel_max) if pixel_max is not None else None)


def check_pixel_max(pixel_max: float | None) -> None:
    """AekitError unless `pixel_max` is None or a positive finite number."""
    if pixel_max is None:
        return
    if isinstance(pixel_max, bool) or not isinstance(pixel_max, int | float) or not math.isfinite(pixel_max) or pixel_max <= 0:
        raise AekitError(f"--pixel-max must be a positive number (the value of white, e.g. 16, 255 or 4095), got {pixel_max}.")


def _dim_error(what: str, low: float, high: float, white: str) -> AekitError:
    return AekitError(
        f"{what} run {low:g}-{high:g}, far below white: they look like other units than 0-{white}, and training on "
        f"them as 0-{white} gives a model that draws the same grey for every image. If {high:g} is white (e.g. 0-16 "
        f"digits), pass --pixel-max {high:g}; if they really are dark 0-{white} images, pass --pixel-max {white}."
    )


def _bits(high: float) -> int:
    return max(1, math.ceil(math.log2(high + 1)))


def _suggest_max(found: PixelRange) -> str:
    """The white level to suggest for a range: 2**bits - 1 for integers above 255, else the brightest value."""
    if found.high > UINT8_MAX and found.kind != "f":
        return f"{2 ** _bits(found.high) - 1}"
    return f"{found.high:g}"
