"""How pixels become model inputs: the one place that knows the scaling.

Models take float32 images in [0, 1]. uint8 sources are divided by 255; float
sources already in [0, 1] pass unchanged; float sources in (1, 255] are taken as
0-255 values. The data pipeline, the exporter's manifest and the edge runtime all
read the scaling from here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from aekit.errors import AekitError

UINT8_MAX = 255.0


@dataclass(frozen=True)
class PixelScaling:
    """Affine map from stored pixel values to model inputs: ``x / divide_by``.

    Args:
        divide_by: 255.0 for 0-255 data, 1.0 for data already in [0, 1].
    """

    divide_by: float = UINT8_MAX

    @classmethod
    def for_images(cls, images: np.ndarray) -> PixelScaling:
        """Chooses the scaling for a whole source (never per batch).

        Raises AekitError for NaN/inf pixels or values outside [0, 255].
        """
        if images.dtype == np.uint8:
            return cls(UINT8_MAX)
        if not np.issubdtype(images.dtype, np.floating) and not np.issubdtype(images.dtype, np.integer):
            raise AekitError(
                f"Images have dtype {images.dtype}; expected uint8 or float. Convert the array to uint8 (0-255) or float32 (0-1)."
            )
        if images.size and not np.isfinite(images).all():
            bad = int(images.size - np.isfinite(images).sum())
            raise AekitError(f"Images contain {bad} NaN or infinite pixel values. Clean or drop those images before training.")
        low, high = (float(images.min()), float(images.max())) if images.size else (0.0, 1.0)
        if low < 0.0 or high > UINT8_MAX:
            raise AekitError(
                f"Pixel values span [{low:g}, {high:g}]; expected [0, 1] or [0, 255]. "
                "Rescale the images into one of those ranges."
            )
        return cls(1.0 if high <= 1.0 else UINT8_MAX)

    def to_model_numpy(self, images: np.ndarray) -> np.ndarray:
        """Scales a numpy batch to float32 model inputs in [0, 1]."""
        return np.asarray(images, dtype=np.float32) / np.float32(self.divide_by)

    def to_model_tf(self, images):
        """Scales a TensorFlow tensor to float32 model inputs in [0, 1]."""
        import tensorflow as tf

        return tf.cast(images, tf.float32) / self.divide_by

    def to_json(self) -> dict:
        return {"input_range": [0.0, 1.0], "model_input": "float32 = stored / divide_by", **asdict(self)}
