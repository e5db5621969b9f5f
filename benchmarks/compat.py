"""Which runtimes run which exported files: loads, agreement with Keras (dB, max abs diff) and speed, one table.

Trains a tiny digit run (or takes --run), exports every file the installed aekit makes (float32, fp16 and int8, ONNX
and TFLite, and the fixed-batch and tflite-micro files when `aekit export --help` offers them), installs each client
in its own environment under the cache folder (venvs from PyPI, npm packages for node), runs every file in every
client that reads its format, in a subprocess (benchmarks/compat_runner.py, compat_runner.js) on the same real MNIST
images, and compares the outputs with the Keras model's. Prints the table and writes docs/compat.md.

    .venv/bin/python benchmarks/compat.py                        # everything: a few minutes once installed
    .venv/bin/python benchmarks/compat.py --run runs/<name>      # your run's files
    .venv/bin/python benchmarks/compat.py --clients opencv-4.10,openvino --doc ''    # some clients, no doc written
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import compat_doc  # benchmarks/compat_doc.py, beside this script
import numpy as np

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
MNIST = REPO.parent / "shared" / "data" / "mnist" / "t10k-images-idx3-ubyte.gz"
CACHE = Path(os.environ.get("AEKIT_COMPAT_CACHE", Path.home() / ".cache" / "aekit-compat"))
AEKIT = Path(sys.executable).parent / "aekit"
# The parity rule of aekit export: a file agrees when its reconstructions are within this PSNR of Keras' (dB).
BOUND_DB = {"float32": 60.0, "fp16": 40.0, "int8": 30.0}
TINY_RUN = ["--epochs", "3", "--filters", "8,16", "--latent-dim", "8"]

# Environments: name -> pip requirements (a venv each), or npm packages ("npm:" prefix) for the node clients.
ENVS = {
    "onnxruntime": ["onnxruntime", "numpy"],
    "litert": ["ai-edge-litert", "numpy"],
    "onnx": ["onnx", "numpy"],
    "tflite-micro": ["tflite-micro", "numpy"],
    "opencv-5.0": ["opencv-python-headless==5.0.*", "numpy"],
    "opencv-4.10": ["opencv-python-headless==4.10.*", "numpy"],
    "opencv-4.6": ["opencv-python-headless==4.6.*", "numpy<2"],  # built against numpy 1
    "openvino": ["openvino", "numpy"],
    "node": ["npm:onnxruntime-node", "npm:onnxruntime-web"],
}


@dataclass(frozen=True)
class Client:
    runtime: str  # as the table names it
    env: str  # key of ENVS
    client: str  # the runner's client name
    mode: str  # the runner's mode
    how: str  # the mode in words
    formats: tuple[str, ...]


CLIENTS = [
    Client("onnxruntime", "onnxruntime", "onnxruntime", "default", "default graph optimizations", ("onnx",)),
    Client("onnxruntime", "onnxruntime", "onnxruntime", "ORT_DISABLE_ALL", "ORT_DISABLE_ALL", ("onnx",)),
    Client("onnxruntime-node", "node", "node", "cpu", "CPU, default optimizations", ("onnx",)),
    Client("onnxruntime-web", "node", "web", "wasm", "wasm in node", ("onnx",)),
    Client("onnx ReferenceEvaluator", "onnx", "onnx-reference", "-", "-", ("onnx",)),
    Client("LiteRT", "litert", "litert", "AUTO", "XNNPACK (default)", ("tflite", "tflm")),
    Client(
        "LiteRT", "litert", "litert", "BUILTIN_WITHOUT_DEFAULT_DELEGATES", "BUILTIN_WITHOUT_DEFAULT_DELEGATES", ("tflite", "tflm")
    ),
    Client("LiteRT", "litert", "litert", "BUILTIN_REF", "BUILTIN_REF", ("tflite", "tflm")),
    Client("tflite-micro", "tflite-micro", "tflite-micro", "-", "-", ("tflite", "tflm")),
    Client("OpenCV DNN", "opencv-5.0", "opencv", "default", "default engine", ("onnx", "tflite")),
    Client("OpenCV DNN", "opencv-5.0", "opencv", "classic", "ENGINE_CLASSIC", ("onnx", "tflite")),
    Client("OpenCV DNN", "opencv-4.10", "opencv", "default", "-", ("onnx", "tflite")),
    Client("OpenCV DNN", "opencv-4.6", "opencv", "default", "-", ("onnx", "tflite")),
    Client("OpenVINO", "openvino", "openvino", "f32", "read directly, f32 hint", ("onnx", "tflite")),
    Client("OpenVINO", "openvino", "openvino", "default", "read directly, default precision", ("onnx", "tflite")),
    Client("OpenVINO", "openvino", "openvino", "ir-f32-weights", "convert_model to IR, f32 hint", ("onnx", "tflite")),
    Client(
        "OpenVINO", "openvino", "openvino", "ir-fp16-weights", "IR with save_model's fp16 weights, f32 hint", ("onnx", "tflite")
    ),
]

# What a failure means, for the lines under the table: (text in the error, what it means).
KNOWN = [
    ("Unsupported operator type SHAPE", "OpenCV's TFLite importer has no SHAPE, which dynamic-batch files compute shapes with"),
    ("Unsupported operator type LEAKY_RELU", "this OpenCV's TFLite importer has no LEAKY_RELU"),
    ("Unsupported operator type TRANSPOSE_CONV", "OpenCV's TFLite importer has no TRANSPOSE_CONV, the decoder's upsampling"),
    ("layer of type GemmInt8", "this engine has no GemmInt8 layer: the int8 FULLY_CONNECTED (Dense)"),
    ("bufidx >= 0", "the new engine cannot run the QDQ int8 graph; ENGINE_CLASSIC runs it"),
    ("asymmetric padding in deconvolution", "its deconvolution takes symmetric padding only; the fixed-batch decoders avoid it"),
    ("indexMat.total() == 1", "its ONNX importer cannot take the Gather of a dynamic-batch shape computation"),
    ("No implementation for operator 'DequantizeLinear'", "it has DequantizeLinear from opset 19 on: --opset 19+"),
    ("kTfLiteInt8 || input->type == kTfLiteInt16", "tflite-micro's DEQUANTIZE takes integers, not fp16 files' float16 weights"),
    ("has no TFLite importer", "this OpenCV reads no .tflite"),
    ("runs this file at input shape", "tflite-micro cannot resize inputs: it runs the shape stored in the file"),
    (
        "input channels should be multiple of",
        "OpenCV's TFLite importer lays out every tensor after a 2-D input wrongly (NHWC read as NCHW); the fixed-batch "
        "float decoder (phases4d form, a 4-D latent input) runs",
    ),
]


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:12]


# ---------------------------------------------------------------- environments


def ensure_env(name: str) -> tuple[Path | None, str | None]:
    """The env's folder (created and installed once, re-made when its requirements change), or (None, why not)."""
    requirements = ENVS[name]
    folder = CACHE / "envs" / name
    stamp = folder / ".compat-installed"
    if stamp.exists() and stamp.read_text() == json.dumps(requirements):
        return folder, None
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    log(f"installing {name}: {' '.join(requirements)}")
    if requirements[0].startswith("npm:"):
        env = dict(os.environ, ONNXRUNTIME_NODE_INSTALL="skip")  # its CUDA download; the CPU binaries ship in the package
        (folder / "package.json").write_text('{"name": "aekit-compat", "private": true}\n')
        command = ["npm", "install", "--no-audit", "--no-fund", *(r.removeprefix("npm:") for r in requirements)]
    else:
        subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True, capture_output=True)
        env, command = os.environ, [str(folder / "bin" / "python"), "-m", "pip", "install", "-q", *requirements]
    try:
        done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"install failed: {exc}"
    if done.returncode != 0:
        lines = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
        return None, "install failed: " + (lines[-1] if lines else f"exit {done.returncode}")[:300]
    stamp.write_text(json.dumps(requirements))
    return folder, None


