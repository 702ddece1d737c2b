"""Decode workers for ``extract``: read bytes once, hash them, decode only what the cache lacks.

Each item reads the encoded file, takes its sha256 (the cache row key) from those same bytes,
and only decodes when the key is not already stored — a warm run reads and hashes, nothing more.
Images leave the workers as uint8 (resize + centre crop done, normalisation left to the device).
JPEGs are decoded with PIL's ``draft`` mode (DCT-domain downscaling to no less than the resize
target), or handed over undecoded for ``torchvision.io.decode_jpeg`` on the GPU.
"""
from __future__ import annotations

import io
import warnings
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

import torch
from PIL import Image

from sslprobe.cache import content_key
from sslprobe.images.folders import BadImageError, ImageSet, _finish, decode_image
from sslprobe.images.headers import check_header

MAX_PIXELS = 89_478_485
_JPEG_MAGIC = b"\xff\xd8\xff"


def is_jpeg(data: bytes) -> bool:
    return data[:3] == _JPEG_MAGIC


def uint8_transform(transform: Callable) -> Callable:
    """timm's eval transform up to the crop, ending in a uint8 tensor (ToTensor/Normalize dropped)."""
    from torchvision import transforms as T

    steps = [t for t in getattr(transform, "transforms", [transform])
             if type(t).__name__ not in ("ToTensor", "MaybeToTensor", "Normalize", "PILToTensor", "MaybePILToTensor")]
    return T.Compose([*steps, T.PILToTensor()])


def resize_target(transform: Callable) -> tuple[int, int] | None:
    """The size the first Resize step asks for, as (w, h) for PIL's draft (None: no Resize)."""
    for t in getattr(transform, "transforms", []):
        if type(t).__name__ == "Resize":
            s = t.size
            if isinstance(s, int):
                return (s, s)
            if isinstance(s, (tuple, list)):
                return (int(s[-1]), int(s[0])) if len(s) == 2 else (int(s[0]), int(s[0]))
    return None


def decode_bytes(data: bytes, *, draft: tuple[int, int] | None = None, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """RGB image from encoded bytes; JPEGs at no less than ``draft`` (w, h) via PIL draft mode."""
    if draft is None or not is_jpeg(data):
        return decode_image(data, max_pixels=max_pixels)
    # The header checks (pixel limit, bytes enough for the pixels claimed) must see the full size:
    # after draft() the image claims up to 64x fewer pixels and a truncated bomb would pass.
    check_header(data, max_pixels=max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im = Image.open(io.BytesIO(data), formats=["JPEG"])
            w, h = im.size
            if w * h > max_pixels:
                raise ValueError("over-size")
            im.draft("RGB", draft)  # picks the largest 1/2, 1/4, 1/8 scale that stays ≥ draft
    except Exception:  # noqa: BLE001 - let the guarded decoder find and word the problem
        return decode_image(data, max_pixels=max_pixels)
    return _finish(im, max_pixels)


class HashedImages(torch.utils.data.Dataset):
    """Items ``(i, key, uint8 image | encoded JPEG | None, kind)`` for the indices ``order``.

    ``kind``: "new" (decoded), "cached" (key in ``known``, not decoded), "jpeg" (undecoded bytes
    for GPU decode), or a skip reason. ``key`` is None only when the file could not be read.
    """

    def __init__(self, images: ImageSet, transform: Callable, *, order: list[int], known: Collection[bytes] = (),
                 draft: tuple[int, int] | None = None, raw_jpeg: bool = False) -> None:
        self.images, self.transform, self.order = images, transform, order
        self.known, self.draft, self.raw_jpeg = known, draft, raw_jpeg

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, j: int) -> tuple[int, bytes | None, torch.Tensor | None, str]:
        i = self.order[j]
        try:
            data = self.images.read_bytes(i)
        except BadImageError as e:
            return i, None, None, str(e)
        key = content_key(data)  # hashed here, where the bytes already are
        if key in self.known:
            return i, key, None, "cached"
        if self.raw_jpeg and is_jpeg(data):
            from sslprobe.images.headers import check_header

            try:  # nvJPEG skips decode_image's guards: refuse bombs and byte-count lies on the header first
                check_header(data, max_pixels=MAX_PIXELS)
            except BadImageError as e:
                return i, key, None, str(e)
            return i, key, torch.frombuffer(bytearray(data), dtype=torch.uint8), "jpeg"
        try:
            return i, key, self.transform(decode_bytes(data, draft=self.draft)), "new"
        except BadImageError as e:
            return i, key, None, str(e)


@dataclass
class KeyedBatch:
    """A batch split by what the main process has to do with each item."""

    new_idx: list[int] = field(default_factory=list)
    new_keys: list[bytes] = field(default_factory=list)
    images: torch.Tensor | None = None  # (B, 3, H, W) uint8
    cached_idx: list[int] = field(default_factory=list)
    cached_keys: list[bytes] = field(default_factory=list)
    jpeg_idx: list[int] = field(default_factory=list)
    jpeg_keys: list[bytes] = field(default_factory=list)
    jpeg_data: list[torch.Tensor] = field(default_factory=list)
    skipped: list[tuple[int, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.new_idx) + len(self.cached_idx) + len(self.jpeg_idx) + len(self.skipped)

    def pin_memory(self) -> KeyedBatch:
        """Called by the DataLoader's pin-memory thread (CUDA): page-locked images copy asynchronously."""
        if self.images is not None:
            self.images = self.images.pin_memory()
        return self


def collate_keyed(items: list[tuple]) -> KeyedBatch:
    """DataLoader ``collate_fn`` for ``HashedImages``."""
    b = KeyedBatch()
    new = []
    for i, key, x, kind in items:
        if kind == "new":
            b.new_idx.append(i)
            b.new_keys.append(key)
            new.append(x)
        elif kind == "cached":
            b.cached_idx.append(i)
            b.cached_keys.append(key)
        elif kind == "jpeg":
            b.jpeg_idx.append(i)
            b.jpeg_keys.append(key)
            b.jpeg_data.append(x)
        else:
            b.skipped.append((i, kind))
    if new:
        b.images = torch.stack(new)
    return b


def gpu_decode(data: list[torch.Tensor], *, device: torch.device, size: int, resize: int,
               interpolation: str) -> tuple[torch.Tensor | None, list[int]]:
    """Decode JPEG bytes with ``torchvision.io.decode_jpeg`` on ``device`` (nvJPEG on CUDA), then
    resize the short side to ``resize`` and centre-crop ``size``, as uint8 (B, 3, size, size).

    Returns the images that decoded and the positions that did not (CMYK, progressive corner cases,
    corrupt data): those go back to the CPU path, so the GPU path never loses an image.
    """
    from torchvision.io import ImageReadMode, decode_jpeg
    from torchvision.transforms.v2 import functional as F

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
    mode = getattr(F.InterpolationMode, interpolation.upper(), F.InterpolationMode.BICUBIC)
    out, failed = [], []
    for k, im in enumerate(decoded):
        if im is None or im.ndim != 3 or im.shape[0] != 3 or im.shape[1] * im.shape[2] > MAX_PIXELS:
            failed.append(k)
            continue
        im = F.resize(im, [resize], interpolation=mode, antialias=True)
        out.append(F.center_crop(im, [size, size]))  # (3, size, size) uint8
    return (torch.stack(out) if out else None), failed
