"""Option defaults and the rules that check them, in one torch-free place.

The command line runs these checks before torch loads (an argument error answers at once); the
library functions run the same ones, so a Python caller gets the same one-line message. Each rule
is written once here (docs/architecture.md, "Options").
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from sslprobe.errors import SSLProbeError

N = TypeVar("N", int, float)


@dataclass(frozen=True)
class PretrainDefaults:
    """What `sslprobe pretrain` and `sslprobe.pretrain()` use when an option is not given."""

    model: str = "resnet18"  # with --init FILE an sslprobe backbone names its own
    init: str = "random"
    batch_size: int = 256
    epochs: int = 100
    optimizer: str = "auto"
    # None: fitted to the run's length, optimiser and init (pretraining/recipe.py; docs/pretrain.md, "Defaults")
    tau_base: float | None = None
    warmup_epochs: float | None = None
    proj_hidden: int = 4096
    proj_dim: int = 256
    weight_decay: float | None = None
    save_every: str = "10m"
    eval_every: int = 1
    log_every: int = 10


@dataclass(frozen=True)
class ViewDefaults:
    """BYOL's augmentations as the paper gives them (Grill et al. 2020, Table 6): view 1, view 2."""

    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    gray_p: float = 0.2
    blur_p: tuple[float, float] = (1.0, 0.1)
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: tuple[float, float] = (0.0, 0.2)
    # Domain augmentations, off by default (docs/pretrain.md, "Augmentations"): orientation carries no
    # meaning in microscopy, satellite and inspection images. rot90_p 0.75 makes all four turns equally likely.
    vflip_p: float = 0.0
    rot90_p: float = 0.0


@dataclass(frozen=True)
class ExtractDefaults:
    weights: str = "random"
    layer: str = "pre-logits"
    pool: str = "auto"
    dtype: str = "float32"
    batch_size: int = 128
    decode: str = "cpu"


@dataclass(frozen=True)
class ProbeDefaults:
    search: str = "grid"
    knn_k: tuple[int, ...] = (10, 20, 200)
    knn_temperature: float = 0.07
    seeds: int = 3
    select: str = "auto"


@dataclass(frozen=True)
class FinetuneDefaults:
    """What `sslprobe finetune` and `sslprobe.finetune()` use when an option is not given (docs/finetune.md:
    the recipe and its sources)."""

    weights: str = "random"
    epochs: int = 30
    batch_size: int = 128
    lr: float = 1e-3  # AdamW peak rate of the head per 256 images (MAE's base rate)
    weight_decay: float = 0.05
    warmup_epochs: float = 5.0
    label_smoothing: float = 0.1
    backbone_lr_scale: float = 0.1  # trained CNN backbones; random weights train at 1.0
    layer_decay: float = 0.75  # trained ViTs, per block from the head down
    crop_scale: tuple[float, float] = (0.08, 1.0)
    flip_p: float = 0.5
    val_fraction: float = 0.2
    seeds: int = 3
    select: str = "auto"
    save_every: str = "10m"


@dataclass(frozen=True)
class StudyDefaults:
    """What `sslprobe study` and `sslprobe.study()` use when an option is not given (docs/study.md)."""

    model: str = "resnet18"
    arms_cpu: tuple[str, ...] = ("pixels", "random", "byol")
    arms_gpu: tuple[str, ...] = ("pixels", "random", "random-rescaled", "imagenet", "byol", "byol-imagenet")
    test_fraction: float = 0.2  # of each class, drawn once into splits.json
    val_fraction: float = 0.2  # of what the test draw leaves
    fractions: tuple[float, ...] = (0.01, 0.1, 1.0)
    shots: tuple[int, ...] = (1, 5, 25)
    seeds: int = 3
    knn_k: tuple[int, ...] = (10, 20, 200)
    search: str = "grid"
    select: str = "auto"


PRETRAIN = PretrainDefaults()
VIEWS = ViewDefaults()
EXTRACT = ExtractDefaults()
PROBE = ProbeDefaults()
FINETUNE = FinetuneDefaults()
STUDY = StudyDefaults()

