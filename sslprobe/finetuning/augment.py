"""What the network sees: a random resized crop of the whole image and a flip (training), the centre crop (evaluation).

Workers decode each training image once, squashed whole to a square of the training size, and keep
its aspect ratio (``data.py``); the crop is drawn here, on the device, for the whole batch at once:
per-image boxes in the original image's geometry (``images/crops.py``: torchvision's
RandomResizedCrop rule, so a 4:3 photo is cropped as a 4:3 photo), then one ``grid_sample`` crops,
flips and resizes every image (``images/crops.resized_crop``, the warp pretraining's views use too).
The draws of a step come from a generator seeded by (seed, step), so a resumed run sees the same crops.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from sslprobe.images.crops import crop_boxes, resized_crop


@functools.lru_cache(maxsize=16)
def _const(values: tuple[float, ...], device: torch.device) -> torch.Tensor:
    # A host→GPU copy of a fresh tensor waits for the GPU's queue: each constant is copied once per device.
    return torch.tensor(values).view(1, -1, 1, 1).to(device)


def normalize(x: torch.Tensor, *, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 (or 0-255 float) images → (x / 255 − mean) / std in float32, as timm's eval transform."""
    return (x.float().div(255) - _const(tuple(mean), x.device)) / _const(tuple(std), x.device)


@dataclass(frozen=True)
class TrainViews:
    """The training view of a step: crop + flip + normalise, a pure function of (seed, step) and the batch."""

    size: int
    scale: tuple[float, float]
    ratio: tuple[float, float]
    flip_p: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    seed: int

    def __call__(self, x: torch.Tensor, aspect: torch.Tensor, step: int) -> torch.Tensor:
        """(B, 3, size, size) float32 views of the uint8 (B, 3, S, S) squashed images ``x``."""
        g = torch.Generator(device=x.device)
        g.manual_seed(self.seed * 1_000_003 + step)
        boxes = crop_boxes(x.shape[0], scale=self.scale, ratio=self.ratio, generator=g, device=x.device, aspect=aspect)
        flip = torch.rand(x.shape[0], generator=g, device=x.device) < self.flip_p
        return resized_crop(normalize(x, mean=self.mean, std=self.std), boxes, flip, self.size)


__all__ = ["TrainViews", "normalize"]
