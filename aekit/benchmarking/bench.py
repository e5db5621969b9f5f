"""Benchmark exported encoders/decoders: throughput, latency and reconstruction quality per runtime.

Each row is one (runtime, precision, device, part, batch size): warm-up runs, then
timed runs for a duration or a count, giving images/s and latency percentiles.
Quality (MSE, PSNR, SSIM of encoder -> decoder on held-out images) is measured
once per (runtime, precision) and shown on its rows. A row that cannot run is a
failed row with its reason; the table never crashes as a whole.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from aekit.benchmarking.quality import _quality, _quality_header, ssim_window
from aekit.core import runs
from aekit.core.manifest import MANIFEST, FileEntry, Manifest, export_format, format_of_file
from aekit.edge.runtimes import NoCudaError, check_threads, default_threads, open_runner
from aekit.edge.runtimes import no_cuda_message as _no_cuda_message
from aekit.errors import AekitError
from aekit.lazy import pyplot, tf

if TYPE_CHECKING:
    from aekit.benchmarking.quality import Quality


PARTS = ("encoder", "decoder", "roundtrip")
DEVICES = ("auto", "cuda", "cpu")
MAX_SECONDS = 3600.0  # per batch size and part: a benchmark that would run for hours is a typo
KERAS = "keras"
STATUS_PASSED, STATUS_LOW, STATUS_FAILED = "passed", "quality below floor", "failed"
OUTPUT_FILES = ("bench.json", "bench.csv", "bench.png")
UNLISTED = "unlisted, not checked"  # Row.file_check of a --model file its manifest does not vouch for


@dataclass
class BenchOptions:
    device: str = "auto"
    allow_fallback: bool = False
    batch_sizes: tuple[int, ...] = (1, 8, 64, 256)
    seconds: float = 1.0
    runs: int | None = None
    warmup: int = 3
    threads: int | None = None
    parts: tuple[str, ...] = PARTS
    min_psnr: float = 15.0
    quality_images: int | None = None  # None: the whole held-out split
    include_keras: bool = True

    @classmethod
    def from_text(
        cls,
        batch_sizes: str,
        parts: str,
        device: str = "auto",
        allow_fallback: bool = False,
        seconds: float = 1.0,
        runs: int | None = None,
        warmup: int = 3,
        threads: int | None = None,
        min_psnr: float = 15.0,
        quality_images: int | None = None,
        include_keras: bool = True,
    ) -> BenchOptions:
        """Options from the command line's comma lists: batch sizes "1,8,64", parts "encoder,roundtrip"."""
        try:
            sizes = tuple(int(b) for b in batch_sizes.split(",") if b.strip())
        except ValueError:
            raise AekitError(f"--batch-sizes {batch_sizes!r} is not a comma list of integers, e.g. 1,8,64,256.") from None
        chosen = tuple(p.strip() for p in parts.split(",") if p.strip())
        return cls(device, allow_fallback, sizes, seconds, runs, warmup, threads, chosen, min_psnr, quality_images, include_keras)

    def validate(self) -> None:
        if self.device not in DEVICES:
            raise AekitError(f"--device {self.device!r} is not one of {', '.join(DEVICES)}.")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise AekitError("--batch-sizes must be positive integers, e.g. 1,8,64,256.")
        if not self.runs and not (math.isfinite(self.seconds) and 0 < self.seconds <= MAX_SECONDS):
            raise AekitError(
                f"--seconds must be a number of seconds between 0 and {MAX_SECONDS:g} (or give --runs N), got {self.seconds}."
            )
        if self.warmup < 0:
            raise AekitError(f"--warmup must be 0 or more, got {self.warmup}.")
        if not math.isfinite(self.min_psnr):
            raise AekitError(f"--min-psnr must be a number of dB, e.g. 15, got {self.min_psnr}.")
        if self.runs is not None and self.runs < 1:
            raise AekitError("--runs must be at least 1.")
        bad = [p for p in self.parts if p not in PARTS]
        if bad or not self.parts:
            raise AekitError(f"--parts {','.join(bad)}: expected a comma list of {', '.join(PARTS)}.")
        if self.quality_images is not None and self.quality_images < 1:
            raise AekitError("--quality-images must be at least 1.")
        check_threads(self.threads)


