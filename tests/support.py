"""Test data and small model sizes shared by the test files (fixtures live in conftest.py)."""

import gzip
import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
MNIST_DIR = Path(os.environ.get("AEKIT_TEST_MNIST", REPO.parent / "shared" / "data" / "mnist"))
TINY = {"filters": (8, 16), "latent_dim": 4}
# The shared trained run: small, but trained to a meaningful quality (val MSE ~0.03, against ~0.067
# for predicting the mean digit), so quality bounds on its exports judge the export, not the training.
FIXTURE = {"filters": (8, 16), "latent_dim": 8}
FIXTURE_IMAGES, FIXTURE_EPOCHS = 2000, 6


def read_mnist(count: int | None = None) -> np.ndarray:
    raw = gzip.decompress((MNIST_DIR / "t10k-images-idx3-ubyte.gz").read_bytes())
    images = np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 28, 28)
    return images if count is None else images[:count]


# The edge venv (make edge-check) runs the TensorFlow-free test files; their few TensorFlow tests skip there.
needs_tensorflow = pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None, reason="no TensorFlow in the edge venv")


def run(*args):
    """Runs the aekit CLI in-process: (exit code, output lines)."""
    from typer.testing import CliRunner

    from aekit.cli.main import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.output.strip().splitlines()


def assert_one_line_error(code, lines, *words):
    """A usage error as the CLI gives it: exit 2 and one `error:` line holding every word."""
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
    for word in words:
        assert word in lines[0], (word, lines)


def colour_patch_run(tmp_path_factory, per_kind: int = 80):
    """A small finished run on 16x16 colour patches (gradients, stripes, flat blocks in three sub-folders).

    Returns (run folder, the first three patches of each kind as float32 in [0, 1]).
    """
    from PIL import Image

    from aekit.core.recipe import TrainConfig
    from aekit.training.loop import train

    root = tmp_path_factory.mktemp("patches")
    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:16, 0:16] / 15.0
    images = []
    for kind in ("gradients", "stripes", "blocks"):
        (root / kind).mkdir()
        for i in range(per_kind):
            if kind == "gradients":
                img = np.stack([x * rng.random(), y * rng.random(), (1 - x) * rng.random()], -1)
            elif kind == "stripes":
                img = (0.5 + 0.5 * np.sin(x * rng.uniform(4, 12) + rng.random() * 6))[..., None] * rng.random(3)
            else:
                img = np.where((x > rng.random())[..., None], rng.random(3), rng.random(3))
            pixels = (np.clip(img, 0, 1) * 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / kind / f"{i:03d}.png")
            if i < 3:
                images.append(pixels.astype(np.float32) / 255)
    run_dir = tmp_path_factory.mktemp("runs") / "patches"
    train(TrainConfig(dataset=str(root), filters=(8, 16), latent_dim=8, epochs=2, batch_size=32, gpus=0), run_dir)
    return run_dir, np.stack(images)
