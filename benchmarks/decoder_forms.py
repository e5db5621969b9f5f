"""Decoder speed by form (aekit.exporting.forms): Keras, onnxruntime and LiteRT, float32 and int8, side by side.

Each model's decoder is rewritten into every form (native, crop, subpixel, phases: the same function),
exported with aekit's writers (tf2onnx; the TFLite converter, with the "op" interleave aekit writes into
.tflite files) and, for int8, quantized all-int8 by aekit's quantizers (aekit.exporting.int8: onnxruntime's
static QDQ, the TFLite full-integer converter, calibrated on 256 latents), then timed at batch 64 and 1 with
2 threads, every configuration once per round and the rounds repeated (the table gives the median and the
min-max over rounds). Keras is each form's model under a compiled tf.function. "agree dB" is the file's
(or Keras form's) PSNR against the native Keras decoder on the timed latents.

Models: "digits" (28x28x1, filters 32,64, latent 16) and "photos" (64x64x3, filters 32,64,128, latent 128),
from a trained run when one is given (--digits-run, --photos-run; latents from its validation images),
else with random weights (said in the table), BatchNorm statistics included: a fresh BatchNorm (beta and mean 0)
is a bare Mul that the converters fold away, which a trained one is not (speed depends on that, not on the other
weights; agreement of int8 does).

onnxruntime's "native" file is what `aekit export` writes for a float32 ONNX decoder: "folded", each BatchNorm
folded into the layer before it (static.written_model). onnxruntime runs a batch of 64 as one single-threaded
stream per thread (aekit.edge.runtimes.OnnxRunner); a batch of 1 on the one session with both threads.

    .venv/bin/python benchmarks/decoder_forms.py --digits-run runs/<digits> --photos-run runs/<photos> --rounds 5
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

MODELS = {"digits": ((28, 28, 1), (32, 64), 16), "photos": ((64, 64, 3), (32, 64, 128), 128)}
BATCHES = (64, 1)
THREADS = 2


def decoder_and_latents(kind: str, run: Path | None):
    """(decoder, timed latents (64), calibration latents (256), source) for one model kind."""
    if run is not None:
        from aekit.exporting.export import load_run

        loaded = load_run(run)
        encoder = loaded.models["encoder"]
        val = loaded.scaling.to_model_numpy(loaded.splits.sample("val", 64))
        train = loaded.scaling.to_model_numpy(loaded.splits.sample("train", 256))
        return (
            loaded.models["decoder"],
            np.asarray(encoder(val, training=False)),
            np.asarray(encoder(train, training=False)),
            f"trained run {run}",
        )
    from aekit.training.model import build_autoencoder

    shape, filters, latent = MODELS[kind]
    _, decoder, _ = build_autoencoder(shape, filters, latent)
    rng = np.random.default_rng(0)
    for layer in decoder.layers:  # gamma, beta, moving mean, moving variance, as a trained BatchNorm has them
        if type(layer).__name__ == "BatchNormalization":
            c = layer.get_weights()[0].shape
            stats = [rng.uniform(0.5, 1.5, c), rng.normal(0, 0.3, c), rng.normal(0, 0.3, c), rng.uniform(0.5, 2.0, c)]
            layer.set_weights([s.astype(np.float32) for s in stats])
    latents = rng.normal(size=(320, latent)).astype(np.float32)
    return decoder, latents[:64], latents[64:], "random weights"


def rate(fn, batch: np.ndarray, seconds: float) -> float:
    """Images per second over `seconds` of back-to-back calls (after one warm-up call)."""
    fn(batch)
    calls, start = 0, time.perf_counter()
    while calls < 2 or time.perf_counter() - start < seconds:
        fn(batch)
        calls += 1
    return len(batch) * calls / (time.perf_counter() - start)


def agreement_db(out: np.ndarray, ref: np.ndarray) -> float:
    mse = float(np.mean((np.asarray(out, np.float64) - ref) ** 2))
    return 10 * np.log10(1 / mse) if mse > 0 else float("inf")


def build_configs(kind, decoder, latents, calib, scratch: Path, precisions):
    """[(model, form, runtime, precision, fn, agreement dB)] for every form of one decoder."""
    import tensorflow as tf

    from aekit.edge.runtimes import OnnxRunner, TFLiteRunner
    from aekit.exporting.forms import FORMS, rewrite_decoder
    from aekit.exporting.int8 import OnnxQuantizer, TFLiteQuantizer
    from aekit.exporting.static import written_model
    from aekit.exporting.writers import INPUT_NAMES, _write_onnx, _write_tflite

    reference = np.asarray(decoder(latents, training=False))
    configs = []
    for form in FORMS:
        folder = scratch / kind / form
        folder.mkdir(parents=True)
        if form == "phases4d":  # the fixed-batch float .tflite form, timed here at a dynamic batch ((N, 1, 1, L) input)
            _write_tflite(rewrite_decoder(decoder, form), "decoder", folder / "decoder.tflite", "float32")
            configs.append((kind, form, "litert", "float32", TFLiteRunner(folder / "decoder.tflite", THREADS).run))
            continue
        model = rewrite_decoder(decoder, form)
        lite = rewrite_decoder(decoder, form, "op")  # the interleave aekit writes into .tflite files
        compiled = tf.function(lambda x, m=model: m(x, training=False))
        configs.append((kind, form, "keras", "float32", lambda b, c=compiled: c(b).numpy()))
        onnx_model = written_model(decoder, None, "onnx", "float32", "decoder")[0] if form == "native" else model
        _write_onnx(onnx_model, "decoder", folder / "decoder.onnx", 17, "float32")
        _write_tflite(lite, "decoder", folder / "decoder.tflite", "float32")
        configs.append((kind, form, "onnxruntime", "float32", OnnxRunner(folder / "decoder.onnx", "cpu", THREADS).run))
        configs.append((kind, form, "litert", "float32", TFLiteRunner(folder / "decoder.tflite", THREADS).run))
        if "int8" in precisions:
            quantizer = OnnxQuantizer(folder / "decoder.onnx", INPUT_NAMES["decoder"], calib, folder)
            quantizer.write(folder / "decoder_int8.onnx")
            TFLiteQuantizer(lite, "decoder", calib).write(folder / "decoder_int8.tflite")
            configs.append((kind, form, "onnxruntime", "int8", OnnxRunner(folder / "decoder_int8.onnx", "cpu", THREADS).run))
            configs.append((kind, form, "litert", "int8", TFLiteRunner(folder / "decoder_int8.tflite", THREADS).run))
    return [(*c, agreement_db(c[-1](latents), reference)) for c in configs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--digits-run", type=Path)
    parser.add_argument("--photos-run", type=Path)
    parser.add_argument("--kinds", default="digits,photos")
    parser.add_argument("--precisions", default="float32,int8")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=0.3, help="per configuration and round")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/decoder_forms.json"))
    args = parser.parse_args()

    from aekit.core.system import system_info
    from aekit.exporting.forms import FORMS

    runs = {"digits": args.digits_run, "photos": args.photos_run}
    kinds = args.kinds.split(",")
    sources, configs, latents_of = {}, [], {}
    with tempfile.TemporaryDirectory(prefix="aekit-forms-") as scratch:
        for kind in kinds:
            decoder, latents, calib, sources[kind] = decoder_and_latents(kind, runs[kind])
            latents_of[kind] = latents
            configs += build_configs(kind, decoder, latents, calib, Path(scratch), args.precisions.split(","))
        rates = {(c[0], c[1], c[2], c[3], b): [] for c in configs for b in BATCHES}
        for done in range(args.rounds):
            for kind, form, runtime, precision, fn, _ in configs:
                for batch in BATCHES:
                    rates[(kind, form, runtime, precision, batch)].append(rate(fn, latents_of[kind][:batch], args.seconds))
            print(f"round {done + 1}/{args.rounds} done", flush=True)

    rows = []
    for kind, form, runtime, precision, _, agree in configs:
        for batch in BATCHES:
            r = rates[(kind, form, runtime, precision, batch)]
            rows.append(
                {"model": kind, "form": form, "runtime": runtime, "precision": precision, "batch": batch,
                 "median": float(np.median(r)), "min": float(min(r)), "max": float(max(r)), "agreement_db": agree}
            )  # fmt: skip
    print(f"\nCPU: {system_info()['cpu']}; {THREADS} threads; {args.rounds} rounds of {args.seconds:g} s per row")
    for kind in kinds:
        print(f"{kind}: {sources[kind]}")
    for batch in BATCHES:
        print(f"\nbatch {batch}: images/s, median (min-max) over rounds; agree dB against the native Keras decoder")
        heads = " ".join(f"{f + ' img/s':>24} {'dB':>6}" for f in FORMS)
        print(f"{'model':<7} {'runtime':<12} {'precision':<9} {heads}")
        for kind in kinds:
            keras_native = next(
                r for r in rows if (r["model"], r["form"], r["runtime"], r["batch"]) == (kind, "native", "keras", batch)
            )
            for runtime, precision in (("keras", "float32"), ("onnxruntime", "float32"), ("litert", "float32"),
                                       ("onnxruntime", "int8"), ("litert", "int8")):  # fmt: skip
                cells = []
                for form in FORMS:
                    row = next((r for r in rows if (r["model"], r["form"], r["runtime"], r["precision"], r["batch"])
                                == (kind, form, runtime, precision, batch)), None)  # fmt: skip
                    if row is None:
                        cells.append(f"{'-':>24} {'-':>6}")
                        continue
                    speed = f"{row['median']:,.0f} ({row['min']:,.0f}-{row['max']:,.0f})"
                    cells.append(f"{speed:>24} {min(row['agreement_db'], 999):>6.1f}")
                if any(c.strip(" -") for c in cells):
                    print(f"{kind:<7} {runtime:<12} {precision:<9} " + " ".join(cells))
            fastest = max((r for r in rows if r["model"] == kind and r["batch"] == batch and r["runtime"] != "keras"),
                          key=lambda r: r["median"])  # fmt: skip
            print(
                f"{kind}: fastest export at batch {batch}: {fastest['runtime']} {fastest['precision']} {fastest['form']} "
                f"{fastest['median']:,.0f} img/s = {fastest['median'] / keras_native['median']:.2f}x Keras native "
                f"({keras_native['median']:,.0f})"
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"cpu": system_info()["cpu"], "sources": sources, "rows": rows}, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
