"""Images from files, without TensorFlow: IDX files, .npz/.npy arrays and PNG/JPEG folders.

Training (`aekit.data.loading`) and the edge (`aekit.edge`) both read files here, whole or in batches
through the same per-format code, so a file that trains also encodes and the other way round.

The rules, one set for every caller:
- A path is a folder (IDX files when it holds any `*idx3-ubyte*` file, else PNG/JPEG images,
  searched recursively), a `.npz`/`.npy` file, or an `*idx3-ubyte[.gz]` file. Suffixes and
  names are compared case-insensitively (`.PNG`, `.NPZ`, `T10K-IMAGES-IDX3-UBYTE`).
- Image suffixes: IMAGE_SUFFIXES (.png, .jpg, .jpeg). The first image of a folder picks the mode:
  grey ("L") when it is L, 1, I or I;16, else RGB; every later image is converted to it. All images
  must share one size. 16-bit grey images are scaled to 8 bits (value * 255 / 65535, rounded).
- gzip is recognised by its magic bytes (1f 8b), never by the `.gz` suffix.
- In a .npz the images are the array named after a colon (`file.npz:x_test`), else the first of
  NPZ_KEYS present (images, x, x_train, x_test), else the only array it holds (`npz_choice` says
  which was read when there were several). Training also validates on x_test when x_train and
  x_test are both there and no array is named.
- Arrays are N x H x W or N x H x W x C with C in 1, 3, 4, integer or float: never pickles or
  object arrays, never an empty side.
- Nothing is allocated from a header alone: IDX and .npy headers are checked against the file's
  size (for gzip/zip, against what the compressed size can hold, then against what was read), and
  images larger than MAX_IMAGE_PIXELS are refused before they are decoded.

    >>> for names, batch in iter_images("digits/", batch_size=256): ...   # (n, H, W, C) stored dtype
    >>> images = read_images("t10k-images-idx3-ubyte.gz")                 # (10000, 28, 28, 1) uint8
"""

from __future__ import annotations

import gzip
import math
import re
import warnings
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from numpy.lib import format as npy_format

from aekit.core.pixels import PixelRange
from aekit.errors import AekitError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# Pillow's modes for 16-bit grey PNGs (and "I", how some versions open them): scaled to 8 bits, not clipped.
WIDE_GREY_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
GREY_MODES = ("L", "1", *WIDE_GREY_MODES)
WIDE_MAX = 65535
IDX_IMAGE_MAGIC = 2051  # 0x0803: unsigned bytes, 3 dimensions
IDX_NAME = "idx3-ubyte"
IDX_HEADER_BYTES = 16
NPZ_KEYS = ("images", "x", "x_train", "x_test")
# Pillow's own default bomb limit (89.5 megapixels); aekit's models take images far smaller.
MAX_IMAGE_PIXELS = 1024 * 1024 * 1024 // 4 // 3
# Deflate cannot compress better than about 1032:1, so a gzip or zip member of n bytes holds
# at most this many times n once decompressed; a header promising more is lying.
MAX_DEFLATE_RATIO = 1032
GZIP_MAGIC = b"\x1f\x8b"
READ_CHUNK = 1 << 24
ACCEPTED = "a folder of PNG/JPEG images or IDX files, a .npz/.npy file, or an *-images-idx3-ubyte[.gz] file"

Batches = Iterator[tuple[list[str], np.ndarray]]


# --- whole sources -------------------------------------------------------------


def split_key(source: str | Path) -> tuple[str, str | None]:
    """("file.npz", "key") for "file.npz:key"; any other source unchanged, with None."""
    text = str(source)
    head, sep, key = text.rpartition(":")
    if sep and key and head.lower().endswith(".npz") and not any(c in key for c in "/\\") and not Path(text).exists():
        return head, key
    return text, None


