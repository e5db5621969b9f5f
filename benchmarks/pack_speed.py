"""How fast `aekit data pack` turns a folder of PNGs into TFRecord shards, with 1 and with 2 decoding processes.

Makes a folder of N PNGs from the real MNIST digits (each digit resized to --size x --size, grey),
then, side by side in one run, times `aekit.data.pack.writer.pack()` on it with each --workers value into a fresh
folder, and next to them the serial in-memory read aekit.core.sources.read_image_folder does (when the
images fit in 2 GB). Both packs must come out byte-identical (same identity). Prints a table and
writes JSON.

    .venv/bin/python benchmarks/pack_speed.py                       # 100,000 28x28 PNGs
    .venv/bin/python benchmarks/pack_speed.py --images 5000 --size 64 --threads
    .venv/bin/python benchmarks/pack_speed.py --folder /data/pngs   # reuse (or make once) a PNG folder

The PNG folder is a temporary one unless --folder is given; a --folder holding exactly --images PNGs
of --size is reused as is. Files freshly written sit in the page cache, so this measures decoding and
writing, not a cold disk.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = Path(__file__).resolve().parents[1]
MNIST = Path(os.environ.get("AEKIT_TEST_MNIST", REPO.parent / "shared" / "data" / "mnist")) / "t10k-images-idx3-ubyte.gz"
PER_FOLDER = 1000


def mnist_digits():
    import numpy as np

    raw = gzip.decompress(MNIST.read_bytes())
    return np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 28, 28)


def _write_pngs(folder: str, start: int, stop: int, size: int) -> int:
    from PIL import Image

    digits = mnist_digits()
    for i in range(start, stop):
        image = Image.fromarray(digits[i % len(digits)])
        if size != 28:
            image = image.resize((size, size), Image.Resampling.BILINEAR)
        sub = Path(folder) / f"{i // PER_FOLDER:04d}"
        sub.mkdir(exist_ok=True)
        image.save(sub / f"{i:07d}.png")
    return stop - start


def make_folder(folder: Path, images: int, size: int, processes: int) -> float:
    """Writes `images` PNGs (PER_FOLDER per subfolder); reuses a folder that already holds them. Seconds spent."""
    from PIL import Image

    existing = sorted(folder.rglob("*.png")) if folder.is_dir() else []
    if len(existing) == images and existing:
        with Image.open(existing[0]) as first:
            if first.size == (size, size):
                print(f"reusing {images:,} {size}x{size} PNGs in {folder}", file=sys.stderr)
                return 0.0
    if existing:
        raise SystemExit(
            f"{folder} holds {len(existing):,} PNGs, not {images:,} of {size}x{size}; pass an empty or new --folder."
        )
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    step = 2 * PER_FOLDER
    with ProcessPoolExecutor(processes) as pool:
        list(pool.map(_write_pngs, *zip(*[(str(folder), s, min(s + step, images), size) for s in range(0, images, step)])))
    seconds = time.perf_counter() - started
    print(f"wrote {images:,} {size}x{size} PNGs in {seconds:.1f} s to {folder}", file=sys.stderr)
    return seconds


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the decoding processes, once joined)."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def time_pack(folder: Path, out: Path, workers: int, shard_size: int, executor: str) -> dict:
    import aekit.data.pack.sources as pack_sources
    import aekit.data.pack.writer as packed

    pack_sources.DECODE_EXECUTOR = executor
    shutil.rmtree(out, ignore_errors=True)
    cpu, started = cpu_seconds(), time.perf_counter()
    result = packed.pack(str(folder), out, shard_size=shard_size, workers=workers)
    seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu
    images = result.manifest.count("train") + result.manifest.count("val")
    shutil.rmtree(out, ignore_errors=True)
    return {
        "what": f"pack, {workers} decoding {'threads' if executor == 'thread' else 'processes'}"
        if workers > 1
        else "pack, decoding in-process",
        "workers": workers,
        "executor": executor if workers > 1 else "none",
        "images": images,
        "seconds": round(seconds, 3),
        "images_per_sec": round(images / seconds, 1),
        "cpu_seconds": round(cpu, 3),
        "mb": round(result.bytes / 1e6, 2),
        "shards": len(result.manifest.splits["train"]) + len(result.manifest.splits["val"]),
        "identity": result.manifest.identity,
    }


def time_read_image_folder(folder: Path, images: int) -> dict:
    from aekit.core.sources import read_image_folder

    cpu, started = cpu_seconds(), time.perf_counter()
    array = read_image_folder(folder)
    seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu
    return {
        "what": "read_image_folder (serial, in memory; no shards)",
        "workers": 1,
        "executor": "none",
        "images": len(array),
        "seconds": round(seconds, 3),
        "images_per_sec": round(images / seconds, 1),
        "cpu_seconds": round(cpu, 3),
        "mb": round(array.nbytes / 1e6, 2),
        "shards": 0,
        "identity": None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000, help="PNGs to make and pack (default 100,000)")
    parser.add_argument("--size", type=int, default=28, help="side of each square PNG (MNIST digits resized; default 28)")
    parser.add_argument("--folder", type=Path, help="where the PNGs go (and stay); default a temporary folder, removed after")
    parser.add_argument("--shard-size", type=int, default=4096)
    parser.add_argument("--workers", default="1,2", help="comma-separated --workers values to time (default 1,2)")
    parser.add_argument("--threads", action="store_true", help="also time threads instead of processes for workers > 1")
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "pack_speed.json")
    args = parser.parse_args()
    workers = [int(w) for w in args.workers.split(",")]
    if args.images < 2 or args.size < 1 or min(workers) < 1:
        raise SystemExit("--images must be at least 2, --size and every --workers value at least 1")

    import tensorflow as tf  # noqa: F401  (imported before the clock starts, as the CLI does)

    load = os.getloadavg()[0]

    scratch = Path(tempfile.mkdtemp(prefix="aekit-pack-speed-"))
    folder = args.folder or scratch / "pngs"
    try:
        made = make_folder(folder, args.images, args.size, max(1, os.cpu_count() or 1))
        rows = []
        in_memory = args.images * args.size * args.size
        if in_memory < 2 << 30:
            rows.append(time_read_image_folder(folder, args.images))
        for w in workers:
            rows.append(time_pack(folder, scratch / f"out-{w}", w, args.shard_size, "process"))
        if args.threads:
            for w in (w for w in workers if w > 1):
                rows.append(time_pack(folder, scratch / f"out-t{w}", w, args.shard_size, "thread"))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    base = next((r for r in rows if r["what"].startswith("pack") and r["workers"] == 1), None)
    for r in rows:
        r["speedup_vs_1_worker"] = round(r["images_per_sec"] / base["images_per_sec"], 2) if base else None
    identities = {r["identity"] for r in rows if r["identity"]}
    print(
        f"\npack speed: {args.images:,} {args.size}x{args.size} grey PNGs, shards of {args.shard_size}, "
        f"{os.cpu_count()} logical cores ({platform.processor() or platform.machine()})"
    )
    print(f"load average before the run: {load:.2f} (other processes on these cores slow every row)")
    print(f"{'what':<52} {'seconds':>8} {'images/s':>10} {'speed-up':>9} {'CPU s':>7} {'MB':>8}")
    for r in rows:
        speedup = f"{r['speedup_vs_1_worker']:.2f}x" if r["speedup_vs_1_worker"] is not None else "-"
        print(
            f"{r['what']:<52} {r['seconds']:>8.2f} {r['images_per_sec']:>10,.0f} {speedup:>9} {r['cpu_seconds']:>7.2f} "
            f"{r['mb']:>8.1f}"
        )
    print(f"every pack byte-identical: {len(identities) == 1}")
    report = {
        "benchmark": "pack_speed",
        "images": args.images,
        "size": args.size,
        "shard_size": args.shard_size,
        "png_folder_seconds": round(made, 2),
        "cpu_count": os.cpu_count(),
        "load_average_before": round(load, 2),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "identical_packs": len(identities) == 1,
        "rows": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
