"""Quiet by default: TensorFlow's native output, Python warnings and warning logs kept out of a notebook during a call."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings

# Loggers whose warnings a quiet call keeps out of the notebook (their handlers write to the notebook's stderr).
QUIET_LOGGERS = ("absl", "tensorflow", "tensorflow_datasets", "tf2onnx", "keras", "h5py")


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
