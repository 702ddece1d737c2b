"""One arm's stages, each through the command it stands for: pretrain → extract → probe, or finetune.

A network arm is extracted at the study's ``--layers`` in one pass; its probe stage first chooses the
layer on validation (probing/layers.py: one C search per layer, train and val rows only), then probes
that layer in full.

Every stage is keyed (resume.py): a finished stage whose key matches is reused without being
called; an unfinished one is called again and continues — pretraining from its checkpoint
(``resume="auto"``), extraction from the embedding cache. Each stage returns a :class:`Done` with
the command line it stands for, so the report can print the study as the commands it ran.
"""
from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sslprobe.config.base import Config
from sslprobe.config.extract import ExtractConfig
from sslprobe.config.finetune import FinetuneConfig
from sslprobe.config.pretrain import PretrainConfig
from sslprobe.config.probe import ProbeConfig
from sslprobe.errors import SSLProbeError
from sslprobe.extraction.extract import extract
from sslprobe.fileio import file_sha256
from sslprobe.pretraining.pretrain import pretrain
from sslprobe.probing.features import FeatureSet
from sslprobe.probing.layers import choose_layer
from sslprobe.probing.probe import probe
from sslprobe.results import FinetuneResult, ProbeResult
from sslprobe.study.commands import command
from sslprobe.study.layout import Layout
from sslprobe.study.plan import Arm, StudyOptions, input_size
from sslprobe.study.progress import StudyProgress
from sslprobe.study.records import Done
from sslprobe.study.resume import Marker, fingerprint
from sslprobe.study.slices import layer_dirs, split_sets, write_split_features
from sslprobe.study.verdict import budget_sentence
from sslprobe.timebudget import FittedSteps, fitted_steps

PIXELS_MAX = 32  # raw pixels at 32 px (or a smaller --image-size): 3,072 numbers an image


@dataclass(frozen=True)
class Context:
    """What every stage of every arm shares: the options, the folders and the keys of the data they saw."""

    opts: StudyOptions
    layout: Layout
    progress: StudyProgress
    device_type: str  # "cpu" or "cuda": both the compute of the rows and the run's config depend on it
    pool_key: str  # the pretraining pool's content
    labelled_key: str  # the labelled folder's listing
    pool_size: int  # images in the pretraining pool
    split_key: str  # which labelled image is in which split
    membership: Mapping[str, str]  # labelled-folder id → split
    class_names: Mapping[str, str]  # class folder name → class name


def _finish(marker: Marker, d: Path, key: str, command: str, **info: Any) -> Done:
    marker.write(key, command=command, **info)
    return Done(d, key, command, False, info)


def _reuse(marker: Marker, d: Path, key: str) -> Done | None:
    doc = marker.read(key)
    if doc is None:
        return None
    return Done(d, key, str(doc.get("command", "")), True, {k: v for k, v in doc.items() if k not in ("key",
                                                                                                     "command")})


# Options that say where a stage writes or how it is driven, not what it computes: left out of its key.
_NOT_IDENTITY = ("data", "train", "val", "test", "calibration", "out", "resume", "workers", "save_every",
                 "log_every")


def identity(config: Config) -> dict[str, Any]:
    """What a stage's result depends on, from its config: the key of a finished stage (resume.py)."""
    return {k: v for k, v in config.to_json().items() if k not in _NOT_IDENTITY}


def _weights_identity(config: ExtractConfig | FinetuneConfig, weights: Path | None) -> dict[str, Any]:
    """A stage's identity with a weights file named by its content, not its path (a moved study is the same)."""
    return {**identity(config), "weights": file_sha256(weights) if weights is not None else config.weights}


def pretrain_config(ctx: Context, *, init: str, out: Path | None = None, **length: Any) -> PretrainConfig:
    """The `pretrain` config of a BYOL arm: the study's recipe, model and seed; ``length`` its run length; the
    input size of its start (plan.input_size: an ImageNet start at its trained resolution)."""
    c, r = ctx.opts.config, ctx.opts.config.byol
    size = input_size(imagenet=init == "pretrained", model=c.model, image_size=c.image_size)
    return PretrainConfig(data=str(ctx.layout.pool), out=out or ctx.layout.out, model=c.model, init=init,
                          image_size=size, batch_size=r.batch_size, optimizer=r.optimizer, lr=r.lr,
                          tau_base=r.tau_base, warmup_epochs=r.warmup_epochs, proj_hidden=r.proj_hidden,
                          proj_dim=r.proj_dim, weight_decay=r.weight_decay, seed=c.seed, device=c.device,
                          workers=c.workers, **length)


