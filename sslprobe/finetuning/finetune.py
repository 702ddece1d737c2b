"""`sslprobe finetune`: the backbone of ``--weights`` and a new linear head trained end to end on the labels.

``finetune`` is a list of named steps (docs/finetune.md): inputs (classes checked, every image
decoded once, the probe's validation hold-out) → the start network → the output folder (fresh, or
resumed) → the recipe for the start (printed with its sources, ``recipe.py``) → the session's length
(``--epochs``, or ``--minutes`` split over every run, ``timing.py``) → select the epoch and the learning
rate of the grid on validation, then refit them on train + validation (``selection.py``) → the
label-efficiency curve (``curve.py``) → score validation with the chosen run and test with the refit
(test touched once, here) → export ``model.safetensors`` and write the probe's report files.

Under ``torchrun --nproc_per_node N -m sslprobe finetune …`` every rank decodes the rows and trains
its slice of each global batch in DDP (``loop.py``); ``--batch-size`` is per process and the rate
scales with the global batch (``recipe.py``). Rank 0 validates, scores and writes everything.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

import sslprobe.checkpoint as ckpts
import sslprobe.distributed as ddp
from sslprobe.config.finetune import DEFAULT_EPOCHS, FinetuneConfig
from sslprobe.errors import SSLProbeError
from sslprobe.fileio import write_json
from sslprobe.finetuning.curve import CurveSpec, Evaluation, curve_shapes, label_curve
from sslprobe.finetuning.data import (
    Held,
    ImageRows,
    JoinedRows,
    check_classes,
    decode_rows,
    hold_out,
    open_eval,
    open_train,
)
from sslprobe.finetuning.export import MODEL_FILE, save_finetuned
from sslprobe.finetuning.loop import Trainer
from sslprobe.finetuning.network import Backbone, load_backbone, rescale, with_head
from sslprobe.finetuning.recipe import Recipe, resolve_recipe
from sslprobe.finetuning.report import write_finetune_reports
from sslprobe.finetuning.selection import FinetuneLength, Selected, refit, select, shapes
from sslprobe.finetuning.timing import RunShape, expected_seconds, session_epochs, time_steps
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
    weight_decay: float | None
    warmup_epochs: float
    label_smoothing: float
    crop_scale: tuple[float, float] | None
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

    def refit_rows(self) -> tuple[ImageRows | JoinedRows, torch.Tensor]:
        """The rows the refit trains on (training + validation) and their positions in that pool."""
        if not self.held.given:
            return self.train, torch.cat([self.held.fit, self.held.val])
        return JoinedRows(self.train, self.val), torch.arange(len(self.train) + len(self.val))


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
    # a given --val trains in the refit (with --test): it needs the training form too
    val = decode_rows(va[0], va[1], squares=te is not None, what="val", **kw) if va is not None else train
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
    """Step: the recipe for the start (``recipe.resolve_recipe``), printed with its sources as pretraining's is."""
    recipe = resolve_recipe(inputs.backbone.net, trained=inputs.backbone.trained, batch_size=o.batch_size,
                            world_size=dist.world, base_lr=o.lr, lrs=o.lrs, backbone_lr_scale=o.backbone_lr_scale,
                            layer_decay=o.layer_decay, weight_decay=o.weight_decay, warmup_epochs=o.warmup_epochs,
                            label_smoothing=o.label_smoothing, crop_scale=o.crop_scale, flip_p=o.flip_p)
    _say(o, dist, f"recipe {recipe.note}")
    return recipe


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _say(o: Options, dist: ddp.Dist, line: str) -> None:
    if dist.main and o.show_progress:
        print(f"finetune: {line}", file=sys.stderr, flush=True)


