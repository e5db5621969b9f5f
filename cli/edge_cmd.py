"""The edge commands (`encode`, `decode`, `reconstruct`, `score`) and `aekit info`: they run without TensorFlow."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Annotated, Optional

import typer
import typer.core
import typer.exceptions
from rich.markup import escape

from aekit.cli.app import edge_errors, positive
from aekit.cli.render import err_console, out_console

EDGE_DEVICE_HELP = (
    "cpu | cuda (fails unless CUDA really runs; .tflite files always run on the CPU) | "
    "auto (CUDA when it really runs, else the CPU)."
)
EDGE_FALLBACK_HELP = "With --device cuda: run on the CPU when CUDA cannot, instead of failing."
THREADS_HELP = "CPU threads, 1 to 4 per logical core (default: the physical cores)."
SOURCE_HELP = "Image folder, .npz/.npy file (FILE.npz:KEY picks an array) or *-images-idx3-ubyte[.gz] file."
PIXEL_MAX_HELP = "The images' value of white when not 0-255 or 0-1 (default: the one the model was trained with, if any)."


def memory_errors(command):
    """A MemoryError anywhere in an edge command becomes the one-line "Out of memory" AekitError (exit 2)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from aekit.edge.runtimes import out_of_memory

        try:
            return command(*args, **kwargs)
        except MemoryError:
            raise out_of_memory(f"running aekit {command.__name__}") from None

    return wrapper


def say_npz_choice(source) -> None:
    """One line on stderr when a .npz of several arrays is read without naming one."""
    from aekit.core.sources import npz_choice

    note = npz_choice(source)
    if note:
        err_console.print(f"[dim]{note}[/]", highlight=False, soft_wrap=True)


@edge_errors
@memory_errors
def encode(
    source: Annotated[Path, typer.Argument(help=SOURCE_HELP)],
    model: Annotated[Path, typer.Option(help="Exported encoder (.onnx or .tflite) with its manifest.json beside it.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Latents file to write (.npz).")],
    latent_dtype: Annotated[
        str, typer.Option(help="float32, or int8: one byte per dimension with per-dimension scale/offset from the export.")
    ] = "float32",
    batch_size: Annotated[int, typer.Option(help="Images read and encoded at a time.")] = 256,
    device: Annotated[str, typer.Option(help=EDGE_DEVICE_HELP)] = "cpu",
    allow_fallback: Annotated[bool, typer.Option("--allow-fallback", help=EDGE_FALLBACK_HELP)] = False,
    threads: Annotated[Optional[int], typer.Option(help=THREADS_HELP)] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace the output file if it already exists (never the source itself).")
    ] = False,
    pixel_max: Annotated[Optional[float], typer.Option(help=PIXEL_MAX_HELP)] = None,
):
    """Encode images into latent codes (TensorFlow-free)."""
    from aekit.cli.render import counting_progress
    from aekit.core.sources import count_images
    from aekit.edge.codes import check_encode_output, encode_path
    from aekit.edge.sessions import EncoderSession

    check_encode_output(source, output, overwrite)  # before the model is loaded
    encoder = EncoderSession(model, device, threads, allow_fallback)
    say_npz_choice(source)
    with counting_progress(err_console, "encoding", count_images(source)) as advance:
        summary = encode_path(
            encoder,
            source,
            output,
            latent_dtype,
            positive(batch_size, "--batch-size"),
            advance,
            overwrite=overwrite,
            pixel_max=pixel_max,
        )
    out_console.print(
        f"Encoded {summary['images']:,} images → {summary['output']} ({summary['latent_dim']} × {summary['latent_dtype']} "
        f"= {summary['bytes_per_image']} bytes per image){_ran_on(encoder)}",
        highlight=False,
        soft_wrap=True,
    )


@edge_errors
@memory_errors
def decode(
    latents: Annotated[Path, typer.Argument(help="Latents file written by aekit encode.")],
    model: Annotated[Path, typer.Option(help="Exported decoder (.onnx or .tflite) with its manifest.json beside it.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for PNGs, or an .npz file with --format npz.")],
    format: Annotated[str, typer.Option("--format", help="png (one file per image) or npz.")] = "png",
    batch_size: Annotated[int, typer.Option(help="Codes decoded at a time.")] = 256,
    device: Annotated[str, typer.Option(help=EDGE_DEVICE_HELP)] = "cpu",
    allow_fallback: Annotated[bool, typer.Option("--allow-fallback", help=EDGE_FALLBACK_HELP)] = False,
    threads: Annotated[Optional[int], typer.Option(help=THREADS_HELP)] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace files that already exist in the output.")] = False,
):
    """Decode latent codes back into images (TensorFlow-free)."""
    from aekit.cli.render import counting_progress
    from aekit.edge.codes import decode_file
    from aekit.edge.sessions import DecoderSession

    decoder = DecoderSession(model, device, threads, allow_fallback)
    with counting_progress(err_console, "decoding", None) as advance:
        summary = decode_file(decoder, latents, output, format, positive(batch_size, "--batch-size"), advance, overwrite)
    out_console.print(
        f"Decoded {summary['images']:,} images → {summary['output']}{_ran_on(decoder)}", highlight=False, soft_wrap=True
    )


