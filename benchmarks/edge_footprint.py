"""The edge side against the TensorFlow path: start-up cost, memory, code size and quality.

For one run's exports, measures in fresh processes the time to import and encode a first
batch, and the peak resident memory, for (a) aekit.edge with onnxruntime, (b) aekit.edge
with LiteRT, (c) TensorFlow + Keras loading encoder.keras. Then, on the shared MNIST
test set: bytes per image and PSNR of float32 against int8 latent codes, and the anomaly
ROC AUC of reconstruction error (digits against noise, inverted digits, letters).

    .venv/bin/python benchmarks/edge_footprint.py --run runs/<name> [--edge-python .venv-edge/bin/python]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

PROBE = textwrap.dedent("""
    import json, resource, sys, time
    start = time.perf_counter()
    kind, path = sys.argv[1], sys.argv[2]
    import numpy as np
    images = np.zeros((64, 28, 28, 1), np.uint8)
    if kind == "tensorflow":
        import keras
        model = keras.models.load_model(path, compile=False)
        imported = time.perf_counter()
        out = model(images.astype("float32") / 255.0, training=False)
    else:
        from aekit.edge.sessions import EncoderSession
        imported = time.perf_counter()
        out = EncoderSession(path).encode(images)
    done = time.perf_counter()
    print(json.dumps({"import_s": imported - start, "first_batch_s": done - start,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "tensorflow_loaded": "tensorflow" in sys.modules}))
""")


def probe(python: str, kind: str, path: Path, repeats: int = 3) -> dict:
    runs = []
    for _ in range(repeats):
        proc = subprocess.run(
            [python, "-c", PROBE, kind, str(path)],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        )
        if proc.returncode:
            raise SystemExit(f"{kind} probe failed: {proc.stderr[-1500:]}")
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    best = min(runs, key=lambda r: r["first_batch_s"])
    return {**best, "peak_rss_mb": float(np.median([r["peak_rss_mb"] for r in runs]))}


def letters(count: int) -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=22)
    out = []
    for i in range(count):
        image = Image.new("L", (28, 28), 0)
        ImageDraw.Draw(image).text(
            (14, 14), "ABEFGHKMRWXQZ"[i % 13], fill=255, font=font, anchor="mm", stroke_width=1, stroke_fill=255
        )
        out.append(np.asarray(image))
    return np.stack(out)[..., None]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/mnist")
    parser.add_argument("--edge-python", default=sys.executable, help="interpreter of an edge-only install")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/edge_footprint.json"))
    args = parser.parse_args()

    from aekit.core.metrics import mse_per_image, psnr_from_mse
    from aekit.core.sources import iter_images
    from aekit.edge.codes import LatentQuantizer
    from aekit.edge.sessions import DecoderSession, EncoderSession
    from aekit.edge.thresholds import roc_auc
    from aekit.exporting.export import ExportOptions, export_run

    export = args.run / "export"
    if not (export / "encoder.onnx").is_file() or not (export / "encoder.tflite").is_file():
        for fmt in ("onnx", "tflite"):
            export_run(args.run, ExportOptions(formats=(fmt,)))

    footprint = {
        "edge onnxruntime": probe(args.edge_python, "edge", export / "encoder.onnx"),
        "edge litert": probe(args.edge_python, "edge", export / "encoder.tflite"),
        "tensorflow + keras": probe(sys.executable, "tensorflow", args.run / "encoder.keras"),
    }
    print(f"\n{'path':<20} {'import s':>9} {'import + first batch s':>23} {'peak RSS MB':>12} {'TF loaded':>10}")
    for name, r in footprint.items():
        print(
            f"{name:<20} {r['import_s']:>9.2f} {r['first_batch_s']:>23.2f} {r['peak_rss_mb']:>12.0f} {str(r['tensorflow_loaded']):>10}"  # noqa: E501 (one table row)
        )

    encoder, decoder = EncoderSession(export / "encoder.onnx"), DecoderSession(export / "decoder.onnx")
    images = np.concatenate([b for _, b in iter_images(args.data / "t10k-images-idx3-ubyte.gz", 2000)])
    originals = images.astype(np.float32) / 255.0
    codes = encoder.encode(images)
    quantizer = LatentQuantizer.from_json(encoder.manifest.latent_quantization)
    int8 = quantizer.quantize(codes)
    psnr_f32 = float(psnr_from_mse(mse_per_image(originals, decoder.decode(codes))).mean())
    psnr_i8 = float(psnr_from_mse(mse_per_image(originals, decoder.decode(quantizer.dequantize(int8)))).mean())
    codes_table = {
        "float32": {"bytes_per_image": int(codes.shape[1] * 4), "psnr": psnr_f32},
        "int8": {"bytes_per_image": int(int8.shape[1]), "psnr": psnr_i8},
        "raw image": {"bytes_per_image": int(np.prod(images.shape[1:])), "psnr": float("inf")},
    }
    print(f"\nlatent codes on {len(images):,} MNIST test digits")
    for name, r in codes_table.items():
        print(f"{name:<10} {r['bytes_per_image']:>5} bytes/image   PSNR {r['psnr']:.2f} dB")
    print(f"int8 codes lose {psnr_f32 - psnr_i8:.3f} dB")

    rng = np.random.default_rng(0)
    held_out = images[-1000:]
    groups = {
        "noise": rng.integers(0, 256, (1000, 28, 28, 1), dtype=np.uint8),
        "inverted": 255 - held_out,
        "letters": letters(1000),
    }

    def errors(batch):
        return mse_per_image(batch.astype(np.float32) / 255.0, decoder.decode(encoder.encode(batch)))

    normal = errors(held_out)
    aucs = {name: roc_auc(normal, errors(batch)) for name, batch in groups.items()}
    aucs["all"] = roc_auc(normal, np.concatenate([errors(b) for b in groups.values()]))
    print("\nanomaly ROC AUC (reconstruction MSE; 1,000 held-out digits against 1,000 of each)")
    for name, auc in aucs.items():
        print(f"{name:<10} {auc:.4f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {"footprint": footprint, "codes": codes_table, "int8_psnr_drop": psnr_f32 - psnr_i8, "auc": aucs},
            indent=2,
            default=str,
        )
    )
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