def npz_choice(source: str | Path) -> str | None:
    """When a .npz holding several arrays is read without naming one: which array is read, in words."""
    text, key = split_key(source)
    path = Path(text)
    if key is not None or path.suffix.lower() != ".npz" or not path.is_file():
        return None
    keys = npz_keys(path)
    if len(keys) < 2:
        return None
    chosen = _pick_npz_key(path, keys)
    others = ", ".join(k for k in keys if k != chosen)
    return f"read array {chosen!r} of {path.name} (it also holds {others}); name another with {path.name}:KEY"


def source_kind(path: str | Path) -> str:
    """What a path holds: "idx", "npz", "npy" or "images" (a folder of PNG/JPEG files).

    Raises AekitError for a missing path or a file aekit does not read.
    """
    text, key = split_key(path)
    if key is not None:
        path = Path(text)
        if not path.is_file():
            raise AekitError(f"{path} does not exist. Pass {ACCEPTED}.")
        return "npz"
    path = Path(path)
    if not path.exists():
        raise AekitError(f"{path} does not exist. Pass {ACCEPTED}.")
    if path.is_dir():
        return "idx" if idx_files(path) else "images"
    suffix = path.suffix.lower()
    if suffix in (".npz", ".npy"):
        return suffix[1:]
    if IDX_NAME in path.name.lower():
        return "idx"
    raise AekitError(f"Don't know how to read {path}. Pass {ACCEPTED}.")


def iter_images(path: str | Path, batch_size: int | None = 256) -> Batches:
    """Yields (names, images) batches from any source, never holding more than one batch.

    Args:
        path: an image folder, an IDX file or folder, a .npz or a .npy file.
        batch_size: images per batch; None yields each file's images as one batch.

    Yields:
        (names, images): images (n, H, W, C) in their stored dtype; names are paths relative
        to an image folder, else indices ("0", "1", ...) across the source.

    Example:
        >>> [len(b) for _, b in iter_images("../shared/data/mnist", 4096)]
        [4096, 4096, 1808]
    """
    kind = source_kind(path)
    text, key = split_key(path)
    path = Path(text)
    if batch_size is not None and batch_size < 1:
        raise AekitError(f"--batch-size must be at least 1, got {batch_size}.")
    if kind == "idx":
        start = 0
        for file in idx_files(path):
            for names, images in iter_idx(file, batch_size):
                yield [str(start + int(n)) for n in names], images
            start += idx_header_of(file)[0]
    elif kind == "images":
        yield from iter_image_folder(path, batch_size)
    else:
        yield from iter_array(path, batch_size, key)


def read_images(path: str | Path) -> np.ndarray:
    """Every image of a source as one (N, H, W, C) array in its stored dtype (see `iter_images`)."""
    batches = [images for _, images in iter_images(path, None)]
    if not batches:
        raise AekitError(f"{path} holds no images. Pass a non-empty source.")
    return batches[0] if len(batches) == 1 else np.concatenate(batches)


def source_range(path: str | Path, batch_size: int = 256) -> PixelRange:
    """The dtype kind and pixel extremes of a whole source, read batch by batch (for aekit.core.pixels' rule)."""
    found = None
    for names, images in iter_images(path, batch_size):
        if images.dtype.kind == "f" and not np.isfinite(images).all():
            bad = names[int(np.argmin(np.isfinite(images.reshape(len(images), -1)).all(axis=1)))]
            raise AekitError(f"Image {bad!r} of {path} has NaN or infinite pixels. Drop or repair it.")
        part = PixelRange.of(images, f"The images of {path}")
        found = part if found is None else found.merge(part)
    if found is None:
        raise AekitError(f"{path} holds no images. Pass a non-empty source.")
    return found


def count_images(path: str | Path) -> int | None:
    """How many images `iter_images` will yield, from headers only; None when it cannot tell cheaply."""
    try:
        kind = source_kind(path)
        if kind == "images":
            return len(image_files(path))
        if kind == "idx":
            return sum(idx_header_of(file)[0] for file in idx_files(path))
        text, key = split_key(path)
        return int(_array_header(Path(text), key)[0][0])
    except (AekitError, IndexError):
        return None


