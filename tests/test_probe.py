"""Linear probe and kNN: sklearn parity, the C path, splits, kNN votes, loading and bad input."""
from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from sslprobe.errors import SSLProbeError
from sslprobe.knn import knn_votes
from sslprobe.probing.features import FeatureSet, load_features
from sslprobe.probing.holdout import stratified_split
from sslprobe.probing.probe import probe
from sslprobe.probing.report import summary
from sslprobe.probing.search import DEFAULT_CS
from sslprobe.probing.solver import fit_logistic
from sslprobe.results import ProbeResult
from tests.blobs import blobs, one_thread  # noqa: F401  (autouse fixture)

SMALL_CS = [1e-3, 1e-2, 1e-1, 1.0, 10.0]


def objective(W: np.ndarray, b: np.ndarray, X: np.ndarray, y: np.ndarray, lam: float) -> float:
    """mean CE + λ/2‖W‖² in float64 for a (D, K) weight matrix."""
    L = X.astype(np.float64) @ W + b
    L -= L.max(1, keepdims=True)
    ce = np.log(np.exp(L).sum(1)) - L[np.arange(len(y)), y]
    return float(ce.mean() + lam / 2 * (W**2).sum())


# ---------------------------------------------------------------- sklearn parity

@pytest.mark.parametrize("C", [0.01, 0.3, 5.0])
def test_fit_matches_sklearn_multinomial(C):
    from sklearn.linear_model import LogisticRegression

    X, y = blobs(40, 3, 6, sep=2.0, noise=1.5, seed=1)
    n = len(y)
    sk = LogisticRegression(C=C, tol=1e-10, max_iter=10_000).fit(X.astype(np.float64), y)
    ours = fit_logistic(torch.tensor(X), torch.tensor(y), C=C, tol=1e-7, max_iter=5000)
    W, b = ours.coef.T.double().numpy(), ours.intercept.double().numpy()
    skW, skb = sk.coef_.T, sk.intercept_
    lam = 1 / (C * n)
    f_ours, f_sk = objective(W, b, X, y, lam), objective(skW, skb, X, y, lam)
    assert f_ours == pytest.approx(f_sk, rel=1e-4)
    assert ours.objective == pytest.approx(f_ours, rel=1e-4)
    # intercepts are identified only up to a shared shift: compare centred
    scale = np.abs(skW).max()
    np.testing.assert_allclose(W, skW, atol=2e-3 * scale, rtol=0)
    np.testing.assert_allclose(b - b.mean(), skb - skb.mean(), atol=2e-3 * max(1, np.abs(skb).max()))
    assert ((X @ W + b).argmax(1) == sk.predict(X)).mean() >= 0.99


def test_fit_matches_sklearn_binary_convention():
    """Two classes: sklearn fits one vector w = w1 − w2 under ½‖w‖²; same C must give the same w."""
    from sklearn.linear_model import LogisticRegression

    X, y = blobs(50, 2, 5, sep=1.5, noise=1.0, seed=2)
    C = 0.05
    sk = LogisticRegression(C=C, tol=1e-10, max_iter=10_000).fit(X.astype(np.float64), y)
    ours = fit_logistic(torch.tensor(X), torch.tensor(y), C=C, tol=1e-7, max_iter=5000)
    w = (ours.coef[1] - ours.coef[0]).double().numpy()
    b = float(ours.intercept[1] - ours.intercept[0])
    np.testing.assert_allclose(w, sk.coef_[0], atol=2e-3 * np.abs(sk.coef_).max(), rtol=0)
    assert b == pytest.approx(float(sk.intercept_[0]), abs=2e-3 * max(1.0, abs(float(sk.intercept_[0]))))


def test_warm_start_reaches_same_optimum():
    X, y = blobs(30, 4, 8, sep=2.0, noise=1.5, seed=3)
    X, y = torch.tensor(X), torch.tensor(y)
    cold = fit_logistic(X, y, C=1.0, tol=1e-6)
    warm = fit_logistic(X, y, C=1.0, tol=1e-6, init=fit_logistic(X, y, C=0.1, tol=1e-6))
    assert warm.objective == pytest.approx(cold.objective, rel=1e-5)


def test_tf32_setting_restored():
    before = (torch.backends.cuda.matmul.fp32_precision, torch.backends.mkldnn.matmul.fp32_precision)
    X, y = blobs(10, 2, 3)
    fit_logistic(torch.tensor(X), torch.tensor(y), C=1.0)
    assert (torch.backends.cuda.matmul.fp32_precision, torch.backends.mkldnn.matmul.fp32_precision) == before


# ---------------------------------------------------------------- C path and protocol

def test_default_grid():
    assert len(DEFAULT_CS) == 45
    assert DEFAULT_CS[0] == pytest.approx(1e-6) and DEFAULT_CS[-1] == pytest.approx(1e5)
    ratios = np.diff(np.log10(DEFAULT_CS))
    np.testing.assert_allclose(ratios, 0.25)


