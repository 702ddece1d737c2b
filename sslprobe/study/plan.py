"""What a study runs: its arms, the BYOL recipe and budget they share, and which arms this install can run.

An arm is one way to turn images into a classifier that the study scores on the same test images
(docs/study.md, "Arms"). Probe arms become features (``extract``) and go through one probe
protocol; fine-tune arms train the network end to end (``finetune``). An arm the install cannot run
(no ImageNet weights offline, no ``finetune`` in this version) is listed with the reason, never
silently dropped.
"""
from __future__ import annotations

import importlib
import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sslprobe.errors import SSLProbeError
from sslprobe.options import PRETRAIN, STUDY


@dataclass(frozen=True)
class Arm:
    """One row of the study: how its network (or pixels) is obtained and how it is scored."""

    name: str
    title: str
    weights: str  # what extract/finetune get: pixels, random, random-rescaled, pretrained, or "byol" (the run's file)
    byol_init: str | None = None  # BYOL arms: the start of pretraining, "random" or "pretrained"
    finetune: bool = False  # trained end to end instead of probed frozen

    @property
    def needs_imagenet(self) -> bool:
        return self.weights == "pretrained" or self.byol_init == "pretrained"


ARMS: dict[str, Arm] = {a.name: a for a in (
    Arm("pixels", "raw pixels", "pixels"),
    Arm("random", "random init (frozen)", "random"),
    Arm("random-rescaled", "random init rescaled on the data", "random-rescaled"),
    Arm("imagenet", "ImageNet weights (timm)", "pretrained"),
    Arm("byol", "BYOL from scratch", "byol", byol_init="random"),
    Arm("byol-imagenet", "BYOL from ImageNet weights", "byol", byol_init="pretrained"),
    Arm("finetune-random", "fine-tuned from random init", "random", finetune=True),
    Arm("finetune-imagenet", "fine-tuned from ImageNet weights", "pretrained", finetune=True),
    Arm("finetune-byol", "fine-tuned from BYOL", "byol", byol_init="random", finetune=True),
)}


def default_arms(*, cuda: bool) -> tuple[str, ...]:
    """The arms a study runs without --arms: the cheap three on CPU, every probe arm on a GPU."""
    return STUDY.arms_gpu if cuda else STUDY.arms_cpu


def parse_arms(names: Sequence[str]) -> tuple[Arm, ...]:
    """Known arm names, in the order given, each once."""
    out: list[Arm] = []
    for n in names:
        if n not in ARMS:
            raise SSLProbeError(f"unknown arm '{n}'; choose from {', '.join(ARMS)}")
        if ARMS[n] not in out:
            out.append(ARMS[n])
    if not out:
        raise SSLProbeError(f"--arms names no arm; choose from {', '.join(ARMS)}")
    return tuple(out)


@dataclass(frozen=True)
class ByolRecipe:
    """The BYOL options every BYOL arm of a study shares (the `pretrain` options of the same names)."""

    batch_size: int = PRETRAIN.batch_size
    optimizer: str = PRETRAIN.optimizer
    lr: float | None = None  # None: pretrain's default (for some values, fitted to the run)
    tau_base: float | None = PRETRAIN.tau_base
    warmup_epochs: float | None = PRETRAIN.warmup_epochs
    proj_hidden: int = PRETRAIN.proj_hidden
    proj_dim: int = PRETRAIN.proj_dim
    weight_decay: float | None = PRETRAIN.weight_decay


@dataclass(frozen=True)
class ByolLength:
    """How long each BYOL arm trains: ``epochs``, or ``minutes`` of training fitted to the measured step
    rate (``sslprobe/timebudget.py``), or a fixed number of ``steps`` (the demo's tuned run). Exactly one is set."""

    epochs: int | None = None
    minutes: float | None = None
    steps: int | None = None

    def describe(self) -> str:
        if self.minutes is not None:
            return f"{self.minutes:g} minutes of training per BYOL arm (steps fitted to the measured rate)"
        if self.steps is not None:
            return f"{self.steps} steps per BYOL arm"
        return f"{self.epochs} epochs per BYOL arm"


