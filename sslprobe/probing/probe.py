"""The linear evaluation protocol on frozen features: C chosen on validation, refit, kNN, curves.

The protocol of the self-supervised literature (BYOL §4.1, SimCLR B.5; docs/probe.md): features
standardised with train statistics, multinomial logistic regression with an L2 penalty chosen on a
validation split (45 log-spaced C in [1e-6, 1e5], or CLIP's binary search), refit on train+val,
test accuracy touched once, with a bootstrap interval; kNN as in DINO; optional label-efficiency
curves whose points choose C with their own labels only. ``probe`` is a sequence of named steps:
splits → selection metric → choose C → label curve → refit and test → kNN → result.
"""
from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sslprobe.errors import SSLProbeError
from sslprobe.knn import knn_val_test, knn_votes
from sslprobe.probing.features import (
    FeatureSet,
    align_labels,
    as_feature_set,
    check_widths,
    load_features,
)
from sslprobe.probing.labeleff import (
    class_ranks,
    label_efficiency,
    parse_points,
    stratified_folds,
)
from sslprobe.probing.report import classification_metrics, summary, write_reports
from sslprobe.probing.search import (
    DEFAULT_CS,
    SELECT_METRICS,
    FoldedPath,
    PathState,
    n_fits,
    run_search,
    selection_score,
)
from sslprobe.probing.solver import Design, LogReg, Standardizer, fit, fit_logistic
from sslprobe.probing.uncertainty import bootstrap_intervals
from sslprobe.runtime import pick_device, progress_bar

_HEADLINE_K = 20  # DINO's k: the tie-break when several k score the same on validation
_DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16}
# "auto" precision solves in float64 up to this many fit-split elements (n·d): there it costs
# milliseconds, and float32 cannot resolve weak-regularisation optima (its line search stalls at
# the precision floor; on digits the C ≥ 1e4 points then differ by a row from the exact path).
AUTO_FLOAT64_ELEMENTS = 2**22
IMBALANCE = 2.0  # largest/smallest class count above which selection defaults to balanced accuracy
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
Source = str | os.PathLike | FeatureSet