def imbalanced(sizes: list[int], *, d: int = 100, informative: int = 4, sep: float = 3.0, seed: int = 0):
    """Imbalanced blobs in a few dims plus many noise dims: strong regularisation predicts the
    majority class (the bias is unpenalised), weak regularisation overfits the noise dims."""
    centres = np.zeros((len(sizes), d))
    centres[:, :informative] = np.random.default_rng(42).normal(size=(len(sizes), informative)) * sep / math.sqrt(2)
    g = np.random.default_rng(seed)
    y = np.repeat(np.arange(len(sizes)), sizes)
    x = centres[y] + g.normal(size=(len(y), d))
    p = g.permutation(len(y))
    return x[p].astype(np.float32), y[p]


def test_path_picks_interior_C():
    X, y = imbalanced([120, 50, 30], seed=0)
    Xt, yt = imbalanced([300, 125, 75], seed=100)
    r = probe(FeatureSet.from_arrays(X, y), test=FeatureSet.from_arrays(Xt, yt), patience=None, knn_k=(20,))
    curve = r.val_curve
    assert len(curve) == 45 and [p.C for p in curve] == pytest.approx(list(DEFAULT_CS))
    # C is chosen by the default metric, balanced accuracy; ties → lower val loss
    assert r.selection.metric == "balanced"
    best = max(p.balanced_accuracy for p in curve)
    tied = [p for p in curve if p.balanced_accuracy == best]
    assert r.C == min(tied, key=lambda p: p.loss).C
    assert r.val.balanced_accuracy == pytest.approx(best)
    assert 1e-4 < r.C < 10
    assert curve[0].top1 == pytest.approx(0.6)  # majority class only
    assert curve[-1].balanced_accuracy < best  # overfitting at weak regularisation
    assert all(p.converged for p in curve)
    assert r.test.top1 > 0.75  # chance: 0.33 uniform, 0.6 majority


def test_path_on_blobs_beats_chance_and_reports():
    X, y = blobs(60, 4, 16, sep=3.0, noise=1.0, seed=4)
    tr = FeatureSet.from_arrays(X[:180], y[:180])
    te = FeatureSet.from_arrays(X[180:], y[180:])
    r = probe(tr, test=te, seed=0)
    assert r.test.top1 > 0.9 and r.knn.test.top1 > 0.9
    assert r.knn.k == 20 and set(r.knn.by_k) == {"10", "20", "200"}
    assert r.n_train == 180 and r.dim == 16 and r.n_fit + r.n_val == 180
    assert r.device == "cpu" and r.classes == ["0", "1", "2", "3"]
    json.dumps(r.to_json(), allow_nan=False)  # its JSON is strict JSON as is


def test_early_stop_stops_after_peak():
    X, y = imbalanced([120, 50, 30], seed=1)
    full = probe(FeatureSet.from_arrays(X, y), patience=None, knn_k=(5,))
    r = probe(FeatureSet.from_arrays(X, y), patience=3, knn_k=(5,))
    curve = r.val_curve
    assert 3 < len(curve) < 45 and curve == full.val_curve[: len(curve)]
    assert all(p.top1 <= r.val.top1 for p in curve[-3:])
    assert r.C == full.C  # stopping early did not change the choice here


def test_fixed_C_skips_search():
    X, y = blobs(30, 3, 5, seed=6)
    r = probe(FeatureSet.from_arrays(X, y), C=0.5, knn_k=(5,))
    assert r.C == 0.5 and len(r.val_curve) == 1 and r.val_curve[0].C == 0.5


def test_separate_val_and_out_dir(tmp_path):
    X, y = blobs(40, 3, 6, seed=7)
    sets = [FeatureSet.from_arrays(X[s], y[s], source=name)
            for s, name in ((slice(0, 60), "tr"), (slice(60, 90), "va"), (slice(90, 120), "te"))]
    r = probe(sets[0], val=sets[1], test=sets[2], Cs=SMALL_CS, knn_k=(5, 20), out=tmp_path / "o")
    assert r.inputs == {"train": "tr", "val": "va", "test": "te"}
    assert r.n_fit == 60 and r.n_val == 30 and r.val.n == 30 and r.test.n == 30
    saved = json.loads((tmp_path / "o" / "report.json").read_text())
    assert saved["C"] == r.C and saved["test"]["confusion"] == r.test.confusion
    assert saved == r.to_json() and ProbeResult.from_json(saved) == r


def test_standardize_flag():
    X, y = blobs(40, 3, 6, seed=8)
    X = X * np.array([30, 1, 1, 0.05, 1, 1], dtype=np.float32) + 50  # very different scales
    Z = (X - X.mean(0)) / X.std(0)
    kw = {"C": 1.0, "knn_k": (5,), "seed": 1, "max_iter": 300}  # unstandardised fits are ill-conditioned
    # the hold-out is the same, so standardising inside ≈ standardising the hold-out's train part
    on = probe(FeatureSet.from_arrays(X, y), standardize=True, **kw)
    off_raw = probe(FeatureSet.from_arrays(X, y), standardize=False, **kw)
    off_pre = probe(FeatureSet.from_arrays(Z, y), standardize=False, **kw)
    assert on.standardize and not off_raw.standardize
    assert on.val_curve[0].loss == pytest.approx(off_pre.val_curve[0].loss, rel=0.05)
    assert off_raw.val_curve[0].loss != pytest.approx(on.val_curve[0].loss, rel=0.05)


