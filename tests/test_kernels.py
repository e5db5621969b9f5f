"""The training kernels compute Keras' own functions: fused BatchNorm and fused Adam against Keras'."""

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from aekit.training.kernels import FusedAdam, FusedBatchNorm  # noqa: E402


def _bn_pass(layer_class, x, upstream):
    layer = layer_class(momentum=0.9)
    layer.build(x.shape)
    layer.gamma.assign(np.linspace(0.5, 1.5, x.shape[-1]).astype(np.float32))
    layer.beta.assign(np.linspace(-0.2, 0.2, x.shape[-1]).astype(np.float32))
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        y = layer(xt, training=True)
        loss = tf.reduce_sum(y * upstream)
    grads = tape.gradient(loss, [xt, layer.gamma.value, layer.beta.value])
    return y.numpy(), [g.numpy() for g in grads], layer.moving_mean.numpy(), layer.moving_variance.numpy()


def test_fused_batchnorm_is_keras_batchnorm_forward_backward_and_moving_statistics():
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(16, 7, 7, 5)) * np.arange(1, 6) + np.arange(5)).astype(np.float32)
    upstream = rng.normal(size=x.shape).astype(np.float32)
    keras_out, keras_grads, keras_mean, keras_var = _bn_pass(keras.layers.BatchNormalization, x, upstream)
    fused_out, fused_grads, fused_mean, fused_var = _bn_pass(FusedBatchNorm, x, upstream)
    np.testing.assert_allclose(fused_out, keras_out, atol=1e-4)
    for fused, reference in zip(fused_grads, keras_grads):
        np.testing.assert_allclose(fused, reference, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(fused_mean, keras_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fused_var, keras_var, rtol=1e-4)  # the biased variance, as Keras keeps
    assert not np.allclose(fused_var, 0.9 + 0.1 * x.reshape(-1, 5).var(axis=0, ddof=1), rtol=1e-4)


def test_fused_batchnorm_inference_and_unfusable_cases_fall_back_to_keras():
    x = np.random.default_rng(1).normal(size=(4, 3, 3, 2)).astype(np.float32)
    layer = FusedBatchNorm()
    np.testing.assert_allclose(layer(x, training=False).numpy(), keras.layers.BatchNormalization()(x, training=False).numpy())
    flat = np.random.default_rng(2).normal(size=(8, 3)).astype(np.float32)  # rank 2: Keras' own path
    np.testing.assert_allclose(
        FusedBatchNorm()(flat, training=True).numpy(), keras.layers.BatchNormalization()(flat, training=True).numpy(), atol=1e-5
    )


def test_fused_adam_takes_keras_adams_steps():
    rng = np.random.default_rng(0)
    start = [rng.normal(size=(3, 3, 2, 4)).astype(np.float32), rng.normal(size=(4,)).astype(np.float32)]
    grads = [[rng.normal(size=w.shape).astype(np.float32) for w in start] for _ in range(6)]
    results = []
    for optimizer in (keras.optimizers.Adam(5e-3, beta_2=0.99), FusedAdam(5e-3, beta_2=0.99)):
        weights = [keras.Variable(w) for w in start]
        optimizer.build(weights)
        for step_grads in grads:
            optimizer.apply_gradients(zip([tf.constant(g) for g in step_grads], weights))
        results.append([w.numpy() for w in weights])
    for fused, reference in zip(results[1], results[0]):
        assert not np.allclose(fused, start[0] if fused.ndim == 4 else start[1])
        np.testing.assert_allclose(fused, reference, rtol=1e-5, atol=1e-6)
