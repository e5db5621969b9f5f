"""Faults a real deployment meets on the edge commands: two writers of one output, a model file re-exported
while it is opened, a decode killed mid-move, odd but legal image names, outputs inside the input folder,
and running out of memory.

The exported files are the tiny hand-built ONNX models of test_anomaly (4x4 images, 2 latents, an encoder
with zero weights and a sigmoid decoder), so every command runs in milliseconds.
"""

import os
import types

import numpy as np
import pytest
from PIL import Image
from support import assert_one_line_error, run
from test_anomaly import LATENT, SIDE, _onnx, constant_images, make_export

import aekit.edge.codes as codes
import aekit.edge.outputs as outputs
import aekit.edge.sessions as sessions
from aekit import AekitError
from aekit.edge.anomaly import open_sessions, reconstruct
from aekit.edge.codes import decode_file, load_latents
from aekit.edge.outputs import JOURNAL, NAMES_CSV, PNG_NAME_BYTES, OutputClaim, png_name, png_names
from aekit.edge.runtimes import OnnxRunner
from aekit.edge.sessions import DecoderSession, EncoderSession


def codes_file(path, count, names=None):
    names = [str(i) for i in range(count)] if names is None else names
    latents = np.linspace(-1, 1, count * LATENT, dtype=np.float32).reshape(count, LATENT)
    np.savez(path, latents=latents, names=np.asarray(names), latent_dtype=np.asarray("float32"))
    return path


def png_folder(folder, names):
    """A folder of 4x4 grey PNGs, one per (relative) name."""
    for i, name in enumerate(names):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((SIDE, SIDE), 255 if i % 2 else 0, np.uint8)).save(folder / name, format="PNG")
    return folder


