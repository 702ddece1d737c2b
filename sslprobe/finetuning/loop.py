"""One fine-tuning run as named steps: start or restore → steps → validate at each epoch's end → keep the best → save.

A run trains the start network on a set of training rows and chooses its epoch on a set of
validation rows (:class:`Run`). Everything a run needs to continue exactly sits in its checkpoint
(``sslprobe/checkpoint.py``'s format): the weights, the optimiser, the global RNG, the best epoch's
weights and the learning curve so far; the data order and the crops are functions of (seed, step).
A finished run leaves ``best.safetensors`` and ``run.json`` in its folder, which a resumed session
reads instead of training again. Ctrl-C (or SIGTERM) saves a checkpoint and stops.

Under torchrun (docs/finetune.md) every rank trains its slice of each global batch of the epoch's
order through DDP, and rank 0 is the run's one voice: it validates (the others receive its
numbers), its BatchNorm statistics are every rank's at each epoch's end, and it alone writes.
Stop and save decisions are agreed (``distributed.agree``) so every rank leaves at the same step.
"""
from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

import sslprobe.checkpoint as ckpts
import sslprobe.distributed as ddp
from sslprobe.errors import SSLProbeError
from sslprobe.fileio import write_json
from sslprobe.finetuning.augment import TrainViews, normalize
from sslprobe.finetuning.data import ImageRows
from sslprobe.finetuning.recipe import Recipe, fine_tune_warmup, make_optimizer, set_lr
from sslprobe.images.datasets import epoch_order
from sslprobe.probing.metrics import selection_scores
from sslprobe.runtime.signals import StopSignals
from sslprobe.schedules import warmup_cosine

RESUME_IGNORES = ("device", "precision")  # the same run may continue on other hardware
EVAL_BATCH = 256
# PreciseBN's sample: a channel's mean from 4,096 images is within ~1/√4096 ≈ 1.6 % of its std of the population's
PRECISE_BN_IMAGES = 4096
T = TypeVar("T")


class FinetuneInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) during fine-tuning; ``str()`` says what was saved and how to resume."""


def rows_digest(*parts: torch.Tensor) -> str:
    """sha256 of row positions: a resumed run must train and validate on the same rows."""
    h = hashlib.sha256()
    for p in parts:
        h.update(p.to(torch.int64).numpy().tobytes() + b"|")
    return h.hexdigest()


@dataclass(frozen=True)
class RunPlan:
    """What defines one run beside the session's setup (a resume must match both)."""

    name: str
    base_lr: float
    seed: int
    n_train: int
    n_val: int
    rows_sha256: str
    batch_size: int
    steps_per_epoch: int
    epochs: int
    total_steps: int
    warmup_steps: int
    metric: str  # the declared metric (--metric) that chooses the epoch
    minutes: float | None  # the budget ``epochs`` was planned from (None: epochs were asked)


