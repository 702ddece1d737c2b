"""Every figure: a probe's, a fine-tune's, the pretraining loss curve and its view preview.

matplotlib is an optional dependency (``pip install sslprobe[plots]``).

Each function writes one PNG atomically through ``matplotlib.figure.Figure`` (no pyplot: no
global backend state, no windows); ``write_plots`` and ``write_finetune_plots`` return the files
written, or a note saying why none were (matplotlib missing). Nothing here is needed for the tables
or JSON.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sslprobe.config.common import METRIC_KEYS, METRIC_NAMES
from sslprobe.fileio import atomic_path

if TYPE_CHECKING:  # pragma: no cover
    from sslprobe.results import CPoint, CurvePoint, EpochPoint, FinetuneResult, ProbeResult

_NO_MATPLOTLIB = "plots skipped: matplotlib is not installed (pip install 'sslprobe[plots]')"
# The curves of a label-efficiency figure: (the points' key, legend name, colour; None: matplotlib's cycle).
PROBE_CURVES = (("linear", "linear", "tab:blue"), ("knn", "kNN", "tab:green"))
FINETUNE_CURVES = (("finetune", "fine-tuned", None),)


def _save(fig: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")


def confusion_png(conf: list[list[int]], classes: list[str], path: Path, *, title: str) -> None:
    """Row-normalised confusion matrix (rows: true class, columns: prediction), counts when small."""
    import numpy as np
    from matplotlib.figure import Figure

    m = np.asarray(conf, dtype=float)
    norm = m / np.maximum(m.sum(1, keepdims=True), 1)
    k = len(classes)
    fig = Figure(figsize=(min(2 + 0.45 * k, 20), min(1.6 + 0.45 * k, 20)))
    ax = fig.subplots()
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    if k <= 40:
        ax.set_xticks(range(k), classes, rotation=90, fontsize=7)
        ax.set_yticks(range(k), classes, fontsize=7)
    if k <= 20:
        for i in range(k):
            for j in range(k):
                if m[i, j]:
                    ax.text(j, i, int(m[i, j]), ha="center", va="center", fontsize=6,
                            color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of true class")
    _save(fig, path)


def val_curve_png(curve: Sequence[CPoint], chosen: float, path: Path, *, metric: str = "top1") -> None:
    """The validation metric that chose C (and the loss) against C on a log axis, the chosen C marked."""
    from matplotlib.figure import Figure

    cs = [p.C for p in curve]
    fig = Figure(figsize=(6, 3.6))
    ax = fig.subplots()
    scored = [(p.C, v) for p in curve if (v := getattr(p, METRIC_KEYS[metric])) is not None]
    ax.plot([c for c, _ in scored], [100 * v for _, v in scored], "o-", ms=3, label=f"val {METRIC_NAMES[metric]}")
    ax.axvline(chosen, color="grey", ls="--", lw=1, label=f"chosen C = {chosen:.3g}")
    ax.set_xscale("log")
    ax.set_xlabel("C (inverse L2 strength)")
    ax.set_ylabel(f"val {METRIC_NAMES[metric]} (%)")
    losses = [(c, p.loss) for c, p in zip(cs, curve) if p.loss is not None]
    if losses:
        ax2 = ax.twinx()
        ax2.plot(*zip(*losses), color="tab:orange", lw=1, alpha=0.7)
        ax2.set_ylabel("val loss", color="tab:orange")
    ax.legend(loc="lower right", fontsize=8)
    _save(fig, path)


def label_efficiency_png(points: Sequence[CurvePoint], path: Path, *, scored_on: str,
                         curves: Sequence[tuple[str, str, str | None]] = PROBE_CURVES, metric: str = "top1") -> None:
    """The curve's ``metric`` (mean ± std over the draws) against labeled train rows, log x axis: one line per curve
    and kind.

    ``curves``: :data:`PROBE_CURVES` (linear and kNN) or :data:`FINETUNE_CURVES` (the fine-tuned network).
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.6))
    ax = fig.subplots()
    for kind, marker in (("fraction", "o"), ("shots", "s")):
        pts = sorted((p for p in points if p.kind == kind), key=lambda p: p.n_train)
        for key, name, colour in curves:
            rows = [(p.n_train, s) for p in pts if (s := p.stats(key))]
            if rows:
                ax.errorbar([n for n, _ in rows], [100 * s.mean for _, s in rows],
                            yerr=[100 * s.std for _, s in rows], marker=marker, color=colour, capsize=3,
                            label=f"{name} ({kind})")
    ax.set_xscale("log")
    ax.set_xlabel("labeled train rows")
    ax.set_ylabel(f"{scored_on} {METRIC_NAMES.get(metric, metric)} (%)")
    ax.legend(fontsize=8)
    _save(fig, path)


