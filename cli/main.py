"""The `aekit` command: parses options, calls the aekit library, renders with Rich.

Installed as `aekit.cli`. Business logic lives in the library; a command here
turns options into a library call and the result into tables. Errors the user
can fix (AekitError) become one line on stderr and exit code 2.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

# Before TensorFlow is imported anywhere: keep its C++ start-up chatter (CUDA probing
# on GPU-less machines, XLA notices) off the user's terminal. Set it to 0 to see it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import typer  # noqa: E402
import typer.core  # noqa: E402
import typer.exceptions  # noqa: E402
from rich.markup import escape  # noqa: E402

from aekit import AekitError, __version__  # noqa: E402
from aekit.cli.render import err_console, out_console  # noqa: E402
from aekit.recipe import BASE_LEARNING_RATE, CPU_BATCH, GPU_BATCH_PER_REPLICA, MAX_LEARNING_RATE, WARMUP_IMAGES  # noqa: E402
from aekit.train import TrainConfig, TrainingInterrupted  # noqa: E402

RECIPE = TrainConfig()  # the default recipe; help texts quote it rather than repeat it
EXIT_USAGE = 2
WRITE_ERRORS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EACCES}


class OneLineErrors(typer.core.TyperGroup):
    """Typer's parsing, with its usage errors as one `error: ...` line and exit code 2 (no usage box)."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except typer.exceptions.TyperException as exc:  # usage errors (exit code 2), bad parameters, file errors
            where = exc.ctx.command_path if getattr(exc, "ctx", None) else "aekit"
            message = " ".join(exc.format_message().split())
            message += "" if message.endswith((".", "?", "!")) else "."
            if message != ".":  # an empty message: `aekit` alone, whose help was just shown
                err_console.print(
                    f"[bold red]error:[/] {escape(message)} Run '{where} --help' for the options.",
                    highlight=False,
                    soft_wrap=True,
                )
            code = exc.exit_code
        except typer.exceptions.Abort:
            err_console.print("[yellow]interrupted[/]")
            code = 130
        if not standalone_mode:
            return code
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=OneLineErrors,
    name="aekit",
    help="Train convolutional autoencoders, export them to ONNX/TFLite, benchmark the exports.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def import_tensorflow_quietly() -> None:
    """Imports TensorFlow now (quietly, see aekit.lazy), so a command that needs it fails at once where it is missing."""
    from aekit.lazy import tf

    tf.load()


