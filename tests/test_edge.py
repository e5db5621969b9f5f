import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont
from support import MNIST_DIR, read_mnist
from typer.testing import CliRunner

from aekit import AekitError
from aekit.cli.main import app
from aekit.core.metrics import mse_per_image, psnr_from_mse
from aekit.core.sources import iter_images
from aekit.edge.codes import LatentQuantizer, load_latents
from aekit.edge.runtimes import NoCudaError
from aekit.edge.sessions import DecoderSession, EncoderSession
from aekit.edge.thresholds import roc_auc
from aekit.exporting.export import ExportOptions, export_run, load_run

IDX = MNIST_DIR / "t10k-images-idx3-ubyte.gz"


@pytest.fixture(scope="module")
def decent_run(tmp_path_factory):
    """A small model trained well enough to tell digits from other images (val PSNR ~19 dB, ~15 s)."""
    from aekit.core.recipe import TrainConfig
    from aekit.training.loop import train

    folder = tmp_path_factory.mktemp("edge-run")
    np.savez(folder / "digits.npz", images=read_mnist(3000))
    config = TrainConfig(
        dataset=str(folder / "digits.npz"), epochs=8, batch_size=32, learning_rate=2e-3, gpus=0, filters=(16, 32), latent_dim=16
    )
    train(config, folder / "run")
    return folder / "run"


@pytest.fixture(scope="module")
def exported(decent_run, tmp_path_factory):
    """That run exported to ONNX and TFLite (float32) in its own folder."""
    out = tmp_path_factory.mktemp("edge-export")
    for fmt in ("onnx", "tflite"):
        result = export_run(decent_run, ExportOptions(formats=(fmt,), output=out))
        assert not result.failed
    return out


def test_sessions_match_keras_on_uint8_single_images_and_batches(exported, decent_run):
    loaded = load_run(decent_run)
    digits = read_mnist(20)
    keras_codes = np.asarray(loaded.models["encoder"](digits[..., None] / np.float32(255), training=False))
    for suffix in ("onnx", "tflite"):
        encoder = EncoderSession(exported / f"encoder.{suffix}")
        codes = encoder.encode(digits)  # (N, 28, 28) uint8, channel added
        np.testing.assert_allclose(codes, keras_codes, atol=2e-4)
        np.testing.assert_allclose(encoder.encode(digits[0]), keras_codes[0], atol=2e-4)  # one image
        np.testing.assert_allclose(encoder.encode(digits[..., None] / np.float32(255)), keras_codes, atol=2e-4)
        images = DecoderSession(exported / f"decoder.{suffix}").decode(codes)
        assert images.shape == (20, 28, 28, 1) and images.dtype == np.float32 and 0 <= images.min() <= images.max() <= 1


def test_wrong_shapes_dtypes_and_files_are_clear_errors(exported, tmp_path):
    encoder = EncoderSession(exported / "encoder.onnx")
    with pytest.raises(AekitError, match=r"Expected images of shape \(28, 28, 1\).*received \(2, 32, 32, 3\)"):
        encoder.encode(np.zeros((2, 32, 32, 3), np.uint8))
    with pytest.raises(AekitError, match="pixels must not be negative"):
        encoder.encode(np.full((1, 28, 28, 1), -1.0, np.float32))
    with pytest.raises(AekitError, match="--pixel-max 300"):
        encoder.encode(np.full((1, 28, 28, 1), 300.0, np.float32))
    with pytest.raises(AekitError, match="dtype bool"):
        encoder.encode(np.zeros((1, 28, 28, 1), np.bool_))
    with pytest.raises(AekitError, match=r"latents of shape \(N, 16\)"):
        DecoderSession(exported / "decoder.onnx").decode(np.zeros((3, 4), np.float32))
    with pytest.raises(AekitError, match="not an decoder|is an encoder"):
        DecoderSession(exported / "encoder.onnx")
    lonely = tmp_path / "encoder.onnx"
    lonely.write_bytes((exported / "encoder.onnx").read_bytes())
    with pytest.raises(AekitError, match="No manifest.json beside"):
        EncoderSession(lonely)


