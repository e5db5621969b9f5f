"""What bench runs: a runtime and precision over an encoder and a decoder file (or the Keras baseline).

A target's parts come from an export folder's manifest (targets_from_manifest) or from files named with
--model (model_target). A part that cannot run (failed at export, missing, changed since) is replaced by a
stand-in so the other part is still measured: the Keras model on the training side, else the float32 file
of the same format (the edge install has no Keras). OpenVINO, when installed, adds a target over each pair of
.onnx files (openvino_targets), whose reconstructions are held to agree with onnxruntime's on the same files.
TensorFlow-free.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from aekit.core.manifest import MANIFEST, FileEntry, Manifest, export_format, format_of_file
from aekit.edge.runtimes import OPENVINO
from aekit.errors import AekitError

KERAS = "keras"
UNLISTED = "unlisted, not checked"  # Row.file_check of a --model file its manifest does not vouch for
ROLES = ("encoder", "decoder")


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
    # and the round trip fail with the reason; the other part still runs, with a stand-in as its partner.
    failed_parts: dict = field(default_factory=dict)
    # part -> the stand-in that replaces it for quality ("keras decoder", or a file name such as "decoder.onnx").
    partners: dict = field(default_factory=dict)
    # The target whose runtime is the files' own (onnxruntime for .onnx): this target's reconstructions must
    # agree with its reconstructions to min_agreement_db (the bound the files were held to at export).
    reference: Target | None = None
    min_agreement_db: float | None = None

    def is_stand_in(self, part: str) -> bool:
        return part in self.partners


def _export_command(fmt: str, precision: str) -> str:
    quantize = "none" if precision == "float32" else precision
    return f"aekit export --format {fmt} --quantize {quantize}"


def _bound(entries: list[FileEntry]) -> float | None:
    """The agreement in dB the files were held to at export (the strictest of them), None when not recorded."""
    bounds = [e.parity.min_agreement_db for e in entries if e.parity is not None]
    return max(bounds) if bounds else None


def targets_from_manifest(export_dir: Path, partners: dict | None = None) -> list[Target]:
    """Every ONNX/TFLite encoder+decoder pair in an export folder, grouped by format, precision and fixed batch.

    Args:
        export_dir: a folder written by aekit export.
        partners: Keras "encoder"/"decoder" models that stand in for a part whose file cannot run, so the
            other part is still measured. None (the edge install): the float32 file of the same format stands
            in for a part of another precision; without one such a target fails as a whole.
    """
    manifest = Manifest.load(export_dir, verify=False)  # the schema; each file is checked below, per target
    groups: dict[tuple, Target] = {}
    entries: dict[tuple, list[FileEntry]] = {}
    for entry in manifest.files:
        fmt = export_format(entry.format)
        if not fmt.edge or entry.role not in ROLES:
            continue
        key = (fmt.name, entry.precision, entry.static_batch or 0)  # --static-batch files pair among themselves
        label = fmt.name if entry.static_batch is None else f"{fmt.name} batch {entry.static_batch}"
        target = groups.setdefault(key, Target(fmt.runtime, entry.precision, {}, label))
        entries.setdefault(key, []).append(entry)
        problem = entry.problem(export_dir)
        if problem:
            target.failed_parts[entry.role] = f"{problem}; re-export it: {_export_command(*key[:2])}"
        else:
            target.files[entry.role] = export_dir / entry.file
    for (fmt, precision, batch), target in groups.items():
        target.min_agreement_db = _bound(entries[(fmt, precision, batch)])
        for role in ROLES:
            if role not in target.files and role not in target.failed_parts:
                target.failed_parts[role] = (
                    f"no {role} was exported for {fmt} {precision}; export it: {_export_command(fmt, precision)}"
                )
        usable = [role for role in ROLES if role in target.files]
        stand_ins = {}
        for role in target.failed_parts:
            if partners is not None:
                stand_ins[role] = (partners[role], f"{KERAS} {role}")
            else:
                plain = groups.get((fmt, "float32", batch))
                if precision != "float32" and plain is not None and role in plain.files and role not in plain.failed_parts:
                    stand_ins[role] = (plain.files[role], plain.files[role].name)
        if not usable or set(stand_ins) != set(target.failed_parts):
            if target.failed_parts:
                target.error = "; ".join(target.failed_parts[r] for r in sorted(target.failed_parts))
        else:
            for role, (item, label) in stand_ins.items():
                target.files[role], target.partners[role] = item, label
    return [groups[key] for key in sorted(groups)]


def keras_target(models: dict) -> Target:
    return Target(KERAS, "float32", {"encoder": models["encoder"], "decoder": models["decoder"]}, "keras")


def openvino_targets(targets: list[Target]) -> list[Target]:
    """`targets` with an OpenVINO target after each onnxruntime one: the same .onnx files, the same stand-ins."""
    out = []
    for target in targets:
        out.append(target)
        if target.runtime == "onnxruntime":
            out.append(
                Target(
                    OPENVINO,
                    target.precision,
                    dict(target.files),
                    target.format,
                    error=target.error,
                    file_check=target.file_check,
                    failed_parts=dict(target.failed_parts),
                    partners=dict(target.partners),
                    reference=target,
                    min_agreement_db=target.min_agreement_db,
                )
            )
    return out


def model_target(paths: list[Path], unlisted: bool, run_dir: Path | None, keras_models=None):
    """The target of files named with --model (one file, or an encoder and a decoder) and the run they belong to.

    One file: its partner part is the run's Keras model (`keras_models(run_dir)` gives the run's models, on the
    training side), else (None, the edge install) the float32 file of the same format listed beside it.
    Returns (target, run folder, manifest of the first file or None, the roles to time (None: all the parts
    asked for), whether every file is vouched for by its manifest).
    """
    if not 1 <= len(paths) <= 2:
        raise AekitError("--model takes one exported file, or two: an encoder and a decoder of the same format.")
    listed = []
    for model in paths:
        fmt = format_of_file(model)
        if not model.is_file() or fmt is None or not fmt.edge:
            raise AekitError(f"--model {model}: expected an existing .onnx or .tflite file (see aekit export).")
        manifest, entry, problem = _listing(model)
        if problem and not unlisted:
            raise AekitError(
                f"--model {model}: {problem}, so nothing vouches that it is what aekit exported and checked. "
                "Re-export it with aekit export, or pass --unlisted to benchmark it unchecked."
            )
        role, precision = (entry.role, entry.precision) if entry else _role_and_precision(model, fmt)
        if role not in ROLES:
            raise AekitError(f"--model {model} is an {role}; bench takes encoder or decoder files.")
        listed.append((model, fmt, manifest, entry, problem, role, precision))
    model, fmt, manifest, entry, problem, role, precision = listed[0]
    if len(listed) == 2:
        other = listed[1]
        if {role, other[5]} != set(ROLES) or other[1].name != fmt.name:
            raise AekitError(
                f"--model {model} and {other[0]}: expected an encoder and a decoder of the same format, got an {role} "
                f"({fmt.name}) and an {other[5]} ({other[1].name})."
            )
    run_dir = run_dir or (Path(manifest.run) if manifest and manifest.run else None)
    from aekit.core import runs

    if run_dir is None or not runs.is_finished(run_dir):
        raise AekitError(f"--model {model}: no manifest.json beside it names a finished run. Pass --run too.")
    files = {item[5]: item[0] for item in listed}
    precisions = sorted({item[6] for item in listed})
    target = Target(
        fmt.runtime,
        "+".join(precisions),
        files,
        fmt.name,
        file_check=UNLISTED if any(item[4] for item in listed) else None,
        min_agreement_db=_bound([item[3] for item in listed if item[3] is not None and not item[4]]),
    )
    if len(listed) == 1:
        other = "decoder" if role == "encoder" else "encoder"
        if keras_models is not None:
            target.files[other], target.partners[other] = keras_models(Path(run_dir))[other], f"{KERAS} {other}"
        else:
            partner = _listed_partner(model, manifest, other, fmt.name, precision)
            if partner is None:
                raise AekitError(
                    f"--model {model}: bench needs an {other} to complete the round trip it scores, and this install has "
                    f"no Keras model to stand in (no TensorFlow); {model.parent / MANIFEST} lists no usable {other} file. "
                    f"Pass the {other} file as a second --model, or export one (aekit export on the training machine)."
                )
            target.files[other], target.partners[other] = partner, partner.name
        target.files = {r: target.files[r] for r in ROLES}
    parts = (role,) if len(listed) == 1 else None
    return target, Path(run_dir), manifest, parts, not any(item[4] for item in listed)


def _listed_partner(model: Path, manifest: Manifest | None, role: str, fmt: str, precision: str) -> Path | None:
    """The file beside `model` that its manifest vouches for, to stand in for `role`: float32 first, same format first."""
    if manifest is None:
        return None
    candidates = []
    for entry in manifest.files:
        entry_fmt = export_format(entry.format)
        if entry.role != role or not entry_fmt.edge or getattr(entry, "static_batch", None) or entry.problem(model.parent):
            continue
        rank = (entry_fmt.name != fmt, entry.precision != "float32", entry.precision != precision)
        candidates.append((rank, entry.file))
    return model.parent / min(candidates)[1] if candidates else None


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
