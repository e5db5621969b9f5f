"""The run folder: what `aekit train` writes, how it is found again, and atomic writes.

A run is finished when `metrics.json` exists; it is written last, so a folder
without it (crash, Ctrl-C, bad input) is never taken for a finished run.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from contextlib import contextmanager, suppress
from datetime import datetime
from pathlib import Path

from aekit.core.checks import is_number
from aekit.errors import AekitError

RUNS_ROOT = Path("runs")
CONFIG = "config.json"
HISTORY_JSON = "history.json"
HISTORY_CSV = "history.csv"
METRICS = "metrics.json"
LOSS_PLOT = "loss.png"
RECONSTRUCTIONS = "reconstructions.png"
CHECKPOINTS = "checkpoints"
ARRAY_DATA = "data.npz"  # the array a Python call trained on (aekit.api.calls.train), the run's source for export and resume
TENSORBOARD = "tensorboard"  # TensorBoard event files: train/ and validation/, one point per epoch
MODEL_FILES = {"encoder": "encoder.keras", "decoder": "decoder.keras", "autoencoder": "autoencoder.keras"}
HISTORY_FIELDS = ("epoch", "train_loss", "val_mse", "val_psnr", "seconds", "samples_per_sec", "learning_rate")


def new_run_dir(root: Path = RUNS_ROOT, name: str | None = None) -> Path:
    """runs/<name>, or runs/<YYYYmmdd-HHMMSS> (suffixed -2, -3... if taken)."""
    if name is not None and (not name.strip() or name in (".", "..") or any(c in name for c in "/\\\0")):
        raise AekitError(
            f"--name {name!r} is not a folder name: it names a folder under {root}/, without / or \\. "
            "Pass --output PATH for a folder elsewhere."
        )
    base = name or datetime.now().strftime("%Y%m%d-%H%M%S")
    candidate, n = root / base, 2
    while name is None and candidate.exists():
        candidate, n = root / f"{base}-{n}", n + 1
    return candidate


def is_run_dir(path: Path) -> bool:
    return (path / CONFIG).is_file()


def foreign_entries(path: Path) -> list[str]:
    """What a folder without config.json holds besides what a starting run writes first (lock, checkpoints, temp files,
    the array a Python call trains from)."""
    if not path.is_dir():
        return []
    starting = {".lock", CHECKPOINTS, ARRAY_DATA}
    return sorted(p.name for p in path.iterdir() if p.name not in starting and not p.name.startswith(".partial-"))


def is_finished(path: Path) -> bool:
    return (path / METRICS).is_file()


def require_finished_run(path: Path) -> Path:
    """`path` if it is a finished aekit run folder, else AekitError with the fix."""
    path = Path(path)
    if not path.exists():
        raise AekitError(f"Run folder {path} does not exist. Pass --run runs/<name> (see ls runs/).")
    if not path.is_dir():
        raise AekitError(f"--run {path} is a file, not a run folder. Pass the folder aekit train wrote (runs/<name>).")
    if not is_run_dir(path):
        raise AekitError(f"{path} has no {CONFIG}: it is not an aekit run folder. Pass a folder made by aekit train.")
    if not is_finished(path):
        raise AekitError(f"{path} is an unfinished run (no {METRICS}). Finish it: aekit train --resume {path}.")
    return path


def newest_finished_run(root: Path = RUNS_ROOT) -> Path:
    """The most recently finished run under `root` (by metrics.json time)."""
    runs = [p for p in root.glob("*") if p.is_dir() and is_finished(p)] if root.is_dir() else []
    if not runs:
        raise AekitError(f"No finished run under {root}/. Train one first: aekit train, or name one with --run PATH.")
    return max(runs, key=lambda p: (p / METRICS).stat().st_mtime)


def read_json(path: Path, kind: type = dict):
    """A JSON file of the run folder, which must hold a `kind` (an object, or a list for history.json)."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise AekitError(f"{path} is missing. Is {path.parent} an aekit run folder?") from None
    except (OSError, ValueError) as exc:
        raise AekitError(f"{path} is unreadable ({exc}). Delete the run folder or train again into a new one.") from None
    if not isinstance(data, kind):
        what = "an object" if kind is dict else "a list"
        raise AekitError(f"{path} is not {what} as aekit writes it. Restore the file, or train again into a new folder.")
    return data


