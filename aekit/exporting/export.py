"""Export: a run's encoder and decoder written as ONNX, TFLite or SavedModel, each checked against Keras.

Every file is kept only after its own runtime agreed with the Keras model on real images
(`Parity` in the manifest); the manifest (aekit.core.manifest) lists what was written and checked.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from aekit import __version__
from aekit.core import runs
from aekit.core.manifest import (
    ALL_FORMATS,
    EXPORT_NAME,
    FORMATS,
    MANIFEST,
    ROLES,
    FileEntry,
    Manifest,
    directory_size_and_hash,
    export_format,
    sha256_of,
)
from aekit.core.recipe import TrainConfig, read_config
from aekit.core.resources import FILE_LIMIT_FIXES, WHAT_RAN_OUT, resource_code
from aekit.edge.runtimes import KERNEL_NAMES, open_runner, run_batched
from aekit.errors import AekitError
from aekit.exporting import int8, micro, static
from aekit.exporting.parity import _Int8Checks, _keras_predict, _KerasReference, _parity, _parity_problem
from aekit.exporting.writers import INPUT_NAMES, _SavedModelRunner, _write_onnx, _write_savedmodel, _write_tflite
from aekit.lazy import keras

QUANTIZE = {"none": "float32", "fp16": "fp16", "int8": "int8"}
# The parity rule: an export passes when its round-trip reconstructions agree with Keras' to
# at least this PSNR (dB over the pixel range [0, 1]), per precision. It bounds only what the
# export adds, in pixel units, so it means the same whatever the model's own quality.
# 30 dB = RMS difference 0.032 (about 8 grey levels of 255): a well-made int8 file measures
# 38-46 dB here, the faulty ones seen (u8s8 saturation, per-tensor BatchNorm) 19-27 dB.
DEFAULT_MIN_AGREEMENT_DB = {"float32": 60.0, "fp16": 40.0, "int8": 30.0}
# tf2onnx 1.17 converts up to opset 18; 19 to 21 are converted at 18, then upgraded by onnx's version
# converter (writers._upgrade_opset). onnxruntime runs them all; int8 files need 19 or higher to run in
# onnx.reference.ReferenceEvaluator (it has no DequantizeLinear before opset 19).
DEFAULT_OPSET = 17
MAX_OPSET = 21
# Training images whose latents set the int8 code ranges (min/max per dimension).
LATENT_CALIBRATION_IMAGES = 10_000
IN_PROGRESS = ".aekit-export-in-progress"  # names the run while an export writes files; removed with the manifest written
# Write failures that are the machine's, not the file's: they stop the whole export (the previous one stays as it was)
# instead of marking one file failed. errno -> what ran out, as the error names it.
RESOURCE_ERRORS = {
    code: (what, FILE_LIMIT_FIXES.get(code, "Free space, or pass --output a folder on another disk"))
    for code, what in WHAT_RAN_OUT.items()
}
# How int8 files are made, recorded in each int8 manifest entry with the nodes kept in float (aekit.exporting.int8).
# Both hold their quality on AVX2-only x86, VNNI x86 and ARM alike (docs/benchmarks.md, "int8 on every CPU").
QUANTIZATION_SCHEMES = {
    "onnx": {
        "scheme": "onnxruntime quantize_static, QDQ, MinMax calibration on training images, sensitive nodes "
        "kept float (nodes_to_exclude)",
        "activations": "uint8, per tensor",
        "weights": "int8, per channel, 7-bit range (reduce_range)",
        "why": "x86 CPUs without VNNI (AVX2 only) multiply u8 x s8 pairs into saturating int16 "
        "(vpmaddubsw); 7-bit weights cannot saturate, so the file computes the same everywhere",
    },
    "tflite": {
        "scheme": "TFLiteConverter full-integer, representative training images, sensitive nodes kept float "
        "(the quantizer's denylist)",
        "activations": "int8, per tensor",
        "weights": "int8, per channel",
        "batchnorm": "as a per-channel 1x1 depthwise convolution",
        "why": "BatchNorm after LeakyReLU cannot fold into the convolution; left as Mul/Add, its "
        "per-channel factors get ONE int8 scale and small channels lose most of their precision",
    },
}


@dataclass
class ExportOptions:
    """What to export. `formats` from FORMATS; `quantize` a key of QUANTIZE."""

    formats: tuple[str, ...] = ("onnx",)
    quantize: str = "none"
    parts: tuple[str, ...] = ("encoder", "decoder")
    opset: int = DEFAULT_OPSET
    calibration_samples: int = 512
    parity_samples: int = 1000
    min_agreement_db: float | None = None  # None: DEFAULT_MIN_AGREEMENT_DB per precision
    output: Path | None = None
    int8_float: str | tuple[str, ...] = "auto"  # int8: "auto", "none", or node names kept float (aekit.exporting.int8)
    sensitivity: bool = False  # int8: measure every node's sensitivity, recorded in the manifest
    static_batch: int | None = None  # onnx/tflite files of this fixed batch (aekit.exporting.static); None: dynamic

    @classmethod
    def from_text(
        cls,
        formats: str = "onnx",
        parts: str = "encoder,decoder",
        quantize: str = "none",
        opset: int = DEFAULT_OPSET,
        calibration_samples: int = 512,
        min_agreement_db: float | None = None,
        output: Path | None = None,
        int8_float: str = "auto",
        sensitivity: bool = False,
        static_batch: int | None = None,
    ) -> ExportOptions:
        """Options from the command line's comma lists: formats "onnx,tflite" or "all", parts "encoder,decoder" or "all"."""
        chosen = ALL_FORMATS if formats.strip() == "all" else tuple(f.strip() for f in formats.split(",") if f.strip())
        roles = ROLES if parts.strip() == "all" else tuple(p.strip() for p in parts.split(",") if p.strip())
        bad = [r for r in roles if r not in ROLES]
        if bad or not roles:
            raise AekitError(f"--parts {parts!r}: expected a comma list of {', '.join(ROLES)}, or all.")
        return cls(
            chosen,
            quantize,
            roles,
            opset,
            calibration_samples,
            min_agreement_db=min_agreement_db,
            output=output,
            int8_float=int8.parse_float_nodes(int8_float),
            sensitivity=sensitivity,
            static_batch=static_batch,
        )

    def plan(self) -> list[tuple[str, str, str]]:
        """(role, format, precision) for every file, or AekitError for impossible combinations."""
        if self.quantize not in QUANTIZE:
            raise AekitError(f"--quantize {self.quantize!r} is not one of {', '.join(QUANTIZE)}.")
        precision = QUANTIZE[self.quantize]
        if not self.formats:
            raise AekitError(f"--format is empty: pass one of {', '.join(FORMATS)}, all.")
        table = [export_format(f) for f in self.formats]
        if not MAX_OPSET >= self.opset >= 13:
            raise AekitError(f"--opset {self.opset}: aekit here exports opsets 13 to {MAX_OPSET}. Pick one in that range.")
        if self.calibration_samples < 1 or self.parity_samples < 1:
            raise AekitError("--calibration-samples must be at least 1.")
        if self.min_agreement_db is not None and not (math.isfinite(self.min_agreement_db) and 0 < self.min_agreement_db <= 100):
            raise AekitError(
                f"--min-agreement-db {self.min_agreement_db} must be a PSNR in dB between 0 and 100 "
                "(defaults: float32 60, fp16 40, int8 30). Pass e.g. --min-agreement-db 30."
            )
        int8_files = precision == "int8" or any(f.static_batch for f in table)  # tflm files are int8 whatever --quantize
        if (self.int8_float != "auto" or self.sensitivity) and not int8_files:
            flag = "--sensitivity" if self.sensitivity else "--int8-float"
            raise AekitError(f"{flag} applies to int8 files only. Pass --quantize int8 with it, or leave it out.")
        if isinstance(self.int8_float, tuple) and len(self.parts) > 1:
            raise AekitError(
                "--int8-float with node names applies to one part: the names are that part's nodes. "
                "Pass --parts encoder or --parts decoder with it (or --int8-float auto)."
            )
        static_batch = static.check_static_batch(self.static_batch)
        explicit_all = set(ALL_FORMATS) <= set(self.formats)
        plan = []
        for fmt in table:
            if fmt.static_batch is not None:  # tflm: int8 at batch 1 whatever the defaults
                if self.quantize not in ("none", "int8"):
                    raise AekitError(f"--format {fmt.name} is int8 only. Leave --quantize out, or pass --quantize int8.")
                if static_batch not in (None, fmt.static_batch):
                    raise AekitError(
                        f"--format {fmt.name} files have batch {fmt.static_batch}. Leave --static-batch out, or pass "
                        f"--static-batch {fmt.static_batch}."
                    )
                plan += [(role, fmt.name, fmt.precisions[0]) for role in self.parts]
                continue
            if static_batch is not None and fmt.runtime == "tensorflow" and not explicit_all:
                raise AekitError(
                    f"--static-batch applies to onnx and tflite files; --format {fmt.name} keeps a dynamic batch. "
                    "Pass --format onnx,tflite with it."
                )
            if precision not in fmt.precisions:
                if explicit_all:  # --format all: float-only formats stay float32
                    plan += [(role, fmt.name, "float32") for role in self.parts]
                    continue
                allowed = ", ".join("none" if p == "float32" else p for p in fmt.precisions)
                raise AekitError(f"--format {fmt.name} cannot be quantized to {self.quantize}. Use --quantize {allowed}.")
            plan += [(role, fmt.name, precision) for role in self.parts]
        return plan


