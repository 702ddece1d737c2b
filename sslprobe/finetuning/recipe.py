"""The fine-tuning recipe, per start and per run length: optimiser, rates per layer, grid, schedule, smoothing, crops.

Two starts, two sources (docs/finetune.md, "The recipe and its sources", has the table and the measurements):

- **From trained weights** (``pretrained``, a backbone file): MAE's end-to-end fine-tuning (He et al. 2022,
  Table 9): AdamW β = (0.9, 0.999), 1e-3 per 256 images, weight decay 0.05; ViTs get BEiT's layer-wise decay 0.75
  (Bao et al. 2022: block i of L trains at 0.75^(L+1−i) of the head's rate); CNNs train every layer at one rate,
  as SimCLR's and BYOL's fine-tuning of their ResNets does (Chen et al. 2020, appendix B.5; Grill et al. 2020,
  appendix C). DETR's 0.1× for an ImageNet backbone (Carion et al. 2020, §4: 1e-5 beside 1e-4) protects a
  backbone from a large head trained from scratch over 300+ epochs; here the head is linear, and on a short BYOL
  backbone at 3 epochs 0.1× scored 95.0 % where 1× scored 98.7 % (``--backbone-lr-scale 0.1`` asks for it).
- **From random weights**: the from-scratch rates of timm's ResNet procedures ("ResNet strikes back",
  Wightman et al. 2021, Table 1): LAMB at 5e-3 (A1, A2) or 8e-3 (A3, their short 100-epoch run) for a batch
  of 2048, weight decay 0.01 (A1) or 0.02 (A2, A3), 5 warm-up epochs, cosine. Adaptive optimisers scale their
  rate with the square root of the batch (timm's default for Adam and LAMB; Malladi et al. 2022), so A3's 8e-3
  at 2048 is 2e-3 at our default batch of 128, which is 4e-3 per 256 images under this tool's linear rule
  (``lr = base × batch / 256``, MAE's); weight decay 0.02 (A2, A3). Every layer trains at the head's rate:
  random weights have no features to protect.

Both: 5 warm-up epochs (MAE, RSB), at most 10 % of the run (5 of MAE's 100 epochs is 5 %; the old cap of half
the run spent half of a 3-epoch fine-tune below its peak rate), then cosine to 0; label smoothing 0.1 (MAE;
Szegedy et al. 2016). The run length sets the crop (:func:`crop_for`): the random resized crop of the whole
image (SimCLR's fine-tuning augmentation, Chen et al. 2020, appendix B) with the Inception area range 8-100 %
only for runs of :data:`LONG_RUN_EPOCHS` epochs or more, 50-100 % from :data:`SHORT_RUN_EPOCHS`, the whole image
below; the flip (p 0.5) is a property of the data, not of the run: ``--flip-p 0`` for digits, text, maps.
By default three rates are tried, the recipe's ÷3, ×1 and ×3 (:data:`~sslprobe.config.finetune.LR_GRID`): the
two batch-scaling rules put RSB's rate 2.8× apart at 256 images (1e-3 linear, 2.8e-3 by the square root), and a
3-epoch run wants a higher rate than a 100-epoch one; validation chooses the rate with the epoch. BatchNorm's
statistics are recomputed before every validation (PreciseBN, ``loop.Trainer.precise_bn``). MAE's RandAugment,
mixup, cutmix and drop path are left out.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

import sslprobe.optim as optim
from sslprobe.config.finetune import (
    BACKBONE_LR_SCALE,
    GRID_EXTENSIONS,
    LAYER_DECAY,
    LR_GRID,
    SCRATCH_LR,
    SCRATCH_WEIGHT_DECAY,
    TRAINED_LR,
    TRAINED_WEIGHT_DECAY,
)

BETAS = optim.BETAS
CROP_RATIO = (3 / 4, 4 / 3)
WARMUP_FRACTION = 0.1  # the warm-up's share of a run, at most
# The crop by run length (docs/finetune.md, "Crops"). A crop regularises; it pays once a run is long enough to
# overfit without it (RSB weakens its augmentation for its shortest run, A3). Inception's 8-100 % (Szegedy et al.
# 2015; torchvision's, timm's and RSB's default) is made for ImageNet runs of 100+ epochs. Measured on 1,400 digits
# at 32 px (test_resnet from random weights, recomputed BN statistics): at 3 epochs the 8-100 % crop scored 66.8 %,
# 50-100 % 81.1 %, the whole image 88.7 %; at 30 epochs 95.2 %, 98.2 % and 99.2 %.
SHORT_RUN_EPOCHS, LONG_RUN_EPOCHS = 10, 100
WHOLE_IMAGE, MEDIUM_CROP, INCEPTION_CROP = (1.0, 1.0), (0.5, 1.0), (0.08, 1.0)


def is_vit(net: nn.Module) -> bool:
    """A transformer with a patch embedding and a stack of blocks (ViT, DeiT, BEiT, EVA …): layer-wise decay."""
    return hasattr(net, "patch_embed") and isinstance(getattr(net, "blocks", None), nn.Module)


def crop_for(epochs: int) -> tuple[float, float]:
    """The crop's area range for a run of ``epochs``: the whole image below :data:`SHORT_RUN_EPOCHS` (an underfit
    run only learns slower from crops), 50-100 % below :data:`LONG_RUN_EPOCHS`, Inception's 8-100 % from there."""
    if epochs < SHORT_RUN_EPOCHS:
        return WHOLE_IMAGE
    return MEDIUM_CROP if epochs < LONG_RUN_EPOCHS else INCEPTION_CROP


