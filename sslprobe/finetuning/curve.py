"""Label efficiency for fine-tuning: stratified subsets of the training labels, each selecting with its own labels.

The subsets, draws and mean ± std are the probe's (``sslprobe.labelcurves``: ``stratified_sample`` of the
fit split, seed + 1000·draw), so a fine-tune curve and a probe curve of one folder train on the same images.
Each subset holds out a stratified part of itself — the validation fraction, raised so that every class keeps one
image out when it has two — and chooses its epoch and learning rate there while the rest trains; then the
chosen rate and epochs train again on the whole subset (the refit, ``selection.refit``), as the probe fits its
subset's C on all the subset's labels. The whole-split point is the main selection's chosen run (trained on the
fit split, its epoch chosen on the validation split), as the probe's is its search fit. Under ``--minutes`` the
curve's runs share the session's budget (``timing.session_epochs``): every draw runs the main runs' epochs over
its own images, so it never takes more steps than they do, and :func:`curve_shapes` prices it in advance.
Every draw is scored on test (else on validation, flagged) in the declared metric (``--metric``), the one that
chose its epoch and learning rate.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from sslprobe.finetuning.data import ImageRows
from sslprobe.finetuning.loop import Trainer
from sslprobe.finetuning.selection import FinetuneLength, Selected, refit, select, shapes
from sslprobe.finetuning.timing import RunShape
from sslprobe.labelcurves import Draw, LabelPlan, draws, run_curve, stats
from sslprobe.probing.holdout import stratified_split
from sslprobe.probing.metrics import selection_score


def subset_hold_out(labels: torch.Tensor, *, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, held) indices of one subset: ``fraction`` of each class held out, at least one where a class has two."""
    smallest = int(torch.bincount(labels)[labels.unique()].min())
    if smallest < 2:
        return torch.arange(labels.numel()), torch.zeros(0, dtype=torch.long)
    return stratified_split(labels, fraction=max(fraction, 0.5 / smallest), seed=seed)


@dataclass(frozen=True)
class Evaluation:
    """The rows every draw is scored on: test when there is one, else validation."""

    name: str
    rows: ImageRows
    positions: torch.Tensor

    def score(self, trainer: Trainer, state: dict[str, torch.Tensor], *, metric: str) -> tuple[float, list[int]]:
        """The metric ``metric`` of the network with weights ``state`` on the evaluation rows, and its predictions
        (kept per draw: the study's label-budget tests resample draws and rows together)."""
        def score() -> tuple[float, list[int]]:
            trainer.net.load_state_dict(state)
            pred = trainer.eval_logits(self.rows, self.positions).argmax(1).cpu()
            return selection_score(pred, self.rows.labels[self.positions], metric=metric,
                                   num_classes=len(trainer.setup["classes"])), pred.tolist()

        return trainer.on_main(score)  # rank 0 scores, every rank gets its number (torchrun)


@dataclass(frozen=True)
class CurveSpec(LabelPlan):
    """The points, draws per point and their base seed (``labelcurves.LabelPlan``), and what every draw shares
    with the main selection."""

    lrs: tuple[float, ...]
    metric: str
    val_fraction: float
    length: FinetuneLength
    extend: int = 0  # runs past the grid's winning end (``selection.select``)


def _split(trainer: Trainer, spec: CurveSpec, *, fit: torch.Tensor, rows: torch.Tensor,
           seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, held) positions of ``trainer.train`` for one subset (``rows``: indices into ``fit``)."""
    keep, held = subset_hold_out(trainer.train.labels[fit[rows]], fraction=spec.val_fraction, seed=seed)
    return fit[rows[keep]], fit[rows[held]]


def _draw(trainer: Trainer, spec: CurveSpec, *, fit: torch.Tensor, rows: torch.Tensor, name: str,
          seed: int) -> Selected:
    """One subset: its own hold-out chooses the epoch and learning rate, then the whole subset refits."""
    train, held = _split(trainer, spec, fit=fit, rows=rows, seed=seed)
    sel = select(trainer, name=name, fit=train, val_rows=trainer.train, val=held, lrs=spec.lrs, seed=seed,
                 metric=spec.metric, length=spec.length, extend=spec.extend)
    if sel.stopped or held.numel() == 0:
        return sel
    return refit(trainer, sel, name=f"{name}-refit", rows=trainer.train, fit=torch.cat([train, held]), seed=seed,
                 metric=spec.metric)


def curve_shapes(trainer: Trainer, spec: CurveSpec, *, fit: torch.Tensor) -> list[RunShape]:
    """Every run the curve will make (each draw's grid and refit; a whole-split draw is the main selection's),
    priced by ``timing`` before any of them trains."""
    out: list[RunShape] = []
    labels = trainer.train.labels[fit]
    for kind, value in spec.points:
        for d in draws(labels, kind, value, seeds=spec.seeds, seed=spec.seed):
            if not d.whole:
                train, held = _split(trainer, spec, fit=fit, rows=d.rows, seed=d.seed)
                out += shapes(trainer, name=d.name, fit=train, val=held, lrs=spec.lrs, refit=True, extend=spec.extend)
    return out


def label_curve(trainer: Trainer, spec: CurveSpec, *, fit: torch.Tensor, main: Selected,
                evaluation: Evaluation) -> dict | None:
    """Step: every point's draws (``labelcurves.run_curve``), mean ± std of their score (the declared metric) on
    the evaluation rows; None when the session stopped."""
    def fit_and_score(d: Draw) -> dict[str, Any] | None:
        # a whole-split draw is the main run's (every seed would draw the same rows)
        sel = main if d.whole else _draw(trainer, spec, fit=fit, rows=d.rows, name=d.name, seed=d.seed)
        if sel.stopped:
            return None
        score, pred = evaluation.score(trainer, (sel.best if d.whole else sel.final).state, metric=spec.metric)
        rule = "validation split" if d.whole else sel.rule + ("; refit on the whole subset" if sel.refit else "")
        return {"score": score, "pred": pred, "lr": sel.best.plan.base_lr, "epoch": sel.best.best_epoch, "rule": rule}

    curve = run_curve(spec, labels=trainer.train.labels[fit], fit_and_score=fit_and_score)
    if curve is None:
        return None
    points = [p.row(finetune=stats(p.column("score"), predictions=p.column("pred")), lr=p.column("lr"),
                    epoch=p.column("epoch"), rule=sorted(set(p.column("rule")))) for p in curve]
    return {"scored_on": evaluation.name, "metric": spec.metric, "points": points,
            "selection": "each subset by its own stratified hold-out (the validation fraction, at least one image "
                         "of a class with two), epoch and learning rate, then refit on the whole subset; 1 label in a "
                         "class: the middle rate's last epoch"}


__all__ = ["CurveSpec", "Evaluation", "curve_shapes", "label_curve", "subset_hold_out"]
