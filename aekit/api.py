"""The Python API: train, open, export and benchmark runs from a notebook, with Python types.

`aekit.train(images, epochs=2)` is `aekit train` as a call: the same run-folder rules
(aekit.recipe.plan_run) and the same library underneath, a `Run` back. What goes wrong is an
AekitError subclass (aekit.errors) whose message names keyword arguments, not the CLI's flags.

    >>> run = aekit.train(images, epochs=2, filters=(8, 16), latent_dim=8, output="runs/demo")
    >>> run.export("onnx")
    >>> aekit.bench(run, batch_sizes=(1, 64), seconds=0.2)
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import os
import re
import shutil
import sys
import warnings
from dataclasses import fields
from pathlib import Path

import numpy as np

from aekit import runs as run_folder
from aekit.errors import AekitError, ExportError, InputError, RunFolderError, UnknownOptionError
from aekit.recipe import TrainConfig, plan_run

# TrainConfig fields `train` takes as keywords; the data is its first argument and epochs its own keyword.
RECIPE_KEYWORDS = tuple(f.name for f in fields(TrainConfig) if f.name not in ("dataset", "epochs"))
DEFAULT_BATCH_SIZES = (1, 8, 64, 256)
BENCH_PARTS = ("encoder", "decoder", "roundtrip")
EXPORT_PARTS = ("encoder", "decoder")
# Loggers whose warnings a quiet call keeps out of the notebook (their handlers write to the notebook's stderr).
QUIET_LOGGERS = ("absl", "tensorflow", "tensorflow_datasets", "tf2onnx", "keras", "h5py")


# --- train ------------------------------------------------------------------------


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
        callback: an aekit.train.TrainCallback that receives progress events.
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
        from aekit.train import train as train_run

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
    from aekit.sources import check_shape

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
    from aekit.data import packed_val_split

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


# --- runs -------------------------------------------------------------------------


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
        from aekit.recipe import read_config

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


# --- export and bench -------------------------------------------------------------


def export(
    run_or_path=None,
    formats="onnx",
    quantize: str | None = None,
    *,
    parts=EXPORT_PARTS,
    opset: int | None = None,
    calibration_samples: int = 512,
    min_agreement_db: float | None = None,
    output: str | os.PathLike | None = None,
    check: bool = True,
    quiet: bool = True,
    on_file=None,
):
    """Exports a finished run's encoder and decoder and checks each file against Keras on the run's images.

    Args:
        run_or_path: an aekit.Run, a run folder, or None for the newest finished run under runs/.
        formats: "onnx", "tflite", "savedmodel", "all", or a tuple of them.
        quantize: None (float32), "fp16" (tflite) or "int8" (onnx, tflite; calibrated on training images).
        parts: ("encoder", "decoder"), or "all" (adds the autoencoder).
        opset: ONNX opset, 13-18 (None: 17).
        calibration_samples: training images that calibrate int8 ranges.
        min_agreement_db: a file passes when its reconstructions agree with Keras' to this PSNR (None:
            float32 60, fp16 40, int8 30).
        output: the export folder (None: <run>/export).
        check: raise ExportError when a file failed its check (False: return it in the result).
        quiet: keep the converters' and TensorFlow's output out of the caller's.
        on_file: called with each aekit.manifest.FileEntry as it is done.

    Returns:
        aekit.export.ExportResult: `.output` (the folder), `.entries` (one FileEntry per file: file,
        status "passed"/"failed", parity, bytes, reason), `.failed`.

    Raises:
        ExportError: with check=True, a file that failed its check; `.result` holds every entry.
        InputError, RunFolderError: bad options, no finished run.
    """
    with _python_errors(EXPORT_FLAGS), _Quiet(quiet):
        from aekit.export import DEFAULT_OPSET, ExportOptions, export_run

        options = ExportOptions.from_text(
            _comma_text("formats", formats),
            _comma_text("parts", parts),
            "none" if quantize is None else str(quantize),
            DEFAULT_OPSET if opset is None else opset,
            calibration_samples,
            min_agreement_db,
            Path(output) if output is not None else None,
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
    model: str | os.PathLike | None = None,
    dataset: str | None = None,
    output: str | os.PathLike | None = None,
    quiet: bool = True,
    on_row=None,
):
    """Measures throughput, latency and reconstruction quality of a run's exports (and of Keras).

    A run with nothing exported is exported first (float32 and int8 ONNX and TFLite), as `aekit bench` does.

    Args:
        run_or_path: an aekit.Run, a run folder, or None for the newest finished run (or the run of `model`).
        batch_sizes: the batch sizes to time, e.g. (1, 64).
        seconds: timed seconds per row, after `warmup` runs; `runs` times that many runs instead.
        threads: CPU threads for the runtimes (None: the physical cores).
        parts: any of "encoder", "decoder", "roundtrip".
        device: "auto", "cuda" or "cpu"; allow_fallback accepts the CPU when CUDA does not run.
        min_psnr: rows whose round-trip PSNR is below this are marked "quality below floor".
        quality_images: score only the first N held-out images (None: all).
        include_keras: add the Keras baseline rows.
        model: one exported .onnx/.tflite file to benchmark instead of the run's exports.
        dataset: held-out images for quality (None: the run's validation split).
        output: the folder for bench.json, bench.csv and bench.png (None: <run>/bench).

    Returns:
        aekit.bench.BenchResult: `.header` (devices, threads, data), `.rows` (one Row per runtime, part and
        batch size: status, images_per_sec, latency_ms_p50, psnr, ssim, reason), `.output`, `.to_json()`.
    """
    with _python_errors(BENCH_FLAGS), _Quiet(quiet):
        from aekit.bench import BenchOptions, bench_run, write_outputs
        from aekit.edge import check_output_folder

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
        )
        options.validate()  # every option checked before a run is loaded or anything is exported
        if output is not None:
            check_output_folder(Path(output), "bench.json, bench.csv and bench.png", "--output")
        run_dir = _finished_run(run_or_path) if run_or_path is not None or model is None else None
        result = bench_run(run_dir, options, model=Path(model) if model is not None else None, dataset=dataset, on_row=on_row)
        folder = Path(output) if output is not None else Path(result.header["run"]) / "bench"
        write_outputs(result, folder)
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


# --- quiet calls ------------------------------------------------------------------


class _Quiet:
    """Keeps TensorFlow's native logs (fds 1 and 2), Python warnings, warning logs and prints out of the caller's output.

    The file descriptors are the process's, so TensorFlow's C++ notices go too; `speaking()` lets the
    caller's callback print in between. TF_CPP_MIN_LOG_LEVEL=3 is set (when unset) before TensorFlow
    starts, as the CLI does. Disabled (quiet=False), it changes nothing.
    """

    def __init__(self, enabled: bool = True):
        self.enabled = bool(enabled)
        self.depth = 0

    def __enter__(self) -> _Quiet:
        if not self.enabled:
            return self
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        self._flush()
        self.saved_fds = [os.dup(1), os.dup(2)]
        self.devnull_fd = os.open(os.devnull, os.O_WRONLY)
        self.devnull = open(os.devnull, "w")  # noqa: SIM115  (closed in __exit__)
        self.streams = sys.stdout, sys.stderr
        self.levels = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
        self.warnings = warnings.catch_warnings()
        self.warnings.__enter__()
        warnings.simplefilter("ignore")
        self._silence()
        return self

    def __exit__(self, *exc) -> None:
        if not self.enabled:
            return
        self._speak()
        self.warnings.__exit__(*exc)
        for name, level in self.levels.items():
            logging.getLogger(name).setLevel(level)
        for fd in (*self.saved_fds, self.devnull_fd):
            os.close(fd)
        self.devnull.close()

    @contextlib.contextmanager
    def speaking(self):
        """The caller's own output back for a moment (a progress callback)."""
        if not self.enabled:
            yield
            return
        self._speak()
        try:
            yield
        finally:
            self._silence()

    def _silence(self) -> None:
        self._flush()
        os.dup2(self.devnull_fd, 1)
        os.dup2(self.devnull_fd, 2)
        sys.stdout = sys.stderr = self.devnull

    def _speak(self) -> None:
        self._flush()
        os.dup2(self.saved_fds[0], 1)
        os.dup2(self.saved_fds[1], 2)
        sys.stdout, sys.stderr = self.streams

    @staticmethod
    def _flush() -> None:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()


class _Speaking:
    """A TrainCallback passed on with the caller's output back while each of its methods (on_*) runs."""

    def __init__(self, callback, quiet: _Quiet):
        self.callback, self.quiet = callback, quiet

    def __getattr__(self, event: str):
        if not event.startswith("on_"):
            raise AttributeError(event)
        method = getattr(self.callback, event, None)
        if method is None:
            return lambda *args, **kwargs: None  # a callback needs only the methods it uses

        def call(*args, **kwargs):
            with self.quiet.speaking():
                return method(*args, **kwargs)

        return call


# --- errors that speak Python -----------------------------------------------------


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


# The CLI flag of every option this API exposes, and its keyword here (train's; export and bench add theirs).
TRAIN_FLAGS = {
    **{_flag(name): name for name in (*RECIPE_KEYWORDS, "epochs", "output", "name", "resume")},
    "--dataset": "images_or_path",
    "-o": "output",
}
EXPORT_FLAGS = {
    **TRAIN_FLAGS,
    "--format": "formats",
    "--quantize": "quantize",
    "--parts": "parts",
    "--opset": "opset",
    "--calibration-samples": "calibration_samples",
    "--min-agreement-db": "min_agreement_db",
    "--run": "run_or_path",
}
BENCH_FLAGS = {
    **EXPORT_FLAGS,
    "--batch-sizes": "batch_sizes",
    "--seconds": "seconds",
    "--runs": "runs",
    "--warmup": "warmup",
    "--threads": "threads",
    "--parts": "parts",
    "--device": "device",
    "--allow-fallback": "allow_fallback",
    "--min-psnr": "min_psnr",
    "--quality-images": "quality_images",
    "--no-keras": "include_keras",
    "--model": "model",
    "--dataset": "dataset",
}
SWITCHES = {"val_from_end": "True", "allow_fallback": "True", "include_keras": "False"}  # flags without a value
TUPLES = {"filters", "batch_sizes", "parts", "formats"}
WORDS = {  # the words a flag takes that are values, not the sentence going on
    "lr_schedule": {"cosine", "constant"},
    "precision": {"auto", "float32", "mixed_float16", "mixed_bfloat16"},
    "quantize": {"none", "fp16", "int8"},
    "device": {"auto", "cuda", "cpu"},
    "formats": {"onnx", "tflite", "savedmodel", "all"},
    "parts": {"encoder", "decoder", "autoencoder", "roundtrip", "all"},
}
_FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*|-o\b)(?:([ =])('[^']*'|\"[^\"]*\"|[^\s]+))?")
_NUMBER = re.compile(r"-?(\d+\.?\d*|\.\d+)(e[-+]?\d+)?")
_COMMAND = re.compile(r"\baekit (?:train|export|bench|encode|decode|reconstruct|score|data|anomaly)\b.*?(?=\.\s|\.$|;|\)|$)")
_RESUME_COMMAND = re.compile(r"\baekit train --resume (\S+?)(?=\.?$|\.\s|[;)])")


def translate(message: str, flags: dict, replace: dict | None = None) -> str:
    """The message with CLI flags as keyword arguments: "--batch-size 64" -> "batch_size=64", "--filters 32,64" ->
    "filters=(32, 64)", a flag without a value -> its keyword. Command lines the message suggests are kept."""
    for old, new in (replace or {}).items():
        message = message.replace(old, new)
    message = _RESUME_COMMAND.sub(lambda m: f"aekit.train(resume={m.group(1)!r})", message)
    pieces, last = [], 0
    for command in _COMMAND.finditer(message):
        pieces += [_translate_flags(message[last : command.start()], flags), command.group(0)]
        last = command.end()
    return "".join([*pieces, _translate_flags(message[last:], flags)])


def _translate_flags(text: str, flags: dict) -> str:
    def one(match: re.Match) -> str:
        flag, gap, token = match.group(1), match.group(2), match.group(3)
        keyword = flags.get(flag)
        if keyword is None:
            return match.group(0)
        if keyword in SWITCHES:
            return f"{keyword}={SWITCHES[keyword]}" + (gap + token if token else "")
        if token is None:
            return keyword
        value, rest = _value(keyword, token)
        return f"{keyword}={value}{rest}" if value is not None else f"{keyword}{gap}{token}"

    return _FLAG.sub(one, text)


def _value(keyword: str, token: str) -> tuple[str | None, str]:
    """(the value as Python, what followed it) when `token` is the flag's value; (None, "") when it is a word."""
    if token[0] in "'\"":
        return token, ""
    core = token.rstrip(".,;:)")
    rest = token[len(core) :]
    if core and "," in core and all(_NUMBER.fullmatch(part) for part in core.split(",")):
        parts = core.split(",")
        return "(" + ", ".join(parts) + ("," if len(parts) == 1 else "") + ")", rest
    if _NUMBER.fullmatch(core):
        return (f"({core},)" if keyword in TUPLES and keyword != "parts" else core), rest
    words = [part for part in core.split(",") if part]
    if keyword in WORDS and words and all(word in WORDS[keyword] for word in words):
        return (repr(tuple(words)) if len(words) > 1 else repr(core)), rest
    if "/" in core or core.startswith(("~", ".")) or core.endswith((".npz", ".npy", ".onnx", ".tflite")):
        return repr(core), rest
    return None, ""


# Which kind of error the library raised, told from the function that raised it: (module, function) or (module, "*").
ERROR_KINDS = {
    ("aekit.runs", "new_run_dir"): InputError,
    ("aekit.runs", "*"): RunFolderError,
    ("aekit.recipe", "read_config"): RunFolderError,
    ("aekit.recipe", "plan_run"): RunFolderError,
    ("aekit.recipe", "*"): InputError,
    ("aekit.train", "_restore"): RunFolderError,
    ("aekit.train", "_check_batch"): InputError,
    ("aekit.export", "load_run"): RunFolderError,
    ("aekit.export", "_previous_export"): RunFolderError,
    ("aekit.export", "plan"): InputError,
    ("aekit.export", "from_text"): InputError,
    ("aekit.bench", "validate"): InputError,
    ("aekit.bench", "from_text"): InputError,
    ("aekit.bench", "bench_run"): InputError,
    ("aekit.manifest", "export_format"): InputError,
    ("aekit.runtimes", "check_threads"): InputError,
    ("aekit.runtimes", "check_device"): InputError,
    ("aekit.edge", "check_output_folder"): InputError,
    ("aekit.data", "*"): InputError,
    ("aekit.sources", "*"): InputError,
    ("aekit.pixels", "*"): InputError,
    ("aekit.splits", "*"): InputError,
    ("aekit.packed", "*"): InputError,
}


def error_kind(exc: AekitError) -> type[AekitError]:
    """The AekitError subclass for `exc`, from the aekit function that raised it (AekitError when none fits)."""
    if type(exc) is not AekitError:
        return type(exc)
    raiser, tb = None, exc.__traceback__
    while tb is not None:
        module = tb.tb_frame.f_globals.get("__name__", "")
        if module.startswith("aekit.") and module not in ("aekit.api", "aekit.errors"):
            raiser = (module, tb.tb_frame.f_code.co_name)
        tb = tb.tb_next
    if raiser is None:
        return InputError  # raised by this module's own checks of the arguments
    return ERROR_KINDS.get(raiser) or ERROR_KINDS.get((raiser[0], "*"), AekitError)


@contextlib.contextmanager
def _python_errors(flags: dict, replace: dict | None = None):
    """Re-raises AekitError as its kind, the message naming keyword arguments instead of flags."""
    try:
        yield
    except AekitError as exc:
        message = translate(str(exc), flags, replace)
        kind = error_kind(exc)
        if kind is type(exc):
            exc.args = (message, *exc.args[1:])
            raise
        raise kind(message).with_traceback(exc.__traceback__) from None
