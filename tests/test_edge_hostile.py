"""Hostile inputs to the edge commands (encode, decode, reconstruct, score): outputs that already exist,
stale pairings of files, tampered manifests and latents files, odd images and thread counts.

The exported files are the tiny hand-built ONNX models of test_anomaly (4x4 images, 2 latents, an encoder
with zero weights and a sigmoid decoder), so every command runs in milliseconds.
"""

import json
import os
import stat

import numpy as np
import pytest
from PIL import Image
from support import assert_one_line_error, run
from test_anomaly import LATENT, SIDE, constant_images, make_export

from aekit import AekitError
from aekit.core.manifest import MANIFEST
from aekit.core.sources import iter_images, read_image
from aekit.edge.anomaly import open_sessions
from aekit.edge.codes import load_latents
from aekit.edge.runtimes import check_threads, max_threads, open_runner
from aekit.edge.sessions import DecoderSession, EncoderSession
from aekit.edge.thresholds import Threshold, calibrate, score

WEIGHTS_A, WEIGHTS_B = "a" * 64, "b" * 64


def set_manifest(folder, **fields):
    """Changes top-level fields of the manifest.json in `folder` (the files it vouches for are unchanged)."""
    path = folder / MANIFEST
    data = json.loads(path.read_text())
    data.update(fields)
    path.write_text(json.dumps(data))


def codes_file(path, latents, names=None, **extra):
    latents = np.asarray(latents, np.float32)
    names = np.arange(len(latents)).astype(str) if names is None else np.asarray(names)
    np.savez(path, latents=latents, names=names, latent_dtype=np.asarray("float32"), **extra)
    return path


@pytest.fixture
def export(tmp_path):
    return make_export(tmp_path / "export")


# --- 1. encode never replaces an existing file unasked, and never its own source ------------------


def test_encode_refuses_an_existing_output_unless_overwrite(export, tmp_path):
    source = constant_images(tmp_path / "x.npy", [0.5, 0.25])
    out = tmp_path / "z.npz"
    out.write_bytes(b"the user's file")
    code, lines = run("encode", source, "--model", export[0], "-o", out)
    assert_one_line_error(code, lines, f"-o {out} already exists", "--overwrite")
    assert out.read_bytes() == b"the user's file"
    code, lines = run("encode", source, "--model", export[0], "-o", out, "--overwrite")
    assert code == 0, lines
    assert np.load(out)["latents"].shape == (2, LATENT)


def test_encode_refuses_the_source_itself_even_with_overwrite(export, tmp_path):
    source = tmp_path / "images.npz"
    np.savez(source, images=np.full((3, SIDE, SIDE), 7, np.uint8))
    before = source.read_bytes()
    for extra in ([], ["--overwrite"]):
        code, lines = run("encode", source, "--model", export[0], "-o", source, *extra)
        assert_one_line_error(code, lines, "is the source being encoded")
        code, lines = run("encode", source, "--model", export[0], "-o", tmp_path / "." / "images.npz", *extra)
        assert_one_line_error(code, lines, "is the source being encoded")
    assert source.read_bytes() == before


# --- 2. score and reconstruct never replace existing outputs unasked ---------------------------------


def test_score_refuses_an_existing_threshold_file_and_csv_unless_overwrite(export, tmp_path):
    enc, dec = export
    normal = constant_images(tmp_path / "normal.npy", [0.5, 0.6, 0.7])
    threshold, csv = tmp_path / "mine.json", tmp_path / "scores.csv"
    threshold.write_text('{"the user": "own file"}')
    csv.write_text("keep me")
    base = ["score", "--encoder", enc, "--decoder", dec]
    code, lines = run(*base, "--calibrate", normal, "--threshold", threshold)
    assert_one_line_error(code, lines, f"--threshold {threshold} already exists", "--overwrite")
    assert threshold.read_text() == '{"the user": "own file"}'
    code, lines = run(*base, "--calibrate", normal, "--threshold", threshold, "--overwrite")
    assert code == 0, lines
    assert json.loads(threshold.read_text())["calibration_images"] == 3
    code, lines = run(*base, "--threshold", threshold, normal, "-o", csv)
    assert_one_line_error(code, lines, f"-o {csv} already exists", "--overwrite")
    assert csv.read_text() == "keep me"
    code, lines = run(*base, "--threshold", threshold, normal, "-o", csv, "--overwrite")
    assert code == 0, lines
    assert csv.read_text().splitlines()[0] == "name,mse,psnr,anomaly"


