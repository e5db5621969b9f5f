"""aekit.exporting.forms: every form of a decoder computes the same function, in Keras, onnxruntime and LiteRT."""

import numpy as np
import onnx
import pytest
from support import needs_tensorflow

pytestmark = needs_tensorflow

SHAPES = {  # (input shape, filters, latent): the digit layout, and a non-square colour one with three blocks
    "square": ((28, 28, 1), (8, 16), 5),
    "non-square": ((16, 24, 3), (4, 8, 8), 6),
}


def random_decoder(key: str, seed: int = 0):
    """A decoder with random weights everywhere, BatchNorm statistics included, outputs spread over (0, 1)."""
    from aekit.training.model import build_autoencoder

    shape, filters, latent = SHAPES[key]
    _, decoder, _ = build_autoencoder(shape, filters, latent)
    rng = np.random.default_rng(seed)
    for layer in decoder.layers:
        weights = layer.get_weights()
        if type(layer).__name__ == "BatchNormalization":  # gamma, beta, moving mean, moving variance
            c = weights[0].shape
            weights = [rng.uniform(0.5, 1.5, c), rng.normal(0, 0.3, c), rng.normal(0, 0.3, c), rng.uniform(0.5, 2.0, c)]
        else:
            weights = [rng.normal(0, 0.3, w.shape) for w in weights]
        layer.set_weights([np.asarray(w, np.float32) for w in weights])
    z = rng.normal(size=(6, latent)).astype(np.float32)
    return decoder, z


def keras_out(model, z):
    return np.asarray(model(z, training=False))


@pytest.mark.parametrize("key", list(SHAPES))
@pytest.mark.parametrize("form", ["native", "crop", "subpixel", "phases"])
def test_every_form_computes_the_decoder(key, form):
    from aekit.exporting.forms import rewrite_decoder

    decoder, z = random_decoder(key)
    expected = keras_out(decoder, z)
    assert expected.std() > 0.05  # not saturated: a wrong rewrite would show
    rewritten = rewrite_decoder(decoder, form)
    assert rewritten.input_shape == decoder.input_shape and rewritten.output_shape == decoder.output_shape
    assert np.abs(keras_out(rewritten, z) - expected).max() < 1e-5
    kinds = [type(layer).__name__ for layer in rewritten.layers]
    transposed = [layer for layer in rewritten.layers if type(layer).__name__ == "Conv2DTranspose"]
    if form == "crop":
        assert len(transposed) == len(SHAPES[key][1]) + 1 and all(t.padding == "valid" for t in transposed)
        assert kinds.count("Cropping2D") == len(transposed)
    if form == "subpixel":
        assert not transposed and kinds.count("Conv2D") == len(SHAPES[key][1]) + 1
    if form == "phases":  # four convolutions per stride-2 layer, one for the stride-1 layer
        assert not transposed and kinds.count("Conv2D") == 4 * len(SHAPES[key][1]) + 1
        assert kinds.count("Concatenate") == len(SHAPES[key][1])
    if form != "native":  # every reshape to a constant shape: no shape ops in a dynamic-batch file
        assert "Reshape" not in kinds and kinds.count("BatchReshape") == 1 + 2 * len(SHAPES[key][1]) * (form != "crop")


def test_the_crop_side_matters():
    """'same' cuts the last row and column of a stride-2 3x3 transposed conv: cutting the first ones differs."""
    from aekit.lazy import keras

    decoder, z = random_decoder("non-square")
    layer = next(layer for layer in decoder.layers if type(layer).__name__ == "Conv2DTranspose")
    x = np.random.default_rng(1).normal(size=(2, *layer.input.shape[1:])).astype(np.float32)
    same = np.asarray(layer(x))
    full = keras.layers.Conv2DTranspose.from_config({**layer.get_config(), "padding": "valid"})
    full.build(x.shape)
    full.set_weights(layer.get_weights())
    valid = np.asarray(full(x))
    assert valid.shape[1:3] == (same.shape[1] + 1, same.shape[2] + 1)
    assert np.abs(valid[:, :-1, :-1] - same).max() < 1e-5
    assert np.abs(valid[:, 1:, 1:] - same).max() > 0.1


