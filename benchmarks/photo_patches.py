"""Photo-like RGB patches made on the spot (no downloads), for benchmarks that need images other than digits.

Each patch is a lit scene rather than a pattern: a sky-to-ground colour gradient, a few overlapping
shapes in random colours with soft edges, a texture on some of them (stripes, grain), a highlight and
sensor noise. Saturated regions, dark shadows and smooth areas are all present, as in real photos.

    python benchmarks/photo_patches.py --count 3000 --side 64 --out /tmp/photos.npz
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def photo_patch(rng: np.random.Generator, side: int) -> np.ndarray:
    """One side x side x 3 uint8 patch."""
    y, x = np.mgrid[0:side, 0:side].astype(np.float64) / (side - 1)
    top, bottom = rng.random(3), rng.random(3) * 0.6
    horizon = rng.uniform(0.3, 0.7)
    mix = np.clip((y - horizon) * rng.uniform(3, 12) + 0.5, 0, 1)[..., None]
    image = top * (1 - mix) + bottom * mix
    for _ in range(rng.integers(1, 5)):
        cy, cx = rng.random(2)
        ry, rx = rng.uniform(0.08, 0.45, 2)
        if rng.random() < 0.5:  # an ellipse
            distance = ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2
        else:  # a box, rotated a little
            angle = rng.uniform(-0.6, 0.6)
            u = (x - cx) * np.cos(angle) + (y - cy) * np.sin(angle)
            v = -(x - cx) * np.sin(angle) + (y - cy) * np.cos(angle)
            distance = np.maximum(np.abs(u) / rx, np.abs(v) / ry) ** 2
        inside = np.clip((1 - distance) * rng.uniform(4, 30), 0, 1)[..., None]
        colour = rng.random(3) ** rng.uniform(0.5, 2)
        shade = 1 - 0.5 * rng.random() * (y[..., None] - cy)  # lit from above
        surface = colour * shade
        if rng.random() < 0.4:  # stripes (bricks, fences, fabric)
            freq, phase = rng.uniform(8, 40), rng.random() * 6.28
            direction = rng.uniform(0, 3.14)
            surface = surface * (0.65 + 0.35 * np.sin(freq * (x * np.cos(direction) + y * np.sin(direction)) + phase))[..., None]
        elif rng.random() < 0.4:  # grain (grass, gravel)
            surface = surface * (0.7 + 0.3 * rng.random((side, side, 1)))
        image = image * (1 - inside) + surface * inside
    if rng.random() < 0.3:  # a highlight that clips
        cy, cx = rng.random(2)
        image = image + 1.5 * np.exp(-(((y - cy) ** 2 + (x - cx) ** 2) / 0.01))[..., None]
    image = image * rng.uniform(0.5, 1.3) + rng.normal(0, 0.02, image.shape)  # exposure, sensor noise
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)


def photo_patches(count: int, side: int = 64, seed: int = 0) -> np.ndarray:
    """count x side x side x 3 uint8 patches, the same for the same seed."""
    rng = np.random.default_rng(seed)
    return np.stack([photo_patch(rng, side) for _ in range(count)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--side", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    np.savez(args.out, x=photo_patches(args.count, args.side, args.seed))
    print(f"wrote {args.count:,} patches of {args.side}x{args.side}x3 to {args.out}")


if __name__ == "__main__":
    main()
