"""The one worker-side image transform: resize the short side, centre-crop a square, uint8 CHW.

Pretraining's image store, its kNN monitor and extraction (CPU and nvJPEG paths) all hand the
device uint8 images made here; normalisation and pretraining's random views happen on the device.
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

    def __post_init__(self) -> None:
        if self.resize is None:
            object.__setattr__(self, "resize", self.size)
        InterpolationMode(self.interpolation)  # an unknown name fails here, not in a worker

    @classmethod
    def from_timm(cls, transform: Any) -> Uint8Transform:
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
        return cls(size=h, resize=short, interpolation=InterpolationMode(resize.interpolation).value)

    @property
    def draft(self) -> tuple[int, int]:
        """The smallest (w, h) a JPEG may be draft-decoded to: both sides stay ≥ ``resize``, so it never upsamples."""
        return (self.resize, self.resize)

    def __call__(self, img: Image.Image | torch.Tensor) -> torch.Tensor:
        mode = InterpolationMode(self.interpolation)
        if isinstance(img, torch.Tensor):
            img = F2.resize(img, [self.resize], interpolation=mode, antialias=True)
            return F2.center_crop(img, [self.size, self.size])
        img = TF.resize(img, self.resize, interpolation=mode)
        return TF.pil_to_tensor(TF.center_crop(img, [self.size, self.size]))
