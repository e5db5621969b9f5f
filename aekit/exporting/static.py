"""Fixed-batch exports: graphs with a static batch and no shape arithmetic, and decoders OpenCV DNN 4.x loads.

A dynamic-batch graph computes its batch at run time (TFLite SHAPE, STRIDED_SLICE, PACK; ONNX Shape,
Gather, Concat feeding Reshape), which OpenCV DNN and microcontroller runtimes refuse. Traced with a fixed
batch, the converters write every shape as a constant instead. Such a file takes exactly its batch at a
time: aekit's runners feed it that (aekit.edge.runtimes.in_fixed_groups), padding the last group of inputs.

Keras' Conv2DTranspose(padding="same") becomes an ONNX ConvTranspose with asymmetric pads (stride 2,
kernel 3: pads [0, 0, 1, 1]), which OpenCV DNN 4.x refuses ("Unsupported asymmetric padding in
deconvolution layer"). A fixed-batch ONNX decoder is therefore written in aekit.exporting.forms' "crop"
form: the same function, each transposed convolution unpadded ("valid"), then cropped (`written_model`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from aekit.errors import AekitError
from aekit.lazy import keras
from aekit.quiet import quiet_native_output as _quiet

# Ops a converter writes to compute shapes at run time (aekit's models hold none of them otherwise): a
# fixed-batch file holds none.
SHAPE_OPS = {
    "onnx": {"Shape", "Size", "Gather", "Concat", "Unsqueeze", "Squeeze", "ConstantOfShape", "Range", "Expand"},
    "tflite": {"SHAPE", "STRIDED_SLICE", "PACK", "UNPACK", "GATHER", "CONCATENATION", "FILL", "RANGE", "BROADCAST_TO"},
}
MAX_STATIC_BATCH = 4096  # a larger fixed batch only makes every call pad more


def default_folder(static_batch: int | None) -> str:
    """The run's own export folder: export/, or export-batchN/ for fixed-batch files (aekit bench reads export/)."""
    return "export" if static_batch is None else f"export-batch{static_batch}"


def folder_batch(folder: Path) -> int | None:
    """N for a folder named export-batchN (default_folder), else None."""
    name = Path(folder).name.removeprefix("export-batch")
    return int(name) if Path(folder).name.startswith("export-batch") and name.isdigit() else None


def check_static_batch(batch) -> int | None:
    """--static-batch as given (None: a dynamic batch), or AekitError unless a whole number from 1 to MAX_STATIC_BATCH."""
    if batch is None:
        return None
    if isinstance(batch, bool) or not isinstance(batch, int | np.integer) or not 1 <= batch <= MAX_STATIC_BATCH:
        raise AekitError(
            f"--static-batch {batch!r} is not a whole number from 1 to {MAX_STATIC_BATCH:,}. Pass e.g. --static-batch 1 "
            "(one input per call, what OpenCV DNN and microcontrollers run), or leave it out for a dynamic batch."
        )
    return int(batch)


def fixed_batch(model, batch: int):
    """The same model traced with a fixed batch: converters then write every shape as a constant."""
    inputs = keras.Input(model.input_shape[1:], batch_size=batch, name=model.inputs[0].name)
    return keras.Model(inputs, model(inputs), name=model.name)


