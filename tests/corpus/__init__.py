"""A corpus of good, odd and hostile image files, generated at test time (nothing binary checked in).

``build(root)`` writes a flat folder and returns a ``Corpus`` that says what every entry should
become: good files with the (width, height) their RGB decode must have, bad files with the
reason they must be skipped for, and entries that are not image files at all (a directory named
like an image, a named pipe). Entries the OS or filesystem can't make here (a non-UTF-8 name, a file root can
still read) are left out and listed in ``Corpus.missing``.
"""
from __future__ import annotations

import io
import os
import re
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image


@dataclass
class Corpus:
    """What ``build`` wrote. Keys are ids as ``sslprobe.images.folders.open_images`` gives them."""

    root: Path
    good: dict[str, tuple[int, int]] = field(default_factory=dict)  # id -> decoded (w, h)
    bad: dict[str, str] = field(default_factory=dict)  # id -> substring of the skip reason
    ignored: list[str] = field(default_factory=list)  # names that are not image files
    missing: list[str] = field(default_factory=list)  # entries this OS/filesystem couldn't make


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def noise(w: int, h: int, *, seed: int = 0, mode: str = "RGB") -> Image.Image:
    channels = {"RGB": 3, "RGBA": 4, "LA": 2, "CMYK": 4, "L": 1}[mode]
    a = np.random.default_rng(seed).integers(0, 256, (h, w, channels), dtype=np.uint8)
    return Image.fromarray(a[..., 0] if channels == 1 else a, mode)


def valid_jpeg(w: int = 48, h: int = 32, *, seed: int = 0, **kw) -> bytes:
    return encode(noise(w, h, seed=seed), "JPEG", quality=90, **kw)


def valid_png(w: int = 48, h: int = 32, *, seed: int = 0) -> bytes:
    return encode(noise(w, h, seed=seed), "PNG")


def png_header(w: int, h: int) -> bytes:
    """A 1-bit PNG whose IHDR claims w×h with a stub IDAT: costs bytes, not w×h pixels."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))


def png_claiming(w: int, h: int) -> bytes:
    """An 8-bit RGB PNG whose IHDR claims w×h but whose (valid, complete) zlib stream holds one row."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * (1 + 3 * w))) + chunk(b"IEND", b""))


