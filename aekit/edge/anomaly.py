"""Reconstruction scores: every image of a source through an exported encoder and decoder, and the reconstruct job.

TensorFlow-free (the edge side): images go through aekit.edge sessions; an image's score is its
reconstruction MSE (thresholds and calibration: aekit.edge.thresholds; labelled sets: aekit.edge.report).

    >>> encoder, decoder = open_sessions("export/encoder.onnx", "export/decoder.onnx")
    >>> scores = score_path(encoder, decoder, "incoming/")
    >>> scores.mean_psnr, scores.worst
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aekit.core.metrics import mse_per_image, psnr_from_mse
from aekit.core.sources import count_images, iter_images
from aekit.edge.outputs import OutputClaim, check_not_inside, check_output_folder, to_uint8
from aekit.edge.runtimes import out_of_memory
from aekit.edge.sessions import DecoderSession, EncoderSession
from aekit.errors import AekitError

METRIC = "reconstruction_mse"
SCORES_CSV = "reconstruction.csv"  # what reconstruct writes into its folder
GRID_PNG = "reconstructions.png"
GRID_MIN_CELL = 64  # pixels on a cell's short side in reconstructions.png: tiny images become readable
GRID_GAP, GRID_PAD = 4, 6  # pixels between cells, and around the picture


def open_sessions(
    encoder: str | Path, decoder: str | Path, device: str = "cpu", threads: int | None = None, allow_fallback: bool = False
) -> tuple[EncoderSession, DecoderSession]:
    """An encoder and a decoder session over files exported from one run (else AekitError)."""
    pair = EncoderSession(encoder, device, threads, allow_fallback), DecoderSession(decoder, device, threads, allow_fallback)
    check_same_run(*pair)
    return pair


def check_same_run(encoder: EncoderSession, decoder: DecoderSession) -> None:
    """Refuses an encoder and a decoder from two runs: one run's latent codes mean nothing to another's decoder.

    Compares the "run", "run_weights_sha256" (when both record it) and "model" sections of the manifest.json
    beside each file.
    """
    (enc_run, enc_model), (dec_run, dec_model) = ((s.manifest.run, s.manifest.model) for s in (encoder, decoder))
    if enc_run != dec_run:
        raise AekitError(
            f"{encoder.path} was exported from run {enc_run} but {decoder.path} from run {dec_run}; a decoder cannot read "
            "another run's latent codes. Pass an encoder and a decoder exported from the same run."
        )
    enc_weights, dec_weights = encoder.manifest.run_weights_sha256, decoder.manifest.run_weights_sha256
    if enc_weights and dec_weights and enc_weights != dec_weights:
        raise AekitError(
            f"{encoder.path} and {decoder.path} were exported from different weights of run {enc_run} (sha256 "
            f"{enc_weights[:12]} vs {dec_weights[:12]}, e.g. before and after train --resume). Pass the encoder and the "
            "decoder from one export of the run."
        )
    if enc_model != dec_model:
        a, b = enc_model if isinstance(enc_model, dict) else {}, dec_model if isinstance(dec_model, dict) else {}
        differ = (
            ", ".join(
                f"{key} {a.get(key)!r} vs {b.get(key)!r}" for key in sorted(set(a) | set(b), key=str) if a.get(key) != b.get(key)
            )
            or "one manifest has no model section"
        )
        raise AekitError(
            f"The manifests beside {encoder.path} and {decoder.path} describe different models ({differ}). "
            "Re-export the run (aekit export) and pass the encoder and decoder from that one export."
        )


@dataclass
class Scores:
    """Reconstruction error of every image of a source, in the source's order.

    `originals` and `reconstructions` hold a few images (float32 in [0, 1], (k, H, W, C)) when
    they were asked for, else None; `kept` (k,) is their positions in the source.
    """

    names: list[str]
    mse: np.ndarray  # (N,) float64
    psnr: np.ndarray  # (N,) float64, dB
    originals: np.ndarray | None = None
    reconstructions: np.ndarray | None = None
    kept: np.ndarray | None = None  # (k,) int64 indices into names/mse/psnr

    def __len__(self) -> int:
        return len(self.names)

    @property
    def mean_mse(self) -> float:
        return float(self.mse.mean())

    @property
    def mean_psnr(self) -> float:
        return float(self.psnr.mean())

    @property
    def worst(self) -> tuple[str, float]:
        """(name, MSE) of the worst-reconstructed image."""
        i = int(self.mse.argmax())
        return self.names[i], float(self.mse[i])


def _first_bad(values: np.ndarray, names: list[str] | None) -> str | None:
    """The name of the first image whose values are not all finite, or None."""
    finite = np.isfinite(values.reshape(len(values), -1)).all(axis=1)
    if finite.all():
        return None
    i = int(np.argmin(finite))
    return repr(names[i]) if names is not None else str(i)


def _round_trip(
    encoder: EncoderSession,
    decoder: DecoderSession,
    images: np.ndarray,
    names: list[str] | None = None,
    source: str | Path | None = None,
    scaling=None,
):
    """(model inputs, reconstructions, per-image MSE, per-image PSNR); AekitError on NaN or infinite values anywhere.

    `scaling`: the whole source's PixelScaling (EncoderSession.source_scaling); None: the model's rule for this batch.
    """
    images = np.asarray(images)
    batch = images if images.ndim == 4 else images[..., None]
    if np.issubdtype(batch.dtype, np.floating) and (bad := _first_bad(batch, names)):
        where = f" of {source}" if source is not None else ""
        raise AekitError(
            f"Image {bad}{where} has NaN or infinite pixels. Drop or repair it: images must be uint8 (0-255) or float in [0, 1]."
        )
    inputs = encoder.to_model_input(batch, scaling)
    latents = encoder.encode(batch, scaling=scaling)
    if bad := _first_bad(latents, names):
        raise AekitError(
            f"{encoder.path.name} turned image {bad} into NaN or infinite latents, so the file is broken. "
            "Re-export the run (aekit export), after checking that its training loss was finite."
        )
    recon = decoder.decode(latents)
    if bad := _first_bad(recon, names):
        raise AekitError(
            f"{decoder.path.name} turned the latents of image {bad} into NaN or infinite pixels, so the file is "
            "broken. Re-export the run (aekit export), after checking that its training loss was finite."
        )
    mse = mse_per_image(inputs, recon)
    return inputs, recon, mse, psnr_from_mse(mse)


def reconstruction_errors(encoder: EncoderSession, decoder: DecoderSession, images: np.ndarray, names: list[str] | None = None):
    """(reconstructions, per-image MSE, per-image PSNR) for a batch of stored images (N, H, W[, C]).

    Raises AekitError, naming the image (by `names` when given, else its index), when a pixel,
    a latent or a reconstructed pixel is NaN or infinite.
    """
    _, recon, mse, psnr = _round_trip(encoder, decoder, images, names)
    return recon, mse, psnr


def score_path(
    encoder: EncoderSession,
    decoder: DecoderSession,
    source: str | Path,
    batch_size: int = 256,
    on_batch=None,
    keep: int = 0,
    pixel_max: float | None = None,
) -> Scores:
    """Reconstruction MSE and PSNR of every image of `source` (folder, .npz/.npy or IDX), read in batches.

    Args:
        keep: also return `keep` originals and reconstructions (for a picture), spread evenly over the source
            (first and last included; the first `keep` when its size cannot be read from its headers). Only those
            are held, so memory stays one batch plus `keep` images.
        on_batch: called with each batch's image count (progress bars).
    """
    total = count_images(source) if keep > 0 else None
    scaling = encoder.source_scaling(source, pixel_max)  # the whole source, by the training rule (aekit.core.pixels)
    return score_batches(encoder, decoder, iter_images(source, batch_size), source, on_batch, keep, total, scaling)


def array_batches(images: np.ndarray, batch_size: int = 256):
    """(names, images) batches of an in-memory (N, H, W, C) array, named by index like a .npy source."""
    for start in range(0, len(images), batch_size):
        stop = min(start + batch_size, len(images))
        yield [str(i) for i in range(start, stop)], images[start:stop]


def score_batches(
    encoder: EncoderSession,
    decoder: DecoderSession,
    batches,
    source,
    on_batch=None,
    keep: int = 0,
    total: int | None = None,
    scaling=None,
) -> Scores:
    """`score_path` over (names, images) batches; `total` (the image count, when known) spreads the `keep` images."""
    wanted = np.arange(max(keep, 0))  # the first `keep`, unless the size is known
    if keep > 0 and total is not None and total > keep:
        from aekit.core.splits import spread  # the one rule for "evenly spaced, first and last included"

        wanted = spread(total, keep)
    names, mses, psnrs, kept_in, kept_out, kept_at = [], [], [], [], [], []
    for batch_names, images in batches:
        inputs, recon, mse, psnr = _round_trip(encoder, decoder, images, batch_names, source, scaling)
        start = len(names)
        names += batch_names
        mses.append(mse)
        psnrs.append(psnr)
        rows = wanted[(wanted >= start) & (wanted < start + len(batch_names))] - start
        if rows.size:
            kept_in.append(inputs[rows])
            kept_out.append(recon[rows])
            kept_at += (rows + start).tolist()
        if on_batch:
            on_batch(len(batch_names))
    if not mses:
        raise AekitError(f"{source} holds no images. Pass a non-empty image folder, array or IDX file.")
    originals = np.concatenate(kept_in) if kept_in else None
    recons = np.concatenate(kept_out) if kept_out else None
    kept = np.array(kept_at, np.int64) if kept_in else None
    return Scores(names, np.concatenate(mses), np.concatenate(psnrs), originals, recons, kept)


def write_scores_csv(path: Path, scores: Scores, flags: np.ndarray | None = None) -> None:
    """name,mse,psnr[,anomaly] per image, written atomically."""
    import csv
    import io

    from aekit.core.runs import write_text

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["name", "mse", "psnr", *(["anomaly"] if flags is not None else [])])
    for i, name in enumerate(scores.names):
        writer.writerow([name, f"{scores.mse[i]:.6g}", f"{scores.psnr[i]:.4f}", *([int(flags[i])] if flags is not None else [])])
    write_text(Path(path), buffer.getvalue())


def grid_scale(height: int, width: int, min_cell: int = GRID_MIN_CELL) -> int:
    """The whole-number upscale that makes an image's short side at least `min_cell` pixels (1 when it already is)."""
    return max(1, math.ceil(min_cell / max(1, min(height, width))))


