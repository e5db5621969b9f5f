"""Build the MNIST sample shipped inside the package (aekit/sample/).

The sample lets `aekit train` (and `make demo`) run with no network. It is the
first N images of the real MNIST test set (default: all 10,000, 1.6 MB; on them
the 5-epoch demo reaches a val PSNR of 20.6 dB), kept in the original IDX format,
gzip-compressed with a fixed mtime so rebuilding gives the same bytes.

    python scripts/build_sample.py ../shared/data/mnist [N]
"""

import gzip
import sys
from pathlib import Path

import numpy as np

IDX_MAGIC = {"images": 2051, "labels": 2049}


def read_idx(path: Path) -> np.ndarray:
    raw = gzip.decompress(path.read_bytes())
    ndim = raw[3]
    shape = np.frombuffer(raw, ">i4", count=ndim, offset=4)
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def write_idx(path: Path, magic: int, array: np.ndarray) -> None:
    header = np.array([magic, *array.shape], dtype=">i4").tobytes()
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9, mtime=0) as out:
        out.write(header + array.tobytes())


def main(source: str, count: str | None = None) -> None:
    source_dir = Path(source)
    target = Path(__file__).resolve().parent.parent / "aekit" / "sample"
    images = read_idx(source_dir / "t10k-images-idx3-ubyte.gz")[: int(count) if count else None]
    labels = read_idx(source_dir / "t10k-labels-idx1-ubyte.gz")[: len(images)]
    n = len(images)
    write_idx(target / "mnist-sample-images-idx3-ubyte.gz", IDX_MAGIC["images"], images)
    write_idx(target / "mnist-sample-labels-idx1-ubyte.gz", IDX_MAGIC["labels"], labels)
    print(f"wrote {n} images to {target}; label counts {np.bincount(labels).tolist()}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