def written_model(model, batch: int | None, fmt: str, precision: str = "float32", role: str = "decoder"):
    """(the Keras model a file is converted from, its form or None): the same function, in the form its runtime
    runs fastest or its target loads.

    The forms (aekit.exporting.forms) were timed side by side in benchmarks/decoder_forms.py:
    - A .tflite decoder (tflm too) is written without transposed convolutions, which LiteRT does not hand to
      XNNPACK: "phases" for float files (one convolution per output phase, as many multiply-adds as the
      transposed convolution), "subpixel" for int8 ones (one convolution with 4x the channels: the faster
      int8 kernel). Their reshapes are to constant shapes, so a dynamic-batch file holds no shape ops. A
      fixed-batch float one (the autoencoder too) is "phases4d": every tensor 4-D, a decoder's input a
      (1, 1, L) latent image, which OpenCV DNN's TFLite importer runs (it follows NHWC only through 4-D tensors).
    - A fixed-batch ONNX file with transposed convolutions (decoder, autoencoder): "crop" (no asymmetric
      ConvTranspose pads: OpenCV DNN 4.x). Else an int8 ONNX decoder: "subpixel" (onnxruntime has no int8
      ConvTranspose kernel); a float one keeps its transposed convolutions (onnxruntime's ConvTranspose ran
      faster than the convolution forms, which add layout copies), BatchNorm folded (below).
    - An int8 ONNX encoder, and a float32 dynamic-batch ONNX decoder: each BatchNorm folded into the layer
      before it ("folded", when one folds: one elementwise pass fewer per layer; the decoder 1.15x in onnxruntime).
    Then at the fixed batch, when there is one.
    """
    from aekit.exporting import forms

    form = None
    if has_same_transpose(model):
        if fmt == "onnx" and batch is not None:
            form = "crop"
        elif fmt == "tflite" and batch is not None and precision != "int8":
            form = "phases4d"  # the decoder and the autoencoder: OpenCV DNN 5 runs these
        elif role == "decoder" and fmt in ("tflite", "tflm"):
            form = "subpixel" if precision == "int8" or fmt == "tflm" else "phases"
        elif role == "decoder" and fmt == "onnx" and precision == "int8":
            form = "subpixel"
    interleave = "op" if fmt in ("tflite", "tflm") else "reshape"  # tflite-micro's TRANSPOSE stops at 5-D
    # a layer the form does not take (e.g. a phases4d volume over 10x10): the next form, then the model as trained
    candidates = dict.fromkeys([form, "phases" if form == "phases4d" and role == "decoder" else None, None])
    for form in candidates:  # noqa: B020 - the form kept is the first that writes
        try:
            written = forms.rewrite_decoder(model, form, interleave) if form else model
            break
        except ValueError:
            continue
    if (
        fmt == "onnx"
        and form is None
        and ((role == "encoder" and precision == "int8") or (role == "decoder" and precision != "int8" and batch is None))
    ):
        folded = forms.fold_batchnorm(model)
        if _batchnorms(folded) < _batchnorms(model):  # "folded" only where a BatchNorm went
            written, form = folded, "folded"
    return (fixed_batch(written, batch) if batch is not None else written), form


def _batchnorms(model) -> int:
    return sum(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers)


def has_same_transpose(model) -> bool:
    """Whether the model holds a Conv2DTranspose(padding="same") (what the "crop" form rewrites)."""
    for layer in model.layers:
        if isinstance(layer, keras.Model) and has_same_transpose(layer):
            return True
        if isinstance(layer, keras.layers.Conv2DTranspose) and layer.get_config()["padding"] == "same":
            return True
    return False


def graph_ops(path: Path) -> list[str]:
    """Every op of an .onnx or .tflite file, in graph order (repeats kept)."""
    path = Path(path)
    if path.suffix == ".onnx":
        import onnx

        return [node.op_type for node in onnx.load(str(path)).graph.node]
    from ai_edge_litert.interpreter import Interpreter

    with _quiet():
        interpreter = Interpreter(model_path=str(path))
    return [op["op_name"] for op in interpreter._get_ops_details()]


def shape_ops(path: Path) -> list[str]:
    """The shape-computing ops an .onnx or .tflite file holds, sorted (empty for a static file).

    An op of SHAPE_OPS counts when it writes an integer tensor (a shape, an index): a CONCATENATION or
    Concat of images (the "phases" decoder form) is not one.
    """
    path = Path(path)
    if path.suffix == ".onnx":
        import onnx

        model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
        graph = model.graph
        types = {v.name: v.type.tensor_type.elem_type for v in (*graph.value_info, *graph.output, *graph.input)}
        types.update({t.name: t.data_type for t in graph.initializer})
        integer = {onnx.TensorProto.INT32, onnx.TensorProto.INT64}
        found = {
            node.op_type
            for node in graph.node
            if node.op_type in SHAPE_OPS["onnx"]
            and (node.op_type in ("Shape", "Size") or any(types.get(o) in integer for o in node.output))
        }
        return sorted(found)
    from ai_edge_litert.interpreter import Interpreter

    with _quiet():
        interpreter = Interpreter(model_path=str(path))
    dtypes = {t["index"]: np.dtype(t["dtype"]) for t in interpreter.get_tensor_details()}
    found = {
        op["op_name"]
        for op in interpreter._get_ops_details()
        if op["op_name"] in SHAPE_OPS["tflite"]
        and (op["op_name"] == "SHAPE" or any(dtypes.get(o) in (np.int32, np.int64) for o in op["outputs"]))
    }
    return sorted(found)
