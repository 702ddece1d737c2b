"""The L-BFGS logistic regression: sklearn's optimum, float64, chunked and float16 designs."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sslprobe.probing.solver import Design, LogReg, Standardizer, fit, fit_logistic
from tests.blobs import blobs as _blobs
from tests.blobs import one_thread  # noqa: F401  (autouse fixture)


def blobs(n_per: int, k: int, d: int, *, seed: int = 0):
    """Overlapping classes with shifted features: the optimum is interior and standardising matters."""
    return _blobs(n_per, k, d, sep=2.0, noise=1.5, offset=3.0, shuffle=False, seed=seed)


def sk_objective(coef: np.ndarray, intercept: np.ndarray, X: np.ndarray, y: np.ndarray, lam: float) -> float:
    """mean CE + λ/2‖W‖² in float64, sklearn's (K, D) layout."""
    L = X.astype(np.float64) @ coef.T + intercept
    L -= L.max(1, keepdims=True)
    return float((np.log(np.exp(L).sum(1)) - L[np.arange(len(y)), y]).mean() + lam / 2 * (coef**2).sum())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("C", [0.003, 0.3, 30.0])
def test_converges_to_sklearn_optimum(C, dtype):
    """Objective value and coefficients at sklearn's optimum, not just accuracy."""
    from sklearn.linear_model import LogisticRegression

    X, y = blobs(50, 4, 7, seed=1)
    Xs = (X - X.mean(0)) / X.std(0)
    sk = LogisticRegression(C=C, tol=1e-12, max_iter=100_000).fit(Xs.astype(np.float64), y)
    ours = fit_logistic(torch.tensor(Xs), torch.tensor(y), C=C, tol=1e-8 if dtype == torch.float64 else 1e-6,
                        max_iter=10_000, dtype=dtype)
    assert ours.coef.dtype == dtype
    lam = 1 / (C * len(y))
    W, b = ours.coef.double().numpy(), ours.intercept.double().numpy()
    f_ours, f_sk = sk_objective(W, b, Xs, y, lam), sk_objective(sk.coef_, sk.intercept_, Xs, y, lam)
    rel = 1e-9 if dtype == torch.float64 else 1e-5
    assert f_ours == pytest.approx(f_sk, rel=rel, abs=rel)
    assert ours.objective == pytest.approx(f_ours, rel=1e-5)
    scale = np.abs(sk.coef_).max()
    atol = 1e-5 if dtype == torch.float64 else 2e-3
    np.testing.assert_allclose(W, sk.coef_, atol=atol * scale, rtol=0)
    # the softmax is shift-invariant: intercepts are identified only up to a shared shift
    np.testing.assert_allclose(b - b.mean(), sk.intercept_ - sk.intercept_.mean(), atol=atol * max(1, scale))


def test_chunked_equals_unchunked_objective_and_gradient():
    X, y = blobs(37, 3, 5, seed=2)
    X, y = torch.tensor(X), torch.tensor(y)
    scaler = Standardizer.fit(X)
    whole = Design(X, scaler=scaler, device="cpu", dtype=torch.float64)
    chunked = Design(X, scaler=scaler, device="cpu", dtype=torch.float64, chunk_rows=10)
    assert whole.chunk == X.shape[0] and chunked.chunk == 10 and len(list(chunked.blocks())) == 12
    torch.testing.assert_close(chunked.class_sums(y, 3), whole.class_sums(y, 3))
    a = fit(whole, y, C=0.7, tol=1e-9, max_iter=1)  # one step: compares the first gradient's direction
    b = fit(chunked, y, C=0.7, tol=1e-9, max_iter=1)
    torch.testing.assert_close(a.coef, b.coef, rtol=1e-10, atol=1e-12)
    assert a.objective == pytest.approx(b.objective, rel=1e-12)
    a = fit(whole, y, C=0.7, tol=1e-9)
    b = fit(chunked, y, C=0.7, tol=1e-9)
    torch.testing.assert_close(a.coef, b.coef, rtol=0, atol=1e-7)
    assert a.objective == pytest.approx(b.objective, rel=1e-12) and a.n_iter == b.n_iter