def plan_run(name: str, *, recipe: Recipe, seed: int, fit: torch.Tensor, val: torch.Tensor, epochs: int,
             metric: str, minutes: float | None) -> RunPlan:
    """The run's schedule: the batch per process capped to the training rows, whole global batches per epoch,
    the warm-up (at most 10 % of the run, ``recipe.fine_tune_warmup``)."""
    world = recipe.world_size
    batch = min(recipe.batch_size, int(fit.numel()) // world)
    if batch < 2:
        raise SSLProbeError(f"run '{name}' has {fit.numel()} training image(s) for {world} process(es); fine-tuning "
                            "needs at least 2 per process and step (BatchNorm): use more labels per class")
    spe = int(fit.numel()) // (batch * world)
    total = spe * epochs
    return RunPlan(name, recipe.base_lr, seed, int(fit.numel()), int(val.numel()), rows_digest(fit, val), batch, spe,
                   epochs, total, fine_tune_warmup(recipe.warmup_epochs, steps_per_epoch=spe, total=total), metric,
                   minutes)


@dataclass(frozen=True)
class EpochRecord:
    """One point of the learning curve."""

    epoch: int
    step: int
    train_loss: float
    val_loss: float | None  # None: the run had no validation rows
    val_top1: float | None
    val_balanced: float | None
    lr: float  # the head's rate at the epoch's last step
    seconds: float
    val_macro_f1: float | None = None  # (absent from a history saved before --metric)


@dataclass
class RunResult:
    """A finished (or stopped) run: its curve, the chosen epoch and that epoch's weights (CPU)."""

    plan: RunPlan
    history: list[EpochRecord]
    best_epoch: int | None
    best_score: float
    best_loss: float
    state: dict[str, torch.Tensor] | None
    status: str
    resumed_from: int | None = None


@dataclass
class SessionBudget:
    """Steps this session may still train over all its runs (None: no limit) — ``stop_after``."""

    left: int | None = None
    stopped: bool = False

    def spend(self) -> bool:
        """Count one step; True when the budget is used up."""
        if self.left is None:
            return False
        self.left -= 1
        self.stopped = self.left <= 0
        return self.stopped


@dataclass
class Trainer:
    """What every run of a session shares: the network (on the device), its start weights, the recipe, the rows."""

    net: nn.Module
    start: dict[str, torch.Tensor]
    recipe: Recipe
    train: ImageRows
    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    device: torch.device
    setup: dict[str, Any]
    runs_dir: Path
    save_every: ckpts.SaveEvery
    resume: str
    bar: Any
    signals: StopSignals
    budget: SessionBudget = field(default_factory=SessionBudget)
    dist: ddp.Dist = field(default_factory=ddp.Dist)
    model: nn.Module | None = None  # what trains: ``net`` in DDP under torchrun (None: ``net`` itself)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def train_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores of a training step through DDP (every rank must call it); bf16 autocast on CUDA."""
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.cuda):
            return (self.model or self.net)(self.inputs(x)).float()

    def on_main(self, compute: Callable[[], T]) -> T:
        """``compute()`` on rank 0 alone, its value on every rank: one evaluation, one answer for all."""
        return ddp.broadcast(compute() if self.dist.main else None, self.dist)

    def sync_buffers(self) -> None:
        """Rank 0's BatchNorm statistics on every rank (DDP sends them at each forward; this after the last)."""
        if self.dist.world <= 1:
            return
        bufs = self.on_main(lambda: {k: b.detach().to("cpu") for k, b in self.net.named_buffers()})
        with torch.no_grad():
            for k, b in self.net.named_buffers():
                b.copy_(bufs[k])

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last)  # the network's layout (``finetune._trainer``)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores in float32; bf16 autocast on CUDA."""
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.cuda):
            return self.net(self.inputs(x)).float()

    @torch.no_grad()
    def precise_bn(self, rows: ImageRows, positions: torch.Tensor) -> None:
        """BatchNorm's population statistics recomputed with the current weights on the centre crops of ``positions``
        (PreciseBN, Wu & Johnson 2021, "Rethinking 'Batch' in BatchNorm", §3).

        The running averages (momentum 0.1) trail the weights by ~10 steps, which in a short run is much of
        training: a test_resnet trained 30 steps from random weights on 1,400 digits scored 12.8 % with them and
        95.0 % with recomputed ones (docs/finetune.md, "BatchNorm"). Training steps normalise by the batch and
        are unchanged; validation, the kept weights and the export use these statistics.
        """
        norms = [m for m in self.net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                 and m.track_running_stats]
        positions = positions[:positions.numel() - (positions.numel() % EVAL_BATCH == 1)]  # no 1-image batch
        if not norms or positions.numel() < 2:
            return
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the batches
        was = self.net.training
        self.net.train()
        for x, _ in rows.eval_batches(positions, batch=EVAL_BATCH, device=self.device):
            self.logits(normalize(x.to(self.device), mean=self.mean, std=self.std))
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        self.net.train(was)

    @torch.inference_mode()
    def eval_logits(self, rows: ImageRows, positions: torch.Tensor) -> torch.Tensor:
        """(n, K) float32 scores of the network in eval mode on the centre crops of ``positions`` of ``rows``."""
        was = self.net.training
        self.net.eval()
        out = [self.logits(normalize(x.to(self.device), mean=self.mean, std=self.std))
               for x, _ in rows.eval_batches(positions, batch=EVAL_BATCH, device=self.device)]
        self.net.train(was)
        return torch.cat(out)


