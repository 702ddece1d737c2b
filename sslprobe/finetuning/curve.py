"""Label efficiency for fine-tuning: stratified subsets of the training labels, each selecting with its own labels.

The subsets are the probe's (``probing.splits.stratified_sample`` of the fit split, seed + 1000·draw),
so a fine-tune curve and a probe curve of one folder train on the same images. Each subset holds
out a stratified part of itself — the validation fraction, raised so that every class keeps one
image out when it has two — and chooses its epoch (and learning rate) there; the rest trains. The
whole-split point is the main run, whose epoch the validation split chose, as the probe's is.
Every draw is scored on test (else on validation, flagged).
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass

import torch

from sslprobe.errors import SSLProbeError
from sslprobe.finetuning.data import ImageRows
from sslprobe.finetuning.loop import Trainer
from sslprobe.finetuning.selection import FinetuneLength, Selected, select
from sslprobe.probing.splits import stratified_sample, stratified_split


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

    def top1(self, trainer: Trainer, state: dict[str, torch.Tensor]) -> float:
        def score() -> float:
            trainer.net.load_state_dict(state)
            pred = trainer.eval_logits(self.rows, self.positions).argmax(1).cpu()
            return float((pred == self.rows.labels[self.positions]).double().mean())

        return trainer.on_main(score)  # rank 0 scores, every rank gets its number (torchrun)


@dataclass(frozen=True)
class CurveSpec:
    """The points, draws per point and their base seed, and what every draw shares with the main selection."""

    points: list[tuple[str, float]]
    seeds: int
    seed: int
    lrs: tuple[float, ...]
    metric: str
    val_fraction: float
    length: FinetuneLength


def _stats(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.pstdev(values) if len(values) > 1 else 0.0,
            "runs": values}


def _draw(trainer: Trainer, spec: CurveSpec, *, fit: torch.Tensor, rows: torch.Tensor, name: str,
          seed: int) -> Selected:
    """One subset (``rows``: indices into ``fit``): its own hold-out chooses the epoch and learning rate."""
    labels = trainer.train.labels[fit[rows]]
    keep, held = subset_hold_out(labels, fraction=spec.val_fraction, seed=seed)
    return select(trainer, name=name, fit=fit[rows[keep]], val_rows=trainer.train, val=fit[rows[held]], lrs=spec.lrs,
                  seed=seed, metric=spec.metric, length=spec.length)


def label_curve(trainer: Trainer, spec: CurveSpec, *, fit: torch.Tensor, main: Selected,
                evaluation: Evaluation) -> dict | None:
    """Step: every point's draws, mean ± std of their top-1 on the evaluation rows; None when the session stopped."""
    labels = trainer.train.labels[fit]
    points = []
    for kind, value in spec.points:
        runs: dict[str, list] = {"top1": [], "n": [], "lr": [], "epoch": [], "rule": []}
        for s in range(spec.seeds):
            rows = stratified_sample(labels, seed=spec.seed + 1000 * s, **{kind: value})
            if labels[rows].unique().numel() < 2:
                raise SSLProbeError(f"{kind} {value:g} leaves fewer than 2 classes; use a larger value")
            whole = rows.numel() == labels.numel()  # every seed would draw the same rows: the main run's
            label = f"{kind}{value:g}-draw{s}"
            sel = main if whole else _draw(trainer, spec, fit=fit, rows=rows, name=label, seed=spec.seed + 1000 * s)
            if sel.stopped:
                return None
            runs["top1"].append(evaluation.top1(trainer, sel.best.state))
            runs["n"].append(int(rows.numel()))
            runs["lr"].append(sel.best.plan.base_lr)
            runs["epoch"].append(sel.best.best_epoch)
            runs["rule"].append("validation split" if whole else sel.rule)
            if whole:
                break
        points.append({"kind": kind, "value": value, "n_train": runs["n"][0], "seeds": len(runs["n"]),
                       "finetune": _stats(runs["top1"]), "lr": runs["lr"], "epoch": runs["epoch"],
                       "rule": sorted(set(runs["rule"]))})
    return {"scored_on": evaluation.name, "points": points,
            "selection": "each subset by its own stratified hold-out (the validation fraction, at least one image "
                         "of a class with two), epoch and learning rate; 1 label in a class: the last epoch"}


__all__ = ["CurveSpec", "Evaluation", "label_curve", "subset_hold_out"]