def snapshot(folder):
    """{relative path: bytes} of every file below a folder, hidden ones included."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def export(tmp_path):
    return make_export(tmp_path / "export")


# --- 1. a second writer of the same output fails at once -------------------------------------------


def test_a_second_encode_or_decode_into_a_claimed_output_fails_at_once_and_replaces_nothing(export, tmp_path):
    encoder, decoder = export
    images = constant_images(tmp_path / "images.npy", [0.1, 0.9])
    codes_path = codes_file(tmp_path / "codes.npz", 3)
    npz = tmp_path / "same.npz"
    npz.write_bytes(b"the first writer's result")
    folder = tmp_path / "same"
    commands = [
        (npz, ["encode", images, "--model", encoder, "-o", npz, "--overwrite"]),
        (npz, ["decode", codes_path, "--model", decoder, "-o", npz, "--format", "npz", "--overwrite"]),
        (folder, ["decode", codes_path, "--model", decoder, "-o", folder]),
        (folder, ["reconstruct", images, "--encoder", encoder, "--decoder", decoder, "-o", folder]),
    ]
    for output, args in commands:
        with OutputClaim(output):  # the first writer, still at work
            assert_one_line_error(*run(*args), f"{output} is being written by another aekit command", f"pid {os.getpid()}", "-o")
        assert npz.read_bytes() == b"the first writer's result" and not folder.exists(), args
    # once the first writer is done, the same commands run, and no lock file stays behind
    for _output, args in commands[:3]:
        assert run(*args)[0] == 0, args
    assert sorted(p.name for p in folder.iterdir()) == ["0.png", "1.png", "2.png"]
    assert not list(tmp_path.glob(".*aekit-lock"))


def test_a_claim_released_by_a_killed_holder_is_taken_again(tmp_path):
    claim = OutputClaim(tmp_path / "out.npz").acquire()
    os.close(claim.fd)  # what the kernel does when the holder is killed: the flock goes, the file stays
    claim.fd = None
    with OutputClaim(tmp_path / "out.npz") as again:
        assert again.fd is not None
    assert not (tmp_path / ".out.npz.aekit-lock").exists()


# --- 2. what runs is what was verified -------------------------------------------------------------


def test_a_model_replaced_after_its_check_does_not_run_in_its_place(export, tmp_path, monkeypatch):
    encoder, _ = export
    real = sessions.read_model_bytes

    def read_then_reexport(path):
        content = real(path)
        _onnx(path, np.ones((SIDE * SIDE, LATENT)), "encoder")  # a re-export lands right after the hash check
        return content

    monkeypatch.setattr(sessions, "read_model_bytes", read_then_reexport)
    session = EncoderSession(encoder)
    # the verified file has zero weights: every code is 0; the replacement would give 16 * 1.0 = 16
    np.testing.assert_array_equal(session.encode(np.ones((2, SIDE, SIDE, 1), np.float32)), np.zeros((2, LATENT)))
    monkeypatch.setattr(sessions, "read_model_bytes", real)
    with pytest.raises(AekitError, match="changed since export"):
        EncoderSession(encoder)  # the new file is not the one the manifest vouches for


def test_a_model_that_links_outside_its_folder_is_refused_before_it_is_read(export, tmp_path, monkeypatch):
    encoder, _ = export
    outside = tmp_path / "elsewhere" / "secret.onnx"
    outside.parent.mkdir()
    outside.write_bytes(encoder.read_bytes())  # even the very bytes the manifest vouches for
    encoder.unlink()
    encoder.symlink_to(outside)
    read = []
    monkeypatch.setattr(sessions, "read_model_bytes", lambda path: read.append(path) or b"")
    import aekit.core.manifest as manifest_module

    monkeypatch.setattr(manifest_module, "sha256_of", lambda path: read.append(path) or "")
    with pytest.raises(AekitError, match="symbolic link .* outside its export folder"):
        EncoderSession(encoder)
    code, lines = run("encode", "--model", encoder, str(tmp_path), "-o", tmp_path / "codes.npz")
    assert_one_line_error(code, lines, "symbolic link", "outside its export folder")
    assert read == []  # neither read nor hashed


# --- 3. a decode killed while moving into an existing folder ---------------------------------------


def moves_that_die_after(monkeypatch, folder, k):
    """os.replace raising KeyboardInterrupt on the (k+1)-th move of a decoded file into `folder`, once."""
    real, moved, died = os.replace, [], []

    def replace(src, dst, *args, **kwargs):
        into = os.path.dirname(os.path.abspath(dst)) == str(folder) and ".partial-" in str(src)
        if into and not str(src).endswith(outputs.REPLACED) and outputs.REPLACED not in str(src):
            if len(moved) == k and not died:
                died.append(dst)
                raise KeyboardInterrupt
            moved.append(dst)
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    return moved


@pytest.fixture
def photos(tmp_path):
    """An existing folder the user made: their notes, and an image named like one decode writes."""
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "notes.txt").write_text("the user's notes")
    (folder / "2.png").write_bytes(b"the user's own 2.png")
    return folder


def test_an_interrupted_move_into_an_existing_folder_is_rolled_back(export, tmp_path, photos, monkeypatch):
    before = snapshot(photos)
    moved = moves_that_die_after(monkeypatch, photos, 3)
    with pytest.raises(KeyboardInterrupt):
        decode_file(DecoderSession(export[1]), codes_file(tmp_path / "c.npz", 6), photos, overwrite=True)
    assert len(moved) == 3  # three images were under their final names when it died
    assert snapshot(photos) == before  # ... and are gone again; the replaced 2.png is back, the notes untouched


def test_a_decode_killed_mid_move_is_rolled_back_by_the_next_decode(export, tmp_path, photos, monkeypatch):
    before = snapshot(photos)
    decoder, path = DecoderSession(export[1]), codes_file(tmp_path / "c.npz", 6)
    with monkeypatch.context() as killed:  # a SIGKILL: no rollback, no clean-up
        moves_that_die_after(killed, photos, 4)
        killed.setattr(outputs, "recover_folder", lambda folder: False)
        killed.setattr(codes, "shutil", types.SimpleNamespace(rmtree=lambda *a, **k: None))
        with pytest.raises(KeyboardInterrupt):
            decode_file(decoder, path, photos, overwrite=True)
    assert (photos / JOURNAL).is_file()  # the half-moved folder says it is unfinished
    assert (photos / "2.png").read_bytes() != b"the user's own 2.png"  # 2.png was replaced before the kill
    # the next decode puts the folder back as it was, then does its own job (here: refuses the clash)
    assert_one_line_error(*run("decode", path, "--model", export[1], "-o", photos), "already holds 1 of the 6", "--overwrite")
    assert snapshot(photos) == before
    # and with --overwrite it finishes: all six images, the user's notes untouched, nothing hidden left
    assert run("decode", path, "--model", export[1], "-o", photos, "--overwrite")[0] == 0
    assert sorted(p.name for p in photos.iterdir()) == [*(f"{i}.png" for i in range(6)), "notes.txt"]
    assert (photos / "notes.txt").read_text() == "the user's notes"


# --- 4. odd but legal image names ------------------------------------------------------------------


def test_non_ascii_names_are_kept_and_long_names_stay_distinct_and_short_enough():
    assert png_names(["猫.png", "狗.png", "café.jpg", "Ölfeld 1.png"]) == ["猫.png", "狗.png", "café.png", "Ölfeld 1.png"]
    assert png_name("a/b\\c\x00d\n.png") == "a_b_c_d_.png"
    long_a, long_b = "sub/" + "a" * 246 + ".png", "sub/" + "a" * 245 + "b.png"
    files = png_names([long_a, long_b, "猫" * 200])
    assert len(set(files)) == 3 and all(len(f.encode()) <= PNG_NAME_BYTES for f in files)
    assert files[0].startswith("sub_aaaa") and files[0] == png_name(long_a)  # the same name maps the same way every time


def test_encode_and_decode_round_trip_unicode_and_250_character_names(export, tmp_path):
    encoder, decoder = export
    long_name = "a" * 246 + ".png"  # 250 characters, in a sub-folder
    names = ["猫.png", "狗.png", f"sub/{long_name}", f"sub/{'a' * 245}b.png"]
    source = png_folder(tmp_path / "images", names)
    assert run("encode", source, "--model", encoder, "-o", tmp_path / "codes.npz")[0] == 0
    code, lines = run("decode", tmp_path / "codes.npz", "--model", decoder, "-o", tmp_path / "out")
    assert code == 0, lines
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert len(files) == 5 and "猫.png" in files and "狗.png" in files and NAMES_CSV in files
    recorded = dict(line.split(",", 1) for line in (tmp_path / "out" / NAMES_CSV).read_text().splitlines()[1:])
    stored = load_latents(tmp_path / "codes.npz")[1]
    assert sorted(stored) == sorted(names) and sorted(recorded.values()) == sorted(names[2:])  # the two sub/ names
    assert set(recorded) <= set(files) and all(len(f.encode()) <= PNG_NAME_BYTES for f in files)


# --- 5. outputs never land inside an input folder --------------------------------------------------


def test_reconstruct_refuses_an_output_inside_its_input_folder(export, tmp_path):
    encoder, decoder = export
    source = png_folder(tmp_path / "images", ["0.png", "1.png"])
    for output in (source, source / "results", source / "." / "deeper" / ".."):
        code, lines = run("reconstruct", source, "--encoder", encoder, "--decoder", decoder, "-o", output, "--overwrite")
        assert_one_line_error(code, lines, "inside the image folder", "Pass -o a folder outside it")
    with pytest.raises(AekitError, match="inside the image folder"):
        reconstruct(*open_sessions(encoder, decoder), source, source / "results")
    assert sorted(p.name for p in source.iterdir()) == ["0.png", "1.png"]
    assert run("reconstruct", source, "--encoder", encoder, "--decoder", decoder, "-o", tmp_path / "results")[0] == 0


# --- 6. out of memory is one line ------------------------------------------------------------------


def out_of_memory(*args, **kwargs):
    raise MemoryError


def test_memory_errors_in_the_edge_commands_are_one_line(export, tmp_path, monkeypatch):
    import aekit.edge.anomaly as anomaly

    encoder, decoder = export
    images = constant_images(tmp_path / "images.npy", [0.1, 0.9])
    codes_path = codes_file(tmp_path / "codes.npz", 3)
    cases = [
        (codes, "iter_images", ["encode", images, "--model", encoder, "-o", tmp_path / "c.npz"]),
        (codes, "load_latents", ["decode", codes_path, "--model", decoder, "-o", tmp_path / "out"]),
        (anomaly, "score_path", ["reconstruct", images, "--encoder", encoder, "--decoder", decoder, "-o", tmp_path / "r"]),
        (sessions, "read_model_bytes", ["decode", codes_path, "--model", decoder, "-o", tmp_path / "out"]),
    ]
    for module, name, args in cases:
        with monkeypatch.context() as patch:
            patch.setattr(module, name, out_of_memory)
            assert_one_line_error(*run(*args), "Out of memory", "--batch-size")
    assert not (tmp_path / "c.npz").exists() and not (tmp_path / "out").exists() and not (tmp_path / "r").exists()


def test_reading_a_model_or_a_failed_onnxruntime_allocation_out_of_memory_is_an_aekit_error(export, monkeypatch):
    monkeypatch.setattr(type(export[0]), "read_bytes", out_of_memory)
    with pytest.raises(AekitError, match="Out of memory while reading"):
        EncoderSession(export[0])
    monkeypatch.undo()
    runner = OnnxRunner(export[0])

    class Starved:
        def run(self, *args):
            raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to allocate memory for requested buffer")

    runner.session = Starved()
    with pytest.raises(AekitError, match="Out of memory while running encoder.onnx on 2 inputs"):
        runner.run(np.zeros((2, SIDE, SIDE, 1), np.float32))
    # a big batch runs as one single-threaded stream per thread: the failure inside a stream is the same one line
    import onnxruntime

    monkeypatch.setattr(onnxruntime.InferenceSession, "run", lambda self, *args, **kwargs: Starved().run())
    with pytest.raises(AekitError, match="Out of memory while running encoder.onnx on (16|32) inputs"):
        OnnxRunner(export[0], threads=2).run(np.zeros((32, SIDE, SIDE, 1), np.float32))
