#!/usr/bin/env python3
"""The near-duplicate threshold of the study's guard, measured: how far does a resized, re-encoded copy move an
image's pHash, and how close do two distinct images of one class come?

For every image: copies resized to 0.75× and to 2× (Lanczos), each saved as JPEG quality 80, and the original
saved as JPEG 80 alone; the Hamming distance between each copy's hash and the original's. Against it: the
distance between every two distinct images of the same class (the pairs most likely to be called copies by
mistake) and of different classes. Prints each distribution's quantiles and, for thresholds 0–16, the share
of copies caught and of same-class pairs wrongly called copies. Variants of the hash (the shrink
filter; the DC row and column kept, as imagehash does; the pHash library's 7×7 mean filter) are
measured beside sslprobe's. Then the two-stage test the guard uses (sslprobe.images.phash.near_copies):
for hash thresholds 8–14, the thumbnails' mean |Δ| of the copies and of the distinct pairs among the
candidates, and what each thumbnail threshold catches and lets through.

    python bench/phash_threshold.py                                   # the package's 2,500-image sample
    python bench/phash_threshold.py --idx ~/.cache/fashion-mnist-deb/usr/share/datasets/fashion-mnist
    python bench/phash_threshold.py --speed                           # near_pairs and hashing rates

With --idx, Fashion-MNIST's 10,000 test images (the IDX files of Debian's dataset-fashion-mnist).
"""
from __future__ import annotations

import argparse
import gzip
import io
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from sslprobe.images import phash as ph

VARIANTS = {"sslprobe (lanczos, 1-8)": (Image.Resampling.LANCZOS, 1, False),
            "7x7 mean filter first (the pHash library), 1-8": (Image.Resampling.LANCZOS, 1, True),
            "box shrink, 1-8": (Image.Resampling.BOX, 1, False),
            "bilinear shrink, 1-8": (Image.Resampling.BILINEAR, 1, False),
            "lanczos, 0-7 (DC kept, imagehash)": (Image.Resampling.LANCZOS, 0, False)}
COPIES = {"jpeg80": (1.0, 80), "0.75x+jpeg80": (0.75, 80), "2x+jpeg80": (2.0, 80)}


def load(idx: str | None) -> tuple[np.ndarray, np.ndarray]:
    if idx is None:
        d = np.load(Path(ph.__file__).parents[1] / "sample" / "fashion_mnist_sample.npz")
        return np.concatenate([d["train_images"], d["test_images"]]), np.concatenate([d["train_labels"],
                                                                                        d["test_labels"]])
    with gzip.open(Path(idx).expanduser() / "t10k-images-idx3-ubyte.gz") as f:
        x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(Path(idx).expanduser() / "t10k-labels-idx1-ubyte.gz") as f:
        y = np.frombuffer(f.read(), np.uint8, offset=8).astype(np.int64)
    return x, y


def variant_hash(im: Image.Image, resample: Image.Resampling, first: int, mean_filter: bool) -> int:
    grey = im.convert("L").filter(ImageFilter.BoxBlur(3)) if mean_filter else im.convert("L")  # BoxBlur(3): 7×7
    x = np.asarray(grey.resize((ph.SIDE, ph.SIDE), resample), dtype=np.float64)
    low = (ph._DCT @ x @ ph._DCT.T)[first:first + ph.LOW, first:first + ph.LOW].ravel()
    return int(np.packbits(low > np.median(low)).view(">u8")[0])


def copy_of(im: Image.Image, scale: float, quality: int) -> Image.Image:
    if scale != 1.0:
        im = im.resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.convert("RGB").save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue()))


def pair_distances(h: np.ndarray, y: np.ndarray, *, same: bool, limit: int) -> np.ndarray:
    """Distances of every distinct pair within a class (same) or across classes (a seeded sample)."""
    if same:
        parts = []
        for c in np.unique(y):
            k = h[y == c][:limit]
            d = np.bitwise_count(k[:, None] ^ k[None, :])
            parts.append(d[np.triu_indices(len(k), 1)])
        return np.concatenate(parts)
    rng = np.random.default_rng(0)
    i, j = rng.integers(len(h), size=(2, 2_000_000))
    keep = y[i] != y[j]
    return np.bitwise_count(h[i[keep]] ^ h[j[keep]])


def quantiles(d: np.ndarray) -> str:
    qs = (0.0, 0.0001, 0.001, 0.01, 0.05, 0.5, 0.95, 0.99, 0.999, 1.0)
    return " ".join(f"q{q:g}={np.quantile(d, q):.0f}" for q in qs)


