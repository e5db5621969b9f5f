"""The heavy modules of the training side, imported on first use, quietly, with the install hint.

Modules that need TensorFlow, Keras, TFDS, tf2onnx or matplotlib write `from aekit.lazy import tf`
(or `keras`, ...) at the top and use it as the module: nothing is imported until an attribute is
read, so the edge side (which never reads one) runs where none of them is installed, and where one
is missing the first use is a one-line AekitError naming the install that has it.

The training side needs Python 3.11 or later (TRAINING_PYTHON; the edge side runs on 3.10): on an older
Python the training modules count as not installed (`available` is False, so `aekit info` and `aekit
bench` take the edge path) and their first use is a one-line AekitError naming Python 3.11.

TensorFlow is imported with its native start-up notices (absl, oneDNN, the CUDA probe on a CPU
machine) silenced unless TF_CPP_MIN_LOG_LEVEL is set to something other than 3, in the CLI and in a
notebook alike.

    >>> from aekit.lazy import tf
    >>> tf.constant(1)        # TensorFlow is imported here, once
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import platform
import sys

from aekit.errors import AekitError

FULL_INSTALL = "pip install 'aekit[full]'"
# The training side (aekit[full]) is built and tested on Python 3.11+ and reads TOML recipes with tomllib (3.11);
# the edge side (encode/decode/reconstruct/score, info, bench of exported files) runs on 3.10 too.
TRAINING_PYTHON = (3, 11)
TRAINING_MODULES = {"tensorflow", "keras", "tensorflow_datasets", "tf2onnx"}
DISPLAY_NAMES = {
    "tensorflow": "TensorFlow",
    "keras": "Keras",
    "tensorflow_datasets": "TensorFlow Datasets",
    "matplotlib": "matplotlib",
}


class LazyModule:
    """A module imported on first attribute access (Keras' keras.src.utils.module_utils.LazyModule, with aekit's hint).

    Args:
        name: the module to import, e.g. "tensorflow" or "tensorflow.core.framework.summary_pb2".
        install: what to install when it is missing.
        quiet: import it with native stdout/stderr silenced (TensorFlow's start-up notices).
    """

    def __init__(self, name: str, install: str = FULL_INSTALL, quiet: bool = False, setup=None):
        self.__dict__.update(_name=name, _install=install, _quiet=quiet, _setup=setup, _module=None)

    def load(self):
        """The module itself, imported now if it was not; AekitError with the install hint if it is missing."""
        if self._module is None:
            self.__dict__["_module"] = _import(self._name, self._install, self._quiet, self._setup)
        return self._module

    @property
    def available(self) -> bool:
        """Whether the module can be imported (without importing it); False for the training side below TRAINING_PYTHON."""
        if python_problem(self._name) is not None:
            return False
        if self._name in sys.modules:
            return True
        try:
            return importlib.util.find_spec(self._name.split(".")[0]) is not None
        except (ImportError, ValueError):  # a broken or blocked install
            return False

    def __getattr__(self, attribute: str):
        return getattr(self.load(), attribute)

    def __repr__(self) -> str:
        state = "loaded" if self._module is not None else "not loaded"
        return f"<LazyModule {self._name} ({state})>"


def python_problem(name: str) -> str | None:
    """Why this Python cannot run the training module `name` (None when it can, and for every other module)."""
    if name.split(".")[0] not in TRAINING_MODULES or sys.version_info >= TRAINING_PYTHON:
        return None
    return training_python_problem()


def training_python_problem() -> str | None:
    """Why this Python cannot run aekit's training side (None on Python 3.11 or later)."""
    if sys.version_info >= TRAINING_PYTHON:
        return None
    need = ".".join(map(str, TRAINING_PYTHON))
    return (
        f"aekit's training side (train, export, data pack, bench against Keras) needs Python {need} or later; this is "
        f"Python {platform.python_version()}, which runs the edge commands (encode, decode, reconstruct, score, info). "
        f"Train and export on Python {need}+ and copy the export folder here."
    )


def _import(name: str, install: str, quiet: bool, setup=None):
    problem = python_problem(name)
    if problem is not None:
        raise AekitError(problem)
    root = name.split(".")[0]
    if root not in sys.modules:
        try:
            found = importlib.util.find_spec(root) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            shown = DISPLAY_NAMES.get(root, root)
            raise AekitError(
                f"This command needs {shown}, and this is an edge install of aekit (encode/decode/reconstruct/score/bench only). "
                f"Install the training side: {install}."
            )
    if setup is not None:
        setup()
    if not quiet or os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3") != "3" or root in sys.modules:
        return importlib.import_module(name)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from aekit.quiet import quiet_native_output

    with quiet_native_output():
        module = importlib.import_module(name)
    import absl.logging  # TFDS and checkpoint restore log warnings that are aekit's to report

    absl.logging.set_verbosity(absl.logging.ERROR)
    return module


tf = LazyModule("tensorflow", quiet=True)
keras = LazyModule("keras", quiet=True)  # Keras 3 imports TensorFlow, its backend here
tfds = LazyModule("tensorflow_datasets", quiet=True)
tf2onnx = LazyModule("tf2onnx", quiet=True)
summary_pb2 = LazyModule("tensorflow.core.framework.summary_pb2", quiet=True)
yaml = LazyModule("yaml")  # recipe files (aekit train --config)


def _headless_matplotlib() -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display: before pyplot is imported


pyplot = LazyModule("matplotlib.pyplot", setup=_headless_matplotlib)