def test_subpixel_weights_of_a_stride_one_kernel_are_the_flipped_kernel():
    from aekit.exporting.forms import subpixel_weights

    kernel = np.random.default_rng(2).normal(size=(3, 3, 4, 5)).astype(np.float32)  # (kh, kw, out, in)
    bias = np.arange(4, dtype=np.float32)
    weights, tiled, padding = subpixel_weights(kernel, bias, (1, 1), (1, 1))
    assert padding == ((1, 1), (1, 1))
    np.testing.assert_array_equal(weights, kernel[::-1, ::-1].transpose(0, 1, 3, 2))
    np.testing.assert_array_equal(tiled, bias)
    weights, tiled, padding = subpixel_weights(kernel, bias, (2, 2), (0, 0))
    assert weights.shape == (2, 2, 5, 16) and padding == ((1, 0), (1, 0)) and tiled.shape == (16,)
    # phase (1, 1) (output row and column odd) takes only the centre tap, from the input pixel itself
    np.testing.assert_array_equal(weights[1, 1, :, 12:16], kernel[1, 1].T)
    assert not weights[0, :, :, 12:16].any() and not weights[:, 0, :, 12:16].any()


@pytest.mark.parametrize("key", list(SHAPES))
def test_the_4d_form_computes_the_decoder_with_only_4d_tensors(key):
    from aekit.exporting.forms import rewrite_decoder

    decoder, z = random_decoder(key)
    rewritten = rewrite_decoder(decoder, "phases4d")
    assert rewritten.input_shape == (None, 1, 1, z.shape[1]) and rewritten.output_shape == decoder.output_shape
    assert np.abs(keras_out(rewritten, z[:, None, None, :]) - keras_out(decoder, z)).max() < 1e-5
    kinds = [type(layer).__name__ for layer in rewritten.layers]
    assert not {"Dense", "Conv2DTranspose", "Permute", "Reshape"} & set(kinds)
    assert all(len(t.shape) == 4 for layer in rewritten.layers for t in _outputs(layer))


def test_the_4d_autoencoder_runs_in_opencv_on_both_engines(tmp_path):
    """The fixed-batch float .tflite autoencoder ("phases4d": its encoder's Flatten -> Dense as an (H, W) Conv2D)."""
    from aekit.exporting.static import graph_ops, written_model
    from aekit.exporting.writers import _write_tflite
    from aekit.training.model import build_autoencoder

    _, _, autoencoder = build_autoencoder((16, 24, 3), (4, 8, 8), 6)
    x = np.random.default_rng(8).uniform(0, 1, (3, 16, 24, 3)).astype(np.float32)
    expected = keras_out(autoencoder, x)
    written, form = written_model(autoencoder, 1, "tflite", "float32", "autoencoder")
    assert form == "phases4d" and written.input_shape == (1, 16, 24, 3)
    assert np.abs(np.concatenate([keras_out(written, one[None]) for one in x]) - expected).max() < 1e-5
    path = tmp_path / "autoencoder_batch1.tflite"
    _write_tflite(written, "autoencoder", path, "float32")
    assert not {"FULLY_CONNECTED", "TRANSPOSE_CONV", "TRANSPOSE"} & set(graph_ops(path))
    cv2 = pytest.importorskip("cv2")
    for engine in [getattr(cv2.dnn, n) for n in ("ENGINE_CLASSIC", "ENGINE_NEW") if hasattr(cv2.dnn, n)] or [None]:
        net = cv2.dnn.readNet(str(path)) if engine is None else cv2.dnn.readNet(str(path), "", "", engine)
        outs = []
        for one in x:  # OpenCV's TFLite blobs are NCHW
            net.setInput(np.ascontiguousarray(one[None].transpose(0, 3, 1, 2)))
            outs.append(np.asarray(net.forward()).transpose(0, 2, 3, 1))
        assert np.abs(np.concatenate(outs) - expected).max() < 1e-5, engine


def test_a_volume_over_10x10_gets_phases_at_a_fixed_batch():
    """phases4d writes a convolution per pixel of the Dense's volume (tflite-micro's CONCATENATION: 10 inputs)."""
    from aekit.exporting.static import written_model
    from aekit.training.model import build_autoencoder

    _, small, _ = build_autoencoder((40, 40, 1), (8, 16), 4)  # a 10x10 volume
    _, large, _ = build_autoencoder((48, 44, 1), (8, 16), 4)  # 12x11
    assert written_model(small, 1, "tflite")[1] == "phases4d"
    written, form = written_model(large, 1, "tflite")
    assert form == "phases" and written.input_shape == (1, 4)
    z = np.random.default_rng(9).normal(size=(1, 4)).astype(np.float32)
    assert np.abs(keras_out(written, z) - keras_out(large, z)).max() < 1e-5


def _outputs(layer):
    out = layer.output
    return out if isinstance(out, list) else [out]