@dataclass
class ExportResult:
    output: Path
    entries: list[FileEntry] = field(default_factory=list)
    run_dir: Path | None = None

    @property
    def failed(self) -> list[FileEntry]:
        return [e for e in self.entries if e.status != "passed"]


@dataclass
class LoadedRun:
    """A finished run's models rebuilt in float32, with its config and data."""

    run_dir: Path
    config: dict
    models: dict
    splits: object

    @property
    def scaling(self):
        return self.splits.scaling

    @property
    def recipe(self) -> TrainConfig:
        """The recipe the run trained with (older records filled with the defaults they trained under)."""
        return TrainConfig.from_json(self.config["recipe"])


def load_run(run_dir: Path, data_dir: str | None = None) -> LoadedRun:
    """Loads a finished run and rebuilds encoder/decoder/autoencoder under the float32 policy."""

    from aekit.data.loading import reload_data
    from aekit.training.model import build_autoencoder

    run_dir = runs.require_finished_run(run_dir)
    config = read_config(run_dir)  # checked for shape: it has model, recipe and data sections
    model, recipe = config["model"], TrainConfig.from_json(config["recipe"])

    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy("float32")
    try:
        rebuilt = dict(
            zip(
                ("encoder", "decoder", "autoencoder"),
                build_autoencoder(
                    model["input_shape"],
                    model["filters"],
                    model["latent_dim"],
                    bn_momentum=recipe.bn_momentum,
                ),
            )
        )
        for role in ("encoder", "decoder"):
            path = run_dir / runs.MODEL_FILES[role]
            if not path.is_file():
                raise AekitError(f"{path} is missing from the finished run {run_dir}. Retrain the run, or restore the file.")
            try:
                trained = keras.models.load_model(path, compile=False)
            except Exception as exc:  # a damaged zip, a foreign file, a wrong model: all mean this file is unusable
                first = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
                raise AekitError(
                    f"{path} is not a readable Keras model ({first}). Retrain the run, or restore the file."
                ) from None
            if [w.shape for w in trained.get_weights()] != [w.shape for w in rebuilt[role].get_weights()]:
                raise AekitError(f"{path} does not match the model in {run_dir / runs.CONFIG}. Retrain the run.")
            rebuilt[role].set_weights(trained.get_weights())
    finally:
        keras.mixed_precision.set_global_policy(previous)
    splits = reload_data(config["data"], data_dir or recipe.data_dir)
    return LoadedRun(run_dir, config, rebuilt, splits)


