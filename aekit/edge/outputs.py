"""Where the edge commands write: output paths checked before any work, staged folders, PNG files and names.

Nothing the user made is replaced unless asked (`--overwrite`), and files are written under
temporary names and renamed, so an interrupted command leaves nothing that looks finished.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from aekit.core.pixels import UINT8_MAX
from aekit.core.sources import IMAGE_SUFFIXES
from aekit.errors import AekitError


def check_output_file(path: Path, suffix: str) -> None:
    """Refuses an output file path that cannot be written, before any work is done."""
    path = Path(path)
    if path.suffix != suffix:
        raise AekitError(f"-o {path}: the output file must end in {suffix}.")
    if path.is_dir():
        raise AekitError(f"-o {path} is a folder; pass a file name ending in {suffix}.")
    check_writable(path.parent)


def check_output_folder(path: Path, holds: str = "the images", flag: str = "-o") -> None:
    """AekitError unless `path` is (or can become) a folder files can be written in; `holds` says what goes there."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise AekitError(f"{flag} {path} is a file; pass a folder for {holds}.")
    check_writable(path)


def check_writable(folder: Path) -> None:
    """AekitError unless files can be created in `folder` (or in the nearest existing folder above it)."""
    import tempfile

    target = Path(folder)
    while not target.exists() and target != target.parent:
        target = target.parent
    if not target.is_dir():
        raise AekitError(f"Cannot write under {folder}: {target} is a file, not a folder. Pass -o a path in a folder.")
    try:
        with tempfile.NamedTemporaryFile(dir=target, prefix=".partial-probe-"):
            pass
    except OSError as exc:
        raise AekitError(f"Cannot write in {target}: {exc.strerror}. Pass -o a folder you can write to.") from None


def _staging_folder(output: Path) -> Path:
    """A new temporary folder beside `output` (same file system, so moving files in is a rename)."""
    import tempfile

    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".partial-{output.name}-", dir=output.parent))
        staging.chmod(0o777 & ~_umask())  # mkdtemp makes it 0700; once renamed it is the user's folder
        return staging
    except OSError as exc:
        raise AekitError(f"Cannot write beside {output}: {exc.strerror}. Pass -o a folder you can write to.") from None


def _umask() -> int:
    """The process umask (read by setting it and putting it back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def check_not_overwriting(path: Path, overwrite: bool, option: str = "-o") -> None:
    """Refuses an existing output file unless `overwrite` (--overwrite) was given."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise AekitError(f"{option} {path} already exists. Pass --overwrite to replace it, or {option} a new file.")


def same_file(a: Path, b: Path) -> bool:
    """True when two paths name one existing file (or the same path once resolved)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(a).resolve() == Path(b).resolve()


def _save_npz(path: Path, **arrays) -> None:
    from aekit.core.runs import atomic_path

    path = Path(path)
    check_output_file(path, ".npz")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def to_uint8(images: np.ndarray) -> np.ndarray:
    return np.clip(np.round(images * UINT8_MAX), 0, UINT8_MAX).astype(np.uint8)


def save_png(image: np.ndarray, path: Path) -> None:
    from PIL import Image

    from aekit.core.runs import atomic_path

    pixels = to_uint8(image)
    with atomic_path(path) as tmp:
        Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(tmp, format="PNG")


def png_name(name: str) -> str:
    """A safe PNG file name for an image name: no folders, no hidden or special characters."""
    stem = str(name).replace("/", "_").replace("\\", "_")
    suffix = Path(stem).suffix
    if suffix.lower() in IMAGE_SUFFIXES:  # photo.jpg -> photo.png
        stem = stem[: -len(suffix)]
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", stem).lstrip(".") or "image"
    return stem + ".png"


def png_names(names: list[str]) -> list[str]:
    """One PNG file name per image name, refusing two images that would share a file."""
    files, seen = [png_name(n) for n in names], {}
    for name, file in zip(names, files):
        if file in seen:
            raise AekitError(
                f"Images {seen[file]!r} and {name!r} would both be written to {file}. "
                "Give the source images distinct names, or decode with --format npz."
            )
        seen[file] = name
    return files


def check_histogram_output(path: str | Path, overwrite: bool = False) -> None:
    """Refuses a histogram path that is not a .png, is a folder, cannot be written, or exists (unless `overwrite`)."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise AekitError(f"--histogram {path}: the picture is a PNG, so the file name must end in .png.")
    if path.is_dir():
        raise AekitError(f"--histogram {path} is a folder; pass a file name ending in .png.")
    check_writable(path.parent)
    check_not_overwriting(path, overwrite, "--histogram")
