"""A perceptual hash of an image with a small thumbnail beside it, and the near copies between two sets of them.

pHash (Zauner 2010, "Implementation and Benchmarking of Perceptual Image Hash Functions", §4.1; the
pHash library's ``ph_dct_imagehash``): the greyscale image shrunk to 32×32, its 2-D DCT-II, the 8×8
lowest frequencies without the DC row and column (coefficients 1–8 × 1–8), each bit 1 where the
coefficient is above their median — 64 bits that a resize or a re-encode barely moves. Two deviations
from the library: its 7×7 mean filter is left out — applied at the image's own size it blurs a 21-px
copy more than a 56-px one, so on Fashion-MNIST's sample a 0.75× copy moved 20 bits (median) with it
and 2 without (bench/phash_threshold.py), while the antialiased Lanczos shrink already averages each
output pixel over its source area — and the DCT is the orthonormal one (a scale changes no bit).
``imagehash.phash`` differs too: it keeps the DC row and column (coefficients 0–7).

64 sign bits cannot tell a copy from a distinct image of the same silhouette: on Fashion-MNIST's
10,000 test images a copy resized to 0.75× or 2× and saved as JPEG quality 80 (or only re-saved) lies
within 6 bits of its original in 99 % of cases (10 bits: 99.9 %), but 0.1 % of all pairs of distinct
images of one class lie within 6 bits too — two plain sneakers. So a near copy is two tests
(docs/study.md, "The near-duplicate guard"): the hashes within ``NEAR_BITS`` (the candidates: 99.9 % of
the copies), then the 8×8 greyscale thumbnails (the 32×32 shrink averaged over 4×4 blocks) within
``NEAR_LEVELS`` grey levels of mean absolute difference. Both together catch 99.5 % of those copies
and pass 80 of the 50 million distinct pairs (1.6 × 10⁻⁶), which at 28 px are the same product shot
twice.

A copy cropped, flipped or rotated is not caught: the hash and the thumbnail keep the image's geometry.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from sslprobe.images.decode import decode_image

SIDE = 32  # the shrunken image's side (pHash's)
LOW = 8  # the low-frequency block's side: 8 × 8 = 64 bits
THUMB = 8  # the thumbnail's side: 64 grey levels, the 32×32 shrink averaged over 4×4 blocks
NEAR_BITS = 10  # candidates: hashes at most this many bits apart (99.9 % of the measured copies)
NEAR_LEVELS = 4.0  # near copies: candidates whose thumbnails differ by at most this mean |Δ| (of 255)
VERSION = 1  # part of the hash cache's key: a change here recomputes every fingerprint
BLOCK_CELLS = 1 << 16  # pairs per block of the all-pairs search: 64 K × 9 bytes of temporaries fit in L2
_DRAFT = (2 * SIDE, 2 * SIDE)  # JPEGs decode at the smallest 1/2, 1/4, 1/8 scale still ≥ 64 px


def _dct_matrix(n: int) -> np.ndarray:
    """The orthonormal DCT-II as an n×n matrix C: C @ x is the DCT of x (Ahmed, Natarajan & Rao 1974)."""
    k, i = np.arange(n)[:, None], np.arange(n)[None, :]
    c = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    c[0] /= np.sqrt(2.0)
    return c


_DCT = _dct_matrix(SIDE)


@dataclass(frozen=True)
class Fingerprint:
    """An image's 64-bit pHash (bit 63 is coefficient (1, 1), bit 0 coefficient (8, 8)) and its 8×8 thumbnail."""

    hash: int
    thumb: bytes  # 64 grey levels, row by row

    def hex(self) -> str:
        return f"{self.hash:016x}{self.thumb.hex()}"

    @classmethod
    def from_hex(cls, text: str) -> Fingerprint:
        """The fingerprint of :meth:`hex`; raises ``ValueError`` for any other text."""
        if len(text) != 16 + 2 * THUMB * THUMB:
            raise ValueError(f"a fingerprint is {16 + 2 * THUMB * THUMB} hex digits")
        return cls(int(text[:16], 16), bytes.fromhex(text[16:]))


