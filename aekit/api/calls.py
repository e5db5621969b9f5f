"""The Python API's calls: train, open, export and benchmark runs from Python, on arrays or paths.

`aekit.train(images, epochs=2)` is `aekit train` as a call: the same run-folder rules
(aekit.core.recipe.plan_run) and the same library underneath, a `Run` back.

    >>> run = aekit.train(images, epochs=2, filters=(8, 16), latent_dim=8, output="runs/demo")
    >>> run.export("onnx")
    >>> aekit.bench(run, batch_sizes=(1, 64), seconds=0.2)
"""

from __future__ import annotations

import contextlib
import difflib
import os
import shutil
from dataclasses import fields
from pathlib import Path

import numpy as np

from aekit.api.messages import (
    BENCH_FLAGS,
    BENCH_PARTS,
    DEFAULT_BATCH_SIZES,
    EXPORT_FLAGS,
    EXPORT_PARTS,
    RECIPE_KEYWORDS,
    TRAIN_FLAGS,
    _python_errors,
)
from aekit.api.quiet import _Quiet, _Speaking
from aekit.core import runs as run_folder
from aekit.core.recipe import TrainConfig, plan_run
from aekit.errors import AekitError, ExportError, InputError, RunFolderError, UnknownOptionError


def train(
    images_or_path=None,
    *,
    epochs: int | None = None,
    output: str | os.PathLike | None = None,
    name: str | None = None,
    resume: bool | str | os.PathLike = False,
    quiet: bool = True,
    callback=None,
    **recipe,
) -> Run:
    """Trains an autoencoder (or continues one) and returns its run folder as a `Run`.

    Args:
        images_or_path: a numpy array of images (N, H, W) or (N, H, W, C), uint8 0-255 or float 0-1
            (or pass `pixel_max`), saved as `<run>/data.npz` so that export, bench and resume reload it;
            or anything `aekit train --dataset` takes: an image folder, a .npz/.npy file (FILE.npz:KEY),
            IDX files, a pack, a TFDS name such as "mnist". None: TFDS MNIST, or the bundled sample offline.
        epochs: epochs in all, counting resumed ones (None: the recipe's 25).
        output: the run folder (None: runs/<name or timestamp>). An existing run folder is resumed.
        name: the run folder's name under runs/.
        resume: True continues the run in `output` (or runs/<name>); a path continues that run folder.
            A resumed run keeps its data and model: pass images_or_path=None, or the same data.
        quiet: keep TensorFlow's native logs, Python warnings and prints out of the caller's output
            (the callback still prints).
        callback: an aekit.training.loop.TrainCallback that receives progress events.
        **recipe: TrainConfig's fields: filters=(32, 64), latent_dim=16, batch_size, learning_rate,
            val_split, val_from_end, pixel_max, seed, gpus, cpu_replicas, precision, ... (see docs/python.md).

    Returns:
        The finished run: `.path`, `.metrics`, `.history`, `.export()`, `.bench()`.

    Raises:
        UnknownOptionError: a keyword that is not a recipe field (a TypeError too).
        InputError: bad data or a bad value (a ValueError too).
        RunFolderError: the folder holds other files, is in use, or cannot be resumed.
    """
    with _python_errors(TRAIN_FLAGS):
        config, explicit = _recipe(epochs, recipe)
        array = None if _is_path_like(images_or_path) or images_or_path is None else _checked_images(images_or_path)
        if array is None and images_or_path is not None:
            config.dataset, explicit = os.fspath(images_or_path), explicit | {"dataset"}
        target = _resume_target(resume, output, name)
        run_dir, config = plan_run(config, explicit, target, None if target else output, None if target else name)
        _check_pack_split(config, explicit)
        resumed = run_folder.is_run_dir(run_dir)
        if array is not None:
            if resumed:
                _check_resumed_array(run_dir, config, array)
            config.dataset = str(_array_path(run_dir).resolve())
        data_path = _array_path(run_dir) if array is not None and not resumed else None
    replace = {str(data_path.resolve()): "the images array", str(data_path): "the images array"} if data_path else {}
    with _python_errors(TRAIN_FLAGS, replace), _Quiet(quiet) as hush:
        from aekit.training.loop import train as train_run

        with _array_source(run_dir, data_path, array):
            result = train_run(config, run_dir, _Speaking(callback, hush) if callback is not None else None)
    return Run(result.run_dir)


