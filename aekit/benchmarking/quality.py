"""Reconstruction quality of a round trip: MSE, PSNR and SSIM with a window that fits the images."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from aekit.core.metrics import mse_per_image, psnr_from_mse
from aekit.errors import AekitError
from aekit.lazy import tf

# SSIM's standard window (Wang et al. 2004, tf.image.ssim's default): 11x11 Gaussian, sigma 1.5. Smaller
# images get the largest odd window that fits, sigma scaled alike; under 3 px a side no window means anything.
SSIM_WINDOW, SSIM_SIGMA, SSIM_MIN_WINDOW = 11, 1.5, 3


@dataclass
class Quality:
    """Round-trip quality of one target on the held-out images; `ssim` is None when `ssim_note` says why."""

    mse: float
    psnr: float
    ssim: float | None
    ssim_note: str | None = None


def _quality(session, images: np.ndarray, window: tuple[int, float] | None) -> Quality | None:
    try:
        recon = np.concatenate([session.run("roundtrip", images[i : i + 256]) for i in range(0, len(images), 256)])
    except Exception as exc:
        session.error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        return None
    per_image = mse_per_image(images, recon)
    value, note = None, None
    if window is None:
        note = _no_ssim_note(images.shape[1:3])
    else:
        try:
            value = ssim(images, recon, window)
        except Exception as exc:  # SSIM is one figure of three: its failure is a note, not a failed row
            note = f"SSIM not measured: {type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
    return Quality(float(per_image.mean()), float(psnr_from_mse(per_image).mean()), value, note)


def ssim_window(image_size: tuple[int, int]) -> tuple[int, float] | None:
    """(filter_size, filter_sigma) of SSIM's Gaussian window for (height, width) images; None under 3 px a side.

    The standard 11x11 window with sigma 1.5 where it fits; else the largest odd size that
    fits the smaller side, with sigma scaled alike: 8x8 images get (7, 0.95).
    """
    side = min(int(s) for s in image_size)
    if side < SSIM_MIN_WINDOW:
        return None
    size = min(SSIM_WINDOW, side)
    size -= 1 - size % 2  # odd, so the window has a centre pixel
    return size, SSIM_SIGMA * size / SSIM_WINDOW


def _no_ssim_note(image_size: tuple[int, int]) -> str:
    return (
        f"SSIM not measured: images are {image_size[0]}x{image_size[1]} px, "
        f"and SSIM needs a window of at least {SSIM_MIN_WINDOW}x{SSIM_MIN_WINDOW}"
    )


def ssim(originals: np.ndarray, reconstructions: np.ndarray, window: tuple[int, float] | None = None) -> float:
    """Mean SSIM over (N, H, W, C) images in [0, 1] (TensorFlow's tf.image.ssim).

    Args:
        window: (filter_size, filter_sigma) of the Gaussian window. Default: ssim_window of the images,
            the standard 11x11 / 1.5 where it fits. AekitError if the images are too small for any window.
    """

    window = window or ssim_window(originals.shape[1:3])
    if window is None:
        raise AekitError(f"{_no_ssim_note(originals.shape[1:3])}. Use MSE or PSNR for images this small.")
    size, sigma = window
    values = tf.image.ssim(
        tf.constant(originals, tf.float32),
        tf.constant(np.clip(reconstructions, 0, 1), tf.float32),
        max_val=1.0,
        filter_size=size,
        filter_sigma=sigma,
    )
    return float(tf.reduce_mean(values))


def _quality_header(images: np.ndarray, window: tuple[int, float] | None) -> dict:
    """How quality was measured: on which images, and SSIM's window (None, with the reason, if none fits)."""
    height, width = images.shape[1:3]
    return {
        "images": len(images),
        "image_size": [int(height), int(width)],
        "ssim_window": window[0] if window else None,
        "ssim_sigma": round(window[1], 4) if window else None,
        "ssim_note": None if window else _no_ssim_note((height, width)),
    }
