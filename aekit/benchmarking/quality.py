"""Reconstruction quality of a round trip: MSE, PSNR and SSIM with a window that fits the images.

SSIM is TensorFlow's tf.image.ssim where TensorFlow is installed; on the edge install (no TensorFlow) the
same formula in numpy (`ssim_numpy`: the same Gaussian window, constants and valid-region means, agreeing
with tf.image.ssim to float32 rounding), so bench measures the same three figures on either install.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from aekit.core.metrics import mse_per_image, psnr_from_mse
from aekit.errors import AekitError
from aekit.lazy import tf

# SSIM's standard window (Wang et al. 2004, tf.image.ssim's default): 11x11 Gaussian, sigma 1.5. Smaller
# images get the largest odd window that fits, sigma scaled alike; under 3 px a side no window means anything.
SSIM_WINDOW, SSIM_SIGMA, SSIM_MIN_WINDOW = 11, 1.5, 3
EDGE_INSTALL = "aekit[edge]"
SSIM_K1, SSIM_K2 = 0.01, 0.03  # tf.image.ssim's constants
SSIM_BY_TENSORFLOW, SSIM_BY_NUMPY = "tf.image.ssim", "numpy (tf.image.ssim's formula; no TensorFlow in this install)"


@dataclass
class Quality:
    """Round-trip quality of one target on the held-out images; `ssim` is None when `ssim_note` says why."""

    mse: float
    psnr: float
    ssim: float | None
    ssim_note: str | None = None
    # The round trip's outputs, kept while another runtime's are compared with them (bench's agreement_db).
    reconstructions: np.ndarray | None = field(default=None, repr=False, compare=False)


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
    return Quality(float(per_image.mean()), float(psnr_from_mse(per_image).mean()), value, note, recon)


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
    if not tf.available:
        return ssim_numpy(originals, reconstructions, window)
    size, sigma = window
    values = tf.image.ssim(
        tf.constant(originals, tf.float32),
        tf.constant(np.clip(reconstructions, 0, 1), tf.float32),
        max_val=1.0,
        filter_size=size,
        filter_sigma=sigma,
    )
    return float(tf.reduce_mean(values))


def ssim_by() -> str:
    """What computes SSIM in this install: SSIM_BY_TENSORFLOW or SSIM_BY_NUMPY."""
    return SSIM_BY_TENSORFLOW if tf.available else SSIM_BY_NUMPY


def ssim_numpy(originals: np.ndarray, reconstructions: np.ndarray, window: tuple[int, float], chunk: int = 256) -> float:
    """Mean SSIM over (N, H, W, C) images in [0, 1], computed as tf.image.ssim computes it, without TensorFlow.

    A Gaussian window (size, sigma), normalised to sum 1 (separable: the outer product of the 1-D window), applied
    over the valid region only; luminance and contrast-structure terms with C1 = (0.01)^2, C2 = (0.03)^2; the
    mean over the window positions, then over channels, then over images. In float64, `chunk` images at a time.
    """
    size, sigma = window
    coords = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    kernel = np.exp(-0.5 * coords**2 / sigma**2)
    kernel /= kernel.sum()
    c1, c2 = SSIM_K1**2, SSIM_K2**2

    def blur(x: np.ndarray) -> np.ndarray:  # valid 2-D Gaussian filter over axes 1 and 2 of (N, H, W, C)
        rows = sum(k * x[:, i : x.shape[1] - size + 1 + i] for i, k in enumerate(kernel))
        return sum(k * rows[:, :, i : x.shape[2] - size + 1 + i] for i, k in enumerate(kernel))

    values = []
    for start in range(0, len(originals), chunk):
        x = np.asarray(originals[start : start + chunk], np.float64)
        y = np.clip(np.asarray(reconstructions[start : start + chunk], np.float64), 0.0, 1.0)
        mean_x, mean_y = blur(x), blur(y)
        luminance = (2 * mean_x * mean_y + c1) / (mean_x**2 + mean_y**2 + c1)
        structure = (2 * blur(x * y) - 2 * mean_x * mean_y + c2) / (blur(x * x + y * y) - mean_x**2 - mean_y**2 + c2)
        values.append((luminance * structure).mean(axis=(1, 2)).mean(axis=-1))
    return float(np.concatenate(values).mean())


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


def held_out_images(run_dir: Path, loaded, dataset: str | None, count: int | None, training: bool) -> tuple[np.ndarray, str]:
    """The quality images as float32 model inputs, and where they came from in words.

    `dataset`'s held-out split (the run's split rule and pixel scaling), else the run's own validation split:
    from the loaded run when there is one, else re-read from its recorded source (on the edge install only where
    that needs no TensorFlow: IDX, .npy/.npz, an image folder, the bundled sample; not TFDS or a pack).
    """
    from aekit.core.recipe import read_config
    from aekit.core.sources import split_key
    from aekit.data.loading import load_data, reload_data, split_options

    config = read_config(run_dir)
    record = config.get("data") or {}
    if dataset is not None:
        if not training and not Path(split_key(dataset)[0]).expanduser().exists():
            raise AekitError(
                f"--dataset {dataset}: no such file or folder, and TFDS names need TensorFlow (not in this install, "
                f"{EDGE_INSTALL}). Pass IDX files, a folder of PNG/JPEG images, or a .npy/.npz file."
            )
        val_split = loaded.splits.val_split if loaded else record.get("val_split", 0.1)
        pixel_max = loaded.splits.scaling.pixel_max if loaded else split_options(record)["pixel_max"]
        splits = load_data(dataset, val_split, pixel_max=pixel_max)  # the run's units
        source = splits.source
    elif loaded is not None:
        splits, source = loaded.splits, f"{loaded.splits.source} (the run's validation split)"
    else:
        if not training and (record.get("packed") or record.get("kind") == "tfds"):
            raise AekitError(
                f"The run {run_dir} trained on {record.get('packed') or record.get('source')}, which only the training side "
                f"reads (no TensorFlow in this install, {EDGE_INSTALL}). Pass held-out images with --dataset: IDX files, a "
                "folder of PNG/JPEG images, or a .npy/.npz file."
            )
        splits = reload_data(record)
        source = f"{splits.source} (the run's validation split)"
    images = splits.scaling.to_model_numpy(splits.head("val", count))
    expected = tuple(config["model"]["input_shape"])
    if images.shape[1:] != expected:
        raise AekitError(
            f"--dataset images are {images.shape[1:]}, the model takes {expected}. Pass data of the run's image shape."
        )
    return images, source
