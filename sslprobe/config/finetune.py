"""`sslprobe finetune`: the start, the run length, the recipe (docs/finetune.md) and the label curve."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sslprobe.config import common
from sslprobe.config import rules as r
from sslprobe.config.base import option
from sslprobe.config.extract import NEEDS_MODEL
from sslprobe.errors import SSLProbeError

RECIPE, LABELS = "Recipe (docs/finetune.md)", "Label efficiency"  # --help panels
DEFAULT_EPOCHS = 30
# The recipe per start (docs/finetune.md, "The recipe and its sources"; finetuning/recipe.py cites each number).
TRAINED_LR = 1e-3  # AdamW peak rate of the head per 256 images from trained weights (MAE's base rate)
SCRATCH_LR = 4e-3  # from random weights: RSB A3's 8e-3 at 2048 images, √-scaled to batch 128 (2e-3), per 256
TRAINED_WEIGHT_DECAY, SCRATCH_WEIGHT_DECAY = 0.05, 0.02  # MAE; ResNet strikes back A2/A3
LR_GRID = (1 / 3, 1.0, 3.0)  # the default grid: the recipe's rate ÷3, ×1, ×3, chosen on validation
GRID_EXTENSIONS = 2  # runs the default grid may add past its edge (×3 each) when validation chooses an end
BACKBONE_LR_SCALE = 1.0  # CNN backbones, trained or random: SimCLR's and BYOL's fine-tuning (DETR's 0.1× on request)
LAYER_DECAY = 0.75  # trained ViTs, per block from the head down


def _crop_scale(name: str, value: tuple[float, float] | None) -> None:
    if value is not None:
        r.min_max(0, 1)(name, value)


@dataclass(frozen=True, kw_only=True)
class FinetuneConfig(common.Runtime, common.ImageInputs):
    """Everything `sslprobe finetune` / ``sslprobe.finetune()`` is asked for (docs/finetune.md: the recipe, sources)."""

    name = "finetune"
    train: str = option(help="Class folders (one subfolder per class) or hf:NAME[:SPLIT] with labels.",
                        argument=True, rule=r.image_source)
    out: Path = option(help="Run directory: model.safetensors (timm-loadable, with class names), report.json, "
                       "per-class CSVs, plots.", path=True)
    weights: str = option("random", "random (timm's training init), random-rescaled, pretrained (timm hub) or a "
                          "backbone .safetensors file.")
    model: str | None = option(None, "timm model name (not needed for sslprobe backbone files).")
    val: str | None = option(None, "Validation class folders (default: the probe's stratified 20 % hold-out of "
                             "TRAIN).", rule=r.image_source)
    test: str | None = option(None, "Test class folders, scored once with the chosen network.", rule=r.image_source)
    image_size: int | None = option(None, "Training and evaluation resolution (default: the model's).", rule=r.ge(8))
    small_stem: bool | None = common.small_stem()
    epochs: int | None = option(None, f"Passes over the training rows (default {DEFAULT_EPOCHS}).", rule=r.ge(1))
    minutes: float | None = option(None, "Budget instead of --epochs, for the whole fine-tune (the learning-rate "
                                   "grid, the refit and the label curve): the whole epochs a timing of the step says "
                                   "fit.", rule=r.positive)
    batch_size: int = option(128, "Images per step.", rule=r.ge(2))  # BatchNorm needs two images per step
    lr: float | None = option(None, f"AdamW peak rate of the head per 256 images, one run (default: a grid around "
                              f"{SCRATCH_LR:g} from random weights, {TRAINED_LR:g} from trained ones).",
                              rule=r.positive, panel=RECIPE)
    lrs: tuple[float, ...] = option((), "The learning-rate grid, e.g. 3e-4,1e-3,3e-3: one run each, chosen on "
                                    "validation with the epoch (default: the recipe's rate ÷3, ×1, ×3, and ×3 "
                                    "further past an end that wins, twice at most).",
                                    rule=r.each(r.positive), cli_type=str, parse=r.floats, panel=RECIPE)
    backbone_lr_scale: float | None = option(None, f"Backbone rate ÷ head rate (default {BACKBONE_LR_SCALE:g} for "
                                             "CNNs; DETR's protective 0.1 on request).", rule=r.positive,
                                             panel=RECIPE)
    layer_decay: float | None = option(None, f"Layer-wise rate decay from the head down (default: {LAYER_DECAY:g} for "
                                       "trained ViTs).", panel=RECIPE)
    weight_decay: float | None = option(None, f"AdamW weight decay, not on biases, norms, tokens (default: "
                                        f"{SCRATCH_WEIGHT_DECAY:g} from random weights, {TRAINED_WEIGHT_DECAY:g} "
                                        "from trained ones).", rule=r.ge(0), panel=RECIPE)
    warmup_epochs: float = option(5.0, "Linear warm-up before the cosine decay (at most 10 % of the run).",
                                  rule=r.ge(0), panel=RECIPE)
    label_smoothing: float = option(0.1, "Label smoothing of the training loss (0 turns it off).", panel=RECIPE)
    crop_scale: tuple[float, float] | None = option(None, "Random resized crop area range MIN MAX of the whole "
                                                    "image (default: by the run's length, docs/finetune.md).",
                                                    rule=_crop_scale, panel=RECIPE)
    flip_p: float = option(0.5, "Horizontal flip probability.", rule=r.probability, panel=RECIPE)
    metric: str = common.metric("the epoch (and learning rate)")
    fractions: tuple[float, ...] = option((), "Label-efficiency fractions of each class, e.g. 0.01,0.1,1.0.",
                                          rule=r.label_fractions, cli_type=str, parse=r.floats, panel=LABELS)
    shots: tuple[int, ...] = option((), "Label-efficiency shots per class, e.g. 1,5,10.", rule=r.each(r.ge(1)),
                                    cli_type=str, parse=r.ints, panel=LABELS)
    seeds: int = option(3, "Draws per label-efficiency point (mean ± std).", rule=r.ge(1), panel=LABELS)
    val_fraction: float = option(0.2, "The validation hold-out of TRAIN without --val.", rule=r.open_unit, cli=False)
    resume: str = common.resume("Continue the fine-tune in --out (same options required); start it if there is "
                                "none.")
    save_every: str = common.save_every("Checkpoint every STEPS (500), MINUTES (10m), both (500,10m), or only at stops "
                                        "(end).")
    stop_after: int | None = option(None, "Stop the session after this many steps, with a checkpoint.", rule=r.ge(1),
                                    cli=False)
    allow_pickle: bool = common.allow_pickle()

    def rules(self) -> None:
        if self.weights == "pixels":
            raise SSLProbeError("--weights pixels has no network to fine-tune; use random, random-rescaled, "
                                "pretrained or a backbone .safetensors file")
        if self.weights in NEEDS_MODEL and self.model is None:
            raise SSLProbeError(f"--weights {self.weights} needs --model NAME (a timm model, e.g. resnet18)")
        if self.epochs is not None and self.minutes is not None:
            raise SSLProbeError("--epochs and --minutes are both budgets; give one of them")
        if self.lr is not None and self.lrs:
            raise SSLProbeError("--lr fixes the learning rate and --lrs searches a grid; give one of them")
        if self.backbone_lr_scale is not None and self.layer_decay is not None:
            raise SSLProbeError("--backbone-lr-scale and --layer-decay both set the backbone's rate; give one of them")
        if self.layer_decay is not None and not 0 < self.layer_decay <= 1:
            raise SSLProbeError(f"--layer-decay must be in (0, 1] (got {self.layer_decay})")
        if not 0 <= self.label_smoothing < 1:
            raise SSLProbeError(f"--label-smoothing must be in [0, 1) (got {self.label_smoothing})")
