"""Choosing C on a validation split: the 45-point grid or CLIP's parametric binary search.

Both walk from strong to weak regularisation with warm starts (weights and L-BFGS curvature pairs
carried from fit to fit) and rank C by validation top-1, ties going to the smaller C. Every fit is
a point of the validation curve that ends up in the report.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from sslprobe.solver import Design, LogReg, fit

DEFAULT_CS: tuple[float, ...] = tuple(10.0 ** (-6 + 11 * i / 44) for i in range(45))
# CLIP (Radford et al. 2021, appendix A.3): a coarse sweep every 2 decades, then the interval
# around the peak is halved until 8 steps per decade
BINARY_COARSE_STEP = 2.0
BINARY_RESOLUTION = 0.125


@dataclass
class PathState:
    """Fits of one search: validation scores per C and the shared warm-start state."""

    Zf: Design
    yk: torch.Tensor  # (N_fit,) labels as model columns
    Zv: Design
    yv: torch.Tensor  # (N_val,) labels in [0, num_classes)
    cols: torch.Tensor  # (K_fit,) classes the fit split has (= model columns)
    num_classes: int
    max_iter: int
    tol: float
    on_fit: Callable[[dict], None] | None = None
    points: dict[float, tuple[int, float, LogReg]] = field(default_factory=dict)  # C → (correct, loss, model)
    curve: list[dict] = field(default_factory=list)
    memory: dict = field(default_factory=dict)
    sums: torch.Tensor | None = None

    def __post_init__(self) -> None:
        self.lut = torch.full((self.num_classes,), -1, dtype=torch.long, device=self.cols.device)
        self.lut[self.cols] = torch.arange(self.cols.numel(), device=self.cols.device)
        self.seen = torch.isin(self.yv, self.cols)

    def evaluate(self, c: float) -> tuple[int, float]:
        """Fit at C warm-started from the nearest fitted C (in log C); (val correct, val loss)."""
        if c in self.points:
            return self.points[c][:2]
        if self.sums is None:
            self.sums = self.Zf.class_sums(self.yk, self.cols.numel())
        near = min(self.points, key=lambda p: (abs(math.log(p / c)), p), default=None)
        init = None if near is None else self.points[near][2]
        model = fit(self.Zf, self.yk, C=c, init=init, max_iter=self.max_iter, tol=self.tol,
                    num_classes=self.cols.numel(), class_sums=self.sums, memory=self.memory)
        logits = self.Zv.scores(model)  # (N_val, K_fit)
        correct = int((self.cols[logits.argmax(1)] == self.yv).sum())
        seen = self.seen
        loss = float(F.cross_entropy(logits[seen], self.lut[self.yv[seen]])) if seen.any() else math.inf
        self.points[c] = (correct, loss, model)
        point = {"C": c, "top1": correct / self.yv.numel(), "loss": loss if loss < math.inf else None,
                 "iters": model.n_iter}
        self.curve.append(point)
        if self.on_fit:
            self.on_fit(point)
        return correct, loss

    def best(self) -> tuple[float, LogReg]:
        """(C, model) with the best val top-1; ties → smaller C (stronger regularisation)."""
        c = max(self.points, key=lambda p: (self.points[p][0], -p))
        return c, self.points[c][2]

    def sorted_curve(self) -> list[dict]:
        return sorted(self.curve, key=lambda p: p["C"])


def walk(state: PathState, cs: Sequence[float], *, patience: int | None) -> None:
    """Fit ``cs`` in order (strong → weak), stopping after ``patience`` C's that beat neither
    the best val top-1 nor the lowest val loss so far (top-1 dips at tiny C before rising, the loss
    does not), or at a perfect val score; ``patience=None`` fits them all."""
    best, best_loss, stale = -1, math.inf, 0
    for c in cs:
        correct, loss = state.evaluate(c)
        if correct > best:
            best, stale = correct, 0
        elif loss < best_loss:
            stale = 0
        else:
            stale += 1  # past the optimum (or frozen: the warm start already meets tol)
        best_loss = min(best_loss, loss)
        if patience is not None and (stale >= patience or correct == state.yv.numel()):
            break  # later C's could at best tie, and ties go to the smaller C


def grid_search(state: PathState, Cs: Sequence[float], *, patience: int | None) -> None:
    """Every C of ``Cs`` from small to large (early stop: see ``walk``)."""
    walk(state, sorted(Cs), patience=patience)


def binary_search(state: PathState, *, lo: float = -6.0, hi: float = 5.0, patience: int | None = 1) -> None:
    """CLIP's parametric binary search over log10 C in [lo, hi].

    A coarse sweep every ``BINARY_COARSE_STEP`` decades (strong → weak, early stop as in ``walk``;
    one coarse point worse in both top-1 and loss is a clear signal two decades apart, and weak-C
    fits are the expensive ones), then, around the best C, the two points half a step away are
    fitted and the step is halved until it reaches ``BINARY_RESOLUTION`` decades (8 per decade):
    ~12 fits instead of 45.
    """
    coarse = [lo + i * BINARY_COARSE_STEP for i in range(int((hi - lo) / BINARY_COARSE_STEP) + 1)]
    walk(state, [10.0 ** e for e in coarse], patience=patience)
    step = BINARY_COARSE_STEP
    while step > BINARY_RESOLUTION:
        step /= 2
        centre = math.log10(state.best()[0])
        for log_c in (centre - step, centre + step):  # smaller C first: cheaper, and the warm start
            if lo - 1e-9 <= log_c <= hi + 1e-9:
                state.evaluate(10.0 ** round(log_c, 6))


__all__ = ["BINARY_COARSE_STEP", "BINARY_RESOLUTION", "DEFAULT_CS", "PathState", "binary_search",
           "grid_search", "walk"]
