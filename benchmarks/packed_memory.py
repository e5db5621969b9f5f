"""Peak memory of training from a packed set larger than memory should need, against the same data in memory.

Makes --images colour images of --size x --size from the real MNIST digits (each channel a 4 x 4
mosaic of different digits, upscaled), as one .npy written in chunks, packs it with `aekit data
pack`, then trains one epoch from the pack with --filters 32,64,128 in a separate process and
reads that process's peak resident memory (its VmHWM). For comparison, both ways on the
first --compare-images images: from a pack of them, and from the .npy in memory. The peak is the
TensorFlow runtime, the step's activations (which grow with --batch-size and the image: about 1 GB
at batch 64 for 128x128 with these filters) and the stream's bounded buffers; not the data. Prints
a table and writes JSON.

    .venv/bin/python benchmarks/packed_memory.py --images 100000 --size 128 --compare-images 20000 --batch-size 16
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = Path(__file__).resolve().parents[1]
MNIST = REPO.parent / "shared" / "data" / "mnist" / "t10k-images-idx3-ubyte.gz"
AEKIT = str(Path(sys.executable).with_name("aekit"))


def make_images(path: Path, count: int, size: int, chunk: int = 2000) -> None:
    """(count, size, size, 3) uint8 in a .npy, written a chunk at a time (never all in memory)."""
    import numpy as np
    from numpy.lib.format import open_memmap

    digits = np.frombuffer(gzip.decompress(MNIST.read_bytes()), np.uint8, offset=16).reshape(-1, 28, 28)
    cell = size // 4
    padded = np.zeros((len(digits), cell, cell), np.uint8)
    scaled = digits if cell == 28 else np.stack([_resize(d, cell) for d in digits])
    padded[:, : scaled.shape[1], : scaled.shape[2]] = scaled
    out = open_memmap(path, mode="w+", dtype=np.uint8, shape=(count, size, size, 3))
    rng = np.random.default_rng(0)
    for start in range(0, count, chunk):
        n = min(chunk, count - start)
        picks = rng.integers(0, len(digits), (n, 3, 4, 4))
        tiles = padded[picks]  # (n, 3, 4, 4, cell, cell)
        out[start : start + n] = _mosaic(tiles, size)
    out.flush()
    del out


def _mosaic(tiles, size):
    n = tiles.shape[0]
    cell = tiles.shape[-1]
    # (n, channel, row, col, y, x) -> (n, row, y, col, x, channel)
    return tiles.transpose(0, 2, 4, 3, 5, 1).reshape(n, 4 * cell, 4 * cell, 3)[:, :size, :size]


def _resize(digit, cell):
    import numpy as np
    from PIL import Image

    return np.asarray(Image.fromarray(digit).resize((cell, cell), Image.Resampling.BILINEAR))


def pack_in_child(source: Path, out: Path) -> float:
    """Packs with `aekit data pack` in a child process (this process stays small: see train_peak_rss); seconds."""
    started = time.perf_counter()
    subprocess.run([AEKIT, "data", "pack", str(source), str(out), "--quiet"], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def train_peak_rss(dataset: str, output: Path, filters: str, batch: int) -> dict:
    """Trains one epoch in a child process; its peak RSS (MB), wall seconds and final val MSE.

    The peak is the child's VmHWM (/proc/PID/status, the high-water mark of its resident memory
    since its exec), read every 0.5 s until it exits. os.wait4's ru_maxrss is recorded too but is
    not the child's own: Linux carries the parent's high-water mark into a vforked child at exec,
    and this process touched every image while writing them (measured: 4,951 MB on every row).
    """
    started = time.perf_counter()
    args = [AEKIT, "train", "--dataset", dataset, "--epochs", "1", "--filters", filters, "--gpus", "0", "-o", str(output)]
    args += ["--batch-size", str(batch)]
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:  # no pipe to fill up
        proc = subprocess.Popen([*args, "--quiet", "--json"], stdout=stdout, stderr=stderr, text=True)
        polled = []
        watcher = threading.Thread(target=_watch_hwm, args=(proc.pid, polled), daemon=True)
        watcher.start()
        _, status, usage = os.wait4(proc.pid, 0)
        stdout.seek(0), stderr.seek(0)
        out, err = stdout.read(), stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"training failed: {err[-2000:]}")
    metrics = json.loads(out.strip().splitlines()[-1])
    return {
        "peak_rss_mb": max(polled, default=0) / 1024,
        "ru_maxrss_mb": usage.ru_maxrss / 1024,
        "seconds": time.perf_counter() - started,
        "val_mse": metrics["final_val_mse"],
    }


def _watch_hwm(pid: int, seen: list) -> None:
    """Appends the child's VmHWM (kB) every 0.5 s until it is gone."""
    while True:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return
        if "VmHWM:" not in status:  # a zombie: gone
            return
        seen.append(int(status.split("VmHWM:")[1].split()[0]))
        time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--filters", default="32,64,128")
    parser.add_argument("--compare-images", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=16, help="activations grow with it: ~1 GB at 64 for 128x128")
    parser.add_argument("--workdir", type=Path, help="keep the data here (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/packed_memory.json"))
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        tmp = Path(tmp)
        sets = [("all", args.images)] + ([("subset", args.compare_images)] if args.compare_images else [])
        for name, count in sets:
            npy = tmp / f"{name}.npy"
            make_images(npy, count, args.size)
            pack_s = pack_in_child(npy, tmp / f"{name}-packed")
            gigabytes = sum(f.stat().st_size for f in (tmp / f"{name}-packed").glob("*.tfrecord")) / 1e9
            print(f"{name}: {count:,} images {args.size}x{args.size}x3, packed {gigabytes:.2f} GB in {pack_s:.0f} s", flush=True)
            ways = [("packed shards", str(tmp / f"{name}-packed"))]
            if name == "subset":
                ways.append(("in memory (.npy)", str(npy)))
            for way, dataset in ways:
                figures = train_peak_rss(dataset, tmp / f"run-{name}-{len(rows)}", args.filters, args.batch_size)
                row = {"set": name, "images": count, "packed_gb": gigabytes, "input": way, **figures}
                rows.append(row)
                print(
                    f"   {way:<17} peak RSS {row['peak_rss_mb']:7.0f} MB  {row['seconds']:6.0f} s  val MSE {row['val_mse']:.5f}"
                )
            npy.unlink()
    print(f"\n{'images':>8} {'data GB':>8} {'input':<17} {'peak RSS MB':>11} {'1 epoch s':>9}")
    for r in rows:
        print(f"{r['images']:>8,} {r['packed_gb']:>8.2f} {r['input']:<17} {r['peak_rss_mb']:>11.0f} {r['seconds']:>9.0f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"size": args.size, "filters": args.filters, "batch": args.batch_size, "rows": rows}, indent=2)
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
