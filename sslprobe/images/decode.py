"""One image file (or its bytes) to RGB, safely: every way a file can be bad becomes ``BadImageError``.

Only regular files are opened (no pipes or devices), only common raster formats are identified,
size limits are checked on the header before any pixel is decoded, and a header that claims more
pixels than the file could hold is refused. JPEGs can be decoded in PIL's draft mode (DCT-domain
downscaling to no less than a target size), or on the GPU by ``torchvision.io.decode_jpeg`` after
``check_header`` has vetted their header. No PIL global is ever changed.
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import stat
import warnings
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image, ImageOps

# The one pixel limit: PIL's own default for Image.MAX_IMAGE_PIXELS (which stays untouched), checked
# on the header here so that no decoder (PIL, its draft mode, nvJPEG) ever allocates more.
MAX_PIXELS = 89_478_485
# No single-frame image under the pixel limit needs more (uncompressed 16-bit RGBA: 8 B/px, 716 MB);
# reading a bigger file whole (``read_image_bytes``: hashing for the cache) could exhaust memory.
# (A multi-page TIFF past it is skipped although its first page would decode.)
MAX_FILE_BYTES = 1 << 30
# Bump whenever a rule here changes which files decode or what they decode to: it is part of the
# embedding-cache fingerprint, so rows computed under older rules are not reused.
DECODE_POLICY = 3

# Raster formats we let PIL identify. Others (EPS runs Ghostscript, PSD, FITS, ...) are refused:
# a mislabelled file from an untrusted folder must not reach a rarely-hardened decoder.
_SAFE_FORMATS = ("JPEG", "PNG", "BMP", "DIB", "GIF", "TIFF", "WEBP", "PPM", "AVIF")
_JPEG_FORMATS = ("JPEG", "MPO")  # the formats PIL's draft mode can downscale
_JPEG_MAGIC = b"\xff\xd8\xff"
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_OPEN_ERRORS = {IsADirectoryError: "is a directory", PermissionError: "permission denied",
                FileNotFoundError: "file not found (missing or broken symlink)"}


class BadImageError(Exception):
    """An image that cannot be used; ``str(e)`` is a short reason for the skipped-files list."""


def decode_image(source: str | os.PathLike | bytes | Image.Image, *, max_pixels: int = MAX_PIXELS,
                 draft: tuple[int, int] | None = None) -> Image.Image:
    """Decode one image (a path, encoded bytes, or a PIL image a dataset opened) to RGB, EXIF orientation applied.

    ``max_pixels`` is checked on the header, before any pixel is decoded. PIL's own bomb check
    (2 × ``Image.MAX_IMAGE_PIXELS``) still applies on top and is reported the same way. ``draft``
    (w, h): JPEGs decode at the smallest 1/2, 1/4, 1/8 scale that stays at least that large. Alpha
    is composited on white; 16-bit and integer images are scaled from 0–65535, float ones from 0–1
    (else min–max). Animated images give their first frame. Raises ``BadImageError``.
    """
    if isinstance(source, Image.Image):
        return _finish(source, max_pixels, *_size_and_head(source))
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise BadImageError("empty file")
        return _decode(io.BytesIO(source), max_pixels, len(source), draft)
    f = _open_regular(source)
    try:  # _decode turns every error of its own into BadImageError: what lands here is the file's
        with f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                raise BadImageError("empty file")
            return _decode(f, max_pixels, size, draft)
    except (OSError, ValueError) as e:
        raise BadImageError(_read_error(e)) from None


def read_image_bytes(path: str | os.PathLike, *, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The encoded bytes of one image file, read whole (to hash them, or to decode them in draft mode).

    Raises ``BadImageError`` for what ``decode_image`` would refuse to open and for files over
    ``max_bytes``, so no file can make this read without bound.
    """
    f = _open_regular(path)
    try:
        with f:
            data = f.read(max_bytes + 1)  # + 1: tells "exactly at the limit" from "over it"
    except OSError as e:
        raise BadImageError(_read_error(e)) from None
    if len(data) > max_bytes:
        raise BadImageError(f"too large: file over {max_bytes} bytes")
    return data