def user_errors(command, needs_tensorflow: bool = True):
    """Turns AekitError into a one-line message and exit code 2; Ctrl-C into exit 130."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            if needs_tensorflow:
                import_tensorflow_quietly()
            return command(*args, **kwargs)
        except AekitError as exc:
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_USAGE) from None
        except TrainingInterrupted as exc:
            err_console.print(f"[yellow]{escape(str(exc))}[/]", highlight=False, soft_wrap=True)
            raise typer.Exit(130) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]")
            raise typer.Exit(130) from None
        except OSError as exc:  # a full disk, a file-size limit, a folder that became read-only mid-way
            if exc.errno not in WRITE_ERRORS:
                raise
            where = f" {exc.filename}" if exc.filename else ""
            err_console.print(
                f"[bold red]error:[/] Could not write{escape(where)}: {exc.strerror}. Free space, or pass an output "
                "on another disk; files are written under temporary names, so none is left looking finished.",
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(EXIT_USAGE) from None

    return wrapper


def edge_errors(command):
    """user_errors for the edge commands, which must run where TensorFlow is not installed."""
    return user_errors(command, needs_tensorflow=False)


def parse_filters(text: str) -> tuple[int, ...]:
    try:
        filters = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        filters = ()
    if not filters or min(filters) < 1:
        raise AekitError(f"--filters {text!r} is not a comma-separated list of positive integers. Use e.g. --filters 32,64.")
    return filters


# Help texts of the train options; options that set the recipe add "(default: ...)" from TrainConfig.
TRAIN_HELP = {
    "dataset": "TFDS name (e.g. mnist, fashion_mnist, cifar10), a folder of IDX files, a .npz/.npy file, or a folder of "
    "PNG/JPEG images. Default: TFDS mnist, or the bundled MNIST sample when offline.",
    "epochs": "Epochs to train (in all, counting resumed ones).",
    "batch_size": f"GLOBAL batch size, split evenly across replicas (default: {CPU_BATCH} on a CPU, "
    f"{GPU_BATCH_PER_REPLICA} per GPU on GPUs).",
    "learning_rate": f"Peak Adam learning rate for the global batch (default: {BASE_LEARNING_RATE:g} at batch {CPU_BATCH}, "
    f"scaled by sqrt(batch/{CPU_BATCH}) up to {MAX_LEARNING_RATE:g}).",
    "lr_schedule": "cosine (decay to 1% over the run) or constant.",
    "warmup_steps": "Cosine schedule: steps of linear warm-up from a tenth of the peak rate (at most a quarter of the run); "
    f"0 for none (default: {WARMUP_IMAGES:,} images' worth, 150 steps at batch {CPU_BATCH}).",
    "filters": "Channels of each stride-2 conv block. Image sides must divide by 2^blocks.",
    "latent_dim": "Size of the latent code.",
    "bn_momentum": "BatchNorm moving-average momentum.",
    "val_split": "For sources with one split: the fraction held out for validation, a seeded random draw "
    "(stratified over an image folder's sub-folders).",
    "val_from_end": "Hold out the LAST --val-split of the source instead, for data ordered on purpose (time series, frames).",
    "pixel_max": "The value of white when pixels are not 0-255 or 0-1 (e.g. 16 for 0-16 digits, 4095 for 12-bit); "
    "recorded in the run and its exports.",
    "gpus": "0 = CPU; N = MirroredStrategy over N GPUs. Default: every visible GPU, else CPU.",
    "cpu_replicas": "Split the CPU into N logical devices and mirror over them (multi-replica path without GPUs).",
    "precision": "auto | float32 | mixed_float16 | mixed_bfloat16. auto: mixed_float16 on GPUs, float32 on CPU.",
    "seed": "Random seed for weights and shuffling.",
    "output": "Run folder. Default: runs/<name or timestamp>. An existing run folder is resumed.",
    "name": "Name of the run folder under runs/.",
    "resume": "Continue the run in this folder from its last finished epoch.",
    "data_dir": "TFDS data directory (default: TFDS's own).",
    "checkpoint_steps": "Also checkpoint every N steps within an epoch (default: at epoch ends only).",
    "workers": "Multi-worker by hand: host:port of every worker, comma-separated (worker 0 is the chief). Sets TF_CONFIG.",
    "task_index": "With --workers: this worker's index.",
    "worker_timeout": "Multi-worker: seconds to wait for every peer to answer at start-up before giving up.",
    "adam_beta_2": "Adam's second-moment decay.",
    "config": "A recipe file (YAML, JSON or TOML) of these settings by name, e.g. latent_dim: 64; options given here win.",
    "print_recipe": "Print the recipe this command would train with (YAML that --config reads) and exit.",
    "steps_per_execution": "Training steps per tf.function call; the host reads the losses once per call. "
    "0 = auto: about 10 ms of GPU work per call (~100 steps for this model), or 0.25 s of CPU work (~10 steps).",
}
RECIPE_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig))
# Settings whose help quotes the default recipe's value (the others are chosen when training starts, or flags).
RECIPE_DEFAULTS = {
    name for name in RECIPE_FIELDS if getattr(RECIPE, name) is not None and not isinstance(getattr(RECIPE, name), bool)
}


def train_option(name: str, *flags: str, **extra):
    """The typer.Option of a train setting: its help text, with the default recipe's value where it has one."""
    text = TRAIN_HELP[name]
    if name in RECIPE_DEFAULTS:
        value = getattr(RECIPE, name)
        shown = (
            ",".join(map(str, value)) if isinstance(value, tuple) else format(value, "g") if isinstance(value, float) else value
        )
        text += f" (default: {shown})"
    return typer.Option(*flags, help=text, **extra)


