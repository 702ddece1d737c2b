"""The linear evaluation protocol on frozen features: C chosen on validation, refit, kNN, curves.

The protocol of the self-supervised literature (BYOL §4.1, SimCLR B.5; docs/probe.md): features
standardised with train statistics, multinomial logistic regression with an L2 penalty chosen on a
validation split (45 log-spaced C in [1e-6, 1e5], or CLIP's binary search), refit on train+val,
test accuracy touched once, with a bootstrap interval; kNN as in DINO; optional label-efficiency
curves whose points choose C with their own labels only. ``probe`` is a sequence of named steps,
each from the module of its concept: splits (holdout.py) → choose C (search.py) → label curve
(labeleff.py) → refit and test → kNN → result; ``compare`` (compare.py) runs it on several sets.
"""
from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from sslprobe.config.probe import ProbeConfig
from sslprobe.knn import HEADLINE_K, knn_val_test
from sslprobe.probing.compute import Solver
from sslprobe.probing.features import FeatureSet, as_feature_set, check_widths, labelled_paths, manifest_summary
from sslprobe.probing.holdout import Splits, make_splits
from sslprobe.probing.labeleff import CurvePlan, label_curve
from sslprobe.probing.metrics import class_imbalance, scored, selection_score
from sslprobe.probing.predict import ProbeModel
from sslprobe.probing.report import write_reports
from sslprobe.probing.search import PathState, SearchSpec
from sslprobe.probing.solver import Design, LogReg, Standardizer, class_scores, fit, model_columns
from sslprobe.results import CPoint, KnnResult, KnnSplits, Metrics, ProbeCurve, ProbeResult, SelectionInfo
from sslprobe.runtime.progress import progress_bar
from sslprobe.runtime.timing import PhaseTimer

Source = str | os.PathLike | FeatureSet


def _load(train: Source, val: Source | None, test: Source | None) -> dict[str, FeatureSet | None]:
    """The three sets as validated FeatureSets (val and test may be absent), all of one feature width."""
    sets = {name: None if x is None else as_feature_set(x) for name, x in (("train", train), ("val", val),
                                                                          ("test", test))}
    check_widths(sets)
    return sets


@dataclass(frozen=True)
class Fitted:
    """A fitted linear probe in the protocol's terms: the model, the standardisation it saw, its columns' classes."""

    model: LogReg
    scaler: Standardizer
    cols: torch.Tensor  # (K_model,) the class of each model column

    def probe_model(self, names: Sequence[str], *, C: float) -> ProbeModel:
        """The fit as probe.safetensors holds it, its columns named."""
        return ProbeModel.from_fit(self.model, self.scaler, classes=[names[i] for i in self.cols.tolist()], C=C)


@dataclass(frozen=True)
class Chosen:
    """What the fit / validation split decided: C and its model, the val metrics, the C path, the label curve."""

    C: float
    fitted: Fitted
    val: Metrics
    path: list[CPoint]  # every fitted C, sorted by C
    label_efficiency: ProbeCurve | None


def _advance(bar: Any, task: int, point: dict) -> None:
    bar.update(task, advance=1, description=f"C path (C={point['C']:.2g})")


def choose_c(solver: Solver, Zf: Design, yf: torch.Tensor, Zv: Design, yv: torch.Tensor, *,
             spec: SearchSpec, show_progress: bool) -> PathState:
    """Step: the C path on the validation split (with a progress bar)."""
    total = spec.n_fits()
    with progress_bar(show_progress) as bar:
        task = bar.add_task("C path", total=total)
        state = solver.path(Zf, yf, Zv, yv, on_fit=functools.partial(_advance, bar, task))
        spec.run(state)
        bar.update(task, completed=total)
    return state


def on_validation(solver: Solver, splits: Splits, *, spec: SearchSpec, standardize: bool, plan: CurvePlan | None,
                  seed: int, timer: PhaseTimer, show_progress: bool) -> Chosen:
    """Steps on the fit / validation split: choose C and score val, then the label curve on the same designs.

    The designs live only in this call: the refit after it needs the memory (big feature sets on a GPU).
    """
    with timer.phase("search"):
        scaler = Standardizer.fit(splits.Xf, on=standardize)
        Zf, Zv, yv = solver.design(splits.Xf, scaler), solver.design(splits.Xv, scaler), splits.yv.to(solver.device)
        state = choose_c(solver, Zf, splits.yf.to(solver.device), Zv, yv, spec=spec, show_progress=show_progress)
        C, model = state.best()
        val = scored(class_scores(Zv.scores(model), state.cols, splits.K), yv, num_classes=splits.K, seed=seed)
    curve = None
    if plan is not None:  # before the refit: the curve trains on fit-split subsets with the fit statistics
        with timer.phase("label_efficiency"):
            curve = label_curve(solver, splits, Zf, Zv, scaler, spec=spec, plan=plan, main=state,
                                show_progress=show_progress)
    return Chosen(C, Fitted(model, scaler, state.cols), val, [CPoint.from_json(p) for p in state.sorted_curve()],
                  None if curve is None else ProbeCurve.from_json(curve))


