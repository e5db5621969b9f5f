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