def export_run(run_dir: Path, options: ExportOptions, on_file=None, data_dir: str | None = None) -> ExportResult:
    """Exports the files `options` plans, checks each against Keras, writes manifest.json.

    Args:
        run_dir: a finished run folder.
        options: formats, precision, parts, tolerances, output folder.
        on_file: called with each FileEntry as it is done (for progress).

    Returns:
        ExportResult; entries whose status is "failed" were not kept on disk.
    """
    plan = options.plan()
    run_dir = runs.require_finished_run(run_dir)
    output = Path(options.output) if options.output else Path(run_dir) / static.default_folder(options.static_batch)
    _previous_export(output, run_dir)  # refused before anything is loaded or written
    weights = runs.read_json(run_dir / runs.METRICS).get("weights_sha256")
    created = not output.exists()
    try:
        output.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=output, prefix=".partial-probe-")
        probe.close()
    except OSError as exc:
        raise AekitError(f"Cannot write to {output}: {exc.strerror}. Pass --output a writable folder.") from None
    try:
        with _claim(output):  # one export at a time: each merges the manifest it reads here
            previous = _previous_export(output, run_dir)
            loaded = load_run(run_dir, data_dir)
            return _export_into(output, run_dir, loaded, plan, options, previous, weights, on_file)
    except BaseException as exc:
        if created:
            with suppress(OSError):  # the folder this call made, left empty: as if never started
                output.rmdir()
        if isinstance(exc, MemoryError):
            raise AekitError(
                f"Out of memory while exporting into {output}. Close other programs, raise the process's memory "
                "limit (ulimit -v), or export one format or part at a time (--format onnx --parts encoder). Nothing "
                "was swapped in: the previous export there, if any, is unchanged."
            ) from None
        problem = _resource_problem(exc)
        if problem is None:
            raise
        what, fix = RESOURCE_ERRORS[problem]
        where = f" writing {exc.filename}" if isinstance(exc, OSError) and exc.filename else ""
        raise AekitError(
            f"Export into {output} stopped{where}: {what} ({os.strerror(problem)}). {fix}. Nothing was "
            "swapped in: the previous export there, if any, is unchanged."
        ) from None


