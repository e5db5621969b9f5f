import gzip
import io
import os
import struct
import subprocess
import sys
import zipfile
import zlib

import numpy as np
import pytest
from PIL import Image
from support import MNIST_DIR, read_mnist

from aekit import AekitError
from aekit.core.sources import count_images, iter_images, read_array, read_idx, read_image, read_images
from aekit.data.loading import load_data

IDX_GZ = MNIST_DIR / "t10k-images-idx3-ubyte.gz"


def idx_bytes(images: np.ndarray, count: int | None = None, rows: int | None = None, cols: int | None = None) -> bytes:
    n, h, w = images.shape
    return (
        struct.pack(">IIII", 2051, n if count is None else count, h if rows is None else rows, w if cols is None else cols)
        + images.tobytes()
    )


def png_claiming(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header says width x height (CRC fixed), as a decompression bomb would."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, format="PNG")
    raw = bytearray(buffer.getvalue())
    raw[16:24] = struct.pack(">II", width, height)
    raw[29:33] = struct.pack(">I", zlib.crc32(bytes(raw[12:29])))
    return bytes(raw)


def test_every_format_reads_the_same_whole_and_in_batches(tmp_path):
    digits = read_mnist(10)
    np.save(tmp_path / "d.npy", digits)
    np.savez_compressed(tmp_path / "d.npz", images=digits)
    (tmp_path / "d-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(digits)))
    (tmp_path / "png").mkdir()
    for i, digit in enumerate(digits):
        Image.fromarray(digit).save(tmp_path / "png" / f"{i:02}.png")
    for name in ("d.npy", "d.npz", "d-images-idx3-ubyte.gz", "png"):
        whole = read_images(tmp_path / name)
        batches = list(iter_images(tmp_path / name, batch_size=4))
        assert whole.shape == (10, 28, 28, 1) and whole.dtype == np.uint8, name
        assert [len(names) for names, _ in batches] == [4, 4, 2] and count_images(tmp_path / name) == 10, name
        np.testing.assert_array_equal(np.concatenate([b for _, b in batches]), whole)
        np.testing.assert_array_equal(whole[..., 0], digits)
    assert batches[0][0][:2] == ["00.png", "01.png"] and list(iter_images(tmp_path / "d.npy", 4))[1][0][0] == "4"


def test_training_and_the_edge_read_a_file_identically(tmp_path):
    np.savez(tmp_path / "d.npz", x=read_mnist(20))
    splits = load_data(str(tmp_path / "d.npz"), val_split=0.25)
    whole = read_images(tmp_path / "d.npz")
    np.testing.assert_array_equal(splits.train, whole[splits.split.train])
    np.testing.assert_array_equal(splits.val, whole[splits.split.val])


def test_gzip_is_known_by_its_magic_bytes_not_its_suffix(tmp_path):
    digits = read_mnist(3)
    (tmp_path / "a-images-idx3-ubyte").write_bytes(gzip.compress(idx_bytes(digits)))  # compressed, no .gz
    (tmp_path / "b-images-idx3-ubyte.gz").write_bytes(idx_bytes(digits))  # plain, named .gz
    for name in ("a-images-idx3-ubyte", "b-images-idx3-ubyte.gz"):
        np.testing.assert_array_equal(read_idx(tmp_path / name)[..., 0], digits)
        assert [len(b) for _, b in iter_images(tmp_path / name, 2)] == [2, 1]


def test_suffixes_and_idx_names_are_case_insensitive(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((2, 4, 4), np.uint8))
    os.rename(tmp_path / "a.npy", tmp_path / "A.NPY")
    (tmp_path / "T10K-IMAGES-IDX3-UBYTE").write_bytes(idx_bytes(np.ones((3, 4, 4), np.uint8)))
    (tmp_path / "imgs").mkdir()
    Image.new("L", (4, 4), 9).save(tmp_path / "imgs" / "a.PNG", format="PNG")
    Image.new("L", (4, 4), 7).save(tmp_path / "imgs" / "b.JPEG", format="JPEG")
    assert read_images(tmp_path / "A.NPY").shape == (2, 4, 4, 1)
    assert read_images(tmp_path / "T10K-IMAGES-IDX3-UBYTE").shape == (3, 4, 4, 1)
    assert read_images(tmp_path).shape == (3, 4, 4, 1)  # a folder with an IDX file is an IDX source
    assert read_images(tmp_path / "imgs")[:, 0, 0, 0].tolist() == [9, 7]


def test_npz_key_order_is_images_x_x_train_x_test_then_the_only_array(tmp_path):
    def first_pixel(**arrays):
        np.savez(tmp_path / "d.npz", **{k: np.full((1, 2, 2), v, np.uint8) for k, v in arrays.items()})
        return int(read_array(tmp_path / "d.npz")[0, 0, 0, 0])

    assert first_pixel(x_test=0, x_train=1, x=2, images=3) == 3
    assert first_pixel(x_test=0, x_train=1, x=2) == 2
    assert first_pixel(x_test=0, x_train=1) == 1
    assert first_pixel(x_test=0) == 0
    assert first_pixel(pixels=5) == 5  # the only array, whatever its name
    with pytest.raises(AekitError, match="holds arrays a, b; expected one named images, x, x_train, x_test"):
        first_pixel(a=0, b=1)


def test_the_first_image_picks_grey_or_colour_for_the_folder(tmp_path):
    Image.new("RGB", (4, 4), (30, 60, 90)).save(tmp_path / "a.png")
    Image.new("L", (4, 4), 50).save(tmp_path / "b.png")
    images = read_images(tmp_path)
    assert images.shape == (2, 4, 4, 3) and images[1, 0, 0].tolist() == [50, 50, 50]
    assert read_image(tmp_path / "b.png")[1] == "L" and read_image(tmp_path / "a.png")[1] == "RGB"


# --- hostile files: one-line AekitErrors, nothing allocated from a header alone -----------------


def test_truncated_or_garbled_gzip_is_a_one_line_error(tmp_path):
    raw = IDX_GZ.read_bytes()
    (tmp_path / "cut-images-idx3-ubyte.gz").write_bytes(raw[: len(raw) // 2])
    for read in (read_idx, lambda p: list(iter_images(p, 256))):
        with pytest.raises(AekitError, match=r"Cannot read IDX file .*cut-images.*ended before.*Re-download"):
            read(tmp_path / "cut-images-idx3-ubyte.gz")
    (tmp_path / "junk-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b" + os.urandom(64))
    with pytest.raises(AekitError, match="Cannot read IDX file"):
        read_idx(tmp_path / "junk-images-idx3-ubyte.gz")


def test_idx_headers_that_lie_are_checked_against_the_file(tmp_path):
    few = np.zeros((2, 28, 28), np.uint8)
    (tmp_path / "raw-images-idx3-ubyte").write_bytes(idx_bytes(few, count=2**31))
    with pytest.raises(AekitError, match=r"holds 1,568 pixel bytes but its header promises 2147483648x28x28"):
        read_idx(tmp_path / "raw-images-idx3-ubyte")
    (tmp_path / "bomb-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(few, count=2**31)))
    with pytest.raises(AekitError, match=r"holds at most [\d,]+ pixel bytes but its header promises 2147483648x28x28"):
        list(iter_images(tmp_path / "bomb-images-idx3-ubyte.gz", 256))
    noise = np.frombuffer(os.urandom(2 * 784), np.uint8).reshape(2, 28, 28)  # incompressible: passes the ratio bound
    (tmp_path / "short-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(noise, count=50)))
    with pytest.raises(AekitError, match=r"holds 1,568 pixel bytes .* 50x28x28 = 39,200\. The file is corrupt or truncated"):
        read_idx(tmp_path / "short-images-idx3-ubyte.gz")
    (tmp_path / "huge-images-idx3-ubyte").write_bytes(idx_bytes(few, rows=2**31, cols=2**31))
    with pytest.raises(AekitError, match=r"claims 2147483648x2147483648-pixel images"):
        read_idx(tmp_path / "huge-images-idx3-ubyte")
    (tmp_path / "flat-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((3, 0, 0), np.uint8)))
    with pytest.raises(AekitError, match=r"claims 0x0-pixel images"):
        read_idx(tmp_path / "flat-images-idx3-ubyte")


def test_huge_degenerate_and_mixed_images_are_refused(tmp_path):
    (tmp_path / "bomb.png").write_bytes(png_claiming(20_000, 20_000))  # 400 megapixels
    with pytest.raises(AekitError, match=r"bomb.png is 400,000,000 pixels; expected 1 to 89,478,485 pixels"):
        read_image(tmp_path / "bomb.png")
    (tmp_path / "empty.png").write_bytes(png_claiming(0, 0))
    with pytest.raises(AekitError, match=r"Cannot read image .*empty.png"):
        read_image(tmp_path / "empty.png")
    (tmp_path / "bomb.png").unlink(), (tmp_path / "empty.png").unlink()
    Image.new("L", (4, 4)).save(tmp_path / "a.png")
    (tmp_path / "sub").mkdir()
    Image.new("L", (6, 4)).save(tmp_path / "sub" / "b.png")
    for read in (read_images, lambda p: list(iter_images(p, 1))):
        with pytest.raises(AekitError, match=r"Image sub/b.png is 6x4 but a.png is 4x4 .*Resize all images"):
            read(tmp_path)


def test_arrays_with_pickles_lies_or_empty_sides_are_refused(tmp_path):
    np.save(tmp_path / "objects.npy", np.array([None, 1], dtype=object), allow_pickle=True)
    np.savez(tmp_path / "objects.npz", images=np.array([{"a": 1}], dtype=object))
    for name in ("objects.npy", "objects.npz"):
        with pytest.raises(AekitError, match="holds Python objects .*never loads"):
            read_images(tmp_path / name)
    np.save(tmp_path / "ok.npy", np.zeros((3, 4, 4), np.uint8))
    lying = (tmp_path / "ok.npy").read_bytes().replace(b"(3, 4, 4)", b"(9, 4, 4)")
    (tmp_path / "lie.npy").write_bytes(lying)
    with zipfile.ZipFile(tmp_path / "lie.npz", "w") as archive:  # valid zip, lying array header inside
        archive.writestr("images.npy", lying)
    for name in ("lie.npy", "lie.npz"):
        with pytest.raises(AekitError, match=r"holds 48 data bytes but its header promises \(9, 4, 4\) uint8 = 144"):
            list(iter_images(tmp_path / name, 2))
    np.save(tmp_path / "flat.npy", np.zeros((3, 0, 4), np.uint8))
    with pytest.raises(AekitError, match=r"shape \(3, 0, 4\): its images are 0x4 pixels"):
        read_images(tmp_path / "flat.npy")
    assert count_images(tmp_path / "lie.npy") is None and count_images(tmp_path / "missing") is None


def test_the_edge_imports_neither_tensorflow_nor_the_training_data_module():
    code = "import sys, aekit.core.sources, aekit.edge; print('tensorflow' in sys.modules, 'aekit.data.loading' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]