OPTIMIZERS = ("auto", "lars", "sgd", "adamw")
POOLS = ("auto", "cls", "mean")
FEATURE_DTYPES = ("float32", "float16")
DECODERS = ("cpu", "gpu")
SEARCHES = ("grid", "binary")
SELECTS = ("auto", "top1", "balanced")
NAMED_WEIGHTS = ("random", "random-rescaled", "pretrained", "pixels")
STUDY_ARMS = ("pixels", "random", "random-rescaled", "imagenet", "byol", "byol-imagenet", "finetune-random",
              "finetune-imagenet", "finetune-byol")


def at_least(name: str, value: N | None, low: N = 1) -> None:
    """``--epochs 0`` → "--epochs must be ≥ 1 (got 0)"; None means "not given" and passes."""
    if value is not None and not value >= low:  # `not >=` also rejects NaN
        raise SSLProbeError(f"{name} must be ≥ {low} (got {value})")


def positive(name: str, value: float | None) -> None:
    """A strictly positive, finite number (learning rates, C, minutes)."""
    if value is not None and not (value > 0 and math.isfinite(value)):
        raise SSLProbeError(f"{name} must be a positive number (got {value})")


def one_of(name: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise SSLProbeError(f"{name} must be one of {', '.join(allowed)} (got '{value}')")


def numbers(name: str, text: str | None, kind: type[N]) -> tuple[N, ...]:
    """'0.01,0.1,1' → (0.01, 0.1, 1.0); empty or 'none' → (); a bad item names the option."""
    if text is None or text.strip().lower() in ("", "none"):
        return ()
    try:
        return tuple(kind(t) for t in text.replace(" ", "").split(",") if t)
    except ValueError:
        what = "integers" if kind is int else "numbers"
        raise SSLProbeError(f"{name} takes comma-separated {what}, got '{text}'") from None


def image_source(data: str) -> None:
    """A folder (or file list) that exists, or ``hf:NAME[:SPLIT]``; checked before any heavy import."""
    if not data.startswith("hf:") and not Path(data).exists():
        raise SSLProbeError(f"'{data}' does not exist; pass a folder of images (or class subfolders) "
                            "or hf:NAME[:SPLIT]")


def feature_source(path: str | None) -> None:
    if path is not None and not Path(path).exists():
        raise SSLProbeError(f"'{path}' does not exist; pass a feature directory from `sslprobe extract` "
                            "or a .safetensors file")


def check_extract(*, weights: str, model: str | None, batch_size: int, image_size: int | None, pool: str,
                  dtype: str, decode: str, no_cache: bool = False, cache_dir: object = None) -> None:
    """Every `extract` rule that needs no model or data."""
    at_least("--batch-size", batch_size)
    at_least("--image-size", image_size)
    if weights in ("random", "random-rescaled", "pretrained") and model is None:
        raise SSLProbeError(f"--weights {weights} needs --model NAME (a timm model, e.g. resnet18)")
    if no_cache and cache_dir is not None:
        raise SSLProbeError("--no-cache and --cache-dir contradict each other; pass one of them")
    one_of("--dtype", dtype, FEATURE_DTYPES)
    one_of("--pool", pool, POOLS)
    one_of("--decode", decode, DECODERS)


def check_probe(*, C: float | None, search: str, select: str, seeds: int, chunk_rows: int | None,
                knn_k: Sequence[int], knn_temperature: float = PROBE.knn_temperature, Cs: Sequence[float] | None = None,
                val_fraction: float = 0.2, dtype: str = "auto", feature_dtype: str = "float32") -> None:
    """Every `probe`/`compare` rule that needs no features."""
    positive("--C", C)
    if Cs is not None and (not Cs or not min(Cs) > 0):
        raise SSLProbeError("C values must be positive (e.g. --C 1.0)")
    one_of("--search", search, SEARCHES)
    one_of("--select", select, SELECTS)
    at_least("--seeds", seeds)
    at_least("--chunk-rows", chunk_rows)
    for k in knn_k:
        at_least("--knn-k", k)
    positive("--knn-t (the kNN temperature)", knn_temperature)
    if not 0 < val_fraction < 1:
        raise SSLProbeError(f"val_fraction must be in (0, 1), got {val_fraction}")
    one_of("compute dtype", dtype, ("auto", "float32", "float64"))
    one_of("feature storage dtype", feature_dtype, FEATURE_DTYPES)


def probe_keywords(*, C: float | None, search: str, knn_k: str, knn_t: float, fractions: str | None,
                   shots: str | None, seeds: int, chunk_rows: int | None, float64: bool, half_features: bool,
                   select: str) -> dict:
    """The command line's probe/compare options, checked, as `probe()`'s keywords."""
    ks = numbers("--knn-k", knn_k, int)
    check_probe(C=C, search=search, select=select, seeds=seeds, chunk_rows=chunk_rows, knn_k=ks,
                knn_temperature=knn_t)
    return {"C": C, "search": search, "knn_k": ks, "knn_temperature": knn_t,
            "fractions": numbers("--fractions", fractions, float),
            "shots": numbers("--shots", shots, int), "seeds": seeds, "chunk_rows": chunk_rows,
            "dtype": "float64" if float64 else "auto", "feature_dtype": "float16" if half_features else "float32",
            "select": select}


def check_pretrain(*, batch_size: int, epochs: int, max_steps: int | None, image_size: int | None,
                   stop_at: int | None, eval_every: int, log_every: int, lr: float | None,
                   max_minutes: float | None, optimizer: str, tau_base: float | None, warmup_epochs: float | None,
                   proj_hidden: int, proj_dim: int, weight_decay: float | None, resume: str = "no",
                   eval_train: object = None, eval_test: object = None, init: str = PRETRAIN.init,
                   backbone_lr_scale: float | None = None, minutes: float | None = None) -> None:
    """Every `pretrain` rule that needs no model or data (None: a value the run's recipe fills in).

    ``minutes`` sizes the schedule (it overrides ``epochs``, as ``max_steps`` does), so it and ``max_steps``
    are two run lengths; ``max_minutes`` is a stop, not a length, and goes with either.
    """
    for name, v in (("--batch-size", batch_size), ("--epochs", epochs), ("--max-steps", max_steps),
                    ("--stop-at", stop_at), ("--eval-every", eval_every), ("--log-every", log_every),
                    ("--proj-hidden", proj_hidden), ("--proj-dim", proj_dim)):
        at_least(name, v)
    at_least("--image-size", image_size, 8)
    positive("--lr", lr)
    positive("--max-minutes", max_minutes)
    positive("--minutes", minutes)
    if minutes is not None and max_steps is not None:
        raise SSLProbeError("--minutes and --max-steps are both run lengths; give one of them")
    if optimizer not in OPTIMIZERS:
        raise SSLProbeError(f"unknown optimizer '{optimizer}'; use {', '.join(OPTIMIZERS)}")
    if tau_base is not None and not 0 <= tau_base < 1:
        raise SSLProbeError(f"--tau-base must be in [0, 1) (got {tau_base})")
    at_least("--warmup-epochs", warmup_epochs, 0)
    at_least("--weight-decay", weight_decay, 0)
    positive("--backbone-lr-scale", backbone_lr_scale)
    check_init(init)
    if resume not in ("no", "auto", "yes"):
        raise SSLProbeError(f"--resume '{resume}' not understood; use --resume (must continue) or --resume auto")
    if (eval_train is None) != (eval_test is None):
        raise SSLProbeError("online kNN evaluation needs both --eval-train and --eval-test")


def check_init(init: str) -> None:
    """``--init``: random, pretrained, or a safetensors file that exists (pickles are never loaded for training)."""
    if init in ("random", "pretrained"):
        return
    path = Path(init)
    if not path.is_file():
        raise SSLProbeError(f"--init '{init}' is not random, pretrained or an existing file; pass --init random, "
                            "--init pretrained (timm's hub weights) or --init FILE.safetensors")
    if path.suffix in (".pt", ".pth", ".bin", ".ckpt"):
        raise SSLProbeError(f"--init '{init}' is a pickle file, which can run code when loaded; convert it with "
                            "safetensors.torch.save_file(state_dict, 'weights.safetensors') and pass that")


def check_views(*, crop_scale: Sequence[float], crop_ratio: Sequence[float], flip_p: float, jitter_p: float,
                brightness: float, contrast: float, saturation: float, hue: float, gray_p: float,
                blur_p: Sequence[float], blur_sigma: Sequence[float], solarize_p: Sequence[float],
                vflip_p: float = VIEWS.vflip_p, rot90_p: float = VIEWS.rot90_p) -> None:
    """Every augmentation rule: probabilities in [0, 1], strengths ≥ 0, ranges MIN ≤ MAX, one value per view."""
    for name, p in (("flip-p", flip_p), ("jitter-p", jitter_p), ("gray-p", gray_p), ("vflip-p", vflip_p),
                    ("rot90-p", rot90_p),
                    *((f"blur-p (view {i + 1})", v) for i, v in enumerate(blur_p)),
                    *((f"solarize-p (view {i + 1})", v) for i, v in enumerate(solarize_p))):
        if not 0 <= p <= 1:
            raise SSLProbeError(f"--{name} is a probability in [0, 1] (got {p})")
    for name, v in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation)):
        if v < 0:
            raise SSLProbeError(f"--{name} must be ≥ 0 (got {v})")
    if not 0 <= hue <= 0.5:
        raise SSLProbeError(f"--hue must be in [0, 0.5] (got {hue})")
    if not 0 < crop_scale[0] <= crop_scale[1] <= 1:
        raise SSLProbeError(f"--crop-scale needs 0 < MIN ≤ MAX ≤ 1 (got {crop_scale[0]} {crop_scale[1]})")
    if not 0 < crop_ratio[0] <= crop_ratio[1]:
        raise SSLProbeError(f"crop aspect ratio needs 0 < MIN ≤ MAX (got {crop_ratio})")
    if not 0 < blur_sigma[0] <= blur_sigma[1]:
        raise SSLProbeError(f"--blur-sigma needs 0 < MIN ≤ MAX (got {blur_sigma[0]} {blur_sigma[1]})")
    if len(blur_p) != 2 or len(solarize_p) != 2:
        raise SSLProbeError("--blur-p and --solarize-p take one value per view (two numbers)")


