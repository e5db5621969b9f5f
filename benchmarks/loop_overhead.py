"""The fixed cost of a training step: what is left when the arithmetic is gone, the proxy for a GPU.

Side by side in one run, on this machine's CPU: ms per step of a model so small that its arithmetic
is negligible (--filters 1,1 --latent-dim 1) and of the reference model, each with K = 1 step per
tf.function call and with K = 32 (aekit's --steps-per-execution), with Keras' BatchNorm and Adam
and with aekit's fused training kernels (aekit.training.kernels), on one device and on 2 logical CPU
replicas (MirroredStrategy); next to a large float32 matmul on the same threads, which gives the
machine's arithmetic rate. The images are held on the device and gathered in the step, as in
aekit's training.

The fixed cost of a step is what it costs whatever the batch: the tiny model is also timed at
batches 2 and 8, and a straight line through its ms/step against the batch gives the cost at batch
0 (the fixed cost) and the cost per image. At batch 64 the tiny model is not free of arithmetic on a
CPU: oneDNN computes one-channel convolutions in blocks of 16 channels (ONEDNN_VERBOSE shows the
padded weight layouts), so its step grows with the batch. Prints the tables and writes JSON.

    .venv/bin/python benchmarks/loop_overhead.py --steps 96
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def matmul_gflops(seconds: float = 2.0, n: int = 2048) -> float:
    import tensorflow as tf

    a = tf.random.normal((n, n))
    b = tf.random.normal((n, n))
    tf.linalg.matmul(a, b).numpy()
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        tf.linalg.matmul(a, b).numpy()
        count += 1
    return 2 * n**3 * count / (time.perf_counter() - started) / 1e9


MAX_K = 32  # steps per call at most: one epoch of the synthetic images


def build_step(strategy, filters, latent, batch: int, fused: bool = True, seed: int = 0):
    """aekit's training step for a model on MAX_K batches of random uint8 digit-sized images: (train_steps, order, model).

    fused: aekit's training kernels (fused BatchNorm and Adam); False: Keras' own layers and Adam.
    """
    import keras
    import numpy as np

    from aekit.core.pixels import PixelScaling
    from aekit.data.feeds import DeviceImages
    from aekit.training.kernels import FusedAdam
    from aekit.training.model import build_autoencoder
    from aekit.training.steps import make_train_steps

    keras.utils.set_random_seed(seed)
    replicas = strategy.num_replicas_in_sync
    with strategy.scope():
        _, _, model = build_autoencoder(
            (28, 28, 1), filters, latent, bn_momentum=0.9, synchronized_bn=replicas > 1, fused_bn=fused
        )
        optimizer = (FusedAdam if fused else keras.optimizers.Adam)(1e-3)
        optimizer.build(model.trainable_variables)
    images = np.random.default_rng(seed).integers(0, 256, (batch * MAX_K, 28, 28, 1), dtype=np.uint8)
    device_images = DeviceImages(images, PixelScaling(), strategy, batch, seed, on_gpu=False)
    return make_train_steps(strategy, model, optimizer, device_images, "float32"), device_images.epoch_order(1), model


def time_steps(strategy, filters, latent, batch: int, k: int, steps: int, fused: bool = True) -> tuple[float, float]:
    """(ms per step, MFLOP per step) of aekit's training step, K steps per call."""
    import tensorflow as tf

    from aekit.training.steps import model_macs

    assert k <= MAX_K
    train_steps, order, model = build_step(strategy, filters, latent, batch, fused)
    per_call = tf.constant(k, tf.int32)
    first = tf.constant(0, tf.int32)
    train_steps(order, first, per_call).numpy()
    train_steps(order, first, per_call).numpy()
    calls = max(1, steps // k)
    started = time.perf_counter()
    for _ in range(calls):
        train_steps(order, first, per_call).numpy()
    seconds = time.perf_counter() - started
    return 1000 * seconds / (calls * k), 3 * 2 * model_macs(model) * batch / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=96)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--small-batches", default="2,8", help="the tiny model's extra batches, for the fixed cost")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/loop_overhead.json"))
    args = parser.parse_args()

    import numpy as np
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    gflops = matmul_gflops()
    strategies = {
        "1 device": tf.distribute.get_strategy(),
        "2 CPU replicas": tf.distribute.MirroredStrategy(
            ["/cpu:0", "/cpu:1"], cross_device_ops=tf.distribute.ReductionToOneDevice()
        ),
    }
    rows = []
    for placement, strategy in strategies.items():
        for model, (filters, latent) in (("tiny (1,1 / 1)", ((1, 1), 1)), ("reference (32,64 / 16)", ((32, 64), 16))):
            for k, kernels in ((1, "Keras"), (32, "Keras"), (1, "aekit"), (32, "aekit")):
                ms, mflop = time_steps(strategy, filters, latent, args.batch, k, args.steps, fused=kernels == "aekit")
                rows.append(
                    {
                        "placement": placement,
                        "model": model,
                        "kernels": kernels,
                        "k": k,
                        "batch": args.batch,
                        "ms_per_step": ms,
                        "mflop_per_step": mflop,
                        "pct_of_matmul_rate": 100 * mflop / 1e3 / (ms / 1e3) / gflops,
                    }
                )
                print(f"{placement:<15} {model:<24} {kernels:<6} K={k:<3} {ms:8.2f} ms/step  {mflop:8.1f} MFLOP/step", flush=True)

    small = [int(b) for b in args.small_batches.split(",")]
    fixed = []
    for placement, strategy in strategies.items():
        for k, kernels in ((1, "Keras"), (32, "Keras"), (1, "aekit"), (32, "aekit")):
            at = {b: time_steps(strategy, (1, 1), 1, b, k, args.steps, fused=kernels == "aekit")[0] for b in small}
            at[args.batch] = next(
                r["ms_per_step"]
                for r in rows
                if r["placement"] == placement and r["model"].startswith("tiny") and r["kernels"] == kernels and r["k"] == k
            )
            batches = sorted(at)
            per_image, intercept = np.polyfit(batches, [at[b] for b in batches], 1)
            fixed.append(
                {
                    "placement": placement,
                    "kernels": kernels,
                    "k": k,
                    "ms_per_step_by_batch": {str(b): at[b] for b in batches},
                    "fixed_ms_per_step": float(intercept),
                    "us_per_image": float(1000 * per_image),
                }
            )
            print(f"{placement:<15} tiny {kernels:<6} K={k:<3} " + "  ".join(f"b{b}: {at[b]:.2f}" for b in batches), flush=True)

    print(f"\nfloat32 matmul 2048x2048 on these threads: {gflops:.1f} GFLOP/s; batch {args.batch}")
    print(f"{'placement':<15} {'model':<24} {'kernels':<7} {'K':>3} {'ms/step':>8} {'% of matmul rate':>17}")
    for r in rows:
        print(
            f"{r['placement']:<15} {r['model']:<24} {r['kernels']:<7} {r['k']:>3} {r['ms_per_step']:>8.2f} "
            f"{r['pct_of_matmul_rate']:>16.1f}%"
        )
    print("\nthe tiny model's ms/step against the batch; fixed = the fitted line's value at batch 0")
    heads = "".join(f"{'b' + b:>9}" for b in fixed[0]["ms_per_step_by_batch"])
    print(f"{'placement':<15} {'kernels':<7} {'K':>3}{heads} {'fixed ms':>9} {'us/image':>9}")
    for r in fixed:
        cells = "".join(f"{v:>9.2f}" for v in r["ms_per_step_by_batch"].values())
        print(
            f"{r['placement']:<15} {r['kernels']:<7} {r['k']:>3}{cells} {r['fixed_ms_per_step']:>9.2f} {r['us_per_image']:>9.1f}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"matmul_gflops": gflops, "batch": args.batch, "rows": rows, "fixed_cost": fixed}, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
