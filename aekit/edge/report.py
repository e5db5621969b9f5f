"""How well reconstruction error tells labelled normal images from anomalous ones: ROC AUC, the threshold's rates, a histogram.

TensorFlow-free and matplotlib-free (the edge side): both sets go through the exported encoder and
decoder (aekit.edge.anomaly), and the histogram of their MSEs is drawn with Pillow.

    >>> encoder, decoder = open_sessions("export/encoder.onnx", "export/decoder.onnx")
    >>> report = evaluate(encoder, decoder, "normal/", "anomalous/", Threshold.load("threshold.json"), "histogram.png")
    >>> report.auc, report.false_positive_rate, report.detection_rate
    (0.993, 0.012, 0.96)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aekit.edge.anomaly import Scores, check_same_run, score_path
from aekit.edge.outputs import check_histogram_output
from aekit.edge.sessions import DecoderSession, EncoderSession
from aekit.edge.thresholds import Threshold, check_threshold_fits, roc_auc

HISTOGRAM_PNG = "score_histogram.png"  # beside the threshold file unless --histogram says where
HISTOGRAM_SIZE = (720, 420)  # pixels
HISTOGRAM_BINS = 40
# The plot area inside the picture: left, top, right, bottom margins in pixels (axis labels, legend).
PLOT_MARGINS = (56, 64, 24, 44)
NORMAL_COLOUR, ANOMALOUS_COLOUR, THRESHOLD_COLOUR = (31, 119, 180), (255, 127, 14), (214, 39, 40)


def default_histogram(threshold_file: str | Path) -> Path:
    """Where the histogram goes when --histogram is not given: score_histogram.png beside the threshold file."""
    return Path(threshold_file).parent / HISTOGRAM_PNG


@dataclass
class Evaluation:
    """Scores of labelled normal and anomalous images, and how well the threshold (if any) separates them."""

    normal: Scores
    anomalous: Scores
    auc: float
    threshold: Threshold | None = None
    histogram: Path | None = None
    normal_source: str = ""
    anomalous_source: str = ""

    @property
    def false_positives(self) -> int | None:
        """Normal images above the threshold (None without one)."""
        return None if self.threshold is None else int((self.normal.mse > self.threshold.mse).sum())

    @property
    def detections(self) -> int | None:
        """Anomalous images above the threshold (None without one)."""
        return None if self.threshold is None else int((self.anomalous.mse > self.threshold.mse).sum())

    @property
    def false_positive_rate(self) -> float | None:
        return None if self.threshold is None else self.false_positives / len(self.normal)

    @property
    def detection_rate(self) -> float | None:
        """The true-positive rate: the share of anomalous images the threshold flags."""
        return None if self.threshold is None else self.detections / len(self.anomalous)

    def to_json(self) -> dict:
        return {
            "normal_source": self.normal_source,
            "anomalous_source": self.anomalous_source,
            "normal_images": len(self.normal),
            "anomalous_images": len(self.anomalous),
            "roc_auc": self.auc,
            "normal_mean_mse": self.normal.mean_mse,
            "anomalous_mean_mse": self.anomalous.mean_mse,
            "threshold": None if self.threshold is None else self.threshold.mse,
            "false_positives": self.false_positives,
            "false_positive_rate": self.false_positive_rate,
            "detections": self.detections,
            "detection_rate": self.detection_rate,
            "histogram": None if self.histogram is None else str(self.histogram),
        }


def evaluate(
    encoder: EncoderSession,
    decoder: DecoderSession,
    normal: str | Path,
    anomalous: str | Path,
    threshold: Threshold | None = None,
    histogram: str | Path | None = None,
    batch_size: int = 256,
    on_batch=None,
    overwrite: bool = False,
) -> Evaluation:
    """Scores labelled normal and anomalous sources (any source aekit reads) and measures the separation.

    Args:
        threshold: gives the false-positive rate on `normal` and the detection rate on `anomalous` (MSE above it
            is flagged, as `aekit.edge.anomaly.score` does); None reports the ROC AUC only.
        histogram: where to draw both MSE distributions (PNG, atomically); an existing file is replaced only
            with `overwrite`. None draws nothing.

    Returns:
        The Evaluation (`auc`, `false_positive_rate`, `detection_rate`, and every image's scores).
    """
    if histogram is not None:
        check_histogram_output(histogram, overwrite)
    check_same_run(encoder, decoder)
    if threshold is not None:
        check_threshold_fits(encoder, decoder, threshold)
    normal_scores = score_path(encoder, decoder, normal, batch_size, on_batch)
    anomalous_scores = score_path(encoder, decoder, anomalous, batch_size, on_batch)
    auc = roc_auc(normal_scores.mse, anomalous_scores.mse)
    report = Evaluation(
        normal_scores, anomalous_scores, auc, threshold, normal_source=str(normal), anomalous_source=str(anomalous)
    )
    if histogram is not None:
        save_histogram(normal_scores.mse, anomalous_scores.mse, Path(histogram), threshold, report.auc)
        report.histogram = Path(histogram)
    return report


# --- the histogram --------------------------------------------------------------------


def histogram_bins(
    normal_mse: np.ndarray, anomalous_mse: np.ndarray, bins: int = HISTOGRAM_BINS, threshold: float | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(edges (bins+1,), normal counts (bins,), anomalous counts (bins,)) over log-spaced MSE bins.

    MSEs span decades (a good reconstruction 1e-4, noise 1e-1), so the bins are even in log10(MSE) from the
    smallest positive MSE (or threshold) to the largest; an MSE of 0 counts in the first bin.
    """
    values = np.concatenate([np.asarray(normal_mse, np.float64), np.asarray(anomalous_mse, np.float64)])
    if threshold is not None:
        values = np.append(values, threshold)
    positive = values[values > 0]
    low = positive.min() if positive.size else 1e-6
    high = max(values.max(), low)
    if high <= low * 1.0001:  # all one value: a decade around it
        low, high = low / math.sqrt(10), high * math.sqrt(10)
    edges = np.geomspace(low, high, bins + 1)

    def counts(mse):
        return np.histogram(np.clip(np.asarray(mse, np.float64), low, high), edges)[0]

    return edges, counts(normal_mse), counts(anomalous_mse)


def save_histogram(
    normal_mse: np.ndarray,
    anomalous_mse: np.ndarray,
    path: Path,
    threshold: Threshold | None = None,
    auc: float | None = None,
    bins: int = HISTOGRAM_BINS,
) -> tuple[int, int]:
    """Both MSE distributions on a log-x axis (each as a share of its set), the threshold as a vertical line.

    Drawn with Pillow's default font (no matplotlib on the edge), HISTOGRAM_SIZE pixels, written atomically.
    The legend gives each set's image count, the ROC AUC and the threshold's rates.

    Returns:
        The picture's (width, height) in pixels.
    """
    from PIL import Image, ImageDraw, ImageFont

    from aekit.core.runs import atomic_path

    normal_mse, anomalous_mse = np.asarray(normal_mse, np.float64), np.asarray(anomalous_mse, np.float64)
    edges, normal_counts, anomalous_counts = histogram_bins(normal_mse, anomalous_mse, bins, threshold and threshold.mse)
    shares = normal_counts / len(normal_mse), anomalous_counts / len(anomalous_mse)
    width, height = HISTOGRAM_SIZE
    left, top, right, bottom = PLOT_MARGINS[0], PLOT_MARGINS[1], width - PLOT_MARGINS[2], height - PLOT_MARGINS[3]
    log_low, log_high = math.log10(edges[0]), math.log10(edges[-1])
    peak = max(share.max() for share in shares) or 1.0

    def x_of(mse: float) -> float:
        return left + (math.log10(max(mse, edges[0])) - log_low) / (log_high - log_low) * (right - left)

    def y_of(share: float) -> float:
        return bottom - share / peak * (bottom - top)

    picture = Image.new("RGBA", HISTOGRAM_SIZE, "white")
    for share, colour in zip(shares, (NORMAL_COLOUR, ANOMALOUS_COLOUR)):
        layer = Image.new("RGBA", HISTOGRAM_SIZE, (0, 0, 0, 0))
        bars = ImageDraw.Draw(layer)
        for i in np.flatnonzero(share):
            box = (x_of(edges[i]), y_of(share[i]), max(x_of(edges[i + 1]) - 1, x_of(edges[i])), bottom)
            bars.rectangle(box, fill=(*colour, 120), outline=(*colour, 255))
        picture = Image.alpha_composite(picture, layer)
    picture = picture.convert("RGB")
    draw, font = ImageDraw.Draw(picture), ImageFont.load_default()

    draw.line([(left, top), (left, bottom), (right, bottom)], fill="black")
    for decade in range(math.ceil(log_low - 1e-9), math.floor(log_high + 1e-9) + 1):
        x = x_of(10.0**decade)
        draw.line([(x, bottom), (x, bottom + 4)], fill="black")
        draw.text((x, bottom + 6), f"1e{decade}", fill="black", font=font, anchor="mt")
    draw.text(((left + right) / 2, height - 6), "reconstruction MSE (log scale)", fill="black", font=font, anchor="mb")
    draw.text((left - 4, top), f"{peak:.0%}", fill="black", font=font, anchor="rm")
    draw.text((left - 4, bottom), "0%", fill="black", font=font, anchor="rm")
    for row, word in enumerate(("share", "of set")):  # the y axis: each set's share of its images per bin
        draw.text((6, (top + bottom) / 2 + 14 * row), word, fill="black", font=font, anchor="lm")

    legend = [
        (NORMAL_COLOUR, f"normal: {len(normal_mse):,} images, mean MSE {normal_mse.mean():.3g}"),
        (ANOMALOUS_COLOUR, f"anomalous: {len(anomalous_mse):,} images, mean MSE {anomalous_mse.mean():.3g}"),
    ]
    if threshold is not None:
        false_positive = (normal_mse > threshold.mse).mean()
        detected = (anomalous_mse > threshold.mse).mean()
        legend.append(
            (
                THRESHOLD_COLOUR,
                f"threshold MSE {threshold.mse:.3g} (quantile {threshold.quantile:g}): "
                f"{false_positive:.1%} of normal flagged, {detected:.1%} of anomalous detected",
            )
        )
        x = x_of(threshold.mse)
        draw.line([(x, top - 4), (x, bottom)], fill=THRESHOLD_COLOUR, width=2)
    for row, (colour, text) in enumerate(legend):
        y = 8 + row * 14
        draw.rectangle((left, y + 1, left + 10, y + 11), fill=colour)
        draw.text((left + 16, y + 6), text, fill="black", font=font, anchor="lm")
    if auc is not None:
        draw.text((right, 8 + 6), f"ROC AUC {auc:.3f}", fill="black", font=font, anchor="rm")
    with atomic_path(path) as tmp:
        picture.save(tmp, format="PNG")
    return HISTOGRAM_SIZE