def test_phase_weights_take_only_each_phases_taps():
    from aekit.exporting.forms import phase_weights

    kernel = np.random.default_rng(3).normal(size=(3, 3, 4, 5)).astype(np.float32)  # (kh, kw, out, in)
    phases = phase_weights(kernel, (2, 2), (0, 0))
    assert [p[0] for p in phases] == [(0, 0), (0, 1), (1, 0), (1, 1)]  # depth_to_space's channel order
    assert [p[1].shape[:2] for p in phases] == [(2, 2), (2, 1), (1, 2), (1, 1)]
    assert sum(p[1].shape[0] * p[1].shape[1] for p in phases) == 9  # the transposed convolution's 9 taps, no more
    assert [p[2] for p in phases] == [((1, 0), (1, 0)), ((1, 0), (0, 0)), ((0, 0), (1, 0)), ((0, 0), (0, 0))]
    # the odd row, odd column phase is the centre tap; the even/even one takes the corners (taps 2 then 0)
    np.testing.assert_array_equal(phases[3][1][0, 0], kernel[1, 1].T)
    np.testing.assert_array_equal(phases[0][1][0, 0], kernel[2, 2].T)
    np.testing.assert_array_equal(phases[0][1][1, 1], kernel[0, 0].T)


def test_an_unknown_form_is_refused():
    from aekit.exporting.forms import rewrite_decoder

    decoder, _ = random_decoder("square")
    with pytest.raises(ValueError, match="crop"):
        rewrite_decoder(decoder, "winograd")


def conv_transpose_pads(model):
    return [
        list(onnx.helper.get_attribute_value(a))
        for node in model.graph.node
        if node.op_type == "ConvTranspose"
        for a in node.attribute
        if a.name == "pads"
    ]


@pytest.mark.parametrize("form", ["native", "crop", "subpixel", "phases"])
def test_onnx_files_of_each_form_agree_and_crop_has_no_asymmetric_convtranspose_pads(tmp_path, form):
    from aekit.edge.runtimes import OnnxRunner
    from aekit.exporting.forms import rewrite_decoder
    from aekit.exporting.writers import _write_onnx

    decoder, z = random_decoder("non-square", seed=3)
    expected = keras_out(decoder, z)
    path = tmp_path / f"decoder_{form}.onnx"
    _write_onnx(rewrite_decoder(decoder, form), "decoder", path, 17, "float32")
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    pads = conv_transpose_pads(proto)
    ops = {node.op_type for node in proto.graph.node}
    if form == "native":  # what the rewrite is for: tf2onnx writes 'same' stride-2 as pads (0, 0, 1, 1)
        assert [0, 0, 1, 1] in pads
    elif form == "crop":
        assert len(pads) == 4 and all(p == [0, 0, 0, 0] for p in pads)
    else:
        assert "ConvTranspose" not in ops and "DepthToSpace" not in ops and "Conv" in ops
    if form != "native":  # a dynamic batch, and still no shape arithmetic (the reshapes are to constant shapes)
        assert not ops & {"Shape", "Gather"}, ops
    out = OnnxRunner(path, "cpu", threads=1).run(z)
    assert np.abs(out - expected).max() < 1e-5


@pytest.mark.parametrize("form", ["subpixel", "phases"])
@pytest.mark.parametrize("interleave", ["reshape", "op"])
def test_litert_files_of_the_convolution_forms_agree(tmp_path, form, interleave):
    from aekit.edge.runtimes import TFLiteRunner
    from aekit.exporting.forms import rewrite_decoder
    from aekit.exporting.static import graph_ops
    from aekit.exporting.writers import _write_tflite

    decoder, z = random_decoder("non-square", seed=4)
    path = tmp_path / f"decoder_{form}.tflite"
    _write_tflite(rewrite_decoder(decoder, form, interleave), "decoder", path, "float32")
    assert np.abs(TFLiteRunner(path, threads=1).run(z) - keras_out(decoder, z)).max() < 1e-5
    ops = graph_ops(path)
    assert "TRANSPOSE_CONV" not in ops and not {"SHAPE", "STRIDED_SLICE", "PACK"} & set(ops), ops
    assert ops.count("TRANSPOSE") == 3  # one interleave per stride-2 layer ("op": 4-D, what tflite-micro takes)
    assert ops.count("CONCATENATION") == (3 if form == "phases" else 0)