def fingerprint_of(image: Image.Image) -> Fingerprint:
    """The fingerprint of a decoded image."""
    grey = image.convert("L").resize((SIDE, SIDE), Image.Resampling.LANCZOS)  # ITU-R 601 luma, then shrink
    x = np.asarray(grey, dtype=np.float64)  # (32, 32)
    low = (_DCT @ x @ _DCT.T)[1:LOW + 1, 1:LOW + 1].ravel()  # 2-D DCT-II; 8×8 without the DC row and column
    low = low.round(6)  # rounding noise (1e-13) must set no bit: a flat image hashes to 0 on every machine
    bits = low > np.median(low)
    f = SIDE // THUMB
    thumb = x.reshape(THUMB, f, THUMB, f).mean(axis=(1, 3)).round().astype(np.uint8)  # (8, 8)
    return Fingerprint(int(np.packbits(bits).view(">u8")[0]), thumb.tobytes())


def fingerprint(source: bytes | str) -> Fingerprint:
    """The fingerprint of encoded image bytes or a file, through the guarded decoder (raises ``BadImageError``)."""
    return fingerprint_of(decode_image(source, draft=_DRAFT))


def hamming_pairs(queries: np.ndarray, pool: np.ndarray, *,
                  within: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (query, pool) pair of uint64 hashes at Hamming distance ≤ ``within``: (query index, pool index, bits).

    All pairs, in blocks of query rows (``BLOCK_CELLS`` pairs each): XOR and a hardware popcount
    (``np.bitwise_count``), O(V·P) at 6–8 ns per pair on one core of a busy 2-core machine: 20,000
    held-out images against an 80,000-image pool (1.6 × 10⁹ pairs) in about 10 s
    (bench/phash_threshold.py --speed).
    """
    q = np.ascontiguousarray(queries, dtype=np.uint64)
    p = np.ascontiguousarray(pool, dtype=np.uint64)
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    if len(q) and len(p):
        rows = max(1, BLOCK_CELLS // len(p))
        xor = np.empty((min(rows, len(q)), len(p)), dtype=np.uint64)
        count = np.empty(xor.shape, dtype=np.uint8)
        for start in range(0, len(q), rows):
            block = q[start:start + rows]
            x, c = xor[:len(block)], count[:len(block)]
            np.bitwise_xor(block[:, None], p[None, :], out=x)
            np.bitwise_count(x, out=c)
            i, j = np.nonzero(c <= within)
            found.append((i + start, j, c[i, j]))
    if not found:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.uint8)
    return tuple(np.concatenate(parts) for parts in zip(*found))


@dataclass(frozen=True)
class NearPairs:
    """Near copies between queries and a pool: indices into each, hash distance and thumbnail difference."""

    query: np.ndarray  # (M,) int64
    pool: np.ndarray  # (M,) int64
    bits: np.ndarray  # (M,) Hamming distance of the hashes
    levels: np.ndarray  # (M,) mean |Δ| of the thumbnails, in grey levels


def near_copies(queries: list[Fingerprint], pool: list[Fingerprint], *, bits: int = NEAR_BITS,
                levels: float = NEAR_LEVELS) -> NearPairs:
    """Every (query, pool) pair within ``bits`` of each other's hash and ``levels`` of each other's thumbnail."""
    qh = np.array([f.hash for f in queries], dtype=np.uint64)
    ph = np.array([f.hash for f in pool], dtype=np.uint64)
    i, j, d = hamming_pairs(qh, ph, within=bits)
    if len(i):
        qt = np.frombuffer(b"".join(f.thumb for f in queries), np.uint8).reshape(len(queries), -1)
        pt = np.frombuffer(b"".join(f.thumb for f in pool), np.uint8).reshape(len(pool), -1)
        mae = np.abs(qt[i].astype(np.int16) - pt[j]).mean(axis=1)
    else:
        mae = np.zeros(0)
    keep = mae <= levels
    return NearPairs(i[keep], j[keep], d[keep], mae[keep])