def test_score_never_writes_a_threshold_over_an_exports_manifest(export, tmp_path):
    enc, dec = export
    manifest = enc.parent / MANIFEST
    before = manifest.read_bytes()
    normal = constant_images(tmp_path / "normal.npy", [0.5, 0.6])
    code, lines = run("score", "--encoder", enc, "--decoder", dec, "--calibrate", normal, "--threshold", manifest, "--overwrite")
    assert_one_line_error(code, lines, "would replace an export's manifest.json")
    assert manifest.read_bytes() == before
    # the library refuses it too, under any name that reaches the manifest
    link = tmp_path / "t.json"
    link.symlink_to(manifest)
    with pytest.raises(AekitError, match="would replace an export's manifest.json"):
        calibrate(*open_sessions(enc, dec), normal, 0.5, link, overwrite=True)
    assert manifest.read_bytes() == before


def test_reconstruct_refuses_existing_results_unless_overwrite(export, tmp_path):
    enc, dec = export
    source = constant_images(tmp_path / "x.npy", [0.5, 0.75])
    folder = tmp_path / "rec"
    folder.mkdir()
    (folder / "reconstruction.csv").write_text("my own results")
    (folder / "reconstructions.png").write_bytes(b"my own picture")
    code, lines = run("reconstruct", source, "--encoder", enc, "--decoder", dec, "-o", folder)
    assert_one_line_error(code, lines, "already holds reconstruction.csv and reconstructions.png", "--overwrite")
    assert (folder / "reconstruction.csv").read_text() == "my own results"
    assert (folder / "reconstructions.png").read_bytes() == b"my own picture"
    code, lines = run("reconstruct", source, "--encoder", enc, "--decoder", dec, "-o", folder, "--overwrite")
    assert code == 0, lines
    rows = (folder / "reconstruction.csv").read_text().splitlines()
    assert rows[0] == "name,mse,psnr" and float(rows[2].split(",")[1]) == pytest.approx(0.0625)  # (0.75 - 0.5)^2
    # --grid 0 writes no picture, so an existing picture alone is no clash
    (folder / "reconstruction.csv").unlink()
    code, lines = run("reconstruct", source, "--encoder", enc, "--decoder", dec, "-o", folder, "--grid", "0")
    assert code == 0, lines


# --- 3. stale pairings: weights of one run that changed between exports -------------------------------


def test_an_encoder_and_a_decoder_from_different_weights_of_one_run_are_refused(tmp_path):
    (enc_old, _), (_, dec_new) = make_export(tmp_path / "old"), make_export(tmp_path / "new")
    set_manifest(tmp_path / "old", run_weights_sha256=WEIGHTS_A)
    set_manifest(tmp_path / "new", run_weights_sha256=WEIGHTS_B)
    with pytest.raises(AekitError, match=r"different weights of run /runs/a \(sha256 aaaaaaaaaaaa vs bbbbbbbbbbbb"):
        open_sessions(enc_old, dec_new)
    source = constant_images(tmp_path / "x.npy", [0.5])
    for command in (
        ["reconstruct", source, "-o", tmp_path / "rec"],
        ["score", "--calibrate", source, "--threshold", tmp_path / "t.json"],
    ):
        code, lines = run(*command, "--encoder", enc_old, "--decoder", dec_new)
        assert_one_line_error(code, lines, "Pass the encoder and the decoder from one export of the run")
    assert not (tmp_path / "rec").exists() and not (tmp_path / "t.json").exists()
    # an export without the field (older aekit) still pairs with one that has it
    set_manifest(tmp_path / "old", run_weights_sha256=None)
    assert open_sessions(enc_old, dec_new)


