"""aekit: train convolutional autoencoders, export them to ONNX/TFLite, benchmark the exports.

    >>> import aekit
    >>> run = aekit.train(images, epochs=2, filters=(8, 16), latent_dim=8)   # a Run (aekit.api)
    >>> run.export("onnx")
    >>> codes = aekit.EncoderSession(run.path / "export" / "encoder.onnx").encode(images)

Importing the package is cheap and pulls in neither TensorFlow, Keras nor onnxruntime: the
names below are imported on first use (PEP 562), and the modules that need TensorFlow import
it themselves. `aekit.train`, `aekit.export` and `aekit.bench` are the API's functions (aekit.api); the library's
layers are the sub-packages core, edge, data, training, exporting and benchmarking.
"""

import importlib

__version__ = "0.1.0"

from aekit.errors import AekitError, ExportError, InputError, RunFolderError, UnknownOptionError  # noqa: E402

# Public name -> (module, attribute), imported when first read.
_LAZY = {
    "Run": ("aekit.api", "Run"),
    "run": ("aekit.api", "open_run"),
    "train": ("aekit.api", "train"),
    "export": ("aekit.api", "export"),
    "bench": ("aekit.api", "bench"),
    "EncoderSession": ("aekit.edge.sessions", "EncoderSession"),
    "DecoderSession": ("aekit.edge.sessions", "DecoderSession"),
    "LatentQuantizer": ("aekit.edge.codes", "LatentQuantizer"),
    "NoCudaError": ("aekit.edge.runtimes", "NoCudaError"),
    "TrainConfig": ("aekit.core.recipe", "TrainConfig"),
    "TrainCallback": ("aekit.training.loop", "TrainCallback"),
}

__all__ = [
    "AekitError",
    "ExportError",
    "InputError",
    "RunFolderError",
    "UnknownOptionError",
    "__version__",
    *_LAZY,
]


def __getattr__(name: str):
    if name in _LAZY:
        module, attribute = _LAZY[name]
        value = getattr(importlib.import_module(module), attribute)
        globals()[name] = value  # read once; later reads are plain attribute reads
        return value
    raise AttributeError(f"module 'aekit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
