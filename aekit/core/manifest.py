"""manifest.json and the export formats: one schema, one writer, one reader, one format table.

TensorFlow-free, so an edge device can read it. Every exported file has an entry
with its role, format, precision, tensors, size, checksum and the parity figures
measured against the Keras model before it was declared done. `EXPORT_FORMATS` is
the table that export, bench, the runtimes and the CLI all read.

    >>> manifest = Manifest.load(Path("runs/demo/export"))        # schema + sizes + sha256
    >>> manifest.entry("encoder.onnx").precision
    'float32'
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from aekit.core.checks import is_number, is_positive, is_whole
from aekit.errors import AekitError

MANIFEST = "manifest.json"
# 2: parity judged by agreement in dB (was: relative MSE rise); int8 entries record their quantization scheme.
# Later additions are optional entry fields (static_batch, form, micro), absent from older manifests and
# read as None: an older manifest reads as it was, and an older reader skips what it does not know.
SCHEMA_VERSION = 2
ROLES = ("encoder", "decoder", "autoencoder")
PRECISIONS = ("float32", "fp16", "int8")
STATUSES = ("passed", "failed")


@dataclass(frozen=True)
class ExportFormat:
    """One row of the format table.

    Args:
        name: what --format takes.
        suffix: what the file (or folder) name ends with.
        runtime: what runs it: "onnxruntime", "litert" (both TensorFlow-free, for the edge) or "tensorflow".
        precisions: what --quantize can make of it.
        static_batch: the fixed batch every file of the format has (tflm: 1); None when --static-batch chooses.
        in_all: made by --format all (tflm, a microcontroller deliverable, only when named).
    """

    name: str
    suffix: str
    runtime: str
    precisions: tuple[str, ...]
    static_batch: int | None = None
    in_all: bool = True

    @property
    def edge(self) -> bool:
        """Runs on the edge side (encode/decode/bench) with onnxruntime or LiteRT, without TensorFlow."""
        return self.runtime in EDGE_RUNTIMES

    def file_name(self, role: str, precision: str, static_batch: int | None = None) -> str:
        """e.g. encoder.onnx, decoder_int8.tflite, encoder_batch1.onnx, encoder_int8_batch1.tflite, encoder_tflm.tflite.

        The precision is left out for float32 and for a format of one precision; `static_batch` adds
        `_batchN` for a fixed-batch file of a format whose batch is otherwise dynamic.
        """
        tag = "" if precision == "float32" or self.precisions == (precision,) else f"_{precision}"
        batch = f"_batch{static_batch}" if static_batch is not None and self.static_batch is None else ""
        return f"{role}{tag}{batch}{self.suffix}"

    def companion_names(self, file: str) -> tuple[str, ...]:
        """The files written beside `file` (tflm: the C source and header holding the model as an array)."""
        if self.name != "tflm":
            return ()
        stem = file.removesuffix(".tflite")
        return (f"{stem}.cc", f"{stem}.h")


EDGE_RUNTIMES = ("onnxruntime", "litert")
EXPORT_FORMATS = (
    ExportFormat("onnx", ".onnx", "onnxruntime", ("float32", "int8")),
    ExportFormat("tflite", ".tflite", "litert", ("float32", "fp16", "int8")),
    ExportFormat("savedmodel", "_savedmodel", "tensorflow", ("float32",)),
    # int8, batch 1, for tflite-micro: the .tflite (LiteRT runs it too) and a .cc/.h pair holding it as a C array.
    ExportFormat("tflm", "_tflm.tflite", "tflite-micro", ("int8",), static_batch=1, in_all=False),
)
FORMATS = tuple(f.name for f in EXPORT_FORMATS)
ALL_FORMATS = tuple(f.name for f in EXPORT_FORMATS if f.in_all)  # what --format all makes
# An exported file's name (ExportFormat.file_name), for telling aekit's files from others in an export folder.
EXPORT_NAME = re.compile(
    r"^(encoder|decoder|autoencoder)(_fp16|_int8)?(_batch[1-9][0-9]*)?(\.onnx|_tflm\.tflite|_tflm\.cc|_tflm\.h|\.tflite|_savedmodel)$"
)


def export_format(name: str) -> ExportFormat:
    """The table row for a --format name, or AekitError listing the names."""
    for fmt in EXPORT_FORMATS:
        if fmt.name == name:
            return fmt
    raise AekitError(f"--format {name} is not one of {', '.join(FORMATS)}, all.")


def format_of_file(path: Path) -> ExportFormat | None:
    """The format a file or folder name belongs to, by its suffix (None if none).

    A tflite-micro file (encoder_tflm.tflite) is a .tflite file: LiteRT runs it (its entry's format says tflm).
    """
    name = Path(path).name
    return next((fmt for fmt in EXPORT_FORMATS if name.endswith(fmt.suffix)), None)


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
    kernels: str = "default"  # aekit.edge.runtimes.KERNELS: the kernel set it ran on


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
    # How a quantized file was made (scheme, activations, weights, nodes kept float and why); None for float files.
    quantization: dict | None = None
    # int8 files: the same check on the runtime's reference kernels (what a device without its optimized ones runs).
    reference_parity: Parity | None = None
    # The file's fixed batch: it takes exactly this many inputs at a time (None: any batch).
    static_batch: int | None = None
    # A decoder rewritten to compute the same function in other ops (e.g. "crop": transposed convolutions
    # unpadded, then cropped), so runtimes that refuse the original's ops load it; None: as Keras has it.
    form: str | None = None
    # tflm entries: the C source and header (each file's bytes and sha256), the array's names, the tensor
    # arena measured by tflite-micro, and the ops a microcontroller build registers.
    micro: dict | None = None

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> FileEntry:
        data = {k: v for k, v in data.items() if k in {f.name for f in fields(cls)}}
        data["inputs"] = [TensorSpec(**t) for t in data.get("inputs") or []]
        data["outputs"] = [TensorSpec(**t) for t in data.get("outputs") or []]
        data["parity"] = Parity(**data["parity"]) if data.get("parity") else None
        data["reference_parity"] = Parity(**data["reference_parity"]) if data.get("reference_parity") else None
        return cls(**data)

    def companions(self) -> dict[str, dict]:
        """The files written with this one ({name: {bytes, sha256}}; tflm: the .cc and .h)."""
        return dict((self.micro or {}).get("files") or {})

    def problem(self, folder: Path) -> str | None:
        """Why the file in `folder` (or a companion) is not the one this entry vouches for (None when it is)."""
        path = Path(folder) / self.file
        if self.status != "passed":
            return f"{self.file} failed at export ({self.reason or 'no reason recorded'})"
        if not path.exists():
            return f"{self.file} is missing"
        for name, record in self.companions().items():
            companion = Path(folder) / name
            if not companion.is_file():
                return f"{name} (written with {self.file}) is missing"
            if companion.stat().st_size != record.get("bytes") or sha256_of(companion) != record.get("sha256"):
                return f"{name} (written with {self.file}) changed since export"
        outside = link_outside(path)
        if outside:  # refused before a byte of it is read
            return outside
        size, digest = directory_size_and_hash(path) if path.is_dir() else (path.stat().st_size, None)
        if size != self.bytes:
            return f"{self.file} changed since export (size {size:,} bytes, the manifest says {self.bytes:,})"
        if (digest or sha256_of(path)) != self.sha256:
            return f"{self.file} changed since export (sha256 mismatch)"
        return None


def link_outside(path: Path) -> str | None:
    """Why `path` is not a file of its own folder: a symlink (at any depth) that leads out of it; None otherwise."""
    path = Path(path)
    folder = path.parent.resolve()
    target = path.resolve()
    if path.is_symlink() and not target.is_relative_to(folder):
        return f"{path.name} is a symbolic link to {target}, outside its export folder {folder}"
    return None


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
    # The run's weights (metrics.json weights_sha256) these files were made from.
    run_weights_sha256: str | None = None

    def to_json(self) -> dict:
        return {
            "schema_version": self.schema_version,
            "run": self.run,
            "run_weights_sha256": self.run_weights_sha256,
            "model": self.model,
            "pixel_scaling": self.pixel_scaling,
            "latent_quantization": self.latent_quantization,
            "versions": self.versions,
            "files": [entry.to_json() for entry in self.files],
        }

    def write(self, folder: Path) -> None:
        """Writes `folder`/manifest.json atomically (temporary name, then rename)."""
        from aekit.core.runs import write_json

        write_json(Path(folder) / MANIFEST, self.to_json())

    @classmethod
    def load(cls, folder: Path, verify: bool = True) -> Manifest:
        """Reads and checks `folder`/manifest.json.

        Args:
            folder: an export folder.
            verify: also check that every passed file is there with its recorded size and sha256.

        Raises:
            AekitError: a missing, unreadable or invalid manifest, or (verify) a changed file.
        """
        path = Path(folder) / MANIFEST
        if not path.is_file():
            raise AekitError(f"No {MANIFEST} in {folder}. Use a folder written by aekit export (keep it together).")
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise AekitError(f"{path} is not readable JSON ({str(exc)[:120]}). Re-export the run.") from None
        check_manifest(data, Path(folder) if verify else None, where=path)
        try:
            return cls(
                run=data["run"],
                model=data["model"],
                pixel_scaling=data["pixel_scaling"],
                versions=data["versions"],
                files=[FileEntry.from_json(e) for e in data["files"]],
                latent_quantization=data.get("latent_quantization"),
                schema_version=data["schema_version"],
                run_weights_sha256=data.get("run_weights_sha256"),
            )
        except (TypeError, ValueError, KeyError) as exc:
            raise AekitError(f"Invalid {path}: {str(exc)[:160]}. Re-export with aekit export.") from None

    def entry(self, file: str) -> FileEntry | None:
        return next((e for e in self.files if e.file == file), None)


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


def validate_manifest(data, folder: Path | None = None) -> list[str]:
    """Problems with a manifest dict (empty when valid). With `folder`, also checks sizes and checksums."""
    if not isinstance(data, dict):
        return [f"expected a JSON object, found {type(data).__name__}"]
    problems = [
        f"missing key {key!r}"
        for key in ("schema_version", "run", "model", "pixel_scaling", "versions", "files")
        if key not in data
    ]
    if problems:
        return problems
    if data["schema_version"] != SCHEMA_VERSION:
        problems.append(f"schema_version {data['schema_version']} is not {SCHEMA_VERSION}")
    if not isinstance(data["pixel_scaling"], dict) or not is_positive(data["pixel_scaling"].get("divide_by")):
        problems.append("pixel_scaling has no positive divide_by")
    model = data["model"] if isinstance(data["model"], dict) else {}
    shape = model.get("input_shape")
    if not (isinstance(shape, list) and len(shape) == 3 and all(isinstance(d, int) and d > 0 for d in shape)):
        problems.append(f"model input_shape {shape!r} is not [H, W, C] of positive integers")
    if not (isinstance(model.get("latent_dim"), int) and model["latent_dim"] > 0):
        problems.append(f"model latent_dim {model.get('latent_dim')!r} is not a positive integer")
    problems += _latent_quantization_problems(data.get("latent_quantization"), model.get("latent_dim"))
    if not isinstance(data["files"], list) or not all(isinstance(e, dict) for e in data["files"]):
        return [*problems, "files is not a list of objects"]
    for entry in data["files"]:
        name = entry.get("file", "?")
        if not isinstance(name, str) or not name or "/" in name or "\\" in name or name.startswith("."):
            problems.append(f"file name {name!r} is not a plain file name")
            continue
        for key, allowed in (("role", ROLES), ("format", FORMATS), ("precision", PRECISIONS), ("status", STATUSES)):
            if entry.get(key) not in allowed:
                problems.append(f"{name}: {key} {entry.get(key)!r} not in {allowed}")
        for key in ("inputs", "outputs"):
            tensors = entry.get(key) or []
            if entry.get("status") == "failed" and not tensors:  # a file that failed to convert has no tensors
                continue
            if (
                not isinstance(tensors, list)
                or not tensors
                or not all(isinstance(t, dict) and {"name", "shape", "dtype"} <= set(t) for t in tensors)
            ):
                problems.append(f"{name}: {key} must list name, shape and dtype")
        if entry.get("format") == "onnx" and not entry.get("opset"):
            problems.append(f"{name}: onnx entry without opset")
        batch = entry.get("static_batch")
        if batch is not None and not (is_whole(batch) and batch >= 1):
            problems.append(f"{name}: static_batch {batch!r} is not a positive whole number")
        if entry.get("micro") is not None and not (
            isinstance(entry["micro"], dict) and isinstance(entry["micro"].get("files", {}), dict)
        ):
            problems.append(f"{name}: micro is not an object with its files")
        if entry.get("status") == "passed":
            if not isinstance(entry.get("parity"), dict):
                problems.append(f"{name}: passed without parity figures")
            if not isinstance(entry.get("bytes"), int) or not isinstance(entry.get("sha256"), str):
                problems.append(f"{name}: passed without size and sha256")
    if folder is not None and not problems:
        for entry in data["files"]:
            problem = FileEntry.from_json(entry).problem(folder) if entry.get("status") == "passed" else None
            if problem:
                problems.append(problem)
    return problems


def check_manifest(data, folder: Path | None = None, where: Path | str = MANIFEST) -> None:
    problems = validate_manifest(data, folder)
    if problems:
        raise AekitError(f"Invalid {where}: {'; '.join(problems)}. Re-export with aekit export.")


def _latent_quantization_problems(params, latent_dim) -> list[str]:
    """Why a manifest's latent_quantization cannot give int8 codes (empty when it is absent or valid)."""
    if params is None:
        return []
    if not isinstance(params, dict):
        return [f"latent_quantization is a {type(params).__name__}, not an object with scale and offset"]
    width = latent_dim if is_whole(latent_dim) else None
    problems = []
    for key, ok, wanted in (("scale", is_positive, "finite positive"), ("offset", is_number, "finite")):
        values = params.get(key)
        if not isinstance(values, list) or (width is not None and len(values) != width):
            what = (
                "missing"
                if key not in params
                else f"{type(values).__name__} of length {len(values)}"
                if isinstance(values, list)
                else repr(values)[:40]
            )
            problems.append(f"latent_quantization {key} is {what}; expected a list of {width or 'latent_dim'} {wanted} numbers")
        elif not all(ok(v) for v in values):
            problems.append(
                f"latent_quantization {key} holds {next(v for v in values if not ok(v))!r}; expected {wanted} numbers"
            )
    return problems
