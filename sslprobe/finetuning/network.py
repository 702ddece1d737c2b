"""The network a fine-tune starts from: the backbone ``--weights`` names (as ``extract`` reads them) plus a new head.

``random`` is timm's training init (zero-initialised residual branches: the better start for
training from scratch, as pretraining uses); ``random-rescaled`` is ``extract``'s — the fair random
init, rescaled on 64 training rows picked as ``extract`` picks them (a seeded hash of their names), so
a probe row and a fine-tune row of it start from the same network when ``extract --calibration`` names
the same training folder (up to JPEG draft decoding);
``pretrained`` is timm's hub weights and a file is any backbone ``extract --weights`` takes. The
head is the model's own timm classifier (``reset_classifier``), so the state dict keeps timm's names.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sslprobe.backbone import BackboneSpec
from sslprobe.errors import SSLProbeError
from sslprobe.finetuning.augment import normalize
from sslprobe.finetuning.data import ImageRows
from sslprobe.starts import open_start, parse_start

STARTS = ("random", "random-rescaled", "pretrained")  # the starts ``--weights`` names here; else a weights file

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
    """The backbone of ``weights`` (``starts.parse_start``): random (timm's training init), random-rescaled (the
    fair init, rescaled later, :func:`rescale`), pretrained or a file; and the report's entry on its weights."""
    opened = open_start(parse_start(weights, names=STARTS), model=model, image_size=image_size,
                        small_stem=small_stem, seed=seed, random_init="train", allow_pickle=allow_pickle)
    start = opened.start
    if start.init == "random":
        info: dict[str, Any] = {"weights": "random", "seed": seed, "init": "timm default (training init)"}
    elif start.init == "random-rescaled":
        info = {"weights": "random-rescaled", "seed": seed, "init": opened.note}
    elif start.init == "pretrained":
        info = {"weights": "pretrained", "pretrained_tag": opened.hub_tag}
    else:
        info = {"weights": "file", "path": str(weights), "sha256": start.sha256}
    return Backbone(opened.net, opened.spec, start.trained, info)


def rescale(backbone: Backbone, rows: ImageRows, *, seed: int, among: torch.Tensor | None = None) -> None:
    """``random-rescaled``: data-dependent init (Krähenbühl et al. 2016) on extract's calibration images.

    The pick is ``fairinit.calibration_batch`` over the decoded rows (their unreadable images were
    skipped when they were decoded), keyed by the rows' image names as extract keys its files.
    ``among``: the positions it may pick from (the training rows, never the validation hold-out); all rows if None.
    """
    from sslprobe.fairinit import calibration_batch, rescale_init_

    pool = torch.arange(len(rows)) if among is None else among
    ids = [rows.images.ids[i] for i in rows.idx[pool].tolist()]

    def read(positions: list[int]) -> list[torch.Tensor | None]:
        pos = pool[torch.tensor(positions, dtype=torch.long)]
        return [x for b, _ in rows.eval_batches(pos, batch=len(pos), device=torch.device("cpu")) for x in b.cpu()]

    x = calibration_batch(ids, read, seed=seed)
    done = rescale_init_(backbone.net, normalize(x, mean=backbone.spec.mean, std=backbone.spec.std))
    backbone.info.update(init=f"{backbone.info['init']}; then {done.note()}", calibration_images=int(x.shape[0]))


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


__all__ = ["HEAD_STD", "Backbone", "load_backbone", "rescale", "with_head"]
