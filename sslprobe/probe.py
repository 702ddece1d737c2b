"""Linear probe (L-BFGS logistic regression over a C path) and kNN on frozen features.

The linear evaluation protocol of the self-supervised literature (BYOL §4.1, SimCLR B.5): features
standardised with train statistics, multinomial logistic regression with an L2 penalty chosen on a
validation split over 45 log-spaced C in [1e-6, 1e5], refit on train+val, test accuracy. kNN
follows DINO (Caron et al. 2021): cosine similarity, votes weighted by exp(sim / T).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from sslprobe.errors import SSLProbeError
from sslprobe.report import classification_metrics, summary, write_json
from sslprobe.runtime import pick_device

DEFAULT_CS: tuple[float, ...] = tuple(10.0 ** (-6 + 11 * i / 44) for i in range(45))
_HEADLINE_K = 20


@dataclass(frozen=True, eq=False)
class FeatureSet:
    """Cached embeddings with labels (-1 = unlabeled) and class names, as ``extract`` writes them."""

    features: torch.Tensor  # (N, D) float32
    labels: torch.Tensor  # (N,) int64
    classes: tuple[str, ...]
    paths: tuple[str, ...] | None = None
    source: str = "<tensors>"
    manifest: dict = field(default_factory=dict)

    @classmethod
    def from_arrays(cls, features: Any, labels: Any, *, classes: Sequence[str] | None = None,
                    paths: Sequence[str] | None = None, source: str = "<arrays>") -> FeatureSet:
        """Validate numpy arrays or tensors into a FeatureSet (float32 features, int64 labels)."""
        return _validated(torch.as_tensor(features), torch.as_tensor(labels), classes, paths, source, {})


def _validated(features: torch.Tensor, labels: torch.Tensor, classes: Sequence[str] | None,
               paths: Sequence[str] | None, source: str, manifest: dict) -> FeatureSet:
    if features.ndim != 2 or features.shape[0] == 0:
        raise SSLProbeError(f"'{source}': features must be a non-empty (N, D) matrix, got shape "
                            f"{tuple(features.shape)}; re-extract the feature set")
    if labels.ndim != 1 or labels.shape[0] != features.shape[0]:
        raise SSLProbeError(f"'{source}': {features.shape[0]} feature rows but labels of shape "
                            f"{tuple(labels.shape)}; re-extract the feature set")
    features, labels = features.to(torch.float32).contiguous(), labels.to(torch.int64)
    bad = ~torch.isfinite(features).all(1)
    if bad.any():
        first = f" (first: {paths[int(bad.nonzero()[0])]})" if paths else ""
        raise SSLProbeError(f"'{source}' contains NaN/inf features in {int(bad.sum())} rows{first}; "
                            "re-extract (check the backbone weights, or use --dtype float32)")
    top = int(labels.max())
    if classes is None:
        classes = [str(i) for i in range(top + 1)]
    if int(labels.min()) < -1 or top >= len(classes):
        raise SSLProbeError(f"'{source}': labels must lie in [-1, {len(classes)}) for {len(classes)} "
                            "classes; the labels and class list disagree, re-extract")
    if paths is not None and len(paths) != features.shape[0]:
        raise SSLProbeError(f"'{source}': manifest lists {len(paths)} paths for {features.shape[0]} "
                            "feature rows; re-extract the feature set")
    return FeatureSet(features, labels, tuple(str(c) for c in classes),
                      None if paths is None else tuple(paths), source, manifest)


def load_features(path: str | os.PathLike) -> FeatureSet:
    """Read an ``extract`` feature dir (features.safetensors + manifest.json) or a bare .safetensors.

    A bare file takes class names from its metadata key "classes" (a JSON list), else "0".."K-1".
    """
    from safetensors import SafetensorError, safe_open

    p = Path(path)
    if not p.exists():
        raise SSLProbeError(f"feature set '{p}' not found; run `sslprobe extract … --out {p}` first")
    manifest: dict = {}
    if p.is_dir():
        file = p / "features.safetensors"
        if not file.is_file():
            raise SSLProbeError(f"'{p}' has no features.safetensors; point at an `sslprobe extract` output dir")
        if (p / "manifest.json").is_file():
            try:
                manifest = json.loads((p / "manifest.json").read_text())
            except (OSError, ValueError) as e:
                raise SSLProbeError(f"cannot read '{p / 'manifest.json'}' ({e}); re-extract") from None
    elif p.suffix == ".safetensors":
        file = p
    else:
        raise SSLProbeError(f"'{p}' is neither a feature dir nor a .safetensors file")
    try:
        with safe_open(str(file), framework="pt", device="cpu") as f:
            missing = [k for k in ("features", "labels") if k not in set(f.keys())]
            if missing:
                raise SSLProbeError(f"'{file}' has no tensor(s) {', '.join(missing)}; "
                                    "expected 'features' (N, D) and 'labels' (N,), re-extract")
            features, labels, meta = f.get_tensor("features"), f.get_tensor("labels"), f.metadata() or {}
    except SSLProbeError:
        raise
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:  # corrupt or truncated file
        raise SSLProbeError(f"cannot read '{file}' ({e}); re-extract the feature set") from None
    classes = manifest.get("classes")
    if classes is None and "classes" in meta:
        try:
            classes = json.loads(meta["classes"])
        except ValueError:
            raise SSLProbeError(f"'{file}': metadata 'classes' is not a JSON list; re-extract") from None
    return _validated(features, labels, classes, manifest.get("paths"), str(p), manifest)


@contextlib.contextmanager
def _exact_fp32() -> Iterator[None]:
    """Full float32 matmuls inside (TF32's 10-bit mantissa stalls L-BFGS line searches at weak
    regularisation); only leaves not already exact are touched, and restored exactly after."""
    leaves = [torch.backends.cuda.matmul, torch.backends.mkldnn.matmul]
    inherit_exact = torch.backends.fp32_precision in ("none", "ieee")
    saved = []
    for leaf in leaves:
        prev = leaf.fp32_precision
        if prev == "ieee" or (prev == "none" and inherit_exact):
            continue
        saved.append((leaf, prev))
        leaf.fp32_precision = "ieee"
    try:
        yield
    finally:
        for leaf, prev in saved:
            leaf.fp32_precision = prev


@dataclass
class LogReg:
    """A fitted multinomial logistic regression; scores = X @ coef.T + intercept (sklearn's layout)."""

    weight: torch.Tensor  # (K, D + 1): coefficients, then the intercept as the last column
    objective: float
    n_iter: int

    @property
    def coef(self) -> torch.Tensor:  # (K, D)
        return self.weight[:, :-1]

    @property
    def intercept(self) -> torch.Tensor:  # (K,)
        return self.weight[:, -1]


def _with_ones(X: torch.Tensor, mean: torch.Tensor | None = None, std: torch.Tensor | None = None) -> torch.Tensor:
    """(N, D + 1) design matrix [(X − mean) / std, 1]: the bias rides along in every matmul."""
    X1 = X.new_ones(X.shape[0], X.shape[1] + 1)
    X1[:, :-1] = X if mean is None else (X - mean) / std
    return X1


def fit_logistic(X: torch.Tensor, y: torch.Tensor, *, C: float, init: LogReg | None = None,
                 max_iter: int = 1000, tol: float = 1e-4, num_classes: int | None = None) -> LogReg:
    """Minimise mean CE + λ/2‖W‖², λ = 1/(C·n), bias unpenalised, by full-batch L-BFGS; y in [0, K).

    Same minimiser as sklearn's LogisticRegression(C) (whose objective is C·n times this). For two
    classes sklearn fits one vector w = w1 − w2; the two-column model matches it with λ doubled.
    ``tol`` bounds the largest gradient entry, as sklearn's does.
    """
    return _fit(_with_ones(X), y, C=C, init=init, max_iter=max_iter, tol=tol, num_classes=num_classes)


def _lbfgs(fg, x: torch.Tensor, *, tol: float, max_iter: int, pairs: list, history: int = 50):
    """Minimise a smooth convex f with L-BFGS from x; ``fg(x) -> (f, grad)``; returns (x, f, iters).

    ``pairs`` [(s, y, 1/yᵀs)] is the curvature memory, updated in place. Steps meet Armijo or, once
    f changes drop below float32 resolution, Hager & Zhang's (2005) approximate Wolfe conditions
    (gradient only). Stops at max|grad| ≤ tol, or when no step helps (the float32 floor).
    """
    f, g = fg(x)
    it = 0
    while it < max_iter and float(g.abs().max()) > tol:
        q, alphas = g.neg(), []  # two-loop recursion; 0-dim tensors avoid a device sync per pair
        for s, y, rho in reversed(pairs):
            alphas.append(rho * s.dot(q))
            q.sub_(alphas[-1] * y)
        s, y, _ = pairs[-1] if pairs else (g, g, None)
        q.mul_(s.dot(y) / y.dot(y) if pairs else min(1.0, 1.0 / float(g.abs().sum())))
        for (s, y, rho), a in zip(pairs, reversed(alphas)):
            q.add_((a - rho * y.dot(q)) * s)
        gtd = float(g.dot(q))
        if gtd >= 0:  # memory from an earlier problem misleads: restart from steepest descent
            pairs.clear()
            continue
        t = 1.0
        for _ in range(30):
            x_new = x + t * q
            f_new, g_new = fg(x_new)
            slope = float(g_new.dot(q))
            if f_new <= f + 1e-4 * t * gtd or (f_new <= f + 1e-6 * abs(f) and 0.9 * gtd <= slope <= -0.8 * gtd):
                break
            t *= 0.5
        else:
            break  # no acceptable step: converged as far as float32 allows
        s, y = x_new - x, g_new - g
        ys = float(y.dot(s))
        if ys > 1e-12:
            pairs.append((s, y, 1.0 / ys))
            del pairs[:-history]
        x, f, g, it = x_new, f_new, g_new, it + 1
    return x, f, it


def _fit(X1: torch.Tensor, y: torch.Tensor, *, C: float, init: LogReg | None, max_iter: int, tol: float,
         num_classes: int | None, neg_yx: torch.Tensor | None = None, memory: dict | None = None) -> LogReg:
    """``fit_logistic`` on a ``_with_ones`` design matrix; ``neg_yx`` = −Yᵀ X1 / n if cached.

    Hand-written gradient, no autograd: softmaxᵀ X1 / n − Yᵀ X1 / n + λ[W, 0]. Weights are (K, D + 1)
    as MKL computes Pᵀ X several times faster than Xᵀ P for small K. ``memory`` carries L-BFGS pairs
    from call to call: a step along the C path changes the Hessian by exactly Δλ on the weights, so
    patched pairs stay valid (3-4× fewer iterations than restarting, on Fashion-MNIST pixels).
    """
    n, d1 = X1.shape
    k = int(y.max()) + 1 if num_classes is None else num_classes
    lam = (2.0 if k == 2 else 1.0) / (C * n)
    neg_yx = X1.new_zeros(k, d1).index_add_(0, y, X1).div_(-n) if neg_yx is None else neg_yx  # (K, D + 1)
    penalised = torch.cat([X1.new_ones(d1 - 1), X1.new_zeros(1)])  # the bias is not penalised
    y1 = y.view(-1, 1)

    def fg(w: torch.Tensor) -> tuple[float, torch.Tensor]:
        W = w.view(k, d1)
        logp = torch.log_softmax(X1 @ W.T, 1)  # (N, K); log-space keeps float32 CE exact near 0
        ce = -logp.gather(1, y1).sum() / n
        grad = torch.addcmul(neg_yx, W, penalised, value=lam).addmm_(logp.exp_().T, X1, alpha=1 / n)
        return float(ce + 0.5 * lam * W[:, :-1].pow(2).sum()), grad.view(-1)

    memory = {} if memory is None else memory
    pairs = memory.setdefault("pairs", [])
    if pairs and memory["lam"] != lam:
        mask = penalised.expand(k, d1).reshape(-1) * (lam - memory["lam"])
        patched = [(s, y + mask * s) for s, y, _ in pairs]
        pairs[:] = [(s, y, 1.0 / float(y.dot(s))) for s, y in patched if float(y.dot(s)) > 1e-12]
    memory["lam"] = lam
    w0 = init.weight.reshape(-1).clone() if init is not None else X1.new_zeros(k * d1)
    # a long history cuts evaluations ~30% vs scipy's m=10; cap its memory (2 vectors per pair) at 256 MiB
    history = int(min(50, max(10, 2**28 // (8 * w0.numel()))))
    with torch.no_grad(), _exact_fp32():
        w, objective, n_iter = _lbfgs(fg, w0, tol=tol, max_iter=max_iter, pairs=pairs, history=history)
    return LogReg(w.view(k, d1), objective, n_iter)


def stratified_split(labels: torch.Tensor, *, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (keep, held_out): round(fraction·n_c) of each class held out, at least one kept."""
    g = torch.Generator().manual_seed(seed)
    labels = labels.cpu()
    perm = torch.randperm(labels.numel(), generator=g)
    order = perm[torch.sort(labels[perm], stable=True).indices]  # grouped by class, random within
    counts = torch.bincount(labels)
    start = torch.cumsum(counts, 0) - counts
    sorted_labels = labels[order]
    rank = torch.arange(labels.numel()) - start[sorted_labels]
    n_out = torch.minimum(torch.floor(counts * fraction + 0.5).long(), (counts - 1).clamp_min(0))
    out = rank < n_out[sorted_labels]
    return order[~out].sort().values, order[out].sort().values


def knn_votes(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, *,
              ks: Sequence[int], num_classes: int, temperature: float = 0.07,
              chunk: int | None = None) -> dict[int, torch.Tensor]:
    """Temperature-weighted kNN votes (Nq, K) per k, cosine similarity on L2-normalised rows.

    One top-k at max(ks) serves every k. Queries go in chunks so the (Nq, M) similarity matrix is
    never built whole; the default chunk keeps a block under ~2^26 entries (and ≤ 1024 rows).
    """
    bank, queries = F.normalize(bank, dim=1), F.normalize(queries, dim=1)
    m = bank.shape[0]
    kmax = min(max(ks), m)
    chunk = chunk or max(1, min(1024, 2**26 // m))
    out = {k: queries.new_zeros(queries.shape[0], num_classes) for k in ks}
    with _exact_fp32():
        for s in range(0, queries.shape[0], chunk):
            sims, idx = (queries[s:s + chunk] @ bank.T).topk(kmax, dim=1)  # (c, kmax), best first
            weights, votes_for = (sims / temperature).exp_(), bank_labels[idx]
            for k in ks:
                kk = min(k, m)
                out[k][s:s + chunk].scatter_add_(1, votes_for[:, :kk], weights[:, :kk])
    return out


def _align(fs: FeatureSet, names: list[str]) -> torch.Tensor:
    """Labels of ``fs`` re-indexed into ``names`` (extended in place with unseen class names)."""
    generated = fs.classes == tuple(str(i) for i in range(len(fs.classes)))
    if generated and not set(fs.classes) & set(names):
        lut = list(range(len(fs.classes)))  # bare file without names: classes match by index
        names.extend(str(i) for i in range(len(names), len(fs.classes)))
    else:
        lut = []
        for c in fs.classes:
            if c not in names:
                names.append(c)
            lut.append(names.index(c))
    return torch.where(fs.labels >= 0, torch.tensor(lut + [-1])[fs.labels], -1)


def _standardizer(X: torch.Tensor, on: bool):
    """Function mapping features to design matrices, standardised with ``X``'s statistics."""
    if not on:
        return _with_ones
    var, mean = torch.var_mean(X.double(), dim=0, correction=0)  # float64: large means lose digits
    std = var.sqrt()
    # constant columns get scale 1 (like sklearn's StandardScaler) rather than a huge 1/ε
    std = torch.where(std > 1e-6 * (1 + mean.abs()), std, torch.ones_like(std))
    mean, std = mean.float(), std.float()
    return lambda Z: _with_ones(Z, mean, std)


def _scores(model: LogReg, X1: torch.Tensor, cols: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N, num_classes) logits from a design matrix; classes the model never saw get -inf."""
    out = X1.new_full((X1.shape[0], num_classes), -math.inf)
    out[:, cols] = X1 @ model.weight.T
    return out


def _lookup(cols: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(num_classes,) map from class index to model column (-1 for classes without a column)."""
    lut = torch.full((num_classes,), -1, dtype=torch.long, device=cols.device)
    lut[cols] = torch.arange(cols.numel(), device=cols.device)
    return lut


def _c_path(Zf: torch.Tensor, yf: torch.Tensor, Zv: torch.Tensor, yv: torch.Tensor, *, num_classes: int,
            grid: list[float], patience: int | None, max_iter: int,
            tol: float) -> tuple[float, LogReg, torch.Tensor, list[dict]]:
    """Warm-started fits from small to large C scored on val: (C, model, columns, curve)."""
    cols = torch.unique(yf)  # model columns = classes the fit split has; others score -inf
    lut = _lookup(cols, num_classes)
    yk, seen = lut[yf], torch.isin(yv, cols)
    neg_yx = Zf.new_zeros(cols.numel(), Zf.shape[1]).index_add_(0, yk, Zf).div_(-Zf.shape[0])
    curve, model, best, stale, best_loss, memory = [], None, None, 0, math.inf, {}
    for c in grid:
        model = _fit(Zf, yk, C=c, init=model, max_iter=max_iter, tol=tol, num_classes=cols.numel(),
                     neg_yx=neg_yx, memory=memory)
        logits = Zv @ model.weight.T  # (Nv, Kf)
        correct = int((cols[logits.argmax(1)] == yv).sum())
        loss = float(F.cross_entropy(logits[seen], lut[yv[seen]])) if seen.any() else math.inf
        curve.append({"C": c, "top1": correct / yv.numel(), "loss": loss if loss < math.inf else None,
                      "iters": model.n_iter})
        if best is None or correct > best[1]:
            best, stale = (c, correct, model), 0
        elif loss < best_loss:
            stale = 0  # val loss still falling: top-1 often dips at tiny C and recovers
        else:
            stale += 1  # past the optimum (or frozen: the warm start already meets tol)
        best_loss = min(best_loss, loss)
        if patience is not None and (stale >= patience or correct == yv.numel()):
            break  # later C's could at best tie, and ties go to the smaller C
    return best[0], best[2], cols, curve


def probe(train: str | os.PathLike | FeatureSet, *, val: str | os.PathLike | FeatureSet | None = None,
          test: str | os.PathLike | FeatureSet | None = None, C: float | None = None,
          Cs: Sequence[float] | None = None, val_fraction: float = 0.2, standardize: bool = True,
          knn_k: Sequence[int] = (10, 20, 200), knn_temperature: float = 0.07, seed: int = 0,
          device: str = "auto", max_iter: int = 1000, out: str | os.PathLike | None = None,
          patience: int | None = 5, tol: float = 1e-4) -> dict:
    """Linear probe + kNN: choose C on validation, refit on train+val, score test.

    The C path runs small → large C with warm starts and picks the best val top-1 (ties → smaller
    C). It stops early after ``patience`` consecutive C's that neither beat the best top-1 nor the
    lowest val loss so far, or once val top-1 is perfect (``patience=None``: the whole grid).
    Val loss guards the stop because top-1 is noisy and dips at tiny C before rising again.
    Without a test set there is no refit: val metrics come from the search fit at the chosen C.
    ``knn_k=()`` skips kNN (result["knn"] is None).
    ``tol`` bounds the largest gradient entry of the refit (sklearn's default is the same); the
    search fits stop at 10·tol: they only rank C's (on Fashion-MNIST pixels this moved val top-1
    by ≤ 0.5 points near the optimum, within noise, and cut the path's L-BFGS iterations ~3×).
    """
    t0 = time.perf_counter()
    warns: list[str] = []
    sets = {name: None if x is None else load_features(x) if not isinstance(x, FeatureSet) else
            _validated(x.features, x.labels, x.classes, x.paths, x.source, x.manifest)  # built by hand?
            for name, x in (("train", train), ("val", val), ("test", test))}
    tr = sets["train"]
    for name, other in sets.items():
        if other is not None and other.features.shape[1] != tr.features.shape[1]:
            raise SSLProbeError(f"feature widths differ: train has {tr.features.shape[1]}, {name} has "
                                f"{other.features.shape[1]}; extract both with the same model and layer")
    if C is not None and not C > 0 or Cs is not None and (not Cs or min(Cs) <= 0):
        raise SSLProbeError("C values must be positive (e.g. --C 1.0)")
    if not 0 < val_fraction < 1:
        raise SSLProbeError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if knn_k and min(knn_k) < 1 or not knn_temperature > 0:
        raise SSLProbeError("kNN needs k ≥ 1 and temperature > 0 (e.g. --knn-k 10 20 200 --knn-t 0.07)")
    dev = pick_device(device)

    names = list(tr.classes)
    labels = {k: _align(v, names) for k, v in sets.items() if v is not None}
    K = len(names)
    keep = labels["train"] >= 0
    if not keep.any():
        raise SSLProbeError(f"'{tr.source}' has no labeled rows; the probe needs labels (class folders)")
    if not keep.all():
        warns.append(f"train: ignored {int((~keep).sum())} unlabeled rows")
    X, y = tr.features[keep].to(dev), labels["train"][keep].to(dev)  # (N, D), (N,)
    if y.unique().numel() < 2:
        raise SSLProbeError(f"train needs at least 2 classes with labeled rows, found only "
                            f"'{names[int(y[0])]}'; add images of other classes")
    evals: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    if sets["val"] is None:
        fit_idx, val_idx = (i.to(dev) for i in stratified_split(y, fraction=val_fraction, seed=seed))
        if val_idx.numel() == 0:
            raise SSLProbeError("train is too small for a validation hold-out (one row per class); "
                                "pass a separate val set or a fixed C")
        Xf, yf, evals["val"] = X[fit_idx], y[fit_idx], (X[val_idx], y[val_idx])
    else:
        Xf, yf = X, y
    for name in ("val", "test"):
        if name not in evals and sets[name] is not None:
            Xe, ye = sets[name].features.to(dev), labels[name].to(dev)
            lab = ye >= 0
            if not lab.any():
                raise SSLProbeError(f"the {name} set has no labeled rows to score; label it or drop it")
            if not lab.all():
                warns.append(f"{name}: {int((~lab).sum())} unlabeled rows excluded from metrics")
            evals[name] = (Xe[lab], ye[lab])
    Xv, yv = evals["val"]
    Xall, yall = torch.cat([Xf, Xv]), torch.cat([yf, yv])  # (N_fit + N_val, D)
    for name, ref in (("val", yf), ("test", yall)):
        unseen = ~torch.isin(evals[name][1], ref) if name in evals else torch.zeros(0, dtype=torch.bool)
        if unseen.any():
            which = sorted({names[i] for i in evals[name][1][unseen].tolist()})
            warns.append(f"{name}: {int(unseen.sum())} rows of classes not in train "
                         f"({', '.join(which[:5])}) count as errors")

    scale = _standardizer(Xf, standardize)
    Zv = scale(Xv)
    grid = [float(C)] if C is not None else sorted(float(c) for c in (Cs or DEFAULT_CS))
    marks = {"load": time.perf_counter() - t0}
    C_best, m_best, cols, curve = _c_path(scale(Xf), yf, Zv, yv, num_classes=K, grid=grid,
                                          patience=patience, max_iter=max_iter, tol=10 * tol)
    result: dict[str, Any] = {"C": C_best}
    result["val"] = classification_metrics(_scores(m_best, Zv, cols, K), yv, num_classes=K)
    del Zv  # the refit needs the memory more (matters for big feature sets on a GPU)
    marks["search"] = time.perf_counter() - t0 - sum(marks.values())

    if "test" in evals:  # refit on train+val at the chosen C (λ uses the refit n)
        scale = _standardizer(Xall, standardize)
        cols_all = torch.unique(yall)
        init = m_best if cols_all.numel() == cols.numel() else None
        final = _fit(scale(Xall), _lookup(cols_all, K)[yall], C=C_best, init=init, max_iter=max_iter,
                     tol=tol, num_classes=cols_all.numel())  # new data: curvature memory would mislead
        Xt, yt = evals["test"]
        result["test"] = classification_metrics(_scores(final, scale(Xt), cols_all, K), yt, num_classes=K)
        result["refit_iters"] = final.n_iter
        marks["refit"] = time.perf_counter() - t0 - sum(marks.values())

    # kNN on L2-normalised raw features: val against the fit split, test against train+val
    ks, result["knn"] = sorted({int(k) for k in knn_k}), None
    by_k: dict[str, dict] = {str(k): {} for k in ks}
    for name, bank, bank_y in (("val", Xf, yf), ("test", Xall, yall)):
        if name in evals and ks:
            votes = knn_votes(bank, bank_y, evals[name][0], ks=ks, num_classes=K, temperature=knn_temperature)
            for k in ks:
                by_k[str(k)][name] = summary(classification_metrics(votes[k], evals[name][1], num_classes=K))
    if ks:  # headline k = 20 as in DINO, else the best on val
        k_head = _HEADLINE_K if _HEADLINE_K in ks else max(ks, key=lambda k: (by_k[str(k)]["val"]["top1"], -k))
        result["knn"] = {"k": k_head, "temperature": knn_temperature, **by_k[str(k_head)], "by_k": by_k}
        if ks[-1] > Xf.shape[0]:
            warns.append(f"kNN: k > {Xf.shape[0]} train rows was clipped to the train size")
    marks["knn"] = time.perf_counter() - t0 - sum(marks.values())

    result.update({
        "val_curve": curve, "classes": names, "n_train": int(X.shape[0]), "n_fit": int(Xf.shape[0]),
        "n_val": int(Xv.shape[0]), "dim": int(X.shape[1]), "standardize": standardize,
        "val_source": "given" if sets["val"] is not None else f"holdout {val_fraction:g} (seed {seed})",
        "device": str(dev), "seconds": time.perf_counter() - t0, "timing": marks, "warnings": warns,
        "inputs": {k: (v.source if v is not None else None) for k, v in sets.items()},
    })
    if out is not None:
        write_json(Path(out) / "report.json", result)
    return result


__all__ = ["DEFAULT_CS", "FeatureSet", "LogReg", "fit_logistic", "knn_votes", "load_features", "probe",
           "stratified_split"]