def test_a_threshold_records_the_weights_and_refuses_other_weights(export, tmp_path):
    enc, dec = export
    set_manifest(enc.parent, run_weights_sha256=WEIGHTS_A)
    normal = constant_images(tmp_path / "normal.npy", [0.5, 0.75])
    limit = calibrate(*open_sessions(enc, dec), normal, 0.5, tmp_path / "t.json")
    saved = json.loads((tmp_path / "t.json").read_text())
    assert saved["run_weights_sha256"] == WEIGHTS_A and Threshold.load(tmp_path / "t.json") == limit
    set_manifest(enc.parent, run_weights_sha256=WEIGHTS_B)  # train --resume and export again
    with pytest.raises(AekitError, match=r"calibrated with other weights of run /runs/a \(sha256 aaaaaaaaaaaa\).*bbbbbbbbbbbb"):
        score(*open_sessions(enc, dec), normal, Threshold.load(tmp_path / "t.json"))
    code, lines = run("score", "--encoder", enc, "--decoder", dec, "--threshold", tmp_path / "t.json", normal)
    assert_one_line_error(code, lines, "Calibrate again with these files")
    # an older threshold file, without the field (or with null), is accepted
    for old in ({k: v for k, v in saved.items() if k != "run_weights_sha256"}, {**saved, "run_weights_sha256": None}):
        (tmp_path / "old.json").write_text(json.dumps(old))
        result = score(*open_sessions(enc, dec), normal, Threshold.load(tmp_path / "old.json"))
        assert result.anomalies == 1 and result.threshold.mse == pytest.approx(0.03125)  # halfway between 0 and 0.0625


# --- 4. decode refuses latents encoded by another run's (or other weights') encoder --------------------


def test_decode_refuses_latents_from_another_run_or_other_weights(tmp_path):
    (enc_a, dec_a), (_, dec_b) = make_export(tmp_path / "a", run="/runs/a"), make_export(tmp_path / "b", run="/runs/b")
    source = constant_images(tmp_path / "x.npy", [0.5, 0.25])
    assert run("encode", source, "--model", enc_a, "-o", tmp_path / "z.npz")[0] == 0
    recorded = np.load(tmp_path / "z.npz")
    assert str(recorded["run"]) == "/runs/a" and str(recorded["run_weights_sha256"]) == ""
    code, lines = run("decode", tmp_path / "z.npz", "--model", dec_b, "-o", tmp_path / "out")
    assert_one_line_error(code, lines, "from run /runs/a", "exported from run /runs/b", "mean nothing to this decoder")
    assert not (tmp_path / "out").exists()
    assert run("decode", tmp_path / "z.npz", "--model", dec_a, "-o", tmp_path / "out")[0] == 0
    # same run, other weights
    set_manifest(tmp_path / "a", run_weights_sha256=WEIGHTS_A)
    assert run("encode", source, "--model", enc_a, "-o", tmp_path / "w.npz")[0] == 0
    set_manifest(tmp_path / "a", run_weights_sha256=WEIGHTS_B)
    code, lines = run("decode", tmp_path / "w.npz", "--model", dec_a, "-o", tmp_path / "out2")
    assert_one_line_error(code, lines, "with other weights of run /runs/a (sha256 aaaaaaaaaaaa)", "(bbbbbbbbbbbb)")
    # a latents file that records neither (an older aekit) is accepted
    codes_file(tmp_path / "old.npz", np.zeros((2, LATENT)))
    code, lines = run("decode", tmp_path / "old.npz", "--model", dec_b, "-o", tmp_path / "out3")
    assert code == 0, lines
    assert sorted(p.name for p in (tmp_path / "out3").iterdir()) == ["0.png", "1.png"]


# --- 5. 16-bit PNGs are scaled to 8 bits, not clipped to white ----------------------------------------


def test_16_bit_pngs_are_scaled_to_8_bits(tmp_path):
    wide = np.array([[0, 257, 32768, 65535], [1000, 20000, 40000, 65000]], np.uint16)
    Image.fromarray(wide).save(tmp_path / "wide.png")
    with Image.open(tmp_path / "wide.png") as image:
        assert image.mode.startswith("I")  # what Pillow makes of a 16-bit grey PNG
    pixels, mode = read_image(tmp_path / "wide.png")
    expected = np.round(wide.astype(np.float64) * 255 / 65535).astype(np.uint8)
    assert mode == "L" and pixels.dtype == np.uint8
    np.testing.assert_array_equal(pixels, expected)
    assert pixels.tolist()[0] == [0, 1, 128, 255]
    # in a folder after an 8-bit image, and in a colour folder (grey repeated into 3 channels)
    folder = tmp_path / "grey"
    folder.mkdir()
    Image.fromarray(np.full((2, 4), 9, np.uint8)).save(folder / "a.png")
    Image.fromarray(wide).save(folder / "b.png")
    (_, images), *_ = iter_images(folder)
    np.testing.assert_array_equal(images[1, ..., 0], expected)
    colour = tmp_path / "colour"
    colour.mkdir()
    Image.fromarray(np.full((2, 4, 3), 9, np.uint8)).save(colour / "a.png")
    Image.fromarray(wide).save(colour / "b.png")
    (_, images), *_ = iter_images(colour)
    assert images.shape == (2, 2, 4, 3)
    np.testing.assert_array_equal(images[1], np.repeat(expected[..., None], 3, axis=-1))


