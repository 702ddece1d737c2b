"""How sure a test number is: bootstrap intervals, and paired tests between feature sets.

A 1-point gap on 500 test images is about one standard error of either accuracy, so every headline
number carries a 95 % percentile-bootstrap interval (Efron & Tibshirani 1993, ch. 13: resample the
test rows with replacement, recompute the metric). Two feature sets scored on the same test images
are compared paired: the bootstrap resamples rows, not each set on its own, so the shared
difficulty of an image cancels (Dietterich 1998 on paired tests for classifiers), and McNemar's
exact test on the discordant rows gives a p-value for the top-1 difference.
"""
from __future__ import annotations

import math

import torch

RESAMPLES = 1000
LEVEL = 0.95
_BLOCK = 100  # resamples per block: (100, N) index tensors stay small for any test set


def _resampled(hit: torch.Tensor, labels: torch.Tensor, *, num_classes: int, resamples: int,
               seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(top-1, balanced accuracy) of ``resamples`` bootstrap draws of the rows of ``hit`` (float (N,) or (S, N))."""
    hit = hit.double().reshape(-1, labels.numel())  # (S, N): S score vectors resampled with the same rows
    n, g = labels.numel(), torch.Generator().manual_seed(seed)
    top1, bal = [], []
    for start in range(0, resamples, _BLOCK):
        b = min(_BLOCK, resamples - start)
        idx = torch.randint(n, (b, n), generator=g)  # (b, N)
        lab = labels[idx]  # (b, N)
        flat = (torch.arange(b).view(-1, 1) * num_classes + lab).view(-1)
        support = torch.bincount(flat, minlength=b * num_classes).view(b, num_classes).double()
        present = support > 0
        hits_b = hit[:, idx]  # (S, b, N)
        top1.append(hits_b.mean(2))
        per_class = torch.stack([torch.bincount(flat, weights=h.reshape(-1), minlength=b * num_classes)
                                 for h in hits_b]).view(-1, b, num_classes)
        recall = torch.where(present, per_class / support.clamp_min(1), 0.0)
        bal.append(recall.sum(2) / present.sum(1))
    return torch.cat(top1, 1), torch.cat(bal, 1)  # (S, resamples) each


def _interval(values: torch.Tensor, level: float) -> list[float]:
    lo, hi = torch.quantile(values, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=values.dtype))
    return [float(lo), float(hi)]


def bootstrap_intervals(pred: torch.Tensor, labels: torch.Tensor, *, num_classes: int,
                        resamples: int = RESAMPLES, level: float = LEVEL, seed: int = 0) -> dict:
    """95 % percentile-bootstrap intervals of top-1 and balanced accuracy for predictions ``pred`` (N,)."""
    pred, labels = pred.cpu(), labels.cpu()
    top1, bal = _resampled(pred == labels, labels, num_classes=num_classes, resamples=resamples, seed=seed)
    return {"top1": _interval(top1[0], level), "balanced_accuracy": _interval(bal[0], level),
            "level": level, "resamples": resamples, "method": "percentile bootstrap over test rows"}


def mcnemar_p(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar p-value: the discordant rows split as Binomial(a_only + b_only, 1/2)."""
    n = a_only + b_only
    if n == 0:
        return 1.0
    k = min(a_only, b_only)
    log_half = n * math.log(0.5)
    tail = sum(math.exp(math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + log_half)
               for i in range(k + 1))
    return min(1.0, 2 * tail)


def _balanced(hit: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """Balanced accuracy of the hits ``hit`` (N,): mean recall over the classes present in ``labels``."""
    support = torch.bincount(labels, minlength=num_classes).double()
    per = torch.zeros(num_classes, dtype=torch.float64).index_add_(0, labels, hit.double())
    return float((per[support > 0] / support[support > 0]).mean())


def paired_difference(pred_a: torch.Tensor, pred_b: torch.Tensor, labels: torch.Tensor, *, num_classes: int,
                      resamples: int = RESAMPLES, level: float = LEVEL, seed: int = 0) -> dict:
    """A − B on the same test rows: differences of top-1 and balanced accuracy with paired-bootstrap
    intervals, McNemar's p for top-1, and whether the top-1 interval excludes 0."""
    labels = labels.cpu()
    hit_a, hit_b = pred_a.cpu() == labels, pred_b.cpu() == labels
    top1, bal = _resampled(torch.stack([hit_a, hit_b]), labels, num_classes=num_classes, resamples=resamples,
                           seed=seed)
    d_top1, d_bal = top1[0] - top1[1], bal[0] - bal[1]
    ci_top1, ci_bal = _interval(d_top1, level), _interval(d_bal, level)
    a_only, b_only = int((hit_a & ~hit_b).sum()), int((hit_b & ~hit_a).sum())
    return {
        "top1": float(hit_a.double().mean() - hit_b.double().mean()), "top1_ci": ci_top1,
        "balanced_accuracy": _balanced(hit_a, labels, num_classes) - _balanced(hit_b, labels, num_classes),
        "balanced_accuracy_ci": ci_bal,
        "a_only_correct": a_only, "b_only_correct": b_only, "mcnemar_p": mcnemar_p(a_only, b_only),
        "significant": ci_top1[0] > 0 or ci_top1[1] < 0, "level": level, "resamples": resamples,
    }


__all__ = ["LEVEL", "RESAMPLES", "bootstrap_intervals", "mcnemar_p", "paired_difference"]
