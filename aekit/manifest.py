"""manifest.json: what an export folder holds, in one schema that the exporter writes and readers check.

TensorFlow-free, so an edge device can read it. Every exported file has an entry
with its role, format, precision, tensors, size, checksum and the parity figures
measured against the Keras model before it was declared done.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

from aekit.errors import AekitError

MANIFEST = "manifest.json"
# 2: parity judged by agreement in dB (was: relative MSE rise); int8 entries record their quantization scheme.
SCHEMA_VERSION = 2
ROLES = ("encoder", "decoder", "autoencoder")
FORMATS = ("onnx", "tflite", "savedmodel")
PRECISIONS = ("float32", "fp16", "int8")
STATUSES = ("passed", "failed")


@dataclass
class TensorSpec:
    """One input or output of an exported file. `shape` uses None for the dynamic batch."""

    name: str
    shape: list
    dtype: str
    # For quantized (uint8/int8) tensors: real = scale * (q - zero_point).
    scale: float | None = None
    zero_point: int | None = None


@dataclass
class Parity:
    """The export run by its own runtime on real validation images, against Keras.

    The pass rule is `agreement_db >= min_agreement_db`: how close the export's round-trip
    reconstructions are to Keras' own, as a PSNR in dB over the pixel range [0, 1]
    (30 dB = an RMS difference of 0.032, about 8 grey levels of 255). It measures only what
    the export adds, so it means the same for a well- or a barely-trained model; the
    quality drop against the original images is recorded beside it (`psnr_drop_db`).
    """

    images: int
    max_abs_diff: float
    max_rel_diff: float  # max_abs_diff / max(1, largest |Keras output|)
    mse_keras: float  # reconstruction MSE against the original images
    mse_export: float
    mse_delta: float
    psnr_keras: float  # mean per-image PSNR against the original images, dB
    psnr_export: float
    psnr_drop_db: float  # psnr_keras - psnr_export
    agreement_db: float  # PSNR of the export's reconstructions against Keras' (capped at 100)
    min_agreement_db: float  # the bound it was held to
    runtime: str


@dataclass
class FileEntry:
    file: str
    role: str
    format: str
    precision: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    bytes: int
    sha256: str
    status: str
    parity: Parity | None = None
    opset: int | None = None
    reason: str | None = None
    # How a quantized file was made (scheme, activations, weights, why); None for float files.
    quantization: dict | None = None

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class Manifest:
    run: str
    model: dict
    pixel_scaling: dict
    versions: dict
    files: list[FileEntry] = field(default_factory=list)
    # Per-dimension int8 code parameters calibrated on the run's training latents (aekit encode --latent-dtype int8).
    latent_quantization: dict | None = None
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> dict:
        return {
            "schema_version": self.schema_version,
            "run": self.run,
            "model": self.model,
            "pixel_scaling": self.pixel_scaling,
            "latent_quantization": self.latent_quantization,
            "versions": self.versions,
            "files": [entry.to_json() for entry in self.files],
        }


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def directory_size_and_hash(path: Path) -> tuple[int, str]:
    """Size and a sha256 over (relative name, content) of every file below a folder (SavedModel)."""
    digest, total = hashlib.sha256(), 0
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode())
        digest.update(bytes.fromhex(sha256_of(file)))
        total += file.stat().st_size
    return total, digest.hexdigest()


def validate_manifest(data: dict, folder: Path | None = None) -> list[str]:
    """Problems with a manifest dict (empty when valid). With `folder`, also checks sizes and checksums."""
    problems = []
    for key in ("schema_version", "run", "model", "pixel_scaling", "versions", "files"):
        if key not in data:
            problems.append(f"missing key {key!r}")
    if problems:
        return problems
    if data["schema_version"] != SCHEMA_VERSION:
        problems.append(f"schema_version {data['schema_version']} is not {SCHEMA_VERSION}")
    if "divide_by" not in data["pixel_scaling"]:
        problems.append("pixel_scaling has no divide_by")
    for key in ("input_shape", "latent_dim"):
        if key not in data["model"]:
            problems.append(f"model has no {key}")
    for entry in data["files"]:
        name = entry.get("file", "?")
        for key, allowed in (("role", ROLES), ("format", FORMATS), ("precision", PRECISIONS), ("status", STATUSES)):
            if entry.get(key) not in allowed:
                problems.append(f"{name}: {key} {entry.get(key)!r} not in {allowed}")
        for key in ("inputs", "outputs"):
            tensors = entry.get(key) or []
            if entry.get("status") == "failed" and not tensors:  # a file that failed to convert has no tensors
                continue
            if not tensors or not all({"name", "shape", "dtype"} <= set(t) for t in tensors):
                problems.append(f"{name}: {key} must list name, shape and dtype")
        if entry.get("format") == "onnx" and not entry.get("opset"):
            problems.append(f"{name}: onnx entry without opset")
        if entry.get("status") == "passed" and not entry.get("parity"):
            problems.append(f"{name}: passed without parity figures")
        if folder is not None and entry.get("status") == "passed":
            path = folder / name
            if not path.exists():
                problems.append(f"{name}: listed but missing")
            elif path.is_file():
                if path.stat().st_size != entry.get("bytes"):
                    problems.append(f"{name}: size {path.stat().st_size} != {entry.get('bytes')}")
                elif sha256_of(path) != entry.get("sha256"):
                    problems.append(f"{name}: sha256 mismatch")
    return problems


def check_manifest(data: dict, folder: Path | None = None) -> None:
    problems = validate_manifest(data, folder)
    if problems:
        raise AekitError(f"Invalid {MANIFEST}: {'; '.join(problems)}. Re-export with aekit export.")
