"""The rows one probe learns from: stratified draws and the fit / validation / test splits.

Every draw (the validation hold-out, a label-efficiency subset, a cross-validation fold) is built
from one seeded order of the rows grouped by class (``labelcurves.class_ranks``), so each is stratified and
reproducible from its seed alone. Class names are aligned across the sets once, here; the steps
after this see labels in [0, K) and warnings collected on the way (docs/probe.md).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from sslprobe.errors import SSLProbeError
from sslprobe.labelcurves import class_ranks
from sslprobe.probing.features import FeatureSet, align_labels


def stratified_split(labels: torch.Tensor, *, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (keep, held_out): round(fraction·n_c) of each class held out, at least one kept."""
    order, rank, counts = class_ranks(labels, seed=seed)
    sorted_labels = labels.cpu()[order]
    n_out = torch.minimum(torch.floor(counts * fraction + 0.5).long(), (counts - 1).clamp_min(0))
    out = rank < n_out[sorted_labels]
    return order[~out].sort().values, order[out].sort().values


def stratified_folds(labels: torch.Tensor, *, k: int, seed: int) -> list[torch.Tensor]:
    """``k`` disjoint sorted index sets; each class's rows are dealt round-robin in a seeded order, so
    every fold holds ⌊n_c/k⌋ or ⌈n_c/k⌉ rows of class c (scikit-learn's StratifiedKFold's rule)."""
    order, rank, _ = class_ranks(labels, seed=seed)
    fold = rank % k
    return [order[fold == i].sort().values for i in range(k)]


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

    @property
    def evaluation(self) -> tuple[str, torch.Tensor, torch.Tensor]:
        """(name, rows, labels) a label curve is scored on: test when there is one, else validation."""
        return ("test", *self.test) if self.test is not None else ("val", self.Xv, self.yv)


def _labelled(fs: FeatureSet, y: torch.Tensor, name: str, warns: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    lab = y >= 0
    if not lab.any():
        raise SSLProbeError(f"the {name} set has no labeled rows to score; label it or drop it")
    if not lab.all():
        warns.append(f"{name}: {int((~lab).sum())} unlabeled rows excluded from metrics")
    return fs.features[lab], y[lab]


def _train_rows(tr: FeatureSet, y: torch.Tensor, names: list[str],
                warns: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """The labelled train rows (N, D), (N,) in host memory; at least two classes."""
    keep = y >= 0
    if not keep.any():
        raise SSLProbeError(f"'{tr.source}' has no labeled rows; the probe needs labels (class folders)")
    if not keep.all():
        warns.append(f"train: ignored {int((~keep).sum())} unlabeled rows")
    X, y = tr.features[keep], y[keep]
    if y.unique().numel() < 2:
        raise SSLProbeError(f"train needs at least 2 classes with labeled rows, found only "
                            f"'{names[int(y[0])]}'; add images of other classes")
    return X, y


def _held_out(X: torch.Tensor, y: torch.Tensor, *, fraction: float, seed: int) -> tuple[torch.Tensor, ...]:
    """(Xf, yf, Xv, yv): a stratified validation hold-out of the train rows."""
    fit_idx, val_idx = stratified_split(y, fraction=fraction, seed=seed)
    if val_idx.numel() == 0:
        raise SSLProbeError("train is too small for a validation hold-out (one row per class); "
                            "pass a separate val set or a fixed C")
    return X[fit_idx], y[fit_idx], X[val_idx], y[val_idx]


def _warn_unseen(s: Splits) -> None:
    """Validation rows of classes the fit split lacks, and test rows of classes train+val lack, count as errors."""
    for name, ev, ref in (("val", s.yv, s.yf), ("test", s.test[1] if s.test is not None else None, s.yall)):
        unseen = ~torch.isin(ev, ref) if ev is not None else torch.zeros(0, dtype=torch.bool)
        if unseen.any():
            which = sorted({s.names[i] for i in ev[unseen].tolist()})
            s.warns.append(f"{name}: {int(unseen.sum())} rows of classes not in train "
                           f"({', '.join(which[:5])}) count as errors")


def make_splits(sets: Mapping[str, FeatureSet | None], *, val_fraction: float, seed: int) -> Splits:
    """Align class names across sets, drop unlabelled rows, hold out a stratified val split if none given."""
    names = list(sets["train"].classes)
    labels = {k: align_labels(v, names) for k, v in sets.items() if v is not None}
    warns: list[str] = []
    X, y = _train_rows(sets["train"], labels["train"], names, warns)
    if sets["val"] is None:
        Xf, yf, Xv, yv = _held_out(X, y, fraction=val_fraction, seed=seed)
    else:
        (Xf, yf), (Xv, yv) = (X, y), _labelled(sets["val"], labels["val"], "val", warns)
    test = _labelled(sets["test"], labels["test"], "test", warns) if sets["test"] is not None else None
    s = Splits(names, X, Xf, yf, Xv, yv, test, sets["val"] is not None, warns)
    _warn_unseen(s)
    return s


__all__ = ["Splits", "make_splits", "stratified_folds", "stratified_split"]
