"""`sslprobe pretrain` and `sslprobe views`: BYOL's options, its augmentations and the preview's."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sslprobe.config import common
from sslprobe.config import rules as r
from sslprobe.config.base import Config, option
from sslprobe.errors import SSLProbeError

AUG, MON = "Augmentation (paper defaults)", "Monitoring"  # --help panels
OPTIMIZERS = ("auto", "lars", "sgd", "adamw")
DEFAULT_MODEL = "resnet18"  # with --init FILE an sslprobe backbone names its own


@dataclass(frozen=True, kw_only=True)
class AugmentConfig(Config):
    """BYOL's augmentations as the paper gives them (Grill et al. 2020, Table 6): view 1, view 2.

    The domain augmentations (vertical flip, quarter turns) are off by default (docs/pretrain.md,
    "Augmentations"): orientation carries no meaning in microscopy, satellite and inspection images.
    """

    name = "augmentation"
    blur: bool | None = option(None, "Gaussian blur (default: on above 64 px, off at ≤ 64 px).",
                               flag="--blur/--no-blur", panel=AUG, show_default=False)
    crop_scale: tuple[float, float] = option((0.08, 1.0), "Random resized crop area range MIN MAX, as fractions of "
                                             "the whole image.", rule=r.min_max(0, 1), panel=AUG, metavar="MIN MAX")
    crop_ratio: tuple[float, float] = option((3 / 4, 4 / 3), "Crop aspect-ratio range.", rule=r.min_max(0), cli=False)
    flip_p: float = option(0.5, "Horizontal flip probability.", rule=r.probability, panel=AUG)
    jitter_p: float = option(0.8, "Colour jitter probability.", rule=r.probability, panel=AUG)
    brightness: float = option(0.4, "Jitter brightness strength.", rule=r.ge(0), panel=AUG)
    contrast: float = option(0.4, "Jitter contrast strength.", rule=r.ge(0), panel=AUG)
    saturation: float = option(0.2, "Jitter saturation strength.", rule=r.ge(0), panel=AUG)
    hue: float = option(0.1, "Jitter hue strength (≤ 0.5).", panel=AUG)
    gray_p: float = option(0.2, "Grayscale probability.", rule=r.probability, panel=AUG)
    blur_p: tuple[float, float] = option((1.0, 0.1), "Blur probability of view 1 and view 2.",
                                         rule=r.per_view, panel=AUG, metavar="P1 P2")
    blur_sigma: tuple[float, float] = option((0.1, 2.0), "Blur σ range MIN MAX (kernel ≈ 10 % of the side).",
                                             rule=r.min_max(0), panel=AUG, metavar="MIN MAX")
    solarize_p: tuple[float, float] = option((0.0, 0.2), "Solarisation probability of view 1 and view 2.",
                                             rule=r.per_view, panel=AUG, metavar="P1 P2")
    vflip_p: float = option(0.0, "Vertical flip probability (domain augmentation: microscopy, satellite, inspection; "
                            "paper: 0).", rule=r.probability, panel=AUG)
    rot90_p: float = option(0.0, "Probability of a quarter, half or three-quarter turn (0.75: all four orientations "
                            "alike; paper: 0).", rule=r.probability, panel=AUG)

    def rules(self) -> None:
        if not 0 <= self.hue <= 0.5:
            raise SSLProbeError(f"--hue must be in [0, 0.5] (got {self.hue})")
        if len(self.blur_p) != 2 or len(self.solarize_p) != 2:
            raise SSLProbeError("--blur-p and --solarize-p take one value per view (two numbers)")

    def view_options(self) -> dict:
        """The keywords of :func:`sslprobe.pretraining.augment.byol_views` (all but ``blur``)."""
        return {k: v for k, v in self.shallow().items() if k != "blur"}


GRAYSCALE_HELP = "Grey images: one channel through the store, the views and the backbone (colour images are refused)."


@dataclass(frozen=True, kw_only=True)
class PretrainConfig(common.Runtime, common.ImageInputs):
    """Everything `sslprobe pretrain` / ``sslprobe.pretrain()`` is asked for (docs/pretrain.md).

    None means "fitted": the rates, decay, warm-up and τ left as None follow the run's length,
    optimiser and init (pretraining/recipe.py). ``minutes`` sizes the schedule (like ``max_steps``);
    ``max_minutes`` and ``stop_at`` stop a run early and keep its schedule.
    """

    name = "pretrain"
    data: str = option(help="Folder of images (labels ignored) or hf:NAME[:SPLIT].", argument=True,
                       rule=r.image_source)
    out: Path = option(help="Run directory: backbone.safetensors, config.json, metrics.jsonl.", path=True)
    model: str | None = option(None, f"Any timm model name (default: {DEFAULT_MODEL}; an sslprobe --init file names "
                               "its own).", show_default=False)
    init: str = option("random", "Start the backbone from random (timm's training init), pretrained (timm's hub "
                       "weights) or FILE: a timm state dict in .safetensors, or an earlier run's backbone.safetensors "
                       "(a new run; --resume continues the same one). The heads start fresh.", rule=r.init_source)
    image_size: int | None = option(None, "Training resolution (default: the model's). ≤ 64 px switches ResNets to "
                                    "a small-image stem.", rule=r.ge(8))
    small_stem: bool | None = common.small_stem()
    batch_size: int = option(256, "Images per step and process (LARS is used from a global batch of 256 up).",
                             rule=r.ge(1))
    epochs: int = option(100, "Passes over the data.", rule=r.ge(1))
    max_steps: int | None = option(None, "Run length in steps (overrides --epochs for the schedule).", rule=r.ge(1))
    minutes: float | None = option(None, "Run length in minutes: a short timing run (OUT/budget) fits the steps so "
                                   "that warm-up, cosine and τ all end in time (overrides --epochs; --max-minutes "
                                   "instead stops a longer schedule).", rule=r.positive)
    optimizer: str = option("auto", "auto, lars, sgd or adamw (auto: AdamW for backbones without BatchNorm such as "
                            "ViTs, else LARS for batch ≥ 256, else SGD).")
    lr: float | None = option(None, "Base learning rate per 256 images (default: fitted to the optimiser, run length "
                              "and init; see docs/pretrain.md).", rule=r.positive, show_default=False)
    tau_base: float | None = option(None, "Target EMA start value τ_base (default: fitted to the run length, "
                                    "0.97–0.996).", show_default=False)
    warmup_epochs: float | None = option(None, "Linear warm-up length in epochs (default: 10; AdamW: 2/15 of the "
                                         "run).", rule=r.ge(0), show_default=False)
    backbone_lr_scale: float | None = option(None, "The backbone's rate as a fraction of the heads' (default: 0.1 "
                                             "from trained weights, else 1).", rule=r.positive, show_default=False)
    proj_hidden: int = option(4096, "Hidden width of projector and predictor MLPs (paper: 4096).", rule=r.ge(1))
    proj_dim: int = option(256, "Output width of projector and predictor (paper: 256).", rule=r.ge(1))
    weight_decay: float | None = option(None, "Weight decay, biases and norms excluded (default: fitted, "
                                        "1e-6–1.5e-6; AdamW 0.1).", rule=r.ge(0), show_default=False)
    resume: str = common.resume("Continue the run in --out from its last good checkpoint (same options required); "
                                "start it if there is none.")
    save_every: str = common.save_every("Checkpoint every STEPS (500), MINUTES (10m), both (500,10m), or only at the "
                                        "end (end).")
    max_minutes: float | None = option(None, "Stop with a checkpoint after this many minutes (the schedule stays the "
                                       "full run's; --resume continues).", rule=r.positive, panel=common.CKPT)
    stop_at: int | None = option(None, "Stop with a checkpoint after this step (the schedule stays the full run's; "
                                 "--resume continues).", rule=r.ge(1), panel=common.CKPT)
    augment: AugmentConfig = option(help="BYOL's augmentations.", factory=AugmentConfig)
    grayscale: bool = option(False, GRAYSCALE_HELP, flag="--grayscale", panel=AUG)
    eval_train: str | None = option(None, "Labelled class folder: kNN bank for an online evaluation (with "
                                    "--eval-test).", panel=MON)
    eval_test: str | None = option(None, "Labelled class folder scored by the online kNN evaluation.", panel=MON)
    eval_every: int = option(1, "Online kNN evaluation every K epochs.", rule=r.ge(1), panel=MON)
    log_every: int = option(10, "Log to metrics.jsonl every N steps.", rule=r.ge(1), panel=MON)
    compile: bool = option(False, "torch.compile the model (falls back to eager if it fails).",
                           flag="--compile/--no-compile")

    def rules(self) -> None:
        if self.minutes is not None and self.max_steps is not None:
            raise SSLProbeError("--minutes and --max-steps are both run lengths; give one of them")
        if self.optimizer not in OPTIMIZERS:
            raise SSLProbeError(f"unknown optimizer '{self.optimizer}'; use {', '.join(OPTIMIZERS)}")
        if self.tau_base is not None and not 0 <= self.tau_base < 1:
            raise SSLProbeError(f"--tau-base must be in [0, 1) (got {self.tau_base})")
        if (self.eval_train is None) != (self.eval_test is None):
            raise SSLProbeError("online kNN evaluation needs both --eval-train and --eval-test")


@dataclass(frozen=True, kw_only=True)
class PreviewConfig(Config):
    """`sslprobe views`: the view pairs a run with the same options would draw at one step."""

    name = "views"
    data: str = option(help="Folder of images (labels ignored) or hf:NAME[:SPLIT].", argument=True,
                       rule=r.image_source)
    out: Path | None = option(None, "PNG to write: one row per image, its two views (draw_views needs none).",
                              path=False, required=True)
    n: int = option(8, "Images (view pairs) to show.", flag="--n", rule=r.ge(1))
    model: str = option(DEFAULT_MODEL, "The timm model pretrain would train (its size).")
    image_size: int | None = option(None, "Training resolution (default: the model's).", rule=r.ge(8))
    batch_size: int = option(256, "Pretrain's --batch-size: the draws of an image depend on its batch.", rule=r.ge(1))
    step: int = option(0, "Run step whose batch and views are shown.", rule=r.ge(0))
    augment: AugmentConfig = option(help="BYOL's augmentations.", factory=AugmentConfig)
    grayscale: bool = option(False, GRAYSCALE_HELP, flag="--grayscale", panel=AUG)
    seed: int = common.seed()
    image_column: str | None = common.image_column()
    label_column: str | None = common.label_column()