@dataclass(frozen=True)
class Recipe:
    """One run's hyper-parameters, resolved: ``lr`` is the head's peak rate for the global batch.

    ``batch_size`` is per process; under torchrun the global batch is ``batch_size`` × ``world_size``
    and ``lr`` = ``base_lr`` × global batch / 256, pretraining's rule (``pretraining/trainstep.run_config``).
    ``crop_scale`` None: :func:`crop_for` the run's epochs (``Recipe.crop``).
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
    crop_scale: tuple[float, float] | None
    crop_ratio: tuple[float, float]
    flip_p: float
    start: str = "trained"  # "scratch" (random weights) or "trained": which source the defaults follow
    lr_grid: tuple[float, ...] = ()  # base rates per 256 images, one run each (one value: no search)
    grid_extensions: int = 0  # runs the grid may add past the end validation chose (the default grid's)
    note: str = ""  # what was resolved and from where (printed at the start, report.json's recipe)

    def with_lr(self, base_lr: float) -> Recipe:
        """The same recipe at another base rate (one point of the learning-rate grid)."""
        return dataclasses.replace(self, base_lr=base_lr, lr=base_lr * self.global_batch / 256)

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    def crop(self, epochs: int) -> tuple[float, float]:
        """The crop's area range of a run of ``epochs``: as asked, else by the run's length."""
        return self.crop_scale if self.crop_scale is not None else crop_for(epochs)


def _backbone_rate(net: nn.Module, *, trained: bool, backbone_lr_scale: float | None,
                   layer_decay: float | None) -> tuple[float | None, float | None, str]:
    """(layer decay, backbone scale, how): what was asked, else by family and start."""
    src = "given"
    if layer_decay is None and backbone_lr_scale is None:
        if not trained:
            backbone_lr_scale, src = 1.0, "random weights"
        elif is_vit(net):
            layer_decay, src = LAYER_DECAY, "BEiT, MAE"
        else:
            backbone_lr_scale, src = BACKBONE_LR_SCALE, "SimCLR, BYOL fine-tuning"
    if layer_decay is not None:
        return layer_decay, None, f"layer-wise decay {layer_decay:g} from the head down ({src})"
    return None, backbone_lr_scale, f"{backbone_lr_scale:g}× the head's rate ({src})"


def resolve_recipe(net: nn.Module, *, trained: bool, batch_size: int, world_size: int = 1, base_lr: float | None,
                   lrs: tuple[float, ...] = (), backbone_lr_scale: float | None, layer_decay: float | None,
                   weight_decay: float | None, warmup_epochs: float, label_smoothing: float,
                   crop_scale: tuple[float, float] | None, flip_p: float) -> Recipe:
    """The recipe for ``net``: what was asked, else the defaults for its start (trained or random weights) and
    family; ``note`` says each value and its source."""
    start = "trained" if trained else "scratch"
    src = "MAE" if trained else "ResNet strikes back A3, √-scaled"
    default_lr = TRAINED_LR if trained else SCRATCH_LR
    base = default_lr if base_lr is None else base_lr
    grid = tuple(sorted(lrs)) if lrs else (base,) if base_lr is not None else tuple(default_lr * f for f in LR_GRID)
    wd = weight_decay if weight_decay is not None else TRAINED_WEIGHT_DECAY if trained else SCRATCH_WEIGHT_DECAY
    decay, scale, how = _backbone_rate(net, trained=trained, backbone_lr_scale=backbone_lr_scale,
                                       layer_decay=layer_decay)
    rates = ", ".join(f"{x:.3g}" for x in grid)
    extend = 0 if lrs or base_lr is not None else GRID_EXTENSIONS
    rate_src = "given" if not extend else f"{src}; ÷3, ×1, ×3 chosen on validation, ×3 further past an end " \
                                          f"that wins, {extend} times at most"
    crop = "given" if crop_scale is not None else f"by run length: whole image below {SHORT_RUN_EPOCHS} epochs, " \
        f"{MEDIUM_CROP[0]:g}-1 below {LONG_RUN_EPOCHS}, then {INCEPTION_CROP[0]:g}-1"
    note = (f"from {'trained' if trained else 'random'} weights: AdamW, lr {rates} per 256 images ({rate_src}); "
            f"weight decay {wd:g} ({'given' if weight_decay is not None else 'MAE' if trained else 'RSB A2/A3'}); "
            f"backbone {how}; warm-up {warmup_epochs:g} epochs, at most {WARMUP_FRACTION:.0%} of the run "
            f"(MAE, RSB), then cosine; label smoothing {label_smoothing:g}; crop {crop}; flip {flip_p:g}")
    crop_pair = None if crop_scale is None else (float(crop_scale[0]), float(crop_scale[1]))
    return Recipe(base, base * batch_size * world_size / 256, batch_size, world_size, wd, warmup_epochs,
                  label_smoothing, how, decay, scale, crop_pair, CROP_RATIO, float(flip_p), start, grid, extend, note)


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


def fine_tune_warmup(epochs: float, *, steps_per_epoch: int, total: int) -> int:
    """A warm-up of ``epochs`` in steps, at most :data:`WARMUP_FRACTION` of the run's ``total`` steps."""
    return min(round(epochs * steps_per_epoch), int(WARMUP_FRACTION * total))


__all__ = ["BETAS", "CROP_RATIO", "INCEPTION_CROP", "LONG_RUN_EPOCHS", "MEDIUM_CROP", "Recipe", "SHORT_RUN_EPOCHS",
           "WARMUP_FRACTION", "WHOLE_IMAGE", "crop_for", "fine_tune_warmup", "is_vit", "make_optimizer", "param_groups",
           "resolve_recipe", "set_lr"]