def _setup(o: Options, inputs: Inputs, recipe: Recipe, dev: torch.device) -> dict[str, Any]:
    """What every run of the session shares and a resume must match (device and precision may change)."""
    spec = inputs.backbone.spec
    return {"train": o.train, "val": o.val, "model": spec.model, "image_size": spec.image_size,
            "small_stem": spec.small_stem, "weights": {k: v for k, v in inputs.backbone.info.items() if k != "path"},
            "classes": list(inputs.classes), "val_fraction": o.val_fraction,
            "recipe": {k: v for k, v in asdict(recipe).items() if k not in ("base_lr", "lr", "lr_grid", "note")},
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


def _runs(o: Options, inputs: Inputs, trainer: Trainer) -> tuple[list[RunShape], list[RunShape]]:
    """The session's runs as the budget prices them: the main grid and refit, and the label curve's."""
    lrs = trainer.recipe.lr_grid
    main = shapes(trainer, name="main", fit=inputs.held.fit, val=inputs.held.val, lrs=lrs, refit=False,
                  extend=trainer.recipe.grid_extensions)
    if inputs.test is not None:
        _, rows = inputs.refit_rows()
        main += shapes(trainer, name="refit", fit=rows, val=rows[:0], lrs=lrs[:1], refit=False)
    curve = curve_shapes(trainer, _curve_spec(o, trainer, None), fit=inputs.held.fit) if o.points else []
    return main, curve


def _length(o: Options, inputs: Inputs, trainer: Trainer) -> FinetuneLength:
    """Step: ``epochs`` as asked, or the whole epochs every run gets so that the whole session — grid, refit and
    label curve — fits ``minutes`` (a timing of the step prices them; kept in runs/budget.json for a resume)."""
    main, curve = _runs(o, inputs, trainer)
    timing, epochs = None, o.epochs if o.epochs is not None else DEFAULT_EPOCHS
    if o.minutes is not None or curve:
        fit, world = inputs.held.fit, trainer.dist.world
        timing = ddp.broadcast(time_steps(trainer, fit, batch=min(o.batch_size, int(fit.numel()) // world)),
                               trainer.dist)  # one plan for every rank
    if o.minutes is not None:
        saved = trainer.runs_dir / "budget.json"
        kept = json.loads(saved.read_text()) if o.resume != "no" and saved.is_file() else {}
        epochs = kept["epochs"] if kept.get("minutes") == o.minutes else session_epochs(timing, minutes=o.minutes,
                                                                                        runs=main + curve)
        if trainer.dist.main:
            write_json(saved, {"minutes": o.minutes, "epochs": epochs, "runs": len(main + curve)})
        _say(o, trainer.dist, f"--minutes {o.minutes:g} covers {len(main)} main and {len(curve)} label-curve runs: "
                              f"{epochs} epochs each (expected: main runs "
                              f"{_duration(expected_seconds(timing, main, epochs=epochs))}, label curve "
                              f"{_duration(expected_seconds(timing, curve, epochs=epochs))})")
    return FinetuneLength(epochs, o.minutes, timing)


def _curve_spec(o: Options, trainer: Trainer, length: FinetuneLength | None) -> CurveSpec:
    return CurveSpec(o.points, o.seeds, o.seed, trainer.recipe.lr_grid, o.metric, o.val_fraction, length,
                     trainer.recipe.grid_extensions)


def _score(trainer: Trainer, inputs: Inputs, main: Selected, *, seed: int) -> tuple[Metrics, Metrics | None]:
    """Step: the chosen run's best epoch on validation (the rows that chose it), then the refit on test — the only
    time test is touched; without a refit (no --test) validation is all there is."""
    k = len(inputs.classes)
    out = []
    for rows, pos, state in ((inputs.val, inputs.held.val, main.best.state), (inputs.test, None, main.final.state)):
        if rows is None:
            out.append(None)
            continue
        trainer.net.load_state_dict(state)
        pos = torch.arange(len(rows)) if pos is None else pos
        scores = trainer.eval_logits(rows, pos)
        out.append(scored(scores, rows.labels[pos].to(scores.device), num_classes=k, seed=seed))
    trainer.net.load_state_dict(main.final.state)  # the network that is exported
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


def _rule(main: Selected) -> str:
    """How the scored network came about: the selection's rule, and the refit that test scores."""
    if main.refit is None:
        return main.rule + "; no refit (no --test): validation scores the chosen run"
    return (f"{main.rule}; then refit on train + validation ({main.refit.plan.n_train} rows) at that rate for "
            f"{main.refit.plan.epochs} epochs: val metrics are the chosen run's, test metrics the refit's")


def _record(o: Options, inputs: Inputs, recipe: Recipe, main: Selected, *, dev: torch.device, dist: ddp.Dist,
            timer: PhaseTimer, warns: list[str]) -> dict[str, Any]:
    """The result's bookkeeping (FinetuneResult's fields): what was chosen and how, the recipe and schedule, the
    data, the machine."""
    best, spec, test = main.best, inputs.backbone.spec, inputs.test
    schedule = {k: v for k, v in asdict(best.plan).items() if k not in ("name", "rows_sha256")}
    schedule["crop_scale"] = list(recipe.crop(best.plan.epochs))
    if main.refit is not None:
        r = main.refit.plan
        schedule["refit"] = {"rows": r.n_train, "epochs": r.epochs, "steps": r.total_steps,
                             "warmup_steps": r.warmup_steps, "batch_size": r.batch_size}
    return {
        "protocol": "finetune", "status": "complete", "model": spec.model, "image_size": spec.image_size,
        "small_stem": spec.small_stem, "weights": inputs.backbone.info,
        "chosen": FinetuneChoice(run=best.plan.name, lr=best.plan.base_lr, epoch=best.best_epoch,
                                 epochs=best.plan.epochs, selected_by=o.metric, rule=_rule(main)),
        "lr_grid": main.grid(), "learning_curve": [EpochPoint(**asdict(e)) for e in best.history],
        "recipe": asdict(recipe.with_lr(best.plan.base_lr)),
        "schedule": schedule,
        "selection": SelectionInfo(metric=o.metric, imbalance=class_imbalance(inputs.train.labels[inputs.held.fit]),
                                   tie_break="lower validation loss, then the earlier epoch and the smaller learning "
                                             "rate"),
        "classes": list(inputs.classes), "n_train": len(inputs.train), "n_fit": int(inputs.held.fit.numel()),
        "n_val": int(inputs.held.val.numel()),
        "val_source": "given" if inputs.held.given else f"holdout {o.val_fraction:g} (seed {o.seed})",
        "resumed": [r.plan.name for r in main.runs + [main.refit] if r is not None and r.resumed_from is not None],
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
            "test_top1": result.test.top1 if result.test is not None else None,
            "refit": result.schedule.get("refit")}


@dataclass
class Trained:
    """What the training steps leave: the trainer (its network), the main selection, the label curve."""

    trainer: Trainer
    main: Selected
    curve: FinetuneCurve | None


def _train(o: Options, inputs: Inputs, recipe: Recipe, *, dev: torch.device, dist: ddp.Dist,
           timer: PhaseTimer, warns: list[str], bar: Any, signals: StopSignals) -> Trained:
    """Step: the main selection over epochs and the rate grid, its refit on train + val (with --test), then the
    label-efficiency curve; every rank."""
    trainer = _trainer(o, inputs, recipe, dev, dist=dist, bar=bar, signals=signals)
    length = _length(o, inputs, trainer)
    with timer.phase("train"):
        main = select(trainer, name="main", fit=inputs.held.fit, val_rows=inputs.val, val=inputs.held.val,
                      lrs=recipe.lr_grid, seed=o.seed, metric=o.metric, length=length, extend=recipe.grid_extensions)
        if inputs.test is not None and not main.stopped:
            pool, rows = inputs.refit_rows()
            main = refit(trainer, main, name="refit", rows=pool, fit=rows, seed=o.seed, metric=o.metric)
    curve = None
    if o.points and not main.stopped:
        spec = _curve_spec(o, trainer, length)
        if length.timing is not None:
            runs = curve_shapes(trainer, spec, fit=inputs.held.fit)
            _say(o, dist, f"label curve: {len(runs)} runs of {length.epochs} epochs each at most, expected "
                          f"{_duration(expected_seconds(length.timing, runs, epochs=length.epochs))}")
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
                                   runs=[r.plan.name for r in main.runs + ([main.refit] if main.refit else [])])
        if not dist.main:  # the chosen network on every rank; rank 0 reports for all
            trainer.net.load_state_dict(main.final.state)
            return FinetuneStopped(status="complete", out=str(o.out), rank=dist.rank)
        with timer.phase("score"):
            val, test = _score(trainer, inputs, main, seed=o.seed)
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
    recipe follows the start (RSB's from-scratch rate for random weights, MAE's for trained ones) and the run's
    length (warm-up ≤ 10 %, the crop). The run length is ``epochs`` (default 30) or ``minutes`` for the whole
    fine-tune (grid, refit and label curve; whole epochs planned from a timing of the step). The epoch and the
    base learning rate of the grid (default: the recipe's ÷3, ×1, ×3; ``lr`` one rate, ``lrs`` another grid)
    are chosen by ``metric`` (balanced, top1 or macro-f1) on ``val``, else on the probe's stratified hold-out
    of ``val_fraction`` of train (seeded); with ``test`` the chosen rate and epochs then train on train + val
    (the refit), which is scored on test once and exported (val metrics are the selection run's).
    ``fractions``/``shots`` add a label curve (in ``metric``) whose subsets select with their own labels only.
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