@dataclass
class Target:
    """One runtime + precision to benchmark: files (or Keras models) for encoder and decoder."""

    runtime: str
    precision: str
    files: dict  # part -> Path (encoder/decoder), or Keras models for the baseline
    format: str
    error: str | None = None  # known broken before opening: every row fails with this reason
    file_check: str | None = None  # copied onto every row: UNLISTED for a file no manifest entry vouches for
    # part -> why that file cannot be benchmarked (failed at export, missing, changed since). Its rows
    # and the round trip fail with the reason; the other part still runs, with Keras as its partner.
    failed_parts: dict = field(default_factory=dict)


@dataclass
class Row:
    runtime: str
    format: str
    precision: str
    device: str
    provider: str
    part: str
    batch_size: int
    threads: int
    status: str = STATUS_FAILED
    reason: str | None = None
    images_per_sec: float | None = None
    latency_ms_mean: float | None = None
    latency_ms_p50: float | None = None
    latency_ms_p90: float | None = None
    latency_ms_p99: float | None = None
    timed_runs: int = 0
    session_seconds: float | None = None
    file_bytes: int | None = None
    rss_mb: float | None = None
    mse: float | None = None
    psnr: float | None = None
    ssim: float | None = None
    # The Keras model that stood in for the other part when this row's quality was measured
    # ("keras decoder"): its file failed, or only one file was benchmarked (--model). None: no stand-in.
    quality_partner: str | None = None
    quality_note: str | None = None  # why a figure is missing (e.g. SSIM on images too small), or how it was measured
    # UNLISTED when the file under test is not the one a manifest entry vouches for (bench --model FILE --unlisted).
    file_check: str | None = None


@dataclass
class BenchResult:
    header: dict
    rows: list[Row] = field(default_factory=list)
    output: Path | None = None

    def to_json(self) -> dict:
        return {"header": self.header, "rows": [asdict(r) for r in self.rows]}


def targets_from_manifest(export_dir: Path, partners: dict | None = None) -> list[Target]:
    """Every ONNX/TFLite encoder+decoder pair in an export folder, grouped by format and precision.

    Args:
        export_dir: a folder written by aekit export.
        partners: Keras "encoder"/"decoder" models that stand in for a part whose file cannot run,
            so the other part is still measured. Without them such a target fails as a whole.
    """
    manifest = Manifest.load(export_dir, verify=False)  # the schema; each file is checked below, per target
    groups: dict[tuple[str, str], Target] = {}
    for entry in manifest.files:
        fmt = export_format(entry.format)
        if not fmt.edge or entry.role not in ("encoder", "decoder"):
            continue
        key = (fmt.name, entry.precision)
        target = groups.setdefault(key, Target(fmt.runtime, entry.precision, {}, fmt.name))
        problem = entry.problem(export_dir)
        if problem:
            target.failed_parts[entry.role] = f"{problem}; re-export it: {_export_command(*key)}"
        else:
            target.files[entry.role] = export_dir / entry.file
    for (fmt, precision), target in groups.items():
        for role in ("encoder", "decoder"):
            if role not in target.files and role not in target.failed_parts:
                target.failed_parts[role] = (
                    f"no {role} was exported for {fmt} {precision}; export it: {_export_command(fmt, precision)}"
                )
        usable = [role for role in ("encoder", "decoder") if role in target.files]
        if not usable or partners is None:
            if target.failed_parts:
                target.error = "; ".join(target.failed_parts[r] for r in sorted(target.failed_parts))
        else:
            for role in target.failed_parts:
                target.files[role] = partners[role]
    return [groups[key] for key in sorted(groups)]


def _export_command(fmt: str, precision: str) -> str:
    quantize = "none" if precision == "float32" else precision
    return f"aekit export --format {fmt} --quantize {quantize}"


def keras_target(models: dict) -> Target:
    return Target(KERAS, "float32", {"encoder": models["encoder"], "decoder": models["decoder"]}, "keras")


