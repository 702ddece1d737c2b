"""Random resized crops of the whole image, drawn per image on the device: torchvision's RandomResizedCrop rule.

Pretraining's views (``pretraining/augment.py``) and fine-tuning's training views
(``finetuning/views.py``) crop a store that holds each whole image squashed to a square, with its
width / height kept beside it. The crop's area is a fraction of the original image and its aspect
ratio is measured in the original's own pixels, so a 4:3 photo is cropped as a 4:3 photo, not as
the square it is stored as (docs/pretrain.md, "Crops").
"""
from __future__ import annotations

import math

import torch


def crop_boxes(n: int, *, scale: tuple[float, float], ratio: tuple[float, float], generator: torch.Generator,
               device: torch.device | str, aspect: torch.Tensor | None = None, attempts: int = 10) -> torch.Tensor:
    """(N, 4) crops (w, h, cx, cy) as fractions of each image's width and height, as RandomResizedCrop samples them.

    An area fraction in ``scale`` and an aspect ratio in ``ratio`` (log-uniform) of the original
    image, whose width / height is ``aspect`` (N,) (None: square images). Draws ``attempts``
    candidates per image and keeps the first that fits (torchvision's rule); an image with none gets
    torchvision's fallback, the whole image clamped to the ratio range, centred. The draws are the
    same whatever fits, so the generator's stream after the call does not depend on the images.
    """
    g, (lo, hi) = generator, scale
    area = torch.rand(n, attempts, generator=g, device=device) * (hi - lo) + lo  # (N, A)
    lr0, lr1 = math.log(ratio[0]), math.log(ratio[1])
    r = torch.exp(torch.rand(n, attempts, generator=g, device=device) * (lr1 - lr0) + lr0)
    a = torch.ones(n, 1, device=device) if aspect is None else aspect.to(device, torch.float32).view(n, 1)
    # crop width over image width is sqrt(area·r/a): its pixel aspect is then r, its area area·W·H
    w, h = torch.sqrt(area * r / a), torch.sqrt(area * a / r)
    ok = (w <= 1) & (h <= 1)
    found = ok.any(1)
    first = ok.float().argmax(1, keepdim=True)  # the first candidate that fits (0 where none does)
    a, one, (r0, r1) = a.squeeze(1), torch.ones(n, device=device), ratio
    w = torch.where(found, w.gather(1, first).squeeze(1), torch.where(a > r1, r1 / a, one))
    h = torch.where(found, h.gather(1, first).squeeze(1), torch.where(a < r0, a / r0, one))
    cx = torch.where(found, w / 2 + torch.rand(n, generator=g, device=device) * (1 - w), one / 2)
    cy = torch.where(found, h / 2 + torch.rand(n, generator=g, device=device) * (1 - h), one / 2)
    return torch.stack([w, h, cx, cy], 1)  # (N, 4)


__all__ = ["crop_boxes"]
