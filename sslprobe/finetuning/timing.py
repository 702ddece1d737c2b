"""``--minutes``: a timing of the real fine-tuning step, from which the session's run length is planned.

The measured seconds of a training step (views, forward, backward, AdamW) and of evaluating one
image (:class:`~sslprobe.timebudget.StepTiming`) price one epoch of every run the session will make —
the learning-rate grid, the refit on train + validation and each label-curve draw's own grid and refit
(:class:`RunShape`) — and the budget covers them all: every run gets the same whole epochs
(:func:`session_epochs`), so a subset's run is sized by its own images and never takes more steps than
the full run. The plan is kept in the run's checkpoint (and ``budget.json``), so a resumed session keeps it.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sslprobe.finetuning.augment import TrainViews
from sslprobe.finetuning.loop import EVAL_BATCH, PRECISE_BN_IMAGES, Trainer
from sslprobe.finetuning.recipe import make_optimizer
from sslprobe.timebudget import StepTiming


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class SessionTiming:
    """The timed step and evaluation (:class:`~sslprobe.timebudget.StepTiming`) and a run's fixed cost: the start
    weights loaded, a fresh optimiser, the kept weights copied and written (a short run is mostly this)."""

    step: StepTiming
    run_s: float


def time_steps(trainer: Trainer, fit: torch.Tensor, *, batch: int, repeats: int = 2) -> SessionTiming:
    """Time the step on the start network with a throwaway optimiser; every run reloads the start weights after.

    Under torchrun every rank times the step together (DDP); the caller keeps rank 0's timing for all."""
    from safetensors.torch import save

    net, dev = trainer.net, trainer.device
    t = time.perf_counter()
    net.load_state_dict(trainer.start)
    net.train()
    opt = make_optimizer(net, trainer.recipe)
    state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in net.state_dict().items()}
    save(state)  # best.safetensors; run.json and the progress are small beside it
    run_s = time.perf_counter() - t
    r = trainer.recipe
    views = TrainViews(trainer.size, r.crop(1), r.crop_ratio, r.flip_p, trainer.mean, trainer.std, 0)
    x, aspect, y = next(iter(trainer.train.train_batches(fit[:batch], batch=batch, start=0, device=dev)))
    times = []
    for i in range(repeats + 1):  # the first step pays for allocations and kernel choice
        t = time.perf_counter()
        loss = F.cross_entropy(trainer.train_logits(views(x, aspect, i)), y)  # DDP's all-reduce timed too
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _sync(dev)
        times.append(time.perf_counter() - t)
    rows = fit[:min(EVAL_BATCH, fit.numel())]
    t = time.perf_counter()
    trainer.eval_logits(trainer.train, rows)
    _sync(dev)
    eval_s = (time.perf_counter() - t) / rows.numel()
    net.load_state_dict(trainer.start)
    return SessionTiming(StepTiming(sum(times[1:]) / repeats, int(x.shape[0]), eval_s), run_s)


@dataclass(frozen=True)
class RunShape:
    """One run as the budget prices it: the rows one process trains per epoch (whole batches), the rows validated,
    the batch per process."""

    name: str
    n_train: int
    n_val: int
    batch: int


def epoch_seconds(timing: SessionTiming, run: RunShape) -> float:
    """Seconds of one epoch of ``run``: its steps at the timed step cost (scaled by batch), PreciseBN's pass and
    its validation at the timed cost of evaluating an image."""
    t = timing.step
    steps = (run.n_train // run.batch) * t.step_s * run.batch / t.batch
    return steps + (min(run.n_train, PRECISE_BN_IMAGES) + run.n_val) * t.eval_image_s


def session_epochs(timing: SessionTiming, *, minutes: float, runs: Sequence[RunShape]) -> int:
    """The whole epochs E that every run of ``runs`` gets so that all of them fit in ``minutes`` (at least 1):
    each run's fixed cost + E · Σ epoch_seconds ≤ 60 · minutes."""
    per_epoch = sum(epoch_seconds(timing, r) for r in runs)
    left = minutes * 60 - len(runs) * timing.run_s
    return max(1, int(left // max(per_epoch, 1e-9)))


def expected_seconds(timing: SessionTiming, runs: Sequence[RunShape], *, epochs: int) -> float:
    """The time ``runs`` should take at ``epochs`` each (a refit's chosen epochs are at most that)."""
    return len(runs) * timing.run_s + epochs * sum(epoch_seconds(timing, r) for r in runs)


__all__ = ["RunShape", "SessionTiming", "epoch_seconds", "expected_seconds", "session_epochs", "time_steps"]
