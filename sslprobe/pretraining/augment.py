"""BYOL's two asymmetric views as batched tensor ops, each image with its own random draw.

Workers only decode images to a uint8 "store" tensor: each whole image squashed to a square, with
its width/height kept beside it (``pretraining/batches.py``, docs/pretrain.md "Crops"). The views are
made here on the training device (GPU when present), so augmentation never starves the model of
data. Every op samples per-image parameters and applies them to the whole batch at once: crop +
flips + quarter turns + resize is one ``grid_sample`` with a per-image affine grid, the crop drawn
in the original image's geometry and warped there (``images/crops.py``); colour ops are per-image factors with
"identity" values where the op is not applied, blur is one grouped convolution with per-image
kernels. One-channel (grey) batches go through the same ops; those that only move colour
(saturation, hue, grayscale) leave them unchanged.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from sslprobe.config.pretrain import AugmentConfig
from sslprobe.images.crops import crop_boxes, resized_crop

_GRAY = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as torchvision's rgb_to_grayscale


@dataclass(frozen=True)
class ViewConfig:
    """One view's recipe; defaults are view 1 of BYOL (Grill et al. 2020, Table 6)."""

    crop_scale: tuple[float, float] = AugmentConfig.crop_scale
    crop_ratio: tuple[float, float] = AugmentConfig.crop_ratio
    flip_p: float = AugmentConfig.flip_p
    jitter_p: float = AugmentConfig.jitter_p
    brightness: float = AugmentConfig.brightness
    contrast: float = AugmentConfig.contrast
    saturation: float = AugmentConfig.saturation
    hue: float = AugmentConfig.hue
    gray_p: float = AugmentConfig.gray_p
    blur_p: float = AugmentConfig.blur_p[0]
    blur_sigma: tuple[float, float] = AugmentConfig.blur_sigma
    solarize_p: float = AugmentConfig.solarize_p[0]
    interpolation: str = "bicubic"
    vflip_p: float = AugmentConfig.vflip_p
    rot90_p: float = AugmentConfig.rot90_p


def byol_views(image_size: int, augment: AugmentConfig | None = None, /,
               **options: Any) -> tuple[ViewConfig, ViewConfig]:
    """The paper's asymmetric pair (Grill et al. 2020, Table 6) from ``augment`` (or its options as keywords).

    Defaults: blur p 1.0/0.1, solarise p 0.0/0.2 for views 1/2, the rest shared. ``blur=None``
    turns blur off at ≤ 64 px: a 10 % kernel is under 7 px there and the small-image BYOL/SimCLR
    recipes (CIFAR, Fashion-MNIST) leave it out. ``vflip_p`` and ``rot90_p`` (a quarter, half or
    three-quarter turn, drawn uniformly) are the domain augmentations, off by default. Values out of
    range were refused when the config was built.
    """
    a = AugmentConfig.build(**options) if augment is None else augment.replace(**options) if options else augment
    blur, blur_p, solarize_p = a.blur, a.blur_p, a.solarize_p
    if blur is None:
        blur = image_size > 64
    shared = {k: v for k, v in a.view_options().items() if k not in ("blur_p", "solarize_p")}
    v1 = ViewConfig(**shared, blur_p=blur_p[0] if blur else 0.0, solarize_p=solarize_p[0])
    v2 = ViewConfig(**shared, blur_p=blur_p[1] if blur else 0.0, solarize_p=solarize_p[1])
    return v1, v2


def blur_note(image_size: int, blur: bool | None) -> str:
    """What config.json says about blur: on, off by request, or off automatically at ≤ 64 px."""
    if blur is None:
        return "on" if image_size > 64 else f"off (automatic: image size {image_size} ≤ 64 px)"
    return "on" if blur else "off (--no-blur)"


