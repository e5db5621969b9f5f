"""The outputs of every exported file on this machine, and their comparison with another machine's.

Run by benchmarks/aarch64_check.sh, on x86-64 natively and on aarch64 under qemu-user, with the edge
install only (numpy, onnxruntime, LiteRT; no TensorFlow):

    python benchmarks/aarch64_outputs.py run EXPORT_DIR IMAGES.npy OUT.npz [--latents FROM.npz]
    python benchmarks/aarch64_outputs.py compare X86.npz ARM.npz [MORE.npz ...] [--float-bound 1e-4]

`run` encodes the images with every encoder file of the export and decodes one set of latent codes
with every decoder file (the float32 encoder.onnx's codes, or those of FROM.npz, so that both machines
decode the very same numbers), one thread each, and saves the raw float32 outputs. `compare` prints a
table of each file's largest difference from the first machine's: int8 files must agree bit for bit,
float32 files within --float-bound. It compares the arrays of `aekit encode`/`decode` .npz files as
well (--exact: all of them bit for bit).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import numpy as np

MODEL_SUFFIXES = (".onnx", ".tflite")
FLOAT_BOUND = 1e-4  # float32 files: a bound two orders of magnitude above what the CPUs differ by (7.6e-6)


def versions() -> dict:
    from importlib import metadata

    found = {"machine": platform.machine(), "python": platform.python_version()}
    for name in ("aekit", "numpy", "onnxruntime", "ai-edge-litert"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def run(export: Path, images_path: Path, out: Path, latents_from: Path | None) -> None:
    from aekit.edge import DecoderSession, EncoderSession

    files = json.loads((export / "manifest.json").read_text())["files"]
    files = [f for f in files if f["file"].endswith(MODEL_SUFFIXES) and f.get("status") == "passed"]
    files.sort(key=lambda f: f["file"])
    images = np.load(images_path)
    outputs = {}
    for entry in (f for f in files if f["role"] == "encoder"):
        outputs[key(entry)] = EncoderSession(export / entry["file"], threads=1).encode(images)
    source = np.load(latents_from) if latents_from is not None else outputs
    latents = source["float32:encoder.onnx"]
    for entry in (f for f in files if f["role"] == "decoder"):
        outputs[key(entry)] = DecoderSession(export / entry["file"], threads=1).decode(latents)
    about = versions()
    np.savez(out, **outputs, _about=json.dumps(about))
    print(f"{about['machine']}: {len(outputs)} files run on {len(images)} images -> {out}")


def key(entry: dict) -> str:
    """The output's name in the .npz: PRECISION:FILE (the precision decides the comparison rule)."""
    return f"{entry['precision']}:{entry['file']}"


def arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {k: data[k] for k in data.files if data[k].dtype.kind in "fiu"}


def compare(paths: list[Path], bound: float, exact_all: bool = False) -> int:
    reference = arrays(paths[0])
    with np.load(paths[0]) as data:
        about = json.loads(str(data["_about"])) if "_about" in data.files else {}
    print(f"reference: {paths[0]}" + (f" ({about['machine']})" if "machine" in about else ""))
    print(f"{'against':<32} {'array':<26} {'dtype':<8} {'max |diff|':>11}  {'rule':<14} verdict")
    failures = 0
    for path in paths[1:]:
        other = arrays(path)
        if set(other) != set(reference):
            print(f"{path.name:<32} arrays differ: {sorted(set(reference) ^ set(other))}")
            failures += 1
            continue
        for name in sorted(reference):
            a, b = reference[name], other[name]
            exact = exact_all or name.startswith("int8:") or a.dtype.kind in "iu"
            if a.shape != b.shape or a.dtype != b.dtype:
                ok, diff = False, float("nan")
            else:
                diff = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0
                ok = np.array_equal(a, b) if exact else diff <= bound
            rule = "bit-identical" if exact else f"<= {bound:g}"
            print(f"{path.name:<32} {name:<26} {str(a.dtype):<8} {diff:>11.3g}  {rule:<14} {'ok' if ok else 'FAILED'}")
            failures += not ok
    print(f"{failures} failed" if failures else "all agree")
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    on = commands.add_parser("run", help="run every exported file here")
    on.add_argument("export", type=Path)
    on.add_argument("images", type=Path)
    on.add_argument("out", type=Path)
    on.add_argument("--latents", type=Path, help="decode the codes of encoder.onnx in this .npz (another machine's run)")
    against = commands.add_parser("compare", help="compare .npz outputs with the first one")
    against.add_argument("paths", type=Path, nargs="+")
    against.add_argument("--float-bound", type=float, default=FLOAT_BOUND)
    against.add_argument("--exact", action="store_true", help="every array bit-identical (outputs of int8 files only)")
    args = parser.parse_args(argv)
    if args.command == "run":
        run(args.export, args.images, args.out, args.latents)
        return 0
    return compare(args.paths, args.float_bound, args.exact)


if __name__ == "__main__":
    sys.exit(main())
