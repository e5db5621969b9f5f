import numpy as np
import pytest

from aekit import AekitError
from aekit.training.model import build_autoencoder


def test_reference_model_has_the_reference_parameter_counts():
    encoder, decoder, autoencoder = build_autoencoder((28, 28, 1), filters=(32, 64), latent_dim=16)
    assert encoder.count_params() == 69_392
    assert decoder.count_params() == 109_377
    assert autoencoder.count_params() == 178_769
    non_trainable = sum(int(np.prod(w.shape)) for w in autoencoder.non_trainable_weights)
    assert non_trainable == 384


def test_reference_layers_in_order():
    encoder, decoder, _ = build_autoencoder((28, 28, 1))
    kinds = [type(layer).__name__ for layer in encoder.layers]
    assert kinds == [
        "InputLayer",
        "Conv2D",
        "LeakyReLU",
        "BatchNormalization",
        "Conv2D",
        "LeakyReLU",
        "BatchNormalization",
        "Flatten",
        "Dense",
    ]
    assert encoder.layers[1].strides == (2, 2) and encoder.layers[1].kernel_size == (3, 3)
    assert encoder.layers[2].negative_slope == pytest.approx(0.2)
    kinds = [type(layer).__name__ for layer in decoder.layers]
    assert kinds == [
        "InputLayer",
        "Dense",
        "Reshape",
        "Conv2DTranspose",
        "LeakyReLU",
        "BatchNormalization",
        "Conv2DTranspose",
        "LeakyReLU",
        "BatchNormalization",
        "Conv2DTranspose",
        "Activation",
    ]
    assert decoder.layers[2].output.shape[1:] == (7, 7, 64)


def test_colour_images_and_other_sizes():
    encoder, decoder, autoencoder = build_autoencoder((32, 32, 3), filters=(16, 32, 64), latent_dim=8)
    x = np.random.default_rng(0).random((2, 32, 32, 3), dtype=np.float32)
    assert tuple(encoder(x).shape) == (2, 8)
    y = np.asarray(autoencoder(x))
    assert y.shape == (2, 32, 32, 3)
    assert y.min() >= 0.0 and y.max() <= 1.0


def test_sides_not_divisible_are_refused_with_the_fix():
    with pytest.raises(AekitError, match=r"28x28x1.*divide by 8.*--filters"):
        build_autoencoder((28, 28, 1), filters=(8, 16, 32))


def test_output_stays_float32_under_mixed_precision():
    import keras

    keras.mixed_precision.set_global_policy("mixed_float16")
    encoder, decoder, autoencoder = build_autoencoder((28, 28, 1), filters=(8, 16), latent_dim=4)
    assert encoder.layers[1].compute_dtype == "float16"
    out = autoencoder(np.zeros((1, 28, 28, 1), np.float32))
    assert str(out.dtype) in ("float32", "<dtype: 'float32'>")
