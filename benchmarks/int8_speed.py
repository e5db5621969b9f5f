"""Why onnxruntime's int8 encoder is not faster than float32 on this CPU: quantizer settings side by side, per op.

The run's encoder is written to float32 ONNX (aekit's writer) and quantized by onnxruntime's
quantize_static in several ways (calibrated once on 256 training images, MinMax): aekit's current
scheme (QDQ, u8 activations, s8 per-channel weights, reduce_range), and one change at a time from it
(no reduce_range; per-tensor weights; QOperator format; s8 activations; u8 weights), and the encoder with its
BatchNorms folded into the layers before them (aekit.exporting.forms.fold_batchnorm, the same function:
BatchNorm's scale into the convolution before LeakyReLU, the last shift into the Dense bias). Each file is timed
with 2 threads at batch 64 and 1 (rounds repeated, every file once per round: median and min-max),
its agreement measured as aekit's parity does (the Keras decoder's reconstructions from its latents
against those from Keras' latents, PSNR in dB), and profiled with onnxruntime's own profiler
(SessionOptions.enable_profiling) at batch 64: kernel time per op type after graph optimization, and
what the optimized graph still holds (DequantizeLinear/QuantizeLinear left unfused, float ops).

    .venv/bin/python benchmarks/int8_speed.py --run runs/<name> --rounds 7
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

THREADS = 2
BATCHES = (64, 1)
# name -> quantize_static keyword changes from aekit's scheme (aekit.exporting.int8.OnnxQuantizer.write)
SCHEMES = {
    "aekit (QDQ u8/s8 per-channel reduce_range)": {},
    "QDQ, no reduce_range": {"reduce_range": False},
    "QDQ, per-tensor weights": {"per_channel": False},
    "QDQ, per-tensor, no reduce_range": {"per_channel": False, "reduce_range": False},
    "QOperator": {"quant_format": "QOperator"},
    "QDQ, s8 activations": {"activation_type": "QInt8"},
    "QDQ, u8 weights": {"weight_type": "QUInt8"},
}
# The same schemes on the encoder with its BatchNorms folded (aekit.exporting.forms.fold_batchnorm: the same function)
FOLDED = ("aekit (QDQ u8/s8 per-channel reduce_range)", "QDQ, no reduce_range")


def quantize(prepared: Path, out: Path, calib: np.ndarray, input_name: str, cache: Path, changes: dict) -> None:
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{input_name: calib[i : i + 32]} for i in range(0, len(calib), 32)])

        def get_next(self):
            return next(self.batches, None)

    options = dict(
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        reduce_range=True,
        calibrate_method=CalibrationMethod.MinMax,
        calibration_cache_path=str(cache),
    )
    for key, value in changes.items():
        options[key] = getattr(QuantFormat if key == "quant_format" else QuantType, value) if isinstance(value, str) else value
    quantize_static(str(prepared), str(out), Reader(), **options)


def session(path: Path, profile_prefix: str | None = None, optimized: Path | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.log_severity_level = 3
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    if optimized:
        options.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def profile(path: Path, batch: np.ndarray, scratch: Path, runs: int = 30) -> tuple[dict, collections.Counter, float]:
    """(kernel µs per run by op type, op types in the optimized graph, total kernel µs per run)."""
    import onnx

    optimized = scratch / f"{path.stem}.optimized.onnx"
    s = session(path, str(scratch / f"profile-{path.stem}"), optimized)
    name = s.get_inputs()[0].name
    for _ in range(5):
        s.run(None, {name: batch})
    s.end_profiling()  # drops the warm-up runs' events
    s = session(path, str(scratch / f"profile-{path.stem}"))
    for _ in range(runs):
        s.run(None, {name: batch})
    events = json.loads(Path(s.end_profiling()).read_text())
    by_op = collections.defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            by_op[e["args"].get("op_name", "?")] += e["dur"] / runs
    ops = collections.Counter(n.op_type for n in onnx.load(str(optimized)).graph.node)
    return dict(by_op), ops, sum(by_op.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=0.3, help="per file, batch and round")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/int8_speed.json"))
    args = parser.parse_args()

    from onnxruntime.quantization.shape_inference import quant_pre_process

    from aekit.core.system import system_info
    from aekit.exporting.export import load_run
    from aekit.exporting.forms import fold_batchnorm
    from aekit.exporting.writers import INPUT_NAMES, _write_onnx
    from aekit.quiet import quiet_native_output

    loaded = load_run(args.run)
    encoder, decoder = loaded.models["encoder"], loaded.models["decoder"]
    images = loaded.scaling.to_model_numpy(loaded.splits.sample("val", 512))
    calib = loaded.scaling.to_model_numpy(loaded.splits.sample("train", 256))
    keras_recon = np.asarray(decoder(np.asarray(encoder(images, training=False)), training=False))
    rows = []
    with tempfile.TemporaryDirectory(prefix="aekit-int8-speed-") as scratch:
        scratch = Path(scratch)
        files = {"float32": scratch / "float32.onnx", "float32, BN folded": scratch / "float32_folded.onnx"}
        _write_onnx(encoder, "encoder", files["float32"], 17, "float32")
        _write_onnx(fold_batchnorm(encoder), "encoder", files["float32, BN folded"], 17, "float32")
        with quiet_native_output():
            for source, suffix, names in (("float32", "", SCHEMES), ("float32, BN folded", ", BN folded", FOLDED)):
                prepared = scratch / f"prepared{len(suffix)}.onnx"
                quant_pre_process(str(files[source]), str(prepared), skip_symbolic_shape=True)
                cache = scratch / f"calibration{len(suffix)}.json"
                for name in names:
                    files[name + suffix] = scratch / f"int8_{len(files)}.onnx"
                    quantize(prepared, files[name + suffix], calib, INPUT_NAMES["encoder"], cache, SCHEMES[name])
        sessions = {name: session(path) for name, path in files.items()}
        rates = {(name, b): [] for name in files for b in BATCHES}
        for _ in range(args.rounds):
            for name, s in sessions.items():
                input_name = s.get_inputs()[0].name
                for b in BATCHES:
                    feed = {input_name: images[:b]}
                    s.run(None, feed)
                    calls, start = 0, time.perf_counter()
                    while calls < 5 or time.perf_counter() - start < args.seconds:
                        s.run(None, feed)
                        calls += 1
                    rates[(name, b)].append(b * calls / (time.perf_counter() - start))
        for name, path in files.items():
            s = sessions[name]
            latents = s.run(None, {s.get_inputs()[0].name: images})[0]
            mse = float(np.mean((np.asarray(decoder(latents, training=False)) - keras_recon) ** 2))
            by_op, ops, total = profile(path, images[:64], scratch)
            row = {"file": name, "agreement_db": 10 * np.log10(1 / mse) if mse else float("inf"),
                   "profile_us_by_op": by_op, "profile_total_us": total, "optimized_ops": dict(ops)}  # fmt: skip
            for b in BATCHES:
                r = rates[(name, b)]
                row[f"batch{b}"] = {"median": float(np.median(r)), "min": float(min(r)), "max": float(max(r))}
            rows.append(row)

    print(f"\nCPU: {system_info()['cpu']}; onnxruntime CPU, {THREADS} threads; {args.rounds} rounds; run {args.run}")
    print(
        f"{'file':<56} {'batch 64 img/s (min-max)':>26} {'batch 1 img/s (min-max)':>26} {'agree dB':>9}  top kernels at batch 64"
    )
    base = rows[0]["batch64"]["median"]
    for row in rows:
        cells = [
            f"{row[f'batch{b}']['median']:,.0f} ({row[f'batch{b}']['min']:,.0f}-{row[f'batch{b}']['max']:,.0f})" for b in BATCHES
        ]
        top = sorted(row["profile_us_by_op"].items(), key=lambda kv: -kv[1])[:4]
        shares = ", ".join(f"{op} {100 * us / row['profile_total_us']:.0f}%" for op, us in top)
        print(
            f"{row['file']:<56} {cells[0]:>26} {cells[1]:>26} {row['agreement_db']:>9.1f}  "
            f"{row['batch64']['median'] / base:.2f}x fp32; {shares}"
        )
    print("\nops left after onnxruntime's graph optimization (each file):")
    for row in rows:
        print(f"  {row['file']}: " + ", ".join(f"{op} {n}" for op, n in sorted(row["optimized_ops"].items())))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"cpu": system_info()["cpu"], "run": str(args.run), "rows": rows}, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