def run_bench(targets: list[Target], images: np.ndarray, options: BenchOptions, on_row=None) -> BenchResult:
    """Benchmarks every target on `images` (float32 in [0, 1], (N, H, W, C)).

    Args:
        targets: what to run (see targets_from_manifest, keras_target).
        images: held-out images; timing batches are cut from them, quality uses all.
        on_row: called with each finished Row (progress).
    """
    options.validate()
    threads = options.threads or default_threads()
    window = ssim_window(images.shape[1:3])
    result = BenchResult(header=_header(options, threads))
    result.header["quality"] = _quality_header(images, window)
    for target in targets:
        session = _open(target, options, threads)
        quality = _quality(session, images, window) if session.error is None else None
        for part in options.parts:
            for batch in options.batch_sizes:
                row = Row(
                    runtime=target.runtime,
                    format=target.format,
                    precision=target.precision,
                    device=session.device,
                    provider=session.provider,
                    part=part,
                    batch_size=batch,
                    threads=threads,
                    session_seconds=session.seconds,
                    file_bytes=session.bytes_for(part),
                    rss_mb=session.rss_mb,
                    file_check=target.file_check,
                )
                failed = _failed_part_reason(target, part)
                if failed or session.error:
                    row.reason = failed or session.error  # a failed file's own reason first, not its target's
                else:
                    _time_row(row, session, part, images, batch, options)
                    if row.reason is None:  # only a row that ran shows quality figures
                        _set_quality(row, target, part, quality)
                        below = row.psnr is not None and row.psnr < options.min_psnr
                        row.status = STATUS_LOW if below else STATUS_PASSED
                        if below:
                            row.reason = f"PSNR {row.psnr:.1f} dB < --min-psnr {options.min_psnr:g}"
                result.rows.append(row)
                if on_row:
                    on_row(row)
    result.rows.sort(key=lambda r: (PARTS.index(r.part), r.batch_size, r.status != STATUS_PASSED, -(r.images_per_sec or 0)))
    return result


def check_outputs(folder: Path, overwrite: bool = False) -> None:
    """AekitError when `folder` already holds bench.json, bench.csv or bench.png and `overwrite` is not set.

    A run's own <run>/bench folder is bench's: callers pass overwrite=True for it. Any other folder is the
    user's, whose files are replaced only when asked (--overwrite). Checked before benchmarking, and again
    just before writing.
    """
    held = [name for name in OUTPUT_FILES if (Path(folder) / name).exists()]
    if held and not overwrite:
        raise AekitError(
            f"--output {folder} already holds {', '.join(held)}; bench will not replace them. "
            "Pass --overwrite to replace them, or --output a new folder."
        )


def write_outputs(result: BenchResult, folder: Path, overwrite: bool = True) -> None:
    """bench.json, bench.csv and bench.png (encoder throughput against batch size per runtime).

    Args:
        overwrite: replace those files if `folder` holds them (False: AekitError, see check_outputs).
    """
    import json

    from aekit.edge.outputs import OutputClaim

    folder = Path(folder)
    with OutputClaim(folder):  # one writer at a time: a second bench into this folder fails at once
        check_outputs(folder, overwrite)
        folder.mkdir(parents=True, exist_ok=True)
        runs.write_text(folder / "bench.json", json.dumps(result.to_json(), indent=2) + "\n")
        buffer = io.StringIO()
        names = list(asdict(result.rows[0]).keys()) if result.rows else [f for f in Row.__dataclass_fields__]
        writer = csv.DictWriter(buffer, fieldnames=names)
        writer.writeheader()
        writer.writerows(asdict(r) for r in result.rows)
        runs.write_text(folder / "bench.csv", buffer.getvalue())
        _plot(result, folder / "bench.png")
    result.output = folder


def _set_quality(row: Row, target: Target, part: str, quality: Quality | None) -> None:
    """The target's round-trip figures on a row that ran, naming the Keras model that stood in for a part, if any."""
    if quality is None:
        return
    row.mse, row.psnr, row.ssim = quality.mse, quality.psnr, quality.ssim
    notes = [quality.ssim_note] if quality.ssim_note else []
    if target.runtime != KERAS:
        stand_ins = [p for p in ("encoder", "decoder") if p != part and not isinstance(target.files.get(p), Path)]
        if stand_ins:
            row.quality_partner = " and ".join(f"keras {p}" for p in stand_ins)
            why = "; ".join(f"{p} file failed" for p in stand_ins if p in target.failed_parts) or "only this file is benchmarked"
            notes.insert(0, f"round trip through the Keras {' and '.join(stand_ins)} ({why})")
    row.quality_note = "; ".join(notes) or None


