"""The run's two pictures: the loss curves and originals beside reconstructions."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from aekit.core.runs import atomic_path
from aekit.lazy import pyplot


def plot_history(history: list[dict], path: Path) -> None:
    """Train loss and validation MSE per epoch, log scale."""
    from matplotlib.ticker import MaxNLocator

    epochs = [row["epoch"] for row in history]
    fig, ax = pyplot.subplots(figsize=(6, 4))
    ax.plot(epochs, [row["train_loss"] for row in history], marker="o", label="train loss (MSE)")
    ax.plot(epochs, [row["val_mse"] for row in history], marker="s", label="validation MSE")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers, never 1.25
    ax.set_ylabel("MSE")
    ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    pyplot.close(fig)


def plot_reconstructions(originals: np.ndarray, reconstructions: np.ndarray, path: Path) -> None:
    """Two rows: originals on top, reconstructions below; images are (N, H, W, C) in [0, 1]."""
    n = len(originals)
    fig, axes = pyplot.subplots(2, n, figsize=(1.2 * n, 2.8), squeeze=False)
    for row, (images, title) in enumerate(((originals, "original"), (reconstructions, "reconstructed"))):
        for col in range(n):
            image = np.clip(images[col], 0.0, 1.0)
            ax = axes[row, col]
            if image.shape[-1] == 1:
                ax.imshow(image[..., 0], cmap="gray", vmin=0.0, vmax=1.0)
            else:
                ax.imshow(image[..., :3])
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row, 0].set_ylabel(title, fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    pyplot.close(fig)


def reconstruction_grid(originals: np.ndarray, reconstructions: np.ndarray) -> np.ndarray:
    """One image: the originals side by side on top, their reconstructions below.

    Args:
        originals, reconstructions: (N, H, W, C) floats in [0, 1].

    Returns:
        (2H, N*W, C') float32 in [0, 1], C' = 1 for grey images, else the first 3 channels.
    """
    rows = [np.concatenate(list(np.clip(images, 0.0, 1.0)), axis=1) for images in (originals, reconstructions)]
    grid = np.concatenate(rows, axis=0).astype(np.float32)
    return grid if grid.shape[-1] == 1 else grid[..., :3]