def test_global_state_untouched():
    before = (torch.get_default_dtype(), torch.get_num_threads(), torch.backends.cuda.matmul.fp32_precision)
    X, y = blobs(20, 2, 4, seed=9)
    probe(FeatureSet.from_arrays(X, y), Cs=SMALL_CS, knn_k=(3,))
    assert (torch.get_default_dtype(), torch.get_num_threads(), torch.backends.cuda.matmul.fp32_precision) == before


# ---------------------------------------------------------------- stratified split

def test_stratified_split_is_stratified_and_seeded():
    y = torch.tensor([0] * 50 + [1] * 30 + [2] * 20 + [3])
    keep, out = stratified_split(y, fraction=0.2, seed=0)
    assert torch.equal(torch.sort(torch.cat([keep, out])).values, torch.arange(len(y)))
    assert torch.bincount(y[out], minlength=4).tolist() == [10, 6, 4, 0]  # singleton class stays in train
    keep2, out2 = stratified_split(y, fraction=0.2, seed=0)
    assert torch.equal(out, out2) and torch.equal(keep, keep2)
    _, out3 = stratified_split(y, fraction=0.2, seed=1)
    assert not torch.equal(out, out3)


def test_too_small_for_holdout():
    X = np.eye(3, dtype=np.float32)
    with pytest.raises(SSLProbeError, match="too small"):
        probe(FeatureSet.from_arrays(X, [0, 1, 2]))


# ---------------------------------------------------------------- kNN

def test_knn_votes_by_hand():
    bank = torch.tensor([[1.0, 0.0], [2.0, 0.2], [0.0, 1.0], [0.1, 3.0]])  # two directions
    labels = torch.tensor([0, 0, 1, 1])
    q = torch.tensor([[5.0, 0.0]])
    v = knn_votes(bank, labels, q, ks=[1, 2, 10], num_classes=2, temperature=0.5)
    cos2 = 2.0 / math.hypot(2.0, 0.2)
    cos4 = 0.1 / math.hypot(0.1, 3.0)
    assert v[1][0].tolist() == pytest.approx([math.exp(1 / 0.5), 0.0])
    assert v[2][0].tolist() == pytest.approx([math.exp(2) + math.exp(cos2 / 0.5), 0.0])
    # k=10 is clipped to the 4 bank rows
    assert v[10][0].tolist() == pytest.approx([math.exp(2) + math.exp(cos2 / 0.5), math.exp(0) + math.exp(cos4 / 0.5)])


def test_knn_chunking_matches_unchunked():
    g = torch.Generator().manual_seed(0)
    bank, q = torch.randn(50, 8, generator=g), torch.randn(23, 8, generator=g)
    labels = torch.randint(0, 4, (50,), generator=g)
    a = knn_votes(bank, labels, q, ks=[3, 20], num_classes=4, chunk=5)
    b = knn_votes(bank, labels, q, ks=[3, 20], num_classes=4, chunk=1000)
    for k in (3, 20):
        torch.testing.assert_close(a[k], b[k])


def test_knn_headline_without_20_and_skipping():
    X, y = blobs(20, 2, 4, seed=10)
    r = probe(FeatureSet.from_arrays(X, y), C=1.0, knn_k=(1, 3))
    assert r.knn.k in (1, 3) and set(r.knn.by_k) == {"1", "3"}
    assert probe(FeatureSet.from_arrays(X, y), C=1.0, knn_k=()).knn is None


# ---------------------------------------------------------------- loading

def test_load_feature_dir(tmp_path):
    d = tmp_path / "feats"
    d.mkdir()
    feats = torch.randn(6, 4).half()
    save_file({"features": feats, "labels": torch.tensor([0, 1, 0, 1, -1, 1])}, str(d / "features.safetensors"))
    paths = [f"img{i}.png" for i in range(6)]
    (d / "manifest.json").write_text(json.dumps({"paths": paths, "classes": ["cat", "dog"], "model": "m",
                                                 "weights": None}))
    fs = load_features(d)
    assert fs.features.dtype == torch.float32 and fs.features.shape == (6, 4)
    torch.testing.assert_close(fs.features, feats.float())
    assert fs.labels.dtype == torch.int64 and fs.classes == ("cat", "dog") and fs.paths == tuple(paths)
    assert fs.source == str(d) and fs.manifest["model"] == "m"


def test_load_bare_file(tmp_path):
    f = tmp_path / "x.safetensors"
    save_file({"features": torch.randn(5, 3), "labels": torch.tensor([0, 2, 1, 2, 0])}, str(f))
    assert load_features(f).classes == ("0", "1", "2") and load_features(f).paths is None
    save_file({"features": torch.randn(3, 3), "labels": torch.tensor([0, 1, 1])}, str(f),
              metadata={"classes": json.dumps(["a", "b"])})
    assert load_features(f).classes == ("a", "b")