def stratified_split(labels: torch.Tensor, *, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (keep, held_out): round(fraction·n_c) of each class held out, at least one kept."""
    order, rank, counts = class_ranks(labels, seed=seed)
    sorted_labels = labels.cpu()[order]
    n_out = torch.minimum(torch.floor(counts * fraction + 0.5).long(), (counts - 1).clamp_min(0))
    out = rank < n_out[sorted_labels]
    return order[~out].sort().values, order[out].sort().values


def _scores(logits: torch.Tensor, cols: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N, num_classes) scores from model-column logits; classes the model never saw get -inf."""
    out = logits.new_full((logits.shape[0], num_classes), -math.inf)
    out[:, cols] = logits
    return out


def model_columns(labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(cols, lut): the classes present in ``labels`` (= a model's columns) and the class → column
    table (−1 for absent classes), on the labels' device."""
    cols = torch.unique(labels)
    lut = torch.full((num_classes,), -1, dtype=torch.long, device=labels.device)
    lut[cols] = torch.arange(cols.numel(), device=labels.device)
    return cols, lut


def _offload(n: int, d: int, store: torch.dtype, dev: torch.device) -> bool:
    """Keep features in host memory (streamed per block) when they'd take over half the free GPU memory."""
    if dev.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(dev)
    return n * d * torch.finfo(store).bits // 8 > free // 2


def _check_args(C: float | None, Cs: Sequence[float] | None, search: str, val_fraction: float,
                knn_k: Sequence[int], knn_temperature: float, dtype: str, feature_dtype: str, select: str) -> None:
    if C is not None and not C > 0 or Cs is not None and (not Cs or min(Cs) <= 0):
        raise SSLProbeError("C values must be positive (e.g. --C 1.0)")
    if search not in ("grid", "binary"):
        raise SSLProbeError(f"unknown search '{search}'; use grid or binary")
    if not 0 < val_fraction < 1:
        raise SSLProbeError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if knn_k and min(knn_k) < 1 or not knn_temperature > 0:
        raise SSLProbeError("kNN needs k ≥ 1 and temperature > 0 (e.g. --knn-k 10 20 200 --knn-t 0.07)")
    if dtype not in ("auto", "float32", "float64"):
        raise SSLProbeError(f"compute dtype must be auto, float32 or float64, got '{dtype}'")
    if feature_dtype not in ("float32", "float16"):
        raise SSLProbeError(f"feature storage dtype must be float32 or float16, got '{feature_dtype}'")
    if select not in ("auto", *SELECT_METRICS):
        raise SSLProbeError(f"--select must be auto, top1 or balanced (got '{select}')")


@dataclass
class Splits:
    """The labelled rows of one probe, in host memory: fit and validation splits, and test."""

    names: list[str]
    X: torch.Tensor  # (N, D) every labelled train row
    Xf: torch.Tensor  # (N_fit, D)
    yf: torch.Tensor  # (N_fit,)
    Xv: torch.Tensor  # (N_val, D)
    yv: torch.Tensor  # (N_val,)
    test: tuple[torch.Tensor, torch.Tensor] | None
    val_given: bool
    warns: list[str] = field(default_factory=list)

    @property
    def K(self) -> int:
        return len(self.names)

    @property
    def Xall(self) -> torch.Tensor:
        return torch.cat([self.Xf, self.Xv])

    @property
    def yall(self) -> torch.Tensor:
        return torch.cat([self.yf, self.yv])


def _labelled(fs: FeatureSet, y: torch.Tensor, name: str, warns: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    lab = y >= 0
    if not lab.any():
        raise SSLProbeError(f"the {name} set has no labeled rows to score; label it or drop it")
    if not lab.all():
        warns.append(f"{name}: {int((~lab).sum())} unlabeled rows excluded from metrics")
    return fs.features[lab], y[lab]


def make_splits(sets: Mapping[str, FeatureSet | None], *, val_fraction: float, seed: int) -> Splits:
    """Align class names across sets, drop unlabelled rows, hold out a stratified val split if none given."""
    tr = sets["train"]
    names = list(tr.classes)
    labels = {k: align_labels(v, names) for k, v in sets.items() if v is not None}
    warns: list[str] = []
    keep = labels["train"] >= 0
    if not keep.any():
        raise SSLProbeError(f"'{tr.source}' has no labeled rows; the probe needs labels (class folders)")
    if not keep.all():
        warns.append(f"train: ignored {int((~keep).sum())} unlabeled rows")
    X, y = tr.features[keep], labels["train"][keep]  # (N, D), (N,) in host memory
    if y.unique().numel() < 2:
        raise SSLProbeError(f"train needs at least 2 classes with labeled rows, found only "
                            f"'{names[int(y[0])]}'; add images of other classes")
    if sets["val"] is None:
        fit_idx, val_idx = stratified_split(y, fraction=val_fraction, seed=seed)
        if val_idx.numel() == 0:
            raise SSLProbeError("train is too small for a validation hold-out (one row per class); "
                                "pass a separate val set or a fixed C")
        (Xf, yf), (Xv, yv) = (X[fit_idx], y[fit_idx]), (X[val_idx], y[val_idx])
    else:
        (Xf, yf), (Xv, yv) = (X, y), _labelled(sets["val"], labels["val"], "val", warns)
    test = _labelled(sets["test"], labels["test"], "test", warns) if sets["test"] is not None else None
    s = Splits(names, X, Xf, yf, Xv, yv, test, sets["val"] is not None, warns)
    for name, ev, ref in (("val", (Xv, yv), yf), ("test", test, s.yall)):
        unseen = ~torch.isin(ev[1], ref) if ev is not None else torch.zeros(0, dtype=torch.bool)
        if unseen.any():
            which = sorted({names[i] for i in ev[1][unseen].tolist()})
            warns.append(f"{name}: {int(unseen.sum())} rows of classes not in train "
                         f"({', '.join(which[:5])}) count as errors")
    return s


def resolve_select(select: str, labels: torch.Tensor) -> dict:
    """The selection metric: as asked, or balanced accuracy when classes are imbalanced > 2:1."""
    counts = torch.bincount(labels)
    counts = counts[counts > 0]
    ratio = float(counts.max() / counts.min())
    if select != "auto":
        return {"metric": select, "reason": "asked", "imbalance": ratio}
    metric = "balanced" if ratio > IMBALANCE else "top1"
    return {"metric": metric, "reason": f"auto: largest/smallest class = {ratio:.3g} "
                                        f"({'>' if metric == 'balanced' else '≤'} {IMBALANCE:g})", "imbalance": ratio}


@dataclass
class Solver:
    """Where and how the probe's designs live and are fitted (device, precisions, selection metric)."""

    device: torch.device
    dtype: torch.dtype
    store: torch.dtype
    chunk_rows: int | None
    offload: bool
    max_iter: int
    num_classes: int
    select: str

    def design(self, rows: torch.Tensor, scaler: Standardizer) -> Design:
        return Design(rows, scaler=scaler, device=self.device, dtype=self.dtype, store=self.store,
                      chunk_rows=self.chunk_rows, offload=self.offload)

    def path(self, Zf: Design, yf: torch.Tensor, Zv: Design, yv: torch.Tensor, *, on_fit=None,
             **stops: Any) -> PathState:
        """A C path fitting ``Zf`` (labels ``yf`` in [0, K)) scored on ``Zv``; ``stops`` override
        PathState's tol / rtol / max_iter."""
        cols, lut = model_columns(yf, self.num_classes)
        return PathState(Zf, lut[yf], Zv, yv, cols, self.num_classes, **{"max_iter": self.max_iter, **stops},
                         select=self.select, on_fit=on_fit)


def resolve_dtype(dtype: str, n: int, d: int) -> str:
    """``auto``: float64 for small problems (exact weak-C fits at negligible cost), else float32."""
    if dtype != "auto":
        return dtype
    return "float64" if n * d <= AUTO_FLOAT64_ELEMENTS else "float32"


@dataclass
class SearchSpec:
    """How C is chosen: fixed, or a grid / binary search with early-stop patience."""

    C: float | None
    Cs: Sequence[float] | None
    search: str
    patience: int | None

    def run(self, state: PathState | FoldedPath) -> None:
        run_search(state, C=self.C, Cs=self.Cs, search=self.search, patience=self.patience)


def choose_c(solver: Solver, Zf: Design, yf: torch.Tensor, Zv: Design, yv: torch.Tensor, *,
             spec: SearchSpec, show_progress: bool) -> PathState:
    """Step: the C path on the validation split (with a progress bar)."""
    total = n_fits(C=spec.C, Cs=spec.Cs, search=spec.search)
    with progress_bar(show_progress) as bar:
        task = bar.add_task("C path", total=total)
        state = solver.path(Zf, yf, Zv, yv, on_fit=lambda p: bar.update(
            task, advance=1, description=f"C path (C={p['C']:.2g})"))
        spec.run(state)
        bar.update(task, completed=total)
    return state


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
    folds = []
    for held in stratified_folds(y.cpu(), k=k, seed=seed):
        mask = torch.ones(y.numel(), dtype=torch.bool)
        mask[held] = False
        rows, held_d = mask.nonzero().flatten().to(Z.device), held.to(Z.device)
        folds.append(solver.path(Z.subset(rows), y[rows], Z.subset(held_d), y[held_d], tol=CV_TOL, rtol=CV_RTOL,
                                 max_iter=CV_MAX_ITER))
    cv = FoldedPath(folds)
    run_search(cv, C=None, Cs=None, search="binary", patience=1)
    return cv.best_c(), f"{k}-fold CV within the subset"


def label_curve(solver: Solver, splits: Splits, Zf: Design, Zv: Design, scaler: Standardizer, *,
                spec: SearchSpec, points: list, seeds: int, seed: int, main: tuple[float, LogReg, torch.Tensor],
                knn_temperature: float, with_knn: bool, show_progress: bool) -> dict:
    """Step: the label-efficiency points, each subset choosing C with its own labels, scored on test
    (else on val, with a warning: the full-split point chose its C on those rows)."""
    ev_name = "test" if splits.test is not None else "val"
    Ze = Zv if splits.test is None else solver.design(splits.test[0], scaler)
    ye = (splits.test[1] if splits.test is not None else splits.yv).to(solver.device)
    yf_d = splits.yf.to(solver.device)

    def linear(rows: torch.Tensor) -> tuple[float, float, str]:
        if rows.numel() == splits.yf.numel():  # the whole fit split: the main search chose its C
            c, model, cols = main
            rule = "validation split"
        else:
            rows_d = rows.to(solver.device)
            Zs, ys = Zf.subset(rows_d), yf_d[rows_d]
            c, rule = subset_c(solver, Zs, ys, spec=spec, seed=seed)
            cols, lut = model_columns(ys, solver.num_classes)
            model = fit(Zs, lut[ys], C=c, max_iter=solver.max_iter, num_classes=cols.numel())
        return float((cols[Ze.scores(model).argmax(1)] == ye).float().mean()), c, rule

    def knn(rows: torch.Tensor) -> float:
        Xe = splits.test[0] if splits.test is not None else splits.Xv
        votes = knn_votes(splits.Xf[rows], splits.yf[rows], Xe, ks=[_HEADLINE_K], num_classes=solver.num_classes,
                          temperature=knn_temperature, device=solver.device)[_HEADLINE_K]
        return float((votes.argmax(1) == ye).float().mean())

    n_runs = sum(1 if kind == "fraction" and v == 1 else seeds for kind, v in points)
    with progress_bar(show_progress) as bar:
        task = bar.add_task("label efficiency", total=n_runs)
        curve = label_efficiency(points, labels=splits.yf, seeds=seeds, seed=seed, linear=linear,
                                 knn=knn if with_knn else None, progress=lambda: bar.advance(task))
    if ev_name == "val":
        splits.warns.append("label efficiency scored on val (no --test): the full-split point chose C on "
                            "the same rows, so it is optimistic")
    return {"scored_on": ev_name, "knn_k": _HEADLINE_K, "points": curve,
            "C_selection": f"each subset by stratified k-fold CV on its own labels (k = min({CV_FOLDS}, smallest "
                           f"class), binary search over C); 1 label in a class: C = {FEW_SHOT_C:g}"}


def scored(scores: torch.Tensor, labels: torch.Tensor, *, num_classes: int, seed: int) -> dict:
    """Metrics of ``scores`` with bootstrap intervals of top-1 and balanced accuracy, and the predictions."""
    metrics = classification_metrics(scores, labels, num_classes=num_classes)
    pred = scores.argmax(1)
    metrics["ci"] = bootstrap_intervals(pred, labels, num_classes=num_classes, seed=seed)
    metrics["predictions"] = pred.cpu().tolist()
    return metrics


def refit_and_test(solver: Solver, splits: Splits, *, C: float, init: LogReg, standardize: bool, tol: float,
                   seed: int) -> tuple[LogReg, Standardizer, torch.Tensor, dict]:
    """Step: refit on train+val at the chosen C (λ uses the refit n), then touch the test set once."""
    scaler = Standardizer.fit(splits.Xall, on=standardize)
    Zall, yall = solver.design(splits.Xall, scaler), splits.yall.to(solver.device)
    cols, lut = model_columns(yall, splits.K)
    warm = init if cols.numel() == init.coef.shape[0] else None
    final = fit(Zall, lut[yall], C=C, init=warm, max_iter=solver.max_iter, tol=tol,
                num_classes=cols.numel())  # new data: curvature memory would mislead
    del Zall
    Xt, yt = splits.test
    logits = solver.design(Xt, scaler).scores(final)
    metrics = scored(_scores(logits, cols, splits.K), yt.to(solver.device), num_classes=splits.K, seed=seed)
    return final, scaler, cols, metrics


def knn_step(solver: Solver, splits: Splits, *, ks: list[int], temperature: float, seed: int) -> dict | None:
    """Step: kNN on L2-normalised raw features, val against the fit split and test against train+val.

    k is chosen on validation by the selection metric (ties → k = 20 as in DINO, then smaller k).
    """
    if not ks:
        return None
    by_k: dict[str, dict] = {str(k): {} for k in ks}
    val_score: dict[int, float] = {}
    votes_val, votes_test = knn_val_test(splits.Xf, splits.yf, splits.Xv, splits.yv,
                                         splits.test[0] if splits.test is not None else None, ks=ks,
                                         num_classes=splits.K, temperature=temperature, device=solver.device)
    for name, votes, yq in (("val", votes_val, splits.yv), ("test", votes_test, splits.test and splits.test[1])):
        if votes is None:
            continue
        yq_d = yq.to(solver.device)
        for k in ks:
            by_k[str(k)][name] = summary(scored(votes[k], yq_d, num_classes=splits.K, seed=seed))
            if name == "val":
                val_score[k] = selection_score(votes[k].argmax(1), yq_d, metric=solver.select,
                                               num_classes=splits.K)
    k_head = max(ks, key=lambda k: (val_score[k], k == _HEADLINE_K, -k))
    return {"k": k_head, "temperature": temperature, "selected_by": solver.select, **by_k[str(k_head)],
            "by_k": {k: {s: {kk: vv for kk, vv in v.items() if kk != "predictions"} for s, v in row.items()}
                     for k, row in by_k.items()}}


def probe(train: Source, *, val: Source | None = None, test: Source | None = None, C: float | None = None,
          Cs: Sequence[float] | None = None, search: str = "grid", val_fraction: float = 0.2,
          standardize: bool = True, knn_k: Sequence[int] = (10, 20, 200), knn_temperature: float = 0.07,
          fractions: Sequence[float] = (), shots: Sequence[int] = (), seeds: int = 3, seed: int = 0,
          select: str = "auto", device: str = "auto", dtype: str = "auto", feature_dtype: str = "float32",
          chunk_rows: int | None = None, max_iter: int = 1000, out: str | os.PathLike | None = None,
          patience: int | None = 5, tol: float = 1e-4, show_progress: bool = False) -> dict:
    """Linear probe + kNN: choose C on validation, refit on train+val, score test once.

    ``search="grid"`` walks ``Cs`` (default: 45 log-spaced in [1e-6, 1e5]) small → large with warm
    starts and stops after ``patience`` C's that beat neither the best val score nor the lowest val
    loss (``patience=None``: the whole grid); ``"binary"`` is CLIP's coarse-then-bisect search.
    ``C`` fixes it. ``select`` ranks C and kNN k by val ``top1`` or ``balanced`` accuracy (``auto``:
    balanced when the classes are imbalanced more than 2:1); ties go to the lower val loss, then the
    smaller C. Without a test set there is no refit: val metrics come from the search fit.
    ``knn_k=()`` skips kNN. ``fractions``/``shots`` add a label-efficiency curve (``seeds`` draws per
    point, each choosing C by k-fold CV within its own labels) scored on test (else val). ``dtype``:
    solver precision (``auto``: float64 for small problems; TF32 is always off); ``feature_dtype=
    "float16"`` halves the stored features; ``chunk_rows`` streams the loss and gradient in row
    blocks. ``tol`` bounds the refit's largest gradient entry (sklearn's default); search fits use
    ``search.SEARCH_TOL`` and a relative stop. ``out`` receives report.json, per-class CSVs, plots
    (with matplotlib) and probe.safetensors.
    """
    t0 = time.perf_counter()
    _check_args(C, Cs, search, val_fraction, knn_k, knn_temperature, dtype, feature_dtype, select)
    points = parse_points(fractions, shots)
    if points and seeds < 1:  # before the C search, not after it
        raise SSLProbeError(f"--seeds must be ≥ 1 (got {seeds})")
    sets = {name: None if x is None else as_feature_set(x)
            for name, x in (("train", train), ("val", val), ("test", test))}
    check_widths(sets)
    splits = make_splits(sets, val_fraction=val_fraction, seed=seed)
    dev = pick_device(device)
    chosen = resolve_select(select, splits.yf)
    dtype = resolve_dtype(dtype, splits.Xf.shape[0], splits.X.shape[1])
    store = _DTYPES[feature_dtype]
    solver = Solver(dev, _DTYPES[dtype], store, chunk_rows, _offload(*splits.X.shape, store, dev), max_iter,
                    splits.K, chosen["metric"])
    spec = SearchSpec(C, Cs, search, patience)
    marks = {"load": time.perf_counter() - t0}

    scale_f = Standardizer.fit(splits.Xf, on=standardize)
    Zf, Zv, yv_d = solver.design(splits.Xf, scale_f), solver.design(splits.Xv, scale_f), splits.yv.to(dev)
    state = choose_c(solver, Zf, splits.yf.to(dev), Zv, yv_d, spec=spec, show_progress=show_progress)
    C_best, m_best = state.best()
    result: dict[str, Any] = {"C": C_best, "val": scored(_scores(Zv.scores(m_best), state.cols, splits.K), yv_d,
                                                          num_classes=splits.K, seed=seed)}
    curve = state.sorted_curve()
    unconverged = [p["C"] for p in curve if not p["converged"] or p["floor_limited"]]
    marks["search"] = time.perf_counter() - t0 - sum(marks.values())

    ks = sorted({int(k) for k in knn_k})
    if points:  # before the refit: the curve trains on fit-split subsets with the fit statistics
        result["label_efficiency"] = label_curve(solver, splits, Zf, Zv, scale_f, spec=spec, points=points,
                                                 seeds=seeds, seed=seed, main=(C_best, m_best, state.cols),
                                                 knn_temperature=knn_temperature, with_knn=bool(ks),
                                                 show_progress=show_progress)
        marks["label_efficiency"] = time.perf_counter() - t0 - sum(marks.values())
    del Zf, Zv, state  # free them: the refit needs the memory more (big feature sets on a GPU)

    final, scaler, final_cols = m_best, scale_f, torch.unique(splits.yf)
    if splits.test is not None:
        final, scaler, final_cols, result["test"] = refit_and_test(solver, splits, C=C_best, init=m_best,
                                                                   standardize=standardize, tol=tol, seed=seed)
        result["refit_iters"] = final.n_iter
        marks["refit"] = time.perf_counter() - t0 - sum(marks.values())
    result["knn"] = knn_step(solver, splits, ks=ks, temperature=knn_temperature, seed=seed)
    if ks and ks[-1] > splits.Xf.shape[0]:
        splits.warns.append(f"kNN: k > {splits.Xf.shape[0]} train rows was clipped to the train size")
    if unconverged:
        splits.warns.append(f"{len(unconverged)} of {len(curve)} C's of the path were resolved only to the {dtype} "
                            f"precision floor (C ≥ {min(unconverged):.3g}); --float64 resolves them")
    marks["knn"] = time.perf_counter() - t0 - sum(marks.values())
    result.update({
        "val_curve": curve, "search": "fixed" if C is not None else search,
        "selection": {**chosen, "tie_break": "lower validation loss, then smaller C"},
        "classes": splits.names, "n_train": int(splits.X.shape[0]), "n_fit": int(splits.Xf.shape[0]),
        "n_val": int(splits.Xv.shape[0]), "dim": int(splits.X.shape[1]), "standardize": standardize,
        "val_source": "given" if splits.val_given else f"holdout {val_fraction:g} (seed {seed})",
        "device": str(dev), "dtype": dtype, "feature_dtype": feature_dtype, "chunk_rows": chunk_rows,
        "seconds": time.perf_counter() - t0, "timing": marks, "warnings": splits.warns,
        "inputs": {k: (v.source if v is not None else None) for k, v in sets.items()},
        "test_labels": splits.test[1].tolist() if splits.test is not None else None,
        "test_paths": _labelled_paths(sets["test"]),
        "manifests": {k: _manifest_summary(v.manifest) for k, v in sets.items() if v is not None and v.manifest},
    })
    if out is not None:
        from sslprobe.probing.predict import ProbeModel

        model = ProbeModel.from_fit(final, scaler, classes=[splits.names[i] for i in final_cols.tolist()], C=C_best)
        result["files"] = write_reports(result, out, probe_model=model)
    return result


def _labelled_paths(fs: FeatureSet | None) -> list[str] | None:
    """Row paths of the labelled rows of ``fs`` (the rows the test metrics score), if it has paths."""
    if fs is None or not fs.paths:
        return None
    return [p for p, y in zip(fs.paths, fs.labels.tolist()) if y >= 0]


def _manifest_summary(manifest: Mapping[str, Any]) -> dict:
    """The feature manifest without its per-row lists (paths can be millions of entries)."""
    return {k: (f"<{len(v)} entries>" if k == "paths" and isinstance(v, list) else v) for k, v in manifest.items()}


def resolve_sets(path: str | os.PathLike) -> dict[str, Path | None]:
    """A feature dir → {"train": it}; a dir holding train/ (val/, test/) feature dirs → each of them."""
    p = Path(path)
    if not p.exists():
        raise SSLProbeError(f"'{p}' does not exist; pass a feature dir from `sslprobe extract` or a folder "
                            "with train/ and test/ feature dirs")
    if (p / "train").is_dir():
        return {s: (p / s if (p / s).exists() else None) for s in ("train", "val", "test")}
    return {"train": p, "val": None, "test": None}


def compare(sets: Mapping[str, Mapping[str, Source | None]], *, out: str | os.PathLike | None = None,
            **probe_kwargs: Any) -> list[tuple[str, dict]]:
    """Probe several feature sets ({name: {"train": …, "val": …, "test": …}}) with one protocol.

    Each gets its own report dir ``out/NAME``; ``out/comparison.json`` holds the headline rows and
    the paired tests between every two sets scored on the same test images (``paired_tests``).
    """
    from sslprobe.fileio import write_json
    from sslprobe.probing.pairs import paired_tests

    if not sets:
        raise SSLProbeError("nothing to compare; pass NAME=FEATURES pairs")
    rows = []
    for name, s in sets.items():
        r = probe(s["train"], val=s.get("val"), test=s.get("test"),
                  out=None if out is None else Path(out) / name, **probe_kwargs)
        rows.append((name, r))
    pairs = paired_tests(rows, seed=probe_kwargs.get("seed", 0))
    for _, r in rows:
        r["paired_tests"] = pairs
    if out is not None:
        write_json(Path(out) / "comparison.json",
                   {"sets": {name: summary({k: v for k, v in r.items() if k not in ("val_curve", "paired_tests")})
                             for name, r in rows}, "paired_tests": pairs})
    return rows


__all__ = ["DEFAULT_CS", "FeatureSet", "LogReg", "compare", "fit_logistic", "knn_votes", "load_features", "probe",
           "resolve_sets", "stratified_split"]
