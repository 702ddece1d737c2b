"""Metrics, rich tables and JSON for probe results.

``classification_metrics`` is the one place accuracies are computed (linear and kNN alike).
rich is imported inside the render functions so ``sslprobe.probe`` stays cheap to import.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from sslprobe.fileio import write_json

if TYPE_CHECKING:  # pragma: no cover
    from rich.console import Console

_BULKY = ("per_class", "confusion")


def classification_metrics(scores: torch.Tensor, labels: torch.Tensor, *, num_classes: int) -> dict:
    """Top-1/top-5, balanced accuracy, macro-F1, per-class table and confusion matrix.

    ``scores`` (N, K) are logits, probabilities or votes (argmax = prediction; -inf marks a class
    the model cannot predict). ``labels`` (N,) in [0, K). Balanced accuracy is the mean recall over
    classes present in ``labels``; macro-F1 averages over classes present in labels or predictions
    (both as in scikit-learn). Confusion rows are true classes, columns predictions.
    """
    if scores.ndim != 2 or scores.shape[1] != num_classes:
        raise ValueError(f"scores must be (N, {num_classes}), got {tuple(scores.shape)}")
    if labels.shape != (scores.shape[0],):
        raise ValueError(f"labels must be ({scores.shape[0]},), got {tuple(labels.shape)}")
    n = int(labels.numel())
    if n == 0:
        raise ValueError("no labeled rows to score")
    if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes})")
    labels = labels.to(scores.device, torch.int64)
    k5 = min(5, num_classes)
    top = scores.topk(k5, dim=1).indices  # (N, k5), best first
    pred = top[:, 0]
    # a true class scored -inf (the model never saw it) is a miss even when k ≥ K drags it into the top-k
    hit5 = (top == labels[:, None]).any(1) & (scores.gather(1, labels[:, None]).squeeze(1) > -math.inf)
    conf = torch.bincount(labels * num_classes + pred, minlength=num_classes**2).view(num_classes, num_classes)
    conf = conf.double().cpu()
    tp = conf.diag()
    support, predicted = conf.sum(1), conf.sum(0)
    recall = tp / support.clamp_min(1)
    precision = tp / predicted.clamp_min(1)
    f1 = torch.where(tp > 0, 2 * precision * recall / (precision + recall).clamp_min(1e-300), 0.0)
    present = support > 0
    in_f1 = present | (predicted > 0)
    return {
        "top1": float(tp.sum()) / n,
        "top5": float(hit5.sum()) / n,
        "balanced_accuracy": float(recall[present].mean()),
        "macro_f1": float(f1[in_f1].mean()),
        "n": n,
        "per_class": [
            {"class": c, "precision": float(precision[c]), "recall": float(recall[c]),
             "f1": float(f1[c]), "support": int(support[c])}
            for c in range(num_classes)
        ],
        "confusion": conf.long().tolist(),
    }


def summary(result: Mapping[str, Any]) -> dict:
    """A copy of ``result`` without per-class tables and confusion matrices (for ``--json``)."""
    def strip(obj: Any) -> Any:
        if isinstance(obj, Mapping):
            return {k: strip(v) for k, v in obj.items() if k not in _BULKY}
        if isinstance(obj, list):
            return [strip(v) for v in obj]
        return obj

    return strip(result)


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.2f}%"


def _headline(result: Mapping[str, Any]) -> tuple[str, Mapping[str, Any]]:
    """The split to headline: test when there is one, else validation."""
    return ("test", result["test"]) if result.get("test") else ("val", result.get("val", {}))


def render_probe(result: Mapping[str, Any], *, console: Console, title: str | None = None) -> None:
    """Print the chosen C, linear-probe metrics per split, kNN top-1 by k and warnings."""
    from rich.table import Table

    splits = [s for s in ("val", "test") if result.get(s)]
    head = Table(title=title or "linear probe", title_justify="left")
    head.add_column("metric")
    for s in splits:
        head.add_column(s, justify="right")
    for key, name in (("top1", "top-1"), ("top5", "top-5"), ("balanced_accuracy", "balanced acc"),
                      ("macro_f1", "macro-F1")):
        head.add_row(name, *(_pct(result[s].get(key)) for s in splits))
    head.add_row("n", *(str(result[s].get("n", "")) for s in splits))
    console.print(head)
    info = [f"C = {result['C']:.3g}"]
    if "n_train" in result:
        info.append(f"train n = {result['n_train']}")
    if "dim" in result:
        info.append(f"dim = {result['dim']}")
    if "device" in result:
        info.append(f"device = {result['device']}")
    if "seconds" in result:
        info.append(f"{result['seconds']:.2f} s")
    console.print("  ".join(info), style="dim")

    knn = result.get("knn")
    if knn and knn.get("by_k"):
        table = Table(title=f"kNN (cosine, T = {knn.get('temperature', 0.07)})", title_justify="left")
        table.add_column("k", justify="right")
        kn_splits = [s for s in ("val", "test") if any(v.get(s) for v in knn["by_k"].values())]
        for s in kn_splits:
            table.add_column(f"{s} top-1", justify="right")
        for k, row in knn["by_k"].items():
            mark = " *" if str(k) == str(knn.get("k")) else ""
            table.add_row(f"{k}{mark}", *(_pct((row.get(s) or {}).get("top1")) for s in kn_splits))
        console.print(table)
    for w in result.get("warnings", []):
        console.print(f"warning: {w}", style="yellow", markup=False, highlight=False)


def render_comparison(rows: Sequence[tuple[str, Mapping[str, Any]]], *, console: Console,
                      title: str | None = None) -> None:
    """One table comparing several probe results (e.g. random vs ImageNet vs BYOL features)."""
    from rich.table import Table

    split = "test" if all(r.get("test") for _, r in rows) else "val"
    table = Table(title=title or f"linear probe comparison ({split})", title_justify="left")
    for col in ("features", "linear top-1", "kNN top-1 (k=20)", "balanced acc", "C"):
        table.add_column(col, justify="left" if col == "features" else "right")
    for name, r in rows:
        knn = r.get("knn") or {}
        knn_top1 = (knn.get(split) or {}).get("top1")
        knn_cell = _pct(knn_top1) + (f" (k={knn['k']})" if knn.get("k") not in (None, 20) else "")
        table.add_row(name, _pct(r[split].get("top1")), knn_cell,
                      _pct(r[split].get("balanced_accuracy")), f"{r['C']:.3g}")
    console.print(table)


__all__ = ["classification_metrics", "render_comparison", "render_probe", "summary", "write_json"]
