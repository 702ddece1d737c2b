#!/usr/bin/env python3
"""Decoding JPEGs into pretraining's store: PIL draft mode vs a full decode, and the whole-image store's cost.

    python bench/draft_decode.py

Two tables. (1) Draft mode (what the store's workers run) against a full decode, at the store's
side. (2) The whole-image store (``WholeImage``: the whole image squashed to ``store_side`` px, up
to twice the training size) against the centre-cropped store it replaced (``Uint8Transform`` at
the training size), on large non-square JPEGs: decode + resize time per image and bytes per image
in the store (RAM, or GPU memory on CUDA). Images are generated (smooth colour fields with noise,
so the JPEGs have photo-like sizes).
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from sslprobe.images.datasets import ImageDataset
from sslprobe.images.folders import open_images
from sslprobe.images.transforms import Uint8Transform, WholeImage
from sslprobe.pretraining.batches import STORE_SCALE

SHAPES = {"12 MP 4:3 (4000x3000)": (4000, 3000), "12 MP 3:4 (3000x4000)": (3000, 4000),
          "1080p 16:9 (1920x1080)": (1920, 1080), "448x336": (448, 336)}
PER_SHAPE, REPEATS = 4, 3


def _write(root: Path) -> dict[str, range]:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    groups, i = {}, 0
    for name, (w, h) in SHAPES.items():
        start = i
        for _ in range(PER_SHAPE):
            field = np.asarray(Image.fromarray(base).resize((w, h), Image.BICUBIC), dtype=np.int16)
            noisy = (field + rng.integers(-12, 12, (h, w, 1), dtype=np.int16)).clip(0, 255).astype(np.uint8)
            Image.fromarray(noisy).save(root / f"{i:02d}_{w}x{h}.jpg", quality=90)
            i += 1
        groups[name] = range(start, i)
    return groups


def _ms_per_image(fn, idx: range) -> float:
    t = time.perf_counter()
    for _ in range(REPEATS):
        for i in idx:
            fn(i)
    return (time.perf_counter() - t) / (REPEATS * len(idx)) * 1e3


def draft_vs_full(imgs, groups: dict[str, range]) -> None:
    print("(1) draft mode vs full decode, whole-image store")
    for size in (96, 224):
        tf = WholeImage(side=STORE_SCALE * size)
        ds = ImageDataset(imgs, tf, draft=tf.draft, aspect=True)  # what pretraining's workers run
        for name, idx in groups.items():
            a = _ms_per_image(ds.__getitem__, idx)
            b = _ms_per_image(lambda i, tf=tf: tf(imgs.read(i)), idx)
            print(f"  store {tf.side} px (training {size} px), {name}: draft {a:.1f} ms/img, full decode "
                  f"{b:.1f} ms/img, {b / a:.2f}x")


def whole_vs_centre(imgs, groups: dict[str, range]) -> None:
    print("(2) whole-image store vs the centre-cropped store it replaced (both draft-decoded)")
    for size in (96, 224):
        old = Uint8Transform(size=size)
        old_ds = ImageDataset(imgs, old, draft=old.draft)
        for name, idx in groups.items():
            side = min(STORE_SCALE * size, max(size, *SHAPES[name]))  # store_side's rule for a folder of these
            new = WholeImage(side=side)
            new_ds = ImageDataset(imgs, new, draft=new.draft, aspect=True)
            a = _ms_per_image(old_ds.__getitem__, idx)
            b = _ms_per_image(new_ds.__getitem__, idx)
            print(f"  training {size} px, {name}: centre crop {size} px {a:.1f} ms/img, {3 * size * size / 1e3:.0f} kB;"
                  f" whole image {side} px {b:.1f} ms/img, {3 * side * side / 1e3:.0f} kB; "
                  f"time {b / a:.2f}x, RAM {side * side / size ** 2:.1f}x")


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        groups = _write(Path(d))
        imgs = open_images(d)
        draft_vs_full(imgs, groups)
        whole_vs_centre(imgs, groups)


if __name__ == "__main__":
    main()