def check_header(data: bytes, *, max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """(width, height) of encoded image bytes, from the header only; no pixel is decoded.

    Raises ``BadImageError`` when ``decode_image`` would refuse the bytes on their header alone:
    empty, not an identifiable image, over ``max_pixels``, or claiming more pixels than the bytes
    can code. For decoders that skip ``decode_image`` (nvJPEG) so they are never handed a bomb.
    """
    if len(data) == 0:
        raise BadImageError("empty file")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        im = _open(io.BytesIO(data), max_pixels)
    _check_claims(im, max_pixels, len(data), data[:_HEAD_BYTES])
    return im.size


def is_jpeg(data: bytes) -> bool:
    """Whether encoded bytes start like a JPEG (what nvJPEG and PIL's draft mode take)."""
    return data[:3] == _JPEG_MAGIC


def gpu_decode(data: list[torch.Tensor], *, device: torch.device,
               transform: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor | None, list[int]]:
    """Decode JPEG bytes (vetted by ``check_header``) with ``torchvision.io.decode_jpeg`` on ``device``
    (nvJPEG on CUDA), then ``transform`` (an ``images.transforms.Uint8Transform``) each image there.

    Returns the stacked uint8 images that decoded and the positions that did not (CMYK, progressive
    corner cases, corrupt data): those go back to the CPU path, so the GPU path never loses an image.
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    try:
        decoded: list[torch.Tensor | None] = list(decode_jpeg(data, mode=ImageReadMode.RGB, device=device,
                                                              apply_exif_orientation=True))
    except Exception:  # noqa: BLE001 - one bad file fails the whole batch: retry one by one
        decoded = []
        for d in data:
            try:
                decoded.append(decode_jpeg(d, mode=ImageReadMode.RGB, device=device, apply_exif_orientation=True))
            except Exception:  # noqa: BLE001 - any failure means "not valid"
                decoded.append(None)
    out, failed = [], []
    for k, im in enumerate(decoded):
        if im is None or im.ndim != 3 or im.shape[0] != 3 or im.shape[1] * im.shape[2] > MAX_PIXELS:
            failed.append(k)
            continue
        out.append(transform(im))
    return (torch.stack(out) if out else None), failed


def _read_error(e: OSError | ValueError) -> str:
    return _OPEN_ERRORS.get(type(e)) or f"cannot read: {getattr(e, 'strerror', None) or e}"


def _open_regular(path: str | os.PathLike) -> io.BufferedReader:
    """Open a file for reading only if it is a regular file; raises ``BadImageError`` otherwise.

    O_NONBLOCK so that a FIFO (or a link to one) named like an image can't block the open forever;
    the type check then refuses it, devices (a link to /dev/zero would be read without end) and
    directories before a byte is read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except (OSError, ValueError) as e:  # ValueError: e.g. a NUL byte in the path
        raise BadImageError(_read_error(e)) from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise BadImageError("is a directory" if stat.S_ISDIR(mode) else "not a regular file (device, pipe or socket)")
    return os.fdopen(fd, "rb")


def _formats() -> list[str]:
    Image.init()  # registers plugins; Image.open raises KeyError for a format name it doesn't know
    return [f for f in _SAFE_FORMATS if f in Image.OPEN]


def _open(fp: io.IOBase, max_pixels: int) -> Image.Image:
    """``Image.open`` (lazy: header only) restricted to safe formats; every failure a BadImageError."""
    try:
        return Image.open(fp, formats=_formats())
    except Image.UnidentifiedImageError:
        raise BadImageError("not an image (cannot identify)") from None
    except Image.DecompressionBombError as e:
        n = re.search(r"\((\d+) pixels\)", str(e))
        limit = min(max_pixels, 2 * (Image.MAX_IMAGE_PIXELS or max_pixels))
        raise BadImageError(f"too large: {n.group(1) if n else '?'} px > {limit} px limit") from None
    except Exception as e:  # noqa: BLE001 - plugins raise assorted types on malformed headers
        raise BadImageError(_reason(e)) from None


def _decode(fp: io.IOBase, max_pixels: int, size: int, draft: tuple[int, int] | None) -> Image.Image:
    head = fp.read(_HEAD_BYTES)  # for the JPEG coding type (_too_small); the markers before SOF are short
    fp.seek(0)
    # Plugins warn per file (corrupt EXIF, bomb warning, ...); the problems that matter become
    # BadImageError, and a million-image folder would otherwise flood the log.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        im = _open(fp, max_pixels)
        # The claims are checked on the full size: after draft() the image claims up to 64x fewer
        # pixels and a truncated bomb would pass.
        _check_claims(im, max_pixels, size, head)
        if draft is not None and im.format in _JPEG_FORMATS:
            _try_draft(im, draft)
        return _load_rgb(im)


def _finish(im: Image.Image, max_pixels: int, size: int | None, head: bytes) -> Image.Image:
    """Claim checks, load, orientation and RGB conversion of an image opened elsewhere (a dataset row)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _check_claims(im, max_pixels, size, head)
        return _load_rgb(im)


def _try_draft(im: Image.Image, draft: tuple[int, int]) -> None:
    # draft() fails (if ever) before it changes the image: then the image decodes in full.
    with contextlib.suppress(Exception):
        im.draft("RGB", draft)  # picks the largest 1/2, 1/4, 1/8 scale that stays ≥ draft


def _check_claims(im: Image.Image, max_pixels: int, size: int | None, head: bytes) -> None:
    """Refuse a header over ``max_pixels`` or claiming more pixels than ``size`` encoded bytes can hold.

    ``size`` None (an image decoded in memory, no file behind it): only the pixel limit applies.
    """
    w, h = im.size
    if w * h > max_pixels:
        raise BadImageError(f"too large: {w}x{h} px > {max_pixels} px limit")
    if size is not None and _too_small(im, size, head):
        raise BadImageError(f"truncated image ({w}x{h} px claimed by a {size}-byte file)")


def _load_rgb(im: Image.Image) -> Image.Image:
    """Decode now (a truncated file fails here, not inside a transform), orient, convert to RGB."""
    try:
        im.load()
    except Exception as e:  # noqa: BLE001 - any decoder failure means a bad file
        raise BadImageError(_reason(e)) from None
    with contextlib.suppress(Exception):  # unreadable EXIF: the pixels are fine, keep them unrotated
        ImageOps.exif_transpose(im, in_place=True)
    try:
        return _to_rgb(im)
    except Exception as e:  # noqa: BLE001 - a mode the conversion can't handle
        raise BadImageError(f"unsupported image mode {im.mode}: {_reason(e)}") from None


# Pillow decodes a file whose data ends early "successfully" when the codec stream itself ends
# (padding with grey or black): an 854-byte JPEG claiming 9000×9000 became a 243 MB image in 0.3 s.
# So a header that claims more pixels than the format could code in the file's bytes is refused:
# deflate can't beat 1032:1 and a PNG row needs ≥ 1 bit per pixel plus a filter byte; a Huffman
# JPEG spends ≥ 1 bit per 8×8 luma block. Both floors get a 2× margin; arithmetic-coded JPEGs have
# no such floor and are not checked.
_DEFLATE_MAX_RATIO = 1032
_HEAD_BYTES = 1 << 16


def _too_small(im: Image.Image, size: int, head: bytes) -> bool:
    w, h = im.size
    if im.format == "PNG":
        return 2 * _DEFLATE_MAX_RATIO * size < h * (1 + (w + 7) // 8)
    if im.format in _JPEG_FORMATS and _jpeg_sof(head) in (0xC0, 0xC1, 0xC2):  # Huffman DCT
        return 2 * 8 * size < ((w + 7) // 8) * ((h + 7) // 8)
    return False


def _size_and_head(im: Image.Image) -> tuple[int | None, bytes]:
    """Byte count and first bytes of the file behind an opened image; (None, b"") when it has none."""
    fp = getattr(im, "fp", None)
    try:
        pos = fp.tell()
        size = fp.seek(0, io.SEEK_END)
        fp.seek(0)
        head = fp.read(_HEAD_BYTES)
        fp.seek(pos)
    except (AttributeError, OSError, ValueError):  # no file (decoded in memory) or not seekable
        return None, b""
    return size, head


def _jpeg_sof(head: bytes) -> int | None:
    """The SOF marker (0xC0 baseline, 0xC2 progressive, 0xC9 arithmetic, …) among a JPEG's first bytes."""
    i = 2
    while i + 4 <= len(head) and head[i] == 0xFF:
        m = head[i + 1]
        if m == 0xFF:  # fill byte
            i += 1
            continue
        if 0xC0 <= m <= 0xCF and m not in (0xC4, 0xC8, 0xCC):  # not DHT, JPG, DAC
            return m
        if m == 0xDA:  # scan data before any SOF: not ours to judge
            return None
        i += 2 + int.from_bytes(head[i + 2:i + 4], "big")
    return None


def _reason(e: BaseException) -> str:
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    if "truncated" in msg.lower() or isinstance(e, EOFError):
        return "truncated image"
    return f"corrupt image ({type(e).__name__}: {msg[:120]})"


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode == "RGB":
        return im
    if im.mode.startswith("I") or im.mode == "F":
        # convert("L") clips these to 0/255; scale instead so mid-grey stays mid-grey.
        a = np.nan_to_num(np.asarray(im).astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = float(a.min()), float(a.max())
        if im.mode == "F" and lo >= 0 and hi <= 1:
            a = a * 255
        elif im.mode != "F" and lo >= 0 and hi <= 65535:  # I;16*, and I as PIL gives for 16-bit PPM
            a = a / 257
        else:
            a = (a - lo) * (255 / (hi - lo)) if hi > lo else np.zeros_like(a)
        return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L").convert("RGB")
    if im.mode in _ALPHA_MODES or "transparency" in im.info:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")