class Run:
    """One run: :meth:`run` = finished before? → start or restore → steps (validating at each epoch's end) → finish."""

    def __init__(self, trainer: Trainer, plan: RunPlan, *, fit: torch.Tensor, val_rows: ImageRows, val: torch.Tensor,
                 task: int) -> None:
        self.t, self.plan, self.fit, self.val_rows, self.val, self.task = trainer, plan, fit, val_rows, val, task
        self.dir = trainer.runs_dir / plan.name
        self.recipe = trainer.recipe.with_lr(plan.base_lr)
        self.history: list[EpochRecord] = []
        self.best: tuple[int | None, float, float] = (None, -math.inf, math.inf)  # epoch, score, loss
        self.best_state: dict[str, torch.Tensor] | None = None
        self.step, self.resumed_from, self.mutating, self.factor = 0, None, False, 0.0
        self.loss_sum = torch.zeros((), device=trainer.device)
        self.started, self.elapsed_before = time.monotonic(), 0.0
        g = torch.Generator().manual_seed(plan.seed)
        self.bn_rows = fit[torch.randperm(fit.numel(), generator=g)[:PRECISE_BN_IMAGES]]  # PreciseBN's sample

    def run(self) -> RunResult:
        done = self._finished()
        if done is not None:
            return done
        self._begin()
        # the crop follows the run's length: the planned one (a resumed --minutes run keeps its saved epochs)
        self.views = TrainViews(self.t.size, self.recipe.crop(self.plan.epochs), self.recipe.crop_ratio,
                                self.recipe.flip_p, self.t.mean, self.t.std, self.plan.seed)
        self.t.bar.update(self.task, completed=self.step)
        status = self._steps()
        if status == "complete":
            self._finish()
        return self._result(status)

    # --- start, restore, finish ------------------------------------------------------------------------------

    def _config(self) -> dict[str, Any]:
        return {"plan": asdict(self.plan), "setup": self.t.setup}

    def _check(self, saved: dict[str, Any], where: Path) -> None:
        ignore = RESUME_IGNORES + (("epochs", "total_steps", "warmup_steps") if self.plan.minutes else ())
        diff = ckpts.config_diff({**saved["setup"], **saved["plan"]}, {**self.t.setup, **asdict(self.plan)},
                                 ignore=ignore)
        if diff:
            shown = "; ".join(f"{k}: {a!r} → {b!r}" for k, (a, b) in list(diff.items())[:6])
            raise SSLProbeError(f"cannot resume from {where}: the configuration differs in {len(diff)} key(s): "
                                f"{shown}; rerun with the original options, or use a new --out")
        if self.plan.minutes:  # a minutes budget planned its epochs when the run started: keep that plan
            keep = {k: saved["plan"][k] for k in ("epochs", "total_steps", "warmup_steps")}
            self.plan = RunPlan(**{**asdict(self.plan), **keep})

    def _finished(self) -> RunResult | None:
        """A run this out dir already finished (resume only; a fresh session cleared the runs)."""
        from safetensors.torch import load_file

        info = self.dir / "run.json"
        if self.t.resume == "no" or not info.is_file():
            return None
        saved = json.loads(info.read_text())
        self._check(saved["config"], info)
        state = load_file(str(self.dir / "best.safetensors")) if saved["best_epoch"] is not None else None
        return RunResult(self.plan, [EpochRecord(**e) for e in saved["history"]], saved["best_epoch"],
                         saved["best_score"], saved["best_loss"], state, "complete", saved.get("resumed_from"))

    def _begin(self) -> None:
        """The start weights and a fresh optimiser; then the checkpoint's state when there is one to resume."""
        self.t.net.load_state_dict(self.t.start)
        self.t.net.train()
        self.opt = make_optimizer(self.t.net, self.recipe)
        found = ckpts.find_latest(self.dir / "checkpoints") if self.t.resume != "no" else None
        if found is None:
            torch.manual_seed(self.plan.seed)
            return
        self._check(found.state["config"], found.json_path)
        tensors = ckpts.load_tensors(found)
        try:
            self.t.net.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
            ckpts.unpack_optimizer(self.opt, tensors, found.state["optimizer"])
            ckpts.restore_rng(tensors)
        except (RuntimeError, KeyError, ValueError, TypeError) as e:
            raise SSLProbeError(f"checkpoint {found.json_path} does not fit this network ({type(e).__name__}); delete "
                                "it or use a new --out") from None
        best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
        self.best_state = best or None
        epoch, score, loss = found.state["best"]  # JSON has no infinities: None before the first epoch's end
        self.best = (epoch, -math.inf if score is None else score, math.inf if loss is None else loss)
        self.history = [EpochRecord(**e) for e in found.state["history"]]
        self.step = self.resumed_from = found.step
        self.elapsed_before = float(found.state["elapsed_s"])
        self.loss_sum.fill_(found.state["epoch_loss_sums"][self.t.dist.rank])  # this rank's, so far this epoch

    def _save(self, *, agreed: bool = True) -> None:
        """Rank 0 writes the checkpoint; ``agreed``: every rank is here (the training-loss sums are gathered)."""
        # (a second Ctrl-C stops one rank alone: rank 0 then saves its own sum for every rank's)
        sums = ddp.gather(float(self.loss_sum), self.t.dist) if agreed else [float(self.loss_sum)] * self.t.dist.world
        if self.t.dist.main:
            self._write_checkpoint(sums)
        self.saved = (self.step, time.monotonic())

    def _write_checkpoint(self, loss_sums: list[float]) -> None:
        opt_t, opt_meta = ckpts.pack_optimizer(self.opt)
        tensors = {**{f"model.{k}": v for k, v in self.t.net.state_dict().items()}, **opt_t, **ckpts.rng_tensors(),
                   **{f"best.{k}": v for k, v in (self.best_state or {}).items()}}
        state = {"config": self._config(), "optimizer": opt_meta, "history": [asdict(e) for e in self.history],
                 "best": list(self.best), "elapsed_s": self._elapsed(), "epoch_loss_sums": loss_sums,
                 "data_rng": "epoch order and crops are functions of (seed, step)"}
        ckpts.save(self.dir / "checkpoints", step=self.step, tensors=tensors, state=state)

    def _finish(self) -> None:
        """best.safetensors, then run.json (the commit mark); the checkpoints go once both are written."""
        from safetensors.torch import save_file

        from sslprobe.fileio import atomic_path

        if not self.t.dist.main:
            return
        if self.best_state is not None:
            with atomic_path(self.dir / "best.safetensors") as tmp:
                save_file({k: v.contiguous() for k, v in self.best_state.items()}, str(tmp))
        epoch, score, loss = self.best
        write_json(self.dir / "run.json", {"config": self._config(), "history": [asdict(e) for e in self.history],
                                           "best_epoch": epoch, "best_score": score, "best_loss": loss,
                                           "resumed_from": self.resumed_from, "seconds": self._elapsed()})
        shutil.rmtree(self.dir / "checkpoints", ignore_errors=True)

    def _result(self, status: str) -> RunResult:
        epoch, score, loss = self.best
        return RunResult(self.plan, self.history, epoch, score, loss, self.best_state, status, self.resumed_from)

    def _elapsed(self) -> float:
        return self.elapsed_before + time.monotonic() - self.started

    # --- the steps -----------------------------------------------------------------------------------------

    def _batches(self) -> Iterator[tuple[torch.Tensor, ...]]:
        """This rank's uint8 batches from ``self.step`` to the end of the run, epoch after epoch: its slice of
        each global batch of the epoch's seeded order."""
        spe, b, world = self.plan.steps_per_epoch, self.plan.batch_size, self.t.dist.world
        for epoch in range(self.step // spe, self.plan.epochs):
            order = self.fit[epoch_order(self.plan.n_train, seed=self.plan.seed, epoch=epoch)]
            mine = order[:spe * b * world].view(spe, world, b)[:, self.t.dist.rank].reshape(-1)
            yield from self.t.train.train_batches(mine, batch=b, start=self.step - epoch * spe, device=self.t.device)

    def _steps(self) -> str:
        """Train to the end of the plan; Ctrl-C, SIGTERM and the session's step budget save and stop."""
        self.saved = (self.step, time.monotonic())
        try:
            for x, aspect, y in self._batches():
                self._train_step(x, aspect, y)
                if self.step % self.plan.steps_per_epoch == 0:
                    self._end_epoch()
                more = self.step < self.plan.total_steps
                hit, due = ddp.agree([self.t.signals.hit is not None, more and self._due()], self.t.dist, self.t.device)
                if hit:
                    raise FinetuneInterrupted(self._stop(self.t.signals.hit or "a signal to another rank"))
                if self.t.budget.spend() and self.step < self.plan.total_steps:
                    self._save()
                    return f"stopped after {self.step} of {self.plan.total_steps} steps"
                if due:
                    self._save()
        except KeyboardInterrupt as e:
            if isinstance(e, FinetuneInterrupted):
                raise
            raise FinetuneInterrupted(self._stop("KeyboardInterrupt", save=not self.mutating, agreed=False)) from None
        return "complete"

    def _train_step(self, x: torch.Tensor, aspect: torch.Tensor, y: torch.Tensor) -> None:
        """Forward, backward and the AdamW update at schedule position ``self.step``; no host sync."""
        self.factor = warmup_cosine(self.step, self.plan.total_steps, warmup=self.plan.warmup_steps)
        set_lr(self.opt, self.recipe, self.factor)
        loss = F.cross_entropy(self.t.train_logits(self.views(x, aspect, self.step)), y,
                               label_smoothing=self.recipe.label_smoothing)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.mutating = True
        self.opt.step()
        self.step += 1
        self.mutating = False
        self.loss_sum += loss.detach()
        self.t.bar.update(self.task, advance=1)

    def _end_epoch(self) -> None:
        """Validate, record the curve's point, keep the weights when the epoch is the best so far.

        Without validation rows (a subset with one label in a class) every epoch is "best": the last one is kept.
        """
        epoch = self.step // self.plan.steps_per_epoch
        if self.val.numel() or self.step == self.plan.total_steps:  # statistics for what is scored or kept
            # every rank, on the same rows: SyncBatchNorm all-reduces in training mode (rank 0 alone would wait)
            self.t.precise_bn(self.t.train, self.bn_rows)
        self.t.sync_buffers()
        sums = ddp.gather(float(self.loss_sum), self.t.dist)
        self.loss_sum.zero_()
        train_loss, val = self.t.on_main(lambda: (sum(sums) / (self.plan.steps_per_epoch * len(sums)),
                                                  self._validate()))
        if not math.isfinite(train_loss):
            raise SSLProbeError(f"the training loss became {train_loss} in epoch {epoch} of run '{self.plan.name}'; "
                                "lower --lr (nothing was saved for this run)")
        loss, scores = val
        self.history.append(EpochRecord(epoch, self.step, train_loss, loss, scores.get("top1"), scores.get("balanced"),
                                        self.recipe.lr * self.factor, self._elapsed(), scores.get("macro-f1")))
        score = math.nan if loss is None else scores[self.plan.metric]
        loss = math.inf if loss is None else loss
        if not scores or (score, -loss) > (self.best[1], -self.best[2]):  # ties: lower loss, then earlier
            self.best = (epoch, score, loss)
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in self.t.net.state_dict().items()}
        shown = "" if not scores else f", val {self.plan.metric} {score:.3f}"
        self.t.bar.update(self.task, description=f"{self.plan.name}: epoch {epoch}/{self.plan.epochs}{shown}")

    def _validate(self) -> tuple[float | None, dict[str, float]]:
        """(loss, every metric of ``METRICS``) on the run's validation rows; (None, {}) without any."""
        if self.val.numel() == 0:
            return None, {}
        y = self.val_rows.labels[self.val].to(self.t.device)
        scores = self.t.eval_logits(self.val_rows, self.val)
        return (float(F.cross_entropy(scores, y)),
                selection_scores(scores.argmax(1), y, num_classes=len(self.t.setup["classes"])))

    def _due(self) -> bool:
        last_step, last_time = self.saved
        return self.t.save_every.due(step=self.step, last_step=last_step,
                                     elapsed_min=(time.monotonic() - last_time) / 60)

    def _stop(self, why: str, *, save: bool = True, agreed: bool = True) -> str:
        if save:
            self._save(agreed=agreed)
        return (f"interrupted ({why}) at step {self.step} of {self.plan.total_steps} of run '{self.plan.name}'"
                f"{'; checkpoint saved in ' + str(self.dir / 'checkpoints') if save else '; not saved (mid-update)'}. "
                "Continue with the same command plus --resume")


__all__ = ["EVAL_BATCH", "PRECISE_BN_IMAGES", "EpochRecord", "FinetuneInterrupted", "Run", "RunPlan", "RunResult",
           "SessionBudget",
           "Trainer", "plan_run", "rows_digest"]
