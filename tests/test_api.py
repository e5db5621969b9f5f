"""The Python API as a notebook uses it (`import aekit`): the README example, a path source and resume, an array
source and resume, errors a caller catches by kind whose messages name keywords, quiet calls, and a lazy import."""

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from support import REPO, read_mnist

import aekit
from aekit.api.messages import translate
from aekit.errors import AekitError, ExportError, InputError, RunFolderError, UnknownOptionError

# The README's "## Python API" example, copied here so the API is tested whatever the README says.
EXAMPLE = """\
import numpy as np
import aekit

images = np.random.default_rng(0).integers(0, 256, (256, 16, 16, 3), dtype=np.uint8)  # or a path: "photos/"
run = aekit.train(images, epochs=2, filters=(8, 16), latent_dim=8, output="runs/api-demo")
print(run.path, run.metrics["final_val_psnr"])
run.export("onnx")                                   # the same as aekit.export(run, "onnx")
codes = aekit.EncoderSession(run.path / "export" / "encoder.onnx").encode(images)
recon = aekit.DecoderSession(run.path / "export" / "decoder.onnx").decode(codes)
print(codes.shape, recon.shape)                      # (256, 8) (256, 16, 16, 3)
result = aekit.bench(run, batch_sizes=(1, 64), seconds=0.2)
"""
HEAVY = ("tensorflow", "keras", "onnxruntime", "tf2onnx", "ai_edge_litert", "tensorflow_datasets")
TINY = {"filters": (4,), "latent_dim": 4, "batch_size": 32}


def readme_example() -> str | None:
    """The first ```python block after the README's "## Python API" heading (None when there is none)."""
    text = (REPO / "README.md").read_text()
    heading = re.search(r"^## Python API\s*$", text, re.MULTILINE)
    if heading is None:
        return None
    block = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL).search(text, heading.end())
    return block.group(1) if block else None


def run_code(code: str, folder: Path) -> dict:
    """Executes `code` with `folder` as the working directory; its variables afterwards."""
    namespace = {"__name__": "__example__"}
    before = Path.cwd()
    folder.mkdir(parents=True, exist_ok=True)
    os.chdir(folder)
    try:
        exec(compile(code, "README.md (## Python API)", "exec"), namespace)
    finally:
        os.chdir(before)
    return namespace


@pytest.fixture(scope="module")
def example(tmp_path_factory) -> tuple[str, Path, dict]:
    """The README's example (or the copy above when the README has none) run once: (its code, its folder, its variables)."""
    code = readme_example() or EXAMPLE
    folder = tmp_path_factory.mktemp("notebook")
    return code, folder, run_code(code, folder)


def check_example(folder: Path, ns: dict) -> None:
    run, codes, recon, result = ns["run"], ns["codes"], ns["recon"], ns["result"]
    assert isinstance(run, aekit.Run) and run.path == Path("runs/api-demo")
    where = folder / run.path
    # The array became a source the run reloads: saved in the run folder, recorded in config.json.
    with np.load(where / "data.npz") as saved:
        assert np.array_equal(saved["images"], ns["images"])
    record = aekit.run(where).config
    assert record["data"]["source"] == str((where / "data.npz").resolve())
    assert record["data"]["train_images"] + record["data"]["val_images"] == 256
    assert record["model"] == {"input_shape": [16, 16, 3], "filters": [8, 16], "latent_dim": 8}
    metrics = aekit.run(where).metrics
    assert metrics["epochs"] == 2 and {"final_val_psnr", "final_val_mse", "best_val_mse", "params"} <= set(metrics)
    assert 0 < metrics["final_val_psnr"] < 60
    assert [row["epoch"] for row in aekit.run(where).history] == [1, 2]
    assert {"encoder.onnx", "decoder.onnx", "manifest.json"} <= {p.name for p in (where / "export").iterdir()}
    assert codes.shape == (256, 8) and codes.dtype == np.float32
    assert recon.shape == (256, 16, 16, 3) and recon.dtype == np.float32 and 0.0 <= recon.min() <= recon.max() <= 1.0
    # bench: the Keras baseline and the ONNX files, every part at both batch sizes, each row measured.
    assert {(r.runtime, r.part, r.batch_size) for r in result.rows} == {
        (runtime, part, batch)
        for runtime in ("keras", "onnxruntime", *(("openvino",) if importlib.util.find_spec("openvino") else ()))
        for part in ("encoder", "decoder", "roundtrip")
        for batch in (1, 64)
    }
    assert all(r.status != "failed" and r.images_per_sec > 0 and r.latency_ms_p50 > 0 for r in result.rows)
    assert Path(folder / result.output) == where / "bench" and (where / "bench" / "bench.json").is_file()
    assert json.loads((where / "bench" / "bench.json").read_text())["header"]["run"] == str(run.path)


