"""Facts about this machine's ML stack, for `aekit info` and for run records."""

from __future__ import annotations

import platform
from importlib import metadata

from aekit import __version__
from aekit.lazy import tf

PACKAGES = (
    "tensorflow",
    "keras",
    "tensorflow-datasets",
    "tf2onnx",
    "onnx",
    "onnxruntime-gpu",
    "onnxruntime",
    "ai-edge-litert",
    "openvino",
    "numpy",
)


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def system_info() -> dict:
    """aekit/Python/library versions, CPU, C library, GPUs TensorFlow sees, onnxruntime providers.

    Works on the edge install too (no TensorFlow): `install` says which side this is, and the TensorFlow
    facts are None there, so a board can report its runtimes and providers.
    """
    import os

    training = tf.available
    gpus = None
    if training:
        gpus = []
        for device in tf.config.list_physical_devices("GPU"):
            details = tf.config.experimental.get_device_details(device)
            model, capability = details.get("device_name"), details.get("compute_capability")
            gpus.append({"name": device.name, "model": model, "compute_capability": capability})
    try:
        import onnxruntime as ort

        ort_providers = ort.get_available_providers()
        ort_device = ort.get_device()
    except ImportError:
        ort_providers, ort_device = [], None
    libc, libc_version = platform.libc_ver()
    return {
        "aekit": __version__,
        "install": "full" if training else "edge",
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "libc": f"{libc} {libc_version}".strip() or None,
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "packages": package_versions(),
        "tensorflow_built_with_cuda": bool(tf.test.is_built_with_cuda()) if training else None,
        "gpus": gpus,
        "onnxruntime_available_providers": ort_providers,
        "onnxruntime_device": ort_device,
    }