@app.command()
@user_errors
def train(
    dataset: Annotated[Optional[str], train_option("dataset")] = None,
    epochs: Annotated[Optional[int], train_option("epochs")] = None,
    batch_size: Annotated[Optional[int], train_option("batch_size")] = None,
    learning_rate: Annotated[Optional[float], train_option("learning_rate")] = None,
    lr_schedule: Annotated[Optional[str], train_option("lr_schedule")] = None,
    warmup_steps: Annotated[Optional[int], train_option("warmup_steps")] = None,
    filters: Annotated[Optional[str], train_option("filters")] = None,
    latent_dim: Annotated[Optional[int], train_option("latent_dim")] = None,
    bn_momentum: Annotated[Optional[float], train_option("bn_momentum")] = None,
    val_split: Annotated[Optional[float], train_option("val_split")] = None,
    val_from_end: Annotated[Optional[bool], train_option("val_from_end", "--val-from-end", show_default=False)] = None,
    pixel_max: Annotated[Optional[float], train_option("pixel_max")] = None,
    gpus: Annotated[Optional[int], train_option("gpus")] = None,
    cpu_replicas: Annotated[Optional[int], train_option("cpu_replicas")] = None,
    precision: Annotated[Optional[str], train_option("precision")] = None,
    seed: Annotated[Optional[int], train_option("seed")] = None,
    output: Annotated[Optional[Path], train_option("output", "--output", "-o")] = None,
    name: Annotated[Optional[str], train_option("name")] = None,
    resume: Annotated[Optional[Path], train_option("resume")] = None,
    data_dir: Annotated[Optional[str], train_option("data_dir")] = None,
    checkpoint_steps: Annotated[Optional[int], train_option("checkpoint_steps")] = None,
    workers: Annotated[Optional[str], train_option("workers")] = None,
    task_index: Annotated[Optional[int], train_option("task_index")] = None,
    worker_timeout: Annotated[Optional[float], train_option("worker_timeout")] = None,
    steps_per_execution: Annotated[Optional[int], train_option("steps_per_execution")] = None,
    adam_beta_2: Annotated[Optional[float], train_option("adam_beta_2")] = None,
    config_file: Annotated[Optional[Path], train_option("config", "--config")] = None,
    print_recipe: Annotated[bool, train_option("print_recipe", "--print-recipe")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or tables; errors only.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the final metrics as one JSON object on stdout.")] = False,
):
    """Train the convolutional autoencoder and write a run folder."""
    from aekit import runs
    from aekit.cli.render import TrainProgress, render_train_summary
    from aekit.data import packed_val_split
    from aekit.recipe import plan_run
    from aekit.train import train as run_training

    settings = locals()
    given = {name: settings[name] for name in RECIPE_FIELDS}  # every recipe setting is a train option (tests hold it)
    if filters is not None:
        given["filters"] = parse_filters(filters)
    if workers is not None or task_index is not None:
        from aekit.distribute import tf_config_for

        if workers is None or task_index is None:
            raise AekitError("--workers and --task-index go together: list every worker and say which one this is.")
        os.environ["TF_CONFIG"] = tf_config_for(workers, task_index)
    if config_file is not None:  # the file's settings count as given; options on the command line win
        from aekit.recipe import read_recipe_file

        given = {**read_recipe_file(config_file), **{key: value for key, value in given.items() if value is not None}}
    explicit = {key for key, value in given.items() if value is not None}
    config = TrainConfig(**{key: given[key] for key in explicit})

    run_dir, config = plan_run(config, explicit, resume, output, name)
    if print_recipe:
        from aekit.recipe import recipe_text

        out_console.print(f"# {'resumes' if (run_dir / runs.CONFIG).is_file() else 'new run in'} {run_dir}", highlight=False)
        out_console.print("# null: chosen for the devices when training starts (see aekit train --help)", highlight=False)
        out_console.print(recipe_text(config), end="", highlight=False, soft_wrap=True)
        return
    split = packed_val_split(config.dataset) if "val_split" in explicit else None
    if split is not None and abs(split - config.val_split) > 1e-9:
        raise AekitError(
            f"--val-split {config.val_split}: {config.dataset} is a pack, split when it was packed (validation"
            f" fraction {split:g}). Drop --val-split, or pack again with: aekit data pack SOURCE OUT"
            f" --val-split {config.val_split}"
        )

    progress = None if (quiet or json_out) else TrainProgress(err_console)
    result = run_training(config, run_dir, progress)
    if json_out:
        data = runs.read_json(result.run_dir / runs.CONFIG)["data"] if result.wrote_files else {}
        print(
            json.dumps(
                {
                    "run_dir": str(result.run_dir),
                    **result.metrics,
                    "placement": result.placement,
                    "data_source": data.get("source"),
                    "data_note": data.get("note"),
                }
            )
        )
    elif not quiet:
        render_train_summary(out_console, result)


@app.command()
@user_errors
def export(
    run: Annotated[
        Optional[Path], typer.Option(help="Run folder to export. Default: the newest finished run under runs/.")
    ] = None,
    format: Annotated[
        str, typer.Option("--format", "-f", help="onnx, tflite, savedmodel, all, or a comma list (onnx,tflite).")
    ] = "onnx",
    quantize: Annotated[
        str, typer.Option(help="none | fp16 (tflite) | int8 (onnx, tflite; calibrated on the run's training images).")
    ] = "none",
    parts: Annotated[str, typer.Option(help="encoder,decoder (default) or all (adds the autoencoder).")] = "encoder,decoder",
    opset: Annotated[int, typer.Option(help="ONNX opset (13-18).")] = 17,
    calibration_samples: Annotated[int, typer.Option(help="Training images used to calibrate int8 ranges.")] = 512,
    min_agreement_db: Annotated[
        Optional[float],
        typer.Option(
            help="A file passes when its reconstructions agree with Keras' to at least this PSNR in dB (30 dB = RMS "
            "difference 0.032 of the pixel range, about 8 grey levels). Default per precision: float32 60, fp16 "
            "40, int8 30."
        ),
    ] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Export folder. Default: <run>/export.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the manifest entries as JSON on stdout.")] = False,
):
    """Export the encoder and decoder to ONNX/TFLite/SavedModel; check each file against Keras."""
    from aekit import runs
    from aekit.cli.render import render_export
    from aekit.export import ExportOptions, export_run

    run_dir = runs.require_finished_run(run) if run else runs.newest_finished_run()
    options = ExportOptions.from_text(format, parts, quantize, opset, calibration_samples, min_agreement_db, output)
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


@app.command()
@user_errors
def bench(
    run: Annotated[
        Optional[Path],
        typer.Option(
            help="Run folder. Default: the newest finished run under runs/. Exports float32 and int8 ONNX/TFLite "
            "first when nothing is exported."
        ),
    ] = None,
    model: Annotated[
        Optional[Path], typer.Option(help="Benchmark one exported .onnx/.tflite file instead of a run's exports.")
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
    output: Annotated[
        Optional[Path], typer.Option("--output", "-o", help="Folder for bench.json/csv/png. Default: <run>/bench.")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the whole result as JSON on stdout.")] = False,
):
    """Measure throughput, latency and reconstruction error of every export (and Keras)."""
    from aekit import runs
    from aekit.bench import BenchOptions, bench_run, write_outputs
    from aekit.cli.render import export_notice, render_bench
    from aekit.edge import check_output_folder

    options = BenchOptions.from_text(
        batch_sizes, parts, device, allow_fallback, seconds, runs_, warmup, threads, min_psnr, quality_images, not no_keras
    )
    options.validate()  # every option checked before a run is loaded or anything is exported
    if output is not None:  # checked now, not after minutes of benchmarking
        check_output_folder(output, "bench.json, bench.csv and bench.png", "--output")
    run_dir = runs.require_finished_run(run) if run else (None if model else runs.newest_finished_run())
    if run_dir and not json_out:
        err_console.print(f"Benchmarking run [bold]{run_dir}[/]" + ("" if run else " (newest finished run)"), highlight=False)
    on_export = (
        None
        if json_out
        else (lambda fmt, q: err_console.print(f"  nothing was exported yet: exported {export_notice(fmt, q)}", highlight=False))
    )
    with err_console.status("benchmarking...", spinner="dots") if not json_out else contextlib.nullcontext():
        result = bench_run(run_dir, options, model=model, dataset=dataset, on_export=on_export)
    folder = output or (Path(result.header["run"]) / "bench")
    write_outputs(result, folder)
    if json_out:
        print(json.dumps(result.to_json()))
    else:
        render_bench(out_console, result)


EDGE_DEVICE_HELP = (
    "cpu | cuda (fails unless CUDA really runs; .tflite files always run on the CPU) | "
    "auto (CUDA when it really runs, else the CPU)."
)
EDGE_FALLBACK_HELP = "With --device cuda: run on the CPU when CUDA cannot, instead of failing."
THREADS_HELP = "CPU threads, 1 to 4 per logical core (default: the physical cores)."
SOURCE_HELP = "Image folder, .npz/.npy file (FILE.npz:KEY picks an array) or *-images-idx3-ubyte[.gz] file."
PIXEL_MAX_HELP = "The images' value of white when not 0-255 or 0-1 (default: the one the model was trained with, if any)."


def say_npz_choice(source) -> None:
    """One line on stderr when a .npz of several arrays is read without naming one."""
    from aekit.sources import npz_choice

    note = npz_choice(source)
    if note:
        err_console.print(f"[dim]{note}[/]", highlight=False, soft_wrap=True)


@app.command()
@edge_errors
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
    from aekit.edge import EncoderSession, check_encode_output, encode_path
    from aekit.sources import count_images

    check_encode_output(source, output, overwrite)  # before the model is loaded
    encoder = EncoderSession(model, device, threads, allow_fallback)
    say_npz_choice(source)
    with counting_progress(err_console, "encoding", count_images(source)) as advance:
        summary = encode_path(
            encoder,
            source,
            output,
            latent_dtype,
            _positive(batch_size, "--batch-size"),
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


@app.command()
@edge_errors
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
    from aekit.edge import DecoderSession, decode_file

    decoder = DecoderSession(model, device, threads, allow_fallback)
    with counting_progress(err_console, "decoding", None) as advance:
        summary = decode_file(decoder, latents, output, format, _positive(batch_size, "--batch-size"), advance, overwrite)
    out_console.print(
        f"Decoded {summary['images']:,} images → {summary['output']}{_ran_on(decoder)}", highlight=False, soft_wrap=True
    )


@app.command()
@edge_errors
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
    from aekit import anomaly
    from aekit.cli.render import counting_progress
    from aekit.edge import check_output_folder
    from aekit.sources import count_images

    check_output_folder(output)  # before the models are loaded
    anomaly.check_reconstruct_output(output, grid, overwrite)
    enc, dec = anomaly.open_sessions(encoder, decoder, device, threads, allow_fallback)
    say_npz_choice(source)
    with counting_progress(err_console, "reconstructing", count_images(source)) as advance:
        result = anomaly.reconstruct(
            enc, dec, source, output, _positive(batch_size, "--batch-size"), grid, advance, overwrite=overwrite
        )
    scores, (worst, worst_mse) = result.scores, result.scores.worst
    written = ", ".join([str(result.csv), *([result.grid.name] if result.grid else [])])
    out_console.print(
        f"{len(scores):,} images: mean MSE {scores.mean_mse:.5f}, mean PSNR {scores.mean_psnr:.2f} dB "
        f"(worst {worst}: MSE {worst_mse:.5f}) → {written}{_ran_on(enc, dec)}",
        highlight=False,
        soft_wrap=True,
    )


@app.command()
@edge_errors
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
    from aekit import anomaly, anomaly_report
    from aekit.cli.render import counting_progress
    from aekit.sources import count_images

    if normal is not None and histogram is None:
        histogram = anomaly_report.default_histogram(threshold)
    anomaly.check_score_request(source, calibrate, quantile, threshold, output, overwrite, normal, anomalous, histogram)
    limit = None if calibrate is not None else anomaly.load_threshold(threshold, encoder, required=source is not None)
    enc, dec = anomaly.open_sessions(encoder, decoder, device, threads, allow_fallback)
    for named in (source, calibrate, normal, anomalous):
        if named is not None and str(named) != anomaly.VALIDATION:
            say_npz_choice(named)
    batch_size = _positive(batch_size, "--batch-size")
    report = {"ran_on": {"encoder": enc.ran_on(), "decoder": dec.ran_on()}}
    if calibrate is not None:
        total = None if calibrate == anomaly.VALIDATION else count_images(calibrate)
        with counting_progress(err_console, "calibrating", total) as advance:
            limit = anomaly.calibrate(enc, dec, calibrate, quantile, threshold, batch_size, advance, overwrite=overwrite)
        report["calibration"] = limit.to_json()
        if warning := anomaly.calibration_warning(limit):
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
            result = anomaly.score(enc, dec, source, limit, output, batch_size, advance, overwrite=overwrite)
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


def _positive(value: int, option: str) -> int:
    if value < 1:
        raise AekitError(f"{option} must be at least 1, got {value}.")
    return value


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


@app.command()
@user_errors
def info(json_out: Annotated[bool, typer.Option("--json", help="Print as one JSON object.")] = False):
    """Versions of aekit's engines, visible GPUs and onnxruntime's execution providers."""
    from aekit.cli.render import render_info
    from aekit.system import system_info

    facts = system_info()
    if json_out:
        print(json.dumps(facts))
    else:
        render_info(out_console, facts)


from aekit.cli.data_cmd import data_app  # noqa: E402  (its commands import this module's helpers when they run)

app.add_typer(data_app, name="data")


@app.callback(invoke_without_command=True)
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print aekit's version and exit.")] = False,
):
    if version:
        print(__version__)
        raise typer.Exit(0)


def main() -> None:  # pragma: no cover - `python -m aekit.cli`
    sys.exit(app())
