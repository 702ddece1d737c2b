#!/usr/bin/env python3
"""sslprobe's whole linear probe (C search + refit) vs ONE scikit-learn fit, same data, one run.

sslprobe picks C on its stratified 20 % hold-out (``--search grid``: the 45-point path with early
stop; ``binary``: CLIP's coarse-then-bisect) and refits on train+val; scikit-learn then fits once
(LogisticRegression, lbfgs, max_iter=1000, default tol) at the C sslprobe chose, on the same
standardised train+val rows, and both score the same test rows. Prints times, test top-1 and the
ratio (sslprobe full probe / one sklearn fit: below 1 means the whole protocol is faster than a
single sklearn fit). kNN is left out of the timed run (sklearn does none).

    python bench/probe_vs_sklearn.py --features feats/train --test feats/test --search grid binary
    python bench/probe_vs_sklearn.py --fmnist-idx ~/.cache/fashion-mnist-deb/usr/share/datasets/fashion-mnist
    python bench/probe_vs_sklearn.py --synthetic 5000 256 10
    python bench/probe_vs_sklearn.py --digits --exact            # the chosen C against sklearn's exact protocol
    python bench/probe_vs_sklearn.py --fmnist-idx DIR --search grid --knn   # + kNN timed beside the linear probe
    python bench/probe_vs_sklearn.py --fmnist-idx DIR --search grid --processes 3   # each side its own process

``--processes R`` runs each side in its own process, alternated R times (sslprobe first: scikit-learn
fits at the C it chose), so neither library's thread pool (OpenBLAS, torch's OpenMP) sits beside the
other's. Each child times its own fit (the table's numbers: the probe's search + refit; one sklearn
fit) and the driver times the whole process (imports and data loading included).

Run timings on a quiet machine (``flock /tmp/bench.lock …``, OMP_WAIT_POLICY=PASSIVE: busy-waiting
OpenMP threads of either library cost ~8 ms per parallel op when another process holds a core).
"""
from __future__ import annotations

import argparse
import gzip
import math
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from sslprobe.probing.features import FeatureSet, load_features
from sslprobe.probing.probe import probe