def _recipe(epochs: int | None, recipe: dict) -> tuple[TrainConfig, set[str]]:
    """The TrainConfig of the keywords given (None: not given) and the names given, checked for type."""
    unknown = [key for key in recipe if key not in RECIPE_KEYWORDS]
    if unknown:
        hints = [_with_guess(key, (*RECIPE_KEYWORDS, "epochs", "output", "name", "resume")) for key in unknown]
        extra = " Pass the data as the first argument." if "dataset" in unknown else ""
        raise UnknownOptionError(
            f"aekit.train() got unknown keyword argument {', '.join(hints)}. It takes epochs, output, name, resume, quiet, "
            f"callback and the recipe's {', '.join(RECIPE_KEYWORDS)}.{extra}"
        )
    given = {key: value for key, value in {"epochs": epochs, **recipe}.items() if value is not None}
    if "filters" in given:
        given["filters"] = _int_tuple("filters", given["filters"])
    for key, value in given.items():
        _check_type(key, value)
    return TrainConfig(**given), set(given)


def _with_guess(key: str, valid) -> str:
    close = difflib.get_close_matches(key, valid, 1)
    return f"{key!r} (did you mean {close[0]}?)" if close else repr(key)


RECIPE_TYPES = {f.name: f.type for f in fields(TrainConfig)}


def _check_type(key: str, value) -> None:
    """InputError naming the keyword when a value is not of the field's kind (a string for a number, ...)."""
    kind = str(RECIPE_TYPES.get(key, ""))
    if key == "filters":
        return
    if "bool" in kind:
        ok = isinstance(value, bool | np.bool_)
    elif "int" in kind:
        ok = isinstance(value, int | np.integer) and not isinstance(value, bool)
    elif "float" in kind:
        ok = isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)
    elif "str" in kind:
        ok = isinstance(value, str)
    else:
        ok = True
    if not ok:
        raise InputError(f"{key}={value!r} is a {type(value).__name__}; {key} takes {kind.replace(' | None', '')}.")


def _int_tuple(key: str, value) -> tuple[int, ...]:
    """(32, 64) from (32, 64), [32, 64], 32 or "32,64"; InputError otherwise."""
    try:
        if isinstance(value, str):
            items = [part for part in value.split(",") if part.strip()]
        else:
            items = list(value) if np.iterable(value) else [value]
        if any(isinstance(v, bool | float | np.floating) for v in items):
            raise ValueError
        numbers = tuple(int(v) for v in items)
    except (TypeError, ValueError):
        raise InputError(f"{key}={value!r} is not a tuple of integers. Pass e.g. {key}=(32, 64).") from None
    if not numbers:
        raise InputError(f"{key}={value!r} is empty. Pass e.g. {key}=(32, 64).")
    return numbers


def _is_path_like(value) -> bool:
    return isinstance(value, str | os.PathLike)


def _checked_images(images) -> np.ndarray:
    """The array as given, (N, H, W) or (N, H, W, C) of numbers; InputError naming `images_or_path` otherwise."""
    from aekit.core.sources import check_shape

    try:
        array = np.asarray(images)
    except (TypeError, ValueError) as exc:
        raise InputError(f"images_or_path: expected a numpy array or a path, received {type(images).__name__} ({exc}).") from None
    if array.dtype.kind not in "uif":
        raise InputError(
            f"images_or_path is an array of {array.dtype}; expected numbers (uint8 0-255, or float 0-1). "
            "Pass images as a numeric array, or a path."
        )
    check_shape(array.shape, "images_or_path")
    if len(array) < 2:
        raise InputError(f"images_or_path holds {len(array)} image(s); training holds some out for validation. Pass more images.")
    return array


def _resume_target(resume, output, name) -> Path | None:
    """The run folder `resume` names (True: output or runs/<name>), checked to be a run; None for no resume."""
    if resume is False or resume is None:
        return None
    if resume is True:
        if output is None and name is None:
            raise InputError("resume=True needs the run folder: pass output='runs/<name>' (or name=), or resume='runs/<name>'.")
        target = Path(output) if output is not None else run_folder.RUNS_ROOT / name
    elif _is_path_like(resume):
        target = Path(resume)
        if output is not None and Path(output).resolve() != target.resolve():
            raise InputError(f"resume={os.fspath(resume)!r} and output={os.fspath(output)!r} name different folders. Pass one.")
    else:
        raise InputError(f"resume={resume!r}: pass True (with output=) or the run folder's path.")
    if not run_folder.is_run_dir(target):
        raise RunFolderError(
            f"resume: {target} has no {run_folder.CONFIG}, so it is not an aekit run folder. Check the path, or drop "
            "resume= to start a new run there."
        )
    return target


