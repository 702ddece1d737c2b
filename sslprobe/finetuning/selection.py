"""Model selection on validation rows: one run per learning rate of the grid, each choosing its epoch; the best wins.

Runs are ranked by the declared metric (``--metric``: validation balanced accuracy, top-1 or macro-F1) of their
best epoch, ties going to the lower validation loss, then to the smaller
learning rate — the probe's ranking of C (docs/probe.md). Without validation rows (a label subset
with one label in a class) nothing can choose: the middle learning rate of the grid trains and its
last epoch is kept.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from sslprobe.finetuning.data import ImageRows
from sslprobe.finetuning.loop import Run, RunResult, Trainer, plan_run
from sslprobe.timebudget import StepTiming


@dataclass(frozen=True)
class FinetuneLength:
    """Each fine-tuning run's length: ``epochs``, or as many as ``minutes`` hold at the measured ``timing``."""

    epochs: int | None
    minutes: float | None
    timing: StepTiming | None

    def epochs_for(self, *, n_train: int, n_val: int, batch: int) -> int:
        if self.minutes is None:
            return int(self.epochs)
        return self.timing.epochs(minutes=self.minutes, n_train=n_train, n_val=n_val, batch=batch)


@dataclass
class Selected:
    """The runs of one selection, the chosen one (None when the session stopped first) and how it was chosen."""

    runs: list[RunResult]
    best: RunResult | None
    rule: str

    @property
    def stopped(self) -> bool:
        return self.best is None

    def grid(self) -> list[dict]:
        """Each learning rate's chosen epoch and its validation score and loss (the report's ``lr_grid``)."""
        return [{"lr": r.plan.base_lr, "run": r.plan.name, "best_epoch": r.best_epoch, "val_score": r.best_score,
                 "val_loss": r.best_loss} for r in self.runs]


def select(trainer: Trainer, *, name: str, fit: torch.Tensor, val_rows: ImageRows, val: torch.Tensor,
           lrs: tuple[float, ...], seed: int, metric: str, length: FinetuneLength) -> Selected:
    """One run per learning rate on ``fit`` (positions of ``trainer.train``), each choosing its epoch on ``val``."""
    if val.numel() == 0:
        lrs = (sorted(lrs)[len(lrs) // 2],)
        rule = "last epoch (a class has 1 label: nothing to hold out)"
    else:
        rule = f"best validation {metric} over epochs" + (f" and {len(lrs)} learning rates" if len(lrs) > 1 else "")
    runs: list[RunResult] = []
    for lr in sorted(lrs):
        if trainer.budget.stopped:
            return Selected(runs, None, rule)
        plan = plan_run(name if len(lrs) == 1 else f"{name}-lr{lr:g}", recipe=trainer.recipe.with_lr(lr), seed=seed,
                        fit=fit, val=val, epochs=1, metric=metric, minutes=length.minutes)
        # the rows one process trains per epoch (all of them in one process): its steps at the timed cost
        epochs = length.epochs_for(n_train=plan.steps_per_epoch * plan.batch_size, n_val=plan.n_val,
                                   batch=plan.batch_size)
        plan = plan_run(plan.name, recipe=trainer.recipe.with_lr(lr), seed=seed, fit=fit, val=val, epochs=epochs,
                        metric=metric, minutes=length.minutes)
        task = trainer.bar.add_task(plan.name, total=plan.total_steps)
        result = Run(trainer, plan, fit=fit, val_rows=val_rows, val=val, task=task).run()
        runs.append(result)
        if result.status != "complete":
            return Selected(runs, None, rule)
    best = max(runs, key=lambda r: (r.best_score, -r.best_loss, -r.plan.base_lr)) if val.numel() else runs[0]
    return Selected(runs, best, rule)


__all__ = ["FinetuneLength", "Selected", "select"]