def refit(solver: Solver, splits: Splits, *, C: float, init: Fitted, standardize: bool, tol: float) -> Fitted:
    """Step: refit on train+val at the chosen C (λ uses the refit n), warm-started from the validation fit."""
    scaler = Standardizer.fit(splits.Xall, on=standardize)
    yall = splits.yall.to(solver.device)
    cols, lut = model_columns(yall, splits.K)
    warm = init.model if cols.numel() == init.model.coef.shape[0] else None
    model = fit(solver.design(splits.Xall, scaler), lut[yall], C=C, init=warm, max_iter=solver.max_iter, tol=tol,
                num_classes=cols.numel())  # no curvature memory: pairs from other data would mislead
    return Fitted(model, scaler, cols)


def score_test(solver: Solver, splits: Splits, fitted: Fitted, *, seed: int) -> Metrics:
    """Step: the test set, touched once."""
    Xt, yt = splits.test
    logits = solver.design(Xt, fitted.scaler).scores(fitted.model)
    return scored(class_scores(logits, fitted.cols, splits.K), yt.to(solver.device), num_classes=splits.K, seed=seed)


def knn_step(solver: Solver, splits: Splits, *, ks: list[int], temperature: float, seed: int) -> KnnResult | None:
    """Step: kNN on L2-normalised raw features, val against the fit split and test against train+val.

    k is chosen on validation by the declared metric (ties → k = 20 as in DINO, then smaller k).
    """
    if not ks:
        return None
    by_k: dict[str, dict[str, Metrics]] = {str(k): {} for k in ks}
    val_score: dict[int, float] = {}
    votes_val, votes_test = knn_val_test(splits.Xf, splits.yf, splits.Xv, splits.yv,
                                         splits.test[0] if splits.test is not None else None, ks=ks,
                                         num_classes=splits.K, temperature=temperature, device=solver.device)
    for name, votes, yq in (("val", votes_val, splits.yv), ("test", votes_test, splits.test and splits.test[1])):
        if votes is None:
            continue
        yq_d = yq.to(solver.device)
        for k in ks:
            by_k[str(k)][name] = scored(votes[k], yq_d, num_classes=splits.K, seed=seed).summary()
            if name == "val":
                val_score[k] = selection_score(votes[k].argmax(1), yq_d, metric=solver.metric,
                                               num_classes=splits.K)
    if ks[-1] > splits.Xf.shape[0]:
        splits.warns.append(f"kNN: k > {splits.Xf.shape[0]} train rows was clipped to the train size")
    k_head = max(ks, key=lambda k: (val_score[k], k == HEADLINE_K, -k))
    return KnnResult(k=k_head, temperature=temperature, selected_by=solver.metric, **by_k[str(k_head)],
                     by_k={k: KnnSplits(**row) for k, row in by_k.items()})


def _warn_unconverged(path: list[CPoint], dtype: str, warns: list[str]) -> None:
    """C's of the path whose fit stopped at the precision floor (float32 at weak regularisation)."""
    unconverged = [p.C for p in path if not p.converged or p.floor_limited]
    if unconverged:
        warns.append(f"{len(unconverged)} of {len(path)} C's of the path were resolved only to the {dtype} "
                     f"precision floor (C ≥ {min(unconverged):.3g}); --float64 resolves them")


def _record(chosen: Chosen, splits: Splits, sets: Mapping[str, FeatureSet | None], solver: Solver, *,
            search: str, standardize: bool, val_fraction: float, seed: int,
            feature_dtype: str, chunk_rows: int | None, timer: PhaseTimer) -> dict[str, Any]:
    """The result's bookkeeping (ProbeResult's fields): the C path, how C was selected, the data, the machine
    and the timing."""
    return {
        "val_curve": chosen.path, "search": search,
        "selection": SelectionInfo(metric=solver.metric, imbalance=class_imbalance(splits.yf),
                                   tie_break="lower validation loss, then smaller C"),
        "classes": splits.names, "n_train": int(splits.X.shape[0]), "n_fit": int(splits.Xf.shape[0]),
        "n_val": int(splits.Xv.shape[0]), "dim": int(splits.X.shape[1]), "standardize": standardize,
        "val_source": "given" if splits.val_given else f"holdout {val_fraction:g} (seed {seed})",
        "device": str(solver.device), "dtype": solver.dtype_name, "feature_dtype": feature_dtype,
        "chunk_rows": chunk_rows, "seconds": timer.total(), "timing": timer.seconds, "warnings": splits.warns,
        "inputs": {k: (v.source if v is not None else None) for k, v in sets.items()},
        "test_labels": splits.test[1].tolist() if splits.test is not None else None,
        "test_paths": labelled_paths(sets["test"]),
        "manifests": {k: manifest_summary(v.manifest) for k, v in sets.items() if v is not None and v.manifest},
    }


