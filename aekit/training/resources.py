"""Resource faults during training named for what they are: a full disk, a quota, a file-size limit,
too many open files, or memory, each as one AekitError line with the fix that applies.

The wording follows the export side's (aekit.exporting.export RESOURCE_ERRORS / RESOURCE_WORDS).
TensorFlow's file layer raises no OSError: a full disk comes as an OpError (ResourceExhaustedError,
like running out of memory) whose text holds the C library's words, so those are looked for first.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from aekit.core import runs
from aekit.errors import AekitError

RESOURCE_ERRORS = {
    errno.ENOSPC: ("the disk is full", "Free space, or train into a folder on another disk (-o)"),
    errno.EDQUOT: ("the disk quota is used up", "Free space within your quota, or train into a folder on another disk (-o)"),
    errno.EFBIG: ("a file-size limit was reached", "Raise the limit (ulimit -f unlimited)"),
    errno.EMFILE: ("this process has too many files open", "Raise the limit (ulimit -n 4096)"),
    errno.ENFILE: ("the system has too many files open", "Close other programs, or raise the system's limit (fs.file-max)"),
}
# The same failures as TensorFlow's file layer words them (in order: the longer words first).
RESOURCE_WORDS = {
    "No space left on device": errno.ENOSPC,
    "Disk quota exceeded": errno.EDQUOT,
    "File too large": errno.EFBIG,
    "Too many open files in system": errno.ENFILE,
    "Too many open files": errno.EMFILE,
}


def resource_code(exc: BaseException) -> int | None:
    """The errno of a disk, quota, file-size or open-files fault `exc` is (an OSError, or TensorFlow's
    words for one); None for anything else, out of memory included."""
    if isinstance(exc, OSError) and exc.errno in RESOURCE_ERRORS:
        return exc.errno
    if isinstance(exc, (OSError, MemoryError)):
        return None
    text = str(getattr(exc, "message", None) or exc)
    return next((code for words, code in RESOURCE_WORDS.items() if words in text), None)


def is_out_of_memory(exc: BaseException) -> bool:
    """A real out-of-memory: MemoryError, or TensorFlow's ResourceExhaustedError that is no file fault."""
    from aekit.lazy import tf

    return isinstance(exc, MemoryError) or (isinstance(exc, tf.errors.ResourceExhaustedError) and resource_code(exc) is None)


def training_resource_error(exc: BaseException, run_dir: Path, doing: str = "") -> AekitError | None:
    """The one-line AekitError for a resource fault met while training into `run_dir` (None when `exc`
    is none): what ran out, and the fix. `doing`: what was being written, e.g. "saving a checkpoint"."""
    resume = (
        f" The run keeps its last checkpoint: resume with aekit train --resume {run_dir}." if runs.is_run_dir(run_dir) else ""
    )
    code = resource_code(exc)
    if code is not None:
        what, fix = RESOURCE_ERRORS[code]
        where = f" writing {exc.filename}" if isinstance(exc, OSError) and exc.filename else ""
        doing = f" {doing}" if doing else ""
        return AekitError(f"Training into {run_dir} stopped{doing}{where}: {what} ({os.strerror(code)}). {fix}.{resume}")
    if is_out_of_memory(exc):
        text = str(exc).strip()
        first = text.splitlines()[0][:160] if text else type(exc).__name__
        return AekitError(
            f"Out of memory ({first}). The model or its batch does not fit: use smaller --filters, --latent-dim or "
            f"--batch-size.{resume}"
        )
    return None