def _failed_part_reason(target: Target, part: str) -> str | None:
    """Why this part's rows cannot run: its file failed (the round trip needs both files)."""
    parts = sorted(target.failed_parts) if part == "roundtrip" else [part] if part in target.failed_parts else []
    return "; ".join(target.failed_parts[p] for p in parts) or None


class _OpenTarget:
    """Open runners for one target's encoder and decoder, with what it cost to open them."""

    def __init__(self, target: Target):
        self.target = target
        self.runners: dict = {}
        self.device, self.provider = "cpu", "-"
        self.seconds = None
        self.rss_mb = None
        self.error: str | None = None

    def bytes_for(self, part: str) -> int | None:
        files = self.target.files
        paths = [files.get("encoder"), files.get("decoder")] if part == "roundtrip" else [files.get(part)]
        if any(not isinstance(p, Path) or not p.exists() for p in paths):
            return None
        return sum(p.stat().st_size for p in paths)

    def run(self, part: str, batch: np.ndarray) -> np.ndarray:
        if part == "roundtrip":
            return self.runners["decoder"](self.runners["encoder"](batch))
        return self.runners[part](batch)


def _rss_mb() -> float | None:
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:
        return None


def _open(target: Target, options: BenchOptions, threads: int) -> _OpenTarget:
    """Opens a runner per part: a file by its runtime, or a Keras model (baseline, or a file's missing partner)."""
    session = _OpenTarget(target)
    before, started = _rss_mb(), time.perf_counter()
    try:
        if target.error:
            raise ValueError(target.error)
        missing = {"encoder", "decoder"} - set(target.files)
        if missing:
            raise ValueError(f"no {' or '.join(sorted(missing))} file for {target.format} {target.precision}")
        devices = []
        for part, item in target.files.items():
            if not isinstance(item, Path):
                session.runners[part] = _keras_callable(item)
                devices.append((*_keras_device(), "TensorFlow sees no GPU"))
            else:
                runner = open_runner(item, "cpu" if options.device == "cpu" else "cuda", threads, allow_fallback=True)
                session.runners[part] = runner.run
                devices.append((runner.device, runner.providers[0], f"{runner.runtime} runs on {', '.join(runner.providers)}"))
        # Report the device of the file under test (the first Path), else Keras'. Only exported
        # files are held to --device cuda; the Keras baseline runs wherever TensorFlow can.
        is_file = [isinstance(item, Path) for item in target.files.values()]
        files_first = sorted(range(len(devices)), key=lambda i: not is_file[i])
        session.device, session.provider, why = devices[files_first[0]]
        if options.device == "cuda" and is_file[files_first[0]] and session.device != "cuda" and not options.allow_fallback:
            raise NoCudaError(_no_cuda_message(why))
        session.seconds = time.perf_counter() - started
    except NoCudaError:
        raise
    except Exception as exc:  # a broken file becomes a failed row with the reason
        session.error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    after = _rss_mb()
    session.rss_mb = (after - before) if before is not None and after is not None else None
    return session


def _keras_callable(model):
    fn = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    return lambda batch: fn(batch).numpy()


def _keras_device() -> tuple[str, str]:
    gpus = tf.config.list_logical_devices("GPU")
    return ("cuda", gpus[0].name) if gpus else ("cpu", "TensorFlow CPU")