def check_shape(shape: tuple[int, ...], what: str) -> tuple[int, int, int, int]:
    """(N, H, W, C) for an N x H x W or N x H x W x C shape; AekitError for anything else."""
    shape = tuple(int(d) for d in shape)
    full = (*shape, 1) if len(shape) == 3 else shape
    if len(full) != 4 or full[-1] not in (1, 3, 4):
        raise AekitError(
            f"{what} has shape {shape}; expected N x H x W or N x H x W x C with C in 1, 3, 4. "
            "Reshape the array to (N, H, W) or (N, H, W, C)."
        )
    if full[1] == 0 or full[2] == 0:
        raise AekitError(
            f"{what} has shape {shape}: its images are {full[1]}x{full[2]} pixels. Save images with both sides >= 1."
        )
    return full


def as_nhwc(images: np.ndarray, what: str) -> np.ndarray:
    """The images with a channel axis added to N x H x W; AekitError for other shapes (see `check_shape`)."""
    check_shape(images.shape, what)
    return images[..., None] if images.ndim == 3 else images


# --- IDX -------------------------------------------------------------------------


def idx_files(path: str | Path) -> list[Path]:
    """The IDX image files directly in a folder (name containing idx3-ubyte, any case), sorted; a file: itself."""
    path = Path(path)
    if not path.is_dir():
        return [path]
    return sorted(p for p in path.iterdir() if IDX_NAME in p.name.lower() and p.is_file())


def idx_header(header: bytes, path: Path) -> tuple[int, int, int]:
    """(count, rows, cols) from the 16-byte header of an IDX3 image file, with sane image sides."""
    if len(header) < IDX_HEADER_BYTES:
        raise AekitError(f"IDX file {path} is truncated ({len(header)} bytes, a header is 16). Re-download it.")
    magic, count, rows, cols = (int(v) for v in np.frombuffer(header[:IDX_HEADER_BYTES], ">u4"))
    if magic != IDX_IMAGE_MAGIC:
        raise AekitError(
            f"{path} is not an IDX image file (magic {magic}, expected {IDX_IMAGE_MAGIC}). "
            "Point at the *-images-idx3-ubyte files."
        )
    if rows == 0 or cols == 0 or rows * cols > MAX_IMAGE_PIXELS:
        raise AekitError(
            f"IDX file {path} claims {rows}x{cols}-pixel images; expected 1 to {MAX_IMAGE_PIXELS:,} pixels each. "
            "The header is corrupt; re-download the file."
        )
    return count, rows, cols