def _check_pack_split(config: TrainConfig, explicit: set[str]) -> None:
    """A pack keeps the validation split it was packed with (the CLI's check)."""
    from aekit.data.loading import packed_val_split

    split = packed_val_split(config.dataset) if "val_split" in explicit else None
    if split is not None and abs(split - config.val_split) > 1e-9:
        raise InputError(
            f"val_split={config.val_split}: {config.dataset} is a pack, split when it was packed (validation fraction "
            f"{split:g}). Drop val_split, or pack again with: aekit data pack SOURCE OUT --val-split {config.val_split}"
        )


def _array_path(run_dir: Path) -> Path:
    return Path(run_dir) / run_folder.ARRAY_DATA


def _check_resumed_array(run_dir: Path, config: TrainConfig, array: np.ndarray) -> None:
    """A resumed run trains on its own data: an array passed again must be the one it saved."""
    stored = _array_path(run_dir)
    same = False
    if config.dataset and Path(config.dataset) == stored.resolve() and stored.is_file():
        with np.load(stored, allow_pickle=False) as saved:
            same = any(saved[key].shape == array.shape and np.array_equal(saved[key], array) for key in saved.files)
    if not same:
        raise InputError(
            f"{run_dir} was trained on {config.dataset}, not on this array; a resumed run keeps its data. "
            "Pass images_or_path=None to continue it, or output= a new folder to train on these images."
        )


@contextlib.contextmanager
def _array_source(run_dir: Path, data_path: Path | None, array):
    """Saves the array as the run's data (atomically) for the training call; removed again if no run came of it."""
    if data_path is None:
        yield
        return
    created = not Path(run_dir).exists()
    if data_path.exists():
        raise RunFolderError(
            f"output={str(run_dir)!r} already holds {data_path.name} and is not a run; aekit will not write over it. "
            f"Pass a new or empty folder (or delete {data_path} if a killed aekit.train call left it)."
        )
    with run_folder.atomic_path(data_path) as tmp:
        np.savez(tmp, images=array)
    try:
        yield
    except BaseException:
        if created and not run_folder.is_run_dir(run_dir):  # refused before config.json: leave nothing behind
            shutil.rmtree(run_dir, ignore_errors=True)
        elif not run_folder.is_run_dir(run_dir):
            data_path.unlink(missing_ok=True)
        raise