def measure(x: np.ndarray, y: np.ndarray, *, limit: int) -> None:
    images = [Image.fromarray(a) for a in x]
    copies = {name: [copy_of(im, *how) for im in images] for name, how in COPIES.items()}
    for variant, how in VARIANTS.items():
        h = np.array([variant_hash(im, *how) for im in images], dtype=np.uint64)
        moved = {name: np.bitwise_count(h ^ np.array([variant_hash(c, *how) for c in cs], np.uint64))
                 for name, cs in copies.items()}
        same, other = pair_distances(h, y, same=True, limit=limit), pair_distances(h, y, same=False, limit=limit)
        print(f"\n== {variant}: {len(h)} images, {len(same):,} same-class pairs, {len(other):,} other-class pairs")
        for name, d in moved.items():
            print(f"  copy {name:13s} {quantiles(d)}")
        print(f"  same class         {quantiles(same)}")
        print(f"  other class        {quantiles(other)}")
        every = np.concatenate(list(moved.values()))
        print("  T  copies caught   same-class pairs called copies")
        for t in range(0, 17, 2):
            print(f"  {t:2d}  {np.mean(every <= t):8.4%}   {np.mean(same <= t):.5%} ({int(np.sum(same <= t)):,})")


def two_stage(x: np.ndarray) -> None:
    images = [Image.fromarray(a) for a in x]
    f = [ph.fingerprint_of(im) for im in images]
    hashes = np.array([g.hash for g in f], np.uint64)
    thumbs = np.frombuffer(b"".join(g.thumb for g in f), np.uint8).reshape(len(f), -1).astype(np.int16)
    bits, levels = [], []
    for how in COPIES.values():
        c = [ph.fingerprint_of(copy_of(im, *how)) for im in images]
        bits.append(np.bitwise_count(hashes ^ np.array([g.hash for g in c], np.uint64)))
        levels.append(np.abs(thumbs - np.frombuffer(b"".join(g.thumb for g in c), np.uint8).reshape(len(c), -1))
                      .mean(1))
    bits, levels = np.concatenate(bits), np.concatenate(levels)
    pairs = len(x) * (len(x) - 1) // 2
    print(f"\n== two stages: copies' thumbnail mean |Δ| {quantiles(levels)}")
    for t in (8, 10, 12, 14):
        i, j, _ = ph.hamming_pairs(hashes, hashes, within=t)
        i, j = i[i < j], j[i < j]
        d = np.abs(thumbs[i] - thumbs[j]).mean(1)
        print(f"  hash ≤ {t}: {len(i):,} distinct candidate pairs, their thumbnail |Δ| {quantiles(d)}")
        for m in (2.5, 3.0, 3.5, 4.0, 4.5):
            print(f"    thumbnail ≤ {m}: copies caught {np.mean((bits <= t) & (levels <= m)):.4%}, "
                  f"distinct pairs passing {int(np.sum(d <= m))} of {pairs:,}")


def speed() -> None:
    rng = np.random.default_rng(0)
    q = rng.integers(0, 2**63, size=20_000, dtype=np.uint64)
    p = rng.integers(0, 2**63, size=80_000, dtype=np.uint64)
    t0 = time.perf_counter()
    i, _, _ = ph.hamming_pairs(q, p, within=ph.NEAR_BITS)
    dt = time.perf_counter() - t0
    print(f"hamming_pairs: {len(q):,} × {len(p):,} = {len(q) * len(p):.2e} pairs in {dt:.2f} s "
          f"({dt / (len(q) * len(p)) * 1e9:.2f} ns/pair), {len(i)} found")
    for size, fmt in (((28, 28), "PNG"), ((640, 480), "JPEG")):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).save(buf, fmt)
        data = buf.getvalue()
        n = 200 if fmt == "JPEG" else 2000
        t0 = time.perf_counter()
        for _ in range(n):
            ph.fingerprint(data)
        print(f"fingerprint of a {size[0]}×{size[1]} {fmt}: {(time.perf_counter() - t0) / n * 1e3:.2f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--idx", help="folder with Fashion-MNIST's t10k IDX files (default: the package's sample)")
    ap.add_argument("--per-class", type=int, default=1000, help="images per class in the same-class pairs")
    ap.add_argument("--speed", action="store_true", help="time hamming_pairs and the fingerprint instead")
    a = ap.parse_args()
    if a.speed:
        speed()
        return
    x, y = load(a.idx)
    measure(x, y, limit=a.per_class)
    two_stage(x)


if __name__ == "__main__":
    main()