def idx_header_of(path: Path) -> tuple[int, int, int]:
    """(count, rows, cols) of an IDX file, reading only its header (through gzip when compressed)."""
    with _open_idx(path) as f:
        return idx_header(_read_up_to(f, IDX_HEADER_BYTES, path), path)


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX3 image file (optionally gzip-compressed) as (N, H, W, 1) uint8."""
    batches = [images for _, images in iter_idx(path, None)]  # exhausted, so the trailing-bytes check runs
    return batches[0] if batches else np.zeros((0, *idx_header_of(Path(path))[1:], 1), np.uint8)


def iter_idx(path: str | Path, batch_size: int | None = 256) -> Batches:
    """(indices, (n, H, W, 1) uint8) batches of an IDX3 file; None: all images in one batch."""
    path = Path(path)
    with _open_idx(path) as f:
        count, rows, cols = idx_header(_read_up_to(f, IDX_HEADER_BYTES, path), path)
        size, expected = rows * cols, count * rows * cols
        on_disk = path.stat().st_size
        if not isinstance(f, gzip.GzipFile) and on_disk - IDX_HEADER_BYTES != expected:
            raise _idx_size_error(path, on_disk - IDX_HEADER_BYTES, count, rows, cols)
        if isinstance(f, gzip.GzipFile) and expected > on_disk * MAX_DEFLATE_RATIO:  # before decompressing anything
            raise _idx_size_error(path, f"at most {on_disk * MAX_DEFLATE_RATIO:,}", count, rows, cols)
        step = batch_size or max(count, 1)
        for start in range(0, count, step):
            n = min(step, count - start)
            raw = _read_up_to(f, n * size, path)
            if len(raw) != n * size:
                raise _idx_size_error(path, start * size + len(raw), count, rows, cols)
            yield [str(i) for i in range(start, start + n)], np.frombuffer(raw, np.uint8).reshape(n, rows, cols, 1)
        if _read_up_to(f, 1, path):
            raise _idx_size_error(path, f"more than {expected:,}", count, rows, cols)


def _open_idx(path: Path):
    try:
        with open(path, "rb") as f:
            compressed = f.read(2) == GZIP_MAGIC
        return gzip.open(path, "rb") if compressed else open(path, "rb")
    except OSError as exc:
        raise AekitError(f"Cannot read IDX file {path}: {exc}. Check the path and its permissions.") from None


def _read_up_to(f, nbytes: int, path: Path) -> bytes | bytearray:
    """Up to `nbytes` from f, in chunks: memory grows with what the file really holds, not with a header's claim."""
    try:
        if nbytes <= READ_CHUNK:
            return f.read(nbytes)
        out = bytearray()
        while len(out) < nbytes:
            chunk = f.read(min(READ_CHUNK, nbytes - len(out)))
            if not chunk:
                break
            out += chunk
        return out
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise AekitError(f"Cannot read IDX file {path}: {_first_line(exc)}. Re-download or re-extract it.") from None
    except MemoryError:
        raise AekitError(f"IDX file {path} does not fit in memory. Free memory or pass a smaller file.") from None


def _idx_size_error(path: Path, held, count: int, rows: int, cols: int) -> AekitError:
    held = f"{held:,}" if isinstance(held, int) else held
    return AekitError(
        f"IDX file {path} holds {held} pixel bytes but its header promises {count}x{rows}x{cols} = "
        f"{count * rows * cols:,}. The file is corrupt or truncated; re-download it."
    )


# --- .npy / .npz -------------------------------------------------------------------


def npz_keys(path: str | Path) -> list[str]:
    """The array names in a .npz file (as numpy.savez named them)."""
    return list(_npz_members(Path(path)))


def read_array(path: str | Path, key: str | None = None) -> np.ndarray:
    """The images of a .npy, or of a .npz (array `key`, or the one NPZ_KEYS picks), as (N, H, W, C) in memory."""
    array, what = _open_array(Path(path), key)
    try:
        return as_nhwc(np.array(array) if isinstance(array, np.memmap) else array, what)
    except MemoryError:
        raise AekitError(f"{what} does not fit in memory. Free memory or pass a smaller file.") from None


def iter_array(path: str | Path, batch_size: int | None = 256, key: str | None = None) -> Batches:
    """(indices, (n, H, W, C)) batches of a .npy (memory-mapped, read batch by batch) or .npz array."""
    array, what = _open_array(Path(path), key)
    array = as_nhwc(array, what)
    step = batch_size or max(len(array), 1)
    for start in range(0, len(array), step):
        stop = min(start + step, len(array))
        yield [str(i) for i in range(start, stop)], np.asarray(array[start:stop])


def _open_array(path: Path, key: str | None) -> tuple[np.ndarray, str]:
    """(array, what) once the header passed: a memory map of a .npy, the loaded member of a .npz."""
    shape, _, what, member = _array_header(path, key)
    check_shape(shape, what)
    try:
        if member is None:
            return np.load(path, mmap_mode="r", allow_pickle=False), what
        with zipfile.ZipFile(path) as archive, archive.open(member) as f:
            return npy_format.read_array(f, allow_pickle=False), what
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise AekitError(f"Cannot read {what}: {_first_line(exc)}. Re-save it with numpy.save/savez.") from None
    except MemoryError:
        raise AekitError(f"{what} does not fit in memory. Free memory or pass a smaller file.") from None


