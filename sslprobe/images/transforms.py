"""The worker-side image transforms, to uint8 CHW: the centre crop, and pretraining's whole-image store.

``Uint8Transform`` (resize the short side, centre-crop a square) feeds extraction (CPU and nvJPEG
paths) and pretraining's kNN monitor; ``WholeImage`` (the whole image squashed to a square, its
aspect ratio kept beside it) feeds pretraining's store, from which the random crops are drawn in
the original image's geometry. Normalisation and the random views happen on the device. Both
can keep one channel (``channels=1``: ITU-R 601 luma, PIL's "L") for grey images.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F2

# Steps of a torchvision/timm transform that make float tensors; the device does their work instead.
_TENSOR_STEPS = ("ToTensor", "MaybeToTensor", "Normalize", "PILToTensor", "MaybePILToTensor")


@dataclass(frozen=True)
class Uint8Transform:
    """Resize the short side to ``resize`` (default ``size``), centre-crop ``size`` × ``size``, uint8 (3, S, S).

    Takes a PIL image (torchvision's PIL resize, as timm's eval transform does it) or a decoded
    uint8 (3, H, W) tensor on any device (torchvision's antialiased tensor resize). Picklable, for
    DataLoader workers. ``interpolation`` is a ``torchvision.transforms.InterpolationMode`` value.
    """

    size: int
    resize: int | None = None
    interpolation: str = "bicubic"
    channels: int = 3

    def __post_init__(self) -> None:
        if self.resize is None:
            object.__setattr__(self, "resize", self.size)
        InterpolationMode(self.interpolation)  # an unknown name fails here, not in a worker
        _check_channels(self.channels)

    @classmethod
    def from_timm(cls, transform: Any, *, channels: int = 3) -> Uint8Transform:
        """The resize and crop of timm's eval transform (``Resize(short side)``, ``CenterCrop``), as uint8."""
        steps = [t for t in getattr(transform, "transforms", [transform]) if type(t).__name__ not in _TENSOR_STEPS]
        names = [type(t).__name__ for t in steps]
        if names != ["Resize", "CenterCrop"]:
            raise ValueError(f"expected an eval transform of Resize then CenterCrop, got {names}")
        resize, crop = steps
        short = resize.size if isinstance(resize.size, int) else tuple(resize.size)
        if isinstance(short, tuple) and len(short) == 1:
            short = short[0]
        h, w = crop.size
        if not isinstance(short, int) or h != w:
            raise ValueError(f"expected a short-side Resize and a square crop, got {resize} and {crop}")
        return cls(size=h, resize=short, interpolation=InterpolationMode(resize.interpolation).value,
                   channels=channels)

    @property
    def draft(self) -> tuple[int, int]:
        """The smallest (w, h) a JPEG may be draft-decoded to: both sides stay ≥ ``resize``, so it never upsamples."""
        return (self.resize, self.resize)

    def __call__(self, img: Image.Image | torch.Tensor) -> torch.Tensor:
        mode = InterpolationMode(self.interpolation)
        if isinstance(img, torch.Tensor):
            img = F2.resize(img, [self.resize], interpolation=mode, antialias=True)
            return luma(F2.center_crop(img, [self.size, self.size]), self.channels)
        img = TF.resize(_mode(img, self.channels), self.resize, interpolation=mode)
        return TF.pil_to_tensor(TF.center_crop(img, [self.size, self.size]))


@dataclass(frozen=True)
class WholeImage:
    """The whole image resized to ``side`` × ``side``, uint8 (C, side, side): pretraining's store.

    The aspect ratio is not kept in the pixels but beside them (the dataset records each decoded
    image's width / height), and the crops are drawn in the original's geometry: a box that is a
    fraction of the image's width and height is the same fraction of the square. Square images
    come out exactly as ``Uint8Transform(size=side)`` makes them. Picklable, for DataLoader workers.
    """

    side: int
    interpolation: str = "bicubic"
    channels: int = 3

    def __post_init__(self) -> None:
        InterpolationMode(self.interpolation)
        _check_channels(self.channels)

    @property
    def draft(self) -> tuple[int, int]:
        """JPEGs may be draft-decoded down to (side, side): both sides stay ≥ ``side``, so it never upsamples."""
        return (self.side, self.side)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        img = TF.resize(_mode(img, self.channels), [self.side, self.side], interpolation=InterpolationMode(
            self.interpolation))
        return TF.pil_to_tensor(img)


def _check_channels(channels: int) -> None:
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels}")


def _mode(img: Image.Image, channels: int) -> Image.Image:
    return img.convert("L") if channels == 1 and img.mode != "L" else img


def luma(x: torch.Tensor, channels: int) -> torch.Tensor:
    """uint8 (3, H, W) (or a batch) as ``channels`` channels: itself, or its ITU-R 601 luma as PIL's "L" rounds it."""
    if channels == 3 or x.shape[-3] == 1:
        return x
    r, g, b = x.to(torch.int32).unbind(-3)
    y = (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16  # PIL's fixed-point ITU-R 601 weights, bit for bit
    return y.to(torch.uint8).unsqueeze(-3)
