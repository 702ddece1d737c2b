"""An ``ImageSet`` as a DataLoader dataset: bad files become skipped items, never exceptions.

``ImageDataset`` + ``collate`` carry the ``BadImageError`` reasons through a DataLoader, so one
bad file never stops a run; ``Batch`` holds the good images stacked and the (index, reason) of the
others. Used by pretraining (the uint8 store, the kNN monitor); extraction has its own hashing
dataset (``extraction.hashed``) because it must read the bytes it hashes.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from PIL import Image

from sslprobe.images.decode import BadImageError, decode_image
from sslprobe.images.folders import ImageSet


class ImageDataset(torch.utils.data.Dataset):
    """An ``ImageSet`` through a transform; items are ``(i, tensor | None, label, reason | None)``.

    A ``BadImageError`` from decode or transform becomes ``(i, None, label, reason)``, so bad
    files never crash a DataLoader; any other exception is a bug and propagates. ``draft`` (w, h):
    JPEG files are read as bytes and decoded in PIL draft mode at no less than that size (a 12 MP
    photo decodes at 1/8 its width and height); pass the size the transform resizes to, never less.
    """

    def __init__(self, images: ImageSet, transform: Callable[[Image.Image], torch.Tensor], *,
                 draft: tuple[int, int] | None = None) -> None:
        self.images, self.transform, self.draft = images, transform, draft

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, int, str | None]:
        label = self.images.labels[i]
        try:
            return i, self.transform(self._decode(i)), label, None
        except BadImageError as e:
            return i, None, label, str(e)

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

    def pin_memory(self) -> Batch:
        # The DataLoader's pin thread calls this; without it a dataclass batch stays pageable and
        # the non_blocking copy to the GPU silently becomes a blocking one.
        self.images = self.images.pin_memory()
        return self


def collate(items: list[tuple]) -> Batch:
    """DataLoader ``collate_fn`` for ``ImageDataset`` items."""
    good = [it for it in items if it[1] is not None]
    return Batch(
        images=torch.stack([it[1] for it in good]) if good else torch.empty(0),
        labels=torch.tensor([it[2] for it in good], dtype=torch.int64),
        indices=torch.tensor([it[0] for it in good], dtype=torch.int64),
        skipped=[(int(it[0]), str(it[3])) for it in items if it[1] is None],
    )
