"""int8 export quality over several trained runs and two kinds of model: agreement on both kernel sets, size, speed.

Trains N runs (seeds 0..N-1) of each model kind, exports each to float32 and int8 ONNX and TFLite with
aekit's defaults (sensitive nodes kept float automatically, aekit.exporting.int8), and prints per int8 file:
- agreement of its reconstructions with Keras' (PSNR in dB; the pass bound is 30) on the default kernels
  (onnxruntime fully optimized, LiteRT with XNNPACK) and on the reference kernels (graph optimizations
  off; LiteRT's built-in reference kernels), and what the all-int8 file measured before any node was kept float;
- how many nodes stayed float;
- its size and its speed (img/s at batch 64, 2 threads, default kernels) against the float32 file of the same run.

Model kinds: "digits" (the shared MNIST test set, first 8,000 train, last 2,000 validate, the default
recipe) and "photos" (3,000 generated 64x64 RGB photo patches, benchmarks/photo_patches.py,
--filters 32,64,128 --latent-dim 128, 8 epochs). Writes JSON.

    .venv/bin/python benchmarks/int8_quality.py --runs 3 --kinds digits,photos
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("AEKIT_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

TRAIN_IMAGES, VAL_IMAGES = 8000, 2000


def speed(path: Path, inputs: np.ndarray, batch: int = 64, threads: int = 2) -> float:
    """Images per second at `batch`, best of 5 rounds of 3 runs."""
    from aekit.edge.runtimes import open_runner

    runner = open_runner(path, "cpu", threads=threads)
    x = inputs[:batch]
    runner.run(x)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(3):
            runner.run(x)
        best = min(best, (time.perf_counter() - start) / 3)
    return batch / best


def configs(kind: str, data: Path, scratch: Path, epochs: int | None):
    from aekit.core.recipe import TrainConfig

    if kind == "digits":
        return lambda seed: TrainConfig(
            dataset=str(data), val_split=VAL_IMAGES / (TRAIN_IMAGES + VAL_IMAGES), epochs=epochs or 12, seed=seed, gpus=0
        )
    from photo_patches import photo_patches

    npz = scratch / "photos.npz"
    if not npz.exists():
        np.savez(npz, x=photo_patches(3000, 64, seed=1234))
    return lambda seed: TrainConfig(
        dataset=str(npz), filters=(32, 64, 128), latent_dim=128, epochs=epochs or 8, seed=seed, gpus=0
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/mnist")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--kinds", default="digits,photos")
    parser.add_argument("--epochs", type=int, default=None, help="Default: 12 for digits, 8 for photos.")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/int8_quality.json"))
    args = parser.parse_args()

    from aekit.core.system import system_info
    from aekit.exporting.export import ExportOptions, export_run, load_run
    from aekit.training.loop import train

    cpu = system_info()["cpu"]
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        for kind in args.kinds.split(","):
            config_for = configs(kind, args.data, scratch, args.epochs)
            for seed in range(args.runs):
                run_dir = scratch / f"{kind}{seed}"
                result = train(config_for(seed), run_dir)
                export_run(run_dir, ExportOptions(formats=("onnx", "tflite"), output=run_dir / "float"))
                exported = export_run(run_dir, ExportOptions(formats=("onnx", "tflite"), quantize="int8"))
                loaded = load_run(run_dir)
                images = loaded.scaling.to_model_numpy(loaded.splits.sample("val", 64))
                latents = np.asarray(loaded.models["encoder"](images, training=False))
                kept = [e for e in exported.entries if (e.quantization or {}).get("float_nodes")]
                if kept:  # what keeping nodes float costs in speed: the same files all int8, side by side
                    fmts = tuple(sorted({e.format for e in kept}))
                    parts = tuple(sorted({e.role for e in kept}))
                    pure = dict(quantize="int8", int8_float="none", min_agreement_db=1, output=run_dir / "allint8")
                    export_run(run_dir, ExportOptions(formats=fmts, parts=parts, **pure))
                for entry in exported.entries:
                    q = entry.quantization or {}
                    p, ref = entry.parity, entry.reference_parity
                    float_file = run_dir / "float" / entry.file.replace("_int8", "")
                    file = exported.output / entry.file
                    inputs = latents if entry.role == "decoder" else images
                    passed = entry.status == "passed"
                    row = {
                        "kind": kind,
                        "seed": seed,
                        "val_psnr": result.metrics.get("final_val_psnr"),
                        "file": entry.file,
                        "status": entry.status,
                        "reason": entry.reason,
                        "agreement_db": p.agreement_db if p else None,
                        "reference_agreement_db": ref.agreement_db if ref else None,
                        "all_int8_db": min(q.get("all_int8_agreement_db", {}).values(), default=None),
                        "float_nodes": len(q.get("float_nodes", [])),
                        "nodes": q.get("quantizable_nodes"),
                        "bytes": file.stat().st_size if passed else None,
                        "float32_bytes": float_file.stat().st_size,
                        "img_s": speed(file, inputs) if passed else None,
                        "float32_img_s": speed(float_file, inputs),
                    }
                    all_int8 = run_dir / "allint8" / entry.file
                    row["all_int8_img_s"] = speed(all_int8, inputs) if row["float_nodes"] and all_int8.exists() else None
                    rows.append(row)
                    print(
                        f"{kind} seed {seed}: {entry.file:<20} {entry.status:<6} agreement {row['agreement_db'] or 0:5.1f} dB, "
                        f"reference {row['reference_agreement_db'] or 0:5.1f} dB, all-int8 {row['all_int8_db'] or 0:5.1f} dB, "
                        f"{row['float_nodes']}/{row['nodes']} float, {row['img_s'] or 0:,.0f} img/s "
                        f"(all int8 {row['all_int8_img_s'] or 0:,.0f}, float32 {row['float32_img_s']:,.0f})",
                        flush=True,
                    )

    print(f"\nint8 files over {args.runs} seeds per model kind, CPU: {cpu}")
    head = ("model", "file", "pass 30 dB", "agreement dB min/mean", "reference dB min", "all-int8 dB min",
            "nodes float", "size vs fp32", "img/s int8 / fp32", "img/s all int8 (where nodes kept float)")  # fmt: skip
    print(" | ".join(head))
    for kind in args.kinds.split(","):
        for name in sorted({r["file"] for r in rows if r["kind"] == kind}):
            group = [r for r in rows if r["kind"] == kind and r["file"] == name]
            ok = [r for r in group if r["status"] == "passed"]
            agree = [r["agreement_db"] for r in group if r["agreement_db"] is not None]
            refs = [r["reference_agreement_db"] for r in group if r["reference_agreement_db"] is not None]
            base = [r["all_int8_db"] for r in group if r["all_int8_db"] is not None]
            floats = sorted({r["float_nodes"] for r in group})
            size = np.mean([r["bytes"] / r["float32_bytes"] for r in ok]) if ok else float("nan")
            fast = np.mean([r["img_s"] for r in ok]) if ok else float("nan")
            slow = np.mean([r["float32_img_s"] for r in group])
            pure = [r["all_int8_img_s"] for r in group if r.get("all_int8_img_s")]
            pure = f"{np.mean(pure):,.0f} ({len(pure)} of {len(group)})" if pure else "-"
            print(
                f"{kind} | {name} | {len(ok)}/{len(group)} | {min(agree, default=float('nan')):.1f} / "
                f"{np.mean(agree) if agree else float('nan'):.1f} | {min(refs, default=float('nan')):.1f} | "
                f"{min(base, default=float('nan')):.1f} | {','.join(map(str, floats))} of {group[0]['nodes']} | "
                f"{size:.2f}x | {fast:,.0f} / {slow:,.0f} | {pure}"
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"cpu": cpu, "rows": rows}, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
