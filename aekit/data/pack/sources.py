"""What a pack reads: arrays loaded as training loads them, or image folders decoded in parallel processes."""

from __future__ import annotations

import hashlib
import math
import os
import signal
import sys
import types
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from aekit.core.pixels import UINT8_MAX, PixelScaling
from aekit.data.pack.files import _q
from aekit.data.pack.reader import is_packed
from aekit.data.pack.schema import AUTO_PARALLEL_IMAGES, DECODE_CHUNK, DECODE_CHUNK_BYTES, PackOptions
from aekit.errors import AekitError

# "process" (spawned processes) or "thread"; benchmarks/pack_speed.py --threads measures both. On 28x28 PNGs
# threads ran no faster than decoding in-process (Pillow holds the GIL for most of a small image's decode).
DECODE_EXECUTOR = "process"


def _options_for(
    source: str, val_split: float, shard_size: int, seed: int = 0, val_from_end: bool = False
) -> tuple[PackOptions, list[Path] | None]:
    """(the options identifying a pack, the image files when the source is an image folder), from the
    source's file listing: no pixels read."""
    from aekit.core.sources import idx_files, image_files, source_kind

    if not isinstance(source, str) or not source:
        raise AekitError("Name a source to pack: a TFDS name, a folder of IDX files or images, or a .npz/.npy file.")
    path = Path(source).expanduser()
    if not path.exists():
        return PackOptions(source, val_split, shard_size, None, seed, val_from_end), None
    path = path.resolve()
    if path.is_dir() and is_packed(str(path)):
        raise AekitError(f"{path} is already a packed dataset. Train from it directly: aekit train --dataset {_q(str(path))}.")
    kind = source_kind(path)
    files = idx_files(path) if kind == "idx" else image_files(path) if kind == "images" else [path]
    digest = hashlib.sha256()
    for file in files:
        stat = file.stat()
        name = file.relative_to(path) if path.is_dir() else file.name
        digest.update(f"{name}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    options = PackOptions(str(path), val_split, shard_size, digest.hexdigest(), seed, val_from_end)
    return options, files if kind == "images" else None


def _load_arrays(source: str, options: PackOptions, data_dir: str | None, pixel_max: float | None) -> _ArrayReader:
    """The source loaded as aekit.data.loading loads `--dataset`; its errors name SOURCE, pack's argument."""
    from aekit.data.loading import load_data

    try:
        splits = load_data(
            source, options.val_split, data_dir, seed=options.seed, val_from_end=options.val_from_end, pixel_max=pixel_max
        )
        return _ArrayReader(splits)
    except AekitError as exc:
        text = str(exc)
        for said, meant in (
            ("--dataset PATH", "a local path as SOURCE"),
            ("--dataset ", "SOURCE "),
            ("Dataset path ", "SOURCE "),
        ):
            text = text.replace(said, meant)
        raise AekitError(text) from None


class _ArrayReader:
    """A source aekit.data.loading loads into memory; chunks are slices converted to uint8."""

    workers = 0

    def __init__(self, splits):
        self.arrays = {"train": splits.train, "val": splits.val}
        self.counts = {split: len(array) for split, array in self.arrays.items()}
        self.image_shape = tuple(int(d) for d in splits.train.shape[1:])
        self.source, self.kind, self.validation, self.note = splits.source, splits.kind, splits.validation, splits.note
        self.scaling, self.source_dtype = splits.scaling, str(splits.train.dtype)
        if splits.train.dtype == np.uint8:
            self.stored_as = "as-is"  # and divided by the source's own scaling (255, or its --pixel-max)
        elif splits.scaling.divide_by == UINT8_MAX:
            self.stored_as = "round(x)"
        elif splits.scaling.divide_by == 1.0:
            self.stored_as = "round(x * 255)"
        else:
            self.stored_as = f"round(x * 255 / {splits.scaling.divide_by:g})"

    def to_uint8(self, images: np.ndarray) -> np.ndarray:
        if images.dtype == np.uint8:
            return np.ascontiguousarray(images)
        if self.scaling.divide_by != UINT8_MAX:
            images = np.asarray(images, np.float64) * (UINT8_MAX / self.scaling.divide_by)
        return np.clip(np.rint(images), 0, UINT8_MAX).astype(np.uint8)

    def pixel_scaling(self, splits, pixel_max: float | None) -> PixelScaling:
        """How the stored uint8 become model inputs: the source's own scaling when stored as-is, else / 255."""
        return self.scaling if self.stored_as == "as-is" else PixelScaling(UINT8_MAX)

    @contextmanager
    def session(self, workers: int):
        """Yields chunks_of(ranges): for each (split, start, stop), that slice as one uint8 chunk. No workers needed."""

        def chunks_of(ranges: Iterable[tuple[str, int, int]]) -> Iterator[np.ndarray]:
            for split, start, stop in ranges:
                yield self.to_uint8(self.arrays[split][start:stop])

        yield chunks_of


class _FolderReader:
    """A folder of PNG/JPEG images, decoded in parallel processes chunk by chunk (never whole).

    The files, their order, the mode picked from the first image, the size check and the split are
    those of `aekit.core.sources.read_image_folder` and `aekit.data.loading.load_data`.
    """

    kind = "images"
    source_dtype = "uint8"
    stored_as = "as-is"
    note = None

    def __init__(self, folder: Path, files: list[Path], options: PackOptions):
        """`files`: aekit.core.sources.image_files(folder), the order read_image_folder reads."""
        from aekit.core.sources import ACCEPTED, IMAGE_SUFFIXES, read_image
        from aekit.core.splits import folder_groups, split_indices

        self.folder = folder
        if not files:
            raise AekitError(f"{folder} contains no IDX files and no {'/'.join(IMAGE_SUFFIXES)} images. Pass {ACCEPTED}.")
        groups = folder_groups([str(f.relative_to(folder)) for f in files])
        split = split_indices(len(files), options.val_split, options.seed, groups, options.val_from_end)
        self.validation = split.describe()
        self.files = {"train": [files[i] for i in split.train], "val": [files[i] for i in split.val]}
        self.counts = {split: len(names) for split, names in self.files.items()}
        pixels, self.mode = read_image(files[0])
        self.first = (str(files[0].relative_to(folder)), pixels.shape)
        self.image_shape = (*pixels.shape[:2], pixels.shape[2] if pixels.ndim == 3 else 1)
        self.source = str(folder)
        self.workers = 1
        self.chunk = max(1, min(DECODE_CHUNK, DECODE_CHUNK_BYTES // math.prod(self.image_shape)))

    def pixel_scaling(self, splits, pixel_max: float | None) -> PixelScaling:
        """The pixel rule (aekit.core.pixels) on the shards' brightest values: the folder is stored as it is."""
        from aekit.core.pixels import PixelRange

        highs = [record.high for records in splits.values() for record in records]
        high = UINT8_MAX if any(h is None for h in highs) else float(max(highs, default=0))
        found = PixelRange("u", 0.0, high, sum(record.images for records in splits.values() for record in records))
        return PixelScaling.for_range(found, pixel_max, f"The images of {self.folder}")

    @contextmanager
    def session(self, workers: int):
        """Yields chunks_of(ranges): the images of each (split, start, stop), decoded `workers` processes wide."""
        from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
        from multiprocessing import get_context

        count = workers or (_cpu_count() if sum(self.counts.values()) >= AUTO_PARALLEL_IMAGES else 1)
        self.workers = count
        executor = None
        if count > 1 and DECODE_EXECUTOR == "thread":
            executor = ThreadPoolExecutor(count)
        elif count > 1:  # spawned, not forked: forking a process that runs TensorFlow's threads can deadlock
            executor = ProcessPoolExecutor(
                count, mp_context=get_context("spawn"), initializer=_start_decoder, initargs=(os.getpid(),)
            )

        def tasks(ranges):
            for split, start, stop in ranges:
                for begin in range(start, stop, self.chunk):
                    names = [str(p) for p in self.files[split][begin : min(begin + self.chunk, stop)]]
                    yield (names, self.mode, self.first, str(self.folder))

        def chunks_of(ranges):
            if executor is None:
                return (decode_files(*task) for task in tasks(ranges))
            return _ordered_map(executor, decode_files, tasks(ranges), lookahead=4 * count)

        if executor is None:
            yield chunks_of
            return
        with _stopped_on_sigterm(executor):
            try:
                yield chunks_of
            except BaseException:  # an error, Ctrl-C or SIGTERM: running decodes are not waited for
                _stop_decoders(executor)
                raise
            finally:
                executor.shutdown(wait=True, cancel_futures=True)


def decode_files(names: list[str], mode: str, first: tuple[str, tuple], folder: str) -> np.ndarray:
    """(n, H, W, C) uint8 of image files, read as `aekit.core.sources.read_image_folder` reads them.

    Runs in the decoding processes; `first` is (name relative to `folder`, pixel shape) of the
    folder's first image, which every image must match.
    """
    from aekit.core.sources import read_image

    arrays = []
    for name in names:
        file = Path(name)
        pixels, _ = read_image(file, mode)
        if pixels.shape != first[1]:
            raise AekitError(
                f"Image {file.relative_to(folder)} is {pixels.shape[1]}x{pixels.shape[0]} but {first[0]} is "
                f"{first[1][1]}x{first[1][0]} (width x height). Resize all images to one size."
            )
        arrays.append(pixels)
    images = np.stack(arrays)
    return images[..., None] if images.ndim == 3 else images


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _start_decoder(parent: int) -> None:
    """Starts a decoding process: it dies with `parent`, and leaves Ctrl-C to the parent, which stops it.

    On Linux the kernel kills it (SIGKILL) when the parent dies, even by SIGKILL; a parent that died
    before this ran (the process is an orphan already) is not waited for either.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    if os.getppid() != parent:
        os._exit(1)


def _ignore_interrupts() -> None:
    """Decoding processes leave Ctrl-C to the parent, which stops them (no traceback per process)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _die_with_parent() -> bool:
    """Asks Linux to SIGKILL this process when its parent dies (prctl PR_SET_PDEATHSIG); False elsewhere."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _stop_decoders(executor) -> None:
    """Ends the decoding processes of `executor` now (SIGTERM, then SIGKILL to any that remain)."""
    processes = list((getattr(executor, "_processes", None) or {}).values())
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(timeout=5)
        if process.is_alive():
            process.kill()
            process.join(timeout=5)


@contextmanager
def _stopped_on_sigterm(executor):
    """While decoding processes run, SIGTERM stops them and exits (code 143) instead of orphaning them.

    Only in the main thread (where Python runs signal handlers) and where no handler was set: a
    caller's own SIGTERM handler is left alone. The decoders also die by themselves when this
    process dies (`_start_decoder`).
    """
    import threading

    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return

    def on_sigterm(signum, _frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _stop_decoders(executor)
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        if signal.getsignal(signal.SIGTERM) is on_sigterm:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _ordered_map(executor, fn, tasks: Iterable[tuple], lookahead: int) -> Iterator:
    """fn(*task) for every task, computed `lookahead` tasks ahead in `executor`, yielded in order."""
    from concurrent.futures.process import BrokenProcessPool

    def submit(task):
        with _main_hidden(), _interrupts_held():
            return executor.submit(fn, *task)

    tasks = iter(tasks)
    pending = deque()
    for task in tasks:
        pending.append(submit(task))
        if len(pending) >= lookahead:
            break
    while pending:
        try:
            result = pending.popleft().result()
        except BrokenProcessPool:
            raise AekitError(
                "A decoding process died (killed, or out of memory?). Run the same command again with fewer --workers; "
                "the finished shards are kept."
            ) from None
        task = next(tasks, None)
        if task is not None:
            pending.append(submit(task))
        yield result


@contextmanager
def _main_hidden():
    """Hides the __main__ module while decoding processes may start (they start inside submit()).

    A spawned process re-runs the parent's main script unless it is a module run with -m; a script
    that calls pack() without an `if __name__ == "__main__":` guard would then pack again in every
    decoding process. The decoders need nothing from __main__, so they get none.
    """
    saved = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        if saved is not None:
            sys.modules["__main__"] = saved


@contextmanager
def _interrupts_held():
    """Holds back Ctrl-C (SIGINT) in this thread while decoding processes may start (inside submit()).

    A process started now inherits the block, so a Ctrl-C while it is still importing stays pending
    until `_start_decoder` discards it, instead of printing a KeyboardInterrupt traceback from
    every process. This process gets a Ctrl-C that came meanwhile once the block is lifted.
    """
    if not hasattr(signal, "pthread_sigmask"):  # Windows: the initializer alone
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