def probe(config: ProbeConfig | Source, /, *, show_progress: bool = False, **options: Any) -> ProbeResult:
    """Linear probe + kNN: choose C on validation, refit on train+val, score test once.

    ``config``: a :class:`~sslprobe.config.probe.ProbeConfig` (the feature sets and the
    :class:`~sslprobe.config.probe.ProbeProtocol`), or the training features with the options as keywords.
    ``search="grid"`` walks ``Cs`` (default: 45 log-spaced in [1e-6, 1e5]) small → large with warm
    starts and stops after ``patience`` C's that beat neither the best val score nor the lowest val
    loss (``patience=None``: the whole grid); ``"binary"`` is CLIP's coarse-then-bisect search.
    ``C`` fixes it. ``metric`` (``balanced``, the default, ``top1`` or ``macro-f1``) ranks C and kNN k on
    val and is the label curve's metric; ties go to the lower val loss, then the smaller C. Without a test
    set there is no refit: val metrics come from the search fit.
    ``knn_k=()`` skips kNN. ``fractions``/``shots`` add a label-efficiency curve (``seeds`` draws per
    point, each choosing C by k-fold CV within its own labels) scored on test (else val). ``dtype``:
    solver precision (``auto``: float64 for small problems; TF32 is always off); ``feature_dtype=
    "float16"`` halves the stored features; ``chunk_rows`` streams the loss and gradient in row
    blocks. ``tol`` bounds the refit's largest gradient entry (sklearn's default); search fits use
    ``search.SEARCH_TOL`` and a relative stop. ``out`` receives report.json, per-class CSVs, plots
    (with matplotlib) and probe.safetensors.
    """
    c = ProbeConfig.of(config, **options)
    p = c.protocol
    C, seed, knn_temperature, standardize, feature_dtype = p.C, p.seed, p.knn_temperature, p.standardize, \
        p.feature_dtype
    timer = PhaseTimer()
    with timer.phase("load"):
        ks = sorted({int(k) for k in p.knn_k})
        plan = CurvePlan.from_args(fractions=p.fractions, shots=p.shots, seeds=p.seeds, seed=seed,
                                   knn_temperature=knn_temperature if ks else None)
        sets = _load(c.train, c.val, c.test)
        splits = make_splits(sets, val_fraction=p.val_fraction, seed=seed)
        solver = Solver.for_splits(splits, device=p.device, dtype=p.dtype, feature_dtype=feature_dtype,
                                   chunk_rows=p.chunk_rows, max_iter=p.max_iter, metric=p.metric)
    chosen = on_validation(solver, splits, spec=SearchSpec(C, p.Cs, p.search, p.patience), standardize=standardize,
                           plan=plan, seed=seed, timer=timer, show_progress=show_progress)
    final, test, refit_iters = chosen.fitted, None, None  # without a test set there is no refit
    if splits.test is not None:
        with timer.phase("refit"):
            final = refit(solver, splits, C=chosen.C, init=chosen.fitted, standardize=standardize, tol=p.tol)
            test, refit_iters = score_test(solver, splits, final, seed=seed), final.model.n_iter
    with timer.phase("knn"):
        knn = knn_step(solver, splits, ks=ks, temperature=knn_temperature, seed=seed)
    _warn_unconverged(chosen.path, solver.dtype_name, splits.warns)
    result = ProbeResult(C=chosen.C, val=chosen.val, label_efficiency=chosen.label_efficiency, test=test,
                         refit_iters=refit_iters, knn=knn,
                         **_record(chosen, splits, sets, solver,
                                   search="fixed" if C is not None else p.search, standardize=standardize,
                                   val_fraction=p.val_fraction, seed=seed, feature_dtype=feature_dtype,
                                   chunk_rows=p.chunk_rows, timer=timer))
    if c.out is not None:
        result = write_reports(result, c.out, probe_model=final.probe_model(splits.names, C=chosen.C))
    return result


__all__ = ["Chosen", "Fitted", "Source", "choose_c", "knn_step", "on_validation", "probe", "refit",
           "score_test"]