@edge_errors
@memory_errors
def reconstruct(
    source: Annotated[Path, typer.Argument(help="Image folder, .npz/.npy file or IDX file.")],
    encoder: Annotated[Path, typer.Option(help="Exported encoder file.")],
    decoder: Annotated[Path, typer.Option(help="Exported decoder file.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for reconstruction.csv and reconstructions.png.")],
    batch_size: Annotated[int, typer.Option(help="Images at a time.")] = 256,
    grid: Annotated[
        int,
        typer.Option(
            help="Images in reconstructions.png, spread evenly over the source, each above its reconstruction and PSNR "
            "(cells upscaled to 64 px or more); 0: no picture."
        ),
    ] = 10,
    device: Annotated[str, typer.Option(help=EDGE_DEVICE_HELP)] = "cpu",
    allow_fallback: Annotated[bool, typer.Option("--allow-fallback", help=EDGE_FALLBACK_HELP)] = False,
    threads: Annotated[Optional[int], typer.Option(help=THREADS_HELP)] = None,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite", help="Replace reconstruction.csv and reconstructions.png if the output folder already holds them."
        ),
    ] = False,
):
    """Round trip encoder → decoder: per-image MSE/PSNR and a picture of originals beside reconstructions."""
    from aekit.cli.render import counting_progress
    from aekit.core.sources import count_images
    from aekit.edge import anomaly
    from aekit.edge.outputs import check_not_inside, check_output_folder

    check_output_folder(output)  # before the models are loaded
    check_not_inside(source, output, f"{anomaly.SCORES_CSV} and {anomaly.GRID_PNG}")
    anomaly.check_reconstruct_output(output, grid, overwrite)
    enc, dec = anomaly.open_sessions(encoder, decoder, device, threads, allow_fallback)
    say_npz_choice(source)
    with counting_progress(err_console, "reconstructing", count_images(source)) as advance:
        result = anomaly.reconstruct(
            enc, dec, source, output, positive(batch_size, "--batch-size"), grid, advance, overwrite=overwrite
        )
    scores, (worst, worst_mse) = result.scores, result.scores.worst
    written = ", ".join([str(result.csv), *([result.grid.name] if result.grid else [])])
    out_console.print(
        f"{len(scores):,} images: mean MSE {scores.mean_mse:.5f}, mean PSNR {scores.mean_psnr:.2f} dB "
        f"(worst {worst}: MSE {worst_mse:.5f}) → {written}{_ran_on(enc, dec)}",
        highlight=False,
        soft_wrap=True,
    )