# --- 6. a tampered latent_quantization is refused when the manifest is loaded --------------------------


@pytest.mark.parametrize(
    "params, words",
    [
        ({"scale": [0.0, 0.1], "offset": [0.0, 0.0]}, "scale holds 0.0"),
        ({"scale": [float("nan"), 0.1], "offset": [0.0, 0.0]}, "scale holds nan"),
        ({"scale": [-0.1, 0.1], "offset": [0.0, 0.0]}, "scale holds -0.1"),
        ({"scale": None, "offset": [0.0, 0.0]}, "scale is None"),
        ({"scale": "0.1", "offset": [0.0, 0.0]}, "scale is '0.1'"),
        ({"scale": [0.1, "0.1"], "offset": [0.0, 0.0]}, "scale holds '0.1'"),
        ({"scale": [0.1, 0.1, 0.1], "offset": [0.0, 0.0]}, "scale is list of length 3; expected a list of 2"),
        ({"scale": [0.1, 0.1]}, "offset is missing"),
        ({"scale": [0.1, 0.1], "offset": [0.0]}, "offset is list of length 1"),
        ({"scale": [0.1, 0.1], "offset": [0.0, float("inf")]}, "offset holds inf"),
        ("int8", "latent_quantization is a str"),
    ],
)
def test_a_tampered_latent_quantization_is_a_one_line_error(export, tmp_path, params, words):
    enc, _ = export
    set_manifest(enc.parent, latent_quantization=params)
    with pytest.raises(AekitError, match="Invalid .*manifest.json: latent_quantization") as refused:
        EncoderSession(enc)
    assert words in str(refused.value) and "\n" not in str(refused.value)
    source = constant_images(tmp_path / "x.npy", [0.5])
    code, lines = run("encode", source, "--model", enc, "-o", tmp_path / "z.npz", "--latent-dtype", "int8")
    assert_one_line_error(code, lines, words, "Re-export")
    assert not (tmp_path / "z.npz").exists()


def test_a_valid_latent_quantization_gives_the_expected_int8_codes(export, tmp_path):
    enc, dec = export
    set_manifest(enc.parent, latent_quantization={"dtype": "int8", "scale": [0.5, 0.25], "offset": [-1.0, 0.0]})
    source = constant_images(tmp_path / "x.npy", [0.5])
    assert run("encode", source, "--model", enc, "-o", tmp_path / "z.npz", "--latent-dtype", "int8")[0] == 0
    # the encoder gives z = 0: q = round((0 - offset) / scale) - 128 = [2 - 128, 0 - 128]
    assert np.load(tmp_path / "z.npz")["latents"].tolist() == [[-126, -128]]
    latents, _ = load_latents(tmp_path / "z.npz")
    np.testing.assert_array_equal(latents, [[0.0, 0.0]])


# --- 7. --threads: a whole number from 1 to 4 per logical core --------------------------------------


def test_threads_out_of_range_are_refused_naming_the_option(export, tmp_path):
    enc, dec = export
    cap = max_threads()
    assert cap == 4 * (os.cpu_count() or 1) and check_threads(None) is None and check_threads(cap) == cap
    source = constant_images(tmp_path / "x.npy", [0.5])
    for threads in ("100000", "-1", "0", str(cap + 1)):
        code, lines = run("encode", source, "--model", enc, "-o", tmp_path / "z.npz", "--threads", threads)
        assert_one_line_error(code, lines, f"--threads {threads} is not a whole number from 1 to {cap:,}", "logical cores")
        code, lines = run("reconstruct", source, "--encoder", enc, "--decoder", dec, "-o", tmp_path / "r", "--threads", threads)
        assert_one_line_error(code, lines, f"--threads {threads}")
    assert not (tmp_path / "z.npz").exists() and not (tmp_path / "r").exists()
    # a .tflite file is not blamed: the thread count is checked before the file is opened
    (tmp_path / "m.tflite").write_bytes(b"not read")
    with pytest.raises(AekitError, match=r"^--threads -1 is not a whole number"):
        open_runner(tmp_path / "m.tflite", threads=-1)
    with pytest.raises(AekitError, match="--threads True"):
        check_threads(True)
    assert run("encode", source, "--model", enc, "-o", tmp_path / "z.npz", "--threads", "1")[0] == 0


