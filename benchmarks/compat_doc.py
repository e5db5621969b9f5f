"""The page benchmarks/compat.py writes (docs/compat.md): its text around the tables, and the machine it ran on."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def machine() -> str:
    name = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if "model name" in line), ""
    )
    flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    extras = [f for f in ("avx2", "avx512f", "avx512_vnni", "amx_bf16") if f" {f}" in flags]
    cores = f"{os.cpu_count()} logical cores ({', '.join(extras)})"
    return f"{name or platform.processor()}, {cores}, Python {platform.python_version()}"


def document(overview: str, table: str, why_lines: list[str], record: dict) -> str:
    files, notes, images, threads = record["files"], record["notes"], record["images"], record["threads"]
    variants = sorted({e["variant"] for e in files})
    folders = [
        "- `dynamic/`: what `aekit export` writes by default (a dynamic batch, opset 17);",
        "- `opset21/`: the int8 ONNX files at `--opset 21`;",
    ]
    folders += [
        f"- `{v}/`: the files of `--static-batch {v.removeprefix('static-b')}`;" for v in variants if v.startswith("static-b")
    ]
    if "tflm" in variants:
        folders.append("- `tflm/`: the files of `--format tflm`, run from the bytes of their C array (`.cc`);")
    folders[-1] = folders[-1].rstrip(";") + "."
    listing = "\n".join(folders)
    return f"""# Runtime compatibility of the exported files

Which runtimes a deployer might pick run which of aekit's exported files, and how closely their outputs follow the
Keras model. `benchmarks/compat.py` wrote this page. It trained a tiny digit run (filters 8,16, latent 8, 3 epochs on
the MNIST test digits) and exported every file this aekit makes: {len(files)} files, float32, fp16 and int8, ONNX and
TFLite, each for the encoder, the decoder and the autoencoder, in these folders:

{listing}

It installed each runtime in its own environment (a venv from PyPI, or npm packages for node) and ran every file in
every runtime that reads its format, in a process of its own, on the same {images} real MNIST digits.

- **agreement dB**: the PSNR between the reconstructions with the file in place of its Keras part and Keras' own,
  the measure `aekit export` checks (float32 60 dB, fp16 40 dB, int8 30 dB; 30 dB is about 8 grey levels RMS). An
  encoder's latents go through the Keras decoder. **max abs diff**: the largest difference of the raw outputs
  (latents reach 10-50, pixels 1).
- **img/s (batch)**: images per second over the {images} digits, fed at the batch the file allows (all at once for
  a dynamic batch, one at a time for tflite-micro and the batch-1 files), {threads} threads, on a machine shared
  with other work: compare within a table, not to the last digit. The machine:
  {record["machine"]}.
- A runtime that fails to install is a row saying so. This run took {record["seconds_taken"] / 60:.0f} min, its environments
  and exports made before (they take about 2 GB and a further 10-20 min the first time).

## Re-run

```
.venv/bin/python benchmarks/compat.py                      # the tiny run, every client; rewrites this page
.venv/bin/python benchmarks/compat.py --run runs/<name>    # your run's files
.venv/bin/python benchmarks/compat.py --clients opencv-4.10,openvino --doc ''   # some clients, page untouched
```

The environments (venvs and node packages) and the exports are kept under `~/.cache/aekit-compat/` (or
`$AEKIT_COMPAT_CACHE`): a second run installs nothing, and exports again only when aekit's code has changed.
`compat.json` beside the exports holds every figure; `--again` writes this page from it without running anything.
Flags a newer aekit adds to `aekit export` (`--static-batch`, `--format tflm`) are read from its `--help`.
`tests/test_clients.py` holds tflite-micro and OpenCV 5 (the two clients in the dev install) to this table.

## At a glance

Each cell: the encoder · decoder · autoencoder agreement in dB when the file runs and agrees, **bold** when it runs
but disagrees (below the bound of its precision), ✗ when it does not load or run, – when there is no such file.

{overview}

## What does not run, and why

{chr(10).join(why_lines) or "Everything ran."}
{chr(10).join(["", "Export notes:", ""] + [f"- {n}" for n in notes]) if notes else ""}
## Every file

{table}
"""
