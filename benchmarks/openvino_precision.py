"""What OpenVINO's default CPU precision costs against the f32 hint: agreement and speed, on aekit's .onnx exports.

OpenVINO's CPU plugin runs a float32 model in bf16 by default on CPUs with AMX or AVX512-BF16 (and f16 on some
ARM CPUs); aekit compiles it with INFERENCE_PRECISION_HINT f32, so that it reproduces the float32 file. This
trains two short runs, exports each to float32 and int8 ONNX, and prints per file pair (encoder + decoder):
- OpenVINO f32 against onnxruntime: max abs difference of the latents, agreement of the reconstructions (dB);
- OpenVINO default (bf16 here) against OpenVINO f32: the same two figures, and the PSNR against the images;
- speed: round trip images/s at batch 1 and 64 for onnxruntime, OpenVINO f32 and OpenVINO default, measured
  interleaved (one round of each, repeated), best round of each.

Models: "digits" (the shared MNIST test set: 8,000 train, 2,000 validate, the default recipe, 4 epochs) and
"photos" (2,000 generated 64x64 RGB photo patches, benchmarks/photo_patches.py, --filters 32,64,128
--latent-dim 128, 3 epochs). Writes JSON.

    .venv/bin/python benchmarks/openvino_precision.py --kinds digits,photos
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("AEKIT_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

TRAIN_IMAGES, VAL_IMAGES = 8000, 2000
RUNTIMES = ("onnxruntime", "openvino f32", "openvino default")


def config_for(kind: str, data: Path, scratch: Path, epochs: int | None):
    from aekit.core.recipe import TrainConfig

    if kind == "digits":
        return TrainConfig(dataset=str(data), val_split=VAL_IMAGES / (TRAIN_IMAGES + VAL_IMAGES), epochs=epochs or 4, gpus=0)
    from photo_patches import photo_patches

    npz = scratch / "photos.npz"
    np.savez(npz, x=photo_patches(2000, 64, seed=1234))
    return TrainConfig(dataset=str(npz), filters=(32, 64, 128), latent_dim=128, epochs=epochs or 3, gpus=0)


def agreement_db(a: np.ndarray, b: np.ndarray) -> float:
    from aekit.core.metrics import mse_per_image, psnr_from_mse

    return float(psnr_from_mse(mse_per_image(a, b).mean()))


def open_pair(encoder: Path, decoder: Path, runtime: str, threads: int):
    from aekit.edge.runtimes import open_runner

    if runtime == "onnxruntime":
        return [open_runner(p, "cpu", threads) for p in (encoder, decoder)]
    precision = runtime.split()[1]
    return [open_runner(p, "cpu", threads, runtime="openvino", precision=precision) for p in (encoder, decoder)]


def round_trip(pair, images: np.ndarray, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    latents = np.concatenate([pair[0].run(images[i : i + batch]) for i in range(0, len(images), batch)])
    recon = np.concatenate([pair[1].run(latents[i : i + batch]) for i in range(0, len(latents), batch)])
    return latents, recon


def speeds(pairs: dict, images: np.ndarray, batches=(1, 64), rounds: int = 7, seconds: float = 0.3) -> dict:
    """Round trip images/s per runtime and batch: interleaved rounds, the best round of each."""
    best = {(name, b): 0.0 for name in pairs for b in batches}
    for batch in batches:
        x = images[:batch]
        for pair in pairs.values():  # warm-up
            for _ in range(3):
                pair[1].run(pair[0].run(x))
        for _ in range(rounds):
            for name, pair in pairs.items():
                count, start = 0, time.perf_counter()
                while (elapsed := time.perf_counter() - start) < seconds or count < 3:
                    pair[1].run(pair[0].run(x))
                    count += 1
                best[(name, batch)] = max(best[(name, batch)], batch * count / elapsed)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/mnist")
    parser.add_argument("--kinds", default="digits,photos")
    parser.add_argument("--epochs", type=int, default=None, help="Default: 4 for digits, 3 for photos.")
    parser.add_argument("--images", type=int, default=500, help="Validation images the figures are measured on.")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/openvino_precision.json"))
    args = parser.parse_args()

    import openvino

    from aekit.core.system import system_info
    from aekit.exporting.export import ExportOptions, export_run, load_run
    from aekit.training.loop import train

    cpu = system_info()["cpu"]
    plugin = openvino.Core().get_property("CPU", "INFERENCE_PRECISION_HINT").get_type_name()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        for kind in args.kinds.split(","):
            run_dir = scratch / kind
            result = train(config_for(kind, args.data, scratch, args.epochs), run_dir)
            for quantize in ("none", "int8"):
                export_run(run_dir, ExportOptions(formats=("onnx",), quantize=quantize))
            loaded = load_run(run_dir)
            images = loaded.scaling.to_model_numpy(loaded.splits.sample("val", args.images))
            for precision, tag in (("float32", ""), ("int8", "_int8")):
                encoder, decoder = (run_dir / "export" / f"{role}{tag}.onnx" for role in ("encoder", "decoder"))
                if not encoder.exists() or not decoder.exists():
                    print(f"{kind} {precision}: a file failed its export check, skipped", flush=True)
                    continue
                pairs = {name: open_pair(encoder, decoder, name, args.threads) for name in RUNTIMES}
                outputs = {name: round_trip(pair, images) for name, pair in pairs.items()}
                (z_ort, r_ort), (z_f32, r_f32), (z_def, r_def) = (outputs[name] for name in RUNTIMES)
                speed = speeds(pairs, images)
                row = {
                    "kind": kind,
                    "precision": precision,
                    "image_shape": list(images.shape[1:]),
                    "latent_dim": int(z_ort.shape[1]),
                    "val_psnr_training": result.metrics.get("final_val_psnr"),
                    "default_precision": pairs["openvino default"][0].inference_precision,
                    "f32_vs_onnxruntime_latent_max_abs": float(np.abs(z_f32 - z_ort).max()),
                    "f32_vs_onnxruntime_db": agreement_db(r_ort, r_f32),
                    "default_vs_f32_latent_max_abs": float(np.abs(z_def - z_f32).max()),
                    "latent_max_abs": float(np.abs(z_f32).max()),
                    "default_vs_f32_db": agreement_db(r_f32, r_def),
                    "psnr_f32": agreement_db(images, r_f32),
                    "psnr_default": agreement_db(images, r_def),
                    "img_s": {f"{name} b{b}": v for (name, b), v in speed.items()},
                }
                rows.append(row)
                print(
                    f"{kind} {precision}: f32 vs onnxruntime {row['f32_vs_onnxruntime_db']:.1f} dB "
                    f"(latents {row['f32_vs_onnxruntime_latent_max_abs']:.1e}); {row['default_precision']} vs f32 "
                    f"{row['default_vs_f32_db']:.1f} dB (latents {row['default_vs_f32_latent_max_abs']:.3f} of "
                    f"{row['latent_max_abs']:.1f})",
                    flush=True,
                )

    version = openvino.__version__.split("-")[0]
    print(f"\nOpenVINO {version} CPU plugin (default precision here: {plugin}); CPU: {cpu}; {args.threads} threads; "
          f"{args.images} validation images; round trip images/s, best of 7 interleaved rounds")  # fmt: skip
    head = ("model", "file", "f32 vs ort dB", "f32 vs ort latents max|d|", f"{plugin} vs f32 dB",
            f"{plugin} latents max|d| (of max|z|)", "PSNR f32 / default", "b1 img/s ort / f32 / default",
            "b64 img/s ort / f32 / default")  # fmt: skip
    print(" | ".join(head))
    for r in rows:
        s = r["img_s"]
        print(
            f"{r['kind']} {'x'.join(map(str, r['image_shape']))} | {r['precision']} | {r['f32_vs_onnxruntime_db']:.1f} | "
            f"{r['f32_vs_onnxruntime_latent_max_abs']:.1e} | {r['default_vs_f32_db']:.1f} | "
            f"{r['default_vs_f32_latent_max_abs']:.3f} ({r['latent_max_abs']:.1f}) | "
            f"{r['psnr_f32']:.2f} / {r['psnr_default']:.2f} | "
            + " | ".join(" / ".join(f"{s[f'{name} b{b}']:,.0f}" for name in RUNTIMES) for b in (1, 64))
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = {"cpu": cpu, "openvino": version, "default_precision": plugin, "threads": args.threads, "rows": rows}
    args.out.write_text(json.dumps(record, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