def read_history(run_dir: Path) -> list[dict]:
    """history.json: one row per finished epoch, 1, 2, ..., each with every HISTORY_FIELDS number."""
    path = run_dir / HISTORY_JSON
    rows = read_json(path, list)
    for number, row in enumerate(rows, start=1):
        numbers = isinstance(row, dict) and all(is_number(row.get(key), finite=False) for key in HISTORY_FIELDS)
        if not numbers or row["epoch"] != number:
            raise AekitError(
                f"{path}: row {number} is not epoch {number} with {', '.join(HISTORY_FIELDS)} as aekit writes it. "
                "Restore the file, or train again into a new folder."
            )
    return rows


@contextmanager
def atomic_path(final: Path):
    """Yields a temporary path beside `final` (same suffix) and renames it onto `final` on success.

    The temporary name starts with '.partial-', so an interrupted write never
    leaves a file under the final name; on error the temporary file is removed.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".partial-", suffix=final.suffix, dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    tmp_path.unlink()  # writers such as Keras refuse to overwrite; let them create it
    try:
        yield tmp_path
        os.replace(tmp_path, final)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def remove_partials(folder: Path) -> int:
    """Deletes temporary files an interrupted write left behind (never files under a final name)."""
    removed = 0
    for leftover in Path(folder).rglob(".partial-*"):
        if leftover.is_file():
            leftover.unlink()
            removed += 1
    return removed


def write_text(final: Path, text: str) -> None:
    with atomic_path(final) as tmp:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def write_json(final: Path, data) -> None:
    write_text(final, json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_history(run_dir: Path, history: list[dict]) -> None:
    write_json(run_dir / HISTORY_JSON, history)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HISTORY_FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(history)
    write_text(run_dir / HISTORY_CSV, buffer.getvalue())


class FileLock:
    """Holds a path for one process: a second one fails at once, naming the holder (pid and host).

    The lock is an advisory `flock` on a lock file, which records the holder. The kernel drops it when
    the process ends, however it ends, so a killed process never leaves a stale lock behind: the next
    one just takes it. A release removes the file: the holder unlinks it while still locked, and an
    acquirer that locked a file meanwhile unlinked (its inode no longer the path's) lets it go and tries
    again. Subclasses name the lock file and say, in `busy` and `cannot_create`, what the user should do.

    Args:
        path: the lock file.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.fd: int | None = None

    def busy(self, holder: str) -> str:
        return f"{self.path} is held by {holder}. Wait for it to finish (or stop it)."

    def cannot_create(self, exc: OSError) -> str:
        return f"Cannot create {self.path}: {exc.strerror}. Pass a writable folder."

    def acquire(self):
        import fcntl
        import socket

        while True:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise AekitError(self.cannot_create(exc)) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
                os.close(fd)
                raise AekitError(self.busy(holder)) from None
            if self._is_at_path(fd):
                break
            os.close(fd)  # the holder we waited on removed this file on release: lock the path's new one
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            # Unlinked while still held: a process that opened it meanwhile sees, once it gets the lock,
            # that the path no longer names its file, and starts over (acquire). Closing drops the flock.
            if self._is_at_path(self.fd):
                with suppress(OSError):  # left behind (read-only folder?), it is only a stale name: harmless
                    self.path.unlink()
            os.close(self.fd)
            self.fd = None

    def _is_at_path(self, fd: int) -> bool:
        """Whether the file open as `fd` is still the one at self.path (not unlinked or replaced)."""
        try:
            at_path = os.stat(self.path)
        except FileNotFoundError:
            return False
        held = os.fstat(fd)
        return (at_path.st_dev, at_path.st_ino) == (held.st_dev, held.st_ino)

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


class RunLock(FileLock):
    """Holds a run folder (or an export folder) for one process: `<folder>/.lock` (see FileLock).

    >>> with RunLock(run_dir):
    ...     train_into(run_dir)
    """

    NAME = ".lock"

    def __init__(self, run_dir: Path):
        super().__init__(Path(run_dir) / self.NAME)

    def busy(self, holder: str) -> str:
        return (
            f"{self.path.parent} is in use by {holder}. Wait for it to finish (or stop it), "
            "or train into another --output folder."
        )

    def cannot_create(self, exc: OSError) -> str:
        return f"Cannot create the run folder {self.path.parent}: {exc.strerror}. Pass --output a writable folder."
