"""Errors for Python callers: the library's messages with CLI flags turned into keyword arguments, raised by kind."""

from __future__ import annotations

import contextlib
import re
from dataclasses import fields

from aekit.core.recipe import TrainConfig
from aekit.errors import AekitError, InputError, RunFolderError

# TrainConfig fields `train` takes as keywords; the data is its first argument and epochs its own keyword.
RECIPE_KEYWORDS = tuple(f.name for f in fields(TrainConfig) if f.name not in ("dataset", "epochs"))
DEFAULT_BATCH_SIZES = (1, 8, 64, 256)
BENCH_PARTS = ("encoder", "decoder", "roundtrip")
EXPORT_PARTS = ("encoder", "decoder")


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
    "--int8-float": "int8_float",
    "--sensitivity": "sensitivity",
    "--static-batch": "static_batch",
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
    "--no-openvino": "include_openvino",
    "--model": "model",
    "--dataset": "dataset",
    "--overwrite": "overwrite",
    "--unlisted": "unlisted",
}
SWITCHES = {
    "val_from_end": "True",
    "allow_fallback": "True",
    "include_keras": "False",
    "overwrite": "True",
    "unlisted": "True",
}  # flags without a value
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
    ("aekit.core.runs", "new_run_dir"): InputError,
    ("aekit.core.runs", "*"): RunFolderError,
    ("aekit.core.recipe", "read_config"): RunFolderError,
    ("aekit.core.recipe", "plan_run"): RunFolderError,
    ("aekit.core.recipe", "*"): InputError,
    ("aekit.training.checkpoints", "_restore"): RunFolderError,
    ("aekit.training.loop", "_check_batch"): InputError,
    ("aekit.exporting.export", "load_run"): RunFolderError,
    ("aekit.exporting.export", "_previous_export"): RunFolderError,
    ("aekit.exporting.export", "plan"): InputError,
    ("aekit.exporting.export", "from_text"): InputError,
    ("aekit.benchmarking.bench", "validate"): InputError,
    ("aekit.benchmarking.bench", "from_text"): InputError,
    ("aekit.benchmarking.bench", "bench_run"): InputError,
    ("aekit.core.manifest", "export_format"): InputError,
    ("aekit.edge.runtimes", "check_threads"): InputError,
    ("aekit.edge.runtimes", "check_device"): InputError,
    ("aekit.edge.outputs", "check_output_folder"): InputError,
    ("aekit.data.loading", "*"): InputError,
    ("aekit.data.feeds", "*"): InputError,
    ("aekit.core.sources", "*"): InputError,
    ("aekit.core.pixels", "*"): InputError,
    ("aekit.core.splits", "*"): InputError,
    ("aekit.data.pack.schema", "*"): InputError,
    ("aekit.data.pack.writer", "*"): InputError,
    ("aekit.data.pack.sources", "*"): InputError,
    ("aekit.data.pack.reader", "*"): InputError,
    ("aekit.data.pack.records", "*"): InputError,
}


def error_kind(exc: AekitError) -> type[AekitError]:
    """The AekitError subclass for `exc`, from the aekit function that raised it (AekitError when none fits)."""
    if type(exc) is not AekitError:
        return type(exc)
    raiser, tb = None, exc.__traceback__
    while tb is not None:
        module = tb.tb_frame.f_globals.get("__name__", "")
        if module.startswith("aekit.") and not module.startswith("aekit.api") and module != "aekit.errors":
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
