"""Which layer of a network to probe: each candidate scored on validation by one C search, the best chosen.

Random and weakly trained networks are read best at middle layers: the per-layer linear probes of
Zhang et al. 2017 ("Split-brain autoencoders": the random-init and self-supervised AlexNets peak at
conv2–conv4 and fall off by conv5) and of Goyal et al. 2019 ("Scaling and benchmarking self-supervised
visual representation learning": self-supervised ResNet-50s peak at res4, before the last stage). Probing only
the last layer therefore understates exactly the baselines a study compares BYOL against.

Each candidate gets what the probe does to choose C and nothing more — standardise on the fit split,
the protocol's C search (search.py: the grid or the binary search, same early stop), score validation
— so the choice costs one C path per layer: no label curve, no kNN sweep, no refit, no bootstrap; its
fits stop at ``LAYER_MAX_ITER`` L-BFGS iterations (below). The
best by the declared metric on validation wins; ties go to the lower validation loss (as C's do), then
to the deeper layer (the one probed before layers were chosen). The functions take train and
validation rows only: the test set cannot reach the choice.
"""
from __future__ import annotations

from collections.abc import Mapping

from sslprobe.config.probe import ProbeProtocol
from sslprobe.errors import SSLProbeError
from sslprobe.probing.compute import Solver
from sslprobe.probing.features import FeatureSet
from sslprobe.probing.holdout import make_splits
from sslprobe.probing.search import SearchSpec
from sslprobe.probing.solver import Standardizer
from sslprobe.results import LayerCandidate, LayerChoice

TIE_BREAK = "lower validation loss, then the deeper layer"
# Candidate fits stop at 200 L-BFGS iterations (the probe's may run 1,000). A path's cost is its weakest
# C's, at and past the optimum, where L-BFGS on ill-conditioned features runs to its cap for changes a
# ranking of layers does not need. On the demo's six candidates (test_resnet's stage2, stage3 and
# pre-logits, random init and BYOL, the Fashion-MNIST sample) the capped grid search chose the same C
# for all six and the same layer for both arms, validation scores within 0.25 points of the uncapped
# ones, for 2.2× less L-BFGS work (Σ iterations × width 3.10 M → 1.42 M).
LAYER_MAX_ITER = 200


def score_layer(layer: str, train: FeatureSet, val: FeatureSet | None, *, protocol: ProbeProtocol) -> LayerCandidate:
    """One layer's validation score: the protocol's C search on (train, val), as ``probe`` runs it (fits capped
    at ``LAYER_MAX_ITER`` iterations).

    ``val`` None holds out the protocol's ``val_fraction`` of train, as the probe would.
    """
    p = protocol
    splits = make_splits({"train": train, "val": val, "test": None}, val_fraction=p.val_fraction, seed=p.seed)
    solver = Solver.for_splits(splits, device=p.device, dtype=p.dtype, feature_dtype=p.feature_dtype,
                               chunk_rows=p.chunk_rows, max_iter=min(p.max_iter, LAYER_MAX_ITER), metric=p.metric)
    scaler = Standardizer.fit(splits.Xf, on=p.standardize)
    Zf, Zv = solver.design(splits.Xf, scaler), solver.design(splits.Xv, scaler)
    state = solver.path(Zf, splits.yf.to(solver.device), Zv, splits.yv.to(solver.device))
    SearchSpec(p.C, p.Cs, p.search, p.patience).run(state)
    C = state.best_c()
    score, loss, _ = state.points[C]
    return LayerCandidate(layer=layer, dim=int(splits.X.shape[1]), C=C, val=score,
                          val_loss=loss if loss != float("inf") else None, fits=len(state.points))


def choose_layer(candidates: Mapping[str, tuple[FeatureSet, FeatureSet | None]], *,
                 protocol: ProbeProtocol) -> LayerChoice:
    """The best of ``candidates`` (layer → (train, val), shallow to deep) by the declared metric on validation."""
    if not candidates:
        raise SSLProbeError("no layer to choose from")
    scored = [score_layer(name, tr, va, protocol=protocol) for name, (tr, va) in candidates.items()]
    depth = {c.layer: i for i, c in enumerate(scored)}
    best = max(scored, key=lambda c: (c.val, -(c.val_loss if c.val_loss is not None else float("inf")),
                                      depth[c.layer]))
    return LayerChoice(layer=best.layer, metric=protocol.metric, tie_break=TIE_BREAK, candidates=scored)


__all__ = ["LAYER_MAX_ITER", "TIE_BREAK", "choose_layer", "score_layer"]
