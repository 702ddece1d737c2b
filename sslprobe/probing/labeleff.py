"""Label efficiency: the probe trained on stratified subsets of the labels, several seeds each.

Each point (a fraction of every class, or k shots per class) is drawn ``seeds`` times
(``sslprobe.labelcurves``: the subsets, the draws and the mean ± std are shared with fine-tuning); the linear
probe chooses its C with the subset's own labels only (k-fold cross-validation inside the subset,
``subset_c``): a "1 % labels" point that chose C on the full validation split would be using
25× the labels it claims. kNN uses the subset as its bank; both are scored on the same
evaluation rows in the declared metric (``--metric``: the one that also ranks each subset's C), giving
mean ± std over the draws.
The standardisation of the full fit split and its stored design matrix are reused throughout;
only row indices change, so the whole curve costs about as much as one probe.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from sslprobe.knn import HEADLINE_K, knn_votes
from sslprobe.labelcurves import Draw, LabelPlan, check_seeds, parse_points, run_curve, stats
from sslprobe.probing.compute import Solver
from sslprobe.probing.holdout import Splits, stratified_folds
from sslprobe.probing.metrics import selection_score
from sslprobe.probing.search import FoldedPath, PathState, SearchSpec, run_search
from sslprobe.probing.solver import Design, Standardizer, fit, model_columns
from sslprobe.runtime.progress import progress_bar

CV_FOLDS = 5
# Fold fits of a subset's CV stop 100× looser than the main path's (search.SEARCH_TOL/RTOL): a
# fold's held-out rows are few (one row is points of accuracy), so the ranking is coarser than
# that tolerance, and on a 300-row study this cut the label curve's solver time ~2.5×.
CV_TOL, CV_RTOL = 1e-4, 1e-3
# A small subset is linearly separable in a wide feature space (480 Fashion-MNIST images in 784-d):
# at weak regularisation its optimum runs off to large weights and a fold fit could spend the full
# 1,000 iterations climbing; 100 bound each fold fit (flagged unconverged) where the ranking is settled.
CV_MAX_ITER = 100
FEW_SHOT_C = 1.0  # scikit-learn's default C: used when a subset has a class with one label (no CV possible)


def label_efficiency(points: Sequence[tuple[str, float]], *, labels: torch.Tensor, seeds: int, seed: int,
                     linear: Callable[[torch.Tensor], tuple[float, float, str, list[int]]] | None,
                     knn: Callable[[torch.Tensor], float] | None,
                     progress: Callable[[], None] | None = None) -> list[dict]:
    """One row per point: subset sizes and mean ± std of linear and kNN scores over ``seeds`` draws.

    ``linear(rows) -> (score, C, rule, predictions)`` and ``knn(rows) -> score`` train on the fit-split
    ``rows`` and score the evaluation rows; ``rule`` says how C was chosen; the linear predictions of every
    draw are kept (a study tests label budgets by resampling draws and rows together). The draws are
    ``labelcurves.run_curve``'s (a whole-split draw runs once).
    """
    def fit_and_score(draw: Draw) -> dict[str, Any]:
        got: dict[str, Any] = {}
        if linear is not None:
            got["linear"], got["C"], got["rule"], got["pred"] = linear(draw.rows)
        if knn is not None:
            got["knn"] = knn(draw.rows)
        return got

    curve = run_curve(LabelPlan(list(points), seeds, seed), labels=labels, fit_and_score=fit_and_score,
                      progress=progress)
    assert curve is not None  # fit_and_score never stops the curve
    return [p.row(linear=stats(p.column("linear"), predictions=p.column("pred")) if linear is not None else None,
                  C=p.column("C"),
                  C_rule=sorted(set(p.column("rule"))), knn=stats(p.column("knn")) if knn is not None else None)
            for p in curve]


@dataclass(frozen=True)
class CurvePlan(LabelPlan):
    """What the probe's label curve draws (``labelcurves.LabelPlan``) and the kNN temperature (None: no kNN column)."""

    knn_temperature: float | None

    @classmethod
    def from_args(cls, *, fractions: Sequence[float], shots: Sequence[int], seeds: int, seed: int,
                  knn_temperature: float | None) -> CurvePlan | None:
        """The validated plan, or None without points; checked before the C search, not after it."""
        points = parse_points(fractions, shots)
        if not points:
            return None
        check_seeds(seeds)
        return cls(points, seeds, seed, knn_temperature)


def _fold_path(solver: Solver, Z: Design, y: torch.Tensor, held: torch.Tensor) -> PathState:
    """One CV fold of a subset: fit on its other rows, score on ``held``, with the looser fold stops."""
    mask = torch.ones(y.numel(), dtype=torch.bool)
    mask[held] = False
    rows, held_d = mask.nonzero().flatten().to(Z.device), held.to(Z.device)
    return solver.path(Z.subset(rows), y[rows], Z.subset(held_d), y[held_d], tol=CV_TOL, rtol=CV_RTOL,
                       max_iter=CV_MAX_ITER)


