"""`aekit export` and `aekit bench`: a run's files written and checked, then measured."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Annotated, Optional

import typer
import typer.core
import typer.exceptions
from rich.markup import escape

from aekit.cli.app import edge_errors, user_errors
from aekit.cli.render import err_console, out_console


@user_errors
def export(
    run: Annotated[
        Optional[Path], typer.Option(help="Run folder to export. Default: the newest finished run under runs/.")
    ] = None,
    format: Annotated[
        str,
        typer.Option(
            "--format",
            "-f",
            help="onnx, tflite, savedmodel, all (those three), tflm (int8 batch-1 .tflite with a .cc/.h C array for "
            "tflite-micro), or a comma list (onnx,tflite).",
        ),
    ] = "onnx",
    quantize: Annotated[
        str, typer.Option(help="none | fp16 (tflite) | int8 (onnx, tflite; calibrated on the run's training images).")
    ] = "none",
    parts: Annotated[str, typer.Option(help="encoder,decoder (default) or all (adds the autoencoder).")] = "encoder,decoder",
    opset: Annotated[int, typer.Option(help="ONNX opset (13-21; 19-21 are upgraded from tf2onnx's 18).")] = 17,
    calibration_samples: Annotated[int, typer.Option(help="Training images used to calibrate int8 ranges.")] = 512,
    min_agreement_db: Annotated[
        Optional[float],
        typer.Option(
            help="A file passes when its reconstructions agree with Keras' to at least this PSNR in dB (30 dB = RMS "
            "difference 0.032 of the pixel range, about 8 grey levels). Default per precision: float32 60, fp16 "
            "40, int8 30."
        ),
    ] = None,
    int8_float: Annotated[
        str,
        typer.Option(
            help="int8: which nodes stay float. auto: measured per model (the most sensitive, until the file agrees "
            "with Keras on every kernel set); none: every node int8; or a comma list of node names from the "
            "manifest's quantization.sensitivity (with --parts encoder or decoder)."
        ),
    ] = "auto",
    sensitivity: Annotated[
        bool,
        typer.Option(
            "--sensitivity",
            help="int8: measure each node's cost (that node alone int8) for every file, print it and record it in "
            "the manifest (auto measures it only when the all-int8 file fails).",
        ),
    ] = False,
    static_batch: Annotated[
        Optional[int],
        typer.Option(
            help="Write onnx/tflite files of this fixed batch, with no shape arithmetic (what OpenCV DNN and "
            "microcontrollers load), named e.g. encoder_batch1.onnx beside the dynamic ones. Default: a dynamic batch.",
        ),
    ] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Export folder. Default: <run>/export.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the manifest entries as JSON on stdout.")] = False,
):
    """Export the encoder and decoder to ONNX/TFLite/SavedModel; check each file against Keras."""
    from aekit.cli.render import render_export
    from aekit.core import runs
    from aekit.exporting.export import ExportOptions, export_run

    run_dir = runs.require_finished_run(run) if run else runs.newest_finished_run()
    options = ExportOptions.from_text(
        format, parts, quantize, opset, calibration_samples, min_agreement_db, output, int8_float, sensitivity, static_batch
    )
    options.plan()  # every option checked before anything is printed or loaded
    if not json_out:
        err_console.print(f"Exporting run [bold]{run_dir}[/]" + ("" if run else " (newest finished run)"), highlight=False)
    with err_console.status("converting and checking parity...", spinner="dots") if not json_out else contextlib.nullcontext():
        result = export_run(run_dir, options)
    if json_out:
        print(json.dumps({"run_dir": str(run_dir), "output": str(result.output), "files": [e.to_json() for e in result.entries]}))
    else:
        render_export(out_console, result)
    if result.failed:
        raise typer.Exit(1)


@edge_errors  # bench runs on the edge install too
def bench(
    run: Annotated[
        Optional[Path],
        typer.Option(
            help="Run folder. Default: the newest finished run under runs/. Exports float32 and int8 ONNX/TFLite "
            "first when nothing is exported (on the training side; the edge install benchmarks what is exported)."
        ),
    ] = None,
    model: Annotated[
        Optional[list[Path]],
        typer.Option(
            help="Benchmark one exported .onnx/.tflite file instead of a run's exports (give it twice for an encoder "
            "and a decoder of one format)."
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="cuda | cpu | auto (CUDA when onnxruntime can use it).")] = "auto",
    allow_fallback: Annotated[
        bool, typer.Option("--allow-fallback", help="Accept the CPU when --device cuda cannot run on CUDA.")
    ] = False,
    batch_sizes: Annotated[str, typer.Option(help="Comma list of batch sizes.")] = "1,8,64,256",
    seconds: Annotated[float, typer.Option(help="Timed seconds per row (after warm-up).")] = 1.0,
    runs_: Annotated[Optional[int], typer.Option("--runs", help="Timed runs per row instead of --seconds.")] = None,
    warmup: Annotated[int, typer.Option(help="Warm-up runs per row.")] = 3,
    threads: Annotated[Optional[int], typer.Option(help="Threads for the CPU runtimes. Default: the physical cores.")] = None,
    parts: Annotated[str, typer.Option(help="Comma list of encoder, decoder, roundtrip.")] = "encoder,decoder,roundtrip",
    min_psnr: Annotated[
        float, typer.Option(help="Rows whose round-trip PSNR is below this are marked as below the quality floor.")
    ] = 15.0,
    dataset: Annotated[
        Optional[str], typer.Option(help="Held-out images for quality (default: the run's validation split).")
    ] = None,
    quality_images: Annotated[
        Optional[int], typer.Option(help="Score only the first N held-out images (default: all of them).")
    ] = None,
    no_keras: Annotated[bool, typer.Option("--no-keras", help="Skip the Keras baseline rows.")] = False,
    no_openvino: Annotated[
        bool, typer.Option("--no-openvino", help="Skip the OpenVINO rows (added for the .onnx files when openvino is installed).")
    ] = False,
    output: Annotated[
        Optional[Path], typer.Option("--output", "-o", help="Folder for bench.json/csv/png. Default: <run>/bench.")
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite", help="Replace bench.json/csv/png already in --output (the default <run>/bench is always bench's own)."
        ),
    ] = False,
    unlisted: Annotated[
        bool,
        typer.Option(
            "--unlisted",
            help="Benchmark a --model file its manifest.json does not list (or lists with another size or sha256); "
            "its rows say 'unlisted, not checked'.",
        ),
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the whole result as JSON on stdout.")] = False,
):
    """Measure throughput, latency and reconstruction error of every export (and Keras, where TensorFlow is installed)."""
    from aekit.benchmarking.bench import UNLISTED, BenchOptions, bench_run, check_outputs, write_outputs
    from aekit.cli.render import export_notice, render_bench
    from aekit.core import runs
    from aekit.edge.outputs import check_output_folder

    options = BenchOptions.from_text(
        batch_sizes,
        parts,
        device,
        allow_fallback,
        seconds,
        runs_,
        warmup,
        threads,
        min_psnr,
        quality_images,
        not no_keras,
        not no_openvino,
    )
    options.validate()  # every option checked before a run is loaded or anything is exported
    if output is not None:  # checked now, not after minutes of benchmarking
        check_output_folder(output, "bench.json, bench.csv and bench.png", "--output")
        check_outputs(output, overwrite)  # an -o folder is the user's: its bench files are replaced only when asked
    run_dir = runs.require_finished_run(run) if run else (None if model else runs.newest_finished_run())
    if run_dir and not json_out:
        err_console.print(f"Benchmarking run [bold]{run_dir}[/]" + ("" if run else " (newest finished run)"), highlight=False)
    on_export = (
        None
        if json_out
        else (lambda fmt, q: err_console.print(f"  nothing was exported yet: exported {export_notice(fmt, q)}", highlight=False))
    )
    with err_console.status("benchmarking...", spinner="dots") if not json_out else contextlib.nullcontext():
        result = bench_run(run_dir, options, model=model or None, dataset=dataset, on_export=on_export, unlisted=unlisted)
    folder = output or (Path(result.header["run"]) / "bench")
    write_outputs(result, folder, overwrite=overwrite or output is None)  # <run>/bench is bench's own folder
    for warning in result.header["warnings"]:
        err_console.print(f"[bold yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
    if model and any(r.file_check == UNLISTED for r in result.rows):
        err_console.print(
            f"[bold yellow]warning:[/] {escape(', '.join(map(str, model)))} is {UNLISTED} against a manifest entry (--unlisted).",
            highlight=False,
            soft_wrap=True,
        )
    if json_out:
        print(json.dumps(result.to_json()))
    else:
        render_bench(out_console, result)
