"""The fine-tuning recipe: optimiser, learning rates per layer, schedule, label smoothing, crops.

The defaults (``config.finetune``; docs/finetune.md) are MAE's end-to-end fine-tuning recipe (He et
al. 2022, Table 9): AdamW with β = (0.9, 0.999), base rate 1e-3 per 256 images, weight decay 0.05 on
weights (not on biases, norms or tokens), 5 warm-up epochs then cosine decay to 0, label smoothing
0.1, and for ViTs layer-wise rate decay 0.75 (BEiT's, Bao et al. 2022: block i of L trains at
0.75^(L+1−i) of the head's rate). CNN backbones with trained weights run at 0.1× the head's rate,
DETR's ratio for an ImageNet backbone under AdamW (Carion et al. 2020, §4: 1e-5 beside 1e-4). Random
weights have no features to protect: every layer trains at the head's rate. The augmentation is
the light one of SimCLR's fine-tuning (Chen et al. 2020, appendix B): a random resized crop of the
whole image (area 8-100 %, aspect 3/4-4/3) and a horizontal flip; MAE's RandAugment, mixup, cutmix
and drop path are left out.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

import sslprobe.optim as optim
from sslprobe.config.finetune import BACKBONE_LR_SCALE, DEFAULT_LR, LAYER_DECAY

BETAS = optim.BETAS
CROP_RATIO = (3 / 4, 4 / 3)


def is_vit(net: nn.Module) -> bool:
    """A transformer with a patch embedding and a stack of blocks (ViT, DeiT, BEiT, EVA …): layer-wise decay."""
    return hasattr(net, "patch_embed") and isinstance(getattr(net, "blocks", None), nn.Module)


@dataclass(frozen=True)
class Recipe:
    """One run's hyper-parameters, resolved: ``lr`` is the head's peak rate for the global batch.

    ``batch_size`` is per process; under torchrun the global batch is ``batch_size`` × ``world_size``
    and ``lr`` = ``base_lr`` × global batch / 256, pretraining's rule (``pretraining/trainstep.run_config``).
    """

    base_lr: float  # per 256 images
    lr: float
    batch_size: int  # per process
    world_size: int
    weight_decay: float
    warmup_epochs: float
    label_smoothing: float
    backbone: str  # "layer decay 0.75", "0.1× the head" or "1× the head (random weights)"
    layer_decay: float | None
    backbone_lr_scale: float | None
    crop_scale: tuple[float, float]
    crop_ratio: tuple[float, float]
    flip_p: float

    def with_lr(self, base_lr: float) -> Recipe:
        """The same recipe at another base rate (one point of the learning-rate grid)."""
        return Recipe(base_lr, base_lr * self.global_batch / 256, self.batch_size, self.world_size, self.weight_decay,
                      self.warmup_epochs, self.label_smoothing, self.backbone, self.layer_decay,
                      self.backbone_lr_scale, self.crop_scale, self.crop_ratio, self.flip_p)

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size


def resolve_recipe(net: nn.Module, *, trained: bool, batch_size: int, world_size: int = 1, base_lr: float | None,
                   backbone_lr_scale: float | None, layer_decay: float | None, weight_decay: float,
                   warmup_epochs: float, label_smoothing: float, crop_scale: tuple[float, float],
                   flip_p: float) -> Recipe:
    """The recipe for ``net``: what was asked, else the defaults for its family and whether its weights are trained."""
    if layer_decay is None and backbone_lr_scale is None:
        if not trained:
            backbone_lr_scale = 1.0
        elif is_vit(net):
            layer_decay = LAYER_DECAY
        else:
            backbone_lr_scale = BACKBONE_LR_SCALE
    if layer_decay is not None:
        how = f"layer-wise decay {layer_decay:g} from the head down"
    else:
        how = f"{backbone_lr_scale:g}× the head's rate" + ("" if trained else " (random weights)")
    base = DEFAULT_LR if base_lr is None else base_lr
    return Recipe(base, base * batch_size * world_size / 256, batch_size, world_size, weight_decay, warmup_epochs,
                  label_smoothing, how,
                  layer_decay, backbone_lr_scale, (float(crop_scale[0]), float(crop_scale[1])), CROP_RATIO,
                  float(flip_p))


def param_groups(net: nn.Module, recipe: Recipe) -> list[dict]:
    """Optimiser groups with an ``lr_scale`` each: the head at 1, the backbone by the recipe (layer-wise decay or
    one scale); no decay on biases, norms and tokens (the shared grouping, ``sslprobe/optim.py``)."""
    if recipe.layer_decay is not None:
        return optim.layer_decay_groups(net, weight_decay=recipe.weight_decay, layer_decay=recipe.layer_decay)
    head = {id(p) for p in net.get_classifier().parameters()}
    return optim.param_groups(net, weight_decay=recipe.weight_decay,
                              lr_scale=lambda p: 1.0 if id(p) in head else float(recipe.backbone_lr_scale))


def make_optimizer(net: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    """AdamW over :func:`param_groups`; the loop sets each group's rate every step (``schedules.warmup_cosine``)."""
    return optim.make_optimizer("adamw", param_groups(net, recipe), lr=recipe.lr, betas=BETAS)


def set_lr(opt: torch.optim.Optimizer, recipe: Recipe, factor: float) -> None:
    for g in opt.param_groups:
        g["lr"] = recipe.lr * g.get("lr_scale", 1.0) * factor


__all__ = ["BETAS", "CROP_RATIO", "Recipe", "is_vit", "make_optimizer", "param_groups", "resolve_recipe", "set_lr"]
