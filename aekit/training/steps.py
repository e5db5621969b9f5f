"""The compiled training steps: K steps per tf.function call, and how many K makes worth a call."""

from __future__ import annotations

import math

from aekit.lazy import keras, tf


def make_train_steps(strategy, model, optimizer, batches, precision: str):
    """`train_steps(state, first, steps)`: `steps` training steps in one call, from global batch `first` on.

    `batches` supplies each step's images inside the call: with `DeviceImages`, `state` is the
    epoch's order and each replica gathers its slice on its device; with `StreamedImages`, it is
    the stream of packed shards. The losses of the steps come back together; the host reads
    them once per call.
    """

    scaled = precision == "mixed_float16"
    global_batch_size = batches.global_batch

    def replica_step(*args):
        images = batches.fetch(*args)
        with tf.GradientTape() as tape:
            reconstructions = tf.cast(model(images, training=True), tf.float32)
            per_image = tf.reduce_mean(tf.square(images - reconstructions), axis=[1, 2, 3])
            loss = tf.nn.compute_average_loss(per_image, global_batch_size=global_batch_size)
            # Keras BatchNorm keeps no regularisation losses here; model.losses is empty.
            to_differentiate = optimizer.scale_loss(loss) if scaled else loss
        grads = tape.gradient(to_differentiate, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    @tf.function
    def train_steps(state, first, steps):
        losses = tf.TensorArray(tf.float32, size=steps)
        for i in tf.range(steps):
            per_replica = strategy.run(replica_step, args=batches.args(state, first + i))
            losses = losses.write(i, strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None))
        return losses.stack()

    return train_steps


GPU_FLOPS, GPU_CALL_SECONDS = 25e12, 0.010  # a conservative GPU rate; work per call that hides the call's cost
CPU_FLOPS, CPU_CALL_SECONDS = 100e9, 0.25  # a conservative CPU rate; calls short enough for lively progress and Ctrl-C
MAX_STEPS_PER_CALL = {True: 1000, False: 100}


def steps_per_call(requested: int, step_macs: float, on_gpu: bool, steps_per_epoch: int) -> int:
    """K, the training steps one call runs: `requested`, or (0 = auto) enough work to hide the call's cost.

    A call costs a Python round trip and a device-to-host read of the losses. On a GPU a step of
    this model is tens of microseconds, so auto gives ~10 ms of GPU work per call (at a conservative
    25 TFLOP/s); on a CPU it saves ~2 ms of a ~28 ms step (benchmarks/loop_overhead.py), and auto
    gives ~0.25 s of work per call (at 100 GFLOP/s), so progress and Ctrl-C still answer at once.
    """
    if requested:
        return max(1, min(requested, steps_per_epoch))
    rate, seconds = (GPU_FLOPS, GPU_CALL_SECONDS) if on_gpu else (CPU_FLOPS, CPU_CALL_SECONDS)
    seconds_per_step = 2 * step_macs / rate
    return max(1, min(steps_per_epoch, MAX_STEPS_PER_CALL[on_gpu], math.ceil(seconds / max(seconds_per_step, 1e-9))))


def model_macs(model) -> int:
    """Multiply-adds of one forward pass of one image through a chain of Conv2D/Conv2DTranspose/Dense layers."""

    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            total += model_macs(layer)
        elif isinstance(layer, (keras.layers.Conv2D, keras.layers.Conv2DTranspose)):
            kernel = layer.kernel.shape  # (kh, kw, in, out); (kh, kw, out, in) for transposed
            # A convolution computes each output pixel; a transposed one scatters each input pixel.
            where = layer.input if isinstance(layer, keras.layers.Conv2DTranspose) else layer.output
            total += int(where.shape[1] * where.shape[2] * kernel[0] * kernel[1] * kernel[2] * kernel[3])
        elif isinstance(layer, keras.layers.Dense):
            total += int(layer.kernel.shape[0] * layer.kernel.shape[1])
    return total
