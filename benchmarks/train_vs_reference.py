"""aekit's default training recipe against the reference loop, side by side in one run.

Same machine, same data: the shared MNIST test set, first 8,000 images for
training and the last 2,000 for validation. (a) The reference: numpy arrays into
`model.fit`, batch 32, Adam 1e-3, constant rate. (b) `aekit.train` with its
default recipe. Prints per-epoch seconds, samples/s and val MSE, and the wall
time each needs to reach the reference's final val MSE; writes JSON.

    .venv/bin/python benchmarks/train_vs_reference.py --data ../shared/data/mnist --epochs 25
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


TRAIN_IMAGES, VAL_IMAGES = 8000, 2000


def load_split(data: Path):
    from aekit.data.loading import load_data

    splits = load_data(str(data), val_split=VAL_IMAGES / (TRAIN_IMAGES + VAL_IMAGES))
    assert len(splits.train) == TRAIN_IMAGES and len(splits.val) == VAL_IMAGES, splits.describe()
    return splits.scaling.to_model_numpy(splits.train), splits.scaling.to_model_numpy(splits.val), splits


def run_reference(x_train, x_val, epochs: int, seed: int) -> list[dict]:
    """The tutorial's loop: fit on numpy arrays, batch 32, Adam 1e-3, MSE."""
    import keras

    from aekit.training.model import build_autoencoder

    keras.utils.set_random_seed(seed)
    _, _, autoencoder = build_autoencoder(x_train.shape[1:])
    autoencoder.compile(optimizer=keras.optimizers.Adam(learning_rate=1e-3), loss="mse")
    rows: list[dict] = []

    class Clock(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.start = self.epoch_start = time.perf_counter()

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch_start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            now = time.perf_counter()
            rows.append(
                {
                    "epoch": epoch + 1,
                    "seconds": now - self.epoch_start,
                    "samples_per_sec": len(x_train) / (now - self.epoch_start),
                    "val_mse": float(logs["val_loss"]),
                    "elapsed": now - self.start,
                }
            )

    autoencoder.fit(
        x_train,
        x_train,
        epochs=epochs,
        batch_size=32,
        shuffle=True,
        validation_data=(x_val, x_val),
        callbacks=[Clock()],
        verbose=0,
    )
    return rows


def run_aekit(data: Path, epochs: int, overrides: dict) -> tuple[list[dict], dict]:
    from aekit.core.recipe import TrainConfig
    from aekit.training.loop import TrainCallback, train

    rows: list[dict] = []

    class Clock(TrainCallback):
        def on_epoch_begin(self, epoch, steps):
            if not rows and not hasattr(self, "start"):
                self.start = time.perf_counter()

        def on_epoch_end(self, epoch, row):
            rows.append({**row, "elapsed": time.perf_counter() - self.start})

    config = TrainConfig(
        dataset=str(data), val_split=VAL_IMAGES / (TRAIN_IMAGES + VAL_IMAGES), epochs=epochs, gpus=0, **overrides
    )
    with tempfile.TemporaryDirectory() as tmp:
        train(config, Path(tmp) / "run", Clock())
    return rows, config.to_json()


def time_to_reach(rows: list[dict], target: float) -> tuple[float | None, int | None]:
    for row in rows:
        if row["val_mse"] <= target:
            return row["elapsed"], row["epoch"]
    return None, None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/mnist")
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-reference", action="store_true", help="reuse --reference-json instead of rerunning")
    parser.add_argument("--reference-json", type=Path, help="a previous run's JSON to take the reference rows from")
    parser.add_argument("--batch-size", type=int, help="override aekit's default recipe (for tuning)")
    parser.add_argument("--learning-rate", type=float, help="override aekit's default recipe (for tuning)")
    parser.add_argument("--bn-momentum", type=float, help="override aekit's default recipe (for tuning)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/train_vs_reference.json"))
    args = parser.parse_args()

    from loop_overhead import matmul_gflops  # the machine's float32 rate, measured in this run

    from aekit.training.model import build_autoencoder
    from aekit.training.steps import model_macs

    gflops = matmul_gflops()
    flop_per_image = 3 * 2 * model_macs(build_autoencoder()[2])  # forward + backward of one training image
    x_train, x_val, _ = load_split(args.data)
    if args.skip_reference:
        reference = json.loads(args.reference_json.read_text())["reference"]
    else:
        reference = run_reference(x_train, x_val, args.epochs, args.seed)
    overrides = {
        k: v
        for k, v in (("batch_size", args.batch_size), ("learning_rate", args.learning_rate), ("bn_momentum", args.bn_momentum))
        if v
    }
    ours, recipe = run_aekit(args.data, args.epochs, {"seed": args.seed, **overrides})

    target = reference[-1]["val_mse"]
    ref_time = reference[-1]["elapsed"]
    reach_s, reach_epoch = time_to_reach(ours, target)
    print(
        f"\nper epoch (train {TRAIN_IMAGES}, val {VAL_IMAGES}; aekit recipe: batch {recipe['batch_size']}, "
        f"lr {recipe['learning_rate']} {recipe['lr_schedule']})"
    )
    print(
        f"{'epoch':>5} | {'ref s':>6} {'ref img/s':>9} {'ref val MSE':>11} | {'aekit s':>7} {'aekit img/s':>11} {'aekit val MSE':>13}"  # noqa: E501 (one table row)
    )
    for ref_row, our_row in zip(reference, ours):
        print(
            f"{ref_row['epoch']:>5} | {ref_row['seconds']:6.2f} {ref_row['samples_per_sec']:9.0f} {ref_row['val_mse']:11.5f} | "
            f"{our_row['seconds']:7.2f} {our_row['samples_per_sec']:11.0f} {our_row['val_mse']:13.5f}"
        )

    def pct_of_limit(rows):
        rates = [row["samples_per_sec"] for row in rows[1:] or rows]  # the first epoch also compiles
        return 100 * (sum(rates) / len(rates)) * flop_per_image / (gflops * 1e9)

    summary = {
        "matmul_gflops": gflops,
        "training_mflop_per_image": flop_per_image / 1e6,
        "reference_pct_of_matmul_rate": pct_of_limit(reference),
        "aekit_pct_of_matmul_rate": pct_of_limit(ours),
        "reference_final_val_mse": target,
        "reference_wall_seconds": ref_time,
        "aekit_final_val_mse": ours[-1]["val_mse"],
        "aekit_wall_seconds": ours[-1]["elapsed"],
        "aekit_seconds_to_reference_mse": reach_s,
        "aekit_epoch_reaching_reference_mse": reach_epoch,
        "fraction_of_reference_time": (reach_s / ref_time) if reach_s else None,
        "target_final_val_mse": 0.0095,
        "target_fraction": 0.20,
    }
    print()
    for key, value in summary.items():
        print(f"{key:>36}: {value if not isinstance(value, float) else f'{value:.5g}'}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"summary": summary, "recipe": recipe, "reference": reference, "aekit": ours}, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
