#!/usr/bin/env python3
"""sslprobe's whole linear probe (C path over the 45-point grid + refit) vs ONE sklearn fit.

Both run in this process on the same data: sslprobe picks C on its 20 % hold-out and refits on
train+val; sklearn then fits once (LogisticRegression, lbfgs, max_iter=1000) at that C on the same
standardised train+val rows, and both score the same test rows. Prints times, test top-1 and the
ratio. kNN is left out of the timed run (sklearn does none); --knn prints its cost separately.

    python bench/probe_vs_sklearn.py --features feats/train --test feats/test [--knn]
    python bench/probe_vs_sklearn.py --synthetic 5000 256 10

On a CPU shared with other busy processes, OpenMP's default spin-waiting can cost ~8 ms per
parallel op (torch's and sklearn's alike); OMP_WAIT_POLICY=PASSIVE in the environment avoids it.
"""
from __future__ import annotations

import argparse
import math
import time
import warnings

import numpy as np
import torch

from sslprobe.probe import FeatureSet, load_features, probe, stratified_split


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--features", help="train feature dir (or .safetensors) from `sslprobe extract`")
    src.add_argument("--synthetic", nargs=3, type=int, metavar=("N", "D", "K"))
    ap.add_argument("--test", help="test feature dir (required with --features)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--full-grid", action="store_true", help="evaluate all 45 C's (no early stop)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--knn", action="store_true", help="also time kNN (k = 10, 20, 200) separately")
    a = ap.parse_args()
    if a.features and not a.test:
        ap.error("--features needs --test")
    train, test = synthetic(*a.synthetic, seed=a.seed) if a.synthetic else (load_features(a.features),
                                                                            load_features(a.test))
    n, d = train.features.shape
    print(f"data: train {n}x{d}, test {test.features.shape[0]}, {len(set(train.labels.tolist()) - {-1})} classes; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    # warm-up so one-time costs (kernel loading, CUDA context) are not billed to the run
    probe(FeatureSet.from_arrays(train.features[:64], train.labels[:64]), C=1.0, knn_k=(), device=a.device)
    # timed without kNN (sklearn does no kNN); kNN's cost is printed from a second, untimed run
    t = time.perf_counter()
    r = probe(train, test=test, seed=a.seed, device=a.device, patience=None if a.full_grid else 5, knn_k=())
    t_ours = time.perf_counter() - t
    iters = sum(p["iters"] for p in r["val_curve"])
    knn = probe(train, test=test, seed=a.seed, device=a.device, C=r["C"]) if a.knn else None

    # sklearn: same rows as sslprobe's refit (labeled train = fit split + hold-out), same C
    from sklearn.linear_model import LogisticRegression

    keep = train.labels >= 0
    X, y = train.features[keep].numpy(), train.labels[keep].numpy()
    mean, std = X.mean(0, dtype=np.float64), X.std(0, dtype=np.float64)
    std[std <= 1e-6 * (1 + np.abs(mean))] = 1.0
    Xs = ((X - mean) / std).astype(np.float32)
    t_lab = test.labels >= 0
    Xt = ((test.features[t_lab].numpy() - mean) / std).astype(np.float32)
    yt = test.labels[t_lab].numpy()
    t = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sk = LogisticRegression(C=r["C"], max_iter=1000).fit(Xs, y)
    t_sk = time.perf_counter() - t
    sk_top1 = float((sk.predict(Xt) == yt).mean())
    converged = not any("converge" in str(w.message) for w in caught)
    _, held = stratified_split(torch.as_tensor(y), fraction=0.2, seed=a.seed)

    tm = r["timing"]
    print(f"sslprobe : {len(r['val_curve'])}-point C path + refit   {t_ours:8.2f} s   "
          f"test top-1 {r['test']['top1']:.4f}   (C={r['C']:.3g}, {iters} L-BFGS iters on the path, "
          f"{r['refit_iters']} in the refit, hold-out {held.numel()} rows, device {r['device']})")
    print(f"           search {tm['search']:.2f} s, refit {tm['refit']:.2f} s, checks {tm['load']:.2f} s")
    if knn:
        print(f"           kNN (k = {', '.join(knn['knn']['by_k'])}, not in the ratio) {knn['timing']['knn']:.2f} s, "
              f"test top-1 @{knn['knn']['k']} {knn['knn']['test']['top1']:.4f}")
    print(f"sklearn  : one lbfgs fit at that C         {t_sk:8.2f} s   test top-1 {sk_top1:.4f}   "
          f"(n_iter {int(sk.n_iter_[0])}{'' if converged else ', hit max_iter'})")
    print(f"ratio    : sklearn single fit / sslprobe full probe = {t_sk / t_ours:.2f}x")


if __name__ == "__main__":
    main()
