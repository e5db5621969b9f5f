"""How fast this CPU runs the reference model's convolutions, and the bound that puts on a training step.

A training step of the reference model runs 14 convolution kernels: for each of its 5 convolution
layers the forward pass, the gradient to the layer's input (not for the first layer, whose input is
the data) and the gradient to its kernel. Each is one of TensorFlow's three convolution kernels
(Conv2D, Conv2DBackpropInput, Conv2DBackpropFilter; oneDNN's on this CPU), at the shapes the step runs
them. This times each kernel alone, ten in a row per call, next to a large float32 matmul on the same
threads and aekit's whole training step, all in one run, and prints:

- each kernel's rate as a share of the matmul rate;
- the ceiling: the step's arithmetic (every layer, 3 x 2 x multiply-adds per image) over the time of
  its 14 convolution kernels alone. No step can use a larger share of the matmul rate while it runs
  these kernels, even if BatchNorm, activations, the optimizer and the input took no time;
- the share the whole step reaches.

    .venv/bin/python benchmarks/conv_ceiling.py --batches 64,256
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPEATS = 10  # kernels per call, run one after another


def conv_layers(image=(28, 28, 1), filters=(32, 64)):
    """The reference model's convolutions as (name, big map (H, W, C), small-map channels, stride, kernels run in a step).

    Each layer relates a big map and a small map by a 3x3 kernel: an encoder convolution computes the
    small from the big (forward: Conv2D), a decoder's transposed one the big from the small (forward:
    Conv2DBackpropInput); the gradients are the other two kernels.
    """
    height, width, channels = image
    layers = []
    size, c_in = (height, width), channels
    for i, f in enumerate(filters):
        needed = ("Conv2D", "Conv2DBackpropFilter") if i == 0 else ("Conv2D", "Conv2DBackpropInput", "Conv2DBackpropFilter")
        layers.append((f"encoder conv {c_in}->{f}", (size[0], size[1], c_in), f, 2, needed))
        size, c_in = (size[0] // 2, size[1] // 2), f
    for f in reversed(filters):
        big = (size[0] * 2, size[1] * 2, f)
        layers.append((f"decoder conv-T {c_in}->{f}", big, c_in, 2, ("Conv2DBackpropInput", "Conv2D", "Conv2DBackpropFilter")))
        size, c_in = big[:2], f
    layers.append(
        (
            f"decoder conv-T {c_in}->{channels}",
            (size[0], size[1], channels),
            c_in,
            1,
            ("Conv2DBackpropInput", "Conv2D", "Conv2DBackpropFilter"),
        )
    )
    return layers


def time_kernel(kind: str, batch: int, big, small_channels: int, stride: int) -> tuple[float, float]:
    """(ms per kernel, GFLOP per kernel) of one convolution kernel at these shapes."""
    import tensorflow as tf

    rng = tf.random.Generator.from_seed(0)
    h, w, cb = big
    sh, sw = -(-h // stride), -(-w // stride)
    big_map = rng.normal((batch, h, w, cb))
    small_map = rng.normal((batch, sh, sw, small_channels))
    kernel = rng.normal((3, 3, cb, small_channels))
    strides = [1, stride, stride, 1]

    def once(big_map, small_map, kernel):
        if kind == "Conv2D":
            return tf.nn.conv2d(big_map, kernel, strides, "SAME")
        if kind == "Conv2DBackpropInput":
            return tf.raw_ops.Conv2DBackpropInput(
                input_sizes=big_map.shape, filter=kernel, out_backprop=small_map, strides=strides, padding="SAME"
            )
        return tf.raw_ops.Conv2DBackpropFilter(
            input=big_map, filter_sizes=kernel.shape, out_backprop=small_map, strides=strides, padding="SAME"
        )

    @tf.function
    def run(big_map, small_map, kernel):
        # The maps are arguments, not constants (which the graph optimizer would fold away), and the
        # kernels run in a sequential loop, one after another, each on its own iteration.
        def body(i, total):
            out = once(big_map, small_map, kernel)
            return i + 1, total + tf.reshape(out, [-1])[0]

        return tf.while_loop(lambda i, _: i < REPEATS, body, (tf.constant(0), tf.constant(0.0)), parallel_iterations=1)[1]

    run(big_map, small_map, kernel).numpy()
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        run(big_map, small_map, kernel).numpy()
        best = min(best, time.perf_counter() - started)
    macs = batch * sh * sw * 9 * cb * small_channels
    return 1000 * best / REPEATS, 2 * macs / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="64,256")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/conv_ceiling.json"))
    args = parser.parse_args()

    import tensorflow as tf
    from loop_overhead import matmul_gflops, time_steps

    gflops = matmul_gflops()
    results = []
    for batch in (int(b) for b in args.batches.split(",")):
        kernels = []
        for name, big, small_channels, stride, needed in conv_layers():
            for kind in needed:
                ms, gflop = time_kernel(kind, batch, big, small_channels, stride)
                kernels.append(
                    {
                        "layer": name,
                        "kernel": kind,
                        "ms": ms,
                        "gflop": gflop,
                        "pct_of_matmul_rate": 100 * gflop / (ms / 1e3) / gflops,
                    }
                )
                print(
                    f"batch {batch:>4} {name:<22} {kind:<21} {ms:7.2f} ms {kernels[-1]['pct_of_matmul_rate']:6.1f}%", flush=True
                )
        step_ms, step_mflop = time_steps(tf.distribute.get_strategy(), (32, 64), 16, batch, 32, 64 if batch < 256 else 32)
        conv_ms = sum(k["ms"] for k in kernels)
        conv_gflop = sum(k["gflop"] for k in kernels)
        results.append(
            {
                "batch": batch,
                "kernels": kernels,
                "conv_kernels_ms": conv_ms,
                "conv_kernels_pct_of_matmul_rate": 100 * conv_gflop / (conv_ms / 1e3) / gflops,
                "step_gflop": step_mflop / 1e3,
                "ceiling_pct_of_matmul_rate": 100 * step_mflop / 1e3 / (conv_ms / 1e3) / gflops,
                "step_ms": step_ms,
                "step_pct_of_matmul_rate": 100 * step_mflop / 1e3 / (step_ms / 1e3) / gflops,
            }
        )

    print(f"\nfloat32 matmul 2048x2048 on these threads: {gflops:.1f} GFLOP/s")
    for r in results:
        print(f"\nbatch {r['batch']}: the step's 14 convolution kernels, each alone")
        print(f"{'layer':<22} {'kernel':<21} {'ms':>7} {'GFLOP/s':>8} {'% of matmul':>12}")
        for k in r["kernels"]:
            rate = k["gflop"] / (k["ms"] / 1e3)
            print(f"{k['layer']:<22} {k['kernel']:<21} {k['ms']:>7.2f} {rate:>8.1f} {k['pct_of_matmul_rate']:>11.1f}%")
    print(f"\n{'batch':>5} {'conv kernels ms':>16} {'their rate':>11} {'ceiling':>8} {'step ms':>8} {'step':>6}")
    for r in results:
        print(
            f"{r['batch']:>5} {r['conv_kernels_ms']:>16.2f} {r['conv_kernels_pct_of_matmul_rate']:>10.1f}% "
            f"{r['ceiling_pct_of_matmul_rate']:>7.1f}% {r['step_ms']:>8.2f} {r['step_pct_of_matmul_rate']:>5.1f}%"
        )
    print("ceiling: the step's arithmetic over its convolution kernels' time alone, as a share of the matmul rate")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"matmul_gflops": gflops, "results": results}, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
