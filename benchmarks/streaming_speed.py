"""Training from packed shards against training from memory, side by side in one run (img/s, val MSE).

The 8k/2k MNIST benchmark of benchmarks/train_vs_reference.py: the shared MNIST test set, first 8,000
for training and last 2,000 for validation, packed once with `aekit data pack` (shards of 1,000), then
the same recipe trained for --epochs from memory and from the shards, alternately --rounds times.
Prints per-run img/s (epochs after the first), the ratio, and the final val MSE of each; writes JSON.

    .venv/bin/python benchmarks/streaming_speed.py --epochs 4 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def run(dataset: str, epochs: int, folder: Path) -> dict:
    from aekit.core.recipe import TrainConfig
    from aekit.training.loop import train

    result = train(TrainConfig(dataset=dataset, val_split=0.2, epochs=epochs, gpus=0), folder)
    rates = [row["samples_per_sec"] for row in result.history[1:] or result.history]
    return {"img_per_s": sum(rates) / len(rates), "final_val_mse": result.history[-1]["val_mse"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/mnist")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/streaming_speed.json"))
    args = parser.parse_args()

    from aekit.data.pack.writer import pack

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        packed = Path(tmp) / "mnist-8k-2k"
        pack(str(args.data), packed, val_split=0.2, shard_size=1000)
        for round_ in range(args.rounds):
            for name, dataset in (("in memory", str(args.data)), ("packed shards", str(packed))):
                row = {"round": round_ + 1, "input": name, **run(dataset, args.epochs, Path(tmp) / f"run-{round_}-{len(rows)}")}
                rows.append(row)
                print(f"round {row['round']} {name:<14} {row['img_per_s']:7.0f} img/s  final val MSE {row['final_val_mse']:.5f}")
    mean = {
        name: sum(r["img_per_s"] for r in rows if r["input"] == name) / args.rounds for name in ("in memory", "packed shards")
    }
    ratio = mean["packed shards"] / mean["in memory"]
    print(f"\n{'input':<14} {'img/s (mean)':>12}")
    for name, value in mean.items():
        print(f"{name:<14} {value:>12.0f}")
    print(f"streaming / in memory: {ratio:.3f} (goal: within 10%, >= 0.90)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"epochs": args.epochs, "rows": rows, "mean": mean, "ratio": ratio}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
