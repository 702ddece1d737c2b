"""How sure a test number is: bootstrap intervals, and paired tests between feature sets.

A 1-point gap on 500 test images is about one standard error of either accuracy, so every headline
number carries a 95 % percentile-bootstrap interval (Efron & Tibshirani 1993, ch. 13: resample the
test rows with replacement, recompute the metric). Every metric (balanced accuracy, top-1, macro-F1)
is computed from per-class counts under row weights, so one bootstrap serves them all, pooled over
repeats (seeds) by the two-way bootstrap. Arms scored on the same test images are compared paired —
the same draws for all, so the shared difficulty of an image cancels (Dietterich 1998) — with a
sign-flip randomization test beside the bootstrap (McNemar's exact test for top-1), intervals as
order statistics that agree with the p-value, Holm's adjustment for a family, and the difference
detectable at 80 % power (docs/probe.md, "Verdict"). When the test rows come in groups (a study's
``--groups``: one patient, one scene), whole groups are resampled and flipped (the cluster bootstrap
and the cluster randomization test, :func:`row_weights`).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from sslprobe.config.common import METRIC_KEYS, METRICS  # the --metric choices and their report.json keys, defined once

RESAMPLES = 1000
LEVEL = 0.95


# --- One metric, its intervals and paired tests over repeats and test rows (issue 21; docs/probe.md, "Verdict") ---

PAIRED_RESAMPLES = 10_000  # enough for p-values near 0.05 / m to rest on tens of resamples, not a handful
POWER = 0.8
_CELLS = 4_000_000  # resample weights per block (b × N doubles): ~32 MB whatever the test size


def _one_hot(index: torch.Tensor, k: int) -> torch.Tensor:
    """(N, K) float64 rows; an index outside [0, K) (a class the labels lack) is a zero row."""
    inside = (index >= 0) & (index < k)
    out = torch.zeros(index.numel(), k, dtype=torch.float64)
    out[inside.nonzero().squeeze(1), index[inside]] = 1.0
    return out


def metric_of_counts(tp: torch.Tensor, support: torch.Tensor, predicted: torch.Tensor, metric: str) -> torch.Tensor:
    """The metric from per-class counts (..., K) — true positives, true rows, predicted rows — over the last axis.

    Balanced accuracy: mean recall over the classes present; top-1: all hits over all rows; macro-F1: mean of
    2·TP / (predicted + true) over the classes present in labels or predictions (scikit-learn's definitions,
    as ``metrics.classification_metrics``).
    """
    if metric == "top1":
        return tp.sum(-1) / support.sum(-1)
    if metric == "balanced":
        present = support > 0
        return torch.where(present, tp / support.clamp_min(1e-300), 0.0).sum(-1) / present.sum(-1)
    if metric == "macro-f1":
        seen = (support > 0) | (predicted > 0)
        f1 = torch.where(seen, 2 * tp / (support + predicted).clamp_min(1e-300), 0.0)
        return f1.sum(-1) / seen.sum(-1)
    raise ValueError(f"unknown metric '{metric}'; one of {', '.join(METRICS)}")


def metric_value(pred: torch.Tensor, labels: torch.Tensor, *, metric: str, num_classes: int) -> float:
    """The metric of predictions ``pred`` (N,) on ``labels`` (N,)."""
    w = torch.ones(1, labels.numel(), dtype=torch.float64)
    return float(_weighted(w, pred.cpu(), labels.cpu(), num_classes, metric)[0])


def clusters_of(ids: Sequence) -> torch.Tensor:
    """Any per-row group labels as cluster indices 0 … G − 1 (N,), in order of first appearance."""
    index: dict = {}
    return torch.tensor([index.setdefault(x, len(index)) for x in ids], dtype=torch.int64)


def row_weights(n: int, b: int, *, generator: torch.Generator, clusters: torch.Tensor | None = None) -> torch.Tensor:
    """(b, n) float64: how often each of n rows is drawn in each of b bootstrap resamples.

    Without ``clusters``, n rows are drawn with replacement (Efron & Tibshirani 1993, ch. 13). With
    ``clusters`` (n,) in [0, G), G clusters are drawn with replacement and a row counts as often as its
    cluster was drawn: the cluster bootstrap (Davison & Hinkley 1997, §3.8; Field & Welsh 2007, JRSS B
    69(3)). Rows of one group (one patient's images) err together; drawn as if independent, their spread
    shrinks by about √(1 + (m − 1)ρ) for groups of m rows with intra-group correlation ρ, so the row
    bootstrap's interval is too narrow by that factor and the cluster bootstrap's is not.
    """
    ones = torch.ones(b, n if clusters is None else int(clusters.max()) + 1, dtype=torch.float64)
    idx = torch.randint(ones.shape[1], ones.shape, generator=generator)
    w = torch.zeros_like(ones).scatter_add_(1, idx, ones)
    return w if clusters is None else w[:, clusters]


def _counts(w: torch.Tensor, pred: torch.Tensor, labels: torch.Tensor, k: int) -> tuple[torch.Tensor, ...]:
    """Per-class (true positives, true rows, predicted rows) of one prediction vector under each row weighting of
    ``w`` (b, N): each (b, K), by index_add (O(b·N) whatever K); a prediction outside [0, K) counts for no class."""
    b = w.shape[0]
    hit = (pred == labels).double()
    inside = (pred >= 0) & (pred < k)
    tp = torch.zeros(b, k, dtype=torch.float64).index_add_(1, labels, w * hit)
    support = torch.zeros(b, k, dtype=torch.float64).index_add_(1, labels, w)
    predicted = torch.zeros(b, k, dtype=torch.float64).index_add_(1, pred[inside], w[:, inside])
    return tp, support, predicted


def _weighted(w: torch.Tensor, pred: torch.Tensor, labels: torch.Tensor, k: int, metric: str) -> torch.Tensor:
    """The metric of one prediction vector under each row weighting of ``w`` (b, N): (b,)."""
    return metric_of_counts(*_counts(w, pred, labels, k), metric)


def bootstrap(arms: Sequence[torch.Tensor], labels: torch.Tensor, *, metrics: Sequence[str], num_classes: int,
              resamples: int, seed: int = 0, clusters: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Bootstrap distributions (A, resamples) of each metric of ``metrics`` for each arm's predictions (R or 1,
    N), pooled over its R repeats (seeds, label draws) of one test set; every arm and every metric is scored on
    the same draws (the counts once, each metric from them), so a row of differences is the paired bootstrap
    of that difference.

    Rows and repeats are resampled independently, each with replacement, and every drawn repeat is scored
    on the same drawn rows: the two-way ("pigeonhole") bootstrap for a crossed design of seeds × test
    images (Owen 2007, Ann. Appl. Stat. 1(2)), which with one repeat is the ordinary paired bootstrap over
    test rows (Efron & Tibshirani 1993, ch. 13). An arm with one repeat (pixels: no seed) keeps it in
    every draw; the pooled value is the mean over the drawn repeats. ``clusters`` (N,): the rows' groups,
    resampled whole (:func:`row_weights`).
    """
    labels = labels.cpu()
    n = labels.numel()
    arms = [a.cpu().reshape(-1, n) for a in arms]
    r = max(len(a) for a in arms)
    g = torch.Generator().manual_seed(seed)
    block = max(1, min(resamples, _CELLS // max(n, 1)))
    out: dict[str, list[torch.Tensor]] = {m: [] for m in metrics}
    for start in range(0, resamples, block):
        b = min(block, resamples - start)
        w = row_weights(n, b, generator=g, clusters=clusters)
        reps = torch.randint(r, (b, r), generator=g)
        wr = torch.zeros(b, r, dtype=torch.float64).scatter_add_(1, reps, torch.ones(b, r, dtype=torch.float64)) / r
        per_arm = {m: [] for m in metrics}
        for a in arms:
            counts = [_counts(w, a[i], labels, num_classes) for i in range(len(a))]
            for m in metrics:
                values = [metric_of_counts(*c, m) for c in counts]
                per_arm[m].append(sum(wr[:, i] * v for i, v in enumerate(values)) if len(a) == r else values[0])
        for m in metrics:
            out[m].append(torch.stack(per_arm[m]))
    return {m: torch.cat(v, 1) for m, v in out.items()}


def nested_bootstrap(arms: Sequence[Sequence[torch.Tensor]], labels: Sequence[torch.Tensor], *,
                     metrics: Sequence[str], num_classes: int, resamples: int, seed: int = 0,
                     clusters: Sequence[torch.Tensor | None] | None = None) -> dict[str, torch.Tensor]:
    """:func:`bootstrap` when every repeat has its own test set (``--resplit``: a new split per repeat):
    ``labels[i]`` is repeat i's test labels, ``arms[a][i]`` arm a's predictions on them.

    Repeats are nested, not crossed, so each draw resamples R repeats with replacement and then, for each
    drawn slot, that repeat's own test rows — a fresh row resample per slot, also when one repeat is drawn
    twice (the two-stage bootstrap of a nested design; Davison & Hinkley 1997, §3.8, "strategy 2"). The
    pooled value is the mean over the slots. Every arm is scored on the same draws, so differences pair.
    ``clusters[i]``: repeat i's row groups, resampled whole within it.
    """
    r, a_n = len(labels), len(arms)
    labels = [y.cpu() for y in labels]
    arms = [[x.cpu().reshape(-1) for x in arm] for arm in arms]
    if any(len(arm) != r for arm in arms):
        raise ValueError(f"every arm needs predictions for each of the {r} repeats' test sets")
    g = torch.Generator().manual_seed(seed)
    block = max(1, min(resamples, _CELLS // max(max(y.numel() for y in labels), 1)))
    out: dict[str, list[torch.Tensor]] = {m: [] for m in metrics}
    for start in range(0, resamples, block):
        b = min(block, resamples - start)
        slots = torch.randint(r, (b, r), generator=g)
        total = {m: torch.zeros(a_n, b, dtype=torch.float64) for m in metrics}
        for s in range(r):
            for i in range(r):
                drawn = (slots[:, s] == i).nonzero().squeeze(1)
                if drawn.numel() == 0:
                    continue
                w = row_weights(labels[i].numel(), drawn.numel(), generator=g,
                                clusters=clusters[i] if clusters is not None else None)
                for j, arm in enumerate(arms):
                    counts = _counts(w, arm[i], labels[i], num_classes)
                    for m in metrics:
                        total[m][j].index_add_(0, drawn, metric_of_counts(*counts, m) / r)
        for m in metrics:
            out[m].append(total[m])
    return {m: torch.cat(v, 1) for m, v in out.items()}


def signflip_p(a: torch.Tensor | Sequence[torch.Tensor], b: torch.Tensor | Sequence[torch.Tensor],
               labels: torch.Tensor | Sequence[torch.Tensor], *, metric: str, num_classes: int, resamples: int,
               seed: int = 0, clusters: torch.Tensor | Sequence[torch.Tensor | None] | None = None) -> float:
    """Two-sided p of "A and B are exchangeable": each (repeat, row) cell's two predictions are swapped with
    probability ½, and p = (1 + #{|Δ*| ≥ |Δ|}) / (1 + resamples) (the paired randomization test, Fisher 1935;
    Phipson & Smyth 2010 for the +1). For top-1 it is McNemar's exact test; unlike the bootstrap's p it stays
    valid when only a handful of rows disagree (5 of 5 one way: p = 2/32, where the bootstrap says 0.013).
    ``a``, ``b``: (R or 1, N) predictions on one test set; or, with ``labels`` a list (one test set per repeat:
    ``--resplit``), a list of each repeat's predictions. The pooled Δ is the mean over repeats. Only rows where
    the two predictions differ can change anything, so only they are drawn. ``clusters`` (N,), or one per
    repeat: the rows' groups; a group's rows are swapped together (the randomization test at the level of
    the independent unit: rows of one group are not exchangeable one by one under the null, so swapping them
    singly would make p too small, as the row bootstrap makes intervals too narrow).
    """
    k = num_classes
    if isinstance(labels, torch.Tensor):
        n = labels.numel()
        r = max(a.numel(), b.numel()) // max(n, 1)
        a, b = a.cpu().reshape(-1, n).expand(r, n), b.cpu().reshape(-1, n).expand(r, n)
        labels = [labels.cpu()] * r
        clusters = [clusters] * r if isinstance(clusters, torch.Tensor) else clusters
    r = len(labels)
    clusters = list(clusters) if clusters is not None else [None] * r
    g = torch.Generator().manual_seed(seed)
    parts = [_swappable(a[i].cpu(), b[i].cpu(), labels[i].cpu(), k, clusters[i]) for i in range(r)]
    observed = abs(sum(float(metric_of_counts(p.tp_a, p.support, p.pred_a, metric)
                             - metric_of_counts(p.tp_b, p.support, p.pred_b, metric)) for p in parts) / r)
    block, extreme = max(1, min(resamples, _CELLS // max(max(len(y) for y in labels), 1))), 0
    for start in range(0, resamples, block):
        m = min(block, resamples - start)
        delta = torch.zeros(m, dtype=torch.float64)
        for p in parts:
            if p.group is None:
                swap = (torch.rand(m, p.rows.numel(), generator=g) < 0.5).double()
            else:  # one coin per group, shared by its rows
                swap = (torch.rand(m, int(p.group.max()) + 1 if p.rows.numel() else 0, generator=g) < 0.5
                        ).double()[:, p.group]
            move_t = torch.zeros(m, k, dtype=torch.float64).index_add_(1, p.label, swap * p.hit_gain)
            move_q = (torch.zeros(m, k, dtype=torch.float64).index_add_(1, p.to_b, swap[:, p.b_inside])
                      .index_add_(1, p.to_a, -swap[:, p.a_inside]))
            delta += (metric_of_counts(p.tp_a + move_t, p.support, p.pred_a + move_q, metric)
                      - metric_of_counts(p.tp_b - move_t, p.support, p.pred_b - move_q, metric)) / r
        extreme += int((delta.abs() >= observed - 1e-12).sum())
    return (1 + extreme) / (1 + resamples)


@dataclass(frozen=True)
class _Swap:
    """One repeat of a pair for the randomization test: A's and B's per-class counts, and for each row where
    the two predictions differ, what swapping it moves from B to A (its class, the hit it gains, the classes
    predicted)."""

    support: torch.Tensor
    tp_a: torch.Tensor
    tp_b: torch.Tensor
    pred_a: torch.Tensor
    pred_b: torch.Tensor
    rows: torch.Tensor
    label: torch.Tensor
    hit_gain: torch.Tensor
    to_a: torch.Tensor
    to_b: torch.Tensor
    a_inside: torch.Tensor
    b_inside: torch.Tensor
    group: torch.Tensor | None  # the disagreeing rows' groups as 0 … G − 1, or None: each row alone


def _swappable(a: torch.Tensor, b: torch.Tensor, labels: torch.Tensor, k: int,
               clusters: torch.Tensor | None = None) -> _Swap:
    def counts(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hit = (p == labels).double()
        inside = (p >= 0) & (p < k)
        return (torch.zeros(k, dtype=torch.float64).index_add_(0, labels, hit),
                torch.bincount(p[inside], minlength=k).double())

    (tp_a, pred_a), (tp_b, pred_b) = counts(a), counts(b)
    rows = (a != b).nonzero().squeeze(1)
    pa, pb, y = a[rows], b[rows], labels[rows]
    gain = (pb == y).double() - (pa == y).double()
    a_in, b_in = (pa >= 0) & (pa < k), (pb >= 0) & (pb < k)
    support = torch.bincount(labels, minlength=k).double()
    group = None if clusters is None else torch.unique(clusters.cpu()[rows], return_inverse=True)[1]
    return _Swap(support, tp_a, tp_b, pred_a, pred_b, rows, y, gain, pa[a_in], pb[b_in], a_in, b_in, group)


def pooled_value(preds: torch.Tensor | Sequence[torch.Tensor], labels: torch.Tensor | Sequence[torch.Tensor], *,
                 metric: str, num_classes: int) -> float:
    """The metric averaged over the repeats of ``preds`` (R, N) on one test set, or over each repeat's
    predictions on its own test set (``labels`` a list, ``--resplit``): the number the report shows."""
    if isinstance(labels, torch.Tensor):
        preds = preds.cpu().reshape(-1, labels.numel())
        labels = [labels] * len(preds)
    return sum(metric_value(p, y, metric=metric, num_classes=num_classes) for p, y in zip(preds, labels)) / len(labels)


def order_interval(sorted_values: torch.Tensor, alpha: float) -> list[float]:
    """The two-sided (1 − α) percentile interval as order statistics: the (k+1)-th smallest and largest of B
    sorted values, k = ⌈αB/2⌉ − 1. It excludes 0 exactly when :func:`bootstrap_p` < α (same counts)."""
    b = sorted_values.numel()
    k = max(math.ceil(alpha * b / 2) - 1, 0)
    return [float(sorted_values[k]), float(sorted_values[b - 1 - k])]


def bootstrap_p(values: torch.Tensor) -> float:
    """Two-sided p of "the difference is 0": twice the smaller share of resampled differences on either side
    of 0 (ties count on both sides), capped at 1 — the α at which the percentile interval first reaches 0."""
    b = values.numel()
    return min(1.0, 2 * min(int((values <= 0).sum()), int((values >= 0).sum())) / b)


def holm(ps: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (Holm 1979): the i-th smallest of m is multiplied by m − i + 1 and
    kept monotone, so rejecting where adjusted p < α holds the family-wise error rate at α."""
    order = sorted(range(len(ps)), key=lambda i: ps[i])
    out, running = [1.0] * len(ps), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(ps) - rank) * ps[i]))
        out[i] = running
    return out


def minimum_detectable(values: torch.Tensor, *, alpha: float = 1 - LEVEL, power: float = POWER) -> float:
    """The smallest true difference a two-sided level-α test detects with probability ``power``:
    (z₁₋α/₂ + z_power) × the bootstrap standard error (the normal approximation of a two-sided test)."""
    from statistics import NormalDist

    z = NormalDist().inv_cdf(1 - alpha / 2) + NormalDist().inv_cdf(power)
    return z * float(values.std())


__all__ = ["LEVEL", "METRICS", "METRIC_KEYS", "PAIRED_RESAMPLES", "RESAMPLES", "bootstrap",
           "bootstrap_p", "clusters_of", "holm", "nested_bootstrap", "row_weights", "signflip_p", "metric_of_counts",
           "metric_value",
           "minimum_detectable",
           "order_interval", "pooled_value"]