def test_class_names_aligned_across_sets():
    """A test dir missing a class has shifted indices; labels must be matched by name."""
    X, y = blobs(30, 3, 5, sep=5.0, seed=11)
    tr = FeatureSet.from_arrays(X[:60], y[:60], classes=["a", "b", "c"])
    keep = y[60:] != 0  # test set without class "a": its own indices are b→0, c→1
    te = FeatureSet.from_arrays(X[60:][keep], y[60:][keep] - 1, classes=["b", "c"])
    r = probe(tr, test=te, C=1.0, knn_k=(5,))
    assert r.test.top1 > 0.9 and not r.warnings


# ---------------------------------------------------------------- bad input

def write_set(path, features, labels, **meta):
    save_file({"features": features, "labels": labels}, str(path), metadata=meta or None)
    return path


def test_missing_path(tmp_path):
    with pytest.raises(SSLProbeError, match="not found"):
        load_features(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SSLProbeError, match="no features.safetensors"):
        load_features(tmp_path / "empty")


def test_missing_tensor(tmp_path):
    f = tmp_path / "f.safetensors"
    save_file({"features": torch.randn(3, 2)}, str(f))
    with pytest.raises(SSLProbeError, match="labels"):
        load_features(f)


def test_corrupt_file(tmp_path):
    f = tmp_path / "f.safetensors"
    f.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a header")
    with pytest.raises(SSLProbeError, match="cannot read"):
        load_features(f)


def test_shape_mismatch(tmp_path):
    f = write_set(tmp_path / "f.safetensors", torch.randn(4, 2), torch.tensor([0, 1, 0]))
    with pytest.raises(SSLProbeError, match="4 feature rows"):
        load_features(f)


def test_nan_features(tmp_path):
    x = torch.randn(5, 3)
    x[1, 0], x[3, 2] = float("nan"), float("inf")
    f = write_set(tmp_path / "f.safetensors", x, torch.tensor([0, 1, 0, 1, 0]))
    with pytest.raises(SSLProbeError, match=r"NaN/inf features in 2 rows; re-extract"):
        load_features(f)
    by_hand = FeatureSet(x, torch.tensor([0, 1, 0, 1, 0]), ("a", "b"))  # skips from_arrays' checks
    with pytest.raises(SSLProbeError, match="NaN/inf"):
        probe(by_hand)


def test_one_class():
    X, _ = blobs(10, 2, 3)
    with pytest.raises(SSLProbeError, match="at least 2 classes"):
        probe(FeatureSet.from_arrays(X, np.zeros(len(X), dtype=np.int64), classes=["a", "b"]))


def test_no_labeled_rows():
    X, _ = blobs(10, 2, 3)
    with pytest.raises(SSLProbeError, match="no labeled rows"):
        probe(FeatureSet.from_arrays(X, -np.ones(len(X), dtype=np.int64), classes=["a", "b"]))


def test_width_mismatch():
    X, y = blobs(10, 2, 3)
    with pytest.raises(SSLProbeError, match="train has 3, test has 5"):
        probe(FeatureSet.from_arrays(X, y), test=FeatureSet.from_arrays(np.zeros((4, 5)), [0, 1, 0, 1]))


