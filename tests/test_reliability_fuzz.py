"""Fuzz ``decode_image`` with seeded byte mutations of valid files: only BadImageError, never a hang.

A seeded loop rather than hypothesis: no new dependency, and a failure names its case number,
which reproduces it exactly. Per-file time is bounded by an alarm (a hang fails the case instead
of stalling the suite); the decode's own bound is ``max_pixels``, checked on the header.
"""
from __future__ import annotations

import contextlib
import random
import signal
import struct
import time
import zlib

import pytest
from PIL import Image

from sslprobe.images.decode import BadImageError, check_header, decode_image
from tests.corpus import (
    encode,
    jpeg_with_size,
    noise,
    png_claiming,
    valid_jpeg,
    valid_png,
)

PER_FILE_S = 5.0  # generous: the slowest case measured takes < 1 s on a loaded 2-core machine


def _seeds() -> dict[str, bytes]:
    return {
        "jpeg": valid_jpeg(64, 48),
        "jpeg-progressive": encode(noise(40, 30), "JPEG", progressive=True),
        "jpeg-exif": encode(noise(24, 16), "JPEG", exif=_exif_bytes()),
        "png": valid_png(64, 48),
        "png-rgba": encode(noise(40, 30, mode="RGBA"), "PNG"),
        "png-palette": encode(noise(33, 20).convert("P"), "PNG"),
        "gif": encode(noise(20, 20), "GIF"),
        "webp": encode(noise(20, 20), "WEBP"),
        "bmp": encode(noise(20, 20), "BMP"),
    }


def _exif_bytes() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    return exif.tobytes()


def _png_fix_crcs(b: bytes) -> bytes:
    """Recompute chunk CRCs so a mutation reaches the decoder instead of failing the CRC check."""
    out, i = bytearray(b[:8]), 8
    while i + 8 <= len(b):
        n = struct.unpack(">I", b[i:i + 4])[0]
        if i + 12 + n > len(b):
            out += b[i:]
            break
        out += b[i:i + 8 + n] + struct.pack(">I", zlib.crc32(b[i + 4:i + 8 + n]))
        i += 12 + n
    return bytes(out)


def mutate(rng: random.Random, data: bytes) -> tuple[str, bytes]:
    """One random damage: bit flips, truncation, insertion, header bytes, zeroed run, duplicated run."""
    b = bytearray(data)
    op = rng.choice(["flip", "truncate", "insert", "header", "zero", "duplicate"])
    if op == "flip":
        for _ in range(rng.randint(1, 16)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    elif op == "truncate":
        b = b[: rng.randrange(len(b))]
    elif op == "insert":
        p = rng.randrange(len(b))
        b[p:p] = rng.randbytes(rng.randint(1, 64))
    elif op == "header":
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(min(64, len(b)))] = rng.randrange(256)
    elif op == "zero":
        p = rng.randrange(len(b))
        n = min(rng.randint(1, 200), len(b) - p)
        b[p:p + n] = bytes(n)
    else:
        p = rng.randrange(len(b))
        q = rng.randrange(p, len(b))
        b[q:q] = b[p:q][:500]
    out = bytes(b)
    if out[:4] == b"\x89PNG" and rng.random() < 0.5:
        op += "+crc"
        out = _png_fix_crcs(out)
    return op, out


@contextlib.contextmanager
def time_limit(seconds: float, what: str):
    def fire(*_):
        raise TimeoutError(f"{what} took more than {seconds} s")
    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _check(data: bytes, what: str) -> str:
    t = time.perf_counter()
    with time_limit(PER_FILE_S, what):
        try:
            im = decode_image(data)
        except BadImageError as e:
            assert str(e) and "\n" not in str(e), what
            result = "bad"
        else:
            assert im.mode == "RGB" and im.size[0] > 0 and im.size[1] > 0, what
            im.resize((4, 4))  # the decoded image is usable, not a lazy shell
            result = "ok"
    assert time.perf_counter() - t < PER_FILE_S, what
    return result