def test_readme_python_api_example_trains_exports_encodes_and_benches(example):
    code, folder, ns = example
    assert readme_example() is not None, "README.md has no ```python block after its '## Python API' heading"
    assert code == readme_example()
    check_example(folder, ns)


def test_the_example_runs_as_copied_here(example, tmp_path):
    code, folder, ns = example
    if code != EXAMPLE:  # the README says something else now: run the copy too
        folder, ns = tmp_path, run_code(EXAMPLE, tmp_path)
    check_example(folder, ns)


def test_export_of_a_run_and_of_its_path_agree_and_a_failed_check_raises_export_error(example, tmp_path):
    _, folder, ns = example
    run = aekit.run(folder / "runs" / "api-demo")
    result = aekit.export(run.path, "onnx", output=tmp_path / "again")
    assert [(e.file, e.status) for e in result.entries] == [("encoder.onnx", "passed"), ("decoder.onnx", "passed")]
    assert result.output == tmp_path / "again" and (tmp_path / "again" / "manifest.json").is_file()
    with pytest.raises(ExportError, match=r"failed their check against Keras") as caught:
        run.export(("onnx",), quantize="int8", min_agreement_db=99.0, output=tmp_path / "strict")
    assert isinstance(caught.value, AekitError)
    assert [e.status for e in caught.value.result.entries] == ["failed", "failed"]
    assert not (tmp_path / "strict" / "encoder_int8.onnx").exists()


@pytest.fixture
def digits(tmp_path) -> Path:
    path = tmp_path / "digits.npz"
    np.savez(path, images=read_mnist(320))
    return path


def test_path_source_trains_and_resume_true_continues_the_same_run(digits, tmp_path):
    first = aekit.train(str(digits), epochs=1, output=tmp_path / "run", **TINY)
    assert first.config["data"]["source"] == str(digits.resolve()) and not (first.path / "data.npz").exists()
    epoch_one = first.history[0]
    again = aekit.train(epochs=2, resume=True, output=tmp_path / "run")
    assert again == first
    assert [row["epoch"] for row in again.history] == [1, 2] and again.history[0] == epoch_one
    assert again.metrics["epochs"] == 2 and again.config["recipe"]["filters"] == [4]
    with pytest.raises(InputError, match=r"was trained with filters=\(4,\), not \(8,\)"):
        aekit.train(digits, epochs=3, resume=tmp_path / "run", filters=(8,))
    assert [row["epoch"] for row in aekit.run(tmp_path / "run").history] == [1, 2]


def test_array_source_resumes_from_its_saved_copy_and_refuses_other_images(tmp_path, capfd):
    images = read_mnist(200)
    seen = []

    class Epochs(aekit.TrainCallback):
        def on_epoch_end(self, epoch, row):
            seen.append(epoch)
            print(f"epoch {epoch}")

    run = aekit.train(images, epochs=1, output=tmp_path / "run", callback=Epochs(), **TINY)
    out, err = capfd.readouterr()
    assert (out, err) == ("epoch 1\n", "")  # quiet: only what the callback printed
    assert run.config["data"]["image_shape"] == [28, 28, 1]
    again = aekit.train(None, epochs=2, output=tmp_path / "run")  # an existing run folder is resumed, as in the CLI
    assert [row["epoch"] for row in again.history] == [1, 2]
    with pytest.raises(InputError, match=r"not on this array; a resumed run keeps its data"):
        aekit.train(images[::-1], epochs=3, output=tmp_path / "run")
    assert aekit.train(images, epochs=3, output=tmp_path / "run").metrics["epochs"] == 3  # the same array is its data


def test_errors_name_keyword_arguments_and_leave_no_folder(tmp_path):
    images = read_mnist(64)
    with pytest.raises(InputError) as caught:
        aekit.train(images, epochs=1, output=tmp_path / "run", filters=(4,), batch_size=512)
    message = str(caught.value)
    assert isinstance(caught.value, ValueError) and "--" not in message
    assert re.match(r"batch_size=512 is larger than the 5\d training images\. Use batch_size=\d+ \(at most", message)
    assert not (tmp_path / "run").exists()  # refused before config.json: the saved array is gone with the folder
    with pytest.raises(UnknownOptionError, match=r"'filter' \(did you mean filters\?\)") as caught:
        aekit.train(images, epochs=1, filter=(4,))
    assert isinstance(caught.value, TypeError) and "latent_dim" in str(caught.value)
    with pytest.raises(InputError, match=r"^latent_dim must be at least 1, got 0\.$"):
        aekit.train(images, epochs=1, latent_dim=0)
    with pytest.raises(InputError, match=r"images_or_path has shape \(64, 28\)"):
        aekit.train(images[:, 0], epochs=1)
    with pytest.raises(RunFolderError, match=r"does not exist"):
        aekit.run(tmp_path / "nothing")
    with pytest.raises(RunFolderError, match=r"resume: .* has no config.json"):
        aekit.train(epochs=1, resume=True, output=tmp_path / "nothing")
    with pytest.raises(InputError, match=r"^batch_sizes must be positive integers"):
        aekit.bench(tmp_path, batch_sizes=(0, 8))
    with pytest.raises(InputError, match=r"^opset=3: aekit here exports opsets 13 to 21"):
        aekit.export(tmp_path, opset=3)  # options are checked before the run is looked for


