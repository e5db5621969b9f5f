"""Runs one exported file in one client, in that client's own environment (numpy and the client only).

benchmarks/compat.py starts it with the client's venv Python: `python compat_runner.py JOB.json`. The job names the
client, its mode, the model file, the input .npy (already in the file's input dtype), the batch to feed (the file's
fixed batch, or the whole input for a dynamic batch), the seconds to time and the threads. It writes the outputs to
an .npy and a result JSON: the client's version, whether the file loaded and ran, the error text when not, images/s.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

import numpy as np


def _onnxruntime(model: str, mode: str, threads: int):
    import onnxruntime as ort

    ort.set_default_logger_severity(3)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if mode == "ORT_DISABLE_ALL":
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return (lambda x: session.run(None, {name: x})[0]), {}


def _litert(model: str, mode: str, threads: int):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(model_path=model, num_threads=threads, experimental_op_resolver_type=getattr(OpResolverType, mode))
    interpreter.allocate_tensors()
    state = {"shape": None}

    def run(x):
        detail = interpreter.get_input_details()[0]
        if state["shape"] != x.shape:
            interpreter.resize_tensor_input(detail["index"], list(x.shape), strict=False)
            interpreter.allocate_tensors()
            state["shape"] = x.shape
        interpreter.set_tensor(detail["index"], x)
        interpreter.invoke()
        return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])

    return run, {}


def _reference(model: str, mode: str, threads: int):
    from onnx.reference import ReferenceEvaluator

    evaluator = ReferenceEvaluator(model)
    name = evaluator.input_names[0]
    return (lambda x: evaluator.run(None, {name: x})[0]), {}


def _tflite_micro(model: str, mode: str, threads: int):
    from tflite_micro.python.tflite_micro import runtime

    with stderr_lines() as said:  # tflite-micro prints why a file fails to stderr, and raises a bare "failed to allocate"
        try:
            interpreter = runtime.Interpreter.from_file(model)
        except Exception as exc:
            raise RuntimeError(f"{exc}: {' / '.join(said())}" if said() else str(exc)) from None
    expected = tuple(int(s) for s in interpreter.get_input_details(0)["shape"])

    def run(x):
        if tuple(x.shape) != expected:
            raise ValueError(f"tflite-micro runs this file at input shape {list(expected)} only, not {list(x.shape)}")
        interpreter.set_input(x, 0)
        interpreter.invoke()
        return np.array(interpreter.get_output(0))

    return run, {"input_shape": list(expected)}


@contextmanager
def stderr_lines():
    """What native code writes to stderr inside the block: `said()` gives its lines (fd 2, so C++ logs too)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as capture:
        os.dup2(capture.fileno(), 2)
        lines: list[str] = []

        def said() -> list[str]:
            if not lines:
                capture.seek(0)
                lines.extend(line.strip() for line in capture.read().decode(errors="replace").splitlines() if line.strip())
            return lines

        try:
            yield said
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _opencv(model: str, mode: str, threads: int):
    import cv2

    cv2.setNumThreads(threads)
    dnn = cv2.dnn
    engine = () if mode == "default" else ({"classic": dnn.ENGINE_CLASSIC, "new": dnn.ENGINE_NEW}[mode],)
    if model.endswith(".onnx"):
        net = dnn.readNetFromONNX(model, *engine)
    elif not hasattr(dnn, "readNetFromTFLite"):
        raise RuntimeError(f"OpenCV {cv2.__version__} has no TFLite importer (cv2.dnn.readNetFromTFLite)")
    else:
        net = dnn.readNetFromTFLite(model, *engine)

    nchw = model.endswith(".tflite")  # OpenCV's TFLite importer takes and gives 4-D blobs as NCHW (the file's NHWC)

    def run(x):
        net.setInput(np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if nchw and x.ndim == 4 else x)
        out = np.asarray(net.forward())
        return out.transpose(0, 2, 3, 1) if nchw and out.ndim == 4 else out

    return run, {}


