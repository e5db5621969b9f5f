"""aekit: train convolutional autoencoders, export them to ONNX/TFLite, benchmark the exports.

    >>> import aekit
    >>> run = aekit.train(images, epochs=2, filters=(8, 16), latent_dim=8)   # a Run (aekit.api)
    >>> run.export("onnx")
    >>> codes = aekit.EncoderSession(run.path / "export" / "encoder.onnx").encode(images)

Importing the package is cheap and pulls in neither TensorFlow, Keras nor onnxruntime: the
names below are imported on first use (PEP 562), and the modules that need TensorFlow import
it themselves. `aekit.train`, `aekit.export` and `aekit.bench` are the library's modules and,
called, the API's functions: `aekit.train(images)` is `aekit.api.train(images)`, and
`aekit.train.TrainConfig` still reads the module.
"""

import importlib
import inspect
import sys
import types

__version__ = "0.1.0"

from aekit.errors import AekitError, ExportError, InputError, RunFolderError, UnknownOptionError  # noqa: E402

# Public name -> (module, attribute), imported when first read.
_LAZY = {
    "Run": ("aekit.api", "Run"),
    "run": ("aekit.api", "open_run"),
    "EncoderSession": ("aekit.edge", "EncoderSession"),
    "DecoderSession": ("aekit.edge", "DecoderSession"),
    "LatentQuantizer": ("aekit.edge", "LatentQuantizer"),
    "NoCudaError": ("aekit.runtimes", "NoCudaError"),
    "TrainConfig": ("aekit.recipe", "TrainConfig"),
    "TrainCallback": ("aekit.train", "TrainCallback"),
}
# Modules of the library that are also the API's functions when called.
_CALLABLE_MODULES = ("train", "export", "bench")

__all__ = [
    "AekitError",
    "ExportError",
    "InputError",
    "RunFolderError",
    "UnknownOptionError",
    "__version__",
    *_CALLABLE_MODULES,
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


class _CallableModule(types.ModuleType):
    """aekit.train / aekit.export / aekit.bench: the library module, which called is the aekit.api function."""

    def __call__(self, *args, **kwargs):
        return self._api_function()(*args, **kwargs)

    @property
    def __signature__(self):  # inspect.signature and notebook help show the function's arguments
        return inspect.signature(self._api_function())

    def _api_function(self):
        from aekit import api

        return getattr(api, self.__name__.rpartition(".")[2])


def _callable_module_attribute(name: str) -> property:
    """A property of the package: reading it imports aekit.<name>; the import system's setattr makes the module callable."""

    def read(package):
        module = sys.modules.get(f"aekit.{name}") or importlib.import_module(f"aekit.{name}")
        if type(module) is types.ModuleType:
            module.__class__ = _CallableModule
        return module

    def write(package, module):
        if isinstance(module, types.ModuleType) and type(module) is types.ModuleType:
            module.__class__ = _CallableModule
        package.__dict__[f"_{name}_module"] = module

    return property(read, write, doc=f"aekit.{name}: the module, and called, aekit.api.{name}.")


class _Package(types.ModuleType):
    """The aekit package, whose train/export/bench attributes are callable modules."""


for _name in _CALLABLE_MODULES:
    setattr(_Package, _name, _callable_module_attribute(_name))
del _name

sys.modules[__name__].__class__ = _Package