def save_grid(
    originals: np.ndarray, reconstructions: np.ndarray, path: Path, psnr: np.ndarray | None = None, min_cell: int = GRID_MIN_CELL
) -> tuple[int, int]:
    """A labelled picture: originals on the top row, their reconstructions below, each one's PSNR under it.

    Pillow only (no matplotlib on the edge). Images (k, H, W, C) float in [0, 1] are upscaled by a whole number
    (nearest neighbour, `grid_scale`) so each cell is at least `min_cell` pixels on its short side: 8x8 images become
    64x64 cells, 28x28 become 84x84, 64x64 stay 64x64. Written atomically.

    Returns:
        The picture's (width, height) in pixels.
    """
    from PIL import Image, ImageDraw, ImageFont

    from aekit.core.runs import atomic_path

    count, height, width = originals.shape[:3]
    scale = grid_scale(height, width, min_cell)
    cell_w, cell_h = width * scale, height * scale
    font = ImageFont.load_default()
    labels = ("original", "reconstruction", *(("PSNR",) if psnr is not None else ()))
    margin = max(font.getbbox(text)[2] for text in labels) + 2 * GRID_PAD
    text_h = font.getbbox("0123456789 dB")[3] + GRID_GAP
    size = (
        margin + count * cell_w + (count - 1) * GRID_GAP + GRID_PAD,
        2 * GRID_PAD + 2 * cell_h + GRID_GAP + (text_h + GRID_GAP if psnr is not None else 0),
    )
    picture = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(picture)
    rows_y = (GRID_PAD, GRID_PAD + cell_h + GRID_GAP)
    for images, top in zip((originals, reconstructions), rows_y):
        for i, pixels in enumerate(to_uint8(images)):
            cell = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).convert("RGB")
            picture.paste(cell.resize((cell_w, cell_h), Image.NEAREST), (margin + i * (cell_w + GRID_GAP), top))
    text_y = rows_y[1] + cell_h + GRID_GAP
    for text, middle in zip(labels, (rows_y[0] + cell_h // 2, rows_y[1] + cell_h // 2, text_y + text_h // 2)):
        draw.text((GRID_PAD, middle), text, fill="black", font=font, anchor="lm")
    if psnr is not None:
        for i, value in enumerate(np.asarray(psnr, np.float64)):
            centre = margin + i * (cell_w + GRID_GAP) + cell_w // 2
            draw.text((centre, text_y + text_h // 2), f"{value:.1f} dB", fill="black", font=font, anchor="mm")
    with atomic_path(path) as tmp:
        picture.save(tmp, format="PNG")
    return size


def check_reconstruct_output(output: Path, grid: int = 10, overwrite: bool = False) -> None:
    """Refuses an output folder holding folders named like reconstruct's files, or the files (unless `overwrite`)."""
    targets = [Path(output) / name for name in (SCORES_CSV, *([GRID_PNG] if grid > 0 else []))]
    for target in targets:
        if target.is_dir():
            raise AekitError(
                f"{target} is a folder, so reconstruct cannot write its file there. Move it away, or -o a new folder."
            )
    existing = [t.name for t in targets if t.exists()]
    if existing and not overwrite:
        raise AekitError(
            f"{output} already holds {' and '.join(existing)}. Pass --overwrite to replace them, or -o a new folder."
        )


@dataclass
class Reconstruction:
    """What reconstruct wrote: per-image scores in `csv`, and the picture in `grid` (None when not asked for)."""

    scores: Scores
    csv: Path
    grid: Path | None


def reconstruct(
    encoder: EncoderSession,
    decoder: DecoderSession,
    source: str | Path,
    output: str | Path,
    batch_size: int = 256,
    grid: int = 10,
    on_batch=None,
    overwrite: bool = False,
) -> Reconstruction:
    """Round trip encoder -> decoder over `source`: writes output/reconstruction.csv (name,mse,psnr) and,
    with grid > 0, output/reconstructions.png (`grid` originals spread over the source, above their
    reconstructions and PSNR; see `save_grid`).

    Existing files of those names are replaced only with `overwrite` (folders of those names never). The
    output is never the image folder being read, nor inside it (its files would become images of that
    folder), and it is claimed while written (OutputClaim): a second command writing it fails at once."""
    output = Path(output)
    check_output_folder(output)
    check_not_inside(source, output, f"{SCORES_CSV} and {GRID_PNG}")
    if grid < 0:
        raise AekitError(f"--grid must be 0 (no picture) or more, got {grid}.")
    with OutputClaim(output):
        try:
            return _reconstruct_into(encoder, decoder, source, output, batch_size, grid, on_batch, overwrite)
        except MemoryError:
            raise out_of_memory(f"reconstructing {source}") from None


def _reconstruct_into(encoder, decoder, source, output: Path, batch_size: int, grid: int, on_batch, overwrite: bool):
    check_reconstruct_output(output, grid, overwrite)
    check_same_run(encoder, decoder)
    scores = score_path(encoder, decoder, source, batch_size, on_batch, keep=grid)
    output.mkdir(parents=True, exist_ok=True)
    write_scores_csv(output / SCORES_CSV, scores)
    picture = None
    if grid > 0 and scores.originals is not None:
        picture = output / GRID_PNG
        save_grid(scores.originals, scores.reconstructions, picture, scores.psnr[scores.kept])
    return Reconstruction(scores, output / SCORES_CSV, picture)
