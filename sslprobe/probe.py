"""The linear evaluation protocol on frozen features: C chosen on validation, refit, kNN, curves.

The protocol of the self-supervised literature (BYOL §4.1, SimCLR B.5; DESIGN.md §3): features
standardised with train statistics, multinomial logistic regression with an L2 penalty chosen on a
validation split (45 log-spaced C in [1e-6, 1e5], or CLIP's binary search), refit on train+val,
test accuracy; kNN as in DINO; optional label-efficiency curves. The pieces live in solver.py
(L-BFGS), search.py (the C path), knn.py, labeleff.py and report.py; this module wires them.
"""
from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from sslprobe.errors import SSLProbeError
from sslprobe.features import (
    FeatureSet,
    align_labels,
    as_feature_set,
    check_widths,
    load_features,
)
from sslprobe.knn import knn_votes
from sslprobe.labeleff import class_ranks, label_efficiency, parse_points
from sslprobe.report import classification_metrics, summary, write_reports
from sslprobe.runtime import pick_device, progress_bar
from sslprobe.search import DEFAULT_CS, PathState, binary_search, grid_search
from sslprobe.solver import Design, LogReg, Standardizer, fit, fit_logistic

_HEADLINE_K = 20
_DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16}
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


def _offload(n: int, d: int, store: torch.dtype, dev: torch.device) -> bool:
    """Keep features in host memory (streamed per block) when they'd take over half the free GPU memory."""
    if dev.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(dev)
    return n * d * torch.finfo(store).bits // 8 > free // 2


def _check_args(C: float | None, Cs: Sequence[float] | None, search: str, val_fraction: float,
                knn_k: Sequence[int], knn_temperature: float, dtype: str, feature_dtype: str) -> None:
    if C is not None and not C > 0 or Cs is not None and (not Cs or min(Cs) <= 0):
        raise SSLProbeError("C values must be positive (e.g. --C 1.0)")
    if search not in ("grid", "binary"):
        raise SSLProbeError(f"unknown search '{search}'; use grid or binary")
    if not 0 < val_fraction < 1:
        raise SSLProbeError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if knn_k and min(knn_k) < 1 or not knn_temperature > 0:
        raise SSLProbeError("kNN needs k ≥ 1 and temperature > 0 (e.g. --knn-k 10 20 200 --knn-t 0.07)")
    if dtype not in ("float32", "float64"):
        raise SSLProbeError(f"compute dtype must be float32 or float64, got '{dtype}'")
    if feature_dtype not in ("float32", "float16"):
        raise SSLProbeError(f"feature storage dtype must be float32 or float16, got '{feature_dtype}'")


