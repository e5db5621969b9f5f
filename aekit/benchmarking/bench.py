"""Benchmark exported encoders/decoders: throughput, latency and reconstruction quality per runtime.

Each row is one (runtime, precision, device, part, batch size): warm-up runs, then
timed runs for a duration or a count, giving images/s and latency percentiles.
Quality (MSE, PSNR, SSIM of encoder -> decoder on held-out images) is measured
once per (runtime, precision) and shown on its rows. A row that cannot run is a
failed row with its reason; the table never crashes as a whole.

It runs on the edge install too (no TensorFlow, no matplotlib): there it benchmarks the files already
exported, with the runtimes installed, and what it cannot do there (the Keras baseline, bench.png, an
OpenVINO that is not installed) is named once, with the reason, in header["absent"].
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

from aekit.benchmarking.quality import EDGE_INSTALL, _quality, _quality_header, held_out_images, ssim_by, ssim_window
from aekit.benchmarking.targets import (
    KERAS,
    UNLISTED,
    Target,
    keras_target,
    model_target,
    openvino_targets,
    targets_from_manifest,
)
from aekit.core import runs
from aekit.core.manifest import MANIFEST, Manifest
from aekit.core.metrics import mse_per_image, psnr_from_mse
from aekit.edge.runtimes import OPENVINO, NoCudaError, check_threads, default_threads, open_runner
from aekit.edge.runtimes import no_cuda_message as _no_cuda_message
from aekit.errors import AekitError
from aekit.lazy import keras, pyplot, tf

__all__ = ["KERAS", "UNLISTED", "Target", "keras_target", "targets_from_manifest", "BenchOptions", "Row", "BenchResult"]

if TYPE_CHECKING:
    from aekit.benchmarking.quality import Quality


PARTS = ("encoder", "decoder", "roundtrip")
DEVICES = ("auto", "cuda", "cpu")
MAX_SECONDS = 3600.0  # per batch size and part: a benchmark that would run for hours is a typo
STATUS_PASSED, STATUS_LOW, STATUS_FAILED = "passed", "quality below floor", "failed"
OUTPUT_FILES = ("bench.json", "bench.csv", "bench.png")
NO_TENSORFLOW = f"not benchmarked: no TensorFlow in this install ({EDGE_INSTALL}); it runs where aekit[full] is installed"
NO_MATPLOTLIB = "not drawn: no matplotlib in this install (pip install matplotlib draws it); bench.json and bench.csv hold it all"


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
    include_openvino: bool = True  # OpenVINO rows for the .onnx files, when openvino is installed

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
        include_openvino: bool = True,
    ) -> BenchOptions:
        """Options from the command line's comma lists: batch sizes "1,8,64", parts "encoder,roundtrip"."""
        try:
            sizes = tuple(int(b) for b in batch_sizes.split(",") if b.strip())
        except ValueError:
            raise AekitError(f"--batch-sizes {batch_sizes!r} is not a comma list of integers, e.g. 1,8,64,256.") from None
        chosen = tuple(p.strip() for p in parts.split(",") if p.strip())
        return cls(
            device,
            allow_fallback,
            sizes,
            seconds,
            runs,
            warmup,
            threads,
            chosen,
            min_psnr,
            quality_images,
            include_keras,
            include_openvino,
        )

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
    # Rows of a runtime that runs another runtime's files (openvino on the .onnx files): PSNR in dB of its round-trip
    # reconstructions against onnxruntime's on the same files (capped at 100). Below the bound the files were held
    # to at export (float32 60, int8 30), the row fails and says so. None for the other rows.
    agreement_db: float | None = None


@dataclass
class BenchResult:
    header: dict
    rows: list[Row] = field(default_factory=list)
    output: Path | None = None

    def to_json(self) -> dict:
        return {"header": self.header, "rows": [asdict(r) for r in self.rows]}


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
    result.header["ssim_by"] = ssim_by() if window else None
    referenced = {id(t.reference) for t in targets if t.reference is not None}
    qualities: dict[int, Quality | None] = {}
    for target in targets:
        session = _open(target, options, threads)
        quality = _quality(session, images, window) if session.error is None else None
        qualities[id(target)] = quality
        agreement, disagrees = _agreement(target, quality, qualities)
        if quality is not None and id(target) not in referenced:
            quality.reconstructions = None  # kept only while a later target is compared with it
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
                    agreement_db=agreement,
                )
                failed = _failed_part_reason(target, part)
                if failed or session.error:
                    row.reason = failed or session.error  # a failed file's own reason first, not its target's
                else:
                    _time_row(row, session, part, images, batch, options)
                    if row.reason is None and disagrees:  # it ran, but not what the files compute: no quality shown
                        row.reason = disagrees
                    elif row.reason is None:  # only a row that ran shows quality figures
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