@contextmanager
def _claim(output: Path):
    """Holds the export folder's lock (the one training takes on a run folder), or AekitError naming who holds it."""
    lock = runs.RunLock(output)
    try:
        lock.acquire()
    except AekitError:
        try:
            holder = lock.path.read_text().strip() or "another process"
        except OSError:
            holder = "another process"
        raise AekitError(
            f"{output} is being written by another aekit export ({holder}). Wait for it to finish (or stop it), "
            "or pass --output another folder."
        ) from None
    try:
        yield lock
    finally:
        lock.release()


def _resource_problem(exc: BaseException) -> int | None:
    """The errno of a full disk, a used-up quota, a file-size or open-files limit behind `exc` (None for anything else)."""
    return resource_code(exc)


def _export_into(output, run_dir, loaded, plan, options, previous, weights, on_file) -> ExportResult:
    """Writes and checks every planned file under a staged name, then swaps them and the manifest in at once.

    Until the swap nothing of the previous export is touched, so an export that stops (a full disk, a
    file-size limit, Ctrl-C) leaves it exactly as it was; its own staged files are removed. A swap that
    fails or is interrupted (Ctrl-C) is rolled back; one killed mid-way leaves the IN_PROGRESS marker for
    the next export to finish.
    """
    try:
        entries, manifest = _write_staged(output, run_dir, loaded, plan, options, previous, weights, on_file)
    except BaseException:
        _remove_staged(output)
        raise
    try:
        _swap_in(output, entries, manifest)
    except BaseException:  # rolled back (_swap_in), Ctrl-C included
        _remove_staged(output)
        raise
    _remove_orphans(output, manifest)
    _remove(output / IN_PROGRESS)
    return ExportResult(output, entries, Path(run_dir))


def _remove_staged(output: Path) -> None:
    for staged in output.glob(".partial-*"):
        _remove(staged)
    _remove(output / IN_PROGRESS)


