"""Anomaly scores from reconstruction error: thresholds, calibration, ROC AUC, and the reconstruct/score jobs.

TensorFlow-free (the edge side): images go through an exported encoder and decoder
(aekit.edge sessions); an image is an anomaly when its reconstruction MSE is above a
threshold set at a quantile of the MSE of normal images. A threshold records what it was
calibrated on ("calibrated_on"): the run's own training images reconstruct better than unseen
ones, so calibrate on its validation split ("val") or on other normal images. How well scores
separate labelled normal and anomalous sets (ROC AUC, rates, histogram): aekit.anomaly_report.

    >>> encoder, decoder = open_sessions("export/encoder.onnx", "export/decoder.onnx")
    >>> limit = calibrate(encoder, decoder, "val", quantile=0.99, threshold_file="threshold.json")
    >>> result = score(encoder, decoder, "incoming/", limit, output="scores.csv")
    >>> result.anomalies, result.normal
    (12, 988)
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aekit.edge import (
    DecoderSession,
    EncoderSession,
    check_not_overwriting,
    check_output_file,
    check_output_folder,
    same_file,
    to_uint8,
)
from aekit.errors import AekitError
from aekit.manifest import MANIFEST
from aekit.metrics import mse_per_image, psnr_from_mse
from aekit.sources import count_images, iter_images

METRIC = "reconstruction_mse"
SCORES_CSV = "reconstruction.csv"  # what reconstruct writes into its folder
GRID_PNG = "reconstructions.png"
GRID_MIN_CELL = 64  # pixels on a cell's short side in reconstructions.png: tiny images become readable
GRID_GAP, GRID_PAD = 4, 6  # pixels between cells, and around the picture
CALIBRATE_HINT = "aekit score --calibrate NORMAL_IMAGES --encoder ENCODER --decoder DECODER --threshold FILE"
VALIDATION = "val"  # --calibrate val: the validation split of the run the files were exported from
# What a threshold was calibrated on, as its JSON's "calibrated_on" says ("" when the run could not be read).
TRAINING_IMAGES = "training images"
VALIDATION_IMAGES = "validation images"
OTHER_IMAGES = "images outside the run's training source"


# --- the pair of files ---------------------------------------------------------


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


# --- per-image errors ---------------------------------------------------------------


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
    scaling = encoder.source_scaling(source, pixel_max)  # the whole source, by the training rule (aekit.pixels)
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
        from aekit.data import spread  # the one rule for "evenly spaced, first and last included"

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

    from aekit.runs import write_text

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

    from aekit.runs import atomic_path

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


# --- thresholds ----------------------------------------------------------------------


def _finite_number(value) -> bool:
    """A JSON number (not a bool) that is neither NaN nor infinite."""
    try:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        return False


@dataclass
class Threshold:
    """An anomaly threshold on reconstruction MSE, calibrated on normal data: MSE above `mse` is an anomaly."""

    mse: float
    quantile: float
    calibration_images: int
    calibration_source: str

    encoder: str = ""
    decoder: str = ""
    run: str = ""  # the run the encoder and decoder were exported from ("" when unknown)
    run_weights_sha256: str = ""  # the run's weights they were exported from ("" when unknown: older files)
    calibrated_on: str = ""  # TRAINING_IMAGES, VALIDATION_IMAGES, OTHER_IMAGES, or "" (not known)

    def to_json(self) -> dict:
        return {
            "metric": METRIC,
            "threshold": self.mse,
            "quantile": self.quantile,
            "calibration_images": self.calibration_images,
            "calibration_source": self.calibration_source,
            "encoder": self.encoder,
            "decoder": self.decoder,
            "run": self.run,
            "run_weights_sha256": self.run_weights_sha256,
            "calibrated_on": self.calibrated_on,
        }

    @classmethod
    def from_json(cls, data, origin: str = "the threshold") -> Threshold:
        """A Threshold from `to_json()` output; AekitError (naming `origin`) for anything else."""
        fix = f"Calibrate again: {CALIBRATE_HINT}."
        if not isinstance(data, dict):
            raise AekitError(
                f"{origin} holds a JSON {type(data).__name__}, not a threshold object from aekit score --calibrate. {fix}"
            )
        missing = [k for k in ("threshold", "quantile", "calibration_images", "calibration_source") if k not in data]
        if missing:
            raise AekitError(
                f"{origin} has no {', '.join(missing)}: it is not a threshold file from aekit score --calibrate. {fix}"
            )
        if data.get("metric", METRIC) != METRIC:
            raise AekitError(f"{origin} is a threshold on {data['metric']!r}, not {METRIC}. {fix}")
        value, quantile, count = data["threshold"], data["quantile"], data["calibration_images"]
        if not _finite_number(value) or value < 0:
            raise AekitError(f"{origin} has threshold {value!r}; expected a finite MSE of 0 or more. {fix}")
        if not _finite_number(quantile) or not 0.0 < quantile < 1.0:
            raise AekitError(f"{origin} has quantile {quantile!r}; expected a number between 0 and 1. {fix}")
        if not _finite_number(count) or count != int(count) or count < 1:
            raise AekitError(f"{origin} has calibration_images {count!r}; expected a positive whole number. {fix}")
        keys = ("calibration_source", "encoder", "decoder", "run", "run_weights_sha256", "calibrated_on")
        texts = {k: data.get(k, "") for k in keys}
        if texts["run_weights_sha256"] is None:  # null: not recorded
            texts["run_weights_sha256"] = ""
        if not all(isinstance(v, str) for v in texts.values()):
            raise AekitError(f"{origin} has non-text {', '.join(k for k, v in texts.items() if not isinstance(v, str))}. {fix}")
        return cls(float(value), float(quantile), int(count), **texts)

    @classmethod
    def load(cls, path: str | Path) -> Threshold:
        """Reads a threshold JSON written by `calibrate` (aekit score --calibrate); AekitError naming the file otherwise."""
        path = Path(path)
        if path.is_dir():
            raise AekitError(f"--threshold {path} is a folder. Pass the threshold JSON file written by {CALIBRATE_HINT}.")
        if not path.is_file():
            raise AekitError(f"No threshold file {path}. Calibrate first: {CALIBRATE_HINT}.")
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:  # ValueError covers bad JSON and non-UTF-8 bytes
            raise AekitError(
                f"{path} is not a threshold file from aekit score --calibrate ({str(exc)[:120]}). "
                f"Calibrate again: {CALIBRATE_HINT}."
            ) from None
        return cls.from_json(data, origin=str(path))


def load_threshold(path: str | Path, encoder_file: str | Path, required: bool = True) -> Threshold | None:
    """`Threshold.load(path)`, but a missing file's error suggests `--calibrate val` when the encoder's run folder is there.

    Args:
        required: False returns None for a missing file (scoring labelled sets needs no threshold for its ROC AUC).
    """
    path = Path(path)
    if path.exists() or path.is_symlink():
        return Threshold.load(path)
    if not required:
        return None
    run = _run_of(encoder_file)
    hint = CALIBRATE_HINT.replace("NORMAL_IMAGES", VALIDATION).replace("FILE", str(path))
    if run and Path(run).is_dir():
        fix = f"Calibrate first on run {run}'s validation split: {hint}, or --calibrate NORMAL_IMAGES it never trained on."
    else:
        fix = f"Calibrate first: {CALIBRATE_HINT.replace('FILE', str(path))}, with normal images the run never trained on."
    raise AekitError(f"No threshold file {path}. {fix}")


def _run_of(encoder_file: str | Path) -> str:
    """The run folder the manifest beside an exported file names ("" when it cannot be read)."""
    from aekit.manifest import Manifest

    try:
        return str(Manifest.load(Path(encoder_file).parent, verify=False).run or "")
    except AekitError:
        return ""


def calibration_origin(run: str | Path, source: str | Path) -> str:
    """What `source` is to `run`, from the "data" entry of the run's config.json, comparing resolved paths.

    Returns:
        TRAINING_IMAGES when `source` is the training source, lies inside it (a subfolder) or holds it (a folder
        above it); VALIDATION_IMAGES when it is the run's separate validation file (an IDX t10k file beside the
        training file); OTHER_IMAGES when it shares no file with it (or the run trained on a TFDS name); "" when
        the run's config cannot be read (no run recorded, its folder moved).
    """
    from aekit.recipe import read_config

    if not run:
        return ""
    try:
        data = read_config(Path(run))["data"]
    except AekitError:
        return ""
    trained, kind = data.get("source"), data.get("kind")
    if not isinstance(trained, str) or kind in ("tfds", "bundled") or not trained:
        return OTHER_IMAGES
    trained_path, path = Path(trained).expanduser().resolve(), Path(source).expanduser().resolve()
    validation = str(data.get("validation") or "")
    if kind == "idx" and validation.startswith("IDX file ") and path == trained_path / validation.removeprefix("IDX file "):
        return VALIDATION_IMAGES
    if path == trained_path or trained_path in path.parents or path in trained_path.parents:
        return TRAINING_IMAGES
    return OTHER_IMAGES


def calibration_warning(threshold: Threshold) -> str | None:
    """Why a threshold set on the run's training images misleads (None for any other threshold)."""
    if threshold.calibrated_on != TRAINING_IMAGES:
        return None
    flagged = f"{(1 - threshold.quantile) * 100:.3g}%"
    return (
        f"{threshold.calibration_source} holds the training images of run {threshold.run}. The model has seen them, so they "
        f"reconstruct better than unseen normal images: a threshold at quantile {threshold.quantile:g} of their MSE flags "
        f"more than {flagged} of new normal images. Calibrate on images it never trained on: --calibrate {VALIDATION} "
        "(the run's validation split) or --calibrate NORMAL_IMAGES."
    )


