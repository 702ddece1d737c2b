"""What a study runs: its arms, the BYOL recipe and budget they share, and which arms this install can run.

An arm is one way to turn images into a classifier that the study scores on the same test images
(docs/study.md, "Arms"). Probe arms become features (``extract``) and go through one probe
protocol; fine-tune arms train the network end to end (``finetune``). An arm the install cannot run
(no ImageNet weights offline) is listed with the reason, never silently dropped.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sslprobe.config.pretrain import PretrainConfig
from sslprobe.config.probe import ProbeProtocol
from sslprobe.config.study import ARMS_CPU, ARMS_GPU, StudyConfig
from sslprobe.errors import SSLProbeError


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
    return ARMS_GPU if cuda else ARMS_CPU


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


GPU_REPEATS = 3  # a GPU study's default: three seeds of every arm (on CPU one, and the verdict says so)
MIN_REPEAT_MINUTES = 5.0  # a GPU repeat gets at least this much of --minutes, else the study runs one


def default_repeats(minutes: float | None, *, cuda: bool) -> int:
    """1 on CPU; on a GPU 3, fitted into --minutes (each repeat ≥ 5 minutes of it), else 1."""
    if not cuda:
        return 1
    if minutes is None:
        return GPU_REPEATS
    return GPU_REPEATS if minutes / GPU_REPEATS >= MIN_REPEAT_MINUTES else 1


@dataclass(frozen=True)
class StudyOptions:
    """A study's config with what it resolves to before any arm runs: the arms (by name, or the device's
    defaults) and each BYOL arm's run length. The steps read only this."""

    config: StudyConfig
    arms: tuple[Arm, ...]
    budget: ByolLength
    repeats: int = 1  # every seeded stage of every arm, run this many times (seed, seed + 1, …)
    notes: tuple[str, ...] = ()  # what was read into the options (a split folder layout), said at the start

    @classmethod
    def resolve(cls, config: StudyConfig, *, cuda: bool) -> StudyOptions:
        from sslprobe.backbone import check_model_name

        check_model_name(config.model)  # before any arm: a misspelt name failed only after the pixel arm had run
        from sslprobe.study.sources import split_layout

        c, notes = config, ()
        if (found := split_layout(config.data, test=config.test, labels=config.labels)) is not None:
            changes, note = found
            c, notes = config.replace(**changes), (note,)
        repeats = c.repeats if c.repeats is not None else default_repeats(c.minutes, cuda=cuda)
        # --minutes is the arm's whole budget: a default number of repeats shares it (a given --repeats does not)
        minutes = c.minutes / repeats if c.minutes is not None and c.repeats is None else c.minutes
        budget = ByolLength(epochs=c.epochs, minutes=minutes, steps=c.steps)
        if c.epochs is None and c.minutes is None and c.steps is None:
            budget = ByolLength(epochs=PretrainConfig.epochs)
        return cls(c, parse_arms(c.arms or default_arms(cuda=cuda)), budget, repeats, notes)

    @property
    def out(self) -> Path:
        return Path(self.config.out)

    def protocol(self) -> ProbeProtocol:
        """The one probe protocol every probe arm goes through (and `compare` would, by hand)."""
        c = self.config
        return ProbeProtocol(fractions=c.fractions, shots=c.shots, seeds=c.seeds, knn_k=c.knn_k, search=c.search,
                             metric=c.metric, seed=c.seed, device=c.device)


@dataclass(frozen=True)
class ArmStatus:
    """An arm and whether this install can run it (``note`` says why not)."""

    arm: Arm
    runnable: bool
    note: str = ""


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


def input_size(*, imagenet: bool, model: str, image_size: int | None) -> int | None:
    """The one input rule (docs/study.md, "One input"): every arm sees the same centre crop of each image; a
    network starting from ImageNet weights sees it at the resolution those weights were trained at when the
    study's size is smaller (upsampled: a 7×7 stem and max-pool on a 32 px image leave a 1×1 map, against
    4×4 for the small stem that random-start arms get at ≤ 64 px); every other arm at the study's size."""
    if not imagenet or image_size is None:  # None: the model's own size, which is the trained one
        return image_size
    from sslprobe.backbone import trained_size

    return max(image_size, trained_size(model))


def arm_statuses(arms: Sequence[Arm], *, model: str, image_size: int | None) -> list[ArmStatus]:
    """Each requested arm with whether it can run here: an arm that needs ImageNet weights runs only when they
    load (checked once, and only when such an arm is asked for); every other arm always runs."""
    imagenet = imagenet_note(model, image_size=image_size) if any(a.needs_imagenet for a in arms) else ""
    return [ArmStatus(a, False, imagenet) if a.needs_imagenet and imagenet else ArmStatus(a, True) for a in arms]