class Run:
    """A run folder that aekit train wrote: its files read on access, so they are always the current ones.

    Attributes:
        path: the run folder.

    Example:
        >>> run = aekit.run()                  # the newest finished run under runs/
        >>> run.metrics["final_val_psnr"]
        >>> run.export("onnx", quantize="int8")
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    @classmethod
    def open(cls, path: str | os.PathLike | None = None) -> Run:
        """The run in `path` (finished or not), or the newest finished run under runs/ when None, as the CLI picks it."""
        with _python_errors({**TRAIN_FLAGS, "--run": "path"}):
            if path is None:
                return cls(run_folder.newest_finished_run())
            folder = Path(path)
            if not folder.is_dir() or not run_folder.is_run_dir(folder):
                run_folder.require_finished_run(folder)  # raises with what the folder is, and the fix
            return cls(folder)

    @property
    def config(self) -> dict:
        """config.json: the recipe, the model, the data record, devices and versions."""
        from aekit.core.recipe import read_config

        with _python_errors(TRAIN_FLAGS):
            return read_config(self.path)

    @property
    def metrics(self) -> dict:
        """metrics.json: final_val_psnr, final_val_mse, best_val_mse, epochs, params, ... (a finished run only)."""
        with _python_errors(TRAIN_FLAGS):
            if not run_folder.is_finished(self.path):
                raise RunFolderError(
                    f"{self.path} is an unfinished run (no {run_folder.METRICS}). Finish it: aekit.train(resume='{self.path}')."
                )
            return run_folder.read_json(self.path / run_folder.METRICS)

    @property
    def history(self) -> list[dict]:
        """history.json: one dict per finished epoch (epoch, train_loss, val_mse, val_psnr, seconds, ...)."""
        with _python_errors(TRAIN_FLAGS):
            return run_folder.read_history(self.path) if (self.path / run_folder.HISTORY_JSON).is_file() else []

    @property
    def finished(self) -> bool:
        return run_folder.is_finished(self.path)

    def export(self, formats="onnx", quantize: str | None = None, **options):
        """`aekit.export(self, formats, quantize, **options)`: see there."""
        return export(self, formats, quantize, **options)

    def bench(self, **options):
        """`aekit.bench(self, **options)`: see there."""
        return bench(self, **options)

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    def __eq__(self, other) -> bool:
        return isinstance(other, Run) and self.path.resolve() == other.path.resolve()

    def __hash__(self) -> int:
        return hash(self.path.resolve())

    def __repr__(self) -> str:
        if run_folder.is_finished(self.path):
            with contextlib.suppress(AekitError, KeyError, TypeError):
                metrics = run_folder.read_json(self.path / run_folder.METRICS)
                return f"Run('{self.path}', epochs={metrics['epochs']}, final_val_psnr={metrics['final_val_psnr']:.2f})"
        return f"Run('{self.path}', finished={run_folder.is_finished(self.path)})"


def open_run(path: str | os.PathLike | None = None) -> Run:
    """`aekit.run(path)`: the run in `path`, or the newest finished run under runs/ when None (Run.open)."""
    return Run.open(path)


def _finished_run(run_or_path, flag_name: str = "run_or_path") -> Path:
    """The finished run folder of a Run, a path, or None (the newest under runs/); RunFolderError if there is none."""
    if run_or_path is None:
        return run_folder.newest_finished_run()
    if not isinstance(run_or_path, Run | str | os.PathLike):
        raise InputError(f"{flag_name}: expected an aekit.Run or a run folder's path, received {type(run_or_path).__name__}.")
    return run_folder.require_finished_run(Path(run_or_path))


def export(
    run_or_path=None,
    formats="onnx",
    quantize: str | None = None,
    *,
    parts=EXPORT_PARTS,
    opset: int | None = None,
    calibration_samples: int = 512,
    min_agreement_db: float | None = None,
    int8_float="auto",
    sensitivity: bool = False,
    static_batch: int | None = None,
    output: str | os.PathLike | None = None,
    check: bool = True,
    quiet: bool = True,
    on_file=None,
):
    """Exports a finished run's encoder and decoder and checks each file against Keras on the run's images.

    Args:
        run_or_path: an aekit.Run, a run folder, or None for the newest finished run under runs/.
        formats: "onnx", "tflite", "savedmodel", "all" (those three), "tflm" (int8, batch 1, with C sources for
            tflite-micro), or a tuple of them.
        quantize: None (float32), "fp16" (tflite) or "int8" (onnx, tflite; calibrated on training images).
        parts: ("encoder", "decoder"), or "all" (adds the autoencoder).
        opset: ONNX opset, 13-21 (None: 17; 19-21 are upgraded from tf2onnx's 18; int8 files need 19+ for onnx.reference).
        calibration_samples: training images that calibrate int8 ranges.
        min_agreement_db: a file passes when its reconstructions agree with Keras' to this PSNR (None:
            float32 60, fp16 40, int8 30).
        int8_float: int8 only: "auto" (the most sensitive nodes kept float until the file agrees on every kernel
            set), "none" (every node int8), or a tuple of node names (with one part).
        sensitivity: int8 only: measure every node's cost for each file, recorded in the manifest's quantization.
        static_batch: onnx/tflite files of this fixed batch, without shape arithmetic (for OpenCV DNN and
            microcontrollers), named e.g. encoder_batch1.onnx; None: a dynamic batch.
        output: the export folder (None: <run>/export).
        check: raise ExportError when a file failed its check (False: return it in the result).
        quiet: keep the converters' and TensorFlow's output out of the caller's.
        on_file: called with each aekit.core.manifest.FileEntry as it is done.

    Returns:
        aekit.exporting.export.ExportResult: `.output` (the folder), `.entries` (one FileEntry per file: file,
        status "passed"/"failed", parity, bytes, reason), `.failed`.

    Raises:
        ExportError: with check=True, a file that failed its check; `.result` holds every entry.
        InputError, RunFolderError: bad options, no finished run.
    """
    with _python_errors(EXPORT_FLAGS), _Quiet(quiet):
        from aekit.exporting.export import DEFAULT_OPSET, ExportOptions, export_run

        options = ExportOptions.from_text(
            _comma_text("formats", formats),
            _comma_text("parts", parts),
            "none" if quantize is None else str(quantize),
            DEFAULT_OPSET if opset is None else opset,
            calibration_samples,
            min_agreement_db,
            Path(output) if output is not None else None,
            _comma_text("int8_float", int8_float),
            bool(sensitivity),
            static_batch,
        )
        options.plan()  # every option checked before the run is looked for
        result = export_run(_finished_run(run_or_path), options, on_file)
    if check and result.failed:
        listed = "; ".join(f"{e.file}: {e.reason or 'failed'}" for e in result.failed)
        raise ExportError(
            f"{len(result.failed)} of {len(result.entries)} exported file(s) failed their check against Keras and were not "
            f"kept ({listed}). Pass check=False to get the result anyway, or try another format or quantize=.",
            result,
        )
    return result


def bench(
    run_or_path=None,
    batch_sizes=DEFAULT_BATCH_SIZES,
    seconds: float = 1.0,
    *,
    runs: int | None = None,
    warmup: int = 3,
    threads: int | None = None,
    parts=BENCH_PARTS,
    device: str = "auto",
    allow_fallback: bool = False,
    min_psnr: float = 15.0,
    quality_images: int | None = None,
    include_keras: bool = True,
    include_openvino: bool = True,
    model=None,
    dataset: str | None = None,
    output: str | os.PathLike | None = None,
    overwrite: bool = False,
    unlisted: bool = False,
    quiet: bool = True,
    on_row=None,
):
    """Measures throughput, latency and reconstruction quality of a run's exports (and of Keras).

    A run with nothing exported is exported first (float32 and int8 ONNX and TFLite), as `aekit bench` does.
    On the edge install (no TensorFlow) it benchmarks the files already exported, without the Keras rows;
    `result.header["absent"]` names what was left out and why (Keras, OpenVINO, bench.png without matplotlib).

    Args:
        run_or_path: an aekit.Run, a run folder, or None for the newest finished run (or the run of `model`).
        batch_sizes: the batch sizes to time, e.g. (1, 64).
        seconds: timed seconds per row, after `warmup` runs; `runs` times that many runs instead.
        threads: CPU threads for the runtimes (None: the physical cores).
        parts: any of "encoder", "decoder", "roundtrip".
        device: "auto", "cuda" or "cpu"; allow_fallback accepts the CPU when CUDA does not run.
        min_psnr: rows whose round-trip PSNR is below this are marked "quality below floor".
        quality_images: score only the first N held-out images (None: all).
        include_keras: add the Keras baseline rows (where TensorFlow is installed).
        include_openvino: add OpenVINO rows for the .onnx files (where openvino is installed: aekit[openvino]).
        model: one exported .onnx/.tflite file to benchmark instead of the run's exports, or a list of an
            encoder and a decoder file of one format.
        dataset: held-out images for quality (None: the run's validation split).
        output: the folder for bench.json, bench.csv and bench.png (None: <run>/bench, bench's own folder).
        overwrite: replace those files in `output` if it already holds them (else an error before any work).
        unlisted: with `model`, run a file its manifest does not list (its rows say "unlisted, not checked").

    Returns:
        aekit.benchmarking.bench.BenchResult: `.header` (devices, threads, data), `.rows` (one Row per runtime, part and
        batch size: status, images_per_sec, latency_ms_p50, psnr, ssim, reason), `.output`, `.to_json()`.
    """
    with _python_errors(BENCH_FLAGS), _Quiet(quiet):
        from aekit.benchmarking.bench import BenchOptions, bench_run, check_outputs, write_outputs
        from aekit.edge.outputs import check_output_folder

        options = BenchOptions(
            device=device,
            allow_fallback=allow_fallback,
            batch_sizes=_int_tuple("batch_sizes", batch_sizes),
            seconds=seconds,
            runs=runs,
            warmup=warmup,
            threads=threads,
            parts=tuple(p.strip() for p in _comma_text("parts", parts).split(",") if p.strip()),
            min_psnr=min_psnr,
            quality_images=quality_images,
            include_keras=include_keras,
            include_openvino=include_openvino,
        )
        options.validate()  # every option checked before a run is loaded or anything is exported
        if output is not None:
            check_output_folder(Path(output), "bench.json, bench.csv and bench.png", "--output")
            check_outputs(Path(output), overwrite)
        run_dir = _finished_run(run_or_path) if run_or_path is not None or model is None else None
        files = None if model is None else [Path(model)] if _is_path_like(model) else [Path(m) for m in model]
        result = bench_run(run_dir, options, model=files, dataset=dataset, on_row=on_row, unlisted=unlisted)
        folder = Path(output) if output is not None else Path(result.header["run"]) / "bench"
        write_outputs(result, folder, overwrite=overwrite or output is None)
        result.output = folder
    return result


def _comma_text(key: str, value) -> str:
    """The CLI's comma list of a str ("onnx", "onnx,tflite", "all") or an iterable of str."""
    if isinstance(value, str):
        return value
    try:
        items = list(value)
    except TypeError:
        items = None
    if not items or not all(isinstance(item, str) for item in items):
        raise InputError(f"{key}={value!r}: expected a name or a tuple of names, e.g. {key}=('encoder', 'decoder').")
    return ",".join(items)