def test_unseen_and_unlabeled_rows_warn():
    X, y = blobs(20, 3, 4, sep=6.0, seed=12)
    y_tr = y[:40].copy()
    y_tr[:3] = -1  # unlabeled train rows are ignored
    tr = FeatureSet.from_arrays(X[:40][y[:40] != 2], y_tr[y[:40] != 2], classes=["a", "b"])
    y_te = y[40:].copy()
    y_te[0] = -1
    te = FeatureSet.from_arrays(X[40:], y_te, classes=["a", "b", "zebra"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = probe(tr, test=te, C=1.0, knn_k=(3,))
    w = " ".join(r.warnings)
    assert "train: ignored" in w and "unlabeled rows excluded" in w and "zebra" in w
    n_zebra = int((y_te == 2).sum())
    assert r.test.n == len(y_te) - 1 and r.classes == ["a", "b", "zebra"]
    assert r.test.top1 <= 1 - n_zebra / r.test.n + 1e-9  # zebras are all errors
    assert r.test.per_class[2].recall == 0.0


def test_bad_arguments():
    X, y = blobs(10, 2, 3)
    fs = FeatureSet.from_arrays(X, y)
    for kw in ({"C": 0.0}, {"Cs": []}, {"val_fraction": 1.0}, {"knn_k": (0, 5)}, {"knn_temperature": 0},
               {"device": "gpu"}):
        with pytest.raises(SSLProbeError):
            probe(fs, **kw)


# ---------------------------------------------------------------- search modes, precision, memory

def test_binary_search_matches_grid_optimum():
    X, y = imbalanced([120, 50, 30], seed=0)
    # top-1 selection: this set's balanced-accuracy curve is bimodal (0.65 at C = 0.03, 0.56 from
    # C = 560 on), which a 2-decade coarse sweep can miss by design
    grid = probe(FeatureSet.from_arrays(X, y), patience=None, knn_k=(), metric="top1")
    binary = probe(FeatureSet.from_arrays(X, y), search="binary", patience=None, knn_k=(), metric="top1")
    curve = binary.val_curve
    assert binary.search == "binary" and len(curve) <= 14 < len(grid.val_curve)
    cs = [p.C for p in curve]
    assert cs == sorted(cs) and min(cs) == pytest.approx(1e-6) and len(set(cs)) == len(cs)
    # bisection ends at 1/8 decade around the best: neighbours of the chosen C were both tried
    near = [c for c in cs if abs(math.log10(c / binary.C)) == pytest.approx(0.125)]
    assert len(near) >= 1
    assert binary.C == max(curve, key=lambda p: (p.top1, -p.loss, -p.C)).C
    assert binary.val.top1 >= grid.val.top1 - 0.03  # as good as the grid, within noise


def test_half_features_chunks_and_float64_agree():
    X, y = blobs(50, 3, 8, sep=2.0, noise=1.5, seed=13)
    fs, te = FeatureSet.from_arrays(X[:120], y[:120]), FeatureSet.from_arrays(X[120:], y[120:])
    base = probe(fs, test=te, Cs=SMALL_CS, knn_k=(5,), patience=None)
    chunked = probe(fs, test=te, Cs=SMALL_CS, knn_k=(5,), patience=None, chunk_rows=7)
    half = probe(fs, test=te, Cs=SMALL_CS, knn_k=(5,), patience=None, feature_dtype="float16", chunk_rows=16)
    f64 = probe(fs, test=te, Cs=SMALL_CS, knn_k=(5,), patience=None, dtype="float64")
    for other in (chunked, f64):
        assert [p.top1 for p in other.val_curve] == [p.top1 for p in base.val_curve]
        assert other.C == base.C and other.test.top1 == base.test.top1
    assert [p.loss for p in chunked.val_curve] == pytest.approx([p.loss for p in base.val_curve], rel=1e-4)
    assert [p.loss for p in half.val_curve] == pytest.approx([p.loss for p in base.val_curve], rel=1e-2)
    assert half.feature_dtype == "float16" and f64.dtype == "float64" and chunked.chunk_rows == 7
    assert abs(half.test.top1 - base.test.top1) <= 0.05


def test_label_efficiency_in_probe():
    X, y = blobs(60, 4, 16, sep=3.0, noise=1.0, seed=14)
    tr, te = FeatureSet.from_arrays(X[:200], y[:200]), FeatureSet.from_arrays(X[200:], y[200:])
    r = probe(tr, test=te, search="binary", fractions=(0.1, 1.0), shots=(2,), seeds=2, knn_k=(20,))
    le = r.label_efficiency
    assert le.scored_on == "test" and [(p.kind, p.value) for p in le.points] == \
        [("fraction", 0.1), ("fraction", 1.0), ("shots", 2)]
    small, full, shot = le.points
    assert small.seeds == 2 and full.seeds == 1 and shot.n_train == 8
    assert full.n_train == r.n_fit and full.C == [r.C]
    assert len(small.linear.runs) == 2 and 0.25 < small.linear.mean <= 1
    assert full.linear.mean >= shot.linear.mean - 0.1 and full.knn.mean > 0.8
    no_test = probe(tr, shots=(1,), seeds=1, knn_k=(), C=1.0)
    assert no_test.label_efficiency.scored_on == "val" and no_test.label_efficiency.points[0].knn is None
    assert any("optimistic" in w for w in no_test.warnings)


def test_report_files(tmp_path):
    pytest.importorskip("matplotlib")
    X, y = blobs(40, 3, 6, seed=15)
    sets = [FeatureSet.from_arrays(X[s], y[s], classes=["a", "b", "c"]) for s in (slice(0, 90), slice(90, 120))]
    r = probe(sets[0], test=sets[1], Cs=SMALL_CS, knn_k=(5,), fractions=(0.5, 1.0), seeds=2, out=tmp_path)
    names = {"report.json", "per_class_val.csv", "per_class_test.csv", "probe.safetensors", "confusion.png",
             "val_curve.png", "label_efficiency.png"}
    assert set(r.files.files) == names and r.files.note is None
    assert names <= {p.name for p in tmp_path.iterdir()}
    for png in ("confusion.png", "val_curve.png", "label_efficiency.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = (tmp_path / "per_class_test.csv").read_text().splitlines()
    assert lines[0] == "class,precision,recall,f1,support" and lines[1].startswith("a,")
    assert sum(int(line.split(",")[-1]) for line in lines[1:]) == 30
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["label_efficiency"]["points"][0]["value"] == 0.5 and saved["files"]["files"]


def test_report_without_matplotlib(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_mpl(name, *a, **k):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_mpl)
    X, y = blobs(20, 2, 4, seed=16)
    r = probe(FeatureSet.from_arrays(X, y), Cs=SMALL_CS, knn_k=(3,), out=tmp_path)
    assert "matplotlib" in r.files.note and not list(tmp_path.glob("*.png"))
    assert (tmp_path / "report.json").exists() and (tmp_path / "per_class_val.csv").exists()


def test_manifests_in_report(tmp_path):
    d = tmp_path / "feats"
    d.mkdir()
    X, y = blobs(10, 2, 3, seed=17)
    save_file({"features": torch.tensor(X), "labels": torch.tensor(y)}, str(d / "features.safetensors"))
    (d / "manifest.json").write_text(json.dumps({"paths": [f"{i}.png" for i in range(20)], "classes": ["a", "b"],
                                                 "model": "resnet18", "fingerprint": "abc"}))
    r = probe(d, C=1.0, knn_k=())
    assert r.manifests["train"] == {"paths": "<20 entries>", "classes": ["a", "b"], "model": "resnet18",
                                       "fingerprint": "abc"}


def test_compare_and_resolve_sets(tmp_path):
    from sslprobe.probing.compare import compare
    from sslprobe.probing.features import resolve_sets

    for name, sep in (("good", 4.0), ("bad", 0.1)):
        X, y = blobs(30, 3, 5, sep=sep, seed=18)
        for split, s in (("train", slice(0, 60)), ("test", slice(60, 90))):
            (tmp_path / name / split).mkdir(parents=True)
            save_file({"features": torch.tensor(X[s]), "labels": torch.tensor(y[s])},
                      str(tmp_path / name / split / "features.safetensors"))
    assert resolve_sets(tmp_path / "good") == {"train": tmp_path / "good" / "train", "val": None,
                                               "test": tmp_path / "good" / "test"}
    assert resolve_sets(tmp_path / "good" / "train")["train"] == tmp_path / "good" / "train"
    with pytest.raises(SSLProbeError, match="does not exist"):
        resolve_sets(tmp_path / "nope")
    rows = compare({n: resolve_sets(tmp_path / n) for n in ("good", "bad")}, out=tmp_path / "cmp", Cs=SMALL_CS,
                   knn_k=(5,), show_progress=False)  # the bench's call form (show_progress went to probe before)
    assert [n for n, _ in rows] == ["good", "bad"] and rows[0][1].test.top1 > rows[1][1].test.top1
    saved = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert set(saved["sets"]) == {"good", "bad"} and (tmp_path / "cmp" / "good" / "report.json").exists()
    assert "per_class" not in saved["sets"]["good"]["test"] and "predictions" not in saved["sets"]["good"]["test"]
    (pair,) = saved["paired_tests"]
    assert pair["a"] == "good" and pair["b"] == "bad" and pair["paired"] and pair["n"] == 30
    assert pair["metric"] == "balanced" and pair["role"] == "secondary" and pair["family"] == 1
    assert pair["difference"] == pytest.approx(rows[0][1].test.balanced_accuracy - rows[1][1].test.balanced_accuracy)
    assert pair["others"]["top1"]["value"] == pytest.approx(rows[0][1].test.top1 - rows[1][1].test.top1)
    assert [p.to_json() for p in rows[0][1].paired_tests] == saved["paired_tests"]


def test_more_bad_arguments():
    X, y = blobs(10, 2, 3)
    fs = FeatureSet.from_arrays(X, y)
    for kw, needle in (({"search": "random"}, "--search must be one of"), ({"dtype": "float16"}, "compute dtype"),
                       ({"feature_dtype": "int8"}, "storage dtype"), ({"fractions": (0,)}, "fractions"),
                       ({"shots": (0,)}, "shots"), ({"fractions": (0.5,), "seeds": 0}, "seeds"),
                       ({"chunk_rows": 0}, "--chunk-rows")):
        with pytest.raises(SSLProbeError, match=needle):
            probe(fs, C=1.0, knn_k=(), **kw)


def test_overflow_and_labels_missing(tmp_path):
    with pytest.raises(SSLProbeError, match="overflow float32"):
        probe(FeatureSet.from_arrays(np.full((4, 2), 1e300), [0, 1, 0, 1]))
    # float16 storage holds standardised values: large raw features are fine
    r = probe(FeatureSet.from_arrays(np.array([[1e6, 0], [2e6, 1], [1e6, 0], [2e6, 1]]), [0, 1, 0, 1]),
              feature_dtype="float16", C=1.0, val_fraction=0.5, knn_k=())
    assert r.val.top1 == 1.0
    f = write_set(tmp_path / "f.safetensors", torch.randn(4, 2), torch.tensor([0, 1, 0, 1]))
    save_file({"features": torch.randn(4, 2)}, str(tmp_path / "nolabels.safetensors"))
    with pytest.raises(SSLProbeError, match="labels"):
        probe(f, test=tmp_path / "nolabels.safetensors")


def test_features_and_manifest_from_different_runs(tmp_path):
    d = tmp_path / "f"
    d.mkdir()
    save_file({"features": torch.randn(4, 2), "labels": torch.tensor([0, 1, 0, 1])}, str(d / "features.safetensors"),
              metadata={"run_id": "new"})
    (d / "manifest.json").write_text(json.dumps({"classes": ["a", "b"], "run_id": "old"}))
    with pytest.raises(SSLProbeError, match="different extract runs"):
        load_features(d)
    (d / "manifest.json").write_text(json.dumps({"classes": ["a", "b"], "run_id": "new"}))
    assert load_features(d).classes == ("a", "b")


@pytest.mark.parametrize("bad", ["../x.png", "/etc/passwd", "a/../../x.png"])
def test_manifest_paths_stay_inside(tmp_path, bad):
    d = tmp_path / "f"
    d.mkdir()
    save_file({"features": torch.randn(2, 2), "labels": torch.tensor([0, 1])}, str(d / "features.safetensors"))
    (d / "manifest.json").write_text(json.dumps({"classes": ["a", "b"], "paths": ["ok.png", bad]}))
    with pytest.raises(SSLProbeError, match="manifest path"):
        load_features(d)


@pytest.mark.parametrize("tensors, meta, needle", [
    ({"features": torch.zeros(4, 0), "labels": torch.tensor([0, 1] * 2)}, None, "non-empty"),
    ({"features": torch.randn(4, 3), "labels": torch.tensor([0.5, 1.5] * 2)}, None, "whole numbers"),
    ({"features": torch.randn(4, 3), "labels": torch.tensor([0.0, float("nan")] * 2)}, None, "whole numbers"),
    ({"features": torch.randn(4, 3), "labels": torch.tensor([0, 1] * 2)}, {"classes": "5"}, "list of names"),
])
def test_malformed_feature_files(tmp_path, tensors, meta, needle):
    f = tmp_path / "x.safetensors"
    save_file(tensors, str(f), metadata=meta)
    with pytest.raises(SSLProbeError, match=needle):
        load_features(f)


# ---------------------------------------------------------------- an honest verdict (issue 11)

def test_label_subsets_choose_C_with_their_own_labels_only():
    """A 10 % point must not pick C with the validation split's labels: scramble them, same choice."""
    X, y = blobs(80, 4, 12, sep=2.0, noise=1.5, seed=21)
    tr, te = FeatureSet.from_arrays(X[:240], y[:240]), FeatureSet.from_arrays(X[240:], y[240:])
    va = FeatureSet.from_arrays(X[240:], y[240:])
    scrambled = FeatureSet.from_arrays(X[240:], np.roll(y[240:], 7))
    kw = {"test": te, "fractions": (0.25,), "shots": (1, 4), "seeds": 2, "knn_k": ()}
    a, b = probe(tr, val=va, **kw), probe(tr, val=scrambled, **kw)
    assert a.C != b.C or a.val_curve != b.val_curve  # the main search does use val
    for pa, pb in zip(a.label_efficiency.points, b.label_efficiency.points):
        assert pa.C == pb.C and pa.linear == pb.linear
    frac, one, four = a.label_efficiency.points
    assert frac.C_rule == ["5-fold CV within the subset"] and four.C_rule == ["4-fold CV within the subset"]
    assert one.C_rule[0].startswith("default C=1") and one.C == [1.0, 1.0]
    assert "k-fold CV" in a.label_efficiency.C_selection


def test_test_metrics_carry_bootstrap_intervals():
    X, y = blobs(60, 3, 8, sep=2.0, noise=1.5, seed=22)
    r = probe(FeatureSet.from_arrays(X[:120], y[:120]), test=FeatureSet.from_arrays(X[120:], y[120:]), knn_k=(5,))
    for m in (r.test, r.val, r.knn.test):
        lo, hi = m.ci.top1
        assert lo <= m.top1 <= hi and hi > lo
        assert m.ci.balanced_accuracy[0] <= m.balanced_accuracy <= m.ci.balanced_accuracy[1]
        assert m.ci.macro_f1[0] <= m.macro_f1 <= m.ci.macro_f1[1]
    assert len(r.test.predictions) == 60 and r.test_labels == y[120:].tolist()
    assert "predictions" not in summary(r)["test"]


def test_metric_defaults_to_balanced_whatever_the_class_mix():
    X, y = imbalanced([150, 30, 20], seed=3)  # 7.5 : 1
    r = probe(FeatureSet.from_arrays(X, y), knn_k=(1, 5, 50))
    assert (r.selection.metric, r.selection.reason) == ("balanced", None) and r.metric == "balanced"
    assert r.selection.imbalance == pytest.approx(7.5) and r.knn.selected_by == "balanced"
    ks = r.knn.by_k
    assert r.knn.k == max((1, 5, 50), key=lambda k: (ks[str(k)].val.balanced_accuracy, k == 20, -k))
    top1 = probe(FeatureSet.from_arrays(X, y), knn_k=(), metric="top1")
    assert (top1.selection.metric, top1.selection.reason) == ("top1", None)
    Xb, yb = blobs(40, 3, 6, seed=23)
    balanced = probe(FeatureSet.from_arrays(Xb, yb), knn_k=()).selection
    assert balanced.metric == "balanced" and balanced.imbalance == 1.0
    with pytest.raises(SSLProbeError, match="--metric must be one of balanced, top1, macro-f1"):
        probe(FeatureSet.from_arrays(Xb, yb), metric="f1")
    with pytest.raises(SSLProbeError, match="unknown probe option 'select'"):
        probe(FeatureSet.from_arrays(Xb, yb), select="top1")


def test_macro_f1_chooses_C_by_macro_f1():
    """Same fits, another ranking: top-1 and macro-F1 peak at different C's of this imbalanced path."""
    X, y = imbalanced([120, 50, 30], seed=4)
    by = {m: probe(FeatureSet.from_arrays(X, y), patience=None, knn_k=(), metric=m) for m in ("top1", "macro-f1")}
    assert by["top1"].val_curve == by["macro-f1"].val_curve  # the path does not depend on the metric
    for metric, key in (("top1", "top1"), ("macro-f1", "macro_f1")):
        curve = by[metric].val_curve
        best = max(getattr(p, key) for p in curve)
        assert by[metric].C == min((p for p in curve if getattr(p, key) == best), key=lambda p: (p.loss, p.C)).C
        assert by[metric].selection.metric == metric
    assert by["top1"].C != by["macro-f1"].C
    assert by["macro-f1"].val.macro_f1 > by["top1"].val.macro_f1 and by["top1"].val.top1 > by["macro-f1"].val.top1


def _two_clusters(n0: int, n1: int, *, spread: float, seed: int) -> np.ndarray:
    """Rows at angles near 0 (the first n0) and near π/2 (the next n1) in 2-D: cosine kNN sees the angle only."""
    g = np.random.default_rng(seed)
    angle = np.concatenate([np.zeros(n0), np.full(n1, math.pi / 2)]) + g.uniform(-spread, spread, n0 + n1)
    return np.stack([np.cos(angle), np.sin(angle)], 1).astype(np.float32)


def test_macro_f1_and_top1_choose_different_knn_k():
    """A constructed case: 16 majority and 4 minority train rows; of the 8 majority val rows 3 lie among the minority.
    k = 1 follows the neighbours (top-1 0.7, macro-F1 0.67); k = 50 (clipped to 20, near-uniform votes) always
    answers the majority (top-1 0.8, macro-F1 0.44). Top-1 takes k = 50, macro-F1 and balanced accuracy k = 1."""
    train = FeatureSet.from_arrays(_two_clusters(16, 4, spread=0.3, seed=0), np.repeat([0, 1], [16, 4]))
    xv = np.concatenate([_two_clusters(5, 0, spread=0.1, seed=1), _two_clusters(0, 5, spread=0.1, seed=2)])
    val = FeatureSet.from_arrays(xv, np.array([0] * 8 + [1] * 2))  # rows 5-7: majority labels at the minority
    chosen = {}
    for metric in ("top1", "macro-f1", "balanced"):
        r = probe(train, val=val, C=1.0, knn_k=(1, 50), knn_temperature=1e3, metric=metric)
        chosen[metric] = r.knn.k
        one, fifty = r.knn.by_k["1"].val, r.knn.by_k["50"].val
        assert (one.top1, fifty.top1) == pytest.approx((0.7, 0.8))
        assert (one.macro_f1, fifty.macro_f1) == pytest.approx(((10 / 13 + 4 / 7) / 2, (16 / 18) / 2))
    assert chosen == {"top1": 50, "macro-f1": 1, "balanced": 1}


def test_label_curve_is_in_the_declared_metric_with_the_sample_std():
    """On an imbalanced set the default curve is balanced accuracy: the whole-split point is the val score of the
    main search's model (and kNN's), each ± is the sample std of the draws, report.json says the metric."""
    import statistics

    X, y = imbalanced([150, 30, 20], seed=3)
    r = probe(FeatureSet.from_arrays(X, y), knn_k=(20,), fractions=(0.5, 1.0), seeds=3)
    le = r.label_efficiency
    assert (le.metric, le.scored_on) == ("balanced", "val") and r.to_json()["label_efficiency"]["metric"] == "balanced"
    half, whole = le.points
    assert whole.linear.mean == pytest.approx(r.val.balanced_accuracy) and r.val.balanced_accuracy < r.val.top1 - 0.01
    assert whole.knn.mean == pytest.approx(r.knn.by_k["20"].val.balanced_accuracy)
    assert half.seeds == 3 and half.linear.std == pytest.approx(statistics.stdev(half.linear.runs)) and half.linear.std
    assert half.knn.std == pytest.approx(statistics.stdev(half.knn.runs))
    top1 = probe(FeatureSet.from_arrays(X, y), knn_k=(20,), fractions=(1.0,), seeds=3, metric="top1")
    assert top1.label_efficiency.metric == "top1" and top1.label_efficiency.points[0].linear.mean == top1.val.top1