def _write_staged(output, run_dir, loaded, plan, options, previous, weights, on_file) -> tuple[list[FileEntry], Manifest]:
    for leftover in output.glob(".partial-*"):  # what a killed export was writing
        _remove(leftover)
    runs.write_text(output / IN_PROGRESS, f"{Path(run_dir).resolve()}\n")  # files from here on are this export's

    # Spread over each split; packed data is streamed through once per split, never loaded whole.
    images = loaded.scaling.to_model_numpy(loaded.splits.sample("val", options.parity_samples))
    # Both training samples in one pass (packed data is read once).
    calibration, latent_sample = loaded.splits.sample("train", options.calibration_samples, LATENT_CALIBRATION_IMAGES)
    calibration = loaded.scaling.to_model_numpy(calibration)
    reference = _KerasReference(loaded.models, images)
    checks = _Int8Checks(loaded.models, calibration, reference) if any(p == "int8" for _, _, p in plan) else None

    entries = []
    for role, fmt, precision in plan:
        entry = _export_one(loaded, role, fmt, precision, output, options, calibration, reference, checks)
        entries.append(entry)
        if on_file:
            on_file(entry)

    from aekit.edge.codes import LatentQuantizer

    train_images = loaded.scaling.to_model_numpy(latent_sample)
    codes = LatentQuantizer.calibrate(_keras_predict(loaded.models["encoder"], train_images))
    manifest = Manifest(
        run=str(Path(run_dir).resolve()),
        latent_quantization={**codes.to_json(), "calibration_images": len(train_images)},
        model={**loaded.config["model"], "bn_momentum": loaded.recipe.bn_momentum},
        pixel_scaling=loaded.scaling.to_json(),
        versions=_versions(),
        files=_merge_with_previous(output, previous, entries, weights),
        run_weights_sha256=weights,
    )
    return entries, manifest


def _swap_in(output: Path, entries: list[FileEntry], manifest: Manifest) -> None:
    """Renames the staged files over the previous ones, then writes the manifest; any failure puts the previous back.

    Renames need no space, so only the manifest's write can meet a full disk; the previous files wait under
    backup names until it is written.
    """
    moved: list[tuple[Path, Path | None]] = []
    try:
        for entry in entries:
            for name in (entry.file, *export_format(entry.format).companion_names(entry.file)):
                final = output / name
                backup = output / f".partial-previous-{name}" if final.exists() else None
                if backup is not None:
                    os.replace(final, backup)
                moved.append((final, backup))
                if entry.status == "passed":  # a failed file leaves none: the manifest no longer vouches for the older one
                    os.replace(_staged(output, name), final)
        manifest.write(output)
    except BaseException:  # a full disk, or Ctrl-C mid-swap: the previous export is put back as it was
        for final, backup in reversed(moved):
            _remove(final)
            if backup is not None:
                os.replace(backup, final)
        raise
    for _, backup in moved:
        if backup is not None:
            _remove(backup)


def _staged(output: Path, name: str) -> Path:
    """Where a file is written and checked before the whole export passed and it is swapped in."""
    return output / f".partial-{name}"


def _previous_export(output: Path, run_dir: Path) -> Manifest | None:
    """The manifest already in `output` (None if none, or unreadable); AekitError if it is another run's export."""
    if output.exists() and not output.is_dir():
        raise AekitError(f"--output {output} is a file. Pass a folder for the exported files.")
    own = output.resolve() in {(Path(run_dir) / static.default_folder(b)).resolve() for b in (None, static.folder_batch(output))}
    if not (output / MANIFEST).is_file():
        skip = (".partial-", IN_PROGRESS, runs.RunLock.NAME)
        theirs = sorted(p.name for p in output.iterdir() if not p.name.startswith(skip)) if output.is_dir() else []
        started = (output / IN_PROGRESS).read_text().strip() if (output / IN_PROGRESS).is_file() else None
        if theirs and not own and started:  # an export that was stopped before its manifest
            if Path(started).resolve() == Path(run_dir).resolve():
                return None  # this run's: exported again, and its files replaced
            raise AekitError(
                f"{output} holds an unfinished export of another run ({started}); one export folder holds one run. "
                f"Pass --output a new folder, or delete {output} first."
            )
        if theirs and not own:
            shown = ", ".join(theirs[:3]) + (", …" if len(theirs) > 3 else "")
            raise AekitError(
                f"--output {output} already holds files aekit did not export ({shown}); aekit will not write over them. "
                "Pass a new or empty folder."
            )
        return None
    try:
        previous = Manifest.load(output, verify=False)
    except AekitError:
        return None  # an unreadable manifest vouches for nothing; this export replaces it
    if not own and Path(previous.run).resolve() != Path(run_dir).resolve():  # a copied run keeps its own export
        raise AekitError(
            f"{output} holds the export of another run ({previous.run}); one export folder holds one run. "
            f"Pass --output a new folder, or delete {output} first."
        )
    return previous


