"""Encoder inference side by side: Keras, onnxruntime (CPU) and LiteRT, float32 and int8, batch 1 and 64.

Same machine, same run, same real validation images. Prints achieved images/s next
to the machine's limits (encoder FLOPs counted from the model): float32 from cores x clock x the
widest FMA the CPU's flags show (AVX-512: 16 float32 lanes, AVX2: 8), int8 from the widest VNNI dot
product (AVX512-VNNI: 64 u8 x s8 multiply-adds per instruction, AVX-VNNI: 32), both assuming 2 FMA
units per core (FMA_UNITS_PER_CORE: what Xeon server cores with AVX-512 have; some have 1, which halves
both). What AMX tiles would allow is printed too (onnxruntime's MLAS has an AMX u8 x s8 GEMM; see
benchmarks/int8_speed.py for which kernels an int8 file reaches). Then which runtime/threads setting to deploy.

    .venv/bin/python benchmarks/inference.py --run runs/<name>
    .venv/bin/python benchmarks/inference.py            # trains a short reference run first if none exists
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

FMA_UNITS_PER_CORE = 2  # an assumption: the flags do not say how many FMA ports a core has
# float32 lanes per FMA instruction, widest first: the first flag the CPU has sets the float32 limit
FMA_WIDTHS = (("avx512f", "AVX-512 FMA", 16), ("fma", "AVX2 FMA", 8))
# u8 x s8 multiply-adds per VNNI instruction (VPDPBUSD), widest first; none: no int8 limit is given
VNNI_WIDTHS = (("avx512_vnni", "AVX512-VNNI", 64), ("avx_vnni", "AVX-VNNI", 32))
# AMX tiles per core and cycle (Intel's figures: TDPBSSD 16x16x64 every 16 cycles; TDPBF16PS half of it)
AMX_INT8_OPS_PER_CYCLE, AMX_BF16_FLOP_PER_CYCLE = 2048, 1024
BATCHES = (1, 64)


def encoder_flops(encoder) -> int:
    """Multiply-adds x 2 of the encoder's Conv2D and Dense layers for one image."""
    flops = 0
    for layer in encoder.layers:
        kind = type(layer).__name__
        if kind == "Conv2D":
            _, h, w, c_out = layer.output.shape
            kh, kw = layer.kernel_size
            flops += 2 * h * w * c_out * kh * kw * layer.input.shape[-1]
        elif kind == "Dense":
            flops += 2 * layer.input.shape[-1] * layer.units
    return int(flops)


def machine_peak() -> dict:
    """This CPU's limits: physical cores x clock x ops per cycle of its widest FMA (float32) and VNNI (int8).

    Ops count a multiply-add as 2, for float32 and int8 alike. The clock is /proc/cpuinfo's (the base clock
    on most virtual machines; a boosting CPU can pass 100%).
    """
    import psutil

    cores = psutil.cpu_count(logical=False) or os.cpu_count()
    mhz, flags = None, set()
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("cpu MHz") and mhz is None:
                mhz = float(line.split(":")[1])
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    ghz = (mhz or 2450.0) / 1000.0
    fma = next(((name, lanes) for flag, name, lanes in FMA_WIDTHS if flag in flags), ("SSE (no FMA)", 2))
    fp32_per_cycle = FMA_UNITS_PER_CORE * fma[1] * 2
    vnni = next(((name, width) for flag, name, width in VNNI_WIDTHS if flag in flags), None)
    int8_per_cycle = FMA_UNITS_PER_CORE * vnni[1] * 2 if vnni else None
    amx = "amx_int8" in flags
    return {
        "cores": cores,
        "ghz": ghz,
        "fma": fma[0],
        "fma_units_per_core": FMA_UNITS_PER_CORE,
        "fp32_flop_per_cycle": fp32_per_cycle,
        "gflops": cores * ghz * fp32_per_cycle,
        "vnni": vnni[0] if vnni else None,
        "int8_ops_per_cycle": int8_per_cycle,
        "int8_gops": cores * ghz * int8_per_cycle if vnni else None,
        "amx_int8": amx,
        "amx_bf16": "amx_bf16" in flags,
        "amx_int8_gops": cores * ghz * AMX_INT8_OPS_PER_CYCLE if amx else None,
        "amx_bf16_gflops": cores * ghz * AMX_BF16_FLOP_PER_CYCLE if "amx_bf16" in flags else None,
    }