def _array_header(path: Path, key: str | None = None) -> tuple[tuple[int, ...], np.dtype, str, str | None]:
    """(shape, dtype, what, zip member or None) of a .npy file or a .npz array, checked against the bytes that can back it."""
    member, what = None, str(path)
    try:
        if path.suffix.lower() == ".npy":
            with open(path, "rb") as f:
                shape, dtype = _npy_header(f, what)
                offset, available = f.tell(), path.stat().st_size
        else:
            members = _npz_members(path)
            key = key or _pick_npz_key(path, list(members))
            if key not in members:
                raise AekitError(
                    f"{path} has no array {key!r} (it holds {', '.join(members)}). Save it with numpy.savez(path, {key}=...)."
                )
            member, what = members[key], f"{path}:{key}"
            with zipfile.ZipFile(path) as archive:
                info = archive.getinfo(member)
                _check_zip_member(info, what)
                with archive.open(info) as f:
                    shape, dtype = _npy_header(f, what)
                    offset, available = f.tell(), info.file_size
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise AekitError(f"Cannot read {what}: {_first_line(exc)}. Re-save it with numpy.save/savez.") from None
    needed = offset + math.prod(shape) * dtype.itemsize
    if needed > available:
        raise AekitError(
            f"{what} holds {available - offset:,} data bytes but its header promises {shape} {dtype} = "
            f"{needed - offset:,}. The file is corrupt or truncated; save it again with numpy.save/savez."
        )
    return shape, dtype, what, member


def _npy_header(f, what: str) -> tuple[tuple[int, ...], np.dtype]:
    version = npy_format.read_magic(f)
    if version not in ((1, 0), (2, 0)):
        raise ValueError(f"unsupported .npy format version {version}")
    read = npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
    shape, _, dtype = read(f)
    if dtype.hasobject or dtype.kind not in "uif":
        held = "Python objects (a pickle, which aekit never loads)" if dtype.hasobject else f"{dtype} values"
        raise AekitError(
            f"{what} holds {held}; expected uint8 or float pixels. "
            "Save a numeric array, e.g. numpy.save(path, images.astype('uint8'))."
        )
    return tuple(int(d) for d in shape), dtype


def _npz_members(path: Path) -> dict[str, str]:
    """Array name -> member name, as numpy.load names a .npz's arrays."""
    try:
        with zipfile.ZipFile(path) as archive:
            return {name.removesuffix(".npy"): name for name in archive.namelist()}
    except (OSError, zipfile.BadZipFile, EOFError, ValueError) as exc:
        raise AekitError(f"Cannot read {path}: {_first_line(exc)}. Re-save it with numpy.savez.") from None


def _pick_npz_key(path: Path, keys: list[str]) -> str:
    key = next((k for k in NPZ_KEYS if k in keys), keys[0] if len(keys) == 1 else None)
    if key is None:
        held = f"holds arrays {', '.join(keys)}" if keys else "holds no arrays"
        raise AekitError(
            f"{path} {held}; expected one named {', '.join(NPZ_KEYS)}. Save the images with numpy.savez(path, images=...)."
        )
    return key


def _check_zip_member(info: zipfile.ZipInfo, what: str) -> None:
    """Refuses a member whose declared size its compressed bytes cannot hold (a lying directory or a zip bomb)."""
    if info.compress_type == zipfile.ZIP_STORED:
        ceiling = info.compress_size
    elif info.compress_type == zipfile.ZIP_DEFLATED:
        ceiling = (info.compress_size + 64) * MAX_DEFLATE_RATIO
    else:
        raise AekitError(
            f"{what} is compressed with zip method {info.compress_type}; expected stored or deflated. "
            "Save it with numpy.savez or numpy.savez_compressed."
        )
    if info.file_size > ceiling:
        raise AekitError(
            f"{what} claims {info.file_size:,} bytes from {info.compress_size:,} compressed. "
            "The archive is corrupt; save it again with numpy.savez."
        )