@functools.lru_cache(maxsize=64)
def _const(values: tuple, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    # A host→GPU copy of a fresh tensor waits for the GPU to finish its queue (a hidden sync per
    # step); each constant is copied once per device instead.
    return torch.tensor(values, dtype=dtype).to(device)


def _uniform(lo: float, hi: float, n: int, g: torch.Generator, device) -> torch.Tensor:
    return torch.rand(n, generator=g, device=device) * (hi - lo) + lo


def _bernoulli(p: float, n: int, g: torch.Generator, device) -> torch.Tensor:
    return torch.rand(n, generator=g, device=device) < p


def quarter_turns(n: int, cfg: ViewConfig, g: torch.Generator, device) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Per-image vertical flips (N,) bool and quarter turns (N,) in 0…3, or None when both are off.

    Nothing is drawn when both are off, so the default views keep the random stream they always had.
    """
    if cfg.vflip_p == 0 and cfg.rot90_p == 0:
        return None
    vflip = _bernoulli(cfg.vflip_p, n, g, device)
    turn = _bernoulli(cfg.rot90_p, n, g, device)
    k = torch.randint(1, 4, (n,), generator=g, device=device)
    return vflip, torch.where(turn, k, torch.zeros_like(k))


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) → (B, 1, H, W) luma; a one-channel batch is its own luma."""
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    return (_GRAY[0] * r + _GRAY[1] * g + _GRAY[2] * b).unsqueeze(1)


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] → HSV with hue in [0, 1)."""
    r, g, b = x.unbind(1)
    maxc, arg = x.max(1)  # one pass for value and channel; ties pick r before g before b (colorsys's order)
    delta = maxc - x.amin(1)
    inv = 1 / torch.where(delta > 0, delta, torch.ones_like(delta))
    h = torch.where(arg == 0, ((g - b) * inv) % 6, torch.where(arg == 1, (b - r) * inv + 2, (r - g) * inv + 4))
    h = torch.where(delta > 0, h / 6, torch.zeros_like(h))
    s = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), torch.zeros_like(maxc))
    return torch.stack([h, s, maxc], 1)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_hsv`, in closed form: c_n = v − v·s·clamp(min(k, 4 − k), 0, 1), k = (n + 6h) mod 6.

    n = 5, 3, 1 for r, g, b. Elementwise only: the sector-table formulation needed an int64 sector
    index and a gather per pixel, which cost 4× as much on CPU.
    """
    h, s, v = x.unbind(1)
    n = _const((5.0, 3.0, 1.0), x.device, x.dtype).view(1, 3, 1, 1)
    k = (n + 6 * h.unsqueeze(1)) % 6  # (B, 3, H, W)
    return v.unsqueeze(1) - (v * s).unsqueeze(1) * torch.minimum(k, 4 - k).clamp_(0, 1)