def _length(ctx: Context) -> tuple[dict[str, Any], FittedSteps | None]:
    """The run length: epochs, the demo's fixed steps, or the steps that fit --minutes on this machine.

    One timing and one step count for every BYOL arm of the study: the timing run starts from random
    weights whatever the arm's start, and its folder is keyed without the start, so byol and
    byol-imagenet train the same number of steps (measured once, not twice with two noises)."""
    b = ctx.opts.budget
    if b.epochs is not None:
        return {"epochs": b.epochs}, None
    if b.steps is not None:
        return {"max_steps": b.steps}, None
    base = pretrain_config(ctx, init="random")
    workdir = ctx.layout.out / "pretrain" / f"budget-{fingerprint([ctx.pool_key, ctx.device_type, identity(base)])}"

    def measure(out: Path, steps: int) -> Path:
        pretrain(base.replace(out=out, max_steps=steps, log_every=5, save_every="end", resume="no"),
                 show_progress=False)
        return out

    fitted = fitted_steps(b.minutes, workdir=workdir, measure=measure)
    return {"max_steps": fitted.max_steps}, fitted


def byol_backbone(ctx: Context, arm: Arm, *, index: int, arms: int) -> Done:
    """The arm's BYOL run on the pool (shared by every arm with the same start and options)."""
    init = arm.byol_init or "random"
    ctx.progress.stage(arm=arm.name, index=index, arms=arms, stage="timing BYOL steps" if ctx.opts.budget.minutes
                       else "pretrain")
    length, fitted = _length(ctx)
    config = pretrain_config(ctx, init=init, **length)
    if fitted is not None:  # a --minutes budget: say before training what it buys (study/verdict.py)
        batch = min(config.batch_size, ctx.pool_size)
        warning = budget_sentence(arm.name, steps=fitted.max_steps, batch=batch, pool=ctx.pool_size,
                                  images_per_second=fitted.steps_per_second * batch)
        if warning:
            ctx.progress.note(f"note: {warning}")
    key = fingerprint([ctx.pool_key, ctx.device_type, identity(config)])
    d = ctx.layout.pretrain_run(init, key)
    config = config.replace(out=d, resume="auto")
    marker = Marker(d)
    done = _reuse(marker, d, key)
    if done is not None:
        return done
    ctx.progress.stage(arm=arm.name, index=index, arms=arms, stage=f"pretrain ({ctx.opts.budget.describe()})",
                       total=config.max_steps)
    t0 = time.perf_counter()
    with ctx.progress.watching(d / "metrics.jsonl"):
        summary = pretrain(config, show_progress=False)
    if not summary.complete:
        raise SSLProbeError(f"BYOL run in '{d}' ended '{summary.status}'; rerun the study to continue it")
    return _finish(marker, d, key, command("pretrain", config, config.data), steps=summary.steps,
                   final_loss=summary.final_loss, skipped=summary.skipped, resumed_from=summary.resumed_from,
                   seconds=time.perf_counter() - t0,
                   fitted=None if fitted is None else asdict(fitted), loss_curve=summary.loss_curve)


def extract_config(ctx: Context, arm: Arm, weights: Path | None) -> ExtractConfig:
    """`extract` for the arm: pixels at ≤ 32 px, named weights with the model, BYOL's file on its own; every
    network at the study's --layers."""
    c = ctx.opts.config
    d = ctx.layout.arm(arm.name) / "extract"
    common = {"data": str(ctx.layout.labelled), "out": d, "seed": c.seed, "device": c.device, "workers": c.workers}
    if arm.weights == "pixels":  # the network arms' crop (the model's), at ≤ 32 px
        return ExtractConfig(weights="pixels", model=c.model, image_size=min(c.image_size or PIXELS_MAX, PIXELS_MAX),
                             **common)
    common["layers"] = c.layers
    if weights is not None:
        return ExtractConfig(weights=str(weights), **common)
    # random-rescaled calibrates on training images only (the labelled folder holds val and test too)
    calibration = str(ctx.layout.split_folder("train")) if arm.weights == "random-rescaled" else None
    return ExtractConfig(weights=arm.weights, model=c.model, calibration=calibration,
                         image_size=input_size(imagenet=arm.needs_imagenet, model=c.model, image_size=c.image_size),
                         **common)


