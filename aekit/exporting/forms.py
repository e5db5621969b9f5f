"""A trained decoder rewritten into another form of the same function, for runtimes that run that form faster.

Every form computes the decoder's function (to float rounding, ~1e-6 on [0, 1] outputs); what changes is
how each transposed convolution is written (and, in "phases4d", the Dense and the input's shape). For a
Keras Conv2DTranspose with kernel k, stride s and padding "same" (output = s x input), TensorFlow's
transposed convolution places input pixel i's k taps at output rows s*i + a - p, a = 0..k-1, where
p = max(k - s, 0) // 2 is the top (left) padding of the forward convolution it is the gradient of; the
extra max(k - s, 0) - p rows are cut off the bottom (right). For the model's 3x3 kernels: stride 2 cuts
0 rows at the top and 1 at the bottom (asymmetric: ONNX ConvTranspose pads 0,0,1,1), stride 1 cuts 1 on
each side.

FORMS:
- "native": the model as trained (a copy).
- "crop": each Conv2DTranspose with padding "valid" (the full (H-1)*s + k rows, no padding at all), then
  a Cropping2D of exactly the rows "same" cuts: ((p, k - s - p), (p, k - s - p)), i.e. ((0, 1), (0, 1)),
  the last row and column, for the stride-2 3x3 layers and ((1, 1), (1, 1)) for the stride-1 one. The
  ONNX file then holds ConvTranspose without pads and a Slice: what runtimes that cannot load asymmetric
  ConvTranspose pads (OpenCV 4.x's dnn) need.
- "subpixel": each Conv2DTranspose as an ordinary stride-1 Conv2D with s*s times the channels followed by
  depth_to_space(s) (the sub-pixel convolution). Output row s*m + r takes the taps a with (r + p - a)
  divisible by s, from input row m + d, d = (r + p - a) / s; over all phases r the offsets d span
  [d_min, d_max], so the Conv2D has a (d_max - d_min + 1)-tap window over the input zero-padded by -d_min
  before and d_max after (stride 2, 3x3: a 2x2 kernel, one zero row/column before, none after, written as
  ZeroPadding2D then a "valid" Conv2D, which tf2onnx folds into the Conv's pads; stride 1: the kernel
  flipped, a 3x3 "same" Conv2D, no depth_to_space). Its kernel at tap d - d_min, output channel
  (r_row * s + r_col) * C_out + c (depth_to_space's channel order) is the transposed kernel's tap a; taps
  no phase uses are zero; the bias is repeated s*s times. depth_to_space is written as Reshape -> Permute
  -> Reshape (onnxruntime's own DepthToSpace kernel, an Eigen 6-D shuffle, cost more than the convolution
  before it). No transposed convolution is left: LiteRT's int8 TRANSPOSE_CONV (with the dynamic batch's
  computed output shape) is not delegated to XNNPACK, and onnxruntime has an int8 Conv (QLinearConv) but
  no int8 ConvTranspose (it runs dequantize -> float -> quantize).
- "phases": each stride-2 Conv2DTranspose as s*s ordinary convolutions of its input, one per output phase,
  holding only the taps that phase takes (stride 2, 3x3: 2x2, 2x1, 1x2 and 1x1 kernels, the transposed
  convolution's 9 taps in all, where the sub-pixel Conv2D computes 16), concatenated on channels, then
  depth_to_space(s) (phase_weights). The fastest float form in LiteRT; "subpixel" is the faster int8 one.
- "phases4d": "phases" with every tensor 4-D, for OpenCV DNN's TFLite importer, which follows NHWC only
  through 4-D tensors (a 2-D input stays "planar" to the end, and a reshape that changes the channel count,
  or one to another rank, is laid out wrongly): the input is a (1, 1, L) latent image, the Dense one 1x1
  Conv2D per pixel of its volume, the pixels concatenated into rows and the rows into the volume, and each
  interleave is reshapes that keep the channels and concatenations along the width (planes_interleave). An
  autoencoder keeps its image input; its encoder's Flatten -> Dense becomes the equal (H, W) Conv2D.

In every form but "native" each reshape is to a constant shape with the batch as -1 (BatchReshape), so a
dynamic-batch file computes no shape at run time.

fold_batchnorm(model) is another rewrite of the same function, for encoders and decoders alike: each
BatchNorm after LeakyReLU folded into the layer before it (its docstring says when that is exact).

Other layers are copied with their weights. Only what aekit's decoders hold is taken: Conv2DTranspose
with padding "same" or "valid" (valid layers are kept as they are in "crop"), no dilation, no
output_padding, channels_last.
"""