@dataclass(frozen=True)
class StudyOptions:
    """Everything a study was asked for, checked (``options.check_study``); the steps read only this."""

    data: str
    out: Path
    labels: str | None = None
    unlabeled: str | None = None
    test: str | None = None
    arms: tuple[Arm, ...] = ()
    model: str = STUDY.model
    image_size: int | None = None
    budget: ByolLength = field(default_factory=lambda: ByolLength(epochs=PRETRAIN.epochs))
    byol: ByolRecipe = field(default_factory=ByolRecipe)
    test_fraction: float = STUDY.test_fraction
    val_fraction: float = STUDY.val_fraction
    fractions: tuple[float, ...] = STUDY.fractions
    shots: tuple[int, ...] = STUDY.shots
    seeds: int = STUDY.seeds
    knn_k: tuple[int, ...] = STUDY.knn_k
    search: str = STUDY.search
    select: str = STUDY.select
    seed: int = 0
    device: str = "auto"
    workers: int | None = None
    image_column: str | None = None
    label_column: str | None = None
    command: str = ""  # the command line that asked for the study, for the report


@dataclass(frozen=True)
class ArmStatus:
    """An arm and whether this install can run it (``note`` says why not)."""

    arm: Arm
    runnable: bool
    note: str = ""


def finetune_available() -> bool:
    """Whether this version has ``sslprobe.finetuning``'s ``finetune()``."""
    try:
        module = importlib.import_module("sslprobe.finetuning.finetune")
    except ImportError:
        return False
    return callable(getattr(module, "finetune", None))


def byol_from_weights_available() -> bool:
    """Whether ``pretrain`` can start BYOL from given weights (its ``init`` keyword)."""
    from sslprobe.pretraining.pretrain import pretrain

    return "init" in inspect.signature(pretrain).parameters


def imagenet_note(model: str, *, image_size: int | None) -> str:
    """"" when timm's ImageNet weights for ``model`` load, else why not.

    Weights in the local cache load at once; without them the hub is tried only when it answers a
    3-second connect (offline, hub downloads retry for about a minute before they fail).
    """
    from sslprobe.backbone import create_backbone

    if not _weights_cached(model) and not _hub_reachable():
        return (f"skipped: timm's ImageNet weights for {model} are not in the local cache and the Hugging Face hub "
                f"cannot be reached; go online once to cache them (timm.create_model('{model}', pretrained=True))")
    try:
        create_backbone(model, weights="pretrained", image_size=image_size)
    except SSLProbeError as e:
        return f"skipped: {e}"
    return ""


def _weights_cached(model: str) -> bool:
    """Whether timm would find ``model``'s pretrained weights on this machine without a download."""
    import os

    import torch
    from huggingface_hub import try_to_load_from_cache
    from timm.models import get_pretrained_cfg

    try:
        cfg = get_pretrained_cfg(model)
    except (RuntimeError, ValueError):
        return False
    if cfg is None:
        return False
    if cfg.file and os.path.isfile(cfg.file):
        return True
    if cfg.hf_hub_id:
        names = [n for n in (cfg.hf_hub_filename, "model.safetensors", "pytorch_model.bin") if n]
        return any(isinstance(try_to_load_from_cache(cfg.hf_hub_id, n), str) for n in names)
    return bool(cfg.url) and os.path.isfile(os.path.join(torch.hub.get_dir(), "checkpoints",
                                                         os.path.basename(cfg.url)))


def _hub_reachable() -> bool:
    import os
    import socket

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
    except OSError:
        return False
    return True


def arm_statuses(arms: Sequence[Arm], *, model: str, image_size: int | None) -> list[ArmStatus]:
    """Each requested arm with whether it can run here; the checks run only for arms that need them."""
    imagenet = imagenet_note(model, image_size=image_size) if any(a.needs_imagenet for a in arms) else ""
    out = []
    for a in arms:
        if a.finetune and not finetune_available():
            out.append(ArmStatus(a, False, "not available in this version: sslprobe.finetuning has no finetune()"))
        elif a.byol_init == "pretrained" and not byol_from_weights_available():
            out.append(ArmStatus(a, False, "not available in this version: pretrain() cannot start from ImageNet "
                                           "weights (no init= keyword)"))
        elif a.needs_imagenet and imagenet:
            out.append(ArmStatus(a, False, imagenet))
        else:
            out.append(ArmStatus(a, True))
    return out