def time_it(fn, batch: np.ndarray, seconds: float) -> tuple[float, float]:
    """(images/s, median latency ms) after warm-up, timed in repeated runs for `seconds`."""
    for _ in range(5):
        fn(batch)
    latencies, deadline = [], time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(latencies) < 10:
        start = time.perf_counter()
        fn(batch)
        latencies.append(time.perf_counter() - start)
    ms = np.asarray(latencies)
    return float(len(batch) * len(ms) / ms.sum()), float(np.median(ms) * 1000)


def ensure_run(run: Path | None, data: Path) -> Path:
    from aekit.core import runs
    from aekit.core.recipe import TrainConfig
    from aekit.training.loop import train

    if run is not None:
        return run
    try:
        return runs.newest_finished_run()
    except Exception:
        target = Path("benchmarks/results/inference-run")
        if not runs.is_finished(target):
            train(TrainConfig(dataset=str(data), val_split=0.2, epochs=5, gpus=0), target)
        return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/mnist")
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/inference.json"))
    args = parser.parse_args()

    import tensorflow as tf

    from aekit.edge.runtimes import OnnxRunner, TFLiteRunner
    from aekit.exporting.export import ExportOptions, export_run, load_run

    run = ensure_run(args.run, args.data)
    loaded = load_run(run)
    encoder = loaded.models["encoder"]
    images = loaded.scaling.to_model_numpy(loaded.splits.val[:64])
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch)
        failed = set()
        for fmt, quantize in (("onnx", "none"), ("onnx", "int8"), ("tflite", "none"), ("tflite", "int8")):
            result = export_run(run, ExportOptions(formats=(fmt,), quantize=quantize, parts=("encoder",), output=out))
            for entry in result.failed:  # measured anyway would be a lie: leave it out and say why
                print(f"skipping {entry.file}: failed its parity check at export ({entry.reason})")
                failed.add(entry.file)
        flops = encoder_flops(encoder)
        peak = machine_peak()
        limit = peak["gflops"] * 1e9 / flops
        int8_limit = peak["int8_gops"] * 1e9 / flops if peak["int8_gops"] else None
        compiled = tf.function(lambda x: encoder(x, training=False))
        configs = [
            ("keras predict", "float32", "-", lambda b: encoder.predict(b, batch_size=len(b), verbose=0)),
            ("keras tf.function", "float32", "-", lambda b: compiled(b).numpy()),
        ]
        for threads in (1, 2):
            for precision, suffix in (("float32", ""), ("int8", "_int8")):
                if f"encoder{suffix}.onnx" not in failed:
                    configs.append(
                        ("onnxruntime cpu", precision, threads, OnnxRunner(out / f"encoder{suffix}.onnx", "cpu", threads).run)
                    )
                if f"encoder{suffix}.tflite" not in failed:
                    configs.append(("litert", precision, threads, TFLiteRunner(out / f"encoder{suffix}.tflite", threads).run))
        rows = []
        for name, precision, threads, fn in configs:
            for batch in BATCHES:
                ips, ms = time_it(fn, images[:batch], args.seconds)
                rows.append(
                    {
                        "runtime": name,
                        "precision": precision,
                        "threads": threads,
                        "batch": batch,
                        "images_per_sec": ips,
                        "median_ms": ms,
                        "pct_of_fp32_limit": 100 * ips / limit,
                        "pct_of_int8_limit": 100 * ips / int8_limit if int8_limit and precision == "int8" else None,
                    }
                )

    print(
        f"\nencoder: {flops / 1e6:.2f} MFLOP/image (multiply-adds x 2); CPU {peak['cores']} cores x {peak['ghz']:.2f} GHz"
        f" (/proc/cpuinfo), {peak['fma_units_per_core']} FMA units per core assumed"
    )
    print(
        f"float32 limit: {peak['fp32_flop_per_cycle']} FLOP/cycle/core ({peak['fma']}: {peak['fma_units_per_core']} units x "
        f"{peak['fp32_flop_per_cycle'] // (2 * peak['fma_units_per_core'])} lanes x 2) = {peak['gflops']:.0f} GFLOP/s -> "
        f"{limit:,.0f} images/s"
    )
    if int8_limit:
        print(
            f"int8 limit:    {peak['int8_ops_per_cycle']} ops/cycle/core ({peak['vnni']} VPDPBUSD: {peak['fma_units_per_core']} "
            f"units x {peak['int8_ops_per_cycle'] // (2 * peak['fma_units_per_core'])} u8*s8 multiply-adds x 2) = "
            f"{peak['int8_gops']:.0f} GOP/s -> {int8_limit:,.0f} images/s"
        )
    else:
        print("int8 limit:    none given (no VNNI on this CPU: int8 dot products take several instructions)")
    if peak["amx_int8"]:
        print(
            f"AMX tiles (what they would allow): int8 {AMX_INT8_OPS_PER_CYCLE} ops/cycle/core = "
            f"{peak['amx_int8_gops']:,.0f} GOP/s -> {peak['amx_int8_gops'] * 1e9 / flops:,.0f} images/s; bf16 "
            f"{AMX_BF16_FLOP_PER_CYCLE} FLOP/cycle/core -> {(peak['amx_bf16_gflops'] or 0) * 1e9 / flops:,.0f} images/s "
            "(tile shapes, data layout and memory bound it well below that on a model this small)"
        )
    print()
    print(
        f"{'runtime':<18} {'precision':<9} {'threads':>7} {'batch':>5} {'images/s':>10} {'median ms':>10} "
        f"{'% of fp32 limit':>15} {'% of int8 limit':>15}"
    )
    for r in rows:
        int8_pct = f"{r['pct_of_int8_limit']:>14.1f}%" if r["pct_of_int8_limit"] is not None else f"{'-':>15}"
        print(
            f"{r['runtime']:<18} {r['precision']:<9} {str(r['threads']):>7} {r['batch']:>5} "
            f"{r['images_per_sec']:>10,.0f} {r['median_ms']:>10.3f} {r['pct_of_fp32_limit']:>14.1f}% {int8_pct}"
        )
    best = {}
    for precision in ("float32", "int8"):
        for batch in BATCHES:
            candidates = [r for r in rows if r["precision"] == precision and r["batch"] == batch]
            best[(precision, batch)] = max(candidates, key=lambda r: r["images_per_sec"]) if candidates else None
    f32, i8 = best[("float32", 64)], best[("int8", 64)]
    summary = {
        "fp32_limit_images_per_sec": limit,
        "int8_limit_images_per_sec": int8_limit,
        "fastest_fp32_batch64": f32,
        "fastest_int8_batch64": i8,
        "fastest_fp32_batch1": best[("float32", 1)],
        "fastest_int8_batch1": best[("int8", 1)],
        "fp32_batch64_pct_of_limit": f32["pct_of_fp32_limit"],
        "int8_beats_fp32_batch64": bool(i8 and i8["images_per_sec"] > f32["images_per_sec"]),
        "failed_exports": sorted(failed),
    }
    print(
        f"\nfastest float32 at batch 64: {f32['runtime']} ({f32['threads']} threads) {f32['images_per_sec']:,.0f} images/s "
        f"= {f32['pct_of_fp32_limit']:.0f}% of the limit (target >= 75%)"
    )
    if i8:
        print(
            f"fastest int8 at batch 64:    {i8['runtime']} ({i8['threads']} threads) {i8['images_per_sec']:,.0f} images/s "
            f"= {i8['pct_of_int8_limit'] or 0:.0f}% of the int8 limit "
            f"({'beats' if summary['int8_beats_fp32_batch64'] else 'does not beat'} float32; target: beats)"
        )
    else:
        print("no int8 encoder passed its parity check at export: nothing int8 to time")
    for batch in BATCHES:
        pick = max((r for r in (best[("float32", batch)], best[("int8", batch)]) if r), key=lambda r: r["images_per_sec"])
        print(
            f"deploy at batch {batch}: {pick['runtime']} {pick['precision']} with {pick['threads']} thread(s) "
            f"({pick['images_per_sec']:,.0f} images/s, {pick['median_ms']:.3f} ms per batch)"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"run": str(run), "flops": flops, "peak": peak, "summary": summary, "rows": rows}, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