def learning_curve_png(history: Sequence[EpochPoint], chosen: int | None, path: Path, *, metric: str = "top1") -> None:
    """A fine-tune's training and validation loss against epoch, the validation ``metric`` that chose the epoch on a
    second axis, the chosen epoch marked."""
    from matplotlib.figure import Figure

    epochs = [h.epoch for h in history]
    fig = Figure(figsize=(6, 3.6))
    ax = fig.subplots()
    ax.plot(epochs, [h.train_loss for h in history], "o-", ms=3, label="train loss")
    val = [(h.epoch, h.val_loss, h.val_score(metric)) for h in history
           if h.val_loss is not None and h.val_score(metric) is not None]
    if val:
        ax.plot([v[0] for v in val], [v[1] for v in val], "o-", ms=3, label="val loss")
        ax2 = ax.twinx()
        ax2.plot([v[0] for v in val], [100 * v[2] for v in val], "s-", ms=3, color="tab:green")
        ax2.set_ylabel(f"val {METRIC_NAMES[metric]} (%)", color="tab:green")
    if chosen is not None:
        ax.axvline(chosen, color="grey", ls="--", lw=1, label=f"chosen epoch {chosen}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend(loc="upper right", fontsize=8)
    _save(fig, path)


def arms_label_efficiency_png(curves: Mapping[str, Sequence[CurvePoint]], path: Path, *, scored_on: str,
                              metric: str = "top1") -> None:
    """The curves' ``metric`` (mean ± std over the draws) against labelled train rows, one line per arm (the linear
    probe's, or a fine-tuned network's), log x axis."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.2))
    ax = fig.subplots()
    for name, points in curves.items():
        pts = sorted(((p.n_train, p.headline) for p in points if p.headline), key=lambda t: t[0])
        if pts:
            ax.errorbar([n for n, _ in pts], [100 * s.mean for _, s in pts], yerr=[100 * s.std for _, s in pts],
                        marker="o", capsize=3, label=name)
    ax.set_xscale("log")
    ax.set_xlabel("labelled train images")
    ax.set_ylabel(f"{scored_on} {METRIC_NAMES.get(metric, metric)} (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def loss_curve_png(losses: list[tuple[int, float]], knn: list[tuple[int, float]], path: Path) -> None:
    """Pretraining loss against step, the online kNN top-1 on a second axis when it was logged."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    ax.plot(*zip(*losses), label="BYOL loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if knn:
        ax2 = ax.twinx()
        ax2.plot(*zip(*knn), "o-", color="tab:orange", label="kNN top-1")
        ax2.set_ylabel("kNN top-1")
    ax.set_title("BYOL pretraining")
    _save(fig, path)


def views_png(stored: Any, aspect: list[float], view1: Any, view2: Any, path: Path, *, title: str) -> None:
    """One row per image: the stored image at its own aspect, then its two views ((n, H, W, C) arrays in [0, 1])."""
    from matplotlib.figure import Figure

    n = len(stored)
    fig = Figure(figsize=(7.5, 2.3 * n + 0.4))
    axes = fig.subplots(n, 3, squeeze=False)
    for i in range(n):
        for j, (img, name) in enumerate(((stored[i], "image (whole)"), (view1[i], "view 1"), (view2[i], "view 2"))):
            ax = axes[i][j]
            grey = img.shape[-1] == 1
            # the store squashes each image to a square; aspect = 1 / (width / height) shows it as it was
            ax.imshow(img[..., 0] if grey else img, cmap="gray" if grey else None, vmin=0, vmax=1,
                      aspect=1 / aspect[i] if j == 0 else 1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(name, fontsize=9)
    fig.suptitle(title, fontsize=10)
    _save(fig, path)


def _have_matplotlib() -> bool:
    try:
        import matplotlib.figure  # noqa: F401  (Figure objects render without pyplot or a backend switch)
    except ImportError:
        return False
    return True


def _confusion_file(result: ProbeResult | FinetuneResult, out: Path, *, who: str) -> list[str]:
    """confusion.png of the test split (else validation), titled "WHO, SPLIT"; nothing when it has no matrix."""
    split = result.headline_split
    metrics = result.split(split)
    if metrics is None or not metrics.confusion:
        return []
    confusion_png(metrics.confusion, list(result.classes), out / "confusion.png", title=f"{who}, {split}")
    return ["confusion.png"]


def _label_efficiency_file(result: ProbeResult | FinetuneResult, out: Path, *,
                           curves: Sequence[tuple[str, str, str | None]]) -> list[str]:
    """label_efficiency.png when the result has label-efficiency points."""
    le = result.label_efficiency
    if not (le and le.points):
        return []
    label_efficiency_png(le.points, out / "label_efficiency.png", scored_on=le.scored_on, curves=curves,
                         metric=le.scored_by)
    return ["label_efficiency.png"]


def write_plots(result: ProbeResult, out: str | os.PathLike) -> tuple[list[str], str | None]:
    """All figures for a probe result into ``out``: (file names written, note or None)."""
    if not _have_matplotlib():
        return [], _NO_MATPLOTLIB
    out = Path(out)
    written = _confusion_file(result, out, who="linear probe")
    if len(result.val_curve) > 1:
        val_curve_png(result.val_curve, result.C, out / "val_curve.png", metric=result.metric)
        written.append("val_curve.png")
    return written + _label_efficiency_file(result, out, curves=PROBE_CURVES), None


def write_finetune_plots(result: FinetuneResult, out: str | os.PathLike) -> tuple[list[str], str | None]:
    """A fine-tune's figures into ``out`` (confusion, learning curve, label efficiency): (file names, note or None)."""
    if not _have_matplotlib():
        return [], _NO_MATPLOTLIB
    out = Path(out)
    written = _confusion_file(result, out, who="fine-tuned")
    if result.learning_curve:
        learning_curve_png(result.learning_curve, result.chosen.epoch if result.chosen else None,
                           out / "learning_curve.png", metric=result.metric)
        written.append("learning_curve.png")
    return written + _label_efficiency_file(result, out, curves=FINETUNE_CURVES), None


__all__ = ["FINETUNE_CURVES", "PROBE_CURVES", "arms_label_efficiency_png", "confusion_png",
           "label_efficiency_png", "learning_curve_png", "loss_curve_png", "val_curve_png", "views_png",
           "write_finetune_plots", "write_plots"]
