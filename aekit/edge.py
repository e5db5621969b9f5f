"""The edge side: encode and decode images with exported files, without TensorFlow (scoring: aekit.anomaly).

Imports only numpy, onnxruntime or ai-edge-litert (and Pillow for image folders).
A session reads the `manifest.json` beside the file for the expected shapes and
the pixel scaling, accepts uint8 or float images (one image or a batch), scales them by
aekit.pixels' rule for the model (whole sources by the training rule, see `source_scaling`)
and returns float32 latents or images in [0, 1]. `device="cuda"` runs on CUDA or
raises (NoCudaError) unless `allow_fallback=True`; `session.provider` says what ran.

    >>> encoder = EncoderSession("runs/demo/export/encoder.onnx")
    >>> codes = encoder.encode(images_uint8)          # (N, 16) float32
    >>> decoder = DecoderSession("runs/demo/export/decoder.onnx")
    >>> images = decoder.decode(codes)                # (N, 28, 28, 1) float32 in [0, 1]
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aekit.errors import AekitError
from aekit.manifest import MANIFEST, FileEntry, Manifest
from aekit.pixels import UINT8_MAX, PixelRange, PixelScaling
from aekit.runtimes import check_device, open_runner, run_batched
from aekit.sources import IMAGE_SUFFIXES, iter_images, source_range

INT8_LEVELS = 255  # codes use -128..127


def read_manifest(model_path: Path) -> tuple[Manifest, FileEntry]:
    """(manifest, this file's entry) from the manifest.json beside an exported file, the file verified.

    The file must be the one the manifest vouches for: same size and sha256 (hashing a model file
    costs about a millisecond per megabyte, small next to loading it), and a passed parity check.
    """
    model_path = Path(model_path)
    if not model_path.is_file():
        raise AekitError(f"{model_path} does not exist. Pass a file written by aekit export.")
    if not (model_path.parent / MANIFEST).is_file():
        raise AekitError(f"No {MANIFEST} beside {model_path}. Use files written by aekit export (keep the folder together).")
    manifest = Manifest.load(model_path.parent, verify=False)
    entry = manifest.entry(model_path.name)
    if entry is None:
        raise AekitError(f"{model_path.name} is not listed in {model_path.parent / MANIFEST}. Re-export the run.")
    problem = entry.problem(model_path.parent)
    if problem:
        raise AekitError(f"{problem}: it is not the file the manifest vouches for. Re-export the run (aekit export).")
    return manifest, entry


def _check_shapes(session) -> None:
    """The file's real input and output shapes must be the manifest's (a swapped file fails here)."""
    inputs, outputs = session.runner.specs()
    want_in, want_out = (tuple(session.image_shape), (session.latent_dim,))[:: 1 if session.role == "encoder" else -1]
    got_in, got_out = tuple(inputs[0].shape[1:]), tuple(outputs[0].shape[1:])
    if got_in != want_in or got_out != want_out:
        raise AekitError(
            f"{session.path.name} maps {got_in} to {got_out}, but its manifest says an {session.role} of {want_in} to "
            f"{want_out}. The file was replaced after export: re-export the run (aekit export)."
        )


class _Session:
    """An exported file opened on its runtime.

    Args:
        model: the .onnx or .tflite file, with manifest.json beside it.
        device: "cpu"; "cuda" (CUDA or NoCudaError); "auto" (CUDA when it really runs, else the CPU).
        threads: CPU threads (None: the physical cores).
        allow_fallback: with device "cuda", run on the CPU instead of raising when CUDA does not run.
    """

    role = ""

    def __init__(self, model: str | Path, device: str = "cpu", threads: int | None = None, allow_fallback: bool = False):
        self.path = Path(model)
        self.requested_device = check_device(device)
        self.manifest, self.entry = read_manifest(self.path)
        if self.entry.role != self.role:
            raise AekitError(f"{self.path.name} is an {self.entry.role}, not an {self.role}. Pass the {self.role} file.")
        self.runner = open_runner(self.path, self.requested_device, threads, allow_fallback)
        self.scaling = PixelScaling.from_json(self.manifest.pixel_scaling)  # how the model's training images were scaled
        self.image_shape = tuple(self.manifest.model["input_shape"])
        self.latent_dim = int(self.manifest.model["latent_dim"])
        _check_shapes(self)

    @property
    def provider(self) -> str:
        """What runs the file: an onnxruntime execution provider (CPUExecutionProvider, ...) or XNNPACK/CPU for LiteRT."""
        return self.runner.providers[0]

    @property
    def device(self) -> str:
        """Where the file really runs, "cuda" or "cpu", whatever was asked for."""
        return self.runner.device

    @property
    def fell_back(self) -> bool:
        """True when "cuda" was asked for, allow_fallback accepted it, and the CPU runs the file."""
        return self.requested_device == "cuda" and self.device != "cuda"

    def ran_on(self) -> dict:
        """Runtime, provider and device, for reports and JSON output."""
        return {
            "file": str(self.path),
            "runtime": self.runner.runtime,
            "provider": self.provider,
            "device": self.device,
            "requested_device": self.requested_device,
            "fell_back": self.fell_back,
        }


class EncoderSession(_Session):
    """Images -> latent codes with an exported encoder (.onnx or .tflite)."""

    role = "encoder"

    def encode(
        self, images: np.ndarray, batch_size: int = 256, scaling: PixelScaling | None = None, pixel_max: float | None = None
    ) -> np.ndarray:
        """Encodes one image (H, W, C) or a batch (N, H, W, C), uint8 or float, in the manifest's shape.

        Args:
            scaling: how to scale these images (a whole source's, from `source_scaling`); None: the
                model's rule for them (`to_model_input`).
            pixel_max: the images' white level, when they are not 0-255 or 0-1 (aekit.pixels).

        Returns:
            (latent_dim,) for one image, (N, latent_dim) for a batch; float32.
        """
        images = np.asarray(images)
        single = images.shape == self.image_shape or (
            images.ndim == 2 and self.image_shape[-1] == 1 and images.shape == self.image_shape[:2]
        )
        batch = images.reshape(1, *self.image_shape) if single else images
        if batch.ndim == 3 and self.image_shape[-1] == 1:
            batch = batch[..., None]
        if batch.ndim == 4 and batch.shape[1:3] == self.image_shape[:2] and batch.shape[3] != self.image_shape[2]:
            raise AekitError(
                f"The images have {_channels(batch.shape[3])} but the model takes {_channels(self.image_shape[2])}. "
                f"Convert the images to {_mode_name(self.image_shape[2])} (e.g. with Pillow's convert('"
                f"{'L' if self.image_shape[2] == 1 else 'RGB'}')), or use a model trained on such images."
            )
        if batch.shape[1:] != self.image_shape:
            raise AekitError(
                f"Expected images of shape {self.image_shape} (or a batch of them), received {images.shape}. "
                "Resize the images to the model's input shape."
            )
        inputs = self.to_model_input(batch, scaling, pixel_max)
        codes = run_batched(self.runner, inputs, batch_size)
        return codes[0] if single else codes

    def to_model_input(
        self, batch: np.ndarray, scaling: PixelScaling | None = None, pixel_max: float | None = None
    ) -> np.ndarray:
        """Float32 model inputs in [0, 1]: `scaling` (a whole source's), or the model's rule for this batch.

        The model's rule (PixelScaling.for_model): its --pixel-max when it was trained with one, else
        integers as 0-255 and floats as 0-1 (or 0-255 when they reach above 1), as training reads them.
        """
        if scaling is None:
            scaling = self.scaling.for_model(PixelRange.of(batch), pixel_max)
        elif batch.size:
            found = PixelRange.of(batch)
            if found.low < 0 or found.high > scaling.divide_by:
                raise AekitError(
                    f"Images span [{found.low:g}, {found.high:g}], outside the source's [0, {scaling.divide_by:g}]. "
                    "Scale the whole source alike."
                )
        return scaling.to_model_numpy(batch)

    def source_scaling(self, source: str | Path, pixel_max: float | None = None) -> PixelScaling:
        """The scaling for a whole source, by the training rule (aekit.pixels): what `train` would use on it.

        A model trained with --pixel-max takes that white level unless `pixel_max` names another. One
        pass over the source reads its range; a source train would refuse is refused with the same fix.
        """
        named = pixel_max if pixel_max is not None else self.scaling.pixel_max
        return PixelScaling.for_range(source_range(source), named, f"The images of {source}")


class DecoderSession(_Session):
    """Latent codes -> images with an exported decoder (.onnx or .tflite)."""

    role = "decoder"

    def decode(self, latents: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Decodes (latent_dim,) or (N, latent_dim) float codes into float32 images in [0, 1]."""
        latents = np.asarray(latents)
        single = latents.ndim == 1
        batch = latents[None] if single else latents
        if batch.ndim != 2 or batch.shape[1] != self.latent_dim:
            raise AekitError(
                f"Expected latents of shape (N, {self.latent_dim}), received {latents.shape}. Encode with the matching encoder."
            )
        if not np.issubdtype(batch.dtype, np.floating):
            raise AekitError(f"Latents have dtype {batch.dtype}; dequantize int8 codes first (LatentQuantizer.dequantize).")
        images = run_batched(self.runner, batch.astype(np.float32), batch_size)
        return images[0] if single else images


def _channels(count: int) -> str:
    return f"{count} channel{'s' if count != 1 else ''} ({_mode_name(count)})"


def _mode_name(count: int) -> str:
    return {1: "greyscale", 3: "RGB colour", 4: "RGBA colour with alpha"}.get(count, f"{count} channels")


@dataclass
class LatentQuantizer:
    """Per-dimension affine int8 codes: q = round((z - offset) / scale) - 128, so a code is latent_dim bytes."""

    scale: np.ndarray
    offset: np.ndarray

    @classmethod
    def calibrate(cls, latents: np.ndarray) -> LatentQuantizer:
        low, high = latents.min(axis=0), latents.max(axis=0)
        return cls(np.maximum(high - low, 1e-8).astype(np.float32) / INT8_LEVELS, low.astype(np.float32))

    @classmethod
    def from_json(cls, data: dict) -> LatentQuantizer:
        return cls(np.asarray(data["scale"], np.float32), np.asarray(data["offset"], np.float32))

    def to_json(self) -> dict:
        return {
            "dtype": "int8",
            "scale": self.scale.tolist(),
            "offset": self.offset.tolist(),
            "formula": "q = clip(round((z - offset) / scale) - 128, -128, 127); z = (q + 128) * scale + offset",
        }

    def quantize(self, latents: np.ndarray) -> np.ndarray:
        return np.clip(np.round((latents - self.offset) / self.scale) - 128, -128, 127).astype(np.int8)

    def dequantize(self, codes: np.ndarray) -> np.ndarray:
        return ((codes.astype(np.float32) + 128.0) * self.scale + self.offset).astype(np.float32)


# --- the commands' jobs ------------------------------------------------------------


def check_output_file(path: Path, suffix: str) -> None:
    """Refuses an output file path that cannot be written, before any work is done."""
    path = Path(path)
    if path.suffix != suffix:
        raise AekitError(f"-o {path}: the output file must end in {suffix}.")
    if path.is_dir():
        raise AekitError(f"-o {path} is a folder; pass a file name ending in {suffix}.")
    check_writable(path.parent)


def check_output_folder(path: Path, holds: str = "the images", flag: str = "-o") -> None:
    """AekitError unless `path` is (or can become) a folder files can be written in; `holds` says what goes there."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise AekitError(f"{flag} {path} is a file; pass a folder for {holds}.")
    check_writable(path)


def check_writable(folder: Path) -> None:
    """AekitError unless files can be created in `folder` (or in the nearest existing folder above it)."""
    import tempfile

    target = Path(folder)
    while not target.exists() and target != target.parent:
        target = target.parent
    if not target.is_dir():
        raise AekitError(f"Cannot write under {folder}: {target} is a file, not a folder. Pass -o a path in a folder.")
    try:
        with tempfile.NamedTemporaryFile(dir=target, prefix=".partial-probe-"):
            pass
    except OSError as exc:
        raise AekitError(f"Cannot write in {target}: {exc.strerror}. Pass -o a folder you can write to.") from None


def _staging_folder(output: Path) -> Path:
    """A new temporary folder beside `output` (same file system, so moving files in is a rename)."""
    import tempfile

    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".partial-{output.name}-", dir=output.parent))
        staging.chmod(0o777 & ~_umask())  # mkdtemp makes it 0700; once renamed it is the user's folder
        return staging
    except OSError as exc:
        raise AekitError(f"Cannot write beside {output}: {exc.strerror}. Pass -o a folder you can write to.") from None


def _umask() -> int:
    """The process umask (read by setting it and putting it back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def check_not_overwriting(path: Path, overwrite: bool, option: str = "-o") -> None:
    """Refuses an existing output file unless `overwrite` (--overwrite) was given."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise AekitError(f"{option} {path} already exists. Pass --overwrite to replace it, or {option} a new file.")


def same_file(a: Path, b: Path) -> bool:
    """True when two paths name one existing file (or the same path once resolved)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(a).resolve() == Path(b).resolve()


def _save_npz(path: Path, **arrays) -> None:
    from aekit.runs import atomic_path

    path = Path(path)
    check_output_file(path, ".npz")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def check_encode_output(source: Path, output: Path, overwrite: bool = False) -> None:
    """Refuses an encode output that is the source itself, or that exists (unless `overwrite`), before any work."""
    output = Path(output)
    check_output_file(output, ".npz")
    if same_file(source, output):
        raise AekitError(f"-o {output} is the source being encoded. Pass -o a new .npz file for the latents.")
    check_not_overwriting(output, overwrite)


def encode_path(
    encoder: EncoderSession,
    source: Path,
    output: Path,
    latent_dtype: str = "float32",
    batch_size: int = 256,
    on_batch=None,
    overwrite: bool = False,
    pixel_max: float | None = None,
) -> dict:
    """Encodes every image of `source` in batches into an .npz: latents, names, and int8 parameters if asked.

    The source is scaled as a whole by the training rule (`EncoderSession.source_scaling`).

    The file also records the encoder, its run and the run's weights (so decode can refuse another run's
    decoder). An existing `output` is replaced only with `overwrite`; the source itself never.
    """
    if latent_dtype not in ("float32", "int8"):
        raise AekitError(f"--latent-dtype {latent_dtype!r} is not float32 or int8.")
    check_encode_output(source, output, overwrite)
    quantizer = None
    if latent_dtype == "int8":
        params = encoder.manifest.latent_quantization
        if not params:
            raise AekitError(f"{encoder.path.parent / MANIFEST} has no latent_quantization. Re-export the run with this aekit.")
        quantizer = LatentQuantizer.from_json(params)
    names, chunks = [], []
    scaling = encoder.source_scaling(source, pixel_max)
    for batch_names, images in iter_images(source, batch_size):
        codes = encoder.encode(images, batch_size, scaling)
        chunks.append(quantizer.quantize(codes) if quantizer else codes.astype(np.float32))
        names += batch_names
        if on_batch:
            on_batch(len(batch_names))
    if not chunks:
        raise AekitError(f"{source} holds no images. Pass a non-empty image folder, array or IDX file.")
    latents = np.concatenate(chunks)
    extra = {"scale": quantizer.scale, "offset": quantizer.offset} if quantizer else {}
    _save_npz(
        output,
        latents=latents,
        names=np.asarray(names),
        latent_dtype=np.asarray(latent_dtype),
        source=np.asarray(str(source)),
        model=np.asarray(str(encoder.path)),
        run=np.asarray(str(encoder.manifest.run or "")),
        run_weights_sha256=np.asarray(str(encoder.manifest.run_weights_sha256 or "")),
        **extra,
    )
    return {
        "images": len(latents),
        "latent_dim": int(latents.shape[1]),
        "latent_dtype": latent_dtype,
        "bytes_per_image": int(latents.shape[1] * latents.itemsize),
        "output": str(output),
        "pixel_scaling": scaling.describe(),
    }


def load_latents(path: Path) -> tuple[np.ndarray, list[str]]:
    """Float32 latents (dequantized if stored as int8) and names from an `encode_path` file."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            latents, names = data["latents"], [str(n) for n in np.atleast_1d(data["names"])]
            if latents.ndim != 2:
                raise AekitError(
                    f"{path} holds latents of shape {latents.shape}; expected (N, latent_dim). Encode again with aekit encode."
                )
            if len(names) != len(latents):
                raise AekitError(
                    f"{path} holds {len(latents):,} latent codes but {len(names):,} names; the file is damaged or was "
                    "edited. Encode again with aekit encode."
                )
            if str(data["latent_dtype"]) == "int8":
                scale, offset = np.asarray(data["scale"], np.float64), np.asarray(data["offset"], np.float64)
                if (
                    scale.shape != (latents.shape[1],)
                    or offset.shape != scale.shape
                    or not (np.isfinite(scale).all() and (scale > 0).all() and np.isfinite(offset).all())
                ):
                    raise AekitError(
                        f"{path} has int8 codes with invalid scale/offset (one finite positive scale and one finite offset "
                        "per dimension are needed). Encode again with aekit encode."
                    )
                latents = LatentQuantizer(scale.astype(np.float32), offset.astype(np.float32)).dequantize(latents)
    except FileNotFoundError:
        raise AekitError(f"{path} does not exist. Write it with aekit encode.") from None
    except (ValueError, OSError, KeyError, IndexError, TypeError, EOFError) as exc:
        raise AekitError(f"{path} is not a latents file from aekit encode ({exc}). Encode again.") from None
    if len(latents) == 0:
        raise AekitError(f"{path} holds no latents. Encode some images first.")
    return latents.astype(np.float32), names


def latents_origin(path: Path) -> dict:
    """What an `encode_path` file records about its encoder: model, run, run_weights_sha256 ("" when not recorded)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return {
                key: str(data[key]) if key in data.files and np.asarray(data[key]).ndim == 0 else ""
                for key in ("model", "run", "run_weights_sha256")
            }
    except (ValueError, OSError, KeyError, TypeError, EOFError):
        return {"model": "", "run": "", "run_weights_sha256": ""}


def check_latents_match(decoder: DecoderSession, path: Path) -> None:
    """Refuses latents encoded by another run's encoder (or other weights of this run) than the decoder's."""
    origin, manifest = latents_origin(path), decoder.manifest
    encoder = f" by {origin['model']}" if origin["model"] else ""
    fix = "Decode with the decoder exported with that encoder, or encode the images again with this decoder's encoder."
    if origin["run"] and manifest.run and origin["run"] != str(manifest.run):
        raise AekitError(
            f"{path} was encoded{encoder} from run {origin['run']}, but {decoder.path} was exported from run "
            f"{manifest.run}; its codes mean nothing to this decoder. {fix}"
        )
    weights = origin["run_weights_sha256"]
    if weights and manifest.run_weights_sha256 and weights != manifest.run_weights_sha256:
        raise AekitError(
            f"{path} was encoded{encoder} with other weights of run {origin['run'] or manifest.run} (sha256 "
            f"{weights[:12]}) than {decoder.path} was exported from ({manifest.run_weights_sha256[:12]}). {fix}"
        )


def to_uint8(images: np.ndarray) -> np.ndarray:
    return np.clip(np.round(images * UINT8_MAX), 0, UINT8_MAX).astype(np.uint8)


def save_png(image: np.ndarray, path: Path) -> None:
    from PIL import Image

    from aekit.runs import atomic_path

    pixels = to_uint8(image)
    with atomic_path(path) as tmp:
        Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(tmp, format="PNG")


def png_name(name: str) -> str:
    """A safe PNG file name for an image name: no folders, no hidden or special characters."""
    stem = str(name).replace("/", "_").replace("\\", "_")
    suffix = Path(stem).suffix
    if suffix.lower() in IMAGE_SUFFIXES:  # photo.jpg -> photo.png
        stem = stem[: -len(suffix)]
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", stem).lstrip(".") or "image"
    return stem + ".png"


def png_names(names: list[str]) -> list[str]:
    """One PNG file name per image name, refusing two images that would share a file."""
    files, seen = [png_name(n) for n in names], {}
    for name, file in zip(names, files):
        if file in seen:
            raise AekitError(
                f"Images {seen[file]!r} and {name!r} would both be written to {file}. "
                "Give the source images distinct names, or decode with --format npz."
            )
        seen[file] = name
    return files


def decode_file(
    decoder: DecoderSession,
    latents_path: Path,
    output: Path,
    fmt: str = "png",
    batch_size: int = 256,
    on_batch=None,
    overwrite: bool = False,
) -> dict:
    """Decodes a latents file into PNGs in a folder (or one .npz with fmt="npz").

    PNGs are written into a temporary folder beside `output` and moved in at the end, so an
    interrupted decode leaves no images under their final names. Existing files are not
    replaced unless `overwrite`.
    """
    if fmt not in ("png", "npz"):
        raise AekitError(f"--format {fmt!r} is not png or npz.")
    output = Path(output)
    if fmt == "npz":
        check_output_file(output, ".npz")
        if same_file(latents_path, output):
            raise AekitError(f"-o {output} is the latents file being decoded. Pass -o a new .npz file for the images.")
        if output.exists() and not overwrite:
            raise AekitError(f"{output} already exists. Pass --overwrite to replace it, or -o a new file.")
    else:
        check_output_folder(output)
    latents, names = load_latents(latents_path)
    check_latents_match(decoder, latents_path)
    files = png_names(names) if fmt == "png" else []
    folders = [f for f in files if (output / f).is_dir()]
    if folders:
        raise AekitError(
            f"{output / folders[0]} is a folder, so the decoded image of that name cannot be written there. "
            "Move it away, or -o a new folder."
        )
    clashes = [f for f in files if (output / f).exists()]
    if clashes and not overwrite:
        raise AekitError(
            f"{output} already holds {len(clashes):,} of the {len(files):,} files to write (e.g. {clashes[0]}). "
            "Pass --overwrite to replace them, or -o a new folder."
        )
    staging = _staging_folder(output) if fmt == "png" else None
    images_out = []
    try:
        for start in range(0, len(latents), batch_size):
            images = decoder.decode(latents[start : start + batch_size], batch_size)
            if not np.isfinite(images).all():
                raise AekitError(
                    f"The decoder gave NaN or infinite pixels for codes {start}-{start + len(images) - 1} of "
                    f"{latents_path}. Check the codes file, or re-export the run."
                )
            if fmt == "png":
                for file, image in zip(files[start : start + batch_size], images):
                    save_png(image, staging / file)
            else:
                images_out.append(images)
            if on_batch:
                on_batch(len(images))
        if fmt == "npz":
            _save_npz(output, images=np.concatenate(images_out), names=np.asarray(names))
        elif not output.exists():
            os.replace(staging, output)
        else:
            for file in files:
                os.replace(staging / file, output / file)
    finally:
        if staging is not None and staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return {"images": len(latents), "format": fmt, "output": str(output)}