def read_validation(encoder: EncoderSession) -> tuple:
    """(stored images (N, H, W, C), description, PixelScaling) of the validation split of the run `encoder` came from."""
    run = str(encoder.manifest.run or "")
    if not run:
        raise AekitError(
            f"--calibrate {VALIDATION} reads the validation split of the run the files were exported from, but the manifest "
            f"beside {encoder.path} names no run. Pass --calibrate NORMAL_IMAGES instead."
        )
    if not Path(run).is_dir():
        raise AekitError(
            f"--calibrate {VALIDATION} reads the validation split of run {run}, which is not there (moved or deleted). "
            "Export again from the run's folder, or pass --calibrate NORMAL_IMAGES instead."
        )
    from aekit.data import validation_images

    return validation_images(Path(run))


def check_quantile(quantile: float) -> None:
    if not 0.0 < quantile < 1.0:  # also refuses NaN
        raise AekitError(f"--quantile must be between 0 and 1, got {quantile}.")


def calibrate_threshold(
    scores: np.ndarray, quantile: float, source: str, encoder: str = "", decoder: str = "", run: str = ""
) -> Threshold:
    """The threshold at `quantile` of normal images' MSE (numpy's linear interpolation between order statistics)."""
    check_quantile(quantile)
    scores = np.asarray(scores, np.float64)
    if scores.size == 0:
        raise AekitError(f"{source} gave no scores to calibrate on. Pass a non-empty set of normal images.")
    if not np.isfinite(scores).all():
        raise AekitError(
            f"{source} gave NaN or infinite scores, so no threshold can be set. Check the images and the exported files."
        )
    return Threshold(float(np.quantile(scores, quantile)), quantile, int(scores.size), str(source), encoder, decoder, run)