def check_preview(*, n: int, step: int, batch_size: int, image_size: int | None) -> None:
    """Every `views` rule that needs no data (the view options are :func:`check_views`')."""
    at_least("--n", n)
    at_least("--step", step, 0)
    at_least("--batch-size", batch_size)
    at_least("--image-size", image_size, 8)


def check_finetune(*, weights: str, model: str | None, epochs: int | None, minutes: float | None, batch_size: int,
                   image_size: int | None, lr: float | None, lrs: Sequence[float], backbone_lr_scale: float | None,
                   layer_decay: float | None, weight_decay: float, warmup_epochs: float, label_smoothing: float,
                   crop_scale: Sequence[float], flip_p: float, val_fraction: float, select: str, seeds: int,
                   fractions: Sequence[float], shots: Sequence[int]) -> None:
    """Every `finetune` rule that needs no model or data."""
    if weights == "pixels":
        raise SSLProbeError("--weights pixels has no network to fine-tune; use random, random-rescaled, pretrained "
                            "or a backbone .safetensors file")
    if weights in ("random", "random-rescaled", "pretrained") and model is None:
        raise SSLProbeError(f"--weights {weights} needs --model NAME (a timm model, e.g. resnet18)")
    if epochs is not None and minutes is not None:
        raise SSLProbeError("--epochs and --minutes are both budgets; give one of them")
    at_least("--epochs", epochs)
    positive("--minutes", minutes)
    at_least("--batch-size", batch_size, 2)  # BatchNorm needs two images per step
    at_least("--image-size", image_size, 8)
    if lr is not None and lrs:
        raise SSLProbeError("--lr fixes the learning rate and --lrs searches a grid; give one of them")
    for v in (lr, *lrs):
        positive("--lr" if lr is not None else "--lrs", v)
    positive("--backbone-lr-scale", backbone_lr_scale)
    if backbone_lr_scale is not None and layer_decay is not None:
        raise SSLProbeError("--backbone-lr-scale and --layer-decay both set the backbone's rate; give one of them")
    if layer_decay is not None and not 0 < layer_decay <= 1:
        raise SSLProbeError(f"--layer-decay must be in (0, 1] (got {layer_decay})")
    at_least("--weight-decay", weight_decay, 0)
    at_least("--warmup-epochs", warmup_epochs, 0)
    if not 0 <= label_smoothing < 1:
        raise SSLProbeError(f"--label-smoothing must be in [0, 1) (got {label_smoothing})")
    if len(crop_scale) != 2 or not 0 < crop_scale[0] <= crop_scale[1] <= 1:
        raise SSLProbeError(f"--crop-scale needs 0 < MIN ≤ MAX ≤ 1 (got {' '.join(map(str, crop_scale))})")
    if not 0 <= flip_p <= 1:
        raise SSLProbeError(f"--flip-p is a probability in [0, 1] (got {flip_p})")
    if not 0 < val_fraction < 1:
        raise SSLProbeError(f"the validation fraction must be in (0, 1) (got {val_fraction})")
    one_of("--select", select, SELECTS)
    at_least("--seeds", seeds)
    for f in fractions:
        if not 0 < f <= 1:
            raise SSLProbeError(f"label fractions must lie in (0, 1], got {f:g} (e.g. --fractions 0.01,0.1,1)")
    for k in shots:
        at_least("--shots", k)


