"""The metrics every classifier of sslprobe is scored by, and their intervals: one place for probe and fine-tune.

``classification_metrics`` computes the reported accuracies (linear, kNN and fine-tuned alike);
``scored`` adds the 95 % bootstrap intervals of top-1 and balanced accuracy (uncertainty.py) and the
predictions. The selection metric (``selection_score``: validation top-1 or balanced accuracy) ranks C,
kNN k, epochs and learning rates; ``resolve_select`` says which one a run uses. Rendering these
numbers is report.py's job, not this module's.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from sslprobe.probing.uncertainty import bootstrap_intervals
from sslprobe.results import Metrics

SELECT_METRICS = ("top1", "balanced")
IMBALANCE = 2.0  # largest/smallest class count above which selection defaults to balanced accuracy


def classification_metrics(scores: torch.Tensor, labels: torch.Tensor, *, num_classes: int) -> dict:
    """Top-1/top-5, balanced accuracy, macro-F1, per-class table and confusion matrix.

    ``scores`` (N, K) are logits, probabilities or votes (argmax = prediction; -inf marks a class
    the model cannot predict). ``labels`` (N,) in [0, K). Balanced accuracy is the mean recall over
    classes present in ``labels``; macro-F1 averages over classes present in labels or predictions
    (both as in scikit-learn). Confusion rows are true classes, columns predictions.
    """
    if scores.ndim != 2 or scores.shape[1] != num_classes:
        raise ValueError(f"scores must be (N, {num_classes}), got {tuple(scores.shape)}")
    if labels.shape != (scores.shape[0],):
        raise ValueError(f"labels must be ({scores.shape[0]},), got {tuple(labels.shape)}")
    n = int(labels.numel())
    if n == 0:
        raise ValueError("no labeled rows to score")
    if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes})")
    labels = labels.to(scores.device, torch.int64)
    k5 = min(5, num_classes)
    top = scores.topk(k5, dim=1).indices  # (N, k5), best first
    pred = top[:, 0]
    # a true class scored -inf (the model never saw it) is a miss even when k ≥ K drags it into the top-k
    hit5 = (top == labels[:, None]).any(1) & (scores.gather(1, labels[:, None]).squeeze(1) > -math.inf)
    conf = torch.bincount(labels * num_classes + pred, minlength=num_classes**2).view(num_classes, num_classes)
    conf = conf.double().cpu()
    tp = conf.diag()
    support, predicted = conf.sum(1), conf.sum(0)
    recall = tp / support.clamp_min(1)
    precision = tp / predicted.clamp_min(1)
    f1 = torch.where(tp > 0, 2 * precision * recall / (precision + recall).clamp_min(1e-300), 0.0)
    present = support > 0
    in_f1 = present | (predicted > 0)
    return {
        "top1": float(tp.sum()) / n,
        "top5": float(hit5.sum()) / n,
        "balanced_accuracy": float(recall[present].mean()),
        "macro_f1": float(f1[in_f1].mean()),
        "n": n,
        "per_class": [
            {"class": c, "precision": float(precision[c]), "recall": float(recall[c]),
             "f1": float(f1[c]), "support": int(support[c])}
            for c in range(num_classes)
        ],
        "confusion": conf.long().tolist(),
    }


def scored(scores: torch.Tensor, labels: torch.Tensor, *, num_classes: int, seed: int) -> Metrics:
    """Metrics of ``scores`` with bootstrap intervals of top-1 and balanced accuracy, and the predictions."""
    metrics = classification_metrics(scores, labels, num_classes=num_classes)
    pred = scores.argmax(1)
    metrics["ci"] = bootstrap_intervals(pred, labels, num_classes=num_classes, seed=seed)
    metrics["predictions"] = pred.cpu().tolist()
    return Metrics.from_json(metrics)


def selection_score(pred: torch.Tensor, labels: torch.Tensor, *, metric: str, num_classes: int) -> float:
    """Top-1, or balanced accuracy (mean recall over the classes present in ``labels``)."""
    hit = (pred == labels).double()
    if metric == "top1":
        return float(hit.mean())
    support = torch.bincount(labels, minlength=num_classes).double()
    recall = torch.zeros(num_classes, dtype=torch.float64, device=labels.device).index_add_(0, labels, hit)
    present = support > 0
    return float((recall[present] / support[present]).mean())


@dataclass(frozen=True)
class Selection:
    """The metric that ranks C and kNN k on validation, and why it was chosen."""

    metric: str  # one of SELECT_METRICS
    reason: str
    imbalance: float  # largest / smallest class count of the fit split


def resolve_select(select: str, labels: torch.Tensor) -> Selection:
    """The selection metric: as asked, or balanced accuracy when classes are imbalanced > 2:1."""
    counts = torch.bincount(labels)
    counts = counts[counts > 0]
    ratio = float(counts.max() / counts.min())
    if select != "auto":
        return Selection(select, "asked", ratio)
    metric = "balanced" if ratio > IMBALANCE else "top1"
    return Selection(metric, f"auto: largest/smallest class = {ratio:.3g} "
                             f"({'>' if metric == 'balanced' else '≤'} {IMBALANCE:g})", ratio)


__all__ = ["IMBALANCE", "SELECT_METRICS", "Selection", "classification_metrics", "resolve_select", "scored",
           "selection_score"]