def roc_auc(normal_scores: np.ndarray, anomaly_scores: np.ndarray) -> float:
    """Area under the ROC curve: the chance an anomaly scores above a normal image (ties count half).

    The Mann-Whitney U statistic over n_normal * n_anomaly pairs, from average ranks.

        >>> roc_auc(np.array([0.1, 0.3]), np.array([0.2, 0.3]))
        0.625
    """
    normal, anomalies = np.asarray(normal_scores, np.float64).ravel(), np.asarray(anomaly_scores, np.float64).ravel()
    if normal.size == 0 or anomalies.size == 0:
        raise AekitError(
            f"ROC AUC needs normal and anomaly scores; got {normal.size} normal and {anomalies.size} anomaly scores."
        )
    scores = np.concatenate([normal, anomalies])
    if not np.isfinite(scores).all():
        raise AekitError("ROC AUC of NaN or infinite scores is meaningless. Check the images and the exported files.")
    order = scores.argsort(kind="mergesort")
    ordered = scores[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])  # first index of each run of equal scores
    ends = np.r_[starts[1:], len(ordered)]
    ranks = np.empty(len(scores), np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)  # ties share the mean of their ranks
    n_n, n_a = normal.size, anomalies.size
    return float((ranks[n_n:].sum() - n_a * (n_a + 1) / 2) / (n_a * n_n))