from __future__ import annotations

import functools

import numpy as np

from aekit.lazy import keras

FORMS = ("native", "crop", "subpixel", "phases", "phases4d")
# How "subpixel" writes depth_to_space: "reshape" (Reshape -> Permute -> Reshape over a 6-D tensor: the faster
# in onnxruntime) or "op" (the same over a 5-D one, each pixel's b*C channels as b rows of b*C: what every TFLite
# runtime runs at every precision; tflite-micro's TRANSPOSE takes at most 5-D, and LiteRT 2.3 has no int8
# DEPTH_TO_SPACE of the version TF 2.21 writes).
INTERLEAVES = ("reshape", "op")


def rewrite_decoder(model, form: str, interleave: str = "reshape"):
    """The decoder `model` (a Keras chain model) in `form` (FORMS): a new keras.Model computing the same function.

    Args:
        model: a Keras model whose layers form one chain (aekit's decoder: Dense, Reshape, Conv2DTranspose,
            LeakyReLU, BatchNormalization, Activation), nested chain models included (an autoencoder too).
        form: one of FORMS (the module doc says how each computes the same).
        interleave: how "subpixel" and "phases" write depth_to_space (INTERLEAVES; "phases4d" has its own).

    Returns:
        keras.Model with the same output shape and names, in inference mode the same outputs; the same input
        shape too, except a "phases4d" decoder's: (1, 1, L) for L.

    Raises:
        ValueError: an unknown form, a Conv2DTranspose this rewrite does not take (dilation, output_padding,
            channels_first, padding other than "same"/"valid"), or for "phases4d" a Dense with an activation,
            not followed by a Reshape to an image, or with a volume over 10x10 (MAX_4D_SIDE).
    """
    if form not in FORMS or interleave not in INTERLEAVES:
        raise ValueError(f"form {form!r} / interleave {interleave!r}: expected one of {FORMS} / {INTERLEAVES}")
    if form == "phases4d":
        return _four_d(model)
    x = inputs = keras.Input(model.input_shape[1:], name=model.inputs[0].name)
    x = _chain(model, form, x, interleave)
    return keras.Model(inputs, x, name=model.name)


def _chain(model, form: str, x, interleave: str = "reshape"):
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        if isinstance(layer, keras.Model):
            x = _chain(layer, form, x, interleave)
        elif isinstance(layer, keras.layers.Conv2DTranspose) and form == "crop":
            x = _as_crop(layer, x)
        elif isinstance(layer, keras.layers.Conv2DTranspose) and form == "subpixel":
            x = _as_subpixel(layer, x, interleave)
        elif isinstance(layer, keras.layers.Conv2DTranspose) and form == "phases":
            x = _as_phases(layer, x, interleave)
        elif isinstance(layer, keras.layers.Reshape) and form != "native":
            x = BatchReshape(layer.target_shape, name=layer.name)(x)
        else:
            twin = layer.__class__.from_config(layer.get_config())
            x = twin(x)
            twin.set_weights(layer.get_weights())
    return x


