"""Faster training kernels for the same functions: fused BatchNorm and fused Adam.

Keras 3 computes BatchNorm in training from about a dozen elementwise ops
(moments, then tf.nn.batch_normalization) and its gradient from a dozen more, and
applies Adam as ~20 small ops per variable. The TF profiler's trace of aekit's
step (benchmarks/step_trace.py) showed those passes over the activations taking
a quarter of the reference model's step on this CPU. TensorFlow has one kernel
for each: FusedBatchNormV3 (oneDNN on CPU, cuDNN on GPU) and ResourceApplyAdam.
The classes here compute exactly Keras' functions with those kernels:

- `FusedBatchNorm`: a `keras.layers.BatchNormalization` whose training pass is
  FusedBatchNormV3. It keeps Keras' biased batch variance for the moving
  statistics (the kernel returns the unbiased one, corrected here). Used only
  while training, and only where statistics are per replica; the saved `.keras`
  models hold plain BatchNormalization layers (see aekit.training.loop).
- `FusedAdam`: `keras.optimizers.Adam` whose update is ResourceApplyAdam, the
  same formula (bias-corrected step lr * sqrt(1 - b2^t) / (1 - b1^t), epsilon
  added to sqrt(v)) in one op per variable. Its variables and checkpoints are
  Adam's.
"""

from __future__ import annotations

import keras
import tensorflow as tf


class FusedBatchNorm(keras.layers.BatchNormalization):
    """BatchNormalization over the last axis of 4-D inputs, trained with FusedBatchNormV3.

    Falls back to Keras' own computation where the fused kernel does not apply:
    synchronized statistics, masks, renorm, another axis or rank.
    """

    def call(self, inputs, training=None, mask=None):
        if not (training and self.trainable) or not self._fusable(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        x = tf.cast(inputs, tf.float32)  # as Keras: statistics in float32 whatever the policy
        channels = x.shape[-1]
        gamma = tf.cast(self.gamma, tf.float32) if self.scale else tf.ones([channels], tf.float32)
        beta = tf.cast(self.beta, tf.float32) if self.center else tf.zeros([channels], tf.float32)
        y, mean, unbiased_variance, *_ = tf.raw_ops.FusedBatchNormV3(
            x=x,
            scale=gamma,
            offset=beta,
            mean=tf.zeros([channels], tf.float32),
            variance=tf.ones([channels], tf.float32),
            epsilon=self.epsilon,
            exponential_avg_factor=1.0,
            data_format="NHWC",
            is_training=True,
        )
        count = tf.cast(tf.reduce_prod(tf.shape(x)[:-1]), tf.float32)
        variance = unbiased_variance * (count - 1.0) / tf.maximum(count, 1.0)  # Keras keeps the biased variance
        mean, variance = tf.stop_gradient(mean), tf.stop_gradient(variance)
        self.moving_mean.assign(tf.cast(self.moving_mean, tf.float32) * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(tf.cast(self.moving_variance, tf.float32) * self.momentum + variance * (1.0 - self.momentum))
        return tf.cast(y, self.compute_dtype)

    def _fusable(self, inputs, mask) -> bool:
        return (
            mask is None
            and not self.synchronized
            and not self.renorm
            and len(inputs.shape) == 4
            and self.axis in (-1, 3)
            and self.epsilon >= 1.001e-5  # the fused kernel's smallest epsilon
        )


class FusedAdam(keras.optimizers.Adam):
    """Adam, one ResourceApplyAdam op per dense variable (Keras' update for anything else)."""

    def update_step(self, gradient, variable, learning_rate):
        if self.amsgrad or isinstance(gradient, tf.IndexedSlices):
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        step = tf.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        index = self._get_variable_index(variable)
        tf.raw_ops.ResourceApplyAdam(
            var=_handle(variable),
            m=_handle(self._momentums[index]),
            v=_handle(self._velocities[index]),
            beta1_power=tf.pow(beta_1, step),
            beta2_power=tf.pow(beta_2, step),
            lr=tf.cast(learning_rate, dtype),
            beta1=beta_1,
            beta2=beta_2,
            epsilon=tf.cast(self.epsilon, dtype),
            grad=tf.cast(gradient, dtype),
            use_locking=False,
        )


def _handle(variable):
    """The resource handle of a Keras or TF variable (inside strategy.extended.update: this device's copy)."""
    return (variable.value if isinstance(variable, keras.Variable) else variable).handle
