"""Multinomial L2 logistic regression by full-batch L-BFGS, over features read in row blocks.

Objective (docs/probe.md): mean cross-entropy + λ/2‖W‖², λ = 1/(C·n), bias unpenalised — the same
minimiser as scikit-learn's ``LogisticRegression(C)``, whose objective is C·n times this one. The
features live in a ``Design``: standardised once, stored in float32, float64 or float16, and read
in row blocks, so the bytes touched per iteration (not device memory) bound the problem size.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from sslprobe.errors import SSLProbeError
from sslprobe.runtime.device import exact_fp32


@contextlib.contextmanager
def threads_for(work: int) -> Iterator[None]:
    """One intra-op thread while the per-op work (multiply-adds) is below 2^21, restored after.

    Tiny fits (label subsets, CV folds) are dispatch-bound: a fork/join per op costs more than
    the op, and far more when another process holds a core (a 300-row probe with a 6-point label
    curve on the quiet 2-core machine: 11.3–12.4 s with this vs 15.4–16.6 s without, 1.35×).
    """
    n = torch.get_num_threads()
    if work >= 2**21 or n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@dataclass(frozen=True)
class Standardizer:
    """Per-column (x − mean) / std with training statistics; ``mean is None`` means identity."""

    mean: torch.Tensor | None = None  # (D,) float64
    std: torch.Tensor | None = None  # (D,) float64

    @classmethod
    def fit(cls, X: torch.Tensor, *, on: bool = True, block: int = 65536) -> Standardizer:
        """Statistics of ``X`` (N, D) in float64 (large means lose digits in float32), in row blocks."""
        if not on:
            return cls()
        n = X.shape[0]
        s1 = torch.zeros(X.shape[1], dtype=torch.float64, device=X.device)
        s2 = torch.zeros_like(s1)
        for i in range(0, n, block):
            xb = X[i:i + block].double()
            s1 += xb.sum(0)
        mean = s1 / n
        for i in range(0, n, block):  # two passes: the one-pass formula cancels catastrophically
            s2 += (X[i:i + block].double() - mean).pow(2).sum(0)
        std = (s2 / n).sqrt()
        # constant columns get scale 1 (like sklearn's StandardScaler) rather than a huge 1/ε
        std = torch.where(std > 1e-6 * (1 + mean.abs()), std, torch.ones_like(std))
        return cls(mean.cpu(), std.cpu())

    def __call__(self, X: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Standardised copy of ``X`` (any float dtype) in ``dtype``, on ``X``'s device."""
        if self.mean is None:
            return X.to(dtype)
        work = torch.float64 if dtype == torch.float64 else torch.float32
        mean, std = self.mean.to(X.device, work), self.std.to(X.device, work)
        return ((X.to(work) - mean) / std).to(dtype)


