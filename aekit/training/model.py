"""The convolutional autoencoder: encoder, decoder and the two chained.

Layer for layer the reference model (docs/design.md): strided 3x3 convolutions with
LeakyReLU(0.2) and BatchNorm down to a Dense latent, and the mirror image up with
transposed convolutions and a sigmoid. The sigmoid runs in float32 whatever the
mixed-precision policy, so outputs stay comparable with [0, 1] targets.
"""

from __future__ import annotations

from collections.abc import Sequence

from aekit.data.feeds import check_divisible
from aekit.lazy import keras

LEAKY_SLOPE = 0.2
KERNEL = 3


def build_autoencoder(
    input_shape: Sequence[int] = (28, 28, 1),
    filters: Sequence[int] = (32, 64),
    latent_dim: int = 16,
    bn_momentum: float = 0.99,
    synchronized_bn: bool = False,
    fused_bn: bool = False,
):
    """Builds (encoder, decoder, autoencoder) under the current Keras dtype policy.

    Args:
        input_shape: (H, W, C); H and W must divide by 2**len(filters).
        filters: channels of each stride-2 conv block, outermost first.
        latent_dim: size of the code the encoder emits.
        bn_momentum: BatchNorm moving-statistics momentum (Keras' 0.99 in the
            reference; the training recipe picks its own, see TrainConfig).
        synchronized_bn: compute BatchNorm statistics over the global batch. Needed with
            more than one replica: otherwise each replica keeps its own moving statistics
            (Keras creates them unaggregated) and saves read replica 0's.

    Returns:
        encoder: (None, H, W, C) -> (None, latent_dim)
        decoder: (None, latent_dim) -> (None, H, W, C), float32 in [0, 1]
        autoencoder: decoder(encoder(x))

    Example:
        >>> encoder, decoder, autoencoder = build_autoencoder((28, 28, 1))
        >>> encoder.count_params(), decoder.count_params(), autoencoder.count_params()
        (69392, 109377, 178769)
    """
    from keras import layers

    norm = layers.BatchNormalization
    if fused_bn and not synchronized_bn:
        from aekit.training.kernels import FusedBatchNorm as norm

    height, width, channels = (int(d) for d in input_shape)
    filters = [int(f) for f in filters]
    if not filters or min(filters) < 1 or latent_dim < 1:
        raise ValueError(f"filters and latent_dim must be positive, got filters={filters}, latent_dim={latent_dim}")
    check_divisible((height, width, channels), len(filters))

    inputs = keras.Input(shape=(height, width, channels), name="image")
    x = inputs
    for f in filters:
        x = layers.Conv2D(f, KERNEL, strides=2, padding="same")(x)
        x = layers.LeakyReLU(negative_slope=LEAKY_SLOPE)(x)
        x = norm(momentum=bn_momentum, synchronized=synchronized_bn)(x)
    volume = tuple(int(d) for d in x.shape[1:])
    x = layers.Flatten()(x)
    latent = layers.Dense(latent_dim, name="latent")(x)
    encoder = keras.Model(inputs, latent, name="encoder")

    latent_in = keras.Input(shape=(latent_dim,), name="latent")
    x = layers.Dense(volume[0] * volume[1] * volume[2])(latent_in)
    x = layers.Reshape(volume)(x)
    for f in reversed(filters):
        x = layers.Conv2DTranspose(f, KERNEL, strides=2, padding="same")(x)
        x = layers.LeakyReLU(negative_slope=LEAKY_SLOPE)(x)
        x = norm(momentum=bn_momentum, synchronized=synchronized_bn)(x)
    x = layers.Conv2DTranspose(channels, KERNEL, strides=1, padding="same")(x)
    outputs = layers.Activation("sigmoid", dtype="float32", name="reconstruction")(x)
    decoder = keras.Model(latent_in, outputs, name="decoder")

    autoencoder = keras.Model(inputs, decoder(encoder(inputs)), name="autoencoder")
    return encoder, decoder, autoencoder
