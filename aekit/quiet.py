"""Silencing converters and runtimes that write to the process's stdout/stderr themselves.

TFLite's converter, tf2onnx, onnxruntime's quantizer and LiteRT print notices from
native code or with print(); the library must not print, so they run inside
`quiet_native_output`. Python exceptions still propagate with their messages.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import warnings


@contextlib.contextmanager
def quiet_native_output():
    """Redirects fds 1 and 2 (and sys.stdout/stderr) to /dev/null and ignores warnings inside."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(os.devnull, "w") as devnull, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            os.dup2(devnull.fileno(), 1)
            os.dup2(devnull.fileno(), 2)
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
