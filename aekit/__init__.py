"""aekit: train convolutional autoencoders, export them to ONNX/TFLite, benchmark the exports.

Importing the package is cheap and pulls in neither TensorFlow nor Keras; the
modules that need them (data, model, distribute, train) import them themselves.
"""

__version__ = "0.1.0"

from aekit.errors import AekitError

__all__ = ["AekitError", "__version__"]
