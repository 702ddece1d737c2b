"""The metrics every classifier of sslprobe is scored by, and their intervals: one place for probe and fine-tune.

``classification_metrics`` computes the reported accuracies (linear, kNN and fine-tuned alike);
``scored`` adds the 95 % bootstrap intervals of the three metrics (balanced accuracy, top-1, macro-F1:
``uncertainty.bootstrap``) and the predictions. The declared metric (``--metric``; ``selection_score``
on validation rows, defined by ``uncertainty.metric_of_counts``) ranks C, kNN k, epochs and learning
rates. Rendering these numbers is report.py's job, not this module's.
"""
from __future__ import annotations

import math

import torch

from sslprobe.config.common import METRIC_KEYS, METRICS
from sslprobe.probing.uncertainty import LEVEL, RESAMPLES, bootstrap, metric_of_counts, order_interval
from sslprobe.results import Metrics


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


def intervals(pred: torch.Tensor, labels: torch.Tensor, *, num_classes: int, seed: int) -> dict:
    """95 % percentile-bootstrap intervals of balanced accuracy, top-1 and macro-F1 of predictions ``pred`` (N,):
    ``RESAMPLES`` draws of the rows (the same draws for the three), order-statistic bounds at ``LEVEL``."""
    values = bootstrap([pred[None]], labels, metrics=METRICS, num_classes=num_classes, resamples=RESAMPLES, seed=seed)
    out = {METRIC_KEYS[m]: order_interval(v[0].sort().values, 1 - LEVEL) for m, v in values.items()}
    return {**out, "level": LEVEL, "resamples": RESAMPLES, "method": "percentile bootstrap over test rows"}


def scored(scores: torch.Tensor, labels: torch.Tensor, *, num_classes: int, seed: int) -> Metrics:
    """Metrics of ``scores`` with bootstrap intervals of the three metrics, and the predictions."""
    metrics = classification_metrics(scores, labels, num_classes=num_classes)
    pred = scores.argmax(1)
    metrics["ci"] = intervals(pred, labels, num_classes=num_classes, seed=seed)
    metrics["predictions"] = pred.cpu().tolist()
    return Metrics.from_json(metrics)


def selection_scores(pred: torch.Tensor, labels: torch.Tensor, *, num_classes: int) -> dict[str, float]:
    """Each metric of ``METRICS`` (balanced, top1, macro-f1) of predictions ``pred`` (N,) in [0, K) on ``labels``,
    from per-class counts on their device (``uncertainty.metric_of_counts``: one definition of each)."""
    labels = labels.to(pred.device, torch.int64)
    support = torch.bincount(labels, minlength=num_classes).double()
    predicted = torch.bincount(pred, minlength=num_classes).double()
    tp = torch.bincount(labels[pred == labels], minlength=num_classes).double()
    return {m: float(metric_of_counts(tp, support, predicted, m)) for m in METRICS}


def selection_score(pred: torch.Tensor, labels: torch.Tensor, *, metric: str, num_classes: int) -> float:
    """The metric ``metric`` (balanced, top1 or macro-f1) of predictions ``pred`` on ``labels``."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric '{metric}'; one of {', '.join(METRICS)}")
    return selection_scores(pred, labels, num_classes=num_classes)[metric]


def class_imbalance(labels: torch.Tensor) -> float:
    """Largest / smallest class count among the classes ``labels`` has (information for the report)."""
    counts = torch.bincount(labels.cpu())
    counts = counts[counts > 0]
    return float(counts.max() / counts.min())


__all__ = ["class_imbalance", "classification_metrics", "intervals", "scored", "selection_score", "selection_scores"]