# --- the jobs ------------------------------------------------------------------------


def check_score_request(
    source,
    calibrate_on,
    quantile: float,
    threshold_file: Path,
    output: Path | None,
    overwrite: bool = False,
    normal=None,
    anomalous=None,
    histogram: Path | None = None,
) -> None:
    """Refuses a score request that cannot finish, or would replace an existing file unasked, before a file is opened."""
    if source is None and calibrate_on is None and normal is None and anomalous is None:
        raise AekitError(
            "Nothing to do: pass images to score, --calibrate NORMAL_IMAGES (or val), and/or --normal and --anomalous "
            "labelled images."
        )
    if (normal is None) != (anomalous is None):
        given, missing = ("--normal", "--anomalous") if anomalous is None else ("--anomalous", "--normal")
        raise AekitError(f"{given} needs {missing} too: the ROC AUC compares labelled normal and anomalous images. Pass both.")
    if histogram is not None and normal is None:
        raise AekitError("--histogram draws the --normal and --anomalous scores. Pass both, or leave out --histogram.")
    if calibrate_on is not None:
        check_quantile(quantile)
        check_threshold_output(threshold_file, overwrite)
    if output is not None:
        check_output_file(output, ".csv")
        check_not_overwriting(output, overwrite)
    if histogram is not None:
        from aekit.anomaly_report import check_histogram_output

        check_histogram_output(histogram, overwrite)


def check_threshold_output(path: Path, overwrite: bool = False, sessions=()) -> None:
    """Refuses a threshold file path that is not a .json, is an export's manifest.json, or exists (unless `overwrite`)."""
    path = Path(path)
    check_output_file(path, ".json")
    if path.name == MANIFEST or any(same_file(path, s.path.parent / MANIFEST) for s in sessions):
        raise AekitError(
            f"--threshold {path} would replace an export's {MANIFEST}. Pass --threshold another file, e.g. threshold.json."
        )
    if path.exists() and not overwrite:
        raise AekitError(f"--threshold {path} already exists. Pass --overwrite to replace it, or --threshold a new file.")