def color_jitter(x: torch.Tensor, cfg: ViewConfig, g: torch.Generator) -> torch.Tensor:
    """Brightness, contrast, saturation, hue with per-image factors (identity where not applied).

    Fixed order b→c→s→h instead of torchvision's random permutation: one batched pass, and the
    order changes little in practice. On one channel saturation and hue have nothing to move: their
    factors are drawn (the stream stays the same) and not applied.
    """
    n, dev = x.shape[0], x.device
    on = _bernoulli(cfg.jitter_p, n, g, dev)

    def factor(strength: float, centre: float) -> torch.Tensor:
        f = _uniform(centre - strength, centre + strength, n, g, dev)
        return torch.where(on, f, torch.full_like(f, centre)).view(n, 1, 1, 1)

    b = factor(cfg.brightness, 1.0).clamp(min=0)
    c = factor(cfg.contrast, 1.0).clamp(min=0)
    s = factor(cfg.saturation, 1.0).clamp(min=0)
    hshift = factor(cfg.hue, 0.0)
    x = (x * b).clamp_(0, 1)
    m = grayscale(x).mean((1, 2, 3), keepdim=True)
    x = (c * x + (1 - c) * m).clamp_(0, 1)
    if x.shape[1] == 1:
        return x
    x = (s * x + (1 - s) * grayscale(x)).clamp_(0, 1)
    if cfg.hue > 0:
        hsv = rgb_to_hsv(x)
        hsv = torch.cat([(hsv[:, :1] + hshift) % 1.0, hsv[:, 1:]], 1)
        x = torch.where(hshift != 0, hsv_to_rgb(hsv), x)
    return x


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blur each image with its own σ (B,), kernel ≈ 10 % of the side; σ ≤ 0 means no blur."""
    n, c, hgt, wid = x.shape
    k = max(3, round(0.1 * min(hgt, wid)) // 2 * 2 + 1)
    r = torch.arange(k, device=x.device, dtype=x.dtype) - k // 2
    s = sigma.clamp(min=1e-3).to(x.dtype).view(n, 1)
    ker = torch.exp(-(r.view(1, k) ** 2) / (2 * s**2))  # (B, k)
    ker = ker / ker.sum(1, keepdim=True)
    ker = torch.where((sigma > 0).view(n, 1), ker, (r == 0).to(x.dtype).expand(n, k))
    ker = ker.repeat_interleave(c, 0)  # (B*C, k): one kernel per image channel
    y = F.pad(x.reshape(1, n * c, hgt, wid), (k // 2, k // 2, k // 2, k // 2), mode="reflect")
    y = F.conv2d(y, ker.view(n * c, 1, k, 1), groups=n * c)
    y = F.conv2d(y, ker.view(n * c, 1, 1, k), groups=n * c)
    return y.view(n, c, hgt, wid)


def solarize(x: torch.Tensor) -> torch.Tensor:
    """Invert the pixels at or above one half."""
    return torch.where(x >= 0.5, 1 - x, x)


def _on_drawn(x: torch.Tensor, on: torch.Tensor, op, *args: torch.Tensor) -> torch.Tensor:
    """``op`` applied to the images where ``on`` (B,) is set; the others pass through unchanged.

    On CPU only the drawn images are computed and written back into ``x`` in place (view 2 blurs
    10 % of its images, so it pays ~10 % of the blur; a copy of the batch would cost more than
    that). On CUDA every image goes through ``op`` with the rest masked out: picking the subset
    needs its size on the host, a sync per call.
    """
    n = x.shape[0]
    if x.device.type == "cuda":
        return torch.where(on.view(n, 1, 1, 1), op(x, *args), x)
    idx = on.nonzero().squeeze(1)
    if len(idx) == n:
        return op(x, *args)
    if len(idx):
        x.index_copy_(0, idx, op(x[idx], *(a[idx] for a in args)))
    return x


def blur_drawn(x: torch.Tensor, sigma: torch.Tensor, on: torch.Tensor) -> torch.Tensor:
    """:func:`gaussian_blur` with ``sigma`` (B,) on the images where ``on`` (B,) is set, the others untouched.

    May write into ``x`` (CPU); pass a tensor the caller no longer needs.
    """
    return _on_drawn(x, on, gaussian_blur, sigma)  # on CUDA: undrawn images pass through exactly


def make_view(
    x: torch.Tensor,
    cfg: ViewConfig,
    *,
    size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    generator: torch.Generator,
    aspect: torch.Tensor | None = None,
) -> torch.Tensor:
    """One augmented, normalised view (B, C, size, size) of a (B, C, S, S) store batch of 0…255 values (uint8 or float).

    ``aspect`` (B,): each original image's width / height, the store holding it squashed to the
    square (None: square images). ``mean``/``std`` have one value per channel (C = 3, or 1 for
    grey). ``x`` is left as it is: the second view of a step is made from the same batch.
    """
    g, n, dev = generator, x.shape[0], x.device
    x = x.to(torch.float32, copy=True).div_(255)  # copy: .float() of a float batch is the batch itself
    boxes = crop_boxes(n, scale=cfg.crop_scale, ratio=cfg.crop_ratio, generator=g, device=dev, aspect=aspect)
    flip = _bernoulli(cfg.flip_p, n, g, dev)
    x = resized_crop(x, boxes, flip, size, cfg.interpolation, turns=quarter_turns(n, cfg, g, dev),
                     supersample=max(1, round(x.shape[-1] / size))).clamp_(0, 1)  # bicubic overshoots [0, 1]
    x = color_jitter(x, cfg, g)
    gray = _bernoulli(cfg.gray_p, n, g, dev).view(n, 1, 1, 1)
    x = torch.where(gray, grayscale(x).expand_as(x), x)
    if cfg.blur_p > 0:
        sig = _uniform(*cfg.blur_sigma, n, g, dev)
        x = blur_drawn(x, sig, _bernoulli(cfg.blur_p, n, g, dev))
    sol = _bernoulli(cfg.solarize_p, n, g, dev)  # drawn even at p = 0: later draws keep their place in the stream
    if cfg.solarize_p > 0:
        x = _on_drawn(x, sol, solarize)
    m = _const(tuple(mean), dev, x.dtype).view(1, -1, 1, 1)
    sd = _const(tuple(std), dev, x.dtype).view(1, -1, 1, 1)
    return (x - m) / sd
