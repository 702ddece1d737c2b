"""Decode workers for ``extract``: read bytes once, hash them, decode only what the cache lacks.

Each item reads the encoded file, takes its sha256 (the cache row key) from those same bytes,
and only decodes when the key is not already stored — a warm run reads and hashes, nothing more.
Images leave the workers as uint8 (resize + centre crop done, normalisation left to the device).
JPEGs are decoded in PIL's draft mode, or handed over undecoded (header vetted) for ``gpu_decode``.
"""
from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field

import torch

from sslprobe.cache import content_key
from sslprobe.images.decode import BadImageError, check_header, decode_image, is_jpeg
from sslprobe.images.folders import ImageSet


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
            try:  # nvJPEG skips decode_image's guards: refuse bombs and byte-count lies on the header first
                check_header(data)
            except BadImageError as e:
                return i, key, None, str(e)
            return i, key, torch.frombuffer(bytearray(data), dtype=torch.uint8), "jpeg"
        try:
            return i, key, self.transform(decode_image(data, draft=self.draft)), "new"
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