def _agreement(target: Target, quality: Quality | None, qualities: dict) -> tuple[float | None, str | None]:
    """(agreement_db, why the target fails) of a target held to its reference's reconstructions (OpenVINO's to onnxruntime's)."""
    reference = qualities.get(id(target.reference)) if target.reference is not None else None
    if quality is None or reference is None or reference.reconstructions is None:
        return None, None
    agreement = float(psnr_from_mse(mse_per_image(reference.reconstructions, quality.reconstructions).mean()))
    bound = target.min_agreement_db
    if bound is None or agreement >= bound:
        return agreement, None
    files = " and ".join(sorted(p.name for r, p in target.files.items() if isinstance(p, Path) and not target.is_stand_in(r)))
    return agreement, (
        f"{target.runtime}'s round trip through {files} agrees with {target.reference.runtime}'s on the same files to only "
        f"{agreement:.1f} dB, below the {bound:g} dB the files were held to at export: {target.runtime} does not compute "
        f"what they compute, so no quality is shown; deploy these files with {target.reference.runtime}"
    )


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
        if not pyplot.available:  # the edge install: the table and the files, without the picture
            result.header.setdefault("absent", {})["bench.png"] = NO_MATPLOTLIB
            (folder / "bench.png").unlink(missing_ok=True)  # never leave an older run's picture beside new figures
        runs.write_text(folder / "bench.json", json.dumps(result.to_json(), indent=2) + "\n")
        buffer = io.StringIO()
        names = list(asdict(result.rows[0]).keys()) if result.rows else [f for f in Row.__dataclass_fields__]
        writer = csv.DictWriter(buffer, fieldnames=names)
        writer.writeheader()
        writer.writerows(asdict(r) for r in result.rows)
        runs.write_text(folder / "bench.csv", buffer.getvalue())
        if pyplot.available:
            _plot(result, folder / "bench.png")
    result.output = folder


def _set_quality(row: Row, target: Target, part: str, quality: Quality | None) -> None:
    """The target's round-trip figures on a row that ran, naming the stand-in (Keras model, float32 file) for a part, if any."""
    if quality is None:
        return
    row.mse, row.psnr, row.ssim = quality.mse, quality.psnr, quality.ssim
    notes = [quality.ssim_note] if quality.ssim_note else []
    stand_ins = [p for p in ("encoder", "decoder") if p != part and target.is_stand_in(p)]
    if stand_ins:
        labels = [target.partners[p] for p in stand_ins]
        row.quality_partner = " and ".join(labels)
        why = "; ".join(f"{p} file failed" for p in stand_ins if p in target.failed_parts) or "only this file is benchmarked"
        words = [f"the Keras {label.removeprefix(KERAS + ' ')}" if label.startswith(KERAS + " ") else label for label in labels]
        notes.insert(0, f"round trip through {' and '.join(words)} ({why})")
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
                runtime, device = OPENVINO if target.runtime == OPENVINO else None, "cpu" if options.device == "cpu" else "cuda"
                runner = open_runner(item, device, threads, allow_fallback=True, runtime=runtime)
                session.runners[part] = runner.run
                devices.append((runner.device, runner.providers[0], f"{runner.runtime} runs on {', '.join(runner.providers)}"))
        # Report the device of the file under test (the first Path), else Keras'. Only exported
        # files are held to --device cuda; the Keras baseline runs wherever TensorFlow can.
        is_file = [isinstance(item, Path) and not target.is_stand_in(part) for part, item in target.files.items()]
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
        "install": facts["install"],
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


def training_side() -> bool:
    """Whether this install has TensorFlow and Keras (the Keras baseline, exporting what is missing)."""
    return tf.available and keras.available


def openvino_installed() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("openvino") is not None
    except (ImportError, ValueError):
        return False


def absent_runtimes(options: BenchOptions, training: bool, keras_asked: bool = True) -> dict[str, str]:
    """What bench leaves out and why, one entry per runtime: header["absent"] (bench.png joins it when not drawn)."""
    absent = {}
    if keras_asked and not training:
        absent[KERAS] = NO_TENSORFLOW
    elif keras_asked and not options.include_keras:
        absent[KERAS] = "not benchmarked: --no-keras (include_keras=False)"
    if not options.include_openvino:
        absent[OPENVINO] = "not benchmarked: --no-openvino (include_openvino=False)"
    elif not openvino_installed():
        absent[OPENVINO] = "not benchmarked: not installed (pip install 'aekit[openvino]' adds its rows for the .onnx files)"
    elif options.device == "cuda":
        absent[OPENVINO] = "not benchmarked with --device cuda: aekit runs OpenVINO on its CPU plugin only"
    return absent


