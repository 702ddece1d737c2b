"""Model selection on validation rows, then the refit: one run per learning rate of the grid, each choosing its epoch;
the best wins and trains again, at its rate and epoch count, on the training and validation rows together.

Runs are ranked by the declared metric (``--metric``: validation balanced accuracy, top-1 or macro-F1) of their
best epoch, ties going to the lower validation loss, then to the smaller learning rate — the probe's ranking of C
(docs/probe.md); the default grid goes on ×3 past an end that wins outright, twice at most (:func:`past_edge`:
an optimum on the grid's edge is not bracketed). The refit (:func:`refit`) is the probe's too: once the rate and
the epoch count are chosen, the validation labels train as well, so a fine-tuned row uses the labels a probe row
does (docs/finetune.md, "What it does", 6). Without validation rows (a label subset with one label in a class)
nothing can choose: the middle learning rate of the grid trains and its last epoch is kept.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from sslprobe.finetuning.data import ImageRows
from sslprobe.finetuning.loop import Run, RunResult, Trainer, plan_run
from sslprobe.finetuning.timing import RunShape, SessionTiming

NO_ROWS = torch.zeros(0, dtype=torch.long)


@dataclass(frozen=True)
class FinetuneLength:
    """Every selection run's ``epochs``: as asked, or planned so the whole session fits ``minutes`` at the measured
    ``timing`` (``timing.session_epochs``)."""

    epochs: int
    minutes: float | None
    timing: SessionTiming | None


@dataclass
class Selected:
    """The runs of one selection, the chosen one (None when the session stopped first), how it was chosen, and the
    refit of the chosen rate and epochs on training + validation rows (None: none was made)."""

    runs: list[RunResult]
    best: RunResult | None
    rule: str
    refit: RunResult | None = None

    @property
    def stopped(self) -> bool:
        return self.best is None or (self.refit is not None and self.refit.status != "complete")

    @property
    def final(self) -> RunResult | None:
        """The network that is scored on test: the refit when there is one, else the chosen run's best epoch."""
        return self.refit if self.refit is not None else self.best

    def grid(self) -> list[dict]:
        """Each learning rate's chosen epoch and its validation score and loss (the report's ``lr_grid``)."""
        return [{"lr": r.plan.base_lr, "run": r.plan.name, "best_epoch": r.best_epoch, "val_score": r.best_score,
                 "val_loss": r.best_loss} for r in self.runs]


def grid_of(lrs: tuple[float, ...], *, held: int) -> tuple[float, ...]:
    """The rates a selection tries: all of them, or the middle one when no row is held out to choose."""
    return tuple(sorted(lrs)) if held else (sorted(lrs)[len(lrs) // 2],)


def run_name(name: str, lr: float, lrs: tuple[float, ...]) -> str:
    return name if len(lrs) == 1 else f"{name}-lr{lr:.3g}"


def shapes(trainer: Trainer, *, name: str, fit: torch.Tensor, val: torch.Tensor, lrs: tuple[float, ...],
           refit: bool, extend: int = 0) -> list[RunShape]:
    """The runs :func:`select` (and :func:`refit`) may make, as the budget prices them (``timing.RunShape``): the
    grid's extensions past its edge included (the most a session can make)."""
    grid = grid_of(lrs, held=val.numel())
    more = extend if val.numel() and len(grid) > 1 else 0
    runs = [(f"{name}-{i}", fit, val) for i in range(len(grid) + more)]
    if refit and val.numel():
        runs.append((f"{name}-refit", torch.cat([fit, val]), NO_ROWS))
    out = []
    for n, rows, held in runs:
        p = plan_run(n, recipe=trainer.recipe, seed=0, fit=rows, val=held, epochs=1, metric="top1", minutes=None)
        out.append(RunShape(n, p.steps_per_epoch * p.batch_size, p.n_val, p.batch_size))
    return out


def select(trainer: Trainer, *, name: str, fit: torch.Tensor, val_rows: ImageRows, val: torch.Tensor,
           lrs: tuple[float, ...], seed: int, metric: str, length: FinetuneLength, extend: int = 0) -> Selected:
    """One run per learning rate on ``fit`` (positions of ``trainer.train``), each choosing its epoch on ``val``;
    while an end of the grid wins, up to ``extend`` more runs ×3 (or ÷3) past it: a best rate on the grid's edge
    has not been bracketed (a 3-epoch run wants a rate far above one tuned for 100 epochs)."""
    grid = grid_of(lrs, held=val.numel())
    runs: list[RunResult] = []
    step = (grid[-1] / grid[0]) ** (1 / (len(grid) - 1)) if len(grid) > 1 else 1.0
    todo = list(grid)
    while todo:
        if trainer.budget.stopped:
            return Selected(runs, None, _rule(metric, runs, val))
        lr = todo.pop(0)
        plan = plan_run(run_name(name, lr, grid), recipe=trainer.recipe.with_lr(lr), seed=seed, fit=fit, val=val,
                        epochs=length.epochs, metric=metric, minutes=length.minutes)
        task = trainer.bar.add_task(plan.name, total=plan.total_steps)
        result = Run(trainer, plan, fit=fit, val_rows=val_rows, val=val, task=task).run()
        runs.append(result)
        if result.status != "complete":
            return Selected(runs, None, _rule(metric, runs, val))
        if not todo and len(runs) < len(grid) + extend and len(runs) > 1:
            todo = past_edge(runs, step)
    return Selected(runs, _best(runs) if val.numel() else runs[0], _rule(metric, runs, val))


def past_edge(runs: list[RunResult], step: float) -> list[float]:
    """The next rate past the end of the tried ones that won outright (a higher score than every other), or none."""
    best = _best(runs)
    if best.best_score <= max(r.best_score for r in runs if r is not best):
        return []  # a tie is no sign of a better rate further out
    rates = sorted(r.plan.base_lr for r in runs)
    lr = best.plan.base_lr
    return [lr * step] if lr == rates[-1] else [lr / step] if lr == rates[0] else []


def _best(runs: list[RunResult]) -> RunResult:
    return max(runs, key=lambda r: (r.best_score, -r.best_loss, -r.plan.base_lr))


def _rule(metric: str, runs: list[RunResult], val: torch.Tensor) -> str:
    if val.numel() == 0:
        return "last epoch (a class has 1 label: nothing to hold out)"
    n = len(runs)
    return f"best validation {metric} over epochs" + (f" and {n} learning rates" if n > 1 else "")


def refit(trainer: Trainer, selected: Selected, *, name: str, rows: ImageRows, fit: torch.Tensor, seed: int,
          metric: str) -> Selected:
    """The chosen rate for the chosen epoch count, trained from the start weights on ``fit`` (positions of ``rows``:
    the selection's training and validation rows); its last epoch is kept (no row is left to choose another)."""
    best = selected.best
    if trainer.budget.stopped or best is None or best.best_epoch is None:
        return selected
    plan = plan_run(name, recipe=trainer.recipe.with_lr(best.plan.base_lr), seed=seed, fit=fit, val=NO_ROWS,
                    epochs=best.best_epoch, metric=metric, minutes=None)
    pool = trainer if rows is trainer.train else dataclasses.replace(trainer, train=rows)
    task = trainer.bar.add_task(plan.name, total=plan.total_steps)
    result = Run(pool, plan, fit=fit, val_rows=rows, val=NO_ROWS, task=task).run()
    return dataclasses.replace(selected, refit=result)


__all__ = ["NO_ROWS", "FinetuneLength", "Selected", "grid_of", "past_edge", "refit", "run_name", "select", "shapes"]
