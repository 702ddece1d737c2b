"""Label-efficiency curves, whatever the learner: the plan of points and draws, the subsets, the mean ± std.

A curve is a list of points — a fraction of every class, or k shots per class — each drawn
``seeds`` times as a class-stratified subset of the training labels (:func:`stratified_sample`
with seed ``seed + 1000·draw``), so a probe curve and a fine-tune curve of one folder train on the
same images. A draw that is the whole split (fraction 1, or shots ≥ every class size) is the same
for every seed and runs once. What a draw trains and how it is scored is the caller's: the linear
probe and kNN (``probing.labeleff``), or a fine-tune (``finetuning.curve``) pass their own
fit-and-score function (scoring in the declared ``--metric``); :func:`run_curve` calls it once per draw and
collects its results by point; :func:`stats` is a point's mean ± sample std.
:func:`class_ranks` (one seeded order of the rows grouped by class) is also the core of the probe's
validation hold-out and cross-validation folds (``probing.holdout``).
"""
from __future__ import annotations

import statistics
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import torch

from sslprobe.errors import SSLProbeError

R = TypeVar("R")
DRAW_SEED_STRIDE = 1000  # draw s of a point uses seed + 1000·s


def parse_points(fractions: Sequence[float] = (), shots: Sequence[int] = ()) -> list[tuple[str, float]]:
    """Validated curve points [("fraction", f) …, ("shots", k) …], each kind ascending."""
    for f in fractions:
        if not 0 < f <= 1:
            raise SSLProbeError(f"label fractions must lie in (0, 1], got {f:g} (e.g. --fractions 0.01,0.1,1)")
    for s in shots:
        if int(s) != s or s < 1:
            raise SSLProbeError(f"shots must be positive integers, got {s} (e.g. --shots 1,5,10,25)")
    return [("fraction", float(f)) for f in sorted(set(fractions))] + [("shots", int(s)) for s in sorted(set(shots))]


def check_seeds(seeds: int) -> None:
    """Draws per point: at least one."""
    if seeds < 1:
        raise SSLProbeError(f"--seeds must be ≥ 1 (got {seeds})")


@dataclass(frozen=True)
class LabelPlan:
    """What a curve draws: its points, the draws per point and their base seed (commands add their own fields)."""

    points: list[tuple[str, float]]
    seeds: int
    seed: int

    @property
    def n_draws(self) -> int:
        """Draws the curve makes at most (a whole-split fraction runs once): a progress bar's total."""
        return sum(1 if kind == "fraction" and v == 1 else self.seeds for kind, v in self.points)


@dataclass(frozen=True)
class Draw:
    """One subset of a point: ``rows`` index the labels the curve was given; ``whole``: it is all of them."""

    kind: str
    value: float
    index: int  # 0 … seeds − 1
    seed: int
    rows: torch.Tensor
    whole: bool

    @property
    def name(self) -> str:
        """e.g. ``fraction0.1-draw2``."""
        return f"{self.kind}{self.value:g}-draw{self.index}"


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


def draws(labels: torch.Tensor, kind: str, value: float, *, seeds: int, seed: int) -> Iterator[Draw]:
    """The point's seeded stratified subsets, one per seed, stopping after a whole-split one."""
    for s in range(seeds):
        draw_seed = seed + DRAW_SEED_STRIDE * s
        rows = stratified_sample(labels, seed=draw_seed, **{kind: value})
        if torch.unique(labels[rows]).numel() < 2:
            raise SSLProbeError(f"{kind} {value:g} leaves fewer than 2 classes; use a larger value")
        whole = rows.numel() == labels.numel()  # every seed would draw the same rows
        yield Draw(kind, value, s, draw_seed, rows, whole)
        if whole:
            break


@dataclass
class Point(Generic[R]):
    """A point's draws and the fit-and-score result of each, in draw order."""

    kind: str
    value: float
    draws: list[Draw] = field(default_factory=list)
    results: list[R] = field(default_factory=list)

    def column(self, key: str) -> list[Any]:
        """``result[key]`` of every draw whose result has it."""
        return [r[key] for r in self.results if key in r]  # type: ignore[operator]

    def row(self, **columns: Any) -> dict[str, Any]:
        """The report's point: kind, value, subset size, draws made, then the caller's ``columns`` in order."""
        return {"kind": self.kind, "value": self.value, "n_train": int(self.draws[0].rows.numel()),
                "seeds": len(self.draws), **columns}


def run_curve(plan: LabelPlan, *, labels: torch.Tensor, fit_and_score: Callable[[Draw], R | None],
              progress: Callable[[], None] | None = None) -> list[Point[R]] | None:
    """Every point's draws through ``fit_and_score`` (trains on ``draw.rows``, scores; None: stop the curve).

    Returns the points with their results, or None when ``fit_and_score`` stopped it (an interrupted
    session). ``progress`` is called after each draw.
    """
    check_seeds(plan.seeds)
    out: list[Point[R]] = []
    for kind, value in plan.points:
        point: Point[R] = Point(kind, value)
        for d in draws(labels, kind, value, seeds=plan.seeds, seed=plan.seed):
            got = fit_and_score(d)
            if got is None:
                return None
            point.draws.append(d)
            point.results.append(got)
            if progress:
                progress()
        out.append(point)
    return out


def stats(values: list[float], *, predictions: list[list[int]] | None = None) -> dict[str, Any]:
    """mean, sample std (n − 1: the one std of every ± sslprobe shows; 0 for one draw) and the draws' values, with
    each draw's predictions on the scored rows when given (the label-budget tests resample them)."""
    out = {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
           "runs": values}
    return out if predictions is None else {**out, "predictions": predictions}


__all__ = ["DRAW_SEED_STRIDE", "Draw", "LabelPlan", "Point", "check_seeds", "class_ranks", "draws", "parse_points",
           "run_curve", "stats", "stratified_sample"]
