"""`sslprobe finetune`: the backbone of ``--weights`` and a new linear head trained end to end on the labels.

``finetune`` is a list of named steps (docs/finetune.md): inputs (classes checked, every image
decoded once, the probe's validation hold-out) → the start network → the output folder (fresh, or
resumed) → select the epoch, and the learning rate of a grid, on validation (``selection.py``) → the
label-efficiency curve (``curve.py``) → score validation and test with the chosen network (test
touched once, here) → export ``model.safetensors`` and write the probe's report files.

Under ``torchrun --nproc_per_node N -m sslprobe finetune …`` every rank decodes the rows and trains
its slice of each global batch in DDP (``loop.py``); ``--batch-size`` is per process and the rate
scales with the global batch (``recipe.py``). Rank 0 validates, scores and writes everything.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

import sslprobe.checkpoint as ckpts
import sslprobe.distributed as ddp
from sslprobe.config.finetune import DEFAULT_EPOCHS, FinetuneConfig
from sslprobe.errors import SSLProbeError
from sslprobe.finetuning.curve import CurveSpec, Evaluation, label_curve
from sslprobe.finetuning.data import Held, ImageRows, check_classes, decode_rows, hold_out, open_eval, open_train
from sslprobe.finetuning.export import MODEL_FILE, save_finetuned
from sslprobe.finetuning.loop import Trainer
from sslprobe.finetuning.network import Backbone, load_backbone, rescale, with_head
from sslprobe.finetuning.recipe import Recipe, resolve_recipe
from sslprobe.finetuning.report import write_finetune_reports
from sslprobe.finetuning.selection import FinetuneLength, Selected, select
from sslprobe.finetuning.timing import time_steps
from sslprobe.images.folders import ImageSet
from sslprobe.labelcurves import parse_points
from sslprobe.probing.metrics import class_imbalance, scored
from sslprobe.results import (
    EpochPoint,
    FinetuneChoice,
    FinetuneCurve,
    FinetuneResult,
    FinetuneStopped,
    Metrics,
    SelectionInfo,
)
from sslprobe.runtime.device import pick_device
from sslprobe.runtime.progress import progress_bar
from sslprobe.runtime.signals import StopSignals
from sslprobe.runtime.timing import PhaseTimer
from sslprobe.runtime.workers import default_workers

Source = str | os.PathLike


@dataclass(frozen=True)
class Options:
    """A fine-tune's :class:`~sslprobe.config.finetune.FinetuneConfig` as the steps read it: the label curve's
    points, the workers and the checkpoint cadence resolved."""

    train: str
    out: Path
    weights: str
    model: str | None
    val: str | None
    test: str | None
    image_size: int | None
    small_stem: bool | None
    epochs: int | None
    minutes: float | None
    batch_size: int
    lr: float | None
    lrs: tuple[float, ...]
    backbone_lr_scale: float | None
    layer_decay: float | None
    weight_decay: float
    warmup_epochs: float
    label_smoothing: float
    crop_scale: tuple[float, float]
    flip_p: float
    val_fraction: float
    metric: str
    points: list[tuple[str, float]]
    seeds: int
    seed: int
    workers: int
    resume: str
    save_every: ckpts.SaveEvery
    stop_after: int | None
    allow_pickle: bool
    image_column: str | None
    label_column: str | None
    show_progress: bool


@dataclass
class Inputs:
    """The decoded rows (``val`` is ``train`` itself for a hold-out), which of them train and validate, the network."""

    classes: tuple[str, ...]
    train: ImageRows
    val: ImageRows
    test: ImageRows | None
    held: Held
    backbone: Backbone
    warnings: list[str]


def _unlabelled(images: ImageSet, name: str) -> list[str]:
    n = sum(1 for y in images.labels if y < 0)
    return [f"{name}: {n} unlabelled images ignored"] if n else []


def _inputs(o: Options, dev: torch.device) -> Inputs:
    """Step: open and check every source before the weights load, then decode each image once."""
    tr = open_train(o.train, image_column=o.image_column, label_column=o.label_column)
    va = open_eval(o.val, name="val", classes=tr.classes, image_column=o.image_column,
                   label_column=o.label_column) if o.val is not None else None
    te = open_eval(o.test, name="test", classes=tr.classes, image_column=o.image_column,
                   label_column=o.label_column) if o.test is not None else None
    bb = load_backbone(o.weights, model=o.model, image_size=o.image_size, small_stem=o.small_stem, seed=o.seed,
                       allow_pickle=o.allow_pickle)
    kw = {"spec": bb.spec, "workers": o.workers, "device": dev, "show_progress": o.show_progress}
    train = decode_rows(tr, None, squares=True, what="train", **kw)
    check_classes(train, tr.classes)
    val = decode_rows(va[0], va[1], squares=False, what="val", **kw) if va is not None else train
    test = decode_rows(te[0], te[1], squares=False, what="test", **kw) if te is not None else None
    held = hold_out(train, fraction=o.val_fraction, seed=o.seed) if va is None else \
        Held(torch.arange(len(train)), torch.arange(len(val)), True)
    if o.weights == "random-rescaled":
        rescale(bb, train, seed=o.seed, among=held.fit)  # training rows only: never the hold-out
    with_head(bb.net, len(tr.classes), seed=o.seed)
    sources = [(tr, "train")] + [(x[0], name) for x, name in ((va, "val"), (te, "test")) if x is not None]
    warns = [w for images, name in sources for w in _unlabelled(images, name)]
    return Inputs(tr.classes, train, val, test, held, bb, warns)


def _prepare_out(o: Options, dist: ddp.Dist) -> None:
    """Step: a fresh session clears earlier runs but never an unfinished one; ``resume="yes"`` needs one.

    Every rank checks the folder before rank 0 changes it, so they all refuse (or go on) together."""
    runs = o.out / "runs"
    unfinished = sorted(p.parent.name for p in runs.glob("*/checkpoints") if ckpts.find_latest(p) is not None)
    if o.resume == "yes" and not unfinished and not any(runs.glob("*/run.json")):
        raise SSLProbeError(f"--resume: nothing to continue in {runs}; run without --resume to start")
    if o.resume == "no" and unfinished:
        raise SSLProbeError(f"'{o.out}' holds an unfinished fine-tune (run '{unfinished[0]}'); continue it with "
                            f"--resume, or delete {runs} (or pick another --out) to start over")
    ddp.barrier(dist)
    if dist.main:
        if o.resume == "no":
            shutil.rmtree(runs, ignore_errors=True)
        o.out.mkdir(parents=True, exist_ok=True)
    ddp.barrier(dist)


def _recipe(o: Options, inputs: Inputs, dist: ddp.Dist) -> Recipe:
    return resolve_recipe(inputs.backbone.net, trained=inputs.backbone.trained, batch_size=o.batch_size,
                          world_size=dist.world, base_lr=o.lr, backbone_lr_scale=o.backbone_lr_scale,
                          layer_decay=o.layer_decay,
                          weight_decay=o.weight_decay, warmup_epochs=o.warmup_epochs,
                          label_smoothing=o.label_smoothing, crop_scale=o.crop_scale, flip_p=o.flip_p)


def _setup(o: Options, inputs: Inputs, recipe: Recipe, dev: torch.device) -> dict[str, Any]:
    """What every run of the session shares and a resume must match (device and precision may change)."""
    spec = inputs.backbone.spec
    return {"train": o.train, "val": o.val, "model": spec.model, "image_size": spec.image_size,
            "small_stem": spec.small_stem, "weights": {k: v for k, v in inputs.backbone.info.items() if k != "path"},
            "classes": list(inputs.classes), "val_fraction": o.val_fraction,
            "recipe": {k: v for k, v in asdict(recipe).items() if k not in ("base_lr", "lr")},
            "device": dev.type, "precision": "bfloat16 autocast" if dev.type == "cuda" else "float32"}


def _trainer(o: Options, inputs: Inputs, recipe: Recipe, dev: torch.device, *, dist: ddp.Dist, bar: Any,
             signals: StopSignals) -> Trainer:
    # channels_last on CPU too: a test_resnet step at 32 px ran 1.36× faster in it on 2 cores (oneDNN's layout)
    net = inputs.backbone.net.to(dev).to(memory_format=torch.channels_last)
    start = {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()}
    spec = inputs.backbone.spec
    t = Trainer(net, start, recipe, inputs.train, spec.image_size, tuple(spec.mean), tuple(spec.std), dev,
                _setup(o, inputs, recipe, dev), o.out / "runs", o.save_every, o.resume, bar, signals,
                dist=dist, model=ddp.wrap(net, dist, dev) if dist.world > 1 else None)
    t.budget.left = o.stop_after
    return t


def _length(o: Options, trainer: Trainer, fit: torch.Tensor) -> FinetuneLength:
    """Step: epochs as asked, or timed steps that turn ``minutes`` into epochs."""
    if o.minutes is None:
        return FinetuneLength(o.epochs if o.epochs is not None else DEFAULT_EPOCHS, None, None)
    timing = time_steps(trainer, fit, batch=min(o.batch_size, int(fit.numel()) // trainer.dist.world))
    return FinetuneLength(None, o.minutes, ddp.broadcast(timing, trainer.dist))  # one plan for every rank


def _score(trainer: Trainer, inputs: Inputs, best: dict[str, torch.Tensor], *,
           seed: int) -> tuple[Metrics, Metrics | None]:
    """Step: the chosen network on validation, then on test — the only time test is touched."""
    trainer.net.load_state_dict(best)
    k = len(inputs.classes)
    out = []
    for rows, pos in ((inputs.val, inputs.held.val), (inputs.test, None)):
        if rows is None:
            out.append(None)
            continue
        pos = torch.arange(len(rows)) if pos is None else pos
        scores = trainer.eval_logits(rows, pos)
        out.append(scored(scores, rows.labels[pos].to(scores.device), num_classes=k, seed=seed))
    return out[0], out[1]


def _evaluation(inputs: Inputs) -> Evaluation:
    if inputs.test is not None:
        return Evaluation("test", inputs.test, torch.arange(len(inputs.test)))
    return Evaluation("val", inputs.val, inputs.held.val)


def _distributed(dist: ddp.Dist, recipe: Recipe, dev: torch.device) -> str:
    """How the run was spread over processes (report.json's ``distributed``)."""
    if dist.world <= 1:
        return "single process"
    bn = ("synchronised (SyncBatchNorm)" if ddp.sync_batchnorm_supported(dev) else
          "per rank (SyncBatchNorm has no CPU kernel); rank 0's kept at each epoch's end")
    return (f"torchrun DDP, {dist.world} processes: --batch-size {recipe.batch_size} per process, global batch "
            f"{recipe.global_batch}; BatchNorm statistics {bn}")


def _record(o: Options, inputs: Inputs, recipe: Recipe, main: Selected, *, dev: torch.device, dist: ddp.Dist,
            timer: PhaseTimer, warns: list[str]) -> dict[str, Any]:
    """The result's bookkeeping (FinetuneResult's fields): what was chosen and how, the recipe and schedule, the
    data, the machine."""
    best, spec, test = main.best, inputs.backbone.spec, inputs.test
    return {
        "protocol": "finetune", "status": "complete", "model": spec.model, "image_size": spec.image_size,
        "small_stem": spec.small_stem, "weights": inputs.backbone.info,
        "chosen": FinetuneChoice(run=best.plan.name, lr=best.plan.base_lr, epoch=best.best_epoch,
                                 epochs=best.plan.epochs, selected_by=o.metric, rule=main.rule),
        "lr_grid": main.grid(), "learning_curve": [EpochPoint(**asdict(e)) for e in best.history],
        "recipe": asdict(recipe.with_lr(best.plan.base_lr)),
        "schedule": {k: v for k, v in asdict(best.plan).items() if k not in ("name", "rows_sha256")},
        "selection": SelectionInfo(metric=o.metric, imbalance=class_imbalance(inputs.train.labels[inputs.held.fit]),
                                   tie_break="lower validation loss, then the earlier epoch and the smaller learning "
                                             "rate"),
        "classes": list(inputs.classes), "n_train": len(inputs.train), "n_fit": int(inputs.held.fit.numel()),
        "n_val": int(inputs.held.val.numel()),
        "val_source": "given" if inputs.held.given else f"holdout {o.val_fraction:g} (seed {o.seed})",
        "resumed": [r.plan.name for r in main.runs if r.resumed_from is not None],
        "device": str(dev), "precision": "bfloat16 autocast" if dev.type == "cuda" else "float32",
        "distributed": _distributed(dist, recipe, dev),
        "seconds": timer.total(), "timing": timer.seconds, "warnings": warns,
        "skipped": {"train": inputs.train.skipped, "val": inputs.val.skipped if inputs.held.given else [],
                    "test": test.skipped if test is not None else []},
        "inputs": {"train": o.train, "val": o.val, "test": o.test},
        "test_labels": test.labels.tolist() if test is not None else None,
        "test_paths": [test.images.ids[i] for i in test.idx.tolist()] if test is not None else None,
    }


def _export_info(result: FinetuneResult) -> dict[str, Any]:
    c = result.chosen
    return {"weights": result.weights, "epoch": c.epoch, "lr": c.lr, "run": c.run, "val_top1": result.val.top1,
            "test_top1": result.test.top1 if result.test is not None else None}


@dataclass
class Trained:
    """What the training steps leave: the trainer (its network), the main selection, the label curve."""

    trainer: Trainer
    main: Selected
    curve: FinetuneCurve | None


def _train(o: Options, inputs: Inputs, recipe: Recipe, *, dev: torch.device, dist: ddp.Dist,
           timer: PhaseTimer, warns: list[str], bar: Any, signals: StopSignals) -> Trained:
    """Step: the main selection over epochs (and ``lrs``), then the label-efficiency curve; every rank."""
    trainer = _trainer(o, inputs, recipe, dev, dist=dist, bar=bar, signals=signals)
    length = _length(o, trainer, inputs.held.fit)
    lrs = o.lrs or (recipe.base_lr,)
    with timer.phase("train"):
        main = select(trainer, name="main", fit=inputs.held.fit, val_rows=inputs.val, val=inputs.held.val,
                      lrs=lrs, seed=o.seed, metric=o.metric, length=length)
    curve = None
    if o.points and not main.stopped:
        spec = CurveSpec(o.points, o.seeds, o.seed, lrs, o.metric, o.val_fraction, length)
        with timer.phase("label_efficiency"):
            drawn = label_curve(trainer, spec, fit=inputs.held.fit, main=main, evaluation=_evaluation(inputs))
        curve = None if drawn is None else FinetuneCurve.from_json(drawn)
        if curve is not None and curve.scored_on == "val":
            warns.append("label efficiency scored on val (no --test): the whole-split point chose its epoch on "
                         "the same rows, so it is optimistic")
    return Trained(trainer, main, curve)


def _session(o: Options, dev: torch.device, dist: ddp.Dist, timer: PhaseTimer) -> FinetuneResult | FinetuneStopped:
    """The steps, in order, inside the caller's RNG fork; rank 0 alone scores and writes."""
    with timer.phase("load"):
        inputs = _inputs(o, dev)
        _prepare_out(o, dist)
        recipe = _recipe(o, inputs, dist)
    warns = list(inputs.warnings)
    with StopSignals() as signals, progress_bar(o.show_progress) as bar:
        done = _train(o, inputs, recipe, dev=dev, dist=dist, timer=timer, warns=warns, bar=bar,
                      signals=signals)
        main, trainer = done.main, done.trainer
        if main.stopped or (o.points and done.curve is None):
            return FinetuneStopped(status=f"stopped after {o.stop_after} steps", out=str(o.out),
                                   runs=[r.plan.name for r in main.runs])
        if not dist.main:  # the chosen network on every rank; rank 0 reports for all
            trainer.net.load_state_dict(main.best.state)
            return FinetuneStopped(status="complete", out=str(o.out), rank=dist.rank)
        with timer.phase("score"):
            val, test = _score(trainer, inputs, main.best.state, seed=o.seed)
    result = FinetuneResult(val=val, test=test, knn=None, label_efficiency=done.curve,
                            **_record(o, inputs, recipe, main, dev=dev, dist=dist, timer=timer, warns=warns))
    save_finetuned(trainer.net, inputs.backbone.spec, inputs.classes, o.out / MODEL_FILE, info=_export_info(result))
    return write_finetune_reports(result, o.out, model_file=MODEL_FILE)


def finetune(config: FinetuneConfig | Source, /, *, show_progress: bool = False,
             **options: Any) -> FinetuneResult | FinetuneStopped:
    """Fine-tune the backbone of ``weights`` with a new linear head on the class folders of ``config.train``.

    ``config``: a :class:`~sslprobe.config.finetune.FinetuneConfig` (every option, its default and its
    rule; docs/finetune.md), or the training folder with the options as keywords. ``weights``: random,
    random-rescaled, pretrained (these need ``model``) or a backbone file, as ``extract`` takes them. The
    run length is ``epochs`` (default 30) or ``minutes`` (whole epochs planned from a timing of the step).
    The epoch — and with ``lrs`` the base learning rate — is chosen by ``metric`` (balanced, top1 or macro-f1) on
    ``val``, else on the probe's stratified hold-out of ``val_fraction`` of train (seeded); ``test`` is scored
    once, with the chosen network. ``fractions``/``shots`` add a label curve (in ``metric``) whose subsets select
    with their own labels only.
    ``resume``: "no" (refuses to discard an unfinished run in ``out``), "auto" or "yes"; Ctrl-C saves and
    raises ``FinetuneInterrupted``. ``stop_after`` stops the session after that many steps (with a
    checkpoint). Writes ``out/model.safetensors`` (timm-loadable, with class names), report.json,
    per-class CSVs and plots; returns the result (:class:`~sslprobe.results.FinetuneResult`, report.json's
    content; :class:`~sslprobe.results.FinetuneStopped` when the session stopped early or on a torchrun rank
    other than 0).
    """
    c = FinetuneConfig.of(config, **options)
    o = Options(str(c.train), Path(c.out), c.weights, c.model, None if c.val is None else str(c.val),
                None if c.test is None else str(c.test), c.image_size, c.small_stem, c.epochs, c.minutes,
                c.batch_size, c.lr, c.lrs, c.backbone_lr_scale, c.layer_decay, c.weight_decay, c.warmup_epochs,
                c.label_smoothing, c.crop_scale, c.flip_p, c.val_fraction, c.metric,
                parse_points(c.fractions, c.shots), c.seeds, c.seed,
                default_workers() if c.workers is None else c.workers, c.resume,
                ckpts.parse_save_every(c.save_every), c.stop_after, c.allow_pickle, c.image_column, c.label_column,
                show_progress and ddp.env_rank() == 0)
    device = c.device
    timer = PhaseTimer()
    dist, dev = ddp.setup(pick_device(device))  # torchrun: join the process group on this rank's device
    try:
        with torch.random.fork_rng(devices=[dev.index or 0] if dev.type == "cuda" else []):
            return _session(o, dev, dist, timer)
    finally:
        ddp.teardown(dist)


__all__ = ["Inputs", "Options", "finetune"]
