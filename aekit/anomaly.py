"""Anomaly scores from reconstruction error: thresholds, calibration, ROC AUC, and the reconstruct/score jobs.

TensorFlow-free (the edge side): images go through an exported encoder and decoder
(aekit.edge sessions); an image is an anomaly when its reconstruction MSE is above a
threshold set at a quantile of the MSE of normal images.

    >>> encoder, decoder = open_sessions("export/encoder.onnx", "export/decoder.onnx")
    >>> limit = calibrate(encoder, decoder, "normal.npy", quantile=0.99, threshold_file="threshold.json")
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
from aekit.sources import iter_images

METRIC = "reconstruction_mse"
SCORES_CSV = "reconstruction.csv"  # what reconstruct writes into its folder
GRID_PNG = "reconstructions.png"
CALIBRATE_HINT = "aekit score --calibrate NORMAL_IMAGES --encoder ENCODER --decoder DECODER --threshold FILE"


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

    `originals` and `reconstructions` hold the first few images (float32 in [0, 1],
    (k, H, W, C)) when they were asked for, else None.
    """

    names: list[str]
    mse: np.ndarray  # (N,) float64
    psnr: np.ndarray  # (N,) float64, dB
    originals: np.ndarray | None = None
    reconstructions: np.ndarray | None = None

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
):
    """(model inputs, reconstructions, per-image MSE, per-image PSNR); AekitError on NaN or infinite values anywhere."""
    images = np.asarray(images)
    batch = images if images.ndim == 4 else images[..., None]
    if np.issubdtype(batch.dtype, np.floating) and (bad := _first_bad(batch, names)):
        where = f" of {source}" if source is not None else ""
        raise AekitError(
            f"Image {bad}{where} has NaN or infinite pixels. Drop or repair it: images must be uint8 (0-255) or float in [0, 1]."
        )
    inputs = encoder.to_model_input(batch)
    latents = encoder.encode(batch)
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
    encoder: EncoderSession, decoder: DecoderSession, source: str | Path, batch_size: int = 256, on_batch=None, keep: int = 0
) -> Scores:
    """Reconstruction MSE and PSNR of every image of `source` (folder, .npz/.npy or IDX), read in batches.

    Args:
        keep: also return the first `keep` originals and reconstructions (for a picture).
        on_batch: called with each batch's image count (progress bars).
    """
    names, mses, psnrs, kept_in, kept_out = [], [], [], [], []
    for batch_names, images in iter_images(source, batch_size):
        inputs, recon, mse, psnr = _round_trip(encoder, decoder, images, batch_names, source)
        names += batch_names
        mses.append(mse)
        psnrs.append(psnr)
        if sum(len(k) for k in kept_in) < keep:
            kept_in.append(inputs)
            kept_out.append(recon)
        if on_batch:
            on_batch(len(batch_names))
    if not mses:
        raise AekitError(f"{source} holds no images. Pass a non-empty image folder, array or IDX file.")
    originals = np.concatenate(kept_in)[:keep] if kept_in else None
    recons = np.concatenate(kept_out)[:keep] if kept_out else None
    return Scores(names, np.concatenate(mses), np.concatenate(psnrs), originals, recons)


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


def save_grid(originals: np.ndarray, reconstructions: np.ndarray, path: Path, scale: int = 3) -> None:
    """Originals on the top row, reconstructions below (Pillow, no matplotlib on the edge)."""
    from PIL import Image

    from aekit.runs import atomic_path

    top, bottom = (np.concatenate(list(to_uint8(x)), axis=1) for x in (originals, reconstructions))
    grid = np.concatenate([top, np.full((2, *top.shape[1:]), 255, np.uint8), bottom])
    image = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


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
        texts = {k: data.get(k, "") for k in ("calibration_source", "encoder", "decoder", "run", "run_weights_sha256")}
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
    source, calibrate_on, quantile: float, threshold_file: Path, output: Path | None, overwrite: bool = False
) -> None:
    """Refuses a score request that cannot finish, or would replace an existing file unasked, before a file is opened."""
    if source is None and calibrate_on is None:
        raise AekitError("Nothing to do: pass images to score, and/or --calibrate NORMAL_IMAGES.")
    if calibrate_on is not None:
        check_quantile(quantile)
        check_threshold_output(threshold_file, overwrite)
    if output is not None:
        check_output_file(output, ".csv")
        check_not_overwriting(output, overwrite)


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
        threshold_file: where to save it as JSON (atomically); None keeps it in memory only. An existing
            file is replaced only with `overwrite` (a manifest.json never).

    Returns:
        The Threshold (its `mse` is the value; `calibration_images` how many normal images set it).
    """
    check_quantile(quantile)
    if threshold_file is not None:
        check_threshold_output(Path(threshold_file), overwrite, (encoder, decoder))
    check_same_run(encoder, decoder)
    scores = score_path(encoder, decoder, source, batch_size, on_batch)
    run = encoder.manifest.run
    limit = calibrate_threshold(scores.mse, quantile, str(source), str(encoder.path), str(decoder.path), str(run or ""))
    limit.run_weights_sha256 = encoder.manifest.run_weights_sha256 or ""
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
    scores = score_path(encoder, decoder, source, batch_size, on_batch)
    flags = scores.mse > threshold.mse
    if output is not None:
        write_scores_csv(Path(output), scores, flags)
    return ScoreResult(scores, threshold, flags, Path(output) if output is not None else None)


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
    with grid > 0, output/reconstructions.png (the first `grid` originals above their reconstructions).

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
        save_grid(scores.originals, scores.reconstructions, picture)
    return Reconstruction(scores, output / SCORES_CSV, picture)