def _export_one(loaded, role, fmt, precision, output, options, calibration, reference, checks) -> FileEntry:
    table = export_format(fmt)
    batch = table.static_batch or (options.static_batch if table.runtime != "tensorflow" else None)
    name = table.file_name(role, precision, batch)
    min_agreement = options.min_agreement_db if options.min_agreement_db is not None else DEFAULT_MIN_AGREEMENT_DB[precision]
    model = loaded.models[role]
    written, form = static.written_model(model, batch, fmt, precision, role)  # the same function, in its runtime's best form
    calib_inputs = _keras_predict(reference.models["encoder"], calibration) if role == "decoder" else calibration
    tmp = _staged(output, name)
    _remove(tmp)
    entry = FileEntry(
        file=name,
        role=role,
        format=fmt,
        precision=precision,
        inputs=[],
        outputs=[],
        bytes=0,
        sha256="",
        status="failed",
        opset=options.opset if fmt == "onnx" else None,
        quantization=dict(QUANTIZATION_SCHEMES["tflite" if fmt == "tflm" else fmt]) if precision == "int8" else None,
        static_batch=batch,
        form=form,
    )
    choice = None
    try:
        if precision == "int8":
            # a tflm candidate is measured on tflite-micro; a fixed-batch one is fed its batch by its runner
            measure = checks.measure(role, min_agreement, micro.choice_runner if fmt == "tflm" else None)
            trained = static.fixed_batch(model, batch) if batch is not None else model  # if the fast form fails in int8
            forms = [(written, form)] + ([(trained, None)] if form == "subpixel" else [])
            choice, entry.form, tried = _write_int8(forms, role, fmt, tmp, options, calib_inputs, measure, min_agreement)
            entry.quantization.update(choice.to_json(), **({"forms_tried": tried} if len(tried) > 1 else {}))
            if fmt == "tflm":
                entry.quantization["selection_runtime"] = micro.RUNTIME
        elif fmt == "onnx":
            _write_onnx(written, role, tmp, options.opset, precision)
        elif fmt == "tflite":
            _write_tflite(written, role, tmp, precision)
        else:
            _write_savedmodel(model, role, tmp)
        runner = _SavedModelRunner(tmp) if fmt == "savedmodel" else open_runner(tmp, "cpu")
        entry.inputs, entry.outputs = runner.specs()
        if fmt == "tflm":  # checked by tflite-micro itself, with the arena it measured
            runner = micro.MicroRunner(tmp)
        outputs = run_batched(runner, reference.inputs_for(role))
        entry.parity = _parity(reference, role, outputs, min_agreement, runner.runtime)
        problem = _parity_problem(entry.parity, precision)
        if precision == "int8" and problem is None:  # the kernels a device without the optimized ones runs
            slow = open_runner(tmp, "cpu", kernels="reference")
            outputs = run_batched(slow, checks.reference.inputs_for(role))
            entry.reference_parity = _parity(checks.reference, role, outputs, min_agreement, slow.runtime, "reference")
            problem = _parity_problem(entry.reference_parity, precision)
            problem = problem and f"on {KERNEL_NAMES[(slow.runtime, 'reference')]}, {problem}"
        if problem:
            entry.reason = problem + (_int8_next_step(choice, fmt) if choice else "")
            _remove(tmp)
        else:  # kept under its staged name; swapped in once the whole export got through (_export_into)
            entry.status = "passed"
            entry.bytes, entry.sha256 = directory_size_and_hash(tmp) if tmp.is_dir() else (tmp.stat().st_size, sha256_of(tmp))
            if fmt == "tflm":
                entry.micro = _write_micro_sources(output, entry, runner)
    except AekitError:
        _remove_with_companions(output, name, fmt)
        raise
    except Exception as exc:  # a converter or runtime failure marks this file failed, not the whole export
        if isinstance(exc, MemoryError) or _resource_problem(exc) is not None:
            raise  # the machine's failure, not the file's: the whole export stops (export_run)
        entry.status, entry.micro = "failed", None
        entry.reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
        _remove_with_companions(output, name, fmt)
    return entry


def _remove_with_companions(output: Path, name: str, fmt: str) -> None:
    for file in (name, *export_format(fmt).companion_names(name)):
        _remove(_staged(output, file))


def _write_micro_sources(output: Path, entry: FileEntry, runner: micro.MicroRunner) -> dict:
    """The staged .cc/.h of a tflm entry, and its `micro` record (micro.entry_sources)."""
    staged = {name: _staged(output, name) for name in export_format("tflm").companion_names(entry.file)}
    return micro.entry_sources(_staged(output, entry.file).read_bytes(), entry, staged, runner.arena_size)


