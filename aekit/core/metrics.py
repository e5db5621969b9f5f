"""Reconstruction quality figures, in numpy so the edge side can use them without TensorFlow.

Images are float arrays in [0, 1] shaped (N, H, W, C); every figure is per image
or a mean over images.
"""

from __future__ import annotations

import numpy as np

MAX_PIXEL = 1.0
# PSNR of a perfect reconstruction is infinite; cap it where float32 rounding makes it meaningless.
MSE_FLOOR = 1e-10


def mse_per_image(originals: np.ndarray, reconstructions: np.ndarray) -> np.ndarray:
    """Mean squared error of each image, shape (N,)."""
    diff = np.asarray(originals, np.float64) - np.asarray(reconstructions, np.float64)
    return np.mean(diff.reshape(len(diff), -1) ** 2, axis=1)


def psnr_from_mse(mse: np.ndarray) -> np.ndarray:
    return 10.0 * np.log10(MAX_PIXEL**2 / np.maximum(np.asarray(mse, np.float64), MSE_FLOOR))