@pytest.mark.parametrize("form", ["subpixel", "phases"])
def test_dynamic_litert_decoders_stay_right_over_changing_batches(tmp_path, form):
    """LiteRT 2.3's XNNPACK returned wrong outputs (off by up to 1.0) for a sub-pixel decoder whose reshapes
    computed the batch at run time (SHAPE -> STRIDED_SLICE -> PACK), when invoked twice at batch 256 after
    batches 64 and 1: aekit's forms reshape to constant shapes, and these files must stay right."""
    from aekit.edge.runtimes import TFLiteRunner
    from aekit.exporting.forms import rewrite_decoder
    from aekit.exporting.writers import _write_tflite

    decoder, _ = random_decoder("square", seed=6)
    z = np.random.default_rng(7).normal(size=(256, SHAPES["square"][2])).astype(np.float32)
    expected = keras_out(decoder, z)
    path = tmp_path / "decoder.tflite"
    _write_tflite(rewrite_decoder(decoder, form, "op"), "decoder", path, "float32")
    runner = TFLiteRunner(path, threads=2)
    # the interpreter itself at each batch (runner.run would make calls of STREAM_CHUNK)
    errors = [float(np.abs(runner._run(z[:batch]) - expected[:batch]).max()) for batch in (64, 1, 256, 256, 256)]
    assert max(errors) < 1e-5, errors


def test_a_dynamic_int8_subpixel_decoder_stays_right_over_changing_batches(tmp_path):
    """The int8 .tflite decoder (subpixel, XNNPACK's int8 kernels): each image decodes the same whatever the batch."""
    from aekit.edge.runtimes import TFLiteRunner
    from aekit.exporting.forms import rewrite_decoder
    from aekit.exporting.int8 import TFLiteQuantizer

    decoder, _ = random_decoder("square", seed=10)
    z = np.random.default_rng(11).normal(size=(256, SHAPES["square"][2])).astype(np.float32)
    path = tmp_path / "decoder_int8.tflite"
    TFLiteQuantizer(rewrite_decoder(decoder, "subpixel", "op"), "decoder", z).write(path)
    runner = TFLiteRunner(path, threads=2)
    first = runner._run(z[:64])  # the interpreter itself at each batch (runner.run makes calls of STREAM_CHUNK)
    assert np.abs(first - keras_out(decoder, z[:64])).mean() < 0.05  # int8, near the float decoder
    for batch in (1, 256, 256, 256):
        assert np.abs(runner._run(z[:batch])[:64] - first[:batch]).max() < 0.02, batch  # a quantum or two at most
    assert np.abs(runner.run(z)[:64] - first).max() < 0.02  # and in calls of STREAM_CHUNK


@pytest.mark.parametrize("batch", [None, 1])
def test_the_op_interleave_runs_on_tflite_micro(tmp_path, batch):
    pytest.importorskip("tflite_micro")
    from aekit.exporting.forms import rewrite_decoder
    from aekit.exporting.micro import MicroRunner
    from aekit.exporting.static import fixed_batch
    from aekit.exporting.writers import _write_tflite

    decoder, z = random_decoder("square", seed=5)
    path = tmp_path / "decoder.tflite"
    rewritten = rewrite_decoder(decoder, "subpixel", "op")
    _write_tflite(fixed_batch(rewritten, batch) if batch else rewritten, "decoder", path, "float32")
    assert np.abs(MicroRunner(path).run(z) - keras_out(decoder, z)).max() < 1e-5  # one image at a time


@pytest.mark.parametrize("role", ["encoder", "decoder"])
def test_folding_batchnorm_keeps_the_function_and_removes_the_batchnorms(role):
    from aekit.exporting.forms import fold_batchnorm
    from aekit.training.model import build_autoencoder

    encoder, decoder, _ = build_autoencoder((16, 24, 3), (4, 8), 6)
    model = encoder if role == "encoder" else decoder
    rng = np.random.default_rng(5)
    for layer in model.layers:
        weights = layer.get_weights()
        if type(layer).__name__ == "BatchNormalization":
            c = weights[0].shape
            weights = [rng.uniform(0.5, 1.5, c), rng.normal(0, 0.3, c), rng.normal(0, 0.3, c), rng.uniform(0.5, 2.0, c)]
        else:
            weights = [rng.normal(0, 0.3, w.shape) for w in weights]
        layer.set_weights([np.asarray(w, np.float32) for w in weights])
    x = rng.uniform(0, 1, (5, 16, 24, 3)) if role == "encoder" else rng.normal(size=(5, 6))
    x = x.astype(np.float32)
    expected = keras_out(model, x)
    folded = fold_batchnorm(model)
    assert not any(type(layer).__name__ == "BatchNormalization" for layer in folded.layers)
    assert np.abs(keras_out(folded, x) - expected).max() < 1e-5 * max(1.0, np.abs(expected).max())
    # a BatchNorm with a negative scale does not commute with LeakyReLU: it is kept, and the function still holds
    norm = next(layer for layer in model.layers if type(layer).__name__ == "BatchNormalization")
    gamma, *rest = norm.get_weights()
    norm.set_weights([-gamma, *rest])
    expected = keras_out(model, x)
    kept = fold_batchnorm(model)
    assert sum(type(layer).__name__ == "BatchNormalization" for layer in kept.layers) == 1
    assert np.abs(keras_out(kept, x) - expected).max() < 1e-5 * max(1.0, np.abs(expected).max())


