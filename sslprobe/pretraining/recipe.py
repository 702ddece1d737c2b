"""The pretraining recipe: which optimiser a run gets, and the rates, decay, τ and warm-up it starts from.

Pure functions of the run's length, optimiser and init; the sources are cited where the numbers
are (docs/pretrain.md, "Defaults that follow the run", has the table). A value the user gives
always wins; only the ones left out are filled in, and the note says which and from where.

- BYOL's hyper-parameters are tuned for 1000 epochs. The official code has presets for 40, 100,
  300 and 1000 epochs (deepmind-research ``byol/configs/byol.py``, ``_LR_PRESETS``/``_WD_PRESETS``/
  ``_EMA_PRESETS``, rates per 256 images as ``byol/utils/schedules.py`` scales them; the 1000-epoch
  row is the paper's setting, Grill et al. 2020, "Implementation details"): a run gets the preset
  nearest its length on a log scale.
- ``auto`` picks AdamW for a backbone without BatchNorm (ViT, DeiT, Swin, ConvNeXt, MLP-Mixer …:
  the families trained with AdamW, and MoCo v3's optimiser for self-supervised ViTs), else LARS
  from a global batch of 256 (the paper's), else momentum SGD.
- From trained weights (``--init pretrained|FILE``) the backbone trains at 0.1× the base rate and
  the new heads at the full rate (DETR's ratio for an ImageNet backbone, Carion et al. 2020, §4;
  ``sslprobe finetune`` offers it as ``--backbone-lr-scale 0.1``): BYOL's heads start from random and
  must not drag good features around while they are still noise.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    """BYOL's values for one run length: LARS base rate per 256 images, weight decay, τ_base."""

    epochs: int
    lr: float
    weight_decay: float
    tau_base: float


# deepmind-research byol/configs/byol.py (warm-up: 10 epochs in every preset)
BYOL_PRESETS = (Preset(40, 0.45, 1e-6, 0.97), Preset(100, 0.45, 1e-6, 0.99), Preset(300, 0.3, 1e-6, 0.99),
                Preset(1000, 0.2, 1.5e-6, 0.996))
PAPER = BYOL_PRESETS[-1]  # the paper's 1000-epoch setting (Grill et al. 2020, implementation details)
BYOL_WARMUP_EPOCHS = 10.0
# lightly's examples/pytorch/byol.py: torch.optim.SGD(lr=0.06) at batch 256 (the peer sslprobe benchmarks against)
SGD_LR = 0.06
# MoCo v3's ViT recipe (Chen, Xie & He 2021; facebookresearch/moco-v3 CONFIG.md, ViT-S/B): AdamW, lr 1.5e-4 per
# 256 images, weight decay 0.1, 40 warm-up epochs of 300 (kept as that fraction of shorter or longer runs)
ADAMW_LR, ADAMW_WEIGHT_DECAY, ADAMW_WARMUP_FRACTION = 1.5e-4, 0.1, 40 / 300
TRAINED_BACKBONE_LR_SCALE = 0.1


def pick_optimizer(name: str, *, batch: int, batchnorm: bool = True) -> str:
    """``auto`` → AdamW without BatchNorm in the backbone, else LARS from batch 256 (the paper's), else SGD."""
    if name != "auto":
        return name
    if not batchnorm:
        return "adamw"
    return "lars" if batch >= 256 else "sgd"


def default_lr(optimizer: str, *, epochs: float = PAPER.epochs) -> float:
    """Base learning rate per 256 images for ``lars`` (BYOL's preset for ``epochs``), ``sgd`` or ``adamw``."""
    return {"lars": nearest_preset(epochs).lr, "sgd": SGD_LR, "adamw": ADAMW_LR}[optimizer]


def nearest_preset(epochs: float) -> Preset:
    """The BYOL preset whose length is nearest ``epochs`` on a log scale (a 200-epoch run gets the 300-epoch one)."""
    return min(BYOL_PRESETS, key=lambda p: abs(math.log(max(epochs, 1e-6) / p.epochs)))


@dataclass(frozen=True)
class Defaults:
    """A run's resolved hyper-parameters and one line saying where each came from (printed, and in config.json)."""

    base_lr: float
    weight_decay: float
    tau_base: float
    warmup_epochs: float
    backbone_lr_scale: float
    note: str


def fit_defaults(*, optimizer: str, epochs: float, trained: bool, lr: float | None = None,
                 weight_decay: float | None = None, tau_base: float | None = None,
                 warmup_epochs: float | None = None, backbone_lr_scale: float | None = None) -> Defaults:
    """Fill the options left as None for a run of ``epochs`` epochs with ``optimizer`` (resolved, not ``auto``).

    ``trained``: the backbone starts from trained weights. Given values are kept as they are.
    """
    p = nearest_preset(epochs)
    preset = f"BYOL's {p.epochs}-epoch preset"
    adamw = optimizer == "adamw"
    fitted = {
        "base lr": (default_lr(optimizer, epochs=epochs),
                    {"lars": preset, "sgd": "lightly's BYOL example", "adamw": "MoCo v3's ViT recipe"}[optimizer]),
        "weight decay": ((ADAMW_WEIGHT_DECAY, "MoCo v3's ViT recipe") if adamw else (p.weight_decay, preset)),
        "τ_base": (p.tau_base, preset),
        "warm-up epochs": ((round(ADAMW_WARMUP_FRACTION * epochs, 3), "MoCo v3: 40 of 300 epochs") if adamw
                           else (BYOL_WARMUP_EPOCHS, "BYOL")),
        "backbone lr scale": ((TRAINED_BACKBONE_LR_SCALE, "trained init: DETR's ratio") if trained
                              else (1.0, "random init")),
    }
    given = dict(zip(fitted, (lr, weight_decay, tau_base, warmup_epochs, backbone_lr_scale)))
    values = {k: given[k] if given[k] is not None else v for k, (v, _) in fitted.items()}
    parts = [f"{k} {values[k]:g} ({'given' if given[k] is not None else src})" for k, (_, src) in fitted.items()]
    return Defaults(base_lr=values["base lr"], weight_decay=values["weight decay"], tau_base=values["τ_base"],
                    warmup_epochs=values["warm-up epochs"], backbone_lr_scale=values["backbone lr scale"],
                    note=f"{optimizer} for a {epochs:.3g}-epoch run: " + ", ".join(parts))
