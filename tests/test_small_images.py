"""Images smaller than SSIM's 11x11 window: bench shrinks the window to fit, and says so; under 3 px SSIM is None, with why."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from aekit import AekitError
from aekit.benchmarking.bench import BenchOptions, bench_run, keras_target, run_bench
from aekit.benchmarking.quality import ssim, ssim_window
from aekit.cli.main import app

FAST = dict(batch_sizes=(1, 8), runs=3, warmup=1, min_psnr=5.0, include_openvino=False)


def structured_images(count: int, side: int, seed: int = 0) -> np.ndarray:
    """uint8 (N, side, side): a random linear gradient plus a Gaussian blob, so an autoencoder has something to learn."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side] / max(side - 1, 1)
    slope = rng.uniform(-1, 1, (count, 2, 1, 1))
    centre = rng.uniform(0, 1, (count, 2, 1, 1))
    radius = rng.uniform(0.15, 0.4, (count, 1, 1))
    blob = np.exp(-((x - centre[:, 1]) ** 2 + (y - centre[:, 0]) ** 2) / radius**2)
    images = 0.5 + 0.3 * (slope[:, 0] * x + slope[:, 1] * y) + 0.4 * blob
    return (np.clip(images, 0, 1) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def run_8x8(tmp_path_factory):
    """A finished 1-epoch run on 600 8x8 images (one stride-2 block of 4 filters: a few seconds)."""
    from aekit.core.recipe import TrainConfig
    from aekit.training.loop import train

    folder = tmp_path_factory.mktemp("small-images")
    np.savez(folder / "small.npz", images=structured_images(600, 8))
    train(
        TrainConfig(dataset=str(folder / "small.npz"), epochs=1, batch_size=32, gpus=0, filters=(4,), latent_dim=4),
        folder / "run",
    )
    return folder / "run"


@pytest.mark.parametrize(
    "size, window",
    [
        ((28, 28), (11, 1.5)),
        ((8, 8), (7, 1.5 * 7 / 11)),
        ((8, 12), (7, 1.5 * 7 / 11)),
        ((4, 4), (3, 1.5 * 3 / 11)),
        ((3, 9), (3, 1.5 * 3 / 11)),
    ],
)
def test_ssim_window_is_the_largest_odd_size_that_fits_with_sigma_scaled(size, window):
    assert ssim_window(size) == pytest.approx(window)


def test_ssim_of_images_under_3_px_is_refused_in_one_line():
    assert ssim_window((2, 8)) is None
    images = np.zeros((2, 2, 8, 1), np.float32)
    with pytest.raises(AekitError, match=r"images are 2x8 px, and SSIM needs a window of at least 3x3"):
        ssim(images, images)
    same = structured_images(4, 8)[..., None].astype(np.float32) / 255
    assert ssim(same, same) == pytest.approx(1.0, abs=1e-5)  # the 7x7 window: identical images score 1


def test_bench_on_8x8_images_measures_every_part_with_a_7x7_ssim_window(run_8x8):
    result = bench_run(run_8x8, BenchOptions(**FAST))  # exports float32 and int8 ONNX/TFLite first
    assert result.header["quality"] == {
        "images": 60,
        "image_size": [8, 8],
        "ssim_window": 7,
        "ssim_sigma": round(1.5 * 7 / 11, 4),
        "ssim_note": None,
    }
    assert len(result.rows) == 5 * 3 * 2
    for row in result.rows:
        if row.status == "failed":  # an int8 file may miss its parity bound: then a named reason, no figures
            assert row.precision == "int8" and "failed at export" in row.reason and row.mse is None, row
            continue
        assert row.status == "passed" and row.images_per_sec > 0, row
        assert 0 < row.ssim <= 1 and 0 < row.mse < 0.1 and row.psnr > 5, row

    # --parts encoder, and one file with --model, through the CLI: no traceback, a table of rows
    common = ["--batch-sizes", "1,8", "--runs", "2", "--warmup", "1", "--min-psnr", "5"]
    cli = CliRunner().invoke(app, ["bench", "--run", str(run_8x8), "--parts", "encoder", *common])
    assert cli.exit_code == 0, cli.output
    assert "SSIM with a 7x7 window" in cli.output and "Traceback" not in cli.output
    model = run_8x8 / "export" / "encoder.tflite"
    cli = CliRunner().invoke(app, ["bench", "--model", str(model), *common, "--json"])
    assert cli.exit_code == 0, cli.output
    data = json.loads(cli.stdout)
    assert data["header"]["quality"]["ssim_window"] == 7
    assert [(r["part"], r["batch_size"], r["status"], r["quality_partner"]) for r in data["rows"]] == [
        ("encoder", 1, "passed", "keras decoder"),
        ("encoder", 8, "passed", "keras decoder"),
    ]
    assert all(0 < r["ssim"] <= 1 for r in data["rows"])


def test_bench_on_2x2_images_gives_ssim_none_and_says_why():
    from aekit.training.model import build_autoencoder

    encoder, decoder, _ = build_autoencoder((2, 2, 1), (4,), 2)
    images = structured_images(16, 2)[..., None].astype(np.float32) / 255
    result = run_bench(
        [keras_target({"encoder": encoder, "decoder": decoder})], images, BenchOptions(**{**FAST, "min_psnr": 0.0})
    )
    why = "SSIM not measured: images are 2x2 px, and SSIM needs a window of at least 3x3"
    assert result.header["quality"]["ssim_window"] is None and result.header["quality"]["ssim_note"] == why
    assert len(result.rows) == 3 * 2
    for row in result.rows:
        assert row.status == "passed" and row.images_per_sec > 0 and row.mse > 0, row
        assert row.ssim is None and row.quality_note == why