def _geometry(layer) -> tuple[int, int, int, int, int, int]:
    """(kh, kw, sh, sw, top, left): kernel, strides and the rows/columns "same" cuts before (0 for "valid")."""
    config = layer.get_config()
    if tuple(config.get("dilation_rate", (1, 1))) != (1, 1) or config.get("output_padding") is not None:
        raise ValueError(f"{layer.name}: Conv2DTranspose with dilation or output_padding is not rewritten")
    if config.get("data_format", "channels_last") != "channels_last":
        raise ValueError(f"{layer.name}: only channels_last Conv2DTranspose is rewritten")
    if config["padding"] not in ("same", "valid"):
        raise ValueError(f"{layer.name}: padding {config['padding']!r} is not rewritten")
    (kh, kw), (sh, sw) = layer.kernel_size, layer.strides
    same = config["padding"] == "same"
    return kh, kw, sh, sw, (max(kh - sh, 0) // 2 if same else 0), (max(kw - sw, 0) // 2 if same else 0)


def _twin_config(layer, **changes) -> dict:
    config = layer.get_config()
    config.update(changes)
    return config


def _activate(layer, x, name: str):
    """The layer's own activation (aekit's decoders have none: "linear"), applied after the rewritten op."""
    activation = layer.get_config()["activation"]
    return x if activation == "linear" else keras.layers.Activation(activation, name=name)(x)


def _as_crop(layer, x):
    """Conv2DTranspose "valid", then the rows/columns "same" cuts, cropped."""
    kh, kw, sh, sw, top, left = _geometry(layer)
    if layer.get_config()["padding"] == "valid":
        twin = keras.layers.Conv2DTranspose.from_config(layer.get_config())
        x = twin(x)
        twin.set_weights(layer.get_weights())
        return x
    full = keras.layers.Conv2DTranspose.from_config(_twin_config(layer, padding="valid", activation="linear"))
    x = full(x)
    full.set_weights(layer.get_weights())
    bottom, right = max(kh - sh, 0) - top, max(kw - sw, 0) - left
    if kh < sh or kw < sw:  # "same" then pads instead of cutting: not in aekit's models
        raise ValueError(f"{layer.name}: a kernel smaller than its stride is not rewritten")
    x = keras.layers.Cropping2D(((top, bottom), (left, right)), name=f"{layer.name}_crop")(x)
    return _activate(layer, x, f"{layer.name}_activation")


def subpixel_weights(kernel: np.ndarray, bias: np.ndarray | None, strides, cut) -> tuple[np.ndarray, np.ndarray | None, tuple]:
    """A Conv2DTranspose kernel (kh, kw, C_out, C_in) as the sub-pixel Conv2D's (th, tw, C_in, sh*sw*C_out) and bias.

    `cut` is (top, left) as in the module doc. Also returns the zero padding ((before, after), (before, after))
    the Conv2D's input needs.
    """
    kh, kw, c_out, c_in = kernel.shape
    (sh, sw), (top, left) = strides, cut

    def offsets(k, s, p):  # [(phase r, tap a, input offset d)] for one axis
        return [(r, a, (r + p - a) // s) for r in range(s) for a in range(k) if (r + p - a) % s == 0]

    rows, cols = offsets(kh, sh, top), offsets(kw, sw, left)
    d0_row, d1_row = min(d for *_, d in rows), max(d for *_, d in rows)
    d0_col, d1_col = min(d for *_, d in cols), max(d for *_, d in cols)
    weights = np.zeros((d1_row - d0_row + 1, d1_col - d0_col + 1, c_in, sh * sw * c_out), kernel.dtype)
    for r_row, a_row, d_row in rows:
        for r_col, a_col, d_col in cols:
            phase = (r_row * sw + r_col) * c_out
            weights[d_row - d0_row, d_col - d0_col, :, phase : phase + c_out] = kernel[a_row, a_col].T
    tiled = None if bias is None else np.tile(bias, sh * sw)
    return weights, tiled, ((-d0_row, d1_row), (-d0_col, d1_col))


def _same_transpose(layer, form: str):
    """(geometry as _geometry gives it, kernel, bias or None) of a Conv2DTranspose "same" that `form` rewrites."""
    kh, kw, sh, sw, top, left = geometry = _geometry(layer)
    if layer.get_config()["padding"] != "same" or sh != sw:
        raise ValueError(f"{layer.name}: only square-stride 'same' Conv2DTranspose is rewritten as {form}")
    if kh < sh or kw < sw:
        raise ValueError(f"{layer.name}: a kernel smaller than its stride is not rewritten")
    weights = layer.get_weights()
    return geometry, np.asarray(weights[0]), (np.asarray(weights[1]) if layer.get_config()["use_bias"] else None)


def _padded_conv(x, weights: np.ndarray, bias: np.ndarray | None, padding, name: str):
    """Conv2D(weights, bias) over x zero-padded by `padding`: Conv2D's own "same" padding when that is symmetric
    (ONNX Conv pads, no Pad node), else ZeroPadding2D (if any) then a "valid" Conv2D."""
    (pt, pb), (pl, pr) = padding
    odd = weights.shape[0] % 2 == 1 and weights.shape[1] % 2 == 1
    if odd and pt == pb == (weights.shape[0] - 1) // 2 and pl == pr == (weights.shape[1] - 1) // 2:
        conv_padding = "same"
    else:
        conv_padding = "valid"
        if any(padding[0]) or any(padding[1]):
            x = keras.layers.ZeroPadding2D(padding, name=f"{name}_pad")(x)
    conv = keras.layers.Conv2D(weights.shape[-1], weights.shape[:2], padding=conv_padding, use_bias=bias is not None, name=name)
    x = conv(x)
    conv.set_weights([weights] + ([bias] if bias is not None else []))
    return x


def _as_subpixel(layer, x, interleave: str = "reshape"):
    """Conv2DTranspose "same" as (ZeroPadding2D) -> Conv2D(s*s*C_out) -> depth_to_space(s)."""
    (_, _, sh, sw, top, left), kernel, bias = _same_transpose(layer, "sub-pixel")
    weights, tiled, padding = subpixel_weights(kernel, bias, (sh, sw), (top, left))
    x = _padded_conv(x, weights, tiled, padding, f"{layer.name}_subpixel")
    if sh > 1:
        x = depth_to_space(x, sh, f"{layer.name}_to_space", interleave)
    return _activate(layer, x, f"{layer.name}_activation")


def _flat(model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _flat(layer)
        elif not isinstance(layer, keras.layers.InputLayer):
            yield layer


def _four_d(model):
    """The "phases4d" form: "phases" with every tensor 4-D (the module doc says why). A decoder's input becomes a
    (1, 1, L) latent image; an autoencoder keeps its image input, its encoder's Flatten -> Dense written as the
    equal "valid" Conv2D with an (H, W) kernel, which gives that latent image."""
    image_input = len(model.input_shape) == 4
    shape = model.input_shape[1:] if image_input else (1, 1, model.input_shape[-1])
    x = inputs = keras.Input(shape, name=model.inputs[0].name)
    layers = list(_flat(model))
    i = 0
    while i < len(layers):
        layer, after = layers[i], (layers[i + 1] if i + 1 < len(layers) else None)
        if isinstance(layer, keras.layers.Flatten) and isinstance(after, keras.layers.Dense):
            x, i = _flatten_dense_as_conv(after, x), i + 2
            continue
        if isinstance(layer, keras.layers.Dense):
            if not isinstance(after, keras.layers.Reshape) or len(after.target_shape) != 3:
                raise ValueError(f"{layer.name}: phases4d takes a Dense followed by a Reshape to an image")
            x, i = _dense_as_pixels(layer, x, after.target_shape), i + 2
            continue
        if isinstance(layer, keras.layers.Conv2DTranspose) and layer.strides[0] > 1:
            x = _as_phases(layer, x, "planes")
        elif isinstance(layer, keras.layers.Conv2DTranspose):
            x = _as_subpixel(layer, x)
        else:
            x = _copy(layer, x)
        i += 1
    return keras.Model(inputs, x, name=model.name)


def _dense_parts(dense) -> tuple[np.ndarray, np.ndarray]:
    """(kernel, bias) of a Dense the 4-D form rewrites: no activation (a zero bias when it has none)."""
    config = dense.get_config()
    if config["activation"] != "linear":
        raise ValueError(f"{dense.name}: phases4d takes a Dense without an activation")
    kernel, *bias = (np.asarray(w, np.float32) for w in dense.get_weights())
    return kernel, (bias[0] if bias else np.zeros(kernel.shape[1], np.float32))


def _flatten_dense_as_conv(dense, x):
    """Flatten then Dense(units) of an (H, W, C) image: a "valid" Conv2D(units) with an (H, W) kernel (Flatten's
    order is (h, w, c), c fastest: the Dense kernel's rows reshape to (H, W, C)), giving a (1, 1, units) image."""
    height, width, channels = x.shape[1:]
    kernel, bias = _dense_parts(dense)
    conv = keras.layers.Conv2D(kernel.shape[1], (height, width), name=f"{dense.name}_conv")
    x = conv(x)
    conv.set_weights([kernel.reshape(height, width, channels, kernel.shape[1]), bias])
    return x


MAX_4D_SIDE = 10  # phases4d concatenates a row's pixels and the rows: tflite-micro's CONCATENATION takes at most 10
# inputs, so volumes up to 10x10; a larger volume's fixed-batch .tflite decoder is written in "phases"


def _dense_as_pixels(dense, x, volume):
    """Dense(L -> H*W*C) then Reshape((H, W, C)) on a (1, 1, L) image: one 1x1 Conv2D(C) per pixel of the volume, with
    that pixel's C columns of the Dense kernel and bias; each row's W pixels concatenated along the width, the H rows
    along the height. (OpenCV's TFLite importer lays out only the first output of a SPLIT as NHWC, so the pixels
    are not split from one convolution.)"""
    height, width, channels = volume
    if max(height, width) > MAX_4D_SIDE:
        raise ValueError(f"{dense.name}: a {height}x{width} volume is larger than phases4d writes ({MAX_4D_SIDE}x{MAX_4D_SIDE})")
    kernel, bias = (w.reshape(-1, height, width, channels) for w in _dense_parts(dense))
    rows = []
    for h in range(height):
        pixels = []
        for w in range(width):
            conv = keras.layers.Conv2D(channels, 1, name=f"{dense.name}_pixel{h}_{w}")
            pixels.append(conv(x))
            conv.set_weights([kernel[:, h, w][None, None], bias[0, h, w]])
        rows.append(keras.layers.Concatenate(axis=2, name=f"{dense.name}_row{h}")(pixels) if width > 1 else pixels[0])
    return keras.layers.Concatenate(axis=1, name=f"{dense.name}_volume")(rows) if height > 1 else rows[0]


def planes_interleave(phases, block: int, name: str):
    """depth_to_space of the phase images (depth_to_space's channel order, each (H, W, C)), by 4-D reshapes that keep
    the C channels and concatenations along the width: output row block * h + r is phase row r's pixels of row h,
    their columns interleaved."""
    height, width, channels = phases[0].shape[1:]
    rows = []
    for r in range(block):
        cols = [
            BatchReshape((height * width, 1, channels), name=f"{name}_{r}{s}_column")(phases[r * block + s]) for s in range(block)
        ]
        x = keras.layers.Concatenate(axis=2, name=f"{name}_{r}_columns")(cols)  # (H*W, b, C): pixel by pixel
        rows.append(BatchReshape((height, width * block, channels), name=f"{name}_{r}_row")(x))
    x = keras.layers.Concatenate(axis=2, name=f"{name}_rows")(rows)  # (H, b * b*W, C): row r at columns r*b*W...
    return BatchReshape((height * block, width * block, channels), name=name)(x)


def phase_weights(kernel: np.ndarray, strides, cut) -> list[tuple[tuple[int, int], np.ndarray, tuple]]:
    """A Conv2DTranspose kernel (kh, kw, C_out, C_in) as one Conv2D per output phase, only the taps that phase uses.

    Returns [((r_row, r_col), kernel (th, tw, C_in, C_out), zero padding ((before, after), (before, after)))] in
    depth_to_space's channel order (r_row * s + r_col). Stride 2, 3x3: kernels 2x2, 2x1, 1x2 and 1x1, 9 taps in
    all, as many multiply-adds as the transposed convolution (the sub-pixel Conv2D does 16).
    """
    kh, kw, c_out, c_in = kernel.shape
    (sh, sw), (top, left) = strides, cut

    def taps(k, s, p, r):  # [(tap a, input offset d)] of phase r on one axis
        return [(a, (r + p - a) // s) for a in range(k) if (r + p - a) % s == 0]

    phases = []
    for r_row in range(sh):
        for r_col in range(sw):
            rows, cols = taps(kh, sh, top, r_row), taps(kw, sw, left, r_col)
            d0_row, d1_row = min(d for _, d in rows), max(d for _, d in rows)
            d0_col, d1_col = min(d for _, d in cols), max(d for _, d in cols)
            weights = np.zeros((d1_row - d0_row + 1, d1_col - d0_col + 1, c_in, c_out), kernel.dtype)
            for a_row, d_row in rows:
                for a_col, d_col in cols:
                    weights[d_row - d0_row, d_col - d0_col] = kernel[a_row, a_col].T
            phases.append(((r_row, r_col), weights, ((-d0_row, d1_row), (-d0_col, d1_col))))
    return phases


def _as_phases(layer, x, interleave: str = "reshape"):
    """Conv2DTranspose "same" (stride s > 1) as s*s Conv2Ds of the input (one per output phase), concatenated on
    channels, then depth_to_space(s); stride 1 as in "subpixel" (one 3x3 Conv2D)."""
    (_, _, sh, sw, top, left), kernel, bias = _same_transpose(layer, "phases")
    if sh == 1:
        return _as_subpixel(layer, x, interleave)
    outputs = [
        _padded_conv(x, weights, bias, padding, f"{layer.name}_phase{r_row}{r_col}")
        for (r_row, r_col), weights, padding in phase_weights(kernel, (sh, sw), (top, left))
    ]
    if interleave == "planes":
        x = planes_interleave(outputs, sh, f"{layer.name}_to_space")
    else:
        x = keras.layers.Concatenate(name=f"{layer.name}_phases")(outputs)
        x = depth_to_space(x, sh, f"{layer.name}_to_space", interleave)
    return _activate(layer, x, f"{layer.name}_activation")


def depth_to_space(x, block: int, name: str, interleave: str = "reshape"):
    """tf.nn.depth_to_space(x, block) (channels_last): channel (i * block + j) * C + c of pixel (h, w) goes to pixel
    (h * block + i, w * block + j), channel c; as Reshape -> Permute -> Reshape, each Reshape to a constant shape
    (BatchReshape), over a 6-D tensor ("reshape") or a 5-D one ("op")."""
    height, width, channels = x.shape[1:]
    c = channels // (block * block)
    if interleave == "op":  # (H, W, b, b*C) -> (H, b, W, b*C) -> (H*b, W*b, C): a 5-D transpose
        x = BatchReshape((height, width, block, channels // block), name=f"{name}_split")(x)
        x = keras.layers.Permute((1, 3, 2, 4), name=f"{name}_interleave")(x)
    else:
        x = BatchReshape((height, width, block, block, c), name=f"{name}_split")(x)
        x = keras.layers.Permute((1, 3, 2, 4, 5), name=f"{name}_interleave")(x)
    return BatchReshape((height * block, width * block, c), name=name)(x)


def BatchReshape(target_shape, **kwargs):  # noqa: N802 - a layer class, made on first use
    """keras.layers.Reshape to `target_shape` with the batch written as -1 instead of read from the input's shape.

    Keras' Reshape computes the batch at run time, which the converters write as shape ops (TFLite SHAPE,
    STRIDED_SLICE, PACK; ONNX Shape, Gather, Concat). With -1 the new shape is a constant: a dynamic-batch file
    then holds no shape ops, and LiteRT 2.3's XNNPACK computes it right (with the computed shape it returned
    wrong outputs for a sub-pixel decoder invoked twice at batch 256 after other batches; tests/test_forms.py).
    The Keras layer class is defined on the first call, so that importing this module imports no Keras.
    """
    return _batch_reshape_class()(target_shape, **kwargs)


@functools.cache
def _batch_reshape_class():
    class BatchReshape(keras.layers.Layer):  # noqa: N801 - what Keras and its summaries call it
        """BatchReshape (the function above) as a Keras layer."""

        def __init__(self, target_shape, **kwargs):
            super().__init__(**kwargs)
            self.target_shape = tuple(int(d) for d in target_shape)

        def call(self, inputs):
            return keras.ops.reshape(inputs, (-1, *self.target_shape))

        def compute_output_shape(self, input_shape):
            return (input_shape[0], *self.target_shape)

        def get_config(self):
            return {**super().get_config(), "target_shape": self.target_shape}

    return keras.saving.register_keras_serializable(package="aekit")(BatchReshape)


def fold_batchnorm(model):
    """The same function with each BatchNorm that follows (Conv2D | Conv2DTranspose | Dense) -> LeakyReLU folded away.

    Inference BatchNorm is y = a * x + b per channel (a = gamma / sqrt(var + eps), b = beta - mean * a). With
    every a > 0, a * LeakyReLU(v) = LeakyReLU(a * v), so a goes into the preceding layer's kernel and bias (per
    output channel) and only "+ b" is left; a "+ b" right before Flatten -> Dense goes into the Dense bias
    (b tiled over the pixels, times the kernel). Any other "+ b" stays an Add of a constant (a zero-padded
    convolution after it sees b at its borders as 0, so it cannot be folded exactly). A BatchNorm with a
    non-positive a is kept as it is. int8 files of the folded model hold fewer elementwise integer ops.
    """
    x = inputs = keras.Input(model.input_shape[1:], name=model.inputs[0].name)
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    pending = None  # the per-channel "+ b" not yet applied
    i = 0
    while i < len(layers):
        layer, after = layers[i], layers[i + 1 : i + 3]
        scale = None
        if (
            isinstance(layer, (keras.layers.Conv2D, keras.layers.Conv2DTranspose, keras.layers.Dense))
            and layer.get_config()["activation"] == "linear"
            and [type(a) for a in after] == [keras.layers.LeakyReLU, keras.layers.BatchNormalization]
        ):
            gamma, beta, mean, var = (np.asarray(w, np.float64) for w in after[1].get_weights())
            scale = gamma / np.sqrt(var + after[1].epsilon)
            scale = scale if np.all(scale > 0) else None
        if pending is not None and isinstance(layer, keras.layers.Flatten) and isinstance(_next(layers, i), keras.layers.Dense):
            x = _copy(layer, x)
            kernel, bias = (np.asarray(w, np.float64) for w in layers[i + 1].get_weights())
            tiled = np.tile(pending, kernel.shape[0] // len(pending))  # Flatten's (h, w, c) order: c fastest
            x = _copy(layers[i + 1], x, [kernel, bias + tiled @ kernel])
            pending, i = None, i + 2
            continue
        if pending is not None:
            x, pending = _add_constant(x, pending), None
        if scale is not None:
            kernel, *bias = (np.asarray(w, np.float64) for w in layer.get_weights())
            shape = [1] * kernel.ndim
            shape[-2 if isinstance(layer, keras.layers.Conv2DTranspose) else -1] = -1  # the output-channel axis
            x = _copy(layer, x, [kernel * scale.reshape(shape)] + [b * scale for b in bias])
            x = _copy(after[0], x)
            pending, i = beta - mean * scale, i + 3
            continue
        x, i = _copy(layer, x), i + 1
    if pending is not None:
        x = _add_constant(x, pending)
    return keras.Model(inputs, x, name=model.name)


def _copy(layer, x, weights=None):
    """A fresh twin of `layer` applied to x, with the layer's weights or `weights` (as float32)."""
    twin = layer.__class__.from_config(layer.get_config())
    x = twin(x)
    twin.set_weights(layer.get_weights() if weights is None else [np.asarray(w, np.float32) for w in weights])
    return x


def _next(layers, i):
    return layers[i + 1] if i + 1 < len(layers) else None


def _add_constant(x, values: np.ndarray):
    return keras.ops.add(x, keras.ops.convert_to_tensor(values.astype(np.float32)))
