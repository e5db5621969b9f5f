"""Validation figures on a user's own images: the seeded, stratified split against "the last N%".

Makes a folder of photo-like RGB patches in nested sub-folders (photos/<kind>/set1|set2/*.png: four
kinds of picture, each in two exposures, so every sub-folder differs), trains the same model with
each split rule, and compares the reported validation PSNR with the PSNR of new patches drawn from
the same generators (held out from both). Then exports the stratified run to ONNX and sets an
anomaly threshold (quantile 0.99) on its training folder and on its validation split, and measures
each on new normal patches and on anomalous ones (noise, and patches of a kind never trained on).
Prints two tables; writes benchmarks/results/own_images.json.

    python benchmarks/own_images.py [--side 32] [--per-folder 120] [--epochs 8]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("AEKIT_OFFLINE", "1")
KINDS = ("brick", "checker", "grass", "sky")  # sorted, so a sorted folder ends in sky/set2


def patch(kind: str, variant: str, rng, side: int) -> np.ndarray:
    y, x = np.mgrid[0:side, 0:side] / (side - 1)
    if kind == "sky":
        base = np.stack([0.4 + 0.2 * y, 0.6 + 0.2 * y, 0.9 + 0 * y], -1) * (0.7 + 0.3 * rng.random())
    elif kind == "grass":
        base = np.stack([0.2 + 0 * y, 0.5 + 0 * y, 0.15 + 0 * y], -1) + 0.25 * rng.random((side, side, 1))
    elif kind == "brick":
        stripes = 0.5 + 0.5 * np.sin(side * 0.75 * y + rng.random() * 6.28)[..., None]
        base = np.array([0.7, 0.3, 0.2]) * (0.5 + 0.5 * stripes)
    else:
        k = rng.integers(2, 5)
        cells = ((np.floor(x * k) + np.floor(y * k)) % 2)[..., None]
        base = cells * rng.random(3) + (1 - cells) * rng.random(3)
    return (np.clip(base * (0.6 if variant == "set2" else 1.0), 0, 1) * 255).astype(np.uint8)


def make_folder(root: Path, per_folder: int, side: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for kind in KINDS:
        for variant in ("set1", "set2"):
            (root / kind / variant).mkdir(parents=True)
            for i in range(per_folder):
                Image.fromarray(patch(kind, variant, rng, side)).save(root / kind / variant / f"{i:04d}.png")


def held_out(per_folder: int, side: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([patch(k, v, rng, side) for k in KINDS for v in ("set1", "set2") for _ in range(per_folder)])


def anomalies(count: int, side: int, seed: int) -> np.ndarray:
    """Images no sub-folder holds: uniform noise and diagonal rainbow stripes, half each."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side] / (side - 1)
    noise = rng.integers(0, 256, (count // 2, side, side, 3), dtype=np.uint8)
    stripes = []
    for _ in range(count - count // 2):
        phase = rng.random(3) * 6.28
        stripes.append(0.5 + 0.5 * np.sin(side * 0.6 * (x + y)[..., None] + phase))
    return np.concatenate([noise, (np.stack(stripes) * 255).astype(np.uint8)])


def threshold_rows(run: Path, photos: Path, fresh: np.ndarray, odd: np.ndarray, folder: Path) -> list[dict]:
    from aekit.edge.anomaly import open_sessions
    from aekit.edge.report import evaluate
    from aekit.edge.thresholds import calibrate
    from aekit.exporting.export import ExportOptions, export_run

    export_run(run, ExportOptions.from_text("onnx"))
    np.save(folder / "normal.npy", fresh)
    np.save(folder / "anomalous.npy", odd)
    encoder, decoder = open_sessions(run / "export" / "encoder.onnx", run / "export" / "decoder.onnx")
    rows = []
    for label, source in (("training folder", str(photos)), ("validation split (--calibrate val)", "val")):
        limit = calibrate(encoder, decoder, source, quantile=0.99)
        started = time.perf_counter()
        report = evaluate(encoder, decoder, folder / "normal.npy", folder / "anomalous.npy", limit)
        rows.append(
            {
                "calibrated_on": label,
                "images": limit.calibration_images,
                "threshold_mse": limit.mse,
                "recorded_as": limit.calibrated_on,
                "false_positive_rate": report.false_positive_rate,
                "detection_rate": report.detection_rate,
                "roc_auc": report.auc,
                "evaluate_seconds": time.perf_counter() - started,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=32)
    parser.add_argument("--per-folder", type=int, default=120)
    parser.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args()

    import keras

    from aekit.core.metrics import mse_per_image, psnr_from_mse
    from aekit.core.recipe import TrainConfig
    from aekit.training.loop import train

    rows, thresholds = [], []
    with tempfile.TemporaryDirectory() as tmp:
        photos = Path(tmp) / "photos"
        make_folder(photos, args.per_folder, args.side, seed=0)
        fresh = held_out(args.per_folder // 4, args.side, seed=99).astype(np.float32) / 255
        for from_end in (False, True):
            run = Path(tmp) / f"run-{int(from_end)}"
            started = time.perf_counter()
            config = TrainConfig(
                dataset=str(photos), epochs=args.epochs, gpus=0, filters=(16, 32), latent_dim=32, val_from_end=from_end
            )
            result = train(config, run)
            model = keras.models.load_model(run / "autoencoder.keras")
            held = float(psnr_from_mse(mse_per_image(fresh, model.predict(fresh, verbose=0))).mean())
            split = json.loads((run / "config.json").read_text())["data"]["split"]
            val_folders = sorted(name for name, c in split.get("groups", {}).items() if c["val"]) if split.get("groups") else None
            rows.append(
                {
                    "rule": "last 10% (--val-from-end)" if from_end else "seeded, stratified (default)",
                    "val_psnr": result.metrics["final_val_psnr"],
                    "held_out_psnr": held,
                    "gap_db": result.metrics["final_val_psnr"] - held,
                    "final_train_loss": result.metrics["final_train_loss"],
                    "final_val_mse": result.metrics["final_val_mse"],
                    "val_sub_folders": len(val_folders) if val_folders else "sky/set2 only",
                    "seconds": time.perf_counter() - started,
                }
            )
        odd = anomalies(len(fresh), args.side, seed=7)
        thresholds = threshold_rows(Path(tmp) / "run-0", photos, (fresh * 255).round().astype(np.uint8), odd, Path(tmp))
    print(f"{len(KINDS) * 2} sub-folders x {args.per_folder} patches of {args.side}x{args.side}x3, {args.epochs} epochs")
    print(f"{'split rule':32} {'val PSNR':>9} {'held-out':>9} {'gap dB':>7} {'train loss':>11} {'val MSE':>9} {'val from':>14}")
    for r in rows:
        print(
            f"{r['rule']:32} {r['val_psnr']:9.2f} {r['held_out_psnr']:9.2f} {r['gap_db']:+7.2f} "
            f"{r['final_train_loss']:11.5f} {r['final_val_mse']:9.5f} {str(r['val_sub_folders']):>14}"
        )
    print(f"\nanomaly threshold at quantile 0.99; normal = {len(fresh)} new patches, anomalous = {len(odd)} noise/stripes")
    print(f"{'calibrated on':36} {'images':>6} {'threshold':>10} {'normal flagged':>15} {'detected':>9} {'ROC AUC':>8}")
    for r in thresholds:
        print(
            f"{r['calibrated_on']:36} {r['images']:6d} {r['threshold_mse']:10.5f} {r['false_positive_rate']:15.1%} "
            f"{r['detection_rate']:9.1%} {r['roc_auc']:8.3f}"
        )
    out = Path(__file__).with_name("results") / "own_images.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "rows": rows, "thresholds": thresholds}, indent=2) + "\n")


if __name__ == "__main__":
    main()