def test_float16_storage_is_close():
    X, y = blobs(40, 3, 6, seed=3)
    X, y = torch.tensor(X), torch.tensor(y)
    scaler = Standardizer.fit(X)
    full = Design(X, scaler=scaler, device="cpu")
    half = Design(X, scaler=scaler, device="cpu", store=torch.float16, chunk_rows=16)
    assert half.Z.dtype == torch.float16 and half.Z.element_size() == 2
    a, b = fit(full, y, C=1.0, tol=1e-6), fit(half, y, C=1.0, tol=1e-6)
    assert b.coef.dtype == torch.float32
    assert b.objective == pytest.approx(a.objective, rel=1e-3)
    torch.testing.assert_close(b.coef, a.coef, rtol=0, atol=5e-3 * float(a.coef.abs().max()))


def test_standardizer_matches_numpy_and_keeps_constant_columns():
    X = np.random.default_rng(0).normal(size=(100, 4)).astype(np.float32) * [1, 10, 0.01, 0] + [0, 1e4, -3, 7]
    s = Standardizer.fit(torch.tensor(X), block=7)
    np.testing.assert_allclose(s.mean.numpy(), X.astype(np.float64).mean(0), rtol=1e-6)
    np.testing.assert_allclose(s.std.numpy()[:3], X.astype(np.float64).std(0)[:3], rtol=1e-5)
    assert s.std[3] == 1.0  # constant column: scale 1, not 1/0
    Z = s(torch.tensor(X))
    assert torch.isfinite(Z).all() and float(Z[:, :3].mean(0).abs().max()) < 1e-3
    assert Standardizer.fit(torch.tensor(X), on=False).mean is None


def test_subset_design_and_scores():
    X, _ = blobs(20, 2, 3, seed=4)
    X = torch.tensor(X)
    d = Design(X, scaler=Standardizer.fit(X), device="cpu", chunk_rows=7)
    rows = torch.tensor([0, 5, 9, 30])
    sub = d.subset(rows)
    torch.testing.assert_close(sub.Z, d.Z[rows])
    model = LogReg(torch.randn(2, 3), torch.randn(2), 0.0, 0)
    torch.testing.assert_close(sub.scores(model), d.scores(model)[rows])


def test_diverging_features_raise():
    from sslprobe.errors import SSLProbeError

    X = torch.tensor([[3e38, 0.0], [-3e38, 1.0], [3e38, 2.0]])
    with pytest.raises(SSLProbeError, match="diverged|non-finite"):
        fit_logistic(X, torch.tensor([0, 1, 0]), C=1e5)


def test_a_zero_gradient_is_a_converged_fit_even_when_a_step_is_required():
    """Constant features and balanced classes: the gradient at w = 0 is exactly 0. A warm-started path fit
    (min_iter 1) used to divide by its L1 norm (ZeroDivisionError, issue 24)."""
    from sslprobe.probing.features import FeatureSet
    from sslprobe.probing.probe import probe

    X, y = torch.full((40, 6), 0.0157), torch.arange(40) % 2
    design = Design(X, scaler=Standardizer.fit(X), device="cpu", dtype=torch.float64)
    first = fit(design, y, C=1.0, rtol=1e-5)
    again = fit(design, y, C=10.0, init=first, rtol=1e-5, memory={})
    assert first.converged and again.converged and again.n_iter <= 1  # not max_iter on rounding noise
    assert float(again.coef.abs().max()) == 0.0
    from sslprobe.probing.solver import lbfgs

    x, f, it, ok = lbfgs(lambda w: (0.0, torch.zeros_like(w)), torch.zeros(3), tol=0.0, max_iter=5, pairs=[],
                         min_iter=1)  # an exactly zero gradient where a step is required
    assert ok and it == 0
    r = probe(FeatureSet.from_arrays(X, y), knn_k=())  # the whole C path over it: no traceback
    assert r.val.top1 == 0.5 and all(p.converged for p in r.val_curve)  # chance, every fit converged