def extracted(ctx: Context, arm: Arm, weights: Path | None, *, index: int, arms: int) -> Done:
    """The labelled folder embedded once by the arm's network (every row through the cache)."""
    config = extract_config(ctx, arm, weights)
    split = [ctx.split_key] if config.calibration is not None else []  # which images are train is then an input
    key = fingerprint([ctx.labelled_key, ctx.device_type, _weights_identity(config, weights), *split])
    d = Path(config.out)
    marker = Marker(d)
    done = _reuse(marker, d, key)
    if done is not None:
        return done
    ctx.progress.stage(arm=arm.name, index=index, arms=arms, stage="extract")
    m = extract(config, show_progress=False)
    seen = {k: m.preprocessing.get(k) for k in ("image_size", "crop_pct", "interpolation", "small_stem")}
    return _finish(marker, d, key, command("extract", config, config.data), skipped=m.skipped, dim=m.dim, input=seen,
                   seconds=m.seconds, cache={"hits": m.cache.hits, "misses": m.cache.misses})


def probed(ctx: Context, arm: Arm, features: Done, *, index: int, arms: int) -> tuple[Done, ProbeResult]:
    """The arm's layer chosen on validation (when it has several), its rows cut by split, then one probe (linear,
    kNN, label curve); a reused probe's result is read back from its report.json. The choice is in the stage's
    ``info["layer"]`` (a LayerChoice's JSON)."""
    d = ctx.layout.arm(arm.name)
    protocol = ctx.opts.protocol()
    key = fingerprint([features.key, ctx.split_key, identity(protocol), ctx.device_type])
    marker = Marker(d / "probe")
    done = _reuse(marker, d / "probe", key)
    if done is not None:
        return done, ProbeResult.from_json(d / "probe" / "report.json")
    layers, info = layer_dirs(features.dir), {}
    if len(layers) > 1:
        ctx.progress.stage(arm=arm.name, index=index, arms=arms, stage=f"choosing among {len(layers)} layers on "
                           "validation")
        choice = choose_layer({name: _train_val(ctx, where) for name, where in layers.items()}, protocol=protocol)
        layers, info = {choice.layer: layers[choice.layer]}, {"layer": choice.to_json()}
    ctx.progress.stage(arm=arm.name, index=index, arms=arms, stage="probe (linear, kNN, label efficiency)")
    paths = write_split_features(next(iter(layers.values())), membership=ctx.membership,
                                 class_names=ctx.class_names, out=d / "features")
    result = probe(ProbeConfig(train=paths["train"], val=paths["val"], test=paths["test"], protocol=protocol,
                               out=d / "probe"))
    return _finish(marker, d / "probe", key, "", **info), result


def _train_val(ctx: Context, extracted: Path) -> tuple[FeatureSet, FeatureSet]:
    """A layer's train and val rows, in memory: the layer choice never holds a test row."""
    sets = split_sets(extracted, membership=ctx.membership, class_names=ctx.class_names, splits=("train", "val"))
    return sets["train"], sets["val"]


def finetune_config(ctx: Context, arm: Arm, weights: Path | None) -> FinetuneConfig:
    """`finetune` for the arm: its start, the study's label curve, and --minutes when that is the budget
    (else finetune's own epochs: BYOL's epoch count is no fine-tuning schedule)."""
    c, split = ctx.opts.config, ctx.layout.split_folder
    size = input_size(imagenet=arm.needs_imagenet, model=c.model, image_size=c.image_size)
    start = {"weights": str(weights)} if weights is not None else \
        {"weights": arm.weights, "model": c.model, "image_size": size}
    return FinetuneConfig(train=str(split("train")), val=str(split("val")), test=str(split("test")),
                          out=ctx.layout.arm(arm.name) / "finetune", minutes=ctx.opts.budget.minutes,
                          fractions=c.fractions, shots=c.shots, seeds=c.seeds, metric=c.metric, seed=c.seed,
                          device=c.device, workers=c.workers, resume="auto", **start)


def finetuned(ctx: Context, arm: Arm, weights: Path | None, *, index: int,
              arms: int) -> tuple[Done, FinetuneResult]:
    """The arm's network fine-tuned on the train split (epoch chosen on val, test scored once)."""
    from sslprobe.finetuning.finetune import finetune

    config = finetune_config(ctx, arm, weights)
    key = fingerprint([ctx.labelled_key, ctx.split_key, ctx.device_type, _weights_identity(config, weights)])
    d = Path(config.out)
    marker = Marker(d)
    done = _reuse(marker, d, key)
    if done is not None:
        return done, FinetuneResult.from_json(d / "report.json")
    ctx.progress.stage(arm=arm.name, index=index, arms=arms, stage="fine-tune")
    result = finetune(config, show_progress=False)
    if not isinstance(result, FinetuneResult) or result.status != "complete":
        raise SSLProbeError(f"the fine-tune in '{d}' ended '{result.status}'; rerun the study to continue")
    return _finish(marker, d, key, command("finetune", config, config.train)), result
