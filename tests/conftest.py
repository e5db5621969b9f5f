"""Shared fixtures: the real MNIST files beside the repo, small arrays, CPU-only TensorFlow (when installed).

The process is split into two logical CPU devices before TensorFlow starts, so
the mirrored (2-replica) training path runs in-process. No test touches the
network: AEKIT_OFFLINE makes the default dataset fall back at once.
"""

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ["AEKIT_OFFLINE"] = "1"
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

try:  # the edge venv (make edge-check) runs the TensorFlow-free tests without it
    import tensorflow as tf  # noqa: E402
except ImportError:
    tf = None
else:
    _cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(_cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

from support import FIXTURE, FIXTURE_EPOCHS, FIXTURE_IMAGES, MNIST_DIR, read_mnist  # noqa: E402


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    assert (MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file(), f"shared MNIST data missing at {MNIST_DIR}"
    return MNIST_DIR


@pytest.fixture(scope="session")
def small_npz(tmp_path_factory) -> Path:
    """640 real MNIST digits as uint8 (N, 28, 28) in images=."""
    path = tmp_path_factory.mktemp("data") / "digits.npz"
    np.savez(path, images=read_mnist(640))
    return path


@pytest.fixture(autouse=True)
def float32_policy():
    yield
    if tf is not None:
        import keras

        keras.mixed_precision.set_global_policy("float32")


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """A finished small run on 2,000 real digits (val MSE ~0.03), shared read-only; copy it (run_copy) to change it."""
    from aekit.core.recipe import TrainConfig
    from aekit.training.loop import train

    data = tmp_path_factory.mktemp("fixture-data") / "digits.npz"
    np.savez(data, images=read_mnist(FIXTURE_IMAGES))
    run_dir = tmp_path_factory.mktemp("runs") / "small"
    train(TrainConfig(dataset=str(data), epochs=FIXTURE_EPOCHS, batch_size=32, gpus=0, learning_rate=5e-3, **FIXTURE), run_dir)
    return run_dir


@pytest.fixture
def run_copy(trained_run, tmp_path) -> Path:
    import shutil

    target = tmp_path / "run"
    shutil.copytree(trained_run, target)
    return target


@pytest.fixture(scope="session")
def two_cpu_replicas():
    """A MirroredStrategy over the two logical CPU devices: the real multi-replica path."""
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"], cross_device_ops=tf.distribute.ReductionToOneDevice())