@edge_errors
@memory_errors
def score(
    source: Annotated[
        Optional[Path], typer.Argument(help="Images to score (folder, .npz/.npy or IDX). Optional with --calibrate.")
    ] = None,
    encoder: Annotated[Path, typer.Option(help="Exported encoder file.")] = ...,
    decoder: Annotated[Path, typer.Option(help="Exported decoder file.")] = ...,
    calibrate: Annotated[
        Optional[str],
        typer.Option(
            help="Normal images the run never trained on, or 'val' for the run's validation split (a folder named val: "
            "./val): set the threshold at their --quantile of reconstruction MSE and save it to --threshold."
        ),
    ] = None,
    quantile: Annotated[float, typer.Option(help="Quantile of normal scores used as the threshold.")] = 0.99,
    threshold: Annotated[Path, typer.Option(help="Threshold JSON to write (with --calibrate) or read.")] = Path("threshold.json"),
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="CSV of per-image scores and flags.")] = None,
    normal: Annotated[
        Optional[Path],
        typer.Option(help="Labelled normal images (with --anomalous): report ROC AUC, and the threshold's false-positive rate."),
    ] = None,
    anomalous: Annotated[
        Optional[Path],
        typer.Option(help="Labelled anomalous images (with --normal): report ROC AUC, and the threshold's detection rate."),
    ] = None,
    histogram: Annotated[
        Optional[Path],
        typer.Option(
            help="PNG of the --normal and --anomalous MSE distributions (default: score_histogram.png beside --threshold)."
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Images at a time.")] = 256,
    device: Annotated[str, typer.Option(help=EDGE_DEVICE_HELP)] = "cpu",
    allow_fallback: Annotated[bool, typer.Option("--allow-fallback", help=EDGE_FALLBACK_HELP)] = False,
    threads: Annotated[Optional[int], typer.Option(help=THREADS_HELP)] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the counts (and what ran the files) as JSON.")] = False,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Replace the --threshold file (with --calibrate), the -o CSV and the --histogram PNG if they already exist.",
        ),
    ] = False,
):
    """Anomaly scores: reconstruction error per image against a threshold calibrated on normal data.

    With --normal and --anomalous (labelled sets): how well the scores separate them (ROC AUC, the threshold's
    false-positive and detection rates) and a histogram of both.
    """
    from aekit.cli.render import counting_progress
    from aekit.core.sources import count_images
    from aekit.edge import anomaly, thresholds
    from aekit.edge import report as anomaly_report

    if normal is not None and histogram is None:
        histogram = anomaly_report.default_histogram(threshold)
    thresholds.check_score_request(source, calibrate, quantile, threshold, output, overwrite, normal, anomalous, histogram)
    limit = None if calibrate is not None else thresholds.load_threshold(threshold, encoder, required=source is not None)
    enc, dec = anomaly.open_sessions(encoder, decoder, device, threads, allow_fallback)
    for named in (source, calibrate, normal, anomalous):
        if named is not None and str(named) != thresholds.VALIDATION:
            say_npz_choice(named)
    batch_size = positive(batch_size, "--batch-size")
    report = {"ran_on": {"encoder": enc.ran_on(), "decoder": dec.ran_on()}}
    if calibrate is not None:
        total = None if calibrate == thresholds.VALIDATION else count_images(calibrate)
        with counting_progress(err_console, "calibrating", total) as advance:
            limit = thresholds.calibrate(enc, dec, calibrate, quantile, threshold, batch_size, advance, overwrite=overwrite)
        report["calibration"] = limit.to_json()
        if warning := thresholds.calibration_warning(limit):
            err_console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
        if not json_out:
            out_console.print(
                f"Threshold MSE {limit.mse:.5f} = quantile {limit.quantile:g} of {limit.calibration_images:,} normal "
                f"images ({limit.calibrated_on or 'origin unknown'}) → {threshold}"
                f"{_ran_on(enc, dec)}",
                highlight=False,
                soft_wrap=True,
            )
    if normal is not None:
        counts = [count_images(normal), count_images(anomalous)]
        with counting_progress(err_console, "evaluating", None if None in counts else sum(counts)) as advance:
            found = anomaly_report.evaluate(enc, dec, normal, anomalous, limit, histogram, batch_size, advance, overwrite)
        report["evaluation"] = found.to_json()
        if not json_out:
            rates = (
                f"; threshold MSE {limit.mse:.5f} flags {found.false_positive_rate:.1%} of normal "
                f"({found.false_positives:,}/{len(found.normal):,}) and detects {found.detection_rate:.1%} of anomalous "
                f"({found.detections:,}/{len(found.anomalous):,})"
                if limit is not None
                else f" (no {threshold}: --calibrate to get the false-positive and detection rates)"
            )
            out_console.print(
                f"{len(found.normal):,} normal, {len(found.anomalous):,} anomalous images: ROC AUC {found.auc:.4f}{rates} "
                f"→ {found.histogram}",
                highlight=False,
                soft_wrap=True,
            )
    if source is not None:
        with counting_progress(err_console, "scoring", count_images(source)) as advance:
            result = thresholds.score(enc, dec, source, limit, output, batch_size, advance, overwrite=overwrite)
        report.update(result.to_json())
        if not json_out:
            out_console.print(
                f"{len(result.scores):,} images scored: {result.anomalies:,} anomalies, {result.normal:,} normal "
                f"(threshold MSE {limit.mse:.5f})" + (f" → {output}" if output else "") + _ran_on(enc, dec),
                highlight=False,
                soft_wrap=True,
            )
    if json_out:
        print(json.dumps(report))


def _ran_on(*sessions) -> str:
    """What ran the files, for a summary line: ' on CPUExecutionProvider', or per file when they differ."""
    providers = [session.provider for session in sessions]
    if len(set(providers)) == 1:
        text = f" on {providers[0]}"
    else:
        text = " (" + ", ".join(f"{session.role} on {session.provider}" for session in sessions) + ")"
    if any(session.fell_back for session in sessions):
        text += "; --device cuda fell back to the CPU (--allow-fallback)"
    return text


@edge_errors
def info(json_out: Annotated[bool, typer.Option("--json", help="Print as one JSON object.")] = False):
    """Versions of aekit's engines, visible GPUs and onnxruntime's execution providers."""
    from aekit.cli.render import render_info
    from aekit.core.system import system_info

    facts = system_info()
    if json_out:
        print(json.dumps(facts))
    else:
        render_info(out_console, facts)
