"""The options several commands share, declared once: each call makes the field for one more config.

(A dataclass field belongs to one class, so a shared option is a function that makes it.)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sslprobe.config import rules as r
from sslprobe.config.base import Config, option

CKPT = "Checkpoints"  # --help panel
RESUMES = ("no", "auto", "yes")
# The one metric (--metric) of probe, compare, finetune and study: it chooses C, k, the epoch and the learning rate,
# heads every table and the label curves. Balanced first: its chance level is 1/K whatever the class mix.
METRICS = ("balanced", "top1", "macro-f1")
METRIC_KEYS = {"balanced": "balanced_accuracy", "top1": "top1", "macro-f1": "macro_f1"}  # their report.json keys
METRIC_NAMES = {"balanced": "balanced acc", "top1": "top-1", "macro-f1": "macro-F1"}  # in table headers and axes
METRIC_WORDS = {"balanced": "balanced accuracy", "top1": "top-1", "macro-f1": "macro-F1"}  # in sentences
SMALL_STEM = ("ResNet small-image stem: 3×3 stride-1 first conv, no max-pool (default: for networks trained from "
              "scratch at ≤ 64 px; trained weights keep the stem they were trained with).")


def _resume_switch(name: str, value: bool) -> str:
    return "auto" if value else "no"


def metric(chooses: str) -> Any:
    """``--metric``: the metric that chooses ``chooses`` on validation and heads every table and curve."""
    return option("balanced", f"The metric that chooses {chooses} on validation, leads every table and is the label "
                  "curves' metric: balanced (mean per-class recall; chance is 1/K whatever the class mix), top1 or "
                  "macro-f1; the other two are reported beside it.", rule=r.choice(*METRICS))


def seed() -> Any:
    return option(0, "Seed for initialisation, sampling and augmentation.")


def device() -> Any:
    return option("auto", "auto (CUDA if present), cpu or cuda.")


def workers() -> Any:
    return option(None, "Decode worker processes (default: cores − 1, at most 8).", rule=r.ge(0))


def image_column() -> Any:
    return option(None, "Image column of a Hugging Face dataset (default: detected).")


def label_column() -> Any:
    return option(None, "Label column of a Hugging Face dataset (default: detected).")


def small_stem() -> Any:
    return option(None, SMALL_STEM, flag="--small-stem/--no-small-stem", show_default=False)


def allow_pickle() -> Any:
    return option(False, "Allow .pt/.pth weights (loaded with torch.load(weights_only=True)).",
                  flag="--allow-pickle/--no-allow-pickle")


def resume(help: str) -> Any:
    """``--resume`` on the command line; "no", "auto" (continue if there is a checkpoint) or "yes" in Python."""
    return option("no", help, flag="--resume", panel=CKPT, cli_type=bool, cli_default=False, parse=_resume_switch,
                  rule=r.choice(*RESUMES))


def save_every(help: str) -> Any:
    return option("10m", help, panel=CKPT)


@dataclass(frozen=True, kw_only=True)
class Runtime(Config):
    """Where and with which seed a command computes (a base of the configs that take them)."""

    seed: int = seed()
    device: str = device()


@dataclass(frozen=True, kw_only=True)
class ImageInputs(Config):
    """How a command reads image folders and Hugging Face datasets (a base of the configs that read images)."""

    workers: int | None = workers()
    image_column: str | None = image_column()
    label_column: str | None = label_column()