def check_study(*, data: str, labels: str | None, unlabeled: str | None, test: str | None, arms: Sequence[str],
                epochs: int | None, minutes: float | None, steps: int | None, test_fraction: float,
                val_fraction: float, fractions: Sequence[float], shots: Sequence[int], seeds: int,
                knn_k: Sequence[int], search: str, select: str, image_size: int | None, batch_size: int) -> None:
    """Every `study` rule that needs no model or data (the BYOL recipe is `check_pretrain`'s)."""
    image_source(data)
    for name, path in (("--labels", labels), ("--unlabeled", unlabeled), ("--test", test)):
        if path is not None and not Path(path).exists():
            raise SSLProbeError(f"{name} '{path}' does not exist")
    if labels is not None and data.startswith("hf:"):
        raise SSLProbeError("--labels names files in a folder; a Hugging Face dataset brings its own label column "
                            "(--label-column NAME)")
    for a in arms:
        one_of("--arms", a, STUDY_ARMS)
    if sum(v is not None for v in (epochs, minutes, steps)) > 1:
        raise SSLProbeError("--epochs and --minutes are both budgets; give one of them")
    at_least("--epochs", epochs)
    positive("--minutes", minutes)
    at_least("steps", steps)
    for name, f in (("--test-fraction", test_fraction), ("--val-fraction", val_fraction)):
        if not 0 < f < 1:
            raise SSLProbeError(f"{name} must be in (0, 1) (got {f:g})")
    for f in fractions:
        if not 0 < f <= 1:
            raise SSLProbeError(f"label fractions must lie in (0, 1], got {f:g} (e.g. --fractions 0.01,0.1,1)")
    for k in shots:
        at_least("--shots", k)
    check_probe(C=None, search=search, select=select, seeds=seeds, chunk_rows=None, knn_k=knn_k)
    at_least("--image-size", image_size, 8)
    at_least("--batch-size", batch_size, 2)  # BatchNorm needs two images per step