def jpeg_with_size(w: int, h: int) -> bytes:
    """A small real JPEG whose SOF marker is patched to claim w×h (≤ 65535 each)."""
    data = bytearray(valid_jpeg(16, 16))
    i = 2
    while i < len(data):
        marker, length = data[i + 1], struct.unpack(">H", data[i + 2:i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):  # SOF0/1/2: FF Cx len(2) precision(1) height(2) width(2)
            data[i + 5:i + 9] = struct.pack(">HH", h, w)
            return bytes(data)
        i += 2 + length
    raise AssertionError("no SOF marker in the JPEG Pillow wrote")


def _palette_with_transparency(w: int, h: int) -> Image.Image:
    im = Image.new("P", (w, h))
    im.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    im.putdata([(x + y) % 2 for y in range(h) for x in range(w)])
    im.info["transparency"] = 0
    return im


def _exif_rotated(w: int, h: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation 6: display rotated 90° clockwise, so the decode is h×w
    return encode(noise(w, h, seed=3), "JPEG", exif=exif.tobytes())


def _animated_gif(w: int, h: int) -> bytes:
    frames = [Image.new("RGB", (w, h), c) for c in [(255, 0, 0), (0, 0, 255), (0, 255, 0)]]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    return buf.getvalue()


def good_files() -> dict[str, tuple[bytes, tuple[int, int]]]:
    """name -> (bytes, (w, h) after decoding to RGB with orientation applied)."""
    i16 = Image.fromarray(np.arange(20 * 12, dtype=np.uint16).reshape(12, 20) * 257)
    assert i16.mode.startswith("I;16")
    return {
        "rgb.jpg": (valid_jpeg(48, 32), (48, 32)),
        "rgb.png": (valid_png(30, 40), (30, 40)),
        "cmyk.jpg": (encode(noise(24, 16, mode="CMYK"), "JPEG"), (24, 16)),
        "gray16.png": (encode(i16, "PNG"), (20, 12)),
        "palette_transparent.png": (encode(_palette_with_transparency(9, 7), "PNG"), (9, 7)),
        "la.png": (encode(noise(11, 13, mode="LA"), "PNG"), (11, 13)),
        "rgba.png": (encode(noise(17, 5, mode="RGBA"), "PNG"), (17, 5)),
        "exif_rot6.jpg": (_exif_rotated(40, 20), (20, 40)),
        "one_pixel.png": (encode(Image.new("RGB", (1, 1), (9, 99, 199)), "PNG"), (1, 1)),
        "animated.gif": (_animated_gif(10, 6), (10, 6)),
        "UPPER.JPEG": (valid_jpeg(8, 8, seed=5), (8, 8)),
    }


def bad_files() -> dict[str, tuple[bytes, str]]:
    """name -> (bytes, substring of the reason ``decode_image`` gives)."""
    jpg, png = valid_jpeg(64, 48, seed=1), valid_png(64, 48, seed=1)
    return {
        "empty.jpg": (b"", "empty file"),
        "truncated.jpg": (jpg[: len(jpg) // 2], "truncated"),
        "truncated.png": (png[: len(png) // 2], "truncated"),
        "text.jpg": (b"this is a text file, not a JPEG\n" * 20, "not an image"),
        "page.png": (b"<!DOCTYPE html><html><head><title>404</title></head><body>Not Found</body></html>\n",
                     "not an image"),
        "bomb.png": (png_header(40_000, 40_000), "too large"),  # past 2× Pillow's limit: raises in open()
        "big.png": (png_header(10_000, 10_000), "too large"),  # past the limit, under 2×: our header check
        "bomb.jpg": (jpeg_with_size(60_000, 60_000), "too large"),
        # Under the pixel limit, but far more pixels than the bytes can code (Pillow would pad them).
        "claims_9000.jpg": (jpeg_with_size(9000, 9000), "truncated"),
        "claims_9000.png": (png_claiming(9000, 9000), "truncated"),
    }


_BAD_NAME = b"caf\xe9"  # latin-1 é: not valid UTF-8


def build(root: str | os.PathLike, *, good: bool = True, bad: bool = True) -> Corpus:
    """Write the corpus into ``root`` (created) and say what each entry must become."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    c = Corpus(root)
    if good:
        for name, (data, size) in good_files().items():
            (root / name).write_bytes(data)
            c.good[name] = size
    if bad:
        for name, (data, reason) in bad_files().items():
            (root / name).write_bytes(data)
            c.bad[name] = reason
        os.symlink("loop_b.png", root / "loop_a.png")  # a two-link loop
        os.symlink("loop_a.png", root / "loop_b.png")
        os.symlink("self.jpg", root / "self.jpg")  # a link to itself
        os.symlink("nowhere.png", root / "dangling.png")
        c.bad.update({"loop_a.png": "cannot read", "loop_b.png": "cannot read", "self.jpg": "cannot read",
                      "dangling.png": "file not found"})
        (root / "folder.jpg").mkdir()  # a directory named like an image: not a file, not listed
        c.ignored.append("folder.jpg")
        try:  # a named pipe: opening it for reading would block until a writer comes
            os.mkfifo(root / "pipe.png")
        except (OSError, AttributeError):  # no FIFOs here (Windows, some network filesystems)
            c.missing.append("pipe.png")
        else:
            os.symlink("pipe.png", root / "pipe_link.jpg")  # the pipe itself isn't listed; a link to it is
            c.ignored.append("pipe.png")
            c.bad["pipe_link.jpg"] = "not a regular file"
        if os.path.exists("/dev/zero"):  # a device: reading it never ends
            os.symlink("/dev/zero", root / "zero_link.jpg")
            c.bad["zero_link.jpg"] = "not a regular file"
        else:
            c.missing.append("zero_link.jpg")
        unreadable = root / "unreadable.png"
        unreadable.write_bytes(valid_png(8, 8))
        unreadable.chmod(0)
        if os.geteuid() == 0 or os.access(unreadable, os.R_OK):  # root reads it anyway
            unreadable.unlink()
            c.missing.append("unreadable.png")
        else:
            c.bad["unreadable.png"] = "permission denied"
    # Names that are not valid UTF-8, one good and one bad; they round-trip as surrogate escapes.
    for stem, wanted, data in ((b"_good", good, valid_png(12, 10, seed=7)), (b"_bad", bad, b"")):
        if not wanted:
            continue
        raw = os.path.join(os.fsencode(root), _BAD_NAME + stem + b".png")
        try:
            with open(raw, "wb") as f:
                f.write(data)
        except (OSError, UnicodeError):  # e.g. a filesystem that only stores UTF-8 names
            c.missing.append(os.fsdecode(_BAD_NAME + stem + b".png"))
            continue
        name = os.fsdecode(os.path.basename(raw))
        if stem == b"_good":
            c.good[name] = (12, 10)
        else:
            c.bad[name] = "empty file"
    return c


def restore_permissions(root: str | os.PathLike) -> None:
    """Make the unreadable file readable again so tmp_path cleanup can't trip on it."""
    p = Path(root) / "unreadable.png"
    if p.exists() and not p.is_symlink():
        p.chmod(0o644)


_PROGRESS = re.compile(r"\d+/\d+\s+\d+:\d\d:\d\d")  # rich's "12/48 0:00:03" columns


def user_lines(stderr: str) -> list[str]:
    """The non-blank stderr lines a user reads as messages: progress-bar lines left out."""
    return [line for line in stderr.splitlines() if line.strip() and "━" not in line and not _PROGRESS.search(line)]


def error_line(stderr: str) -> str:
    """The one ``error:`` line of a failed command: exactly one, the last line, no traceback.

    Lines before it may only be progress bars (whose layout each command chooses), so they are
    not inspected further than "nothing else starts with error: or Traceback".
    """
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], stderr
    assert "Traceback" not in stderr, stderr
    return errors[0]
