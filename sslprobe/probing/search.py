"""Choosing C: the 45-point grid or CLIP's parametric binary search, on a split or by k-fold CV.

Both walk from strong to weak regularisation with warm starts (weights and L-BFGS curvature pairs
carried from fit to fit). Every point is a converged fit of its own objective (``solver.fit``'s
relative stop, max|grad| ≤ rtol·λ·max|W|): with an absolute tolerance alone, a warm start at weak
regularisation already meets it, 19-21 of the 45 fits on scikit-learn's digits ran zero
iterations, and one stale model was scored again and again. C is ranked by the declared metric
(``--metric``: validation balanced accuracy, top-1 or macro-F1), ties going to the lower validation loss, then
the smaller C.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from sslprobe.probing.metrics import selection_scores
from sslprobe.probing.solver import Design, LogReg, column_table, fit

DEFAULT_CS: tuple[float, ...] = tuple(10.0 ** (-6 + 11 * i / 44) for i in range(45))
# CLIP (Radford et al. 2021, appendix A.3): a coarse sweep every 2 decades, then the interval
# around the peak is halved until 8 steps per decade
BINARY_COARSE_STEP = 2.0
BINARY_RESOLUTION = 0.125
# Search fits stop at max|grad| ≤ min(SEARCH_TOL, SEARCH_RTOL·λ·max|W|). On digits (float64, the
# full grid) these reproduce the validation curve of 1e-10 fits at all 45 C's; 10× looser left
# one near-tie at C = 3e-6 flipped, and the old absolute 1e-3 alone moved the chosen C 2.5 decades.
SEARCH_TOL = 1e-6
SEARCH_RTOL = 1e-5
# ... or once L-BFGS's estimate of the suboptimality, ½gᵀH⁻¹g ≈ f − f*, is below 1e-10·‖W‖²/K
# (a relative logit error of ~1e-5): at weak regularisation on ill-conditioned features the
# gradient stop needs thousands of iterations (Fashion-MNIST pixels: the 7 weakest C's of the
# path ran max_iter = 1000 each) for no change in any prediction the curve reports.
SEARCH_DEC_RTOL = 1e-10


@dataclass
class PathState:
    """Fits of one search on one (fit, validation) pair: scores per C and the shared warm-start state."""

    Zf: Design
    yf: torch.Tensor  # (N_fit,) labels in [0, num_classes)
    Zv: Design
    yv: torch.Tensor  # (N_val,) labels in [0, num_classes)
    cols: torch.Tensor  # (K_fit,) classes the fit split has (= model columns)
    num_classes: int
    max_iter: int
    tol: float = SEARCH_TOL
    rtol: float | None = SEARCH_RTOL
    dec_rtol: float | None = SEARCH_DEC_RTOL
    metric: str = "balanced"  # the declared metric (config.common.METRICS) that ranks C
    on_fit: Callable[[dict], None] | None = None
    points: dict[float, tuple[float, float, LogReg]] = field(default_factory=dict)  # C → (score, loss, model)
    curve: list[dict] = field(default_factory=list)
    memory: dict = field(default_factory=dict)
    sums: torch.Tensor | None = None

    def __post_init__(self) -> None:
        self.lut = column_table(self.cols, self.num_classes)
        self.yk = self.lut[self.yf]  # (N_fit,) labels as model columns
        self.seen = torch.isin(self.yv, self.cols)

    def evaluate(self, c: float) -> tuple[float, float]:
        """Fit at C warm-started from the nearest fitted C (in log C); (val score, val loss)."""
        if c in self.points:
            return self.points[c][:2]
        if self.sums is None:
            self.sums = self.Zf.class_sums(self.yk, self.cols.numel())
        model = fit(self.Zf, self.yk, C=c, init=self.warm_start(c), max_iter=self.max_iter, tol=self.tol,
                    num_classes=self.cols.numel(), class_sums=self.sums, memory=self.memory, rtol=self.rtol,
                    dec_rtol=self.dec_rtol)
        logits = self.Zv.scores(model)  # (N_val, K_fit)
        pred = self.cols[logits.argmax(1)]
        seen = self.seen
        loss = float(F.cross_entropy(logits[seen], self.lut[self.yv[seen]])) if seen.any() else math.inf
        scores = selection_scores(pred, self.yv, num_classes=self.num_classes)
        score = scores[self.metric]
        self.points[c] = (score, loss, model)
        point = {"C": c, "top1": scores["top1"], "balanced_accuracy": scores["balanced"],
                 "macro_f1": scores["macro-f1"], "loss": loss if loss < math.inf else None,
                 "iters": model.n_iter, "converged": model.converged, "floor_limited": model.floor_limited}
        self.curve.append(point)
        if self.on_fit:
            self.on_fit(point)
        return score, loss

    def warm_start(self, c: float) -> LogReg | None:
        """Where the fit at ``c`` starts: the nearest fitted C's weights (in log C), moved along the path.

        When the two nearest fits lie on one side of ``c`` (a walk from strong to weak), the start is
        the secant step through them, w₁ + (w₁ − w₀)·log(c/c₁)/log(c₁/c₀): the solution path is smooth
        in log C, and on Fashion-MNIST pixels (the 21-fit grid walk) this cut its L-BFGS iterations
        448 → 384 with the same chosen C.
        """
        near = sorted(self.points, key=lambda p: (abs(math.log(p / c)), p))[:2]
        if not near:
            return None
        m1 = self.points[near[0]][2]
        if len(near) < 2 or (near[0] - c) * (near[1] - c) <= 0 or abs(math.log(near[1] / near[0])) < 1e-12:
            return m1
        (c1, c0), m0 = near, self.points[near[1]][2]
        r = math.log(c / c1) / math.log(c1 / c0)
        return LogReg(m1.coef + r * (m1.coef - m0.coef), m1.intercept + r * (m1.intercept - m0.intercept),
                      m1.objective, 0)

    def best_c(self) -> float:
        """The C with the best val score; ties → lower val loss, then smaller C (stronger regularisation)."""
        return max(self.points, key=lambda p: (self.points[p][0], -self.points[p][1], -p))

    def best(self) -> tuple[float, LogReg]:
        c = self.best_c()
        return c, self.points[c][2]

    def sorted_curve(self) -> list[dict]:
        return sorted(self.curve, key=lambda p: p["C"])


@dataclass
class FoldedPath:
    """k-fold cross-validation as one search: each C is fitted on every fold, scores and losses averaged.

    For a label subset that must choose C with its own labels only (the label-efficiency points):
    the folds are the subset's, and the subset's C never sees the validation split.
    """

    folds: list[PathState]
    points: dict[float, tuple[float, float]] = field(default_factory=dict)  # C → (mean score, mean loss)

    def evaluate(self, c: float) -> tuple[float, float]:
        if c not in self.points:
            scores, losses = zip(*(f.evaluate(c) for f in self.folds))
            self.points[c] = (sum(scores) / len(scores), sum(losses) / len(losses))
        return self.points[c]

    def best_c(self) -> float:
        return max(self.points, key=lambda p: (self.points[p][0], -self.points[p][1], -p))


Search = PathState | FoldedPath


def walk(state: Search, cs: Sequence[float], *, patience: int | None) -> None:
    """Fit ``cs`` in order (strong → weak), stopping after ``patience`` C's that beat neither
    the best val score nor the lowest val loss so far (the score dips at tiny C before rising, the
    loss does not), or at a perfect val score; ``patience=None`` fits them all."""
    best, best_loss, stale = -1.0, math.inf, 0
    for c in cs:
        score, loss = state.evaluate(c)
        if score > best:
            best, stale = score, 0
        elif loss < best_loss:
            stale = 0
        else:
            stale += 1  # past the optimum
        best_loss = min(best_loss, loss)
        if patience is not None and (stale >= patience or score >= 1.0):
            break  # later C's could at best tie, and a tie needs a lower loss, which the walk has stopped finding


def grid_search(state: Search, Cs: Sequence[float], *, patience: int | None) -> None:
    """Every C of ``Cs`` from small to large (early stop: see ``walk``)."""
    walk(state, sorted(Cs), patience=patience)


def binary_search(state: Search, *, lo: float = -6.0, hi: float = 5.0, patience: int | None = 1) -> None:
    """CLIP's parametric binary search over log10 C in [lo, hi].

    A coarse sweep every ``BINARY_COARSE_STEP`` decades (strong → weak, early stop as in ``walk``;
    one coarse point worse in both score and loss is a clear signal two decades apart, and weak-C
    fits are the expensive ones), then, around the best C, the two points half a step away are
    fitted and the step is halved until it reaches ``BINARY_RESOLUTION`` decades (8 per decade):
    ~12 fits instead of 45.
    """
    coarse = [lo + i * BINARY_COARSE_STEP for i in range(int((hi - lo) / BINARY_COARSE_STEP) + 1)]
    walk(state, [10.0 ** e for e in coarse], patience=patience)
    step = BINARY_COARSE_STEP
    while step > BINARY_RESOLUTION:
        step /= 2
        centre = math.log10(state.best_c())
        for log_c in (centre - step, centre + step):  # smaller C first: cheaper, and the warm start
            if lo - 1e-9 <= log_c <= hi + 1e-9:
                state.evaluate(10.0 ** round(log_c, 6))


def run_search(state: Search, *, C: float | None, Cs: Sequence[float] | None, search: str,
               patience: int | None) -> None:
    """Fill ``state`` by the chosen rule: a fixed ``C``, the grid ``Cs`` (default 45) or the binary search."""
    if C is not None:
        state.evaluate(float(C))
    elif search == "binary":
        binary_search(state, patience=None if patience is None else 1)
    else:
        grid_search(state, Cs or DEFAULT_CS, patience=patience)


@dataclass(frozen=True)
class SearchSpec:
    """How the probe chooses C: fixed, or a grid / binary search with early-stop patience."""

    C: float | None
    Cs: Sequence[float] | None
    search: str  # "grid" or "binary"
    patience: int | None

    def run(self, state: Search) -> None:
        run_search(state, C=self.C, Cs=self.Cs, search=self.search, patience=self.patience)

    def n_fits(self) -> int:
        """Fits the search makes at most (for a progress bar): 1, len(Cs) or ~12 for the binary search."""
        return 1 if self.C is not None else len(self.Cs or DEFAULT_CS) if self.search == "grid" else 12


__all__ = ["BINARY_COARSE_STEP", "BINARY_RESOLUTION", "DEFAULT_CS", "SEARCH_DEC_RTOL", "SEARCH_RTOL", "SEARCH_TOL",
           "FoldedPath", "PathState", "Search", "SearchSpec", "binary_search", "grid_search",
           "run_search", "walk"]