# --- 8. a folder where an output file goes is refused before anything is written ----------------------


def test_decode_and_reconstruct_refuse_folders_in_place_of_their_files(export, tmp_path):
    enc, dec = export
    codes_file(tmp_path / "c.npz", np.zeros((3, LATENT)), names=["d00", "d01", "d02"])
    out = tmp_path / "dz"
    out.mkdir()
    (out / "d00.png").write_bytes(b"an earlier image")
    (out / "d01.png").mkdir()
    code, lines = run("decode", tmp_path / "c.npz", "--model", dec, "-o", out, "--overwrite")
    assert_one_line_error(code, lines, f"{out / 'd01.png'} is a folder")
    assert (out / "d00.png").read_bytes() == b"an earlier image" and sorted(p.name for p in out.iterdir()) == [
        "d00.png",
        "d01.png",
    ]
    assert not list(tmp_path.glob(".partial-*"))
    rz = tmp_path / "rz"
    (rz / "reconstruction.csv").mkdir(parents=True)
    source = constant_images(tmp_path / "x.npy", [0.5])
    for extra in ([], ["--overwrite"]):
        code, lines = run("reconstruct", source, "--encoder", enc, "--decoder", dec, "-o", rz, *extra)
        assert_one_line_error(code, lines, f"{rz / 'reconstruction.csv'} is a folder")
    assert sorted(p.name for p in rz.iterdir()) == ["reconstruction.csv"]


# --- 9. a latents file whose arrays disagree in length -----------------------------------------------


def test_a_latents_file_with_more_codes_than_names_is_refused(export, tmp_path):
    _, dec = export
    codes_file(tmp_path / "c.npz", np.zeros((20, LATENT)), names=[f"n{i}" for i in range(5)])
    with pytest.raises(AekitError, match="holds 20 latent codes but 5 names"):
        load_latents(tmp_path / "c.npz")
    code, lines = run("decode", tmp_path / "c.npz", "--model", dec, "-o", tmp_path / "out")
    assert_one_line_error(code, lines, "holds 20 latent codes but 5 names", "Encode again")
    assert not (tmp_path / "out").exists()
    np.savez(
        tmp_path / "q.npz",
        latents=np.zeros((2, LATENT), np.int8),
        names=np.asarray(["a", "b"]),
        latent_dtype=np.asarray("int8"),
        scale=np.asarray([0.1], np.float32),
        offset=np.asarray([0.0, 0.0], np.float32),
    )
    with pytest.raises(AekitError, match="int8 codes with invalid scale/offset"):
        load_latents(tmp_path / "q.npz")


# --- 10. decode's new folder gets the normal permissions --------------------------------------------


def test_decode_makes_its_folder_with_the_umask_permissions(export, tmp_path):
    _, dec = export
    codes_file(tmp_path / "c.npz", np.zeros((2, LATENT)))
    previous = os.umask(0o027)
    try:
        code, lines = run("decode", tmp_path / "c.npz", "--model", dec, "-o", tmp_path / "out")
    finally:
        os.umask(previous)
    assert code == 0, lines
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o750
    assert DecoderSession(dec).decode(np.zeros(LATENT, np.float32)).shape == (SIDE, SIDE, 1)


# --- 11. the wrong channel count is named as such ---------------------------------------------------


@pytest.mark.parametrize("mode", ["RGB", "P", "LA"])
def test_a_colour_image_for_a_grey_model_names_the_channels(export, tmp_path, mode):
    enc, _ = export
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(np.full((SIDE, SIDE, 3), 80, np.uint8)).convert(mode).save(folder / "a.png")
    code, lines = run("encode", folder, "--model", enc, "-o", tmp_path / "z.npz")
    assert_one_line_error(code, lines, "have 3 channels (RGB colour) but the model takes 1 channel (greyscale)", "convert('L')")
    with pytest.raises(AekitError, match=r"have 4 channels \(RGBA colour with alpha\)"):
        EncoderSession(enc).encode(np.zeros((2, SIDE, SIDE, 4), np.uint8))


def test_decode_never_writes_its_npz_over_the_latents_it_reads(export, tmp_path):
    _, dec = export
    codes = codes_file(tmp_path / "c.npz", np.zeros((2, LATENT)))
    before = codes.read_bytes()
    code, lines = run("decode", codes, "--model", dec, "-o", codes, "--format", "npz", "--overwrite")
    assert_one_line_error(code, lines, "is the latents file being decoded")
    assert codes.read_bytes() == before