def calibrate(
    encoder: EncoderSession,
    decoder: DecoderSession,
    source: str | Path,
    quantile: float = 0.99,
    threshold_file: str | Path | None = None,
    batch_size: int = 256,
    on_batch=None,
    overwrite: bool = False,
) -> Threshold:
    """Sets the threshold at `quantile` of the reconstruction MSE of the normal images in `source`.

    Args:
        source: normal images (a path), or the text VALIDATION ("val") for the validation split of the run the
            files were exported from (a folder named val: pass Path("val") or "./val").
        threshold_file: where to save it as JSON (atomically); None keeps it in memory only. An existing
            file is replaced only with `overwrite` (a manifest.json never).

    Returns:
        The Threshold (its `mse` is the value; `calibration_images` how many normal images set it; `calibrated_on`
        whether they were the run's training images, see `calibration_origin` and `calibration_warning`).
    """
    check_quantile(quantile)
    if threshold_file is not None:
        check_threshold_output(Path(threshold_file), overwrite, (encoder, decoder))
    check_same_run(encoder, decoder)
    run = str(encoder.manifest.run or "")
    if isinstance(source, str) and source == VALIDATION:
        images, description, scaling = read_validation(encoder)
        label, origin = description, VALIDATION_IMAGES  # description: "validation split of RUN (...)"
        # The run's own validation images: scaled as the run scaled its training source.
        scores = score_batches(encoder, decoder, array_batches(images, batch_size), label, on_batch, scaling=scaling)
    else:
        label, origin = str(source), calibration_origin(run, source)
        scores = score_path(encoder, decoder, source, batch_size, on_batch)
    limit = calibrate_threshold(scores.mse, quantile, label, str(encoder.path), str(decoder.path), run)
    limit.run_weights_sha256 = encoder.manifest.run_weights_sha256 or ""
    limit.calibrated_on = origin
    if threshold_file is not None:
        from aekit.runs import write_json

        write_json(Path(threshold_file), limit.to_json())
    return limit


@dataclass
class ScoreResult:
    """Every image's scores and whether it is an anomaly (MSE above the threshold)."""

    scores: Scores
    threshold: Threshold
    flags: np.ndarray  # (N,) bool
    output: Path | None = None  # the CSV written, if any

    @property
    def anomalies(self) -> int:
        return int(self.flags.sum())

    @property
    def normal(self) -> int:
        return int((~self.flags).sum())

    def to_json(self) -> dict:
        return {
            "images": len(self.scores),
            "anomalies": self.anomalies,
            "normal": self.normal,
            "threshold": self.threshold.mse,
            "mean_mse": self.scores.mean_mse,
        }


def score(
    encoder: EncoderSession,
    decoder: DecoderSession,
    source: str | Path,
    threshold: Threshold,
    output: str | Path | None = None,
    batch_size: int = 256,
    on_batch=None,
    overwrite: bool = False,
) -> ScoreResult:
    """Scores every image of `source` against `threshold`; writes name,mse,psnr,anomaly rows to `output` (.csv) if given.

    An existing `output` is replaced only with `overwrite`.
    """
    if output is not None:
        check_output_file(Path(output), ".csv")
        check_not_overwriting(Path(output), overwrite)
    check_threshold_fits(encoder, decoder, threshold)
    scores = score_path(encoder, decoder, source, batch_size, on_batch)
    flags = scores.mse > threshold.mse
    if output is not None:
        write_scores_csv(Path(output), scores, flags)
    return ScoreResult(scores, threshold, flags, Path(output) if output is not None else None)


def check_threshold_fits(encoder: EncoderSession, decoder: DecoderSession, threshold: Threshold) -> None:
    """Refuses a threshold calibrated for another run, or for other weights of this run, than the files come from."""
    if not np.isfinite(threshold.mse):
        raise AekitError(f"The threshold MSE is {threshold.mse}; expected a finite number. Calibrate again: {CALIBRATE_HINT}.")
    check_same_run(encoder, decoder)
    run = encoder.manifest.run
    if threshold.run and run and threshold.run != run:
        raise AekitError(
            f"The threshold was calibrated for run {threshold.run}, but {encoder.path} comes from run {run}. "
            f"Calibrate again with these files: {CALIBRATE_HINT}."
        )
    weights = encoder.manifest.run_weights_sha256
    if threshold.run_weights_sha256 and weights and threshold.run_weights_sha256 != weights:
        raise AekitError(
            f"The threshold was calibrated with other weights of run {threshold.run or run} (sha256 "
            f"{threshold.run_weights_sha256[:12]}) than {encoder.path} was exported from ({weights[:12]}, e.g. after "
            f"train --resume). Calibrate again with these files: {CALIBRATE_HINT}."
        )


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

    Existing files of those names are replaced only with `overwrite` (folders of those names never)."""
    output = Path(output)
    check_output_folder(output)
    if grid < 0:
        raise AekitError(f"--grid must be 0 (no picture) or more, got {grid}.")
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