def subset_c(solver: Solver, Z: Design, y: torch.Tensor, *, spec: SearchSpec, seed: int) -> tuple[float, str]:
    """C for a label subset from its own labels only: stratified k-fold CV inside the subset.

    k = min(5, smallest class count), each C scored by the folds' mean; the C's are walked by
    CLIP's binary search (~12 fits per fold, 1/8-decade resolution) whatever the main search: k
    folds × every point × seeds would make the grid's ~30 fits per fold the probe's main cost.
    A subset with a class of one label cannot hold any of it out, so it takes scikit-learn's
    default C = 1 (documented in docs/probe.md), chosen by no label.
    """
    if spec.C is not None:
        return float(spec.C), "fixed"
    k = min(CV_FOLDS, int(torch.bincount(y)[torch.unique(y)].min()))
    if k < 2:
        return FEW_SHOT_C, f"default C={FEW_SHOT_C:g} (a class has 1 label: nothing to cross-validate)"
    cv = FoldedPath([_fold_path(solver, Z, y, held) for held in stratified_folds(y.cpu(), k=k, seed=seed)])
    run_search(cv, C=None, Cs=None, search="binary", patience=1)
    return cv.best_c(), f"{k}-fold CV within the subset"


@dataclass
class CurveLearners:
    """The curve's two learners on fit-split row subsets, both scored on the same evaluation rows.

    The designs are the main search's (standardised with the full fit split's statistics): a draw
    only selects rows of them.
    """

    solver: Solver
    splits: Splits
    Zf: Design  # the fit split
    Ze: Design  # the evaluation rows (``splits.evaluation``)
    spec: SearchSpec
    plan: CurvePlan
    main: PathState  # the main search: its C and model serve the whole-split point

    def __post_init__(self) -> None:
        _, self.Xe, ye = self.splits.evaluation
        self.yf, self.ye = self.splits.yf.to(self.solver.device), ye.to(self.solver.device)

    def score(self, pred: torch.Tensor) -> float:
        """The declared metric of predictions ``pred`` of the evaluation rows."""
        return selection_score(pred, self.ye, metric=self.solver.metric, num_classes=self.solver.num_classes)

    def linear(self, rows: torch.Tensor) -> tuple[float, float, str, list[int]]:
        """(score, C, how C was chosen, predictions) of the linear probe trained on ``rows``."""
        if rows.numel() == self.splits.yf.numel():  # the whole fit split: the main search chose its C
            (c, model), cols, rule = self.main.best(), self.main.cols, "validation split"
        else:
            rows_d = rows.to(self.solver.device)
            Zs, ys = self.Zf.subset(rows_d), self.yf[rows_d]
            c, rule = subset_c(self.solver, Zs, ys, spec=self.spec, seed=self.plan.seed)
            cols, lut = model_columns(ys, self.solver.num_classes)
            model = fit(Zs, lut[ys], C=c, max_iter=self.solver.max_iter, num_classes=cols.numel())
        pred = cols[self.Ze.scores(model).argmax(1)]
        return self.score(pred), c, rule, pred.cpu().tolist()

    def knn(self, rows: torch.Tensor) -> float:
        """The score of kNN (k = 20) with the raw fit rows ``rows`` as its bank."""
        votes = knn_votes(self.splits.Xf[rows], self.splits.yf[rows], self.Xe, ks=[HEADLINE_K],
                          num_classes=self.solver.num_classes, temperature=self.plan.knn_temperature,
                          device=self.solver.device)[HEADLINE_K]
        return self.score(votes.argmax(1))


def label_curve(solver: Solver, splits: Splits, Zf: Design, Zv: Design, scaler: Standardizer, *,
                spec: SearchSpec, plan: CurvePlan, main: PathState, show_progress: bool) -> dict:
    """Step: the label-efficiency points, each subset choosing C with its own labels, scored on test
    (else on val, with a warning: the full-split point chose its C on those rows)."""
    ev_name = splits.evaluation[0]
    Ze = Zv if splits.test is None else solver.design(splits.test[0], scaler)
    learners = CurveLearners(solver, splits, Zf, Ze, spec=spec, plan=plan, main=main)
    with progress_bar(show_progress) as bar:
        task = bar.add_task("label efficiency", total=plan.n_draws)
        curve = label_efficiency(plan.points, labels=splits.yf, seeds=plan.seeds, seed=plan.seed,
                                 linear=learners.linear,
                                 knn=learners.knn if plan.knn_temperature is not None else None,
                                 progress=functools.partial(bar.advance, task))
    if ev_name == "val":
        splits.warns.append("label efficiency scored on val (no --test): the full-split point chose C on "
                            "the same rows, so it is optimistic")
    return {"scored_on": ev_name, "metric": solver.metric, "knn_k": HEADLINE_K, "points": curve,
            "C_selection": f"each subset by stratified k-fold CV on its own labels (k = min({CV_FOLDS}, smallest "
                           f"class), binary search over C); 1 label in a class: C = {FEW_SHOT_C:g}"}


__all__ = ["CV_FOLDS", "CV_MAX_ITER", "CV_RTOL", "CV_TOL", "FEW_SHOT_C", "CurveLearners", "CurvePlan", "label_curve",
           "label_efficiency", "subset_c"]
