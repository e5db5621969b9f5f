"""Latent codes on disk: int8 quantization, encoding a source into a codes file, decoding one into images.

>>> encode_path(EncoderSession("export/encoder.onnx"), "digits/", "codes.npz", latent_dtype="int8")
>>> decode_file(DecoderSession("export/decoder.onnx"), "codes.npz", "out/")
"""

from __future__ import annotations

import errno
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from aekit.core.manifest import MANIFEST
from aekit.core.runs import write_text
from aekit.core.sources import iter_images
from aekit.edge.outputs import (
    NAMES_CSV,
    OutputClaim,
    _save_npz,
    _staging_folder,
    check_not_overwriting,
    check_output_file,
    check_output_folder,
    move_into_folder,
    names_csv,
    png_names,
    recover_folder,
    renamed,
    same_file,
    save_png,
    staging_inside,
)
from aekit.edge.runtimes import out_of_memory
from aekit.errors import AekitError

if TYPE_CHECKING:
    from aekit.edge.sessions import DecoderSession, EncoderSession


INT8_LEVELS = 255  # codes use -128..127


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
    with OutputClaim(output):  # a second command writing this file fails at once instead of replacing this one's
        check_encode_output(source, output, overwrite)  # again, now that no other aekit command can write it
        try:
            return _encode_into(encoder, source, Path(output), latent_dtype, batch_size, on_batch, pixel_max)
        except MemoryError:
            raise out_of_memory(f"encoding {source}") from None


def _encode_into(encoder, source, output: Path, latent_dtype: str, batch_size: int, on_batch, pixel_max) -> dict:
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

    PNGs are written into a temporary folder and moved in at the end: a new folder is renamed into place
    whole; into an existing folder the files are moved all or nothing (`move_into_folder`: an interrupted
    move is rolled back, at once or by the next decode into that folder), and the folder's other files are
    never touched. Existing files are not replaced unless `overwrite`. File names keep their letters and
    digits of any script; when an image's file name is not its own name (folders, control characters,
    leading dots, over-long names), the folder also gets names.csv (file,name) recording the original.
    The output is claimed while it is written: a second command writing it fails at once.
    """
    if fmt not in ("png", "npz"):
        raise AekitError(f"--format {fmt!r} is not png or npz.")
    output = Path(output)
    with OutputClaim(output):
        try:
            return _decode_into(decoder, Path(latents_path), output, fmt, batch_size, on_batch, overwrite)
        except MemoryError:
            raise out_of_memory(f"decoding {latents_path}") from None


def _decode_into(decoder, latents_path: Path, output: Path, fmt: str, batch_size: int, on_batch, overwrite: bool) -> dict:
    if fmt == "npz":
        check_output_file(output, ".npz")
        if same_file(latents_path, output):
            raise AekitError(f"-o {output} is the latents file being decoded. Pass -o a new .npz file for the images.")
        if output.exists() and not overwrite:
            raise AekitError(f"{output} already exists. Pass --overwrite to replace it, or -o a new file.")
    else:
        check_output_folder(output)
        if output.is_dir():
            recover_folder(output)  # a decode into it killed mid-move: put the folder back as it was
    latents, names = load_latents(latents_path)
    check_latents_match(decoder, latents_path)
    images = png_names(names) if fmt == "png" else []
    record = renamed(names, images)
    files = [*images, *([NAMES_CSV] if record else [])]
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
    existing = output.is_dir()
    staging = (staging_inside(output) if existing else _staging_folder(output)) if fmt == "png" else None
    images_out = []
    try:
        for start in range(0, len(latents), batch_size):
            decoded = decoder.decode(latents[start : start + batch_size], batch_size)
            if not np.isfinite(decoded).all():
                raise AekitError(
                    f"The decoder gave NaN or infinite pixels for codes {start}-{start + len(decoded) - 1} of "
                    f"{latents_path}. Check the codes file, or re-export the run."
                )
            if fmt == "png":
                for file, image in zip(images[start : start + batch_size], decoded):
                    save_png(image, staging / file)
            else:
                images_out.append(decoded)
            if on_batch:
                on_batch(len(decoded))
        if record:
            write_text(staging / NAMES_CSV, names_csv(record))
        if fmt == "npz":
            _save_npz(output, images=np.concatenate(images_out), names=np.asarray(names))
        elif not existing:
            try:
                os.rename(staging, output)  # the whole folder at once
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                raise AekitError(f"{output} appeared while decoding (made by another program). Pass -o a new folder.") from None
        else:
            move_into_folder(staging, output, files)
    finally:
        if staging is not None and staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return {"images": len(latents), "format": fmt, "output": str(output)}
