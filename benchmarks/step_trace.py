"""Where a training step's time goes: the TF profiler's trace of aekit's step, summarised.

Traces K-step calls of the real training step (images held on the device, gathered in the
step) with tf.profiler, on one device and on 2 logical CPU replicas, for the reference model
with Keras' BatchNorm/Adam and with aekit's fused kernels (aekit.training.kernels). Reads the trace
(the XSpace protobuf the profiler writes) and prints, per step: the kernels run, the busy time
and runs by op type (summed over TensorFlow's compute threads), and what the host did besides
launching the call (the Python thread's events; tf.data iterator events would show here).

    .venv/bin/python benchmarks/step_trace.py --model reference
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

MODELS = {"tiny": ((1, 1), 1), "reference": ((32, 64), 16)}
# Events on the compute threads that are not kernels: the executor's own and the thread pool's bookkeeping.
NOT_KERNELS = {"ExecutorState::Process", "StartRegion", "StopRegion", "Record", "Start"}
CALLS, K = 3, 32


def trace(strategy, filters, latent, batch: int, fused: bool) -> dict:
    import tensorflow as tf
    from loop_overhead import build_step
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    train_steps, order, _ = build_step(strategy, filters, latent, batch, fused)
    first, per_call = tf.constant(0, tf.int32), tf.constant(K, tf.int32)
    for _ in range(2):
        train_steps(order, first, per_call).numpy()
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        for _ in range(CALLS):
            train_steps(order, first, per_call).numpy()
        tf.profiler.experimental.stop()
        space = xplane_pb2.XSpace()
        space.ParseFromString(Path(glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True)[0]).read_bytes())
    steps = CALLS * K
    busy, count, host = collections.Counter(), collections.Counter(), collections.Counter()
    for plane in space.planes:
        if plane.name != "/host:CPU":
            continue
        for line in plane.lines:
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                if line.name.startswith("tf_"):  # TensorFlow's compute threads: one event per kernel run
                    op_type = name.rsplit(":", 1)[-1]  # "scope/name:Type" -> Type
                    if op_type not in NOT_KERNELS:
                        busy[op_type] += event.duration_ps / 1e9
                        count[op_type] += 1
                elif line.name == "python" or "Iterator" in name:
                    host[name] += 1
    return {
        "kernels_per_step": sum(count.values()) / steps,
        "busy_ms_per_step": sum(busy.values()) / steps,
        "by_op_ms_per_step": {op: ms / steps for op, ms in busy.most_common(14)},
        "by_op_runs_per_step": {op: count[op] / steps for op, _ in busy.most_common(14)},
        "most_run_ops_per_step": {op: n / steps for op, n in count.most_common(8)},
        "host_events_per_call": {name: n / CALLS for name, n in host.most_common(8)},
        "iterator_events": sum(n for name, n in host.items() if "Iterator" in name),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=MODELS, default="reference")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/step_trace.json"))
    args = parser.parse_args()

    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    strategies = {
        "1 device": tf.distribute.get_strategy(),
        "2 CPU replicas": tf.distribute.MirroredStrategy(
            ["/cpu:0", "/cpu:1"], cross_device_ops=tf.distribute.ReductionToOneDevice()
        ),
    }
    filters, latent = MODELS[args.model]
    results = {}
    for placement, strategy in strategies.items():
        for kernels in ("Keras", "aekit"):
            result = trace(strategy, filters, latent, args.batch, fused=kernels == "aekit")
            results[f"{placement}, {kernels} kernels"] = result
            print(
                f"\n{placement}, {kernels} kernels ({args.model}, batch {args.batch}, K={K}): "
                f"{result['kernels_per_step']:.0f} kernels/step, {result['busy_ms_per_step']:.1f} ms busy/step "
                f"(summed over compute threads); tf.data iterator events: {result['iterator_events']}"
            )
            for op, ms in result["by_op_ms_per_step"].items():
                print(f"   {ms:7.2f} ms/step  {result['by_op_runs_per_step'][op]:6.1f} runs/step  {op}")
            print(
                "   most frequent kernels per step:",
                json.dumps({k: round(v, 1) for k, v in result["most_run_ops_per_step"].items()}),
            )
            print("   host (Python thread) events per call:", json.dumps(result["host_events_per_call"]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model": args.model, "batch": args.batch, "k": K, "results": results}, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
