"""The edge side: sessions over exported files, latent codes, anomaly scores; numpy + onnxruntime/LiteRT only.

A test imports this package and runs the edge commands where TensorFlow cannot be imported.

    >>> from aekit.edge import EncoderSession, DecoderSession
    >>> codes = EncoderSession("runs/demo/export/encoder.onnx").encode(images)
"""

from aekit.edge.codes import LatentQuantizer, decode_file, encode_path, load_latents
from aekit.edge.sessions import DecoderSession, EncoderSession, read_manifest

__all__ = ["DecoderSession", "EncoderSession", "LatentQuantizer", "decode_file", "encode_path", "load_latents", "read_manifest"]
