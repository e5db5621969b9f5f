"""Sessions over exported files: an encoder or decoder opened on its runtime, checked against its manifest.

Imports only numpy and the runtimes (onnxruntime or ai-edge-litert). A session reads the
`manifest.json` beside the file for the expected shapes and the pixel scaling, accepts uint8 or float
images (one image or a batch), scales them by aekit.core.pixels' rule for the model (whole sources by
the training rule, see `source_scaling`) and returns float32 latents or images in [0, 1].
`device="cuda"` runs on CUDA or raises (NoCudaError) unless `allow_fallback=True`; `session.provider`
says what ran.

    >>> encoder = EncoderSession("runs/demo/export/encoder.onnx")
    >>> codes = encoder.encode(images_uint8)          # (N, 16) float32
    >>> decoder = DecoderSession("runs/demo/export/decoder.onnx")
    >>> images = decoder.decode(codes)                # (N, 28, 28, 1) float32 in [0, 1]
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from aekit.core.manifest import MANIFEST, FileEntry, Manifest, link_outside
from aekit.core.pixels import PixelRange, PixelScaling
from aekit.core.sources import source_range
from aekit.edge.runtimes import check_device, open_runner, out_of_memory, run_batched
from aekit.errors import AekitError


def read_manifest(model_path: Path) -> tuple[Manifest, FileEntry]:
    """(manifest, this file's entry) from the manifest.json beside an exported file, the file verified (see `read_verified`)."""
    manifest, entry, _ = read_verified(model_path)
    return manifest, entry


def read_verified(model_path: Path) -> tuple[Manifest, FileEntry, bytes]:
    """(manifest, this file's entry, the file's bytes): the bytes read once and verified against the entry.

    The file must be the one the manifest vouches for: same size and sha256 (hashing a model file
    costs about a millisecond per megabyte, small next to loading it), and a passed parity check.
    The runtime is then opened on these very bytes, so a file re-exported between the check and the
    load cannot run under the old file's checksum.
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
    problem = entry.problem(model_path.parent) if entry.status != "passed" else link_outside(model_path)
    content = b"" if problem else read_model_bytes(model_path)
    problem = problem or _bytes_problem(entry, content)
    if problem:
        raise AekitError(f"{problem}: it is not the file the manifest vouches for. Re-export the run (aekit export).")
    return manifest, entry, content


def read_model_bytes(path: Path) -> bytes:
    """The whole exported file, read once (a MemoryError or a read error becomes a one-line AekitError)."""
    try:
        return Path(path).read_bytes()
    except MemoryError:
        raise out_of_memory(f"reading {path}") from None
    except OSError as exc:
        raise AekitError(f"Cannot read {path}: {exc.strerror}. Pass a readable file written by aekit export.") from None


def _bytes_problem(entry: FileEntry, content: bytes) -> str | None:
    """Why these bytes are not the file `entry` vouches for (None when they are)."""
    if len(content) != entry.bytes:
        return f"{entry.file} changed since export (size {len(content):,} bytes, the manifest says {entry.bytes:,})"
    if hashlib.sha256(content).hexdigest() != entry.sha256:
        return f"{entry.file} changed since export (sha256 mismatch)"
    return None


def _check_shapes(session) -> None:
    """The file's real input and output shapes must be the manifest's (a swapped file fails here)."""
    inputs, outputs = session.runner.specs()
    want_in, want_out = (tuple(session.image_shape), (session.latent_dim,))[:: 1 if session.role == "encoder" else -1]
    got_in, got_out = tuple(inputs[0].shape[1:]), tuple(outputs[0].shape[1:])
    if session.role == "decoder" and session.path.suffix == ".tflite" and got_in[:-1] == (1, 1):
        # a "phases4d" decoder's (1, 1, L) latent image: its runner feeds it (N, L) latents
        got_in = got_in[-1:]
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
        self.manifest, self.entry, content = read_verified(self.path)
        if self.entry.role != self.role:
            raise AekitError(f"{self.path.name} is an {self.entry.role}, not an {self.role}. Pass the {self.role} file.")
        # From the verified bytes, not the path: what runs is what was checked, whatever the path holds by now.
        self.runner = open_runner(self.path, self.requested_device, threads, allow_fallback, content=content)
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
            pixel_max: the images' white level, when they are not 0-255 or 0-1 (aekit.core.pixels).

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
        """The scaling for a whole source, by the training rule (aekit.core.pixels): what `train` would use on it.

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