def synthetic(n: int, d: int, k: int, *, seed: int = 0) -> tuple[FeatureSet, FeatureSet]:
    """Embedding-like features: class means in a 32-dim subspace, anisotropic noise, ReLU'd.

    The ReLU and uneven feature scales make it ill-conditioned like real backbone features, so
    neither solver gets an easy ride. Test = n // 5 more rows from the same distribution.
    """
    g = np.random.default_rng(seed)
    r = min(32, d)
    means = g.normal(size=(k, r)) * 0.6
    mix = g.normal(size=(r, d)) / math.sqrt(r)
    scales = np.exp(g.normal(size=d) * 0.7)

    def draw(m: int, s: int) -> FeatureSet:
        gg = np.random.default_rng(s)
        y = gg.integers(0, k, m)
        z = (means[y] + gg.normal(size=(m, r))) @ mix + 0.5 * gg.normal(size=(m, d))  # (m, d)
        x = np.maximum(z, 0) * scales
        return FeatureSet.from_arrays(x.astype(np.float32), y, source=f"synthetic {m}x{d}x{k}")

    return draw(n, seed + 1), draw(max(n // 5, k), seed + 2)


def fmnist_pixels(idx_dir: str) -> tuple[FeatureSet, FeatureSet]:
    """Fashion-MNIST raw pixels (784-d, /255) straight from the IDX files: 60k train, 10k test."""
    def read(prefix: str) -> FeatureSet:
        with gzip.open(Path(idx_dir) / f"{prefix}-images-idx3-ubyte.gz") as f:
            x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 784)
        with gzip.open(Path(idx_dir) / f"{prefix}-labels-idx1-ubyte.gz") as f:
            y = np.frombuffer(f.read(), np.uint8, offset=8)
        return FeatureSet.from_arrays(x.astype(np.float32) / 255, y.astype(np.int64), source=f"fmnist {prefix} pixels")

    return read("train"), read("t10k")


def digits(*, seed: int = 0) -> tuple[FeatureSet, FeatureSet]:
    """scikit-learn's bundled 8×8 digits (1,797 × 64, 10 classes): a seeded 80 / 20 train/test split."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    p = np.random.default_rng(seed).permutation(len(y))
    X, y = X[p].astype(np.float32), y[p].astype(np.int64)
    cut = int(0.8 * len(y))
    return (FeatureSet.from_arrays(X[:cut], y[:cut], source="sklearn digits train"),
            FeatureSet.from_arrays(X[cut:], y[cut:], source="sklearn digits test"))


def sklearn_protocol(train: FeatureSet, *, seed: int) -> tuple[float, float]:
    """The exact protocol in scikit-learn: the probe's own stratified 20 % hold-out and train
    standardisation, one tight float64 fit per grid C (tol 1e-10), best val top-1, ties → lower val
    log-loss then smaller C. Returns (chosen C, seconds)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss

    from sslprobe.probing.holdout import stratified_split
    from sslprobe.probing.search import DEFAULT_CS

    keep = train.labels >= 0
    X, y = train.features[keep].double().numpy(), train.labels[keep].numpy()
    fit_idx, val_idx = (i.numpy() for i in stratified_split(torch.as_tensor(y), fraction=0.2, seed=seed))
    mean, std = X[fit_idx].mean(0), X[fit_idx].std(0)
    std[std <= 1e-6 * (1 + np.abs(mean))] = 1.0
    Xf, Xv = (X[fit_idx] - mean) / std, (X[val_idx] - mean) / std
    t, scores = time.perf_counter(), []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for c in DEFAULT_CS:
            sk = LogisticRegression(C=c, tol=1e-10, max_iter=100_000).fit(Xf, y[fit_idx])
            top1 = float((sk.predict(Xv) == y[val_idx]).mean())
            scores.append((top1, -log_loss(y[val_idx], sk.predict_proba(Xv), labels=sk.classes_), -c, c))
    return max(scores)[3], time.perf_counter() - t


def sklearn_fit(train: FeatureSet, test: FeatureSet, C: float) -> tuple[float, float, int, bool]:
    """One LogisticRegression fit on the standardised labeled train rows: (seconds, test top-1, n_iter, converged)."""
    from sklearn.linear_model import LogisticRegression

    keep = train.labels >= 0
    X, y = train.features[keep].numpy(), train.labels[keep].numpy()
    mean, std = X.mean(0, dtype=np.float64), X.std(0, dtype=np.float64)
    std[std <= 1e-6 * (1 + np.abs(mean))] = 1.0
    Xs = ((X - mean) / std).astype(np.float32)
    t_lab = test.labels >= 0
    Xt = ((test.features[t_lab].numpy() - mean) / std).astype(np.float32)
    t = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sk = LogisticRegression(C=C, max_iter=1000).fit(Xs, y)
    seconds = time.perf_counter() - t
    converged = not any("converge" in str(w.message) for w in caught)
    return seconds, float((sk.predict(Xt) == test.labels[t_lab].numpy()).mean()), int(sk.n_iter_[0]), converged


def child(a: argparse.Namespace, train: FeatureSet, test: FeatureSet) -> None:
    """One side, alone in this process: one JSON line with its fit time (and C, test top-1)."""
    import json

    if a.child == "sklearn":
        seconds, top1, n_iter, converged = sklearn_fit(train, test, a.C)
        print(json.dumps({"seconds": seconds, "top1": top1, "iters": n_iter, "converged": converged}))
        return
    t = time.perf_counter()
    r = probe(train, test=test, seed=a.seed, device=a.device, search=a.search[0],
              patience=None if a.full_grid else 5, knn_k=())
    seconds = time.perf_counter() - t
    print(json.dumps({"seconds": seconds, "top1": r.test.top1, "C": r.C, "fits": len(r.val_curve),
                      "iters": sum(p.iters for p in r.val_curve), "refit_iters": r.refit_iters}))


def whole_processes(a: argparse.Namespace) -> None:
    """Alternate the two sides as separate processes; print each round and the medians."""
    import json
    import statistics
    import subprocess
    import sys

    argv = [x for x in sys.argv[1:] if x not in ("--processes", str(a.processes))]

    def run(*extra: str) -> tuple[dict, float]:
        t = time.perf_counter()
        done = subprocess.run([sys.executable, __file__, *argv, *extra], check=True, capture_output=True, text=True)
        return json.loads(done.stdout.strip().splitlines()[-1]), time.perf_counter() - t

    rows: dict[str, list[tuple[dict, float]]] = {"sslprobe": [], "sklearn": []}
    for r in range(a.processes):
        ours, wall = run("--child", "sslprobe")
        rows["sslprobe"].append((ours, wall))
        theirs, wall_sk = run("--child", "sklearn", "--C", repr(ours["C"]))
        rows["sklearn"].append((theirs, wall_sk))
        print(f"round {r + 1}: sslprobe {ours['seconds']:.1f} s (process {wall:.1f} s; {ours['fits']} fits, "
              f"{ours['iters']} + {ours['refit_iters']} iters, C={ours['C']:.3g}, top-1 {ours['top1']:.4f}); "
              f"sklearn {theirs['seconds']:.1f} s (process {wall_sk:.1f} s; {theirs['iters']} iters, "
              f"top-1 {theirs['top1']:.4f})", flush=True)
    med = {k: statistics.median(x[0]["seconds"] for x in v) for k, v in rows.items()}
    med_w = {k: statistics.median(x[1] for x in v) for k, v in rows.items()}
    print(f"median fit: sslprobe {med['sslprobe']:.1f} s, sklearn {med['sklearn']:.1f} s -> ratio "
          f"{med['sslprobe'] / med['sklearn']:.2f}x; whole processes {med_w['sslprobe']:.1f} s vs "
          f"{med_w['sklearn']:.1f} s -> {med_w['sslprobe'] / med_w['sklearn']:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--features", help="train feature dir (or .safetensors) from `sslprobe extract`")
    src.add_argument("--fmnist-idx", help="dir with Fashion-MNIST's *-idx*-ubyte.gz files (raw 784-d pixels)")
    src.add_argument("--synthetic", nargs=3, type=int, metavar=("N", "D", "K"))
    src.add_argument("--digits", action="store_true", help="scikit-learn's digits (1,437 train / 360 test)")
    ap.add_argument("--exact", action="store_true",
                    help="also run the exact protocol in scikit-learn (45 tight float64 fits) and compare the chosen C")
    ap.add_argument("--test", help="test feature dir (required with --features)")
    ap.add_argument("--search", nargs="+", choices=("grid", "binary"), default=["grid", "binary"])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--full-grid", action="store_true", help="evaluate all 45 C's (no early stop)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--knn", action="store_true", help="also time kNN (k = 10, 20, 200) separately")
    ap.add_argument("--processes", type=int, metavar="R",
                    help="each side in its own process, alternated R times (one --search mode)")
    ap.add_argument("--child", choices=("sslprobe", "sklearn"), help=argparse.SUPPRESS)
    ap.add_argument("--C", type=float, help=argparse.SUPPRESS)  # the sklearn child's C
    a = ap.parse_args()
    if a.processes:
        return whole_processes(a)
    if a.features and not a.test:
        ap.error("--features needs --test")
    if a.synthetic:
        train, test = synthetic(*a.synthetic, seed=a.seed)
    elif a.digits:
        train, test = digits(seed=a.seed)
    elif a.fmnist_idx:
        train, test = fmnist_pixels(a.fmnist_idx)
    else:
        train, test = load_features(a.features), load_features(a.test)
    if a.child:
        return child(a, train, test)
    n, d = train.features.shape
    print(f"data: {train.source}: train {n}x{d}, test {test.features.shape[0]}, "
          f"{len(set(train.labels.tolist()) - {-1})} classes; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")

    # warm-up so one-time costs (kernel loading, CUDA context) are not billed to the run
    step = max(1, n // 256)  # strided: feature files are often sorted by class
    probe(FeatureSet.from_arrays(train.features[::step], train.labels[::step]), C=1.0, knn_k=(), device=a.device)
    sk_cache: dict[float, tuple[float, float, int, bool]] = {}
    for mode in a.search:
        t = time.perf_counter()
        r = probe(train, test=test, seed=a.seed, device=a.device, search=mode,
                  patience=None if a.full_grid else 5, knn_k=())
        t_ours = time.perf_counter() - t
        if r.C not in sk_cache:
            sk_cache[r.C] = sklearn_fit(train, test, r.C)
        t_sk, sk_top1, sk_iter, converged = sk_cache[r.C]
        tm, iters = r.timing, sum(p.iters for p in r.val_curve)
        print(f"[{mode}] sslprobe: {len(r.val_curve)} fits + refit {t_ours:8.2f} s  "
              f"test top-1 {r.test.top1:.4f}  "
              f"(C={r.C:.3g}; {iters} L-BFGS iters on the path, {r.refit_iters} in the refit; "
              f"search {tm['search']:.1f} s, refit {tm['refit']:.1f} s; device {r.device})")
        print(f"[{mode}] sklearn : one lbfgs fit at C={r.C:.3g} {t_sk:8.2f} s  test top-1 {sk_top1:.4f}  "
              f"(n_iter {sk_iter}{'' if converged else ', hit max_iter'})")
        print(f"[{mode}] ratio   : sslprobe full probe / one sklearn fit = {t_ours / t_sk:.2f}x   "
              f"top-1 difference {100 * (r.test.top1 - sk_top1):+.2f} points")
        if a.exact:
            c_sk, t_exact = sklearn_protocol(train, seed=a.seed)
            same = math.isclose(c_sk, r.C, rel_tol=1e-6)
            print(f"[{mode}] exact   : scikit-learn's 45 tight fits choose C={c_sk:.3g} ({t_exact:.1f} s); "
                  f"sslprobe chose C={r.C:.3g} -> {'same' if same else 'DIFFERENT'}")
    if a.knn:  # the whole default probe, linear and kNN phases timed in the same run
        r = probe(train, test=test, seed=a.seed, device=a.device)
        tm = r.timing
        linear = tm["search"] + tm["refit"]
        print(f"kNN (k = {', '.join(r.knn.by_k)}; val and test queries) {tm['knn']:.2f} s vs linear probe "
              f"(search + refit) {linear:.2f} s in the same run: kNN / linear = {tm['knn'] / linear:.2f}x; "
              f"test top-1 kNN@{r.knn.k} {r.knn.test.top1:.4f}, linear {r.test.top1:.4f}")


if __name__ == "__main__":
    main()