def _write_int8(forms, role, fmt, path, options, calib_inputs, measure, bound) -> tuple[int8.Int8Choice, str | None, dict]:
    """Writes the int8 file `int8.choose` picks (all int8, or its sensitive nodes float) to `path`.

    `forms`: [(the Keras model to convert, its form)], the fastest first (_export_one): the first whose file
    holds is kept, else the one that agrees best. Returns its choice, its form, and {form: agreement dB} tried.
    """
    best, tried = None, {}
    with tempfile.TemporaryDirectory(prefix="aekit-int8-") as root:
        for i, (written, form) in enumerate(forms):
            scratch = Path(root) / str(i)
            scratch.mkdir()
            if fmt == "onnx":
                float_path = scratch / "float.onnx"
                _write_onnx(written, role, float_path, options.opset, "float32")
                quantizer = int8.OnnxQuantizer(float_path, INPUT_NAMES[role], calib_inputs, scratch)
            else:  # at the fixed batch, if there is one: calibrated on groups of it
                quantizer = int8.TFLiteQuantizer(written, role, calib_inputs)
            candidate, choice = int8.choose(
                quantizer, measure, bound, scratch, options.int8_float, options.sensitivity, aim_db=int8.AIM_DB.get(role)
            )
            slow = getattr(quantizer, "SLOW_FLOAT", {})
            choice.note = next((slow[n.name] for n in choice.float_nodes if n.name in slow), None)
            agreement = min(choice.chosen_db.values(), default=0.0)
            tried[form or "native"] = round(agreement, 2)
            if best is None or agreement > min(best[1].chosen_db.values(), default=0.0):
                best = (candidate, choice, form)
            if choice.passed:
                break
        candidate, choice, form = best
        shutil.move(candidate, path)
    return choice, form, tried


def _int8_next_step(choice: int8.Int8Choice, fmt: str) -> str:
    """What was tried for a failing int8 file, and the lever that is left (never the same command again)."""
    tried = f". Tried: every node int8 ({int8._fmt(choice.all_int8_db)})" if choice.all_int8_db else ". Tried"
    if choice.float_nodes:
        names = ", ".join(n.name for n in choice.float_nodes[:2]) + (", …" if len(choice.float_nodes) > 2 else "")
        kept = f"{len(choice.float_nodes)} of {choice.nodes} nodes float ({choice.how}: {names})"
        tried += f"; {kept}: {int8._fmt(choice.chosen_db)}"
    if choice.how == "all int8" and choice.sensitivity is None:
        lever = "let aekit keep the sensitive nodes float with --int8-float auto"
    else:
        lever = (
            "keep more nodes float with --int8-float NAME,... (the manifest's quantization.sensitivity lists each "
            "node's cost; export with --sensitivity)"
        )
    return f"{tried}. Next: {lever}, or use --quantize fp16 (half the size, every layer 16-bit)"


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def _merge_with_previous(
    output: Path, previous: Manifest | None, entries: list[FileEntry], weights: str | None
) -> list[FileEntry]:
    """Keeps earlier entries whose files are still there untouched, and earlier failures; new entries replace same-named ones.

    Entries made from other weights (the run was trained further since) are dropped: they no longer describe it.
    """
    merged: dict[str, FileEntry] = {}
    if previous and previous.run_weights_sha256 == weights:
        for old in previous.files:
            if old.status == "failed" and not (output / old.file).exists():
                merged[old.file] = old  # the record of why a file is not there
            elif old.status == "passed" and old.problem(output) is None:
                merged[old.file] = old  # a file still as exported
    for entry in entries:
        merged[entry.file] = entry
    return list(merged.values())


def _remove_orphans(output: Path, manifest: Manifest) -> None:
    """Removes exported-file names the manifest does not vouch for (a killed export's, or stale ones)."""
    kept = {name for e in manifest.files if e.status == "passed" for name in (e.file, *e.companions())}
    for path in output.iterdir():
        if EXPORT_NAME.match(path.name) and path.name not in kept:
            _remove(path)


def _versions() -> dict:
    from aekit.core.system import package_versions

    return {"aekit": __version__, **{k: v for k, v in package_versions().items() if v}}
