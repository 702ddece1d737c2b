#!/usr/bin/env python3
"""JPEG decode to the pretraining store size: PIL draft mode (sslprobe's workers) vs a full decode.

    python bench/draft_decode.py
"""
from __future__ import annotations

import tempfile
import time

import numpy as np
from PIL import Image

from sslprobe.images.datasets import ImageDataset
from sslprobe.images.folders import open_images
from sslprobe.images.transforms import Uint8Transform

with tempfile.TemporaryDirectory() as d:
    base = np.random.default_rng(0).integers(0, 255, (375, 500, 3), dtype=np.uint8)
    for i, (h, w) in enumerate([(3000, 4000)] * 8 + [(375, 500)] * 8):
        Image.fromarray(base).resize((w, h)).save(f"{d}/{i:02d}_{w}x{h}.jpg", quality=90)
    imgs = open_images(d)
    for size in (96, 224):
        full = Uint8Transform(size=size)
        draft = ImageDataset(imgs, full, draft=full.draft)  # what pretraining's workers run
        for label, idx in (("12 MP (4000x3000)", range(8)), ("500x375", range(8, 16))):
            t = time.perf_counter()
            for i in idx:
                for _ in range(3):
                    draft[i]
            a = (time.perf_counter() - t) / 24
            t = time.perf_counter()
            for i in idx:
                for _ in range(3):
                    full(imgs.read(i))
            b = (time.perf_counter() - t) / 24
            print(f"store {size} px, {label}: draft {a * 1e3:.1f} ms/img, "
                  f"full decode {b * 1e3:.1f} ms/img, {b / a:.2f}x")