def test_float_onnx_decoders_are_folded_and_run_as_one_stream_per_thread(tmp_path):
    """A dynamic-batch float ONNX decoder is written with its BatchNorms folded (one Mul per layer fewer), and a big
    batch runs as one single-threaded stream per thread: the same outputs, input by input, as the one session."""
    from aekit.edge.runtimes import STREAM_MIN, OnnxRunner
    from aekit.exporting.static import graph_ops, written_model
    from aekit.exporting.writers import _write_onnx

    decoder, _ = random_decoder("non-square", seed=9)
    written, form = written_model(decoder, None, "onnx", "float32", "decoder")
    assert form == "folded"
    assert not any(type(layer).__name__ == "BatchNormalization" for layer in written.layers)
    assert written_model(decoder, 4, "onnx")[1] == "crop" and written_model(decoder, None, "onnx", "int8")[1] == "subpixel"
    _write_onnx(decoder, "decoder", tmp_path / "native.onnx", 17, "float32")
    _write_onnx(written, "decoder", tmp_path / "folded.onnx", 17, "float32")
    native, folded = graph_ops(tmp_path / "native.onnx"), graph_ops(tmp_path / "folded.onnx")
    layers = len(SHAPES["non-square"][1])
    assert native.count("Mul") == layers and folded.count("Mul") == 0  # the BatchNorm scale is in the kernels

    z = np.random.default_rng(4).normal(size=(2 * STREAM_MIN + 3, SHAPES["non-square"][2])).astype(np.float32)
    expected = keras_out(decoder, z)
    runner = OnnxRunner(tmp_path / "folded.onnx", "cpu", 2)
    assert runner.streams == 2 and OnnxRunner(tmp_path / "folded.onnx", "cpu", 1).streams == 1
    small = runner.run(z[: STREAM_MIN - 1])
    assert runner._streams is None  # a small batch runs on the one 2-thread session
    out = runner.run(z)
    sessions, _ = runner._streams
    assert len(sessions) == 2  # two single-threaded streams, each over its share in calls of STREAM_CHUNK
    one = np.concatenate([runner._run(z[i : i + 1]) for i in range(len(z))])  # input by input, on the one session
    assert out.shape == expected.shape and np.abs(out - one).max() < 1e-6
    assert np.abs(small - one[: STREAM_MIN - 1]).max() < 1e-6
    assert np.abs(out - expected).max() < 1e-5


def test_litert_runs_a_big_batch_in_calls_of_the_chunk_size_with_the_same_outputs(tmp_path):
    from aekit.edge.runtimes import STREAM_CHUNK, TFLiteRunner
    from aekit.exporting.static import written_model
    from aekit.exporting.writers import _write_tflite

    decoder, _ = random_decoder("non-square", seed=11)
    written, form = written_model(decoder, None, "tflite", "float32", "decoder")
    assert form == "phases"
    _write_tflite(written, "decoder", tmp_path / "decoder.tflite", "float32")
    z = np.random.default_rng(6).normal(size=(2 * STREAM_CHUNK + 5, SHAPES["non-square"][2])).astype(np.float32)
    runner = TFLiteRunner(tmp_path / "decoder.tflite", 2)
    out = runner.run(z)  # 37 inputs: three even calls of 13 (the last padded by two), the interpreter sized once
    assert runner.batch == 13
    one = np.concatenate([runner._run(z[i : i + 1]) for i in range(len(z))])
    assert out.shape == (len(z), *decoder.output_shape[1:]) and np.abs(out - one).max() < 1e-6
    assert np.abs(out - keras_out(decoder, z)).max() < 1e-5
    assert np.abs(runner.run(z[:STREAM_CHUNK]) - one[:STREAM_CHUNK]).max() < 1e-6 and runner.batch == STREAM_CHUNK
