"""An ``ImageSet`` as a DataLoader dataset: bad files become skipped items, never exceptions.

``ImageDataset`` + ``collate`` carry the ``BadImageError`` reasons through a DataLoader, so one
bad file never stops a run; ``Batch`` holds the good images stacked and the (index, reason) of the
others. Used by pretraining (the uint8 store, the kNN monitor); extraction has its own hashing
dataset (``extraction.hashed``) because it must read the bytes it hashes. ``epoch_order`` is the
order pretraining and fine-tuning visit their items in an epoch. ``sample_indices``,
``long_sides`` and ``first_colour`` look at a few images before a store is decoded (its side, and
whether the images are grey).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from sslprobe.images.decode import BadImageError, check_header, decode_image
from sslprobe.images.folders import ImageSet

# Channels of a grey image decoded to RGB differ by at most JPEG's rounding; more than this is colour.
GREY_TOLERANCE = 2


class ImageDataset(torch.utils.data.Dataset):
    """An ``ImageSet`` through a transform; items are ``(i, tensor | None, label, reason | None)``.

    A ``BadImageError`` from decode or transform becomes ``(i, None, label, reason)``, so bad
    files never crash a DataLoader; any other exception is a bug and propagates. ``draft`` (w, h):
    JPEG files are read as bytes and decoded in PIL draft mode at no less than that size (a 12 MP
    photo decodes at 1/8 its width and height); pass the size the transform resizes to, never less.
    ``aspect``: items carry a fifth value, the decoded image's width / height (1.0 for a bad file),
    for a transform that squashes the whole image (``transforms.WholeImage``).
    """

    def __init__(self, images: ImageSet, transform: Callable[[Image.Image], torch.Tensor], *,
                 draft: tuple[int, int] | None = None, aspect: bool = False) -> None:
        self.images, self.transform, self.draft, self.aspect = images, transform, draft, aspect

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple:
        label = self.images.labels[i]
        try:
            img = self._decode(i)
            item = (i, self.transform(img), label, None)
            return (*item, img.width / img.height) if self.aspect else item
        except BadImageError as e:
            return (i, None, label, str(e), 1.0) if self.aspect else (i, None, label, str(e))

    def _decode(self, i: int) -> Image.Image:
        # Dataset rows may hold decoded images: re-encoding them for the draft would cost more than it saves.
        if self.draft is None or self.images.kind == "hf":
            return self.images.read(i)
        return decode_image(self.images.read_bytes(i), draft=self.draft)


@dataclass
class Batch:
    """The good samples of a batch, stacked, plus the (index, reason) of the skipped ones."""

    images: torch.Tensor  # (B, C, H, W); (0,) when every item was bad
    labels: torch.Tensor  # (B,) int64
    indices: torch.Tensor  # (B,) int64 into the ImageSet
    skipped: list[tuple[int, str]]
    aspect: torch.Tensor | None = None  # (B,) float32 width / height, from an ImageDataset(aspect=True)

    def pin_memory(self) -> Batch:
        # The DataLoader's pin thread calls this; without it a dataclass batch stays pageable and
        # the non_blocking copy to the GPU silently becomes a blocking one.
        self.images = self.images.pin_memory()
        if self.aspect is not None:
            self.aspect = self.aspect.pin_memory()
        return self


def collate(items: list[tuple]) -> Batch:
    """DataLoader ``collate_fn`` for ``ImageDataset`` items."""
    good = [it for it in items if it[1] is not None]
    return Batch(
        images=torch.stack([it[1] for it in good]) if good else torch.empty(0),
        labels=torch.tensor([it[2] for it in good], dtype=torch.int64),
        indices=torch.tensor([it[0] for it in good], dtype=torch.int64),
        skipped=[(int(it[0]), str(it[3])) for it in items if it[1] is None],
        aspect=torch.tensor([it[4] for it in good], dtype=torch.float32) if items and len(items[0]) > 4 else None,
    )


def epoch_order(n: int, *, seed: int, epoch: int) -> torch.Tensor:
    """The permutation of ``n`` items that epoch ``epoch`` visits: a function of seed and epoch alone, so a
    resumed run (or a restarted worker pool) starts mid-epoch without replaying the epoch's draws."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


def sample_indices(n: int, k: int) -> list[int]:
    """Up to ``k`` indices spread evenly over ``range(n)`` (all of them when n ≤ k): a fixed, seedless sample."""
    if n <= k:
        return list(range(n))
    return [i * n // k for i in range(k)]


def long_sides(images: ImageSet, indices: Sequence[int]) -> list[int]:
    """The longer side in pixels of each readable image among ``indices``, from its header (files) or its row (hf)."""
    sides = []
    for i in indices:
        try:
            w, h = images.read(i).size if images.kind == "hf" else check_header(images.read_bytes(i))
        except BadImageError:
            continue  # the store's decode reports it
        sides.append(max(w, h))
    return sides


def first_colour(images: ImageSet, indices: Sequence[int]) -> int | None:
    """The first of ``indices`` whose red, green and blue differ somewhere by more than ``GREY_TOLERANCE``, or None.

    Decoded small (JPEG draft at 64 px): a colour image stays colour at any size.
    """
    for i in indices:
        try:
            img = images.read(i) if images.kind == "hf" else decode_image(images.read_bytes(i), draft=(64, 64))
        except BadImageError:
            continue
        a = np.asarray(img.convert("RGB"), dtype=np.int16)
        if np.abs(a[..., 0] - a[..., 1]).max() > GREY_TOLERANCE or np.abs(a[..., 1] - a[..., 2]).max() > GREY_TOLERANCE:
            return i
    return None
