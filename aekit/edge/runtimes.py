"""Running exported files with their own runtimes: onnxruntime for .onnx, LiteRT for .tflite (and OpenVINO for .onnx).

TensorFlow-free. A runner takes float32 model inputs (images in [0, 1] or
latents) in any batch size, quantizes them itself when the file wants uint8/int8
input, and returns float32 outputs. onnxruntime may silently fall back from CUDA
to CPU, so the runner reports the providers the session really uses, and
`open_runner` refuses `device="cuda"` when CUDA is not what runs. OpenVINO (`aekit[openvino]`) is a
further runtime for .onnx files, on its CPU plugin, asked for by name (`runtime="openvino"`).
"""

from __future__ import annotations

import functools
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from aekit.core.manifest import EXPORT_FORMATS, TensorSpec, format_of_file
from aekit.errors import AekitError
from aekit.quiet import quiet_native_output

DEVICES = ("cpu", "cuda", "auto")
CUDA_PROVIDER, CPU_PROVIDER = "CUDAExecutionProvider", "CPUExecutionProvider"
LITERT_PROVIDER = "XNNPACK/CPU"  # LiteRT's Python interpreter has no GPU delegate: .tflite files run on the CPU
OPENVINO = "openvino"
# OpenVINO's CPU plugin runs float32 models in bf16 by default on CPUs with AMX or AVX512-BF16 (f16 on some ARM
# CPUs): "f32" holds it to float32 (INFERENCE_PRECISION_HINT), so it reproduces the float32 file; "default" is
# the plugin's own choice (what `openvino.Core().compile_model(path, "CPU")` runs).
OPENVINO_PRECISIONS = ("f32", "default")
# The kernels a file runs on. "default": what each runtime runs unless told (onnxruntime with every graph
# optimization, which fuses int8 QDQ groups into integer kernels; LiteRT with XNNPACK). "builtin": the
# runtime's own optimized kernels without those (onnxruntime's basic optimizations only; LiteRT without
# XNNPACK, as tflite-runtime on a board runs). "reference": the kernels a device without any of them runs
# (onnxruntime with graph optimizations off, every QDQ op on its own; LiteRT's built-in reference kernels,
# what tflite-micro computes). Reference int8 kernels are slow: 20-60x the default's time.
KERNELS = ("default", "builtin", "reference")
# onnxruntime on the CPU: a batch of STREAM_MIN inputs or more runs as one single-threaded stream per thread,
# each in calls of STREAM_CHUNK inputs (OnnxRunner); LiteRT runs a decoder's batch of more than STREAM_CHUNK in calls of
# at most STREAM_CHUNK (TFLiteRunner). Calls of 8-16 inputs measured fastest on the 64x64x3 decoder.
STREAM_MIN, STREAM_CHUNK = 16, 16
KERNEL_NAMES = {
    ("onnxruntime", "default"): "onnxruntime, all graph optimizations",
    ("onnxruntime", "builtin"): "onnxruntime, basic graph optimizations",
    ("onnxruntime", "reference"): "onnxruntime, graph optimizations off",
    ("litert", "default"): "LiteRT with XNNPACK",
    ("litert", "builtin"): "LiteRT built-in kernels, no XNNPACK",
    ("litert", "reference"): "LiteRT built-in reference kernels",
}


class NoCudaError(AekitError):
    """--device cuda was asked for and CUDA is not what runs."""


def out_of_memory(doing: str) -> AekitError:
    """The one wording for a MemoryError on the edge side: what was being done, and the fixes."""
    return AekitError(
        f"Out of memory while {doing}. Pass a smaller --batch-size, close other programs, or raise the process's "
        "memory limit (ulimit -v)."
    )


def no_cuda_message(what: str, fix: str = "Install CUDA/cuDNN for onnxruntime-gpu") -> str:
    """The one wording for a refused --device cuda; `what` names what would run instead."""
    return (
        f"--device cuda was asked for, but CUDA is not what runs ({what}). "
        f"{fix}, or pass --device cpu, or --allow-fallback (allow_fallback=True in Python) to accept the CPU."
    )


def check_device(device: str) -> str:
    """The device in canonical form (cpu, cuda or auto), or an AekitError naming the choices."""
    canonical = str(device).strip().lower()
    if canonical not in DEVICES:
        raise AekitError(f"--device {device!r} is not one of {', '.join(DEVICES)}. Pass --device cpu, or cuda on a GPU machine.")
    return canonical