def bench_run(
    run_dir: Path | None,
    options: BenchOptions,
    model: Path | list[Path] | None = None,
    dataset: str | None = None,
    on_row=None,
    on_export=None,
    unlisted: bool = False,
) -> BenchResult:
    """Benchmarks a run's exports (exporting float32 and int8 ONNX/TFLite first if none exist), or named files.

    On the edge install (no TensorFlow) the files must be exported already; the Keras baseline is absent
    (header["absent"] says why), and quality is measured on files only.

    Args:
        run_dir: a finished run (None with `model`).
        model: one exported .onnx/.tflite file (or a list of one, or of an encoder and a decoder of one format).
            One file's partner part, for quality figures, is Keras (the run named in the manifest beside it), or
            on the edge install the float32 file of that part listed beside it.
        dataset: held-out images to use instead of the run's validation split.
        on_export: called with each (format, quantize) exported because nothing was; the header's
            "exported_now" lists them ("onnx:int8") and "exported_now_files" which files each kept or failed.
        unlisted: benchmark a `model` that the manifest.json beside it does not list (or lists with another
            size or sha256); its rows say Row.file_check == UNLISTED. Without it such a file is refused.

    Returns:
        BenchResult; header["warnings"] holds one line per thing the reader must know (an export of older weights),
        header["absent"] what was not benchmarked (or drawn) and why.
    """
    from aekit.core.recipe import read_config

    options.validate()
    training = training_side()
    exported, exported_files = [], {}
    if model is not None:
        paths = [Path(m) for m in ([model] if isinstance(model, (str, Path)) else model)]
        run_dir = runs.require_finished_run(run_dir) if run_dir is not None else None
        cache = {}

        def keras_models(found: Path) -> dict:  # the run the files' manifest names, loaded for its Keras partner part
            cache["run"] = _load_run(found)
            return cache["run"].models

        target, run_dir, manifest, parts, vouched = model_target(paths, unlisted, run_dir, keras_models if training else None)
        loaded = cache.get("run")
        targets = [target]
        if parts:  # one file: only its own part is timed (the round trip would mostly time its partner); its quality still shows
            options = dataclasses.replace(options, parts=parts)
        stale = _stale_export(manifest, run_dir, paths[0].parent) if manifest and vouched else None
        absent = absent_runtimes(options, training, keras_asked=False)
    else:
        read_config(run_dir)  # a damaged config is a one-line error before anything else
        loaded = _load_run(run_dir) if training else None
        export_dir = Path(run_dir) / "export"
        partners = loaded.models if loaded else None
        if not (export_dir / MANIFEST).is_file() or not targets_from_manifest(export_dir, partners):
            if not training:
                raise AekitError(
                    f"Nothing is exported in {export_dir} to benchmark, and this install has no TensorFlow to export it "
                    f"({EDGE_INSTALL}). Export on the training machine (aekit export --run {run_dir} --format onnx,tflite, "
                    "and --quantize int8) and copy the run here, or name exported files with --model."
                )
            from aekit.exporting.export import ExportOptions, export_run

            for fmt, quantize in DEFAULT_EXPORTS:
                done = export_run(run_dir, ExportOptions(formats=(fmt,), quantize=quantize))
                exported.append(f"{fmt}:{quantize}")
                exported_files[f"{fmt}:{quantize}"] = {
                    "passed": [e.file for e in done.entries if e.status == "passed"],
                    "failed": [e.file for e in done.entries if e.status != "passed"],
                }
                if on_export:
                    on_export(fmt, quantize)
        targets = targets_from_manifest(export_dir, partners)
        if options.include_keras and loaded:
            targets.insert(0, keras_target(loaded.models))
        stale = _stale_export(Manifest.load(export_dir, verify=False), run_dir, export_dir)
        absent = absent_runtimes(options, training)
    if OPENVINO not in absent:
        targets = openvino_targets(targets)
    images, source = held_out_images(Path(run_dir), loaded, dataset, options.quality_images, training)
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
            "absent": absent,
        }
    )
    return result


def _load_run(run_dir: Path):
    from aekit.exporting.export import load_run

    return load_run(run_dir)


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
