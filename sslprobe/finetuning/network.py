"""The network a fine-tune starts from: the backbone ``--weights`` names (as ``extract`` reads them) plus a new head.

``random`` is timm's training init (zero-initialised residual branches: the better start for
training from scratch, as pretraining uses); ``random-rescaled`` is ``extract``'s — the fair random
init, rescaled on the 64 calibration images ``extract`` picks (a seeded hash of their names), so
a probe row and a fine-tune row of it start from the same network (up to JPEG draft decoding);
``pretrained`` is timm's hub weights and a file is any backbone ``extract --weights`` takes. The
head is the model's own timm classifier (``reset_classifier``), so the state dict keeps timm's names.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sslprobe.backbone import BackboneSpec, create_backbone, random_backbone
from sslprobe.errors import SSLProbeError
from sslprobe.finetuning.augment import normalize
from sslprobe.finetuning.data import ImageRows

CALIBRATION_IMAGES = 64  # extract's random-rescaled calibration sample
HEAD_STD = 0.01  # the new head's weights ~ N(0, 0.01²), bias 0 (MoCo v3 / MAE's linear-head init)


@dataclass
class Backbone:
    """A backbone as ``--weights`` gives it, its preprocessing, and what the report says about its weights."""

    net: nn.Module
    spec: BackboneSpec
    trained: bool  # trained weights (pretrained, a file) rather than a random init
    info: dict[str, Any]


def load_backbone(weights: str, *, model: str | None, image_size: int | None, small_stem: bool | None, seed: int,
                  allow_pickle: bool) -> Backbone:
    """The backbone of ``weights``: random, random-rescaled (rescaled later, :func:`rescale`), pretrained or a file."""
    if weights == "random":
        net, spec = create_backbone(model, weights="random", init="train", image_size=image_size,
                                    small_stem=small_stem, seed=seed)
        return Backbone(net, spec, False, {"weights": "random", "seed": seed, "init": "timm default (training init)"})
    if weights == "random-rescaled":
        if model is None:
            raise SSLProbeError("--weights random-rescaled needs --model NAME (a timm model, e.g. resnet18)")
        net, spec, note = random_backbone(model, image_size=image_size, small_stem=small_stem, seed=seed)
        return Backbone(net, spec, False, {"weights": "random-rescaled", "seed": seed, "init": note})
    net, spec = create_backbone(model, weights=weights, image_size=image_size, small_stem=small_stem, seed=seed,
                                allow_pickle=allow_pickle)
    if weights == "pretrained":
        tag = (getattr(net, "pretrained_cfg", None) or {}).get("tag")
        return Backbone(net, spec, True, {"weights": "pretrained", "pretrained_tag": tag})
    from sslprobe.fileio import file_sha256

    return Backbone(net, spec, True, {"weights": "file", "path": str(weights), "sha256": file_sha256(Path(weights))})


def calibration_positions(rows: ImageRows, *, seed: int) -> torch.Tensor:
    """Positions of the first 64 readable rows in the order of sha256("seed:name") (extract's calibration pick)."""
    ids = rows.images.ids
    order = sorted(range(len(rows)), key=lambda p: hashlib.sha256(f"{seed}:{ids[int(rows.idx[p])]}".encode()).digest())
    return torch.tensor(order[:CALIBRATION_IMAGES], dtype=torch.long)


def rescale(backbone: Backbone, rows: ImageRows, *, seed: int) -> None:
    """``random-rescaled``: data-dependent init (Krähenbühl et al. 2015) on extract's calibration images."""
    from sslprobe.fairinit import rescale_init_

    pos = calibration_positions(rows, seed=seed)
    if pos.numel() < 2:
        raise SSLProbeError("--weights random-rescaled needs at least 2 readable images to calibrate on")
    x = torch.cat([x.cpu() for x, _ in rows.eval_batches(pos, batch=len(pos), device=torch.device("cpu"))])
    rescale_init_(backbone.net, normalize(x, mean=backbone.spec.mean, std=backbone.spec.std))
    backbone.info.update(init=f"{backbone.info['init']}; then rescaled (Krähenbühl et al. 2015)",
                         calibration_images=int(pos.numel()))


def with_head(net: nn.Module, num_classes: int, *, seed: int) -> nn.Module:
    """``net`` with timm's classifier for ``num_classes``, its linear weights drawn from ``seed``."""
    if not hasattr(net, "reset_classifier"):
        raise SSLProbeError(f"{type(net).__name__} has no timm classifier to replace; fine-tune a timm model")
    net.reset_classifier(num_classes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 7)
        for m in net.get_classifier().modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=HEAD_STD)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
    return net


__all__ = ["CALIBRATION_IMAGES", "HEAD_STD", "Backbone", "calibration_positions", "load_backbone", "rescale",
           "with_head"]
