"""Random resized crops of the whole image, drawn and warped per image on the device: torchvision's RandomResizedCrop.

Pretraining's views (``pretraining/augment.py``) and fine-tuning's training views
(``finetuning/augment.py``) crop a store that holds each whole image squashed to a square, with its
width / height kept beside it. The crop's area is a fraction of the original image and its aspect
ratio is measured in the original's own pixels, so a 4:3 photo is cropped as a 4:3 photo, not as
the square it is stored as (docs/pretrain.md, "Crops"). :func:`crop_boxes` draws the boxes,
:func:`resized_crop` cuts, flips, turns and resizes the whole batch to them in one ``grid_sample``.
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F


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


@functools.lru_cache(maxsize=16)
def _const(values: tuple[float, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    # A host→GPU copy of a fresh tensor waits for the GPU's queue (a hidden sync a step): each constant once a device.
    return torch.tensor(values, dtype=dtype).to(device)


def resized_crop(x: torch.Tensor, boxes: torch.Tensor, flip: torch.Tensor, size: int, mode: str = "bilinear", *,
                 turns: tuple[torch.Tensor, torch.Tensor] | None = None, supersample: int = 1) -> torch.Tensor:
    """Crop each image to its box (:func:`crop_boxes`), flip and turn where asked, resize to ``size``: one grid_sample.

    ``flip`` (B,): horizontal flips. ``turns``: (vertical flip (B,), quarter turns (B,) in 0…3),
    folded into the same affine grid (a turn of the square output grid costs nothing).
    ``supersample`` k: sample at k·size and average k×k blocks, so a crop larger than the view is
    not aliased (grid_sample has no antialiasing). Values are not clamped: bicubic overshoots.
    """
    n = x.shape[0]
    w, h, cx, cy = boxes.unbind(1)
    sx = torch.where(flip, -w, w)
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
    if turns is None:
        theta[:, 0, 0] = sx
        theta[:, 1, 1] = h
    else:
        vflip, k = turns
        sy = torch.where(vflip, -h, h)
        c = _const((1.0, 0.0, -1.0, 0.0), x.device, x.dtype)[k]  # cos(k·90°)
        s = _const((0.0, 1.0, 0.0, -1.0), x.device, x.dtype)[k]  # sin(k·90°)
        # input = diag(sx, sy) · R(k·90°) · output: the view of the box, turned k quarters
        theta[:, 0, 0], theta[:, 0, 1] = sx * c, -sx * s
        theta[:, 1, 0], theta[:, 1, 1] = sy * s, sy * c
    theta[:, 0, 2] = 2 * cx - 1
    theta[:, 1, 2] = 2 * cy - 1
    grid = F.affine_grid(theta, [n, x.shape[1], size * supersample, size * supersample], align_corners=False)
    y = F.grid_sample(x, grid, mode=mode, padding_mode="border", align_corners=False)
    return F.avg_pool2d(y, supersample) if supersample > 1 else y


__all__ = ["crop_boxes", "resized_crop"]