def check_kernels(kernels: str) -> str:
    """The kernel set by name (KERNELS), or an AekitError naming the choices."""
    if kernels not in KERNELS:
        raise AekitError(f"kernels {kernels!r} is not one of {', '.join(KERNELS)}.")
    return kernels


def max_threads() -> int:
    """The most CPU threads aekit accepts: four per logical core (more only thrash)."""
    return 4 * (os.cpu_count() or 1)


def check_threads(threads) -> int | None:
    """--threads as given (None: the default), or an AekitError unless it is a whole number from 1 to max_threads()."""
    if threads is None:
        return None
    cap = max_threads()
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or not 1 <= threads <= cap:
        raise AekitError(
            f"--threads {threads!r} is not a whole number from 1 to {cap:,} (4 x this machine's {os.cpu_count() or 1} "
            "logical cores). Pass e.g. --threads 1, or leave it out for the physical cores."
        )
    return int(threads)


def default_threads() -> int:
    """Physical cores when psutil can tell, else logical cores."""
    try:
        import psutil

        return psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:
        return os.cpu_count() or 1


class OnnxRunner:
    """An onnxruntime session over one .onnx file.

    Args:
        path: the .onnx file (named in messages; read only when `content` is None).
        device: "cpu", "cuda" or "auto" (CUDA when onnxruntime offers it, else CPU).
        threads: intra-op threads for the CPU provider (None: the physical cores).
        content: the file's bytes, already verified (sessions.py): what runs is what was checked.
        kernels: "default", "builtin" (basic graph optimizations) or "reference" (none) (KERNELS).

    On the CPU with more than one thread, a dynamic-batch file's batch of STREAM_MIN inputs or more runs as
    one stream per thread: that many single-threaded sessions of the same file (made on the first such
    batch), each over its contiguous share in calls of STREAM_CHUNK inputs, at once. Smaller batches
    (latency) run on the one session with all the threads. Streams keep each core's activations in its
    own cache and need no synchronization inside an operator: measured side by side
    (benchmarks/decoder_forms.py), 1.3-1.4x the throughput of one 2-thread session on the decoders at
    batch 64, with the same outputs (bit-identical on this CPU; tests/test_forms.py holds them to 1e-6).
    """

    runtime = "onnxruntime"

    def __init__(
        self, path: Path, device: str = "cpu", threads: int | None = None, content: bytes | None = None, kernels: str = "default"
    ):
        import onnxruntime as ort

        # A CUDA provider that cannot start (no GPU, no CUDA libraries) logs errors and falls back
        # silently; aekit reports the providers really used instead, so keep the log to fatal only.
        ort.set_default_logger_severity(4)
        self.path = Path(path)
        self.threads = threads or default_threads()
        self.kernels = check_kernels(kernels)
        device = check_device(device)
        self.available = ort.get_available_providers()
        requested = [CPU_PROVIDER] if device == "cpu" else [CUDA_PROVIDER, CPU_PROVIDER]
        # A CPU build of onnxruntime warns about an unknown CUDA provider; ask only for what it has.
        self._requested = [p for p in requested if p in self.available] or [CPU_PROVIDER]
        self._model = content if content is not None else str(path)
        self.session = self._session(self.threads)
        self.providers = self.session.get_providers()
        self.input = self.session.get_inputs()[0]
        self.output_name = self.session.get_outputs()[0].name
        self.static_batch = self.input.shape[0] if isinstance(self.input.shape[0], int) else None  # --static-batch files
        self._streams = None  # (run functions, pool): made on the first batch that runs as streams
        self._streams_lock = threading.Lock()

    def _session(self, threads: int):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3  # the CUDA-missing noise is reported through `providers` instead
        if self.kernels != "default":
            options.graph_optimization_level = {
                "builtin": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                "reference": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            }[self.kernels]
        try:
            return ort.InferenceSession(self._model, sess_options=options, providers=self._requested)
        except MemoryError:
            raise out_of_memory(f"loading {self.path}") from None
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            if "alloc" in str(exc).lower():  # a failed allocation (a stream session made late, on a big batch)
                raise out_of_memory(f"loading {self.path}") from None
            raise AekitError(f"onnxruntime cannot load {self.path}: {str(exc).splitlines()[0][:300]}. Re-export it.") from None

    @property
    def streams(self) -> int:
        """How many streams a batch of STREAM_MIN inputs or more runs as (1: the one session)."""
        return min(self.threads, os.cpu_count() or 1) if self.device == "cpu" and self.static_batch is None else 1

    @property
    def device(self) -> str:
        return "cuda" if self.providers and self.providers[0] == CUDA_PROVIDER else "cpu"

    def run(self, batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch, np.float32)
        if self.streams > 1 and len(batch) >= STREAM_MIN:
            return self._run_streams(batch)
        return in_fixed_groups(self._run, batch, self.static_batch)

    def _run_streams(self, batch: np.ndarray) -> np.ndarray:
        with self._streams_lock:
            if self._streams is None:  # run functions holding their session, not the runner: no reference cycle
                names = self.output_name, self.input.name, self.path.name
                runs = [functools.partial(_onnx_run, self._session(1), *names) for _ in range(self.streams)]
                self._streams = runs, ThreadPoolExecutor(len(runs), thread_name_prefix="aekit-onnxruntime-stream")
        return in_streams(*self._streams, batch)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return _onnx_run(self.session, self.output_name, self.input.name, self.path.name, batch)

    def specs(self) -> tuple[list[TensorSpec], list[TensorSpec]]:
        """The file's real inputs and outputs (None for the dynamic batch)."""

        def spec(t):
            dtype = t.type.removeprefix("tensor(").rstrip(")").replace("float", "float32")
            return TensorSpec(t.name, [d if isinstance(d, int) else None for d in t.shape], dtype)

        return [spec(t) for t in self.session.get_inputs()], [spec(t) for t in self.session.get_outputs()]