def _batch_of(images: np.ndarray, size: int) -> np.ndarray:
    reps = -(-size // len(images))
    return np.concatenate([images] * reps)[:size] if reps > 1 else images[:size]


def _time_row(row: Row, session: _OpenTarget, part: str, images: np.ndarray, batch: int, options: BenchOptions) -> None:
    data = _batch_of(images, batch)
    if part == "decoder":
        try:
            data = session.runners["encoder"](data)
        except Exception as exc:
            row.reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            return
    try:
        for _ in range(options.warmup):
            session.run(part, data)
        latencies = []
        deadline = time.perf_counter() + options.seconds
        while True:
            started = time.perf_counter()
            session.run(part, data)
            latencies.append(time.perf_counter() - started)
            if options.runs is not None:
                if len(latencies) >= options.runs:
                    break
            elif time.perf_counter() >= deadline and len(latencies) >= 3:
                break
    except Exception as exc:
        row.reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        return
    ms = np.asarray(latencies) * 1000.0
    row.timed_runs = len(ms)
    row.images_per_sec = batch * len(ms) / (ms.sum() / 1000.0)
    row.latency_ms_mean = float(ms.mean())
    row.latency_ms_p50, row.latency_ms_p90, row.latency_ms_p99 = (float(v) for v in np.percentile(ms, [50, 90, 99]))


def _header(options: BenchOptions, threads: int) -> dict:
    from aekit.core.system import system_info

    facts = system_info()
    return {
        "cpu": facts["cpu"],
        "cpu_count": facts["cpu_count"],
        "gpus": facts["gpus"],
        "onnxruntime_available_providers": facts["onnxruntime_available_providers"],
        "versions": {"aekit": facts["aekit"], **{k: v for k, v in facts["packages"].items() if v}},
        "options": {**asdict(options), "threads": threads},
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def _plot(result: BenchResult, path: Path) -> None:
    fig, ax = pyplot.subplots(figsize=(6.5, 4))
    series: dict[str, list[tuple[int, float]]] = {}
    part = next((p for p in PARTS if any(r.part == p for r in result.rows)), "encoder")
    for row in result.rows:
        if row.part == part and row.images_per_sec:
            series.setdefault(f"{row.runtime} {row.precision} ({row.provider})", []).append((row.batch_size, row.images_per_sec))
    for label, points in sorted(series.items()):
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel(f"{part} images/s")
    ax.grid(True, alpha=0.3)
    if series:
        ax.legend(fontsize=7)
    fig.tight_layout()
    with runs.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    pyplot.close(fig)


DEFAULT_EXPORTS = (("onnx", "none"), ("tflite", "none"), ("onnx", "int8"), ("tflite", "int8"))


def bench_run(
    run_dir: Path | None,
    options: BenchOptions,
    model: Path | None = None,
    dataset: str | None = None,
    on_row=None,
    on_export=None,
    unlisted: bool = False,
) -> BenchResult:
    """Benchmarks a run's exports (exporting float32 and int8 ONNX/TFLite first if none exist), or one file.

    Args:
        run_dir: a finished run (None with `model`).
        model: one exported .onnx/.tflite file; its partner part comes from Keras
            (the run named in the manifest beside it) for quality figures.
        dataset: held-out images to use instead of the run's validation split.
        on_export: called with each (format, quantize) exported because nothing was; the header's
            "exported_now" lists them ("onnx:int8") and "exported_now_files" which files each kept or failed.
        unlisted: benchmark a `model` that the manifest.json beside it does not list (or lists with another
            size or sha256); its rows say Row.file_check == UNLISTED. Without it such a file is refused.

    Returns:
        BenchResult; header["warnings"] holds one line per thing the reader must know (an export of older weights).
    """
    from aekit.data.loading import load_data
    from aekit.exporting.export import ExportOptions, export_run, load_run

    options.validate()
    exported, exported_files = [], {}
    if model is not None:
        model = Path(model)
        fmt = format_of_file(model)
        if not model.is_file() or fmt is None or not fmt.edge:
            raise AekitError(f"--model {model}: expected an existing .onnx or .tflite file (see aekit export).")
        manifest, entry, problem = _listing(model)
        if problem and not unlisted:
            raise AekitError(
                f"--model {model}: {problem}, so nothing vouches that it is what aekit exported and checked. "
                "Re-export it with aekit export, or pass --unlisted to benchmark it unchecked."
            )
        run_dir = run_dir or (Path(manifest.run) if manifest and manifest.run else None)
        if run_dir is None or not runs.is_finished(run_dir):
            raise AekitError(f"--model {model}: no manifest.json beside it names a finished run. Pass --run too.")
        loaded = load_run(run_dir)
        role, precision = (entry.role, entry.precision) if entry else _role_and_precision(model, fmt)
        if role not in ("encoder", "decoder"):
            raise AekitError(f"--model {model} is an {role}; bench takes encoder or decoder files.")
        files = {"encoder": loaded.models["encoder"], "decoder": loaded.models["decoder"], role: model}
        targets = [Target(fmt.runtime, precision, files, fmt.name, file_check=UNLISTED if problem else None)]
        # Only the file's own part is timed (the round trip would mostly time the Keras partner); its quality still shows.
        options = dataclasses.replace(options, parts=(role,))
        stale = _stale_export(manifest, run_dir, model.parent) if manifest and not problem else None
    else:
        loaded = load_run(run_dir)
        export_dir = Path(run_dir) / "export"
        if not (export_dir / MANIFEST).is_file() or not targets_from_manifest(export_dir, loaded.models):
            for fmt, quantize in DEFAULT_EXPORTS:
                done = export_run(run_dir, ExportOptions(formats=(fmt,), quantize=quantize))
                exported.append(f"{fmt}:{quantize}")
                exported_files[f"{fmt}:{quantize}"] = {
                    "passed": [e.file for e in done.entries if e.status == "passed"],
                    "failed": [e.file for e in done.entries if e.status != "passed"],
                }
                if on_export:
                    on_export(fmt, quantize)
        targets = targets_from_manifest(export_dir, loaded.models)
        if options.include_keras:
            targets.insert(0, keras_target(loaded.models))
        stale = _stale_export(Manifest.load(export_dir, verify=False), run_dir, export_dir)
    if dataset is not None:
        splits = load_data(dataset, loaded.splits.val_split, pixel_max=loaded.splits.scaling.pixel_max)  # the run's units
        source = splits.source
    else:
        splits, source = loaded.splits, f"{loaded.splits.source} (the run's validation split)"
    images = splits.scaling.to_model_numpy(splits.head("val", options.quality_images))
    if images.shape[1:] != tuple(loaded.config["model"]["input_shape"]):
        raise AekitError(
            f"--dataset images are {images.shape[1:]}, the model takes {tuple(loaded.config['model']['input_shape'])}. "
            "Pass data of the run's image shape."
        )
    result = run_bench(targets, images, options, on_row)
    result.header.update(
        {
            "run": str(run_dir),
            "images": len(images),
            "data": source,
            "exported_now": exported,
            "exported_now_files": exported_files,
            "train_val_mse": runs.read_json(Path(run_dir) / runs.METRICS).get("final_val_mse"),
            "export_weights": stale,
            "warnings": [stale["warning"]] if stale else [],
        }
    )
    return result


def _listing(model: Path) -> tuple[Manifest | None, FileEntry | None, str | None]:
    """The manifest beside `model`, its entry, and why that entry does not vouch for the file (None when it does)."""
    if not (model.parent / MANIFEST).is_file():
        return None, None, f"no {MANIFEST} beside it lists it"
    manifest = Manifest.load(model.parent, verify=False)
    entry = manifest.entry(model.name)
    if entry is None:
        return manifest, None, f"{model.parent / MANIFEST} does not list {model.name}"
    return manifest, entry, entry.problem(model.parent)


def _role_and_precision(model: Path, fmt) -> tuple[str, str]:
    """What an unlisted file's name says it is, as aekit export names files (encoder_int8.onnx)."""
    for role in ("encoder", "decoder", "autoencoder"):
        for precision in fmt.precisions:
            if model.name == fmt.file_name(role, precision):
                return role, precision
    return ("decoder" if model.name.startswith("decoder") else "encoder"), "float32"


def _stale_export(manifest: Manifest, run_dir: Path, export_dir: Path) -> dict | None:
    """When the export was made from other weights than the run's now (it trained further since): what to say."""
    current = runs.read_json(Path(run_dir) / runs.METRICS).get("weights_sha256")
    made_from = manifest.run_weights_sha256
    if not current or not made_from or current == made_from:
        return None
    return {
        "export_weights_sha256": made_from,
        "run_weights_sha256": current,
        "warning": (
            f"the files in {export_dir} were exported from older weights of {run_dir} (sha256 {made_from[:12]}, the run's "
            f"are now {current[:12]}): their rows measure the old model, the Keras rows the current one. "
            f"Re-export: aekit export --run {run_dir}"
        ),
    }