# --- image folders --------------------------------------------------------------------


def image_files(folder: str | Path) -> list[Path]:
    """The PNG/JPEG files below a folder (any case of suffix), in a stable order."""
    return sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def read_image(file: Path, mode: str | None = None) -> tuple[np.ndarray, str]:
    """One image as uint8 (H, W) grey or (H, W, 3) colour; `mode` None picks it from this image.

    Returns the pixels and the mode, so a caller reads every later image the same way.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(file) as image:
                width, height = image.size
                if width * height > MAX_IMAGE_PIXELS or width == 0 or height == 0:
                    raise AekitError(
                        f"Image {file} is {width}x{height} pixels; expected 1 to {MAX_IMAGE_PIXELS:,} pixels. "
                        "Resize or remove it."
                    )
                mode = mode or ("L" if image.mode in GREY_MODES else "RGB")
                if image.mode in WIDE_GREY_MODES:  # Pillow's convert("L") would clip every value above 255 to white
                    pixels = _wide_grey_to_uint8(np.asarray(image), file)
                    return (pixels if mode == "L" else np.repeat(pixels[..., None], 3, axis=-1)), mode
                return np.asarray(image.convert(mode)), mode
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(found[1]):,} pixels" if found else "too large for Pillow"
        raise AekitError(f"Image {file} is {size}; expected 1 to {MAX_IMAGE_PIXELS:,} pixels. Resize or remove it.") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, zlib.error) as exc:
        raise AekitError(f"Cannot read image {file}: {_first_line(exc)}. Remove or replace it.") from None
    except MemoryError:
        raise AekitError(f"Image {file} does not fit in memory. Resize or remove it.") from None


def _wide_grey_to_uint8(pixels: np.ndarray, file: Path) -> np.ndarray:
    """16-bit grey pixels (0-65535) as uint8, value * 255 / 65535 rounded; AekitError for values outside 16 bits."""
    values = pixels.astype(np.int64)
    if values.size and (values.min() < 0 or values.max() > WIDE_MAX):
        raise AekitError(
            f"Image {file} holds grey values from {values.min()} to {values.max()}; expected 16-bit values (0-{WIDE_MAX}). "
            "Save it as an 8- or 16-bit PNG."
        )
    return ((values * 255 + WIDE_MAX // 2) // WIDE_MAX).astype(np.uint8)


def read_image_folder(folder: str | Path) -> np.ndarray:
    """Every PNG/JPEG below a folder as one (N, H, W, C) uint8 array."""
    return [images for _, images in iter_image_folder(folder, None)][0]


def iter_image_folder(folder: str | Path, batch_size: int | None = 256) -> Batches:
    """(relative names, (n, H, W, C) uint8) batches of the images below a folder; None: one batch."""
    folder = Path(folder)
    files = image_files(folder)
    if not files:
        raise AekitError(f"{folder} contains no IDX files and no {'/'.join(IMAGE_SUFFIXES)} images. Pass {ACCEPTED}.")
    mode, first = None, None
    step = batch_size or len(files)
    for start in range(0, len(files), step):
        chunk, arrays = files[start : start + step], []
        for file in chunk:
            pixels, mode = read_image(file, mode)
            if first is None:
                first = (file, pixels.shape)
            elif pixels.shape != first[1]:
                raise AekitError(
                    f"Image {file.relative_to(folder)} is {pixels.shape[1]}x{pixels.shape[0]} but "
                    f"{first[0].relative_to(folder)} is {first[1][1]}x{first[1][0]} (width x height). "
                    "Resize all images to one size."
                )
            arrays.append(pixels)
        images = np.stack(arrays)
        yield [str(p.relative_to(folder)) for p in chunk], images[..., None] if images.ndim == 3 else images


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