class Design:
    """Standardised features for the solver, stored once and read in row blocks.

    ``dtype`` is the compute precision (float32 or float64); ``store`` the storage precision
    (float16 halves the bytes per pass at ~3 significant digits). ``chunk_rows`` bounds the rows
    per block (None: one block when the stored matrix is already in compute precision on
    ``device``, else blocks of ~64 MiB). ``offload`` keeps the matrix in host memory and streams
    blocks to the device (for feature sets larger than device memory).
    """

    def __init__(self, X: torch.Tensor, *, scaler: Standardizer, device: torch.device | str,
                 dtype: torch.dtype = torch.float32, store: torch.dtype | None = None,
                 chunk_rows: int | None = None, offload: bool = False) -> None:
        if chunk_rows is not None and chunk_rows < 1:
            raise SSLProbeError(f"chunk rows must be ≥ 1 (got {chunk_rows})")
        self.device, self.dtype = torch.device(device), dtype
        store = store or dtype
        n, d = X.shape
        home = torch.device("cpu") if offload else self.device
        self.Z = torch.empty(n, d, dtype=store, device=home, pin_memory=offload and self.device.type == "cuda")
        step = max(1, 2**24 // max(d, 1))
        for i in range(0, n, step):  # standardise block by block: no full float32 copy of X
            self.Z[i:i + step] = scaler(X[i:i + step].to(self.device), dtype).to(home, store)
        whole = store == dtype and home == self.device
        self.chunk = chunk_rows or (n if whole else max(1, 2**26 // (d * torch.finfo(dtype).bits // 8)))

    @property
    def n(self) -> int:
        return int(self.Z.shape[0])

    @property
    def d(self) -> int:
        return int(self.Z.shape[1])

    def blocks(self) -> Iterator[tuple[int, torch.Tensor]]:
        """(start row, block (c, D) in compute precision on the device)."""
        if self.chunk >= self.n and self.Z.dtype == self.dtype and self.Z.device == self.device:
            yield 0, self.Z
            return
        for s in range(0, self.n, self.chunk):
            yield s, self.Z[s:s + self.chunk].to(self.device, non_blocking=True).to(self.dtype)

    def subset(self, rows: torch.Tensor) -> Design:
        """The rows ``rows`` as a new Design (same storage, precision and chunking)."""
        new = object.__new__(Design)
        new.device, new.dtype, new.Z = self.device, self.dtype, self.Z[rows.to(self.Z.device)]
        new.chunk = self.chunk if self.chunk < self.n else new.Z.shape[0]
        return new

    def scores(self, model: LogReg) -> torch.Tensor:
        """(N, K) logits of ``model`` on every row."""
        with exact_fp32():
            return torch.cat([torch.addmm(model.intercept, Zc, model.coef.T) for _, Zc in self.blocks()])

    def class_sums(self, y: torch.Tensor, k: int) -> torch.Tensor:
        """(K, D) per-class sums of rows (Yᵀ Z)."""
        out = torch.zeros(k, self.d, dtype=self.dtype, device=self.device)
        for s, Zc in self.blocks():
            out.index_add_(0, y[s:s + Zc.shape[0]], Zc)
        return out


@dataclass
class LogReg:
    """A fitted multinomial logistic regression; scores = Z @ coef.T + intercept (sklearn's layout)."""

    coef: torch.Tensor  # (K, D)
    intercept: torch.Tensor  # (K,)
    objective: float
    n_iter: int
    converged: bool = True  # False: stopped at max_iter or when no step helped, before the tolerance
    floor_limited: bool = False  # the relative stop was below what the dtype resolves (see precision_floor)

    def flat(self) -> torch.Tensor:
        """Parameters as the solver's vector [coef.ravel(), intercept]."""
        return torch.cat([self.coef.reshape(-1), self.intercept])


def column_table(cols: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(num_classes,) class → model column (−1 for a class the model lacks) for a model with columns ``cols``."""
    lut = torch.full((num_classes,), -1, dtype=torch.long, device=cols.device)
    lut[cols] = torch.arange(cols.numel(), device=cols.device)
    return lut


def model_columns(labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(cols, lut): the classes present in ``labels`` (a model fitted on them has these columns,
    in this order) and the class → column table, on the labels' device."""
    cols = torch.unique(labels)
    return cols, column_table(cols, num_classes)


def class_scores(logits: torch.Tensor, cols: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N, num_classes) scores from model-column logits; classes the model never saw get -inf."""
    out = logits.new_full((logits.shape[0], num_classes), -math.inf)
    out[:, cols] = logits
    return out


def fit_logistic(X: torch.Tensor, y: torch.Tensor, *, C: float, init: LogReg | None = None,
                 max_iter: int = 1000, tol: float = 1e-4, num_classes: int | None = None,
                 dtype: torch.dtype = torch.float32, chunk_rows: int | None = None) -> LogReg:
    """Minimise mean CE + λ/2‖W‖², λ = 1/(C·n), bias unpenalised, by full-batch L-BFGS; y in [0, K).

    ``X`` is used as given (no standardisation). For two classes sklearn fits one vector w = w1 − w2;
    the two-column model matches it with λ doubled. ``tol`` bounds the largest gradient entry, as
    sklearn's does. ``chunk_rows`` streams the loss and gradient in row blocks (same result).
    """
    design = Design(X, scaler=Standardizer(), device=X.device, dtype=dtype, chunk_rows=chunk_rows)
    return fit(design, y.to(X.device), C=C, init=init, max_iter=max_iter, tol=tol, num_classes=num_classes)


def lbfgs(fg: Callable[[torch.Tensor], tuple[float, torch.Tensor]], x: torch.Tensor, *, tol: float,
          max_iter: int, pairs: list, history: int = 50,
          tol_at: Callable[[torch.Tensor], float] | None = None,
          dec_at: Callable[[torch.Tensor, float], float] | None = None,
          min_iter: int = 0) -> tuple[torch.Tensor, float, int, bool]:
    """Minimise a smooth convex f with L-BFGS from x; ``fg(x) -> (f, grad)``; returns (x, f, iters, converged).

    ``pairs`` [(s, y, 1/yᵀs)] is the curvature memory, updated in place. Steps meet Armijo or, once
    f changes drop below float32 resolution, Hager & Zhang's (2005) approximate Wolfe conditions
    (gradient only). Stops converged at max|grad| ≤ min(tol, tol_at(x)), or unconverged at
    ``max_iter`` or when no step helps (the precision floor).
    """
    f, g = fg(x)
    it = 0
    while it < max_iter:
        g_max = float(g.abs().max())
        if not math.isfinite(g_max):  # overflowing features: report it rather than return a zero model
            return x, math.nan, it, False
        if g_max == 0 or (it >= min_iter and g_max <= (tol if tol_at is None else min(tol, tol_at(x)))):
            return x, f, it, True  # a zero gradient is the optimum (constant features, balanced classes)
        q, alphas = g.neg(), []  # two-loop recursion; 0-dim tensors avoid a device sync per pair
        for s, y, rho in reversed(pairs):
            alphas.append(rho * s.dot(q))
            q.sub_(alphas[-1] * y)
        s, y, _ = pairs[-1] if pairs else (g, g, None)
        q.mul_(s.dot(y) / y.dot(y) if pairs else min(1.0, 1.0 / float(g.abs().sum())))
        for (s, y, rho), a in zip(pairs, reversed(alphas)):
            q.add_((a - rho * y.dot(q)) * s)
        gtd = float(g.dot(q))
        if dec_at is not None and pairs and it >= 1 and 0 <= -0.5 * gtd <= dec_at(x, f):
            return x, f, it, True  # estimated suboptimality ½gᵀH⁻¹g below what is asked, or resolvable
        if gtd >= 0:  # memory from an earlier problem misleads: restart from steepest descent
            if not pairs:
                break  # even steepest descent has no slope left (the precision floor)
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
            break  # no acceptable step: converged as far as the precision allows
        s, y = x_new - x, g_new - g
        ys = float(y.dot(s))
        # relative curvature test (as L-BFGS-B): an absolute floor drops the tiny, valid pairs of
        # directions whose curvature is far below the rest (the unpenalised bias at strong
        # regularisation), and without them float32 steps along such directions never progress
        if ys > 1e-10 * float(y.dot(y)) and ys > 0:
            pairs.append((s, y, 1.0 / ys))
            del pairs[:-history]
        x, f, g, it = x_new, f_new, g_new, it + 1
    return x, f, it, False


def fit(design: Design, y: torch.Tensor, *, C: float, init: LogReg | None = None, max_iter: int = 1000,
        tol: float = 1e-4, num_classes: int | None = None, class_sums: torch.Tensor | None = None,
        memory: dict | None = None, rtol: float | None = None, dec_rtol: float | None = None) -> LogReg:
    """``fit_logistic`` on a Design; ``class_sums`` = Yᵀ Z (K, D) if the caller caches it.

    ``rtol`` adds a stop relative to the problem: max|grad| ≤ rtol·λ·max|W|. At the optimum the
    data gradient equals −λW, so this bounds the residual relative to the penalty it balances. An
    absolute ``tol`` alone is vacuous on a warm-started C path: at weak regularisation the start's
    gradient Δλ·W is already below it, and whole stretches of the path would score one stale model.
    With ``rtol`` a warm-started fit takes at least one step (a quasi-Newton step for the new λ from
    the patched curvature pairs), and the stop is floored where the dtype cannot resolve the
    gradient; ``dec_rtol`` (float32 only) also stops once L-BFGS's estimate of f − f*, ½gᵀH⁻¹g, is
    below dec_rtol·‖W‖²/K (see ``StopRules``).

    Hand-written gradient: (softmax − Y)ᵀ Z / n + λW, column sums for the bias. ``memory`` carries
    L-BFGS pairs across calls: a C-path step changes the Hessian by exactly Δλ on the weights, so
    patched pairs stay valid (3-4× fewer iterations than restarting, on Fashion-MNIST pixels).
    """
    n, d = design.n, design.d
    y = y.to(design.device)
    k = int(y.max()) + 1 if num_classes is None else num_classes
    kd = k * d
    lam = (2.0 if k == 2 else 1.0) / (C * n)
    sums = design.class_sums(y, k) if class_sums is None else class_sums
    counts = torch.bincount(y, minlength=k).to(design.dtype)
    neg_y = torch.cat([sums.reshape(-1), counts]).div_(-n)  # −[Yᵀ Z, Yᵀ 1] / n
    y1 = y.view(-1, 1)

    def fg(w: torch.Tensor) -> tuple[float, torch.Tensor]:
        A, b = w[:kd].view(k, d), w[kd:]
        grad = neg_y.clone()
        gA, gb = grad[:kd].view(k, d), grad[kd:]
        ce = w.new_zeros(())
        for s, Zc in design.blocks():
            logp = torch.log_softmax(torch.addmm(b, Zc, A.T), 1)  # (c, K); log-space keeps CE exact near 0
            ce -= logp.gather(1, y1[s:s + Zc.shape[0]]).sum()
            P = logp.exp_()
            gA.addmm_(P.T, Zc, alpha=1 / n)
            gb.add_(P.sum(0), alpha=1 / n)
        gA.add_(A, alpha=lam)
        return float(ce / n + 0.5 * lam * A.pow(2).sum()), grad

    pairs = _carried_pairs({} if memory is None else memory, lam=lam, kd=kd)
    w0 = init.flat().to(design.device, design.dtype).clone() if init is not None else \
        torch.zeros(kd + k, dtype=design.dtype, device=design.device)
    # a long history cuts evaluations ~30% vs scipy's m=10; cap its memory (2 vectors per pair) at 256 MiB
    history = int(min(50, max(10, 2**28 // (8 * w0.numel()))))
    stops = StopRules(floor=precision_floor(sums, n, design.dtype), lam=lam, k=k, kd=kd, rtol=rtol,
                      dec_rtol=None if design.dtype == torch.float64 else dec_rtol,
                      eps=torch.finfo(design.dtype).eps)
    with torch.no_grad(), exact_fp32(), threads_for(n * kd):
        w, objective, n_iter, converged = lbfgs(
            fg, w0, tol=tol, max_iter=max_iter, pairs=pairs, history=history,
            tol_at=stops.gradient if rtol is not None else None,
            dec_at=stops.suboptimality if stops.dec_rtol is not None else None,
            min_iter=1 if rtol is not None and init is not None else 0)
    if not math.isfinite(objective):
        raise SSLProbeError("the logistic regression diverged (non-finite loss); check the features for "
                            "extreme values or use --float64")
    return LogReg(w[:kd].view(k, d), w[kd:], objective, n_iter, converged, stops.floor_limited(w))


@dataclass(frozen=True)
class StopRules:
    """The problem-relative stops of a fit (see ``fit``), as functions of the weights w (and f)."""

    floor: float  # precision_floor: the smallest max|grad| the dtype resolves
    lam: float
    k: int
    kd: int
    rtol: float | None
    dec_rtol: float | None  # None in float64: its gradient reaches the relative stop (the exact curve)
    eps: float

    def gradient(self, w: torch.Tensor) -> float:
        """max|grad| to reach: rtol·λ·max|W|, floored at the precision floor."""
        return max(self.floor, self.rtol * self.lam * float(w[:self.kd].abs().max()))

    def suboptimality(self, w: torch.Tensor, f: float) -> float:
        """½gᵀH⁻¹g to reach: dec_rtol·‖W‖²/K (a relative logit error ~1e-5), floored at
        FLOOR_EPS/4·eps·|f|: f − f* below the resolution of f itself means nothing in this dtype."""
        return max(self.dec_rtol * float(w[:self.kd].pow(2).sum()) / self.k, FLOOR_EPS / 4 * self.eps * abs(f))

    def floor_limited(self, w: torch.Tensor) -> bool:
        """Whether the relative stop asked for less than the dtype resolves at the solution."""
        return self.rtol is not None and self.floor > self.rtol * self.lam * float(w[:self.kd].abs().max())


def _carried_pairs(memory: dict, *, lam: float, kd: int) -> list:
    """The L-BFGS pairs in ``memory``, patched to the new λ (y + Δλ·s on the weights), in place."""
    pairs = memory.setdefault("pairs", [])
    if pairs and memory["lam"] != lam:
        dl = lam - memory["lam"]
        patched = [(s, _penalise(y_, s, kd, dl)) for s, y_, _ in pairs]
        pairs[:] = [(s, y_, 1.0 / float(y_.dot(s))) for s, y_ in patched if float(y_.dot(s)) > 0]
    memory["lam"] = lam
    return pairs


# The relative stop is floored where the dtype cannot resolve the gradient: a sum of n terms of
# size ~G carries rounding error ~eps·G·√(log n) per entry; 64·eps·G leaves a margin. Float32 on
# Fashion-MNIST pixels without it: the 7 weakest C's of the path each ran max_iter = 1000
# iterations of noise (618 s); float64's floor (1e-14·G) is below any tolerance used here.
FLOOR_EPS = 64


def precision_floor(class_sums: torch.Tensor, n: int, dtype: torch.dtype) -> float:
    """The smallest max|grad| worth asking for in ``dtype``: FLOOR_EPS·eps·G, where G is the
    largest entry of the data gradient at w = 0 (uniform softmax), the scale of every later one.

    Features that are all zero after standardisation (constant images) give G = 0: then only the
    biases move, whose gradient is a difference of probabilities (scale 1), so G = 1; a floor of 0
    asked for an exact zero and the fit ran to max_iter on rounding noise."""
    k = class_sums.shape[0]
    g0 = class_sums.sum(0, keepdim=True) / k - class_sums  # (K, D) = n·(P − Y)ᵀZ at P = 1/K
    scale = float(g0.abs().max()) / n
    return FLOOR_EPS * torch.finfo(dtype).eps * (scale if scale > 0 else 1.0)


def _penalise(y: torch.Tensor, s: torch.Tensor, kd: int, dl: float) -> torch.Tensor:
    """y + Δλ·s on the weight entries (the bias is unpenalised): the pair under the new λ."""
    out = y.clone()
    out[:kd].add_(s[:kd], alpha=dl)
    return out


__all__ = ["FLOOR_EPS", "Design", "LogReg", "Standardizer", "StopRules", "class_scores", "column_table", "fit",
           "fit_logistic", "lbfgs", "model_columns", "precision_floor", "threads_for"]