@pytest.mark.parametrize("fuzz_seed", [0, 1])
def test_mutations_raise_only_bad_image_error(fuzz_seed):
    rng = random.Random(fuzz_seed)
    seeds = _seeds()
    outcomes = {"ok": 0, "bad": 0}
    t0 = time.perf_counter()
    for case in range(200):
        name = list(seeds)[case % len(seeds)]
        op, data = mutate(rng, seeds[name])
        if not data:
            continue
        outcomes[_check(data, f"seed {fuzz_seed} case {case}: {op} of {name}")] += 1
    # Both outcomes occur, so the mutations are neither all harmless nor all fatal.
    assert outcomes["ok"] > 10 and outcomes["bad"] > 50, outcomes
    assert time.perf_counter() - t0 < 10


@pytest.mark.parametrize("data, what", [
    (jpeg_with_size(9000, 9000), "an 854-byte JPEG whose header claims 9000×9000"),
    (jpeg_with_size(65535, 65535), "a JPEG claiming 65535×65535"),
    (jpeg_with_size(65535, 1), "a JPEG claiming 65535×1"),
    (jpeg_with_size(1, 65535), "a JPEG claiming 1×65535"),
])
def test_small_files_claiming_large_sizes_finish_quickly(data, what):
    """Decode cost is bounded by ``max_pixels`` however few bytes claim the size."""
    _check(data, what)


@pytest.mark.parametrize("data", [jpeg_with_size(9000, 9000), jpeg_with_size(2000, 2000), png_claiming(9000, 9000),
                                  png_claiming(20000, 4000)],
                         ids=["jpeg-9000", "jpeg-2000", "png-9000", "png-20000x4000"])
def test_headers_claiming_more_pixels_than_the_bytes_hold_are_truncated(data):
    # (A claim the bytes *could* code, e.g. 3000×100 in 100 bytes, still decodes with its missing rows
    # black: Pillow reports no error when the zlib stream ends cleanly, and no bound can tell.)
    with pytest.raises(BadImageError, match="truncated image"):
        decode_image(data)


@pytest.mark.parametrize("im, fmt, kw", [
    (Image.new("1", (2000, 2000)), "PNG", {"optimize": True}),  # ~990:1, the deflate ceiling is 1032:1
    (Image.new("RGB", (2000, 2000)), "PNG", {"compress_level": 9}),
    (Image.new("RGB", (2000, 2000)), "JPEG", {"optimize": True, "progressive": True, "quality": 5}),
    (Image.new("L", (2000, 2000)), "JPEG", {"optimize": True, "quality": 1}),
    (Image.new("RGB", (2000, 2000), (255, 255, 255)), "JPEG", {"quality": 100}),
], ids=["png-1bit-black", "png-rgb-black", "jpeg-progressive-black", "jpeg-gray-q1", "jpeg-white-q100"])
def test_extreme_but_real_compression_is_accepted(im, fmt, kw):
    """The byte-count floor has a margin: the most compressible real images still decode."""
    assert decode_image(encode(im, fmt, **kw)).size == im.size


def test_check_header_refuses_what_decode_refuses_on_the_header():
    """``check_header`` (for decoders that bypass decode_image, e.g. nvJPEG) never passes a bomb or a
    byte-count lie that decode_image refuses, and never refuses a file decode_image accepts."""
    from tests.corpus import bad_files, good_files

    for name, (data, _) in {**good_files(), **bad_files()}.items():
        try:
            decoded = decode_image(data)
        except BadImageError as e:
            decoded = str(e)
        try:
            header = check_header(data)
        except BadImageError as e:
            assert str(e) == decoded, name  # the same words as the full decode
            continue
        if isinstance(decoded, str):  # only what needs the pixels to notice may pass the header check
            assert decoded.startswith("truncated image") and "claimed" not in decoded, (name, decoded)
        else:
            assert sorted(header) == sorted(decoded.size), name  # (EXIF rotation may swap them)


def test_check_header_raises_only_bad_image_error_on_mutations():
    rng = random.Random(7)
    seeds = _seeds()
    for case in range(200):
        name = list(seeds)[case % len(seeds)]
        op, data = mutate(rng, seeds[name])
        with time_limit(PER_FILE_S, f"case {case}: {op} of {name}"):
            try:
                w, h = check_header(data)
            except BadImageError:
                continue
        assert w * h <= 89_478_485


def test_pixel_bound_caps_decode_work():
    # Same file, a tighter bound: refused from the header, before a single pixel is decoded.
    with pytest.raises(BadImageError, match="too large"):
        decode_image(jpeg_with_size(9000, 9000), max_pixels=1_000_000)
