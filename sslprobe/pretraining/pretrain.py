"""The BYOL training loop: data to the device, views there, optimiser, checkpoints, logging, outputs.

Writes into ``out``: ``backbone.safetensors`` (online backbone, timm state dict + rebuild
metadata), ``config.json``, ``metrics.jsonl``, ``summary.json``, ``loss_curve.png`` (with
matplotlib) and ``checkpoints/``. The loop is a short list of named steps (:class:`_Session`);
one training step (config, model, optimiser, views, update) is ``trainstep.py``, the data order
``batches.py``, what is saved and when ``checkpointer.py`` (the file format: ``sslprobe/checkpoint.py``),
what is logged ``monitor.py``.
"""
from __future__ import annotations

import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

import sslprobe.checkpoint as ckpts
import sslprobe.distributed as ddp
import sslprobe.timebudget as timebudget
from sslprobe.backbone import BackboneSpec, has_batchnorm, save_backbone
from sslprobe.config.pretrain import PretrainConfig
from sslprobe.errors import SSLProbeError
from sslprobe.fileio import write_json
from sslprobe.images.folders import ImageSet, open_images, skipped_report
from sslprobe.pretraining.augment import byol_views
from sslprobe.pretraining.batches import BatchSource, check_grey, store_side
from sslprobe.pretraining.checkpointer import Checkpointer, restore, resume_point
from sslprobe.pretraining.monitor import KnnEval, LossMeter, MetricsLog, RunLog, knn_due, loss_curve
from sslprobe.pretraining.trainstep import RunSpec, StepFeed, TrainStep, build_byol, open_init, run_config
from sslprobe.results import PretrainResult
from sslprobe.runtime.device import pick_device
from sslprobe.runtime.signals import StopSignals
from sslprobe.runtime.workers import default_workers
from sslprobe.schedules import cosine_to_one


class PretrainInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) during pretraining; ``str()`` says what was saved and how to resume."""


@dataclass(frozen=True)
class LoopOptions:
    """How a session of the run is driven, beside what defines the run (:class:`RunSpec`).

    Taken from the run's :class:`~sslprobe.config.pretrain.PretrainConfig`.
    """

    resume: str = "no"
    save_every: ckpts.SaveEvery = ckpts.SaveEvery(minutes=10.0)
    max_minutes: float | None = None
    stop_at: int | None = None
    log_every: int = PretrainConfig.log_every
    eval_every: int = PretrainConfig.eval_every
    compile: bool = False
    show_progress: bool = True

def pretrain(config: PretrainConfig | str | os.PathLike, /, *, show_progress: bool = True,
             **options: Any) -> PretrainResult:
    """BYOL-pretrain a timm backbone on the images of ``config.data`` (labels, if any, are ignored).

    ``config``: a :class:`~sslprobe.config.pretrain.PretrainConfig` (every option, its default and its
    rule; docs/pretrain.md), or the data folder with the options as keywords, as on the command line
    (``pretrain("photos/", out="runs/byol", max_steps=100, blur=False)``). ``resume``: "no" (refuses
    to discard an unfinished run in ``out``), "auto" (continue if a checkpoint exists) or "yes" (must
    continue). ``minutes`` sizes the schedule to fit, from a short timing run (:func:`_fit_minutes`);
    ``max_minutes``/``stop_at`` stop early with a checkpoint, keeping the full run's schedule. Crops come
    from the whole image (docs/pretrain.md, "Crops"). Ctrl-C saves and raises :class:`PretrainInterrupted`.
    Returns a ``PretrainResult`` (summary.json's content).
    """
    c = PretrainConfig.of(config, **options)
    loop = LoopOptions(resume=c.resume, save_every=ckpts.parse_save_every(c.save_every), max_minutes=c.max_minutes,
                       stop_at=c.stop_at, log_every=c.log_every, eval_every=c.eval_every, compile=c.compile,
                       show_progress=show_progress)
    images = open_images(c.data, image_column=c.image_column, label_column=c.label_column)
    if len(images) < 2:
        raise SSLProbeError(f"'{c.data}' has {len(images)} image; BYOL needs at least 2 (ideally thousands)")
    if c.grayscale:
        check_grey(images)
    dist, dev = ddp.setup(pick_device(c.device))
    try:
        # timm's training init (zero-initialised residual branches, not extract's fair one), hub weights or a file
        net, spec, start = open_init(c.init, model=c.model, image_size=c.image_size, small_stem=c.small_stem,
                                     seed=c.seed, in_chans=1 if c.grayscale else 3)
        views = byol_views(spec.image_size, c.augment)
        nw = default_workers() if c.workers is None else c.workers
        source = _source(images, spec, grayscale=c.grayscale, init=c.init, batch=c.batch_size, device=dev,
                         seed=c.seed, workers=nw, dist=dist, show_progress=show_progress)
        spec_of = partial(run_config, options=c, spec=spec, batch=source.batch, steps_per_epoch=source.steps_per_epoch,
                          dist=dist, device=dev, views=views, store_size=source.store, start=start,
                          batchnorm=has_batchnorm(net))
        out = Path(c.out)
        budget = None if c.minutes is None else _fit_minutes(c.minutes, config=spec_of, source=source, images=images,
                                                             out=out, dist=dist, device=dev, loop=loop)
        cfg = spec_of(max_steps=c.max_steps if budget is None else budget.max_steps)
        knn = (KnnEval(c.eval_train, c.eval_test, size=spec.image_size, device=dev, workers=nw,
                       channels=spec.in_chans) if c.eval_train is not None and dist.main else None)
        return _Session(cfg, source=source, images=images, out=out, dist=dist, device=dev, loop=loop,
                        knn=knn, budget=budget).run()
    finally:
        ddp.teardown(dist)


def _fit_minutes(minutes: float, *, config: Callable[..., RunSpec], source: BatchSource, images: ImageSet,
                 out: Path, dist: ddp.Dist, device: torch.device, loop: LoopOptions) -> timebudget.FittedSteps:
    """The steps whose whole schedule fits ``minutes``: ``out/budget/budget.json`` when it holds a fit for these
    minutes (a rerun, ``--resume``), else a timing run of the same model and batch into ``out/budget/timing``.

    Rank 0 reads, fits and saves; every rank takes its answer, so all train the same schedule
    (:func:`sslprobe.timebudget.fitted_steps`). The minutes count the run's setup and steps, not the
    decoding before them (already done here) nor the timing run.
    """
    workdir = out / "budget"

    def measure(timing: Path, steps: int) -> Path:
        _timing_run(config(max_steps=steps), source=source, images=images, out=timing, dist=dist, device=device,
                    compile=loop.compile)
        return timing

    budget = timebudget.fitted_steps(minutes, workdir=workdir, measure=measure, main=dist.main,
                                     share=partial(ddp.broadcast, dist=dist))
    if dist.main and loop.show_progress:
        print(f"pretrain: --minutes {minutes:g} fits {budget.max_steps} steps ({budget.steps_per_second:.3g} steps/s, "
              f"{budget.setup_seconds:.0f} s setup; {workdir / 'budget.json'})", file=sys.stderr, flush=True)
    return budget


def _timing_run(cfg: RunSpec, *, source: BatchSource, images: ImageSet, out: Path, dist: ddp.Dist,
                device: torch.device, compile: bool) -> None:
    """A short run of ``cfg`` into ``out`` (its metrics.jsonl holds the step rate; the caller times it, setup and
    save included)."""
    if dist.main:  # scratch: an interrupted timing run is measured again, never resumed
        shutil.rmtree(out, ignore_errors=True)
    ddp.barrier(dist)
    brief = LoopOptions(save_every=ckpts.parse_save_every("end"), log_every=timebudget.MEASURE_LOG_EVERY,
                        compile=compile, show_progress=False)
    _Session(cfg, source=source, images=images, out=out, dist=dist, device=device, loop=brief, knn=None).run()


def _source(images: ImageSet, spec: BackboneSpec, *, grayscale: bool, init: str, batch: int, device: torch.device,
            seed: int, workers: int, dist: ddp.Dist, show_progress: bool) -> BatchSource:
    """The run's store: whole images at :func:`store_side` px in the backbone's channels (docs/pretrain.md, "Crops")."""
    if spec.in_chans != (1 if grayscale else 3):  # an sslprobe --init file says which channels it was trained on
        raise SSLProbeError(f"--init '{init}' is a backbone for {'grey' if spec.in_chans == 1 else 'colour'} "
                            f"images; {'add' if spec.in_chans == 1 else 'drop'} --grayscale")
    side = store_side(images, size=spec.image_size, channels=spec.in_chans)
    return BatchSource(images, store=side, batch=batch, device=device, seed=seed, workers=workers, rank=dist.rank,
                       world=dist.world, show_progress=show_progress, channels=spec.in_chans)


class _Session:
    """One session of a run, from its start step (0, or the checkpoint's) to its end, as named steps.

    :meth:`run`: train, then write the backbone and the summary. :meth:`_train` holds the stop
    handling around :meth:`_steps`, the loop proper: feed → step → meter → log → agreed decisions
    (:meth:`_decide`) → kNN (:meth:`_evaluate`).
    """

    def __init__(self, cfg: RunSpec, *, source: BatchSource, images: ImageSet, out: Path, dist: ddp.Dist,
                 device: torch.device, loop: LoopOptions, knn: KnnEval | None,
                 budget: timebudget.FittedSteps | None = None):
        self.cfg, self.source, self.images, self.out, self.dist, self.device = cfg, source, images, out, dist, device
        self.loop, self.knn, self.knn_top1, self.budget = loop, knn, None, budget
        self.found = resume_point(out, resume=loop.resume, cfg=cfg)
        self.start = self.step = self.found.step if self.found else 0
        self.end = min(cfg.total_steps, loop.stop_at or cfg.total_steps)
        if dist.main:
            _prepare_out(out, cfg, fresh=self.found is None)
        net, self.opt, self.spec = build_byol(cfg, device=device, dist=dist)
        self.train_step = TrainStep(net, self.opt, cfg=cfg, spec=self.spec, device=device, rank=dist.rank,
                                    compile=loop.compile)
        self.byol = self.train_step.byol
        if self.found is not None:
            restore(self.found, byol=self.byol, opt=self.opt)
        self.ckpt = Checkpointer(out / "checkpoints", byol=self.byol, opt=self.opt, cfg=cfg, dist=dist,
                                 when=loop.save_every, found=self.found)
        # a resumed finished run logs nothing new: its loss is the checkpoint's
        self.meter = LossMeter(device, loss=self.found.state.get("loss") if self.found else None)
        self.log = MetricsLog(out / "metrics.jsonl", resume_step=self.start) if dist.main else None
        self.monitor = RunLog(self.log, show=loop.show_progress and dist.main, start=self.start,
                              total=cfg.total_steps, steps_per_epoch=cfg.steps_per_epoch, proj_dim=cfg.proj_dim,
                              warn=dist.main)
        if dist.main and loop.show_progress:  # the values this run trains with, and where the defaults came from
            print(f"pretrain: {cfg.defaults}", file=sys.stderr, flush=True)
        self.started = time.monotonic()

    def run(self) -> PretrainResult:
        try:
            status = self._train()
        finally:
            if self.log is not None:
                self.log.close()
        if self.dist.main:
            save_backbone(self.byol.backbone, self.spec, self.out / "backbone.safetensors",
                          start=asdict(self.cfg.start))
        summary = self._summary(status)
        if self.dist.main:
            write_json(self.out / "summary.json", summary.to_json())
        return summary

    def _train(self) -> str:
        """Train to the end (or an early stop) and save there; a Ctrl-C or SIGTERM saves and raises."""
        self.train_step.net.train()
        feed = None
        try:
            with StopSignals() as sig, self.monitor:
                feed = StepFeed(self.source, self.train_step, start=self.start)
                status = self._steps(feed, sig)
                self._evaluate(final=True)
                if self.meter.steps:
                    self._log()
                self.ckpt.save(self.step, loss=self.meter.loss)
                return status
        except KeyboardInterrupt as e:
            if isinstance(e, PretrainInterrupted):
                raise
            # A KeyboardInterrupt not caught by the handler (second Ctrl-C, or raised inside the step): the
            # state is whole unless it came between the optimiser and the EMA update.
            whole = self.dist.world == 1 and not self.train_step.mutating
            raise PretrainInterrupted(self.ckpt.stop(self.step, loss=self.meter.loss, why="KeyboardInterrupt",
                                                     save=whole)) from None
        finally:
            if feed is not None:
                feed.close()

    def _steps(self, feed: StepFeed, sig: StopSignals) -> str:
        """The loop proper, from ``start`` to ``end``; returns the run's status."""
        while self.step < self.end:
            t0 = time.perf_counter()
            s, inputs = feed.next()
            wait = time.perf_counter() - t0
            loss, proj_std = feed.train(inputs, s)
            self.step = s + 1
            self.meter.add(loss, proj_std, images=inputs[0].shape[0] * self.dist.world, wait=wait)
            logging = self.step % self.loop.log_every == 0 or self.step == self.end
            if logging:
                self._log()
            if self.dist.world == 1 or logging:  # collective decisions only where ranks sync anyway
                stopped = self._decide(sig)
                if stopped:
                    return stopped
            self._evaluate(final=False)
        return "complete" if self.step >= self.cfg.total_steps else f"stopped: --stop-at {self.loop.stop_at}"

    def _log(self) -> None:
        """Log the window since the last log; a non-finite loss ends the run without saving."""
        w = self.meter.take()
        if ddp.agree([not math.isfinite(w.loss)], self.dist, self.device)[0]:
            raise SSLProbeError(f"loss became {w.loss} at step {self.step}; stopped without saving. Lower --lr or use "
                                "--optimizer sgd in a new run. " + self.ckpt.last_good())
        self.monitor.window(self.step, w, lr=self.opt.param_groups[0]["lr"],
                            tau=cosine_to_one(self.step - 1, self.cfg.total_steps, self.cfg.tau_base))

    def _decide(self, sig: StopSignals) -> str | None:
        """What every rank agrees on after a step: stop on a signal (saved), stop at --max-minutes, save when due."""
        minutes = (time.monotonic() - self.started) / 60
        hit, time_up, due = ddp.agree([sig.hit is not None,
                                       self.loop.max_minutes is not None and minutes >= self.loop.max_minutes,
                                       self.ckpt.due(self.step)], self.dist, self.device)
        if hit:
            raise PretrainInterrupted(self.ckpt.stop(self.step, loss=self.meter.loss, why=sig.hit or "signal"))
        if self.step >= self.end:
            return None  # the end's own save follows
        if time_up:
            return f"stopped: --max-minutes {self.loop.max_minutes:g} reached"
        if due:
            self.ckpt.save(self.step, loss=self.meter.loss)
        return None

    def _evaluate(self, *, final: bool) -> None:
        """The online kNN top-1 where :func:`knn_due` says (main rank, with --eval-train/--eval-test)."""
        if self.knn is None or not knn_due(self.step, steps_per_epoch=self.cfg.steps_per_epoch,
                                           every=self.loop.eval_every, total=self.cfg.total_steps, final=final):
            return
        self.knn_top1 = self.knn(self.byol.backbone, mean=self.spec.mean, std=self.spec.std)
        self.monitor.knn(self.step, self.knn_top1)

    def _summary(self, status: str) -> PretrainResult:
        cfg, spec, last = self.cfg, self.spec, self.ckpt.last
        return PretrainResult(
            out=str(self.out), status=status, steps=self.step, total_steps=cfg.total_steps,
            resumed_from=self.found.step if self.found else None, final_loss=self.meter.loss,
            images=len(self.images), skipped=skipped_report(self.images, self.source.skipped),
            model=spec.model, image_size=spec.image_size, small_stem=spec.small_stem,
            device=str(self.device), world_size=self.dist.world, optimizer=cfg.optimizer,
            compile=self.train_step.compile_note, knn_top1=self.knn_top1,
            budget=asdict(self.budget) if self.budget is not None else None,
            checkpoint=str(last.json_path) if last else None, warnings=self.monitor.warnings,
            loss_curve=loss_curve(self.log.records(), self.out / "loss_curve.png") if self.log is not None else None,
        )


def _prepare_out(out: Path, cfg: RunSpec, *, fresh: bool) -> None:
    """The output folder with this run's config.json; a fresh start clears a finished run's checkpoints."""
    out.mkdir(parents=True, exist_ok=True)
    if fresh and (out / "checkpoints").is_dir():  # a finished run being overwritten
        for f in (out / "checkpoints").iterdir():
            f.unlink()
    write_json(out / "config.json", asdict(cfg))
