"""Where the edge commands write: output paths checked before any work, claims, staged folders, PNG files and names.

Nothing the user made is replaced unless asked (`--overwrite`), and files are written under
temporary names and renamed, so an interrupted command leaves nothing that looks finished. An
output is claimed while it is written (`OutputClaim`), so a second command writing the same
path fails at once instead of silently replacing the first one's result. Images moved into an
existing folder are journaled (`move_into_folder`): an interrupted move is rolled back, at once
or by the next decode into that folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import unicodedata
from pathlib import Path

import numpy as np

from aekit.core.pixels import UINT8_MAX
from aekit.core.runs import FileLock
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


class OutputClaim(FileLock):
    """Holds an output path (file or folder) for one command: a second writer of that path fails at once.

    The claim is an advisory `flock` on `.<name>.aekit-lock` beside the output (created with O_CREAT),
    recording the holder's pid. The kernel drops it when the process ends, however it ends, so a killed
    command never blocks the next one. Checks that the output does not exist yet belong inside the claim.

        >>> with OutputClaim(Path("codes.npz")):
        ...     check_not_overwriting(...); write(...)
    """

    def __init__(self, output: Path):
        self.output = Path(output)
        super().__init__(self.output.parent / f".{self.output.name}.aekit-lock")

    def busy(self, holder: str) -> str:
        return (
            f"{self.output} is being written by another aekit command ({holder}). Wait for it to finish, or pass -o another path."
        )

    def cannot_create(self, exc: OSError) -> str:
        return f"Cannot claim {self.output}: {exc.strerror} ({self.path}). Pass -o a path in a folder you can write to."


def check_not_inside(source: Path, output: Path, what: str = "the results") -> None:
    """Refuses an output folder that is, or is inside, the image folder being read: its files would join the images."""
    source, output = Path(source), Path(output)
    if not source.is_dir():
        return
    folder, target = source.resolve(), output.resolve()
    if target == folder or folder in target.parents:
        raise AekitError(
            f"-o {output} is inside the image folder {source} being read, so {what} would be read as images by the next "
            "encode or train of that folder. Pass -o a folder outside it."
        )


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


PNG_NAME_BYTES = 200  # a file name's limit is 255 bytes (NAME_MAX); keep room for a temporary-name prefix
NAMES_CSV = "names.csv"  # file,name: decode's record of every image whose file name is not its own name


def png_name(name: str) -> str:
    """A safe PNG file name for an image name: no folders, no hidden files, no control characters, not too long.

    Letters and digits of any script are kept (猫.png stays 猫.png); path separators and control characters
    become "_", leading dots go. A name longer than PNG_NAME_BYTES (UTF-8) is cut and given "-" and 10 hex
    digits of the full name's sha256, so long names that share a beginning stay distinct.
    """
    stem = str(name)
    suffix = Path(stem.replace("\\", "/")).suffix
    if suffix.lower() in IMAGE_SUFFIXES:  # photo.jpg -> photo.png
        stem = stem[: -len(suffix)]
    stem = "".join("_" if c in "/\\" or unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp") else c for c in stem)
    stem = stem.lstrip(".") or "image"
    if len((stem + ".png").encode("utf-8")) > PNG_NAME_BYTES:
        tag = "-" + hashlib.sha256(str(name).encode("utf-8", "surrogatepass")).hexdigest()[:10]
        room = PNG_NAME_BYTES - len((tag + ".png").encode())
        stem = stem.encode("utf-8")[:room].decode("utf-8", "ignore") + tag
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


def renamed(names: list[str], files: list[str]) -> list[tuple[str, str]]:
    """(file, name) of every image whose PNG name is not its own name with the suffix made .png: what NAMES_CSV records."""
    return [(file, str(name)) for name, file in zip(names, files) if file != Path(str(name)).stem + ".png"]


def names_csv(pairs: list[tuple[str, str]]) -> str:
    """The NAMES_CSV text: a header, then one file,name row per renamed image."""
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["file", "name"])
    writer.writerows(pairs)
    return buffer.getvalue()


# --- moving staged files into an existing folder, all or nothing ----------------------------------------------

JOURNAL = ".aekit-move-journal.json"  # in the output folder while files are being moved in
REPLACED = ".replaced"  # in the staging folder: the files --overwrite replaced, until the move is done


def staging_inside(folder: Path) -> Path:
    """A new hidden temporary folder inside an existing `folder` (same file system: every move is a rename)."""
    import tempfile

    try:
        return Path(tempfile.mkdtemp(prefix=".partial-", dir=folder))
    except OSError as exc:
        raise AekitError(f"Cannot write in {folder}: {exc.strerror}. Pass -o a folder you can write to.") from None


def move_into_folder(staging: Path, output: Path, files: list[str]) -> None:
    """Moves `files` from `staging` into the existing folder `output`, all or nothing.

    A journal in `output` lists the files before the first move and goes after the last; each file that
    is replaced is first moved aside into `staging`. Interrupted (Ctrl-C, a full disk), the move is rolled
    back at once; killed, the journal stays, and `recover_folder` (run by the next decode into `output`)
    rolls it back. Files of `output` not in `files` are never touched.
    """
    from aekit.core.runs import write_json

    staging, output = Path(staging), Path(output)
    write_json(output / JOURNAL, {"staging": staging.name, "files": files})
    try:
        (staging / REPLACED).mkdir()
        for file in files:
            if (output / file).exists():
                os.replace(output / file, staging / REPLACED / file)
            os.replace(staging / file, output / file)
        (output / JOURNAL).unlink()
    except BaseException:
        recover_folder(output)
        raise


def recover_folder(output: Path) -> bool:
    """Rolls back a move into `output` that was interrupted (its journal is there); True when there was one.

    Each file is put back as it was: a replaced file returns from the staging folder; a file that did
    not exist before is removed only when it is the moved one (its staged copy is gone). Call it while
    holding the output's OutputClaim.
    """
    output = Path(output)
    journal = output / JOURNAL
    try:
        record = json.loads(journal.read_text())
        staging = output / str(record["staging"])
        files = [str(f) for f in record["files"]]
    except FileNotFoundError:
        return False
    except (OSError, ValueError, KeyError, TypeError):
        raise AekitError(
            f"{journal} records an interrupted decode into {output} but cannot be read. Check the folder's images, "
            "then delete the journal."
        ) from None
    if staging.parent != output or not staging.name.startswith(".partial-"):
        raise AekitError(f"{journal} names a staging folder outside {output}. Check the folder's images, then delete it.")
    for file in files:
        if "/" in file or file.startswith("."):
            continue
        backup, staged, final = staging / REPLACED / file, staging / file, output / file
        if backup.exists():
            os.replace(backup, final)
        elif not staged.exists() and final.is_file() and staging.is_dir():
            final.unlink()  # moved in by the interrupted decode, and nothing stood there before
    journal.unlink()
    shutil.rmtree(staging, ignore_errors=True)
    return True


def check_histogram_output(path: str | Path, overwrite: bool = False) -> None:
    """Refuses a histogram path that is not a .png, is a folder, cannot be written, or exists (unless `overwrite`)."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise AekitError(f"--histogram {path}: the picture is a PNG, so the file name must end in .png.")
    if path.is_dir():
        raise AekitError(f"--histogram {path} is a folder; pass a file name ending in .png.")
    check_writable(path.parent)
    check_not_overwriting(path, overwrite, "--histogram")
