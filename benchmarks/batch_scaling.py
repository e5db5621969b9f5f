"""Final validation MSE against the global batch: how far batches can grow before quality falls.

Same data and epochs as benchmarks/train_vs_reference.py (shared MNIST, 8,000 train / 2,000
validation, 25 epochs), aekit's default recipe except the global batch, for batch 64 ... 2048, each
with the peak learning rate (a) kept at the default 5e-3 and (b) scaled by sqrt(batch / 64), and the
warm-up kept at the same number of images (150 steps of 64). Prints a table (batch, rule, rate,
steps, final val MSE, img/s, wall time) and writes JSON. On this CPU the img/s column shows what a
larger batch buys in throughput here; the MSE column is what it costs in quality, on any device.

    .venv/bin/python benchmarks/batch_scaling.py --epochs 25
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main() -> None:
    from train_vs_reference import run_aekit

    from aekit.core.recipe import BASE_LEARNING_RATE, CPU_BATCH, WARMUP_IMAGES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/mnist")
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--batches", default="64,128,256,512,1024,2048")
    parser.add_argument("--rules", default="constant,sqrt")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/batch_scaling.json"))
    args = parser.parse_args()

    rows = []
    for batch in (int(b) for b in args.batches.split(",")):
        for rule in args.rules.split(","):
            if batch == CPU_BATCH and rule != args.rules.split(",")[0]:
                continue  # the same run
            lr = BASE_LEARNING_RATE * (math.sqrt(batch / CPU_BATCH) if rule == "sqrt" else 1.0)
            warmup = max(1, round(WARMUP_IMAGES / batch))
            history, _ = run_aekit(args.data, args.epochs, {"batch_size": batch, "learning_rate": lr, "warmup_steps": warmup})
            last = history[-1]
            rates = [row["samples_per_sec"] for row in history[1:] or history]
            row = {
                "batch": batch,
                "rule": rule,
                "learning_rate": lr,
                "warmup_steps": warmup,
                "steps": args.epochs * (8000 // batch),
                "final_val_mse": last["val_mse"],
                "best_val_mse": min(r["val_mse"] for r in history),
                "img_per_s": sum(rates) / len(rates),
                "wall_s": last["elapsed"],
            }
            rows.append(row)
            print(
                f"batch {batch:>5} {rule:<8} lr {lr:.2e} steps {row['steps']:>5}: final val MSE {row['final_val_mse']:.5f}, "
                f"{row['img_per_s']:.0f} img/s, {row['wall_s']:.0f} s",
                flush=True,
            )
    print(f"\n{'batch':>5} {'lr rule':<8} {'peak lr':>8} {'steps':>6} {'final val MSE':>13} {'img/s':>7} {'wall s':>7}")
    for r in rows:
        print(
            f"{r['batch']:>5} {r['rule']:<8} {r['learning_rate']:>8.2e} {r['steps']:>6} {r['final_val_mse']:>13.5f} "
            f"{r['img_per_s']:>7.0f} {r['wall_s']:>7.0f}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"epochs": args.epochs, "rows": rows}, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
