"""A user's own images end to end: pixel ranges that are not 0-255 or 0-1, arrays picked from a .npz by name,
and one input rule for train, pack, export and the edge commands."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

AEKIT = Path(sys.executable).with_name("aekit")
TINY = ["--filters", "4", "--latent-dim", "4", "--gpus", "0", "--epochs", "1", "--batch-size", "32", "--quiet"]


def aekit(*args, cwd=None):
    env = {**os.environ, "AEKIT_OFFLINE": "1"}
    return subprocess.run([str(AEKIT), *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def digits_0_16(count: int, seed: int = 0) -> np.ndarray:
    """8x8 'digits' whose pixels run 0-16 (strokes of a few shapes), as the 8x8 digit sets store them."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:8, 0:8]
    images = []
    for _ in range(count):
        cx, cy, r = rng.uniform(2, 6), rng.uniform(2, 6), rng.uniform(1.5, 3.5)
        ring = np.abs(np.hypot(x - cx, y - cy) - r) < 0.9
        bar = (np.abs(x - rng.uniform(1, 7)) < 0.8) if rng.random() < 0.5 else np.zeros_like(ring)
        images.append(np.clip(np.rint(16 * (ring | bar) * rng.uniform(0.7, 1.0)), 0, 16))
    return np.stack(images)


@pytest.fixture(scope="module")
def digit_sources(tmp_path_factory):
    folder = tmp_path_factory.mktemp("own")
    digits = digits_0_16(320)
    np.savez(folder / "float16.npz", images=digits.astype(np.float32))
    np.savez(folder / "uint16.npz", images=digits.astype(np.uint8))
    np.savez(folder / "float255.npz", images=(digits * 255 / 16).astype(np.float32))
    return folder, digits


def test_0_16_pixels_are_refused_by_train_with_a_fix_that_works(digit_sources, tmp_path):
    folder, digits = digit_sources
    for name in ("float16.npz", "uint16.npz"):
        refused = aekit("train", "--dataset", folder / name, *TINY, "-o", tmp_path / f"no-{name}")
        assert refused.returncode == 2, refused.stderr
        line = refused.stderr.strip()
        assert len(line.splitlines()) == 1 and "--pixel-max 16" in line and "Traceback" not in refused.stderr
        assert not (tmp_path / f"no-{name}").exists()
    run = tmp_path / "run"
    done = aekit("train", "--dataset", folder / "float16.npz", *TINY, "--pixel-max", "16", "-o", run)
    assert done.returncode == 0, done.stderr
    config = json.loads((run / "config.json").read_text())
    assert config["recipe"]["pixel_max"] == 16.0
    assert config["data"]["pixel_scaling"]["divide_by"] == 16.0 and "--pixel-max 16" in config["data"]["pixel_scaling"]["rule"]
    exported = aekit("export", "--run", run, "--format", "onnx")
    assert exported.returncode == 0, exported.stderr
    manifest = json.loads((run / "export" / "manifest.json").read_text())
    assert manifest["pixel_scaling"]["pixel_max"] == 16.0 and manifest["pixel_scaling"]["divide_by"] == 16.0

    # The edge scales new 0-16 images as the model was trained, from the manifest, without being told.
    from aekit.edge.sessions import EncoderSession

    encoder = EncoderSession(run / "export" / "encoder.onnx")
    out = tmp_path / "codes.npz"
    encoded = aekit("encode", folder / "uint16.npz", "--model", run / "export" / "encoder.onnx", "-o", out)
    assert encoded.returncode == 0, encoded.stderr
    from aekit.core.pixels import PixelScaling

    expected = encoder.encode(digits.astype(np.float32)[..., None] / 16.0, scaling=PixelScaling(1.0))  # model inputs
    np.testing.assert_allclose(np.load(out)["latents"], expected, atol=1e-5)
    np.testing.assert_allclose(encoder.encode(digits.astype(np.float32)[..., None]), expected, atol=1e-5)  # 0-16 floats


def test_a_float_0_255_file_that_train_accepts_encode_accepts(digit_sources, tmp_path):
    folder, digits = digit_sources
    run = tmp_path / "run"
    assert aekit("train", "--dataset", folder / "float255.npz", *TINY, "-o", run).returncode == 0
    assert aekit("export", "--run", run, "--format", "onnx").returncode == 0
    encoder = run / "export" / "encoder.onnx"
    for source in ("float255.npz",):
        done = aekit("encode", folder / source, "--model", encoder, "-o", tmp_path / "a.npz")
        assert done.returncode == 0, done.stderr
    from aekit.edge.sessions import EncoderSession

    session = EncoderSession(encoder)
    as_float = (digits * 255 / 16).astype(np.float32)[..., None]
    np.testing.assert_allclose(np.load(tmp_path / "a.npz")["latents"], session.encode(as_float / 255.0), atol=1e-5)
    refused = aekit("encode", folder / "uint16.npz", "--model", encoder, "-o", tmp_path / "b.npz")  # 0-16: refused here too
    assert refused.returncode == 2 and "--pixel-max 16" in refused.stderr and not (tmp_path / "b.npz").exists()


def test_npz_arrays_are_picked_by_name_everywhere(digit_sources, tmp_path):
    from aekit.core.sources import count_images, npz_choice, read_images
    from aekit.data.loading import load_data

    grey = np.random.default_rng(1).integers(0, 256, (30, 8, 8), dtype=np.uint8)
    path = tmp_path / "grey.npz"
    np.savez(path, x_train=grey[:20], x_test=grey[20:], labels=np.arange(30))
    assert read_images(f"{path}:x_test").shape == (10, 8, 8, 1) and count_images(f"{path}:x_test") == 10
    assert "read array 'x_train' of grey.npz (it also holds x_test, labels)" in npz_choice(path)
    assert npz_choice(f"{path}:x_test") is None
    only_test = load_data(f"{path}:x_test", val_split=0.2)
    assert (len(only_test.train), len(only_test.val)) == (8, 2) and only_test.source.endswith("grey.npz:x_test")
    from aekit import AekitError

    with pytest.raises(AekitError, match="has no array 'nope'"):
        read_images(f"{path}:nope")


def test_a_dim_image_folder_is_refused_by_pack_then_finished_with_pixel_max(digit_sources, tmp_path):
    from aekit.data.pack.reader import PackedDataset
    from aekit.data.pack.writer import pack

    _, digits = digit_sources
    folder = tmp_path / "pngs"
    for i, digit in enumerate(digits[:80]):
        sub = folder / ("even" if i % 2 else "odd")
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(digit.astype(np.uint8)).save(sub / f"{i:03d}.png")  # 0-16 PNGs
    from aekit import AekitError

    with pytest.raises(AekitError, match="--pixel-max 16"):
        pack(str(folder), tmp_path / "pack", shard_size=32)
    assert not (tmp_path / "pack" / "dataset.json").exists()  # nothing looks finished
    again = pack(str(folder), tmp_path / "pack", shard_size=32, pixel_max=16)
    assert again.written_images == 0  # the shards written before were kept
    packed = PackedDataset.open(tmp_path / "pack")
    assert packed.scaling.divide_by == 16.0 and packed.scaling.pixel_max == 16.0
    assert int(packed.read("train").max()) == 16