def probe(train: Source, *, val: Source | None = None, test: Source | None = None, C: float | None = None,
          Cs: Sequence[float] | None = None, search: str = "grid", val_fraction: float = 0.2,
          standardize: bool = True, knn_k: Sequence[int] = (10, 20, 200), knn_temperature: float = 0.07,
          fractions: Sequence[float] = (), shots: Sequence[int] = (), seeds: int = 3, seed: int = 0,
          device: str = "auto", dtype: str = "float32", feature_dtype: str = "float32",
          chunk_rows: int | None = None, max_iter: int = 1000, out: str | os.PathLike | None = None,
          patience: int | None = 5, tol: float = 1e-4, show_progress: bool = False) -> dict:
    """Linear probe + kNN: choose C on validation, refit on train+val, score test.

    ``search="grid"`` walks ``Cs`` (default: 45 log-spaced in [1e-6, 1e5]) small → large with warm
    starts and stops after ``patience`` C's that beat neither the best val top-1 nor the lowest val
    loss (``patience=None``: the whole grid); ``"binary"`` is CLIP's coarse-then-bisect search
    (its 2-decade coarse sweep stops one point past the peak unless ``patience=None``).
    ``C`` fixes it. Ties go to the smaller C. Without a test set there is no refit: val metrics come
    from the search fit at the chosen C. ``knn_k=()`` skips kNN (result["knn"] is None).
    ``fractions``/``shots`` add a label-efficiency curve (``seeds`` draws per point) scored on test
    (else val). ``dtype`` is the solver precision (TF32 is always off); ``feature_dtype="float16"``
    stores the standardised features at half the bytes; ``chunk_rows`` streams the loss and gradient
    in row blocks. ``tol`` bounds the refit's largest gradient entry (sklearn's default is the
    same); search fits stop at 10·tol as they only rank C's (on Fashion-MNIST pixels this moved val
    top-1 by ≤ 0.5 points near the optimum and cut the path's iterations ~3×).
    ``out`` receives report.json, per-class CSVs, plots (with matplotlib) and probe.safetensors.
    """
    t0 = time.perf_counter()
    _check_args(C, Cs, search, val_fraction, knn_k, knn_temperature, dtype, feature_dtype)
    points = parse_points(fractions, shots)
    if points and seeds < 1:  # before the C search, not after it
        raise SSLProbeError(f"--seeds must be ≥ 1 (got {seeds})")
    store, cdtype = _DTYPES[feature_dtype], _DTYPES[dtype]
    warns: list[str] = []
    sets = {name: None if x is None else as_feature_set(x)
            for name, x in (("train", train), ("val", val), ("test", test))}
    tr = sets["train"]
    check_widths(sets)
    dev = pick_device(device)

    names = list(tr.classes)
    labels = {k: align_labels(v, names) for k, v in sets.items() if v is not None}
    K = len(names)
    keep = labels["train"] >= 0
    if not keep.any():
        raise SSLProbeError(f"'{tr.source}' has no labeled rows; the probe needs labels (class folders)")
    if not keep.all():
        warns.append(f"train: ignored {int((~keep).sum())} unlabeled rows")
    X, y = tr.features[keep], labels["train"][keep]  # (N, D), (N,) in host memory
    if y.unique().numel() < 2:
        raise SSLProbeError(f"train needs at least 2 classes with labeled rows, found only "
                            f"'{names[int(y[0])]}'; add images of other classes")
    evals: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    if sets["val"] is None:
        fit_idx, val_idx = stratified_split(y, fraction=val_fraction, seed=seed)
        if val_idx.numel() == 0:
            raise SSLProbeError("train is too small for a validation hold-out (one row per class); "
                                "pass a separate val set or a fixed C")
        Xf, yf, evals["val"] = X[fit_idx], y[fit_idx], (X[val_idx], y[val_idx])
    else:
        Xf, yf = X, y
    for name in ("val", "test"):
        if name not in evals and sets[name] is not None:
            ye = labels[name]
            lab = ye >= 0
            if not lab.any():
                raise SSLProbeError(f"the {name} set has no labeled rows to score; label it or drop it")
            if not lab.all():
                warns.append(f"{name}: {int((~lab).sum())} unlabeled rows excluded from metrics")
            evals[name] = (sets[name].features[lab], ye[lab])
    Xv, yv = evals["val"]
    Xall, yall = torch.cat([Xf, Xv]), torch.cat([yf, yv])  # (N_fit + N_val, D)
    for name, ref in (("val", yf), ("test", yall)):
        unseen = ~torch.isin(evals[name][1], ref) if name in evals else torch.zeros(0, dtype=torch.bool)
        if unseen.any():
            which = sorted({names[i] for i in evals[name][1][unseen].tolist()})
            warns.append(f"{name}: {int(unseen.sum())} rows of classes not in train "
                         f"({', '.join(which[:5])}) count as errors")

    offload = _offload(X.shape[0], X.shape[1], store, dev)

    def design(rows: torch.Tensor, scaler: Standardizer) -> Design:
        return Design(rows, scaler=scaler, device=dev, dtype=cdtype, store=store, chunk_rows=chunk_rows,
                      offload=offload)

    marks = {"load": time.perf_counter() - t0}
    scale_f = Standardizer.fit(Xf, on=standardize)
    Zf, Zv = design(Xf, scale_f), design(Xv, scale_f)
    yf_d, yv_d = yf.to(dev), yv.to(dev)
    cols = torch.unique(yf_d)  # model columns = classes the fit split has; others score -inf

    def new_path(Z: Design, yz: torch.Tensor, on_fit=None) -> PathState:
        c = torch.unique(yz)
        lut = torch.full((K,), -1, dtype=torch.long, device=dev)
        lut[c] = torch.arange(c.numel(), device=dev)
        return PathState(Z, lut[yz], Zv, yv_d, c, K, max_iter, 10 * tol, on_fit=on_fit)

    def run_search(state: PathState) -> None:
        if C is not None:
            state.evaluate(float(C))
        elif search == "binary":
            binary_search(state, patience=None if patience is None else 1)
        else:
            grid_search(state, Cs or DEFAULT_CS, patience=patience)

    n_fits = 1 if C is not None else len(Cs or DEFAULT_CS) if search == "grid" else 12  # binary: ~12
    with progress_bar(show_progress) as bar:
        task = bar.add_task("C path", total=n_fits)
        state = new_path(Zf, yf_d, on_fit=lambda p: bar.update(task, advance=1, description=f"C path (C={p['C']:.2g})"))
        run_search(state)
        bar.update(task, completed=n_fits)
    C_best, m_best = state.best()
    result: dict[str, Any] = {"C": C_best}
    result["val"] = classification_metrics(_scores(Zv.scores(m_best), cols, K), yv_d, num_classes=K)
    curve = state.sorted_curve()
    marks["search"] = time.perf_counter() - t0 - sum(marks.values())

    ks = sorted({int(k) for k in knn_k})
    if points:  # before the refit: the curve trains on fit-split subsets with the fit statistics
        ev_name = "test" if "test" in evals else "val"
        Ze = Zv if ev_name == "val" else design(evals["test"][0], scale_f)
        ye_d = evals[ev_name][1].to(dev)

        def linear(rows: torch.Tensor) -> tuple[float, float]:
            if rows.numel() == yf.numel():  # the whole split: the main search already did this
                c, model, cs = C_best, m_best, cols
            else:
                rows_d = rows.to(dev)
                sub = new_path(Zf.subset(rows_d), yf_d[rows_d])
                run_search(sub)
                (c, model), cs = sub.best(), sub.cols
            return float((cs[Ze.scores(model).argmax(1)] == ye_d).float().mean()), c

        def knn(rows: torch.Tensor) -> float:
            votes = knn_votes(Xf[rows], yf[rows], evals[ev_name][0], ks=[_HEADLINE_K], num_classes=K,
                              temperature=knn_temperature, device=dev)[_HEADLINE_K]
            return float((votes.argmax(1) == ye_d).float().mean())

        n_runs = sum(1 if kind == "fraction" and v == 1 else seeds for kind, v in points)
        with progress_bar(show_progress) as bar:
            task = bar.add_task("label efficiency", total=n_runs)
            curve_le = label_efficiency(points, labels=yf, seeds=seeds, seed=seed, linear=linear,
                                        knn=knn if ks else None, progress=lambda: bar.advance(task))
        result["label_efficiency"] = {"scored_on": ev_name, "knn_k": _HEADLINE_K, "points": curve_le}
        if ev_name == "val":
            warns.append("label efficiency scored on val (no --test): the same rows chose C, so it is optimistic")
        del Ze
        marks["label_efficiency"] = time.perf_counter() - t0 - sum(marks.values())
    Zv = Zf = state = None  # free them: the refit needs the memory more (big feature sets on a GPU)

    final, scaler, final_cols = m_best, scale_f, cols
    if "test" in evals:  # refit on train+val at the chosen C (λ uses the refit n)
        scaler = Standardizer.fit(Xall, on=standardize)
        Zall, yall_d = design(Xall, scaler), yall.to(dev)
        final_cols = torch.unique(yall_d)
        lut = torch.full((K,), -1, dtype=torch.long, device=dev)
        lut[final_cols] = torch.arange(final_cols.numel(), device=dev)
        init = m_best if final_cols.numel() == cols.numel() else None
        final = fit(Zall, lut[yall_d], C=C_best, init=init, max_iter=max_iter, tol=tol,
                    num_classes=final_cols.numel())  # new data: curvature memory would mislead
        del Zall
        Xt, yt = evals["test"]
        result["test"] = classification_metrics(_scores(design(Xt, scaler).scores(final), final_cols, K),
                                                yt.to(dev), num_classes=K)
        result["refit_iters"] = final.n_iter
        marks["refit"] = time.perf_counter() - t0 - sum(marks.values())

    # kNN on L2-normalised raw features: val against the fit split, test against train+val
    result["knn"] = None
    by_k: dict[str, dict] = {str(k): {} for k in ks}
    for name, bank, bank_y in (("val", Xf, yf), ("test", Xall, yall)):
        if name in evals and ks:
            votes = knn_votes(bank, bank_y, evals[name][0], ks=ks, num_classes=K, temperature=knn_temperature,
                              device=dev)
            for k in ks:
                by_k[str(k)][name] = summary(classification_metrics(votes[k], evals[name][1].to(dev), num_classes=K))
    if ks:  # headline k = 20 as in DINO, else the best on val
        k_head = _HEADLINE_K if _HEADLINE_K in ks else max(ks, key=lambda k: (by_k[str(k)]["val"]["top1"], -k))
        result["knn"] = {"k": k_head, "temperature": knn_temperature, **by_k[str(k_head)], "by_k": by_k}
        if ks[-1] > Xf.shape[0]:
            warns.append(f"kNN: k > {Xf.shape[0]} train rows was clipped to the train size")
    marks["knn"] = time.perf_counter() - t0 - sum(marks.values())

    result.update({
        "val_curve": curve, "search": "fixed" if C is not None else search,
        "classes": names, "n_train": int(X.shape[0]), "n_fit": int(Xf.shape[0]),
        "n_val": int(Xv.shape[0]), "dim": int(X.shape[1]), "standardize": standardize,
        "val_source": "given" if sets["val"] is not None else f"holdout {val_fraction:g} (seed {seed})",
        "device": str(dev), "dtype": dtype, "feature_dtype": feature_dtype, "chunk_rows": chunk_rows,
        "seconds": time.perf_counter() - t0, "timing": marks, "warnings": warns,
        "inputs": {k: (v.source if v is not None else None) for k, v in sets.items()},
        "manifests": {k: _manifest_summary(v.manifest) for k, v in sets.items() if v is not None and v.manifest},
    })
    if out is not None:
        from sslprobe.predict import ProbeModel

        model = ProbeModel.from_fit(final, scaler, classes=[names[i] for i in final_cols.tolist()], C=C_best)
        result["files"] = write_reports(result, out, probe_model=model)
    return result


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

    Each gets its own report dir ``out/NAME``; ``out/comparison.json`` holds the headline rows.
    """
    from sslprobe.fileio import write_json

    if not sets:
        raise SSLProbeError("nothing to compare; pass NAME=FEATURES pairs")
    rows = []
    for name, s in sets.items():
        r = probe(s["train"], val=s.get("val"), test=s.get("test"),
                  out=None if out is None else Path(out) / name, **probe_kwargs)
        rows.append((name, r))
    if out is not None:
        write_json(Path(out) / "comparison.json", {name: summary({k: v for k, v in r.items() if k != "val_curve"})
                                                   for name, r in rows})
    return rows


__all__ = ["DEFAULT_CS", "FeatureSet", "LogReg", "compare", "fit_logistic", "knn_votes", "load_features", "probe",
           "resolve_sets", "stratified_split"]