def is_latent_image(shape) -> bool:
    """Whether a .tflite input `shape` is a "phases4d" decoder's (N, 1, 1, L) latent image (aekit.exporting.forms)."""
    return len(shape) == 4 and tuple(shape[1:3]) == (1, 1)


def as_file_input(batch: np.ndarray, shape) -> np.ndarray:
    """`batch` shaped as a .tflite file's input `shape` takes it: (N, L) latents as a "phases4d" decoder's (N, 1, 1, L)
    latent images; anything else as it is."""
    if batch.ndim == 2 and is_latent_image(shape):
        return batch.reshape(len(batch), 1, 1, -1)
    return batch


class TFLiteRunner:
    """A LiteRT interpreter over one .tflite file, resized to each batch it is given.

    `content`: the file's bytes, already verified (sessions.py); None reads `path`.
    `kernels`: "default" (XNNPACK), "builtin" (LiteRT's own optimized kernels) or "reference" (KERNELS).

    A dynamic-batch decoder's (latent-input file's) batch of more than STREAM_CHUNK inputs runs in even calls of
    at most STREAM_CHUNK (the last one padded by fewer inputs than there are calls), the interpreter sized once
    per batch size: each call's activations stay in the cores' caches. Measured side by side (benchmarks/decoder_forms.py)
    on the float32 decoder of a 64x64x3 model at batch 64: about 1.2x one call of 64; one single-threaded
    interpreter per thread (as OnnxRunner does) gained less. Encoders gained nothing (0.9-1.0x): they run
    a batch in one call.
    """

    runtime = "litert"
    device = "cpu"

    def __init__(self, path: Path, threads: int | None = None, content: bytes | None = None, kernels: str = "default"):
        try:
            from ai_edge_litert.interpreter import Interpreter, OpResolverType
        except ImportError:
            raise AekitError(
                f"{path} is a .tflite file, which needs LiteRT: pip install ai-edge-litert (or 'aekit[edge]'). Where "
                "LiteRT has no wheels (Intel Macs, Windows on ARM), use the .onnx files."
            ) from None

        self.path = Path(path)
        self.kernels = check_kernels(kernels)
        resolver = {
            "default": OpResolverType.AUTO,
            "builtin": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
            "reference": OpResolverType.BUILTIN_REF,
        }[self.kernels]
        self.providers = [LITERT_PROVIDER if self.kernels == "default" else f"{self.kernels}/CPU"]
        self.content = content  # the interpreter reads the model from this buffer: keep it alive as long as the runner
        source = {"model_content": content} if content is not None else {"model_path": str(path)}
        try:
            with quiet_native_output():  # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
                self.interpreter = Interpreter(
                    **source, num_threads=threads or default_threads(), experimental_op_resolver_type=resolver
                )
                self.interpreter.allocate_tensors()
        except MemoryError:
            raise out_of_memory(f"loading {path}") from None
        except (ValueError, RuntimeError) as exc:
            raise AekitError(f"LiteRT cannot load {path}: {str(exc).splitlines()[0][:300]}. Re-export it.") from None
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        fixed = int(self.input["shape_signature"][0])
        self.static_batch = None if fixed == -1 else fixed  # --static-batch files: never resized
        self.batch = self.static_batch
        shape = self.input["shape"]  # a decoder's: (N, L) latents, or a phases4d decoder's (N, 1, 1, L)
        self._latent_input = len(shape) == 2 or is_latent_image(shape)

    def _resize(self, batch_size: int) -> None:
        if batch_size != self.batch:
            shape = [batch_size, *self.input["shape"][1:]]
            self.interpreter.resize_tensor_input(self.input["index"], shape, strict=False)
            self.interpreter.allocate_tensors()
            self.input = self.interpreter.get_input_details()[0]
            self.output = self.interpreter.get_output_details()[0]
            self.batch = batch_size

    def specs(self) -> tuple[list[TensorSpec], list[TensorSpec]]:
        """The file's real inputs and outputs (None for the dynamic batch; scale/zero point when quantized)."""

        def spec(d):
            scale, zero_point = d["quantization"]
            shape = [None if s == -1 else int(s) for s in d["shape_signature"]]
            quantized = np.dtype(d["dtype"]) != np.float32
            return TensorSpec(
                d["name"],
                shape,
                np.dtype(d["dtype"]).name,
                float(scale) if quantized else None,
                int(zero_point) if quantized else None,
            )

        return [spec(self.input)], [spec(self.output)]

    def run(self, batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch, np.float32)
        if self.static_batch is None and self._latent_input and len(batch) > STREAM_CHUNK:
            calls = -(-len(batch) // STREAM_CHUNK)
            return in_fixed_groups(self._run, batch, -(-len(batch) // calls))  # even calls: under one input each padded
        return in_fixed_groups(self._run, batch, self.static_batch)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        self._resize(len(batch))
        self.interpreter.set_tensor(self.input["index"], quantize(as_file_input(batch, self.input["shape"]), self.input))
        self.interpreter.invoke()
        return dequantize(self.interpreter.get_tensor(self.output["index"]), self.output)


class OpenVinoRunner:
    """An OpenVINO compiled model over one .onnx file, on OpenVINO's CPU plugin, any batch size (a dynamic batch).

    Args:
        path: the .onnx file (named in messages; read only when `content` is None).
        threads: inference threads (None: the physical cores).
        content: the file's bytes, already verified (sessions.py): what runs is what was checked.
        precision: "f32" (INFERENCE_PRECISION_HINT f32, the float32 file's own arithmetic) or "default" (the
            plugin's choice: bf16 on CPUs with AMX or AVX512-BF16). `inference_precision` says what it runs.

    An int8 QDQ file runs on OpenVINO's own int8 kernels (it reads QuantizeLinear/DequantizeLinear pairs as
    FakeQuantize); whether those agree with onnxruntime's is measured, not assumed (aekit bench's agreement_db).
    """

    runtime = OPENVINO
    device = "cpu"
    kernels = "default"

    def __init__(self, path: Path, threads: int | None = None, content: bytes | None = None, precision: str = "f32"):
        import openvino as ov

        if precision not in OPENVINO_PRECISIONS:
            raise AekitError(f"OpenVINO precision {precision!r} is not one of {', '.join(OPENVINO_PRECISIONS)}.")
        self.path = Path(path)
        self.precision = precision
        config = {"INFERENCE_NUM_THREADS": int(threads or default_threads())}
        if precision == "f32":
            config["INFERENCE_PRECISION_HINT"] = "f32"
        core = ov.Core()
        try:
            with quiet_native_output():
                model = core.read_model(content if content is not None else read_file_bytes(self.path))
                self.compiled = core.compile_model(model, "CPU", config)
        except MemoryError:
            raise out_of_memory(f"loading {path}") from None
        except Exception as exc:  # OpenVINO raises RuntimeError (and its own types) for files it cannot read
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            raise AekitError(f"OpenVINO cannot load {path}: {first}. Run it with onnxruntime.") from None
        self.inference_precision = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()  # f32, bf16, f16
        self.providers = [f"OpenVINO CPU/{self.inference_precision}"]
        self.request = self.compiled.create_infer_request()
        first = self.compiled.input(0).get_partial_shape()[0]
        self.static_batch = first.get_length() if first.is_static else None

    def run(self, batch: np.ndarray) -> np.ndarray:
        return in_fixed_groups(self._run, np.ascontiguousarray(batch, np.float32), self.static_batch)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        try:
            self.request.infer({0: batch})
            return self.request.get_output_tensor(0).data.copy()
        except MemoryError:
            raise out_of_memory(f"running {self.path.name} on {len(batch):,} inputs") from None

    def specs(self) -> tuple[list[TensorSpec], list[TensorSpec]]:
        """The model's inputs and outputs as OpenVINO reads them (None for the dynamic batch)."""

        def spec(port):
            shape = [d.get_length() if d.is_static else None for d in port.get_partial_shape()]
            return TensorSpec(port.get_any_name(), shape, np.dtype(port.get_element_type().to_dtype()).name)

        return [spec(p) for p in self.compiled.inputs], [spec(p) for p in self.compiled.outputs]


def openvino_version() -> str | None:
    """The installed OpenVINO's version (None when it is not installed), without importing it."""
    from importlib import metadata

    try:
        return metadata.version("openvino")
    except metadata.PackageNotFoundError:
        return None


def read_file_bytes(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise AekitError(f"Cannot read {path}: {exc.strerror}. Pass a readable file written by aekit export.") from None


def quantize(values: np.ndarray, detail: dict) -> np.ndarray:
    """Float values to the tensor's dtype using its (scale, zero_point); floats pass through."""
    dtype = np.dtype(detail["dtype"])
    if dtype == np.float32:
        return values
    scale, zero_point = detail["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(values / scale + zero_point), info.min, info.max).astype(dtype)


def dequantize(values: np.ndarray, detail: dict) -> np.ndarray:
    dtype = np.dtype(detail["dtype"])
    if dtype == np.float32:
        return values
    scale, zero_point = detail["quantization"]
    return ((values.astype(np.float32) - zero_point) * scale).astype(np.float32)


def open_runner(
    path: Path,
    device: str = "cpu",
    threads: int | None = None,
    allow_fallback: bool = False,
    content: bytes | None = None,
    kernels: str = "default",
    runtime: str | None = None,
    precision: str = "f32",
):
    """The runner for a file, by its suffix (or the runtime named), held to the device asked for.

    Args:
        path: an exported .onnx or .tflite file.
        content: the file's bytes when the caller has read and verified them: the runtime runs these, not
            whatever the path holds by the time it opens it (None: the runtime reads `path`).
        device: "cpu"; "cuda" (CUDA or an error); "auto" (CUDA when it really runs, else the CPU).
        threads: CPU threads (None: the physical cores).
        allow_fallback: with device "cuda", accept the CPU instead of raising NoCudaError.
        kernels: "default", or "builtin"/"reference" for the kernels a device without the runtime's fastest ones
            runs (KERNELS; CPU only).
        runtime: None (the format's own runtime), or "openvino" for an .onnx file (aekit[openvino]; CPU only).
        precision: OpenVINO's inference precision, "f32" or "default" (OPENVINO_PRECISIONS); other runtimes ignore it.

    Returns:
        An OnnxRunner, TFLiteRunner or OpenVinoRunner; its `providers[0]` and `device` say what really runs.
    """
    path = Path(path)
    device = check_device(device)
    threads = check_threads(threads)
    if content is None and not path.exists():
        raise AekitError(f"{path} does not exist. Export it first: aekit export.")
    fmt = format_of_file(path)
    if fmt is None or fmt.runtime not in RUNNERS:
        suffixes = " or ".join(f.suffix for f in EDGE_FORMATS)
        raise AekitError(f"{path}: expected a {suffixes} file written by aekit export.")
    if runtime == OPENVINO:
        if fmt.runtime != "onnxruntime":
            raise AekitError(f"{path}: OpenVINO runs the .onnx exports; run .tflite files with LiteRT.")
        if kernels != "default":
            raise AekitError(f"kernels {kernels!r}: OpenVINO runs its own kernels only (kernels='default').")
        runner = OpenVinoRunner(path, threads, content=content, precision=precision)
    elif runtime not in (None, fmt.runtime):
        raise AekitError(f"{path}: runtime {runtime!r} does not run {fmt.suffix} files; pass runtime=None or {OPENVINO!r}.")
    elif fmt.runtime == "onnxruntime":
        runner = RUNNERS[fmt.runtime](path, device, threads, content=content, kernels=kernels)
    else:
        runner = RUNNERS[fmt.runtime](path, threads, content=content, kernels=kernels)
    require_device(runner, device, allow_fallback)
    return runner


# What runs each runtime of the format table (aekit.core.manifest.EXPORT_FORMATS) on the edge side.
RUNNERS = {"onnxruntime": OnnxRunner, "litert": TFLiteRunner}
EDGE_FORMATS = tuple(f for f in EXPORT_FORMATS if f.runtime in RUNNERS)


def require_device(runner, device: str, allow_fallback: bool = False) -> None:
    """Raises NoCudaError when "cuda" was asked for and the runner does not run on CUDA (unless allowed)."""
    if check_device(device) != "cuda" or runner.device == "cuda" or allow_fallback:
        return
    if runner.runtime == OPENVINO:
        raise NoCudaError(no_cuda_message(f"aekit runs OpenVINO on its CPU plugin ({runner.path.name})", "Use onnxruntime-gpu"))
    if runner.runtime == "litert":
        raise NoCudaError(
            no_cuda_message(
                f"LiteRT runs {runner.path.name} on {', '.join(runner.providers)}; it has no CUDA path",
                "Use the .onnx export on the GPU",
            )
        )
    what = f"{runner.runtime} would run {runner.path.name} on {', '.join(runner.providers)}"
    if CUDA_PROVIDER not in runner.available:
        raise NoCudaError(
            no_cuda_message(f"{what}; this onnxruntime is the CPU build", "Install onnxruntime-gpu in place of onnxruntime")
        )
    raise NoCudaError(no_cuda_message(what))


def in_fixed_groups(run, inputs: np.ndarray, static_batch: int | None) -> np.ndarray:
    """`run` over any number of inputs for a file of a fixed batch (None: any batch, one call).

    The inputs go in groups of exactly `static_batch`; the last group is padded by repeating its last
    input, and the outputs of the padding are dropped.
    """
    if static_batch is None or len(inputs) == static_batch:
        return run(inputs)
    outputs = []
    for start in range(0, len(inputs), static_batch):
        group = inputs[start : start + static_batch]
        short = static_batch - len(group)
        padded = np.concatenate([group, np.repeat(group[-1:], short, axis=0)]) if short else group
        outputs.append(run(padded)[: len(group)])
    return np.concatenate(outputs) if outputs else run(inputs)


def _onnx_run(session, output_name: str, input_name: str, file_name: str, batch: np.ndarray) -> np.ndarray:
    """One onnxruntime call; out of memory as the one AekitError."""
    try:
        return session.run([output_name], {input_name: batch})[0]
    except MemoryError:
        raise out_of_memory(f"running {file_name} on {len(batch):,} inputs") from None
    except Exception as exc:  # onnxruntime reports a failed allocation as its own RuntimeException
        if "alloc" not in str(exc).lower():
            raise
        raise out_of_memory(f"running {file_name} on {len(batch):,} inputs") from None


def in_streams(runs, pool, batch: np.ndarray) -> np.ndarray:
    """`batch` through the run functions `runs` at once on `pool`, each over its contiguous share in calls of
    STREAM_CHUNK inputs, the outputs in the inputs' order."""

    def share(run, inputs):
        return [run(inputs[i : i + STREAM_CHUNK]) for i in range(0, len(inputs), STREAM_CHUNK)]

    shares = pool.map(share, runs, np.array_split(batch, len(runs)))
    return np.concatenate([out for outs in shares for out in outs])


def run_batched(runner, inputs: np.ndarray, batch_size: int = 256) -> np.ndarray:
    try:
        return np.concatenate([runner.run(inputs[i : i + batch_size]) for i in range(0, len(inputs), batch_size)])
    except MemoryError:
        raise out_of_memory(f"running {runner.path.name} on {len(inputs):,} inputs") from None