def _openvino(model: str, mode: str, threads: int):
    import openvino as ov

    core = ov.Core()
    config = {"INFERENCE_NUM_THREADS": threads}
    if mode != "default":
        config["INFERENCE_PRECISION_HINT"] = "f32"
    if mode.startswith("ir"):  # converted to IR (ovc's path) and read back; save_model compresses weights to fp16 unless told
        scratch = tempfile.mkdtemp(prefix="ov-ir-")
        xml = str(Path(scratch) / "model.xml")
        ov.save_model(ov.convert_model(model), xml, compress_to_fp16=(mode == "ir-fp16-weights"))
        source = core.read_model(xml)
    else:
        source = core.read_model(model)
    compiled = core.compile_model(source, "CPU", config)
    request = compiled.create_infer_request()

    def run(x):
        request.infer({0: x})
        return np.array(request.get_output_tensor(0).data)

    return run, {"inference_precision": _type_name(compiled.get_property("INFERENCE_PRECISION_HINT"))}


def _type_name(value) -> str:
    return value.get_type_name() if hasattr(value, "get_type_name") else str(value)


# client -> (how it opens a file, the distribution whose version it reports)
CLIENTS = {
    "onnxruntime": (_onnxruntime, "onnxruntime"),
    "litert": (_litert, "ai-edge-litert"),
    "onnx-reference": (_reference, "onnx"),
    "tflite-micro": (_tflite_micro, "tflite-micro"),
    "opencv": (_opencv, "opencv-python-headless"),
    "openvino": (_openvino, "openvino"),
}


def short_error(exc: BaseException) -> str:
    """The informative part of a client's error, on one line (OpenCV's carry source paths and C++ signatures)."""
    text = " ".join(str(exc).replace("\n>", " ").split()) or type(exc).__name__
    if "error: (" in text:  # OpenCV: "OpenCV(5.0.0) /io/.../file.cpp:298: error: (-213:...) what in function 'name'"
        node = re.search(r"Node \[([^\]]*)\]:\(([^)]*)\)", text)
        text = text.rsplit("error: (", 1)[1].split(")", 1)[-1]
        text = re.sub(r" in function '[^']*'", "", text).strip(" >")
        if node:
            text = f"{node.group(1)} node {node.group(2)}: {text}"
    return f"{type(exc).__name__}: {text}"[:600]


def run_all(run, inputs: np.ndarray, batch: int) -> np.ndarray:
    return np.concatenate([np.asarray(run(inputs[i : i + batch])) for i in range(0, len(inputs), batch)])


def run_job(job: dict) -> None:
    result = {"loaded": False, "ran": False, "error": None, "version": None, "extra": {}}

    def write(result: dict) -> None:
        Path(job["result"]).write_text(json.dumps(result))

    stage = "import"
    try:
        inputs = np.load(job["input"])
        opener, distribution = CLIENTS[job["client"]]
        result["version"] = metadata.version(distribution)
        stage = "load"
        start = time.perf_counter()
        run, extra = opener(job["model"], job["mode"], job["threads"])
        result.update(loaded=True, load_seconds=time.perf_counter() - start, extra=extra)
        stage = "run"
        batch = job["batch"] or len(inputs)
        start = time.perf_counter()
        outputs = run_all(run, inputs, batch)
        first = time.perf_counter() - start
        np.save(job["output"], outputs)
        result.update(ran=True, first_pass_seconds=first, batch=batch)
        if first >= job["seconds"]:  # a slow client (a reference implementation): its one pass is the measure
            result["images_per_sec"] = len(inputs) / first
            return write(result)
        passes, start = 0, time.perf_counter()
        while passes < 1 or (time.perf_counter() - start < job["seconds"] and passes < 10_000):
            run_all(run, inputs, batch)
            passes += 1
        result["images_per_sec"] = passes * len(inputs) / (time.perf_counter() - start)
    except Exception as exc:  # every client error is a result
        result.update(error=short_error(exc), stage=stage, traceback=traceback.format_exc()[-2000:])
    write(result)


def main() -> None:
    """One job, or a list of them run in turn (each result written as it is known, so a crash loses only its own)."""
    jobs = json.loads(Path(sys.argv[1]).read_text())
    for job in jobs if isinstance(jobs, list) else [jobs]:
        run_job(job)


if __name__ == "__main__":
    main()
