"""Resource faults during training named for what they are: a full disk, a quota, a file-size limit,
too many open files, or memory, each as one AekitError line with the fix that applies.

What ran out and how it is recognised: aekit.core.resources, shared with the export. A full disk
comes from TensorFlow as a ResourceExhaustedError, like running out of memory: its words are looked
for first.
"""

from __future__ import annotations

import os
from pathlib import Path

from aekit.core import runs
from aekit.core.resources import FILE_LIMIT_FIXES, WHAT_RAN_OUT, resource_code
from aekit.errors import AekitError

# What ran out (aekit.core.resources), and the fix for a training run.
RESOURCE_ERRORS = {
    code: (what, FILE_LIMIT_FIXES.get(code, "Free space, or train into a folder on another disk (-o)"))
    for code, what in WHAT_RAN_OUT.items()
}


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
