"""Label efficiency: the probe trained on stratified subsets of the labels, several seeds each.

Each point (a fraction of every class, or k shots per class) is drawn ``seeds`` times; the linear
probe chooses its C with the subset's own labels only (k-fold cross-validation inside the subset,
see ``probe``): a "1 % labels" point that chose C on the full validation split would be using
25× the labels it claims. kNN uses the subset as its bank; both are scored on the same
evaluation rows, giving mean ± std over the draws.
The standardisation of the full fit split and its stored design matrix are reused throughout;
only row indices change, so the whole curve costs about as much as one probe.
"""
from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence

import torch

from sslprobe.errors import SSLProbeError


def class_ranks(labels: torch.Tensor, *, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(order, rank, counts): row indices grouped by class in a seeded random order within each
    class, each ordered row's position inside its class, and the class sizes (the stratified draws'
    common core)."""
    g = torch.Generator().manual_seed(seed)
    labels = labels.cpu()
    perm = torch.randperm(labels.numel(), generator=g)
    order = perm[torch.sort(labels[perm], stable=True).indices]  # grouped by class, random within
    counts = torch.bincount(labels)
    start = torch.cumsum(counts, 0) - counts
    return order, torch.arange(labels.numel()) - start[labels[order]], counts


def stratified_sample(labels: torch.Tensor, *, seed: int, fraction: float | None = None,
                      shots: int | None = None) -> torch.Tensor:
    """Sorted indices of round(fraction·n_c) (at least 1) or min(shots, n_c) rows of each class c."""
    if (fraction is None) == (shots is None):
        raise ValueError("give exactly one of fraction and shots")
    labels = labels.cpu()
    order, rank, counts = class_ranks(labels, seed=seed)
    if fraction is not None:
        take = torch.floor(counts * fraction + 0.5).long().clamp_min(1)
    else:
        take = torch.full_like(counts, int(shots))
    take = torch.minimum(take, counts)
    return order[rank < take[labels[order]]].sort().values


def stratified_folds(labels: torch.Tensor, *, k: int, seed: int) -> list[torch.Tensor]:
    """``k`` disjoint sorted index sets; each class's rows are dealt round-robin in a seeded order, so
    every fold holds ⌊n_c/k⌋ or ⌈n_c/k⌉ rows of class c (scikit-learn's StratifiedKFold's rule)."""
    order, rank, _ = class_ranks(labels, seed=seed)
    fold = rank % k
    return [order[fold == i].sort().values for i in range(k)]


def parse_points(fractions: Sequence[float] = (), shots: Sequence[int] = ()) -> list[tuple[str, float]]:
    """Validated curve points [("fraction", f) …, ("shots", k) …], each kind ascending."""
    for f in fractions:
        if not 0 < f <= 1:
            raise SSLProbeError(f"label fractions must lie in (0, 1], got {f:g} (e.g. --fractions 0.01,0.1,1)")
    for s in shots:
        if int(s) != s or s < 1:
            raise SSLProbeError(f"shots must be positive integers, got {s} (e.g. --shots 1,5,10,25)")
    return [("fraction", float(f)) for f in sorted(set(fractions))] + [("shots", int(s)) for s in sorted(set(shots))]


def _stats(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.pstdev(values) if len(values) > 1 else 0.0,
            "runs": values}


def label_efficiency(points: Sequence[tuple[str, float]], *, labels: torch.Tensor, seeds: int, seed: int,
                     linear: Callable[[torch.Tensor], tuple[float, float]] | None,
                     knn: Callable[[torch.Tensor], float] | None,
                     progress: Callable[[], None] | None = None) -> list[dict]:
    """One row per point: subset sizes and mean ± std of linear and kNN top-1 over ``seeds`` draws.

    ``linear(rows) -> (top1, C, rule)`` and ``knn(rows) -> top1`` train on the fit-split ``rows`` and
    score the evaluation rows; ``rule`` says how C was chosen. A draw that equals the whole split
    (fraction 1, or shots ≥ every class size) is the same for every seed and runs once.
    """
    if seeds < 1:
        raise SSLProbeError(f"--seeds must be ≥ 1 (got {seeds})")
    rows_out = []
    for kind, value in points:
        runs: dict[str, list] = {"linear": [], "C": [], "knn": [], "n": [], "rule": []}
        for s in range(seeds):
            rows = stratified_sample(labels, seed=seed + 1000 * s, **{kind: value})
            if torch.unique(labels[rows]).numel() < 2:
                raise SSLProbeError(f"{kind} {value:g} leaves fewer than 2 classes; use a larger value")
            if linear is not None:
                top1, c, rule = linear(rows)
                runs["linear"].append(top1)
                runs["C"].append(c)
                runs["rule"].append(rule)
            if knn is not None:
                runs["knn"].append(knn(rows))
            runs["n"].append(int(rows.numel()))
            if progress:
                progress()
            if rows.numel() == labels.numel():  # every seed would draw the same rows
                break
        rows_out.append({
            "kind": kind, "value": value, "n_train": runs["n"][0], "seeds": len(runs["n"]),
            "linear": _stats(runs["linear"]) if runs["linear"] else None, "C": runs["C"],
            "C_rule": sorted(set(runs["rule"])),
            "knn": _stats(runs["knn"]) if runs["knn"] else None,
        })
    return rows_out


__all__ = ["class_ranks", "label_efficiency", "parse_points", "stratified_folds", "stratified_sample"]