def test_the_edge_side_runs_where_tensorflow_cannot_be_imported(exported, tmp_path):
    script = textwrap.dedent(f"""
        import sys
        class NoTensorFlow:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("tensorflow", "keras", "tf2onnx", "tensorflow_datasets"):
                    raise ImportError("tensorflow is not installed here")
        sys.meta_path.insert(0, NoTensorFlow())
        try:
            import tensorflow
            raise SystemExit("tensorflow imported")
        except ImportError:
            pass
        import numpy as np
        from aekit.edge.sessions import EncoderSession
        codes = EncoderSession({str(exported / "encoder.tflite")!r}).encode(np.zeros((3, 28, 28, 1), np.uint8))
        assert codes.shape == (3, 16)
        from aekit.cli.main import app
        try:
            app(["encode", "--model", {str(exported / "encoder.onnx")!r}, {str(IDX)!r}, "-o", {str(tmp_path / "z.npz")!r}])
        except SystemExit as exit:
            assert exit.code in (0, None), exit.code
        enc, dec, idx = {str(exported / "encoder.onnx")!r}, {str(exported / "decoder.tflite")!r}, {str(IDX)!r}
        for args in (
            ["decode", "--model", dec, {str(tmp_path / "z.npz")!r}, "-o", {str(tmp_path / "z-images.npz")!r}, "--format", "npz"],
            ["reconstruct", "--encoder", enc, "--decoder", dec, {str(IDX)!r}, "-o", {str(tmp_path / "recon")!r}],
            ["score", "--encoder", enc, "--decoder", dec, "--calibrate", idx, "--threshold", {str(tmp_path / "t.json")!r}],
        ):
            try:
                app(args)
            except SystemExit as exit:
                assert exit.code in (0, None), (args[0], exit.code)
            print("ran", args[0])
        try:
            app(["train", "--epochs", "1"])
        except SystemExit as exit:
            print("train exit", exit.code)
        assert not any(m.split(".")[0] in ("tensorflow", "keras") for m in sys.modules)
        print("encoded", codes.shape)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "encoded (3, 16)" in proc.stdout and "Encoded 10,000 images" in proc.stdout
    assert "train exit 2" in proc.stdout and "pip install 'aekit[full]'" in proc.stderr
    assert [line for line in proc.stdout.splitlines() if line.startswith("ran ")] == [
        "ran decode",
        "ran reconstruct",
        "ran score",
    ]
    assert (tmp_path / "recon" / "reconstructions.png").is_file() and (tmp_path / "t.json").is_file()
    assert np.load(tmp_path / "z.npz")["latents"].shape == (10_000, 16)


def test_encode_decode_cli_and_int8_codes_are_one_byte_per_dimension(exported, tmp_path):
    runner = CliRunner()
    base = ["encode", "--model", str(exported / "encoder.onnx"), str(IDX), "--batch-size", "1000"]
    assert runner.invoke(app, [*base, "-o", str(tmp_path / "f32.npz")]).exit_code == 0
    result = runner.invoke(app, [*base, "-o", str(tmp_path / "i8.npz"), "--latent-dtype", "int8"])
    assert result.exit_code == 0 and "16 bytes per image" in result.output
    f32, i8 = np.load(tmp_path / "f32.npz"), np.load(tmp_path / "i8.npz")
    assert f32["latents"].dtype == np.float32 and i8["latents"].dtype == np.int8
    assert i8["latents"].nbytes == 10_000 * 16 and list(f32["names"][:2]) == ["0", "1"]
    dequantized, _ = load_latents(tmp_path / "i8.npz")
    step = np.asarray(i8["scale"])
    inside = (f32["latents"] >= i8["offset"]) & (f32["latents"] <= i8["offset"] + 255 * step)
    assert np.all(np.abs(dequantized - f32["latents"])[inside] <= step.max() / 2 + 1e-5)

    decoder = str(exported / "decoder.onnx")
    result = runner.invoke(app, ["decode", "--model", decoder, str(tmp_path / "i8.npz"), "-o", str(tmp_path / "png")])
    assert result.exit_code == 0, result.output
    pngs = sorted((tmp_path / "png").glob("*.png"))
    assert len(pngs) == 10_000
    with Image.open(tmp_path / "png" / "0.png") as image:
        assert image.size == (28, 28) and image.mode == "L"
    result = runner.invoke(
        app, ["decode", "--model", decoder, str(tmp_path / "f32.npz"), "-o", str(tmp_path / "d.npz"), "--format", "npz"]
    )
    assert result.exit_code == 0
    images = np.load(tmp_path / "d.npz")["images"]
    originals = read_mnist()[..., None] / np.float32(255)
    psnr_f32 = psnr_from_mse(mse_per_image(originals, images)).mean()
    psnr_i8 = psnr_from_mse(mse_per_image(originals, DecoderSession(decoder).decode(dequantized))).mean()
    assert psnr_f32 - psnr_i8 < 0.5, (psnr_f32, psnr_i8)


def test_latent_quantizer_round_trip_error_is_half_a_step():
    z = np.random.default_rng(0).normal(0, 5, (1000, 16)).astype(np.float32)
    q = LatentQuantizer.calibrate(z)
    codes = q.quantize(z)
    assert codes.dtype == np.int8 and codes.min() == -128 and codes.max() == 127
    assert np.max(np.abs(q.dequantize(codes) - z)) <= q.scale.max() / 2 + 1e-5


def test_inputs_stream_in_batches(tmp_path):
    batches = list(iter_images(IDX, batch_size=4096))
    assert [len(b[1]) for b in batches] == [4096, 4096, 1808]
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, digit in enumerate(read_mnist(10)):
        Image.fromarray(digit).save(folder / f"d{i}.png")
    batches = list(iter_images(folder, batch_size=4))
    assert [len(names) for names, _ in batches] == [4, 4, 2] and batches[0][1].shape == (4, 28, 28, 1)
    np.save(tmp_path / "a.npy", read_mnist(9))
    assert [len(b[1]) for b in iter_images(tmp_path / "a.npy", batch_size=5)] == [5, 4]


def letters(count: int) -> np.ndarray:
    """Capital letters drawn like MNIST digits: white, centred, bold, on black."""
    font = ImageFont.load_default(size=22)
    out = []
    for i in range(count):
        image = Image.new("L", (28, 28), 0)
        ImageDraw.Draw(image).text(
            (14, 14), "ABEFGHKMRWXQZ"[i % 13], fill=255, font=font, anchor="mm", stroke_width=1, stroke_fill=255
        )
        out.append(np.asarray(image))
    return np.stack(out)


def test_score_separates_digits_from_non_digits(exported, tmp_path):
    digits = read_mnist()
    normal, held_out = digits[:2000], digits[-300:]
    rng = np.random.default_rng(0)
    outliers = np.concatenate(
        [
            rng.integers(0, 256, (100, 28, 28), dtype=np.uint8),  # noise
            255 - held_out[:100],  # inverted digits
            letters(100),  # letters rendered with Pillow
        ]
    )
    np.save(tmp_path / "normal.npy", normal)
    np.save(tmp_path / "test.npy", np.concatenate([held_out, outliers]))
    enc, dec = str(exported / "encoder.onnx"), str(exported / "decoder.onnx")
    threshold = tmp_path / "threshold.json"
    result = CliRunner().invoke(
        app,
        [
            "score",
            "--encoder",
            enc,
            "--decoder",
            dec,
            "--calibrate",
            str(tmp_path / "normal.npy"),
            "--quantile",
            "0.99",
            "--threshold",
            str(threshold),
            str(tmp_path / "test.npy"),
            "-o",
            str(tmp_path / "scores.csv"),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    counts = json.loads(result.stdout)
    assert counts["images"] == 600 and counts["anomalies"] + counts["normal"] == 600
    saved = json.loads(threshold.read_text())
    assert saved["quantile"] == 0.99 and saved["calibration_images"] == 2000
    rows = (tmp_path / "scores.csv").read_text().splitlines()
    mse = np.array([float(line.split(",")[1]) for line in rows[1:]])
    normal_mse, groups = mse[:300], {"noise": mse[300:400], "inverted": mse[400:500], "letters": mse[500:]}
    assert roc_auc(normal_mse, mse[300:]) > 0.9
    aucs = {name: roc_auc(normal_mse, scores) for name, scores in groups.items()}
    assert aucs["noise"] > 0.99 and aucs["inverted"] > 0.99 and aucs["letters"] > 0.7, aucs
    flagged = np.array([int(line.split(",")[3]) for line in rows[1:]])
    assert flagged[300:500].mean() > 0.95 and flagged[:300].mean() < 0.1  # nominal 1%; a small model on 300 digits
    # a second call reads the saved threshold
    again = CliRunner().invoke(
        app, ["score", "--encoder", enc, "--decoder", dec, "--threshold", str(threshold), str(tmp_path / "test.npy"), "--json"]
    )
    assert json.loads(again.stdout)["anomalies"] == counts["anomalies"]


def test_reconstruct_writes_scores_and_the_grid(exported, tmp_path):
    result = CliRunner().invoke(
        app,
        [
            "reconstruct",
            "--encoder",
            str(exported / "encoder.tflite"),
            "--decoder",
            str(exported / "decoder.tflite"),
            str(IDX),
            "-o",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 0, result.output
    lines = (tmp_path / "reconstruction.csv").read_text().splitlines()
    assert lines[0] == "name,mse,psnr" and len(lines) == 10_001
    with Image.open(tmp_path / "reconstructions.png") as grid:
        assert grid.size == (962, 202)  # ten 84-px cells (28 px x3) in two labelled rows


def test_edge_commands_refuse_empty_inputs_and_bad_outputs_up_front(exported, tmp_path):
    runner = CliRunner()
    enc, dec = str(exported / "encoder.onnx"), str(exported / "decoder.onnx")
    np.save(tmp_path / "empty.npy", np.zeros((0, 28, 28), np.uint8))
    (tmp_path / "notes.txt").write_text("x")
    cases = [
        (["encode", "--model", enc, str(tmp_path / "empty.npy"), "-o", str(tmp_path / "z.npz")], "holds no images"),
        (["encode", "--model", enc, str(IDX), "-o", str(tmp_path / "z.txt")], "must end in .npz"),
        (["decode", "--model", dec, str(tmp_path / "empty.npy"), "-o", str(tmp_path / "out")], "not a latents file"),
        (["decode", "--model", dec, str(tmp_path / "z.npz"), "-o", str(tmp_path / "notes.txt")], "is a file"),
        (
            ["reconstruct", "--encoder", enc, "--decoder", dec, str(tmp_path / "empty.npy"), "-o", str(tmp_path / "r")],
            "holds no images",
        ),
        (["reconstruct", "--encoder", enc, "--decoder", dec, str(IDX), "-o", str(tmp_path / "notes.txt")], "is a file"),
        (["score", "--encoder", enc, "--decoder", dec, "--calibrate", str(IDX), "--quantile", "1.5"], "--quantile"),
        (
            ["score", "--encoder", enc, "--decoder", dec, "--threshold", str(tmp_path / "notes.txt"), str(IDX)],
            "not a threshold file",
        ),
        (["encode", "--model", str(tmp_path / "gone.onnx"), str(IDX), "-o", str(tmp_path / "z.npz")], "does not exist"),
    ]
    for args, words in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and words in result.output, (args, result.output)
        assert "Traceback" not in result.output


# --- --device cuda: CUDA or a clear error, never a silent CPU run ---------------------

WOULD_RUN = {"onnx": "CPUExecutionProvider", "tflite": "XNNPACK/CPU"}


@pytest.fixture
def no_cuda(exported):
    """Skips where CUDA really runs (these tests pin down the fallback on a machine without it)."""
    if EncoderSession(exported / "encoder.onnx", device="auto").device == "cuda":
        pytest.skip("CUDA runs here")


def test_sessions_refuse_device_cuda_without_cuda_naming_what_would_run(exported, no_cuda):
    digits = read_mnist(8)
    for suffix, provider in WOULD_RUN.items():
        for session_type in (EncoderSession, DecoderSession):
            path = exported / f"{session_type.role}.{suffix}"
            with pytest.raises(NoCudaError) as refused:
                session_type(path, device="cuda")
            message = str(refused.value)
            assert isinstance(refused.value, AekitError) and "\n" not in message
            assert f"on {provider}" in message and path.name in message
            assert "CUDA is not what runs" in message and "--allow-fallback" in message and "--device cpu" in message

            fallback = session_type(path, device="cuda", allow_fallback=True)
            assert (fallback.provider, fallback.device, fallback.fell_back) == (provider, "cpu", True)
            assert fallback.ran_on() == {
                "file": str(path),
                "runtime": "onnxruntime" if suffix == "onnx" else "litert",
                "provider": provider,
                "device": "cpu",
                "requested_device": "cuda",
                "fell_back": True,
            }
            auto = session_type(path, device="auto")  # auto: the CPU, silently
            assert (auto.provider, auto.device, auto.fell_back) == (provider, "cpu", False)
        # the fallback session computes what a CPU session does
        cpu_codes = EncoderSession(exported / f"encoder.{suffix}").encode(digits)
        np.testing.assert_array_equal(
            EncoderSession(exported / f"encoder.{suffix}", device="cuda", allow_fallback=True).encode(digits), cpu_codes
        )


def test_a_cpu_build_of_onnxruntime_is_named_in_the_refusal_without_its_own_warning(exported, monkeypatch):
    import warnings

    import onnxruntime
    from onnxruntime.capi import onnxruntime_inference_collection as sessions

    # What a CPU build reports, to aekit and to onnxruntime's own provider check (which warns on unknown ones).
    for module in (onnxruntime, sessions.C):
        monkeypatch.setattr(module, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(
            NoCudaError,
            match=r"would run encoder\.onnx on CPUExecutionProvider; this onnxruntime is the CPU build\)\. "
            r"Install onnxruntime-gpu",
        ):
            EncoderSession(exported / "encoder.onnx", device="cuda")
        session = EncoderSession(exported / "encoder.onnx", device="cuda", allow_fallback=True)
    assert session.provider == "CPUExecutionProvider" and session.fell_back
    assert not [w for w in caught if "provider" in str(w.message).lower()]


def test_sessions_refuse_unknown_devices(exported):
    for device in ("gpu", "tpu", ""):
        with pytest.raises(AekitError, match=r"--device '.*' is not one of cpu, cuda, auto"):
            EncoderSession(exported / "encoder.onnx", device=device)
    assert EncoderSession(exported / "encoder.tflite", device="CPU").device == "cpu"


def _edge_commands(exported, tmp_path, encoder="onnx", decoder="onnx"):
    """encode/decode/reconstruct/score on 64 digits, each as (name, args, what it writes)."""
    np.save(tmp_path / "digits.npy", read_mnist(64))
    digits, enc, dec = str(tmp_path / "digits.npy"), str(exported / f"encoder.{encoder}"), str(exported / f"decoder.{decoder}")
    np.savez(
        tmp_path / "codes.npz",
        latents=EncoderSession(enc).encode(read_mnist(64)),
        names=np.arange(64).astype(str),
        latent_dtype=np.asarray("float32"),
    )
    return [
        ("encode", ["encode", "--model", enc, digits, "-o", str(tmp_path / "z.npz")], tmp_path / "z.npz"),
        (
            "decode",
            ["decode", "--model", dec, str(tmp_path / "codes.npz"), "-o", str(tmp_path / "d.npz"), "--format", "npz"],
            tmp_path / "d.npz",
        ),
        (
            "reconstruct",
            ["reconstruct", "--encoder", enc, "--decoder", dec, digits, "-o", str(tmp_path / "rec")],
            tmp_path / "rec",
        ),
        (
            "score",
            ["score", "--encoder", enc, "--decoder", dec, "--calibrate", digits, "--threshold", str(tmp_path / "t.json"), digits],
            tmp_path / "t.json",
        ),
    ]


def test_edge_commands_with_device_cuda_fail_in_one_line_unless_fallback_is_allowed(exported, tmp_path, no_cuda):
    runner = CliRunner()
    for name, args, written in _edge_commands(exported, tmp_path):
        refused = runner.invoke(app, [*args, "--device", "cuda"])
        lines = refused.output.strip().splitlines()
        assert refused.exit_code == 2 and len(lines) == 1, (name, refused.output)
        assert lines[0].startswith("error: --device cuda was asked for, but CUDA is not what runs"), (name, lines)
        assert "on CPUExecutionProvider" in lines[0] and "--allow-fallback" in lines[0] and "Traceback" not in refused.output
        assert not written.exists(), name  # refused before any work

        ran = runner.invoke(app, [*args, "--device", "cuda", "--allow-fallback"])
        assert ran.exit_code == 0, (name, ran.output)
        summary = ran.stdout.strip().splitlines()[-1]
        assert summary.endswith(" on CPUExecutionProvider; --device cuda fell back to the CPU (--allow-fallback)"), (
            name,
            summary,
        )
    assert np.load(tmp_path / "z.npz")["latents"].shape == (64, 16)
    assert np.load(tmp_path / "d.npz")["images"].shape == (64, 28, 28, 1)
    assert len((tmp_path / "rec" / "reconstruction.csv").read_text().splitlines()) == 65
    assert json.loads((tmp_path / "t.json").read_text())["calibration_images"] == 64


def test_edge_commands_say_which_provider_ran(exported, tmp_path):
    runner = CliRunner()
    commands = {name: args for name, args, _ in _edge_commands(exported, tmp_path, encoder="onnx", decoder="tflite")}
    encoded = runner.invoke(app, commands["encode"])
    assert encoded.exit_code == 0 and encoded.stdout.strip().endswith("bytes per image) on CPUExecutionProvider"), encoded.output
    decoded = runner.invoke(app, [*commands["decode"], "--device", "auto"])
    assert decoded.exit_code == 0 and decoded.stdout.strip().endswith(" on XNNPACK/CPU"), decoded.output
    mixed = runner.invoke(app, commands["reconstruct"])
    assert mixed.exit_code == 0 and mixed.stdout.strip().endswith("(encoder on CPUExecutionProvider, decoder on XNNPACK/CPU)")
    scored = runner.invoke(app, [*commands["score"], "--json", "--device", "cuda", "--allow-fallback"])
    assert scored.exit_code == 0, scored.output
    result = json.loads(scored.stdout)
    assert result["images"] == 64 and result["calibration"]["calibration_images"] == 64
    assert {
        part: (r["runtime"], r["provider"], r["device"], r["requested_device"], r["fell_back"])
        for part, r in result["ran_on"].items()
    } == {
        "encoder": ("onnxruntime", "CPUExecutionProvider", "cpu", "cuda", True),
        "decoder": ("litert", "XNNPACK/CPU", "cpu", "cuda", True),
    }
    # LiteRT never runs on CUDA: refused, naming what would run
    refused = runner.invoke(app, [*commands["decode"], "--device", "cuda"])
    assert refused.exit_code == 2 and "LiteRT runs decoder.tflite on XNNPACK/CPU" in refused.output
    assert "Use the .onnx export on the GPU" in refused.output and len(refused.output.strip().splitlines()) == 1


def test_edge_commands_refuse_unknown_devices_in_one_line(exported, tmp_path):
    runner = CliRunner()
    for name, args, written in _edge_commands(exported, tmp_path):
        result = runner.invoke(app, [*args, "--device", "gpu"])
        assert result.exit_code == 2 and result.output.strip().splitlines() == [
            "error: --device 'gpu' is not one of cpu, cuda, auto. Pass --device cpu, or cuda on a GPU machine."
        ], (name, result.output)
        assert not written.exists(), name


def test_decode_never_overwrites_or_merges_and_leaves_nothing_half_written(exported, tmp_path):
    codes = EncoderSession(exported / "encoder.onnx").encode(read_mnist(3))
    decoder = str(exported / "decoder.onnx")
    runner = CliRunner()
    # two images whose names map to one PNG: refused before anything is written
    np.savez(tmp_path / "clash.npz", latents=codes, names=np.asarray(["a.png", "a.jpg", "b"]), latent_dtype=np.asarray("float32"))
    result = runner.invoke(app, ["decode", "--model", decoder, str(tmp_path / "clash.npz"), "-o", str(tmp_path / "out")])
    assert result.exit_code == 2 and "would both be written to a.png" in result.output and not (tmp_path / "out").exists()
    # decoding into a folder that holds files of those names (say, the source images) is refused
    np.savez(
        tmp_path / "ok.npz", latents=codes, names=np.asarray(["x.png", "../../y", ".hidden"]), latent_dtype=np.asarray("float32")
    )
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "x.png").write_bytes(b"the user's original")
    result = runner.invoke(app, ["decode", "--model", decoder, str(tmp_path / "ok.npz"), "-o", str(tmp_path / "photos")])
    assert result.exit_code == 2 and "already holds 1 of the 4 files" in result.output and "--overwrite" in result.output
    assert (tmp_path / "photos" / "x.png").read_bytes() == b"the user's original"
    result = runner.invoke(
        app, ["decode", "--model", decoder, str(tmp_path / "ok.npz"), "-o", str(tmp_path / "photos"), "--overwrite"]
    )
    assert result.exit_code == 0, result.output
    # names become safe file names inside the folder, names.csv records the originals; no staging folder is left behind
    assert sorted(p.name for p in (tmp_path / "photos").iterdir()) == ["_.._y.png", "hidden.png", "names.csv", "x.png"]
    assert (tmp_path / "photos" / "names.csv").read_text().splitlines() == [
        "file,name",
        "_.._y.png,../../y",
        "hidden.png,.hidden",
    ]
    assert not list(tmp_path.glob(".partial-*"))
    # an existing npz is not replaced unless asked
    (tmp_path / "images.npz").write_bytes(b"keep me")
    result = runner.invoke(
        app, ["decode", "--model", decoder, str(tmp_path / "ok.npz"), "-o", str(tmp_path / "images.npz"), "--format", "npz"]
    )
    assert result.exit_code == 2 and (tmp_path / "images.npz").read_bytes() == b"keep me"


def test_an_interrupted_decode_leaves_no_images_under_final_names(exported, tmp_path, monkeypatch):
    import aekit.edge.codes as edge

    codes = EncoderSession(exported / "encoder.onnx").encode(read_mnist(6))
    np.savez(tmp_path / "c.npz", latents=codes, names=np.asarray([str(i) for i in range(6)]), latent_dtype=np.asarray("float32"))
    calls = []
    real = edge.save_png

    def dies_on_the_fourth(image, path):
        calls.append(path)
        if len(calls) == 4:
            raise KeyboardInterrupt
        real(image, path)

    monkeypatch.setattr(edge, "save_png", dies_on_the_fourth)
    with pytest.raises(KeyboardInterrupt):
        edge.decode_file(DecoderSession(exported / "decoder.onnx"), tmp_path / "c.npz", tmp_path / "out", batch_size=2)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".partial-*"))
