"""int8 export quality over several trained runs, not one: agreement with Keras and PSNR drop per file.

Trains N runs of the default recipe (seeds 0..N-1) on the shared MNIST test set (first 8,000 images
train, last 2,000 validate), exports each to int8 ONNX and TFLite with aekit's schemes, and prints
per file: the agreement of its reconstructions with Keras' (PSNR in dB; the export's pass bound is
30 dB) and the drop of reconstruction PSNR against the original images. Writes JSON.

    .venv/bin/python benchmarks/int8_quality.py --runs 3 --epochs 12

int8 quality depends on the CPU that runs the file only where the scheme lets it (u8 x s8 products
saturating on AVX2-only x86); the table says which CPU measured it.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

TRAIN_IMAGES, VAL_IMAGES = 8000, 2000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/mnist")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/int8_quality.json"))
    args = parser.parse_args()

    from aekit.core.recipe import TrainConfig
    from aekit.core.system import system_info
    from aekit.exporting.export import ExportOptions, export_run
    from aekit.training.loop import train

    cpu = system_info()["cpu"]
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for seed in range(args.runs):
            run_dir = Path(scratch) / f"seed{seed}"
            config = TrainConfig(
                dataset=str(args.data), val_split=VAL_IMAGES / (TRAIN_IMAGES + VAL_IMAGES), epochs=args.epochs, seed=seed, gpus=0
            )
            result = train(config, run_dir)
            # A low bound keeps every file for the table; the pass/fail column applies the real default (30 dB).
            exported = export_run(run_dir, ExportOptions(formats=("onnx", "tflite"), quantize="int8", min_agreement_db=1.0))
            for entry in exported.entries:
                p = entry.parity
                rows.append(
                    {
                        "seed": seed,
                        "val_mse": result.metrics["final_val_mse"],
                        "file": entry.file,
                        "mse_keras": p.mse_keras,
                        "mse_export": p.mse_export,
                        "psnr_drop_db": p.psnr_drop_db,
                        "agreement_db": p.agreement_db,
                        "passes_default": p.agreement_db >= 30.0,
                    }
                )
                print(
                    f"seed {seed}: {entry.file:<20} agreement {p.agreement_db:5.1f} dB  PSNR drop {p.psnr_drop_db:+.3f} dB",
                    flush=True,
                )

    print(f"\nint8 quality over {args.runs} runs of {args.epochs} epochs ({TRAIN_IMAGES:,}/{VAL_IMAGES:,} digits), CPU: {cpu}")
    header = ("file", "agreement dB (min / mean / max)", "PSNR drop dB (max)", "MSE rise (max)", "pass 30 dB")
    print(f"{header[0]:<20} {header[1]:>32} {header[2]:>19} {header[3]:>15} {header[4]:>11}")
    for name in sorted({r["file"] for r in rows}):
        group = [r for r in rows if r["file"] == name]
        agree = [r["agreement_db"] for r in group]
        rise = max((r["mse_export"] - r["mse_keras"]) / r["mse_keras"] for r in group)
        drop, passed = max(r["psnr_drop_db"] for r in group), sum(r["passes_default"] for r in group)
        print(
            f"{name:<20} {min(agree):>14.1f} / {sum(agree) / len(agree):5.1f} / {max(agree):5.1f} "
            f"{drop:>19.3f} {rise:>14.1%} {passed:>7}/{len(group)}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"cpu": cpu, "epochs": args.epochs, "rows": rows}, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