# ---------------------------------------------------------------- the run and its exports


def ensure_run(run: Path | None) -> Path:
    if run is not None:
        return run.resolve()
    target = CACHE / "digit-run"
    if not (target / "metrics.json").exists():
        log(f"training a tiny digit run into {target}")
        shutil.rmtree(target, ignore_errors=True)
        command = [str(AEKIT), "train", "--dataset", str(MNIST), *TINY_RUN, "--output", str(target), "-q"]
        subprocess.run(command, check=True, env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
    return target


def export_plan(help_text: str, static_batches: tuple[int, ...]) -> list[tuple[str, list[list[list[str]]]]]:
    """(folder, the aekit export commands that fill it) for every kind of file this aekit makes; each command as its
    alternatives, tried in turn until one succeeds (a newer flag's combinations are not known in advance)."""
    every = [
        [["--format", "onnx,tflite"]],
        [["--format", "tflite", "--quantize", "fp16"]],
        [["--format", "onnx,tflite", "--quantize", "int8"]],
    ]
    plan = [("dynamic", every), ("opset21", [[["--format", "onnx", "--quantize", "int8", "--opset", "21"]]])]
    if "--static-batch" in help_text:
        plan += [
            (f"static-b{n}", [[[*args, "--static-batch", str(n)] for args in command] for command in every])
            for n in static_batches
        ]
    if "tflm" in help_text:
        plan.append(("tflm", [[["--format", "tflm"], ["--format", "tflm", "--quantize", "int8"]]]))
    return plan


def export_all(run: Path, work: Path, plan) -> tuple[list[dict], list[str]]:
    """Every passed file of the plan's folders, as manifest entries with `path` and `variant`; and notes on failures."""
    notes = []
    weights = json.loads((run / "metrics.json").read_text())["weights_sha256"]
    code = digest(*(f.read_bytes().hex() for f in sorted((REPO / "aekit").rglob("*.py"))))  # another aekit exports again
    for variant, commands in plan:
        folder = work / "export" / variant
        for alternatives in commands:
            stamp = work / "stamps" / digest(weights, code, variant, alternatives)
            if stamp.exists():
                continue
            failures = []
            for args in alternatives:
                command = [str(AEKIT), "export", "--run", str(run), "--parts", "all", "--output", str(folder), *args]
                log("$ aekit " + " ".join(command[1:]))
                done = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
                if done.returncode == 0:
                    stamp.parent.mkdir(parents=True, exist_ok=True)
                    stamp.write_text(" ".join(command))
                    break
                lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
                failures.append(f"`aekit export {' '.join(args)}` failed: {lines[-1] if lines else done.returncode}")
            else:
                notes += failures
    files = []
    for variant, _ in plan:
        manifest = work / "export" / variant / "manifest.json"
        if not manifest.exists():
            continue
        for entry in json.loads(manifest.read_text())["files"]:
            if entry.get("status") != "passed":
                notes.append(f"{variant}/{entry['file']} failed its export check: {entry.get('reason')}")
            elif entry["format"] != "savedmodel":
                files.append(dict(entry, path=str(manifest.parent / entry["file"]), variant=variant))
    return files, notes


def c_array_bytes(source: Path) -> bytes:
    """The bytes of the first `const unsigned char NAME[] = {0x.., ...};` array in a C/C++ source file."""
    found = re.search(r"\[\]\s*=\s*\{(.*?)\}", source.read_text(), re.S)
    if not found:
        raise ValueError(f"{source.name} holds no `unsigned char name[] = {{...}}` array")
    return bytes(int(v, 16) for v in re.findall(r"0x([0-9a-fA-F]{1,2})\b", found.group(1)))


def model_of(entry: dict, scratch: Path, notes: list[str]) -> Path:
    """What a client runs: the file itself, or for a tflite-micro export the flatbuffer its C array (.cc) holds."""
    path = Path(entry["path"])
    source = path.with_suffix(".cc")
    if entry["variant"] != "tflm" or not source.exists():
        return path
    content = c_array_bytes(source)
    if path.exists() and content != path.read_bytes():
        sizes = f"{len(content):,} bytes against {path.stat().st_size:,}"
        notes.append(f"tflm/{source.name}: its array is not the bytes of {path.name} ({sizes})")
    target = scratch / f"{entry['variant']}-{path.stem}-from-its-cc.tflite"
    target.write_bytes(content)
    return target


def file_format(entry: dict) -> str:
    return "tflm" if entry["variant"] == "tflm" or entry["format"] == "tflm" else entry["format"]


# ---------------------------------------------------------------- reference and comparison


class Reference:
    """The Keras models' outputs on the images, and what a file's outputs add to the reconstructions."""

    def __init__(self, run: Path, images: np.ndarray):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
        import keras

        self.models = {role: keras.models.load_model(run / f"{role}.keras", compile=False) for role in ("encoder", "decoder")}
        self.images = images
        self.latents = self.predict("encoder", images)
        self.reconstructions = self.predict("decoder", self.latents)

    def predict(self, role: str, inputs: np.ndarray) -> np.ndarray:
        return np.asarray(self.models[role](inputs, training=False), np.float64)

    def inputs_for(self, entry: dict) -> np.ndarray:
        values = self.latents if entry["role"] == "decoder" else self.images
        spec = entry["inputs"][0]
        if spec["dtype"] in ("uint8", "int8"):
            info = np.iinfo(spec["dtype"])
            values = np.clip(np.round(values / spec["scale"] + spec["zero_point"]), info.min, info.max)
        values = values.reshape(len(values), *spec["shape"][1:])  # a "phases4d" decoder's (N, 1, 1, L) latent images
        return np.ascontiguousarray(values.astype(spec["dtype"]))

    def compare(self, entry: dict, outputs: np.ndarray) -> tuple[float, float]:
        """(agreement dB: PSNR of the file's reconstructions against Keras', max abs diff of the raw outputs)."""
        expected = self.latents if entry["role"] == "encoder" else self.reconstructions
        if outputs.size != expected.size:
            raise ValueError(f"output shape {list(outputs.shape)}, expected {list(expected.shape)}")
        outputs = outputs.astype(np.float64).reshape(expected.shape)
        spec = entry["outputs"][0]
        if spec["dtype"] in ("uint8", "int8"):
            outputs = (outputs - spec["zero_point"]) * spec["scale"]
        if not np.all(np.isfinite(outputs)):
            return float("nan"), float("nan")
        reconstructions = self.predict("decoder", outputs.astype(np.float32)) if entry["role"] == "encoder" else outputs
        mse = float(np.mean((reconstructions - self.reconstructions) ** 2))
        return 10 * np.log10(1.0 / max(mse, 1e-30)), float(np.max(np.abs(outputs - expected)))


# ---------------------------------------------------------------- running


@dataclass
class Row:
    client: Client
    entry: dict
    version: str = ""
    status: str = ""  # runs | wrong | load | run | crash | install
    error: str = ""
    db: float | None = None
    max_abs: float | None = None
    ips: float | None = None
    batch: int | None = None
    extra: dict = field(default_factory=dict)


def batch_for(client: Client, entry: dict) -> int | None:
    fixed = entry["inputs"][0]["shape"][0]
    if fixed:
        return int(fixed)
    return 1 if client.client == "tflite-micro" else None  # tflite-micro runs the stored shape (batch 1)


def make_job(client: Client, env: Path, entry: dict, model: Path, inputs: Path, scratch: Path, args) -> dict:
    key = f"{client.client}-{client.mode}-{client.env}-{entry['variant']}-{entry['file']}"
    job = {
        "client": client.client,
        "mode": client.mode,
        "model": str(model),
        "batch": batch_for(client, entry),
        "seconds": args.seconds,
        "threads": args.threads,
        "result": str(scratch / f"{key}.json"),
    }
    if client.env == "node":
        array = np.load(inputs)
        job.update(input_bin=str(inputs.with_suffix(".bin")), input_shape=list(array.shape), input_dtype=str(array.dtype))
        job.update(output_bin=str(scratch / f"{key}.bin"), node_modules=str(env / "node_modules"))
    else:
        job.update(input=str(inputs), output=str(scratch / f"{key}.npy"))
    Path(job["result"]).unlink(missing_ok=True)
    return job


def run_jobs(client: Client, env: Path, jobs: list[dict], scratch: Path, args) -> list[dict]:
    """Every job's result, run in as few processes as it takes: one, plus one more after each job that kills its process
    (a crash or no answer in --timeout seconds is that job's result, and the rest go on in a new process)."""
    if client.env == "node":
        command = ["node", str(HERE / "compat_runner.js")]
    else:
        command = [str(env / "bin" / "python"), str(HERE / "compat_runner.py")]
    results: dict[int, dict] = {}
    pending = list(range(len(jobs)))
    while pending:
        job_file = scratch / f"jobs-{client.client}-{client.mode}-{client.env}.json"
        job_file.write_text(json.dumps([jobs[i] for i in pending]))
        with open(scratch / "clients.log", "a") as out:
            process = subprocess.Popen([*command, str(job_file)], stdout=out, stderr=subprocess.STDOUT)
            done, last = 0, time.monotonic()
            while process.poll() is None:
                time.sleep(0.05)
                now_done = sum(Path(jobs[i]["result"]).exists() for i in pending)
                if now_done != done:
                    done, last = now_done, time.monotonic()
                elif time.monotonic() - last > args.timeout:
                    process.kill()
                    process.wait()
        for i in pending:
            if Path(jobs[i]["result"]).exists():
                results[i] = json.loads(Path(jobs[i]["result"]).read_text())
        left = [i for i in pending if i not in results]
        if left:  # the first job without a result is the one that was running
            code = process.returncode
            how = f"no answer in {args.timeout:g} s" if code == -9 else f"signal {-code}" if code < 0 else f"exit {code}"
            results[left[0]] = {"loaded": False, "ran": False, "error": f"the process died ({how})", "stage": "crash"}
        pending = left[1:]
    for i, result in results.items():
        if result.get("ran"):
            job = jobs[i]
            result["outputs"] = np.fromfile(job["output_bin"], np.float32) if "output_bin" in job else np.load(job["output"])
    return [results[i] for i in range(len(jobs))]


def run_all(clients, files, reference: Reference, scratch: Path, notes: list[str], args) -> list[Row]:
    rows, envs = [], {}
    inputs = {}
    for entry in files:
        path = scratch / f"input-{entry['variant']}-{entry['file']}.npy"
        array = reference.inputs_for(entry)
        np.save(path, array)
        array.tofile(path.with_suffix(".bin"))
        inputs[entry["path"]] = path
    for client in clients:
        if client.env not in envs:
            envs[client.env] = ensure_env(client.env)
        env, why = envs[client.env]
        mine = [e for e in files if file_format(e) in client.formats]
        if env is None:
            rows.append(Row(client, {"variant": "-", "file": "(every file)", "precision": "-"}, status="install", error=why))
            continue
        log(f"{client.runtime} ({client.env}, {client.how}): {len(mine)} files")
        models = [model_of(e, scratch, notes) for e in mine]
        jobs = [make_job(client, env, e, m, inputs[e["path"]], scratch, args) for e, m in zip(mine, models)]
        for entry, result in zip(mine, run_jobs(client, env, jobs, scratch, args)):
            row = Row(client, entry, version=result.get("version") or "", extra=result.get("extra") or {})
            if not result.get("ran"):
                row.status = "crash" if result.get("stage") == "crash" else "run" if result.get("loaded") else "load"
                row.error = result["error"]
            else:
                try:
                    row.db, row.max_abs = reference.compare(entry, result["outputs"])
                except ValueError as exc:
                    row.status, row.error = "run", str(exc)
                else:
                    row.status = "runs" if row.db >= BOUND_DB[entry["precision"]] else "wrong"
                    row.ips, row.batch = result.get("images_per_sec"), result.get("batch")
            rows.append(row)
    versions = {(r.client.env, r.client.client): r.version for r in rows if r.version}
    for row in rows:  # a process that died before it could say its version: the version its siblings reported
        row.version = row.version or versions.get((row.client.env, row.client.client), "")
    return rows


# ---------------------------------------------------------------- the table


def short(text: str, width: int = 70) -> str:
    text = text.replace("|", "/").replace("`", "'")
    return text if len(text) <= width else text[: width - 1] + "…"


def normalized(error: str) -> str:
    """An error without the names of the file's nodes, so that one cause reads the same for every file."""
    error = re.sub(r" node \S+:", ":", error)
    return re.sub(r"Can't create layer \S+ (?:with|of) type \"?(\w+)\"?", r"Can't create a layer of type \1", error)


def why(text: str) -> str:
    for needle, meaning in KNOWN:
        if needle in text:
            return meaning
    return ""


def client_labels(rows: list[Row]) -> dict[Client, str]:
    """Each client as the table names it: runtime | version | mode (with the precision OpenVINO chose by default)."""
    labels = {}
    for row in rows:
        precision = row.extra.get("inference_precision")
        how = row.client.how + (f" (ran {precision})" if precision and row.client.mode == "default" else "")
        if row.client not in labels or precision:
            labels[row.client] = f"{row.client.runtime} | {row.version or row.client.env} | {how}"
    return labels


def one_line(label: str) -> str:
    """ "runtime | version | mode" as "runtime version, mode" (no mode when it is "-")."""
    return label.replace(" | ", " ", 1).replace(" | ", ", ").removesuffix(", -")


def result_cell(row: Row) -> str:
    if row.status == "runs":
        return "runs, agrees"
    if row.status == "wrong":
        return f"runs, **wrong output** (below {BOUND_DB[row.entry['precision']]:g} dB)"
    head = {"load": "does not load", "run": "loads, does not run", "crash": "crashes", "install": "not installed"}[row.status]
    return f"{head}: {short(normalized(row.error))}"


VARIANT_LABELS = {"dynamic": "", "opset21": "opset 21 ", "tflm": "tflm "}
PRECISION_LABELS = {"float32": "f32", "fp16": "fp16", "int8": "int8"}
ROLES = ("encoder", "decoder", "autoencoder")


def kind_of(entry: dict) -> str:
    variant = entry["variant"]
    prefix = VARIANT_LABELS.get(variant, variant.replace("static-b", "batch ") + " ")
    fmt = "" if variant == "tflm" else entry["format"] + " "
    return f"{prefix}{fmt}{PRECISION_LABELS.get(entry['precision'], entry['precision'])}"


def summary(rows: list[Row]) -> str:
    """Runtimes down, kinds of file across; each cell the encoder, decoder and autoencoder's agreement in dB."""
    kinds = list(dict.fromkeys(kind_of(r.entry) for r in rows if r.status != "install"))
    named = {c: one_line(label) for c, label in client_labels(rows).items()}
    labels = list(dict.fromkeys(named[r.client] for r in rows))
    cells: dict[tuple[str, str], dict[str, str]] = {}
    for row in rows:
        label = named[row.client]
        if row.status == "install":
            cells[(label, "install")] = {"": "not installed"}
            continue
        value = f"{row.db:.0f}" if row.status == "runs" else f"**{row.db:.0f}**" if row.status == "wrong" else "✗"
        cells.setdefault((label, kind_of(row.entry)), {})[row.entry["role"]] = value
    lines = ["| runtime | " + " | ".join(kinds) + " |", "| --- |" + " --- |" * len(kinds)]
    for label in labels:
        if (label, "install") in cells:
            lines.append(f"| {label} | not installed |" + " |" * (len(kinds) - 1))
            continue
        row_cells = []
        for kind in kinds:
            roles = cells.get((label, kind))
            row_cells.append(" · ".join(roles.get(role, "–") for role in ROLES) if roles else "")
        lines.append(f"| {label} | " + " | ".join(row_cells) + " |")
    return "\n".join(lines)


def render(rows: list[Row]) -> tuple[str, str, list[str]]:
    """(the summary, the table of every file, the lines on what does not run)."""
    lines = ["| runtime | version | mode | file | result | agreement dB | max abs diff | img/s (batch) |", "|" + " --- |" * 8]
    labels = client_labels(rows)
    for row in rows:
        file = f"{row.entry['variant']}/{row.entry['file']}"
        db = "" if row.db is None else ("NaN" if row.db != row.db else f"{row.db:.1f}")
        diff = "" if row.max_abs is None else f"{row.max_abs:.2g}"
        speed = "" if row.ips is None else f"{row.ips:,.0f} ({row.batch})"
        lines.append(f"| {labels[row.client]} | {file} | {result_cell(row)} | {db} | {diff} | {speed} |")
    failures: dict[tuple[str, str], list[str]] = {}
    for row in rows:
        if row.status != "runs":
            text = normalized(row.error) if row.status != "wrong" else "wrong output against Keras"
            label = one_line(labels[row.client])
            dbs = f" ({row.db:.1f} dB)" if row.status == "wrong" else ""
            failures.setdefault((label, text), []).append(f"{row.entry['variant']}/{row.entry['file']}{dbs}")
    why_lines = []
    for (label, text), names in failures.items():
        meaning = why(text)
        why_lines.append(f"- {label}: {', '.join(names)}: {short(text, 300)}{f' ({meaning})' if meaning else ''}")
    return summary(rows), "\n".join(lines), why_lines


def mnist(count: int) -> np.ndarray:
    raw = gzip.decompress(MNIST.read_bytes())
    return (np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 28, 28, 1)[:count] / 255.0).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a finished run (default: a tiny digit run trained once into the cache)")
    parser.add_argument("--clients", default="", help=f"comma list of environments: {', '.join(ENVS)} (default: all)")
    parser.add_argument("--images", type=int, default=64, help="real MNIST digits fed to every file (a multiple of the batches)")
    parser.add_argument("--seconds", type=float, default=0.5, help="timed seconds per file and client")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds before a client's process is stopped")
    parser.add_argument("--static-batch", default="1", help="batches of the fixed-batch files, when aekit export makes them")
    parser.add_argument("--doc", default=str(REPO / "docs" / "compat.md"), help="the page to write ('' for none)")
    parser.add_argument("--again", action="store_true", help="print and write the page again from the last run's figures")
    args = parser.parse_args()
    started = time.perf_counter()
    chosen = [c.strip() for c in args.clients.split(",") if c.strip()]
    unknown = [c for c in chosen if c not in ENVS]
    if unknown:
        parser.error(f"--clients {','.join(unknown)}: pick from {', '.join(ENVS)}")
    clients = [c for c in CLIENTS if not chosen or c.env in chosen]

    run = ensure_run(args.run) if not args.again or args.run else CACHE / "digit-run"
    work = CACHE / "work" / digest(str(run.resolve()))
    if args.again:
        if not (work / "compat.json").exists():
            parser.error(f"--again: no earlier run's figures in {work}; run without --again first")
        return publish(json.loads((work / "compat.json").read_text()), args.doc)
    scratch = work / "scratch"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    help_text = subprocess.run(
        [str(AEKIT), "export", "--help"], capture_output=True, text=True, env=dict(os.environ, COLUMNS="200")
    ).stdout
    plan = export_plan(help_text, tuple(int(n) for n in args.static_batch.split(",")))
    files, notes = export_all(run, work, plan)
    files.sort(key=lambda e: ([v for v, _ in plan].index(e["variant"]), e["format"], e["precision"], e["role"]))
    reference = Reference(run, mnist(args.images))
    rows = run_all(clients, files, reference, scratch, notes, args)
    record = {
        "machine": compat_doc.machine(),
        "images": args.images,
        "threads": args.threads,
        "seconds_taken": time.perf_counter() - started,
        "notes": notes,
        "files": [{k: e[k] for k in ENTRY_KEYS} for e in files],
        "rows": [dict(asdict(r), client=asdict(r.client), entry={k: r.entry.get(k) for k in ENTRY_KEYS}) for r in rows],
    }
    write_atomically(work / "compat.json", json.dumps(record, indent=1))
    log(f"wrote {work / 'compat.json'}")
    publish(record, args.doc)


ENTRY_KEYS = ("variant", "file", "role", "format", "precision")


def write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def publish(record: dict, doc: str) -> None:
    """Prints the tables, and writes the page unless `doc` is ''."""
    rows = [Row(**dict(r, client=Client(**dict(r["client"], formats=tuple(r["client"]["formats"]))))) for r in record["rows"]]
    overview, table, why_lines = render(rows)
    print(overview + "\n\n" + table + "\n\n" + "\n".join(why_lines))
    for note in record["notes"]:
        print(f"note: {note}")
    if doc:
        write_atomically(Path(doc), compat_doc.document(overview, table, why_lines, record))
        log(f"wrote {doc}")


if __name__ == "__main__":
    main()
