"""The Python API: `aekit.train`, `aekit.export`, `aekit.bench` and `Run` (calls), quiet by default (quiet),
errors that name keyword arguments (messages). See docs/python.md."""

from aekit.api.calls import Run, bench, export, open_run, train

__all__ = ["Run", "bench", "export", "open_run", "train"]
