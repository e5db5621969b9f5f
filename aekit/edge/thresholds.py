"""Anomaly thresholds: set at a quantile of normal images' scores, saved as JSON, applied by `score`.

An image is an anomaly when its reconstruction MSE is above the threshold. A threshold says what
it was calibrated on (the run's training images, its validation split, or other images).

    >>> limit = calibrate(encoder, decoder, "normal.npy", quantile=0.99, threshold_file="threshold.json")
    >>> result = score(encoder, decoder, "incoming/", limit, output="scores.csv")
    >>> result.anomalies, result.normal
    (12, 988)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from aekit.core.checks import is_number
from aekit.core.manifest import MANIFEST
from aekit.edge.anomaly import METRIC, array_batches, check_same_run, score_batches, score_path, write_scores_csv
from aekit.edge.outputs import check_not_overwriting, check_output_file, same_file
from aekit.edge.sessions import DecoderSession, EncoderSession
from aekit.errors import AekitError

if TYPE_CHECKING:
    from aekit.edge.anomaly import Scores


CALIBRATE_HINT = "aekit score --calibrate NORMAL_IMAGES --encoder ENCODER --decoder DECODER --threshold FILE"
VALIDATION = "val"  # --calibrate val: the validation split of the run the files were exported from
# What a threshold was calibrated on, as its JSON's "calibrated_on" says ("" when the run could not be read).
TRAINING_IMAGES = "training images"
VALIDATION_IMAGES = "validation images"
OTHER_IMAGES = "images outside the run's training source"


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
        if not is_number(value) or value < 0:
            raise AekitError(f"{origin} has threshold {value!r}; expected a finite MSE of 0 or more. {fix}")
        if not is_number(quantile) or not 0.0 < quantile < 1.0:
            raise AekitError(f"{origin} has quantile {quantile!r}; expected a number between 0 and 1. {fix}")
        if not is_number(count) or count != int(count) or count < 1:
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
    from aekit.core.manifest import Manifest

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
    from aekit.core.recipe import read_config

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
    from aekit.data.loading import validation_images

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
        from aekit.edge.outputs import check_histogram_output

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
        from aekit.core.runs import write_json

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
