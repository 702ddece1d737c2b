"""``--minutes``: a timing of the real fine-tuning step, from which the run length is planned before the run.

The measured seconds of a training step (views, forward, backward, AdamW) and of evaluating one
image become whole epochs through the shared time budget (``sslprobe/timebudget.py``,
:class:`~sslprobe.timebudget.StepTiming`), planned when a run starts and kept in its checkpoint.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from sslprobe.finetuning.augment import TrainViews
from sslprobe.finetuning.loop import EVAL_BATCH, Trainer
from sslprobe.finetuning.recipe import make_optimizer
from sslprobe.timebudget import StepTiming


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(trainer: Trainer, fit: torch.Tensor, *, batch: int, repeats: int = 2) -> StepTiming:
    """Time the step on the start network with a throwaway optimiser; every run reloads the start weights after.

    Under torchrun every rank times the step together (DDP); the caller keeps rank 0's timing for all."""
    net, dev = trainer.net, trainer.device
    net.load_state_dict(trainer.start)
    net.train()
    opt = make_optimizer(net, trainer.recipe)
    r = trainer.recipe
    views = TrainViews(trainer.size, r.crop_scale, r.crop_ratio, r.flip_p, trainer.mean, trainer.std, 0)
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
    return StepTiming(sum(times[1:]) / repeats, int(x.shape[0]), eval_s)


__all__ = ["time_steps"]