@pytest.mark.parametrize(
    "flags,keywords",
    [
        (
            "--batch-size 64 is larger than the 50 training images. Use --batch-size 12.",
            "batch_size=64 is larger than the 50 training images. Use batch_size=12.",
        ),
        ("--filters 32,64 do not fit", "filters=(32, 64) do not fit"),
        ("Pass --epochs larger than 2, or --output a new folder.", "Pass epochs larger than 2, or output a new folder."),
        ("--output runs/x is a file", "output='runs/x' is a file"),
        ("--lr-schedule must be cosine or constant", "lr_schedule must be cosine or constant"),
        ("Hold out with --val-from-end.", "Hold out with val_from_end=True."),
        ("Finish it: aekit train --resume runs/x.", "Finish it: aekit.train(resume='runs/x')."),
        (
            "pack again with: aekit data pack SOURCE OUT --val-split 0.2",
            "pack again with: aekit data pack SOURCE OUT --val-split 0.2",
        ),
        ("--workers and --task-index go together", "--workers and --task-index go together"),
    ],
)
def test_translate_turns_flags_into_keywords_and_keeps_command_lines(flags, keywords):
    from aekit.api.messages import TRAIN_FLAGS

    assert translate(flags, TRAIN_FLAGS) == keywords


def test_bench_and_export_flags_become_their_keywords():
    from aekit.api.messages import BENCH_FLAGS, EXPORT_FLAGS

    assert translate("--format tflite cannot be quantized to int8. Use --quantize none.", EXPORT_FLAGS) == (
        "formats='tflite' cannot be quantized to int8. Use quantize='none'."
    )
    assert translate("--batch-sizes 1,8 and --no-keras; --parts encoder,roundtrip", BENCH_FLAGS) == (
        "batch_sizes=(1, 8) and include_keras=False; parts=('encoder', 'roundtrip')"
    )


def test_import_aekit_loads_no_tensorflow_keras_or_onnxruntime():
    script = f"""
import json, sys, time
start = time.perf_counter()
import aekit
seconds = time.perf_counter() - start
heavy = {HEAVY!r}
loaded = lambda: sorted(m for m in sys.modules if m.split(".")[0] in heavy)
after_import = loaded()
names = [aekit.EncoderSession.__name__, aekit.DecoderSession.__name__, aekit.AekitError.__name__, aekit.Run.__name__]
called = [callable(aekit.train), callable(aekit.export), callable(aekit.bench), aekit.TrainConfig.__name__]
print(json.dumps({{"after_import": after_import, "after_names": loaded(), "names": names, "called": called,
                  "version": aekit.__version__, "dir": sorted(set(aekit.__all__) - set(dir(aekit))), "seconds": seconds}}))
"""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["after_import"] == [] and report["after_names"] == [], report
    assert report["names"] == ["EncoderSession", "DecoderSession", "AekitError", "Run"]
    assert report["called"] == [True, True, True, "TrainConfig"]
    assert report["version"] == aekit.__version__ and report["dir"] == []


def test_bench_output_of_the_users_files_needs_overwrite(example, tmp_path, monkeypatch):
    _, folder, ns = example
    monkeypatch.chdir(folder)  # the example named its run by a relative path
    mine = tmp_path / "results"
    mine.mkdir()
    (mine / "bench.csv").write_text("my own figures\n")
    with pytest.raises(AekitError, match=r"overwrite=True") as refused:
        aekit.bench(ns["run"], batch_sizes=(1,), seconds=0.05, parts=("encoder",), output=mine)
    assert "--overwrite" not in str(refused.value) and (mine / "bench.csv").read_text() == "my own figures\n"
    done = aekit.bench(ns["run"], batch_sizes=(1,), seconds=0.05, parts=("encoder",), output=mine, overwrite=True)
    assert done.output == mine and (mine / "bench.json").is_file() and (mine / "bench.csv").read_text() != "my own figures\n"
