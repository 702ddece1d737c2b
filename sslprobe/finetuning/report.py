"""A fine-tune's report: the table on the terminal and the files of a probe report, plus the learning curve.

The metrics are ``probing.report.scored``'s (top-1/top-5, balanced accuracy, macro-F1, per class,
confusion, bootstrap intervals) and the files a probe writes — report.json, per_class_{val,test}.csv,
confusion.png, label_efficiency.png — with learning_curve.png (loss and validation accuracy per
epoch, the chosen epoch marked) instead of the C path, so a fine-tune sits next to probe rows.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sslprobe.fileio import atomic_path, write_json
from sslprobe.probing.report import write_per_class_csv

if TYPE_CHECKING:  # pragma: no cover
    from rich.console import Console


def _save(fig: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")


def learning_curve_png(history: Sequence[Mapping[str, Any]], chosen: int | None, path: Path) -> None:
    """Training and validation loss against epoch, validation top-1 on a second axis, the chosen epoch marked."""
    from matplotlib.figure import Figure


    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(6, 3.6))
    ax = fig.subplots()
    ax.plot(epochs, [h["train_loss"] for h in history], "o-", ms=3, label="train loss")
    val = [(h["epoch"], h["val_loss"], h["val_top1"]) for h in history if h["val_loss"] is not None]
    if val:
        ax.plot([v[0] for v in val], [v[1] for v in val], "o-", ms=3, label="val loss")
        ax2 = ax.twinx()
        ax2.plot([v[0] for v in val], [100 * v[2] for v in val], "s-", ms=3, color="tab:green")
        ax2.set_ylabel("val top-1 (%)", color="tab:green")
    if chosen is not None:
        ax.axvline(chosen, color="grey", ls="--", lw=1, label=f"chosen epoch {chosen}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend(loc="upper right", fontsize=8)
    _save(fig, path)


def label_efficiency_png(points: Sequence[Mapping[str, Any]], path: Path, *, scored_on: str) -> None:
    """Fine-tuned top-1 (mean ± std over draws) against labelled train rows, log x axis."""
    from matplotlib.figure import Figure


    fig = Figure(figsize=(6, 3.6))
    ax = fig.subplots()
    for kind, marker in (("fraction", "o"), ("shots", "s")):
        pts = sorted((p for p in points if p["kind"] == kind), key=lambda p: p["n_train"])
        if pts:
            ax.errorbar([p["n_train"] for p in pts], [100 * p["finetune"]["mean"] for p in pts],
                        yerr=[100 * p["finetune"]["std"] for p in pts], marker=marker, capsize=3,
                        label=f"fine-tuned ({kind})")
    ax.set_xscale("log")
    ax.set_xlabel("labeled train rows")
    ax.set_ylabel(f"{scored_on} top-1 (%)")
    ax.legend(fontsize=8)
    _save(fig, path)


def _plots(result: Mapping[str, Any], out: Path) -> tuple[list[str], str | None]:
    try:
        import matplotlib.figure  # noqa: F401
    except ImportError:
        return [], "plots skipped: matplotlib is not installed (pip install 'sslprobe[plots]')"
    from sslprobe.plots import confusion_png

    written = []
    split = "test" if result.get("test") else "val"
    confusion_png(result[split]["confusion"], list(result["classes"]), out / "confusion.png",
                  title=f"fine-tuned, {split}")
    written.append("confusion.png")
    if result.get("learning_curve"):
        learning_curve_png(result["learning_curve"], result["chosen"]["epoch"], out / "learning_curve.png")
        written.append("learning_curve.png")
    le = result.get("label_efficiency")
    if le and le["points"]:
        label_efficiency_png(le["points"], out / "label_efficiency.png", scored_on=le["scored_on"])
        written.append("label_efficiency.png")
    return written, None


def write_finetune_reports(result: dict, out: str | os.PathLike, *, model_file: str | None) -> dict:
    """report.json, per-class CSVs, plots; returns {"dir", "files", "note"} (also put in report.json)."""
    out = Path(out)
    files = []
    for split in ("val", "test"):
        if result.get(split):
            write_per_class_csv(result[split], result["classes"], out / f"per_class_{split}.csv")
            files.append(f"per_class_{split}.csv")
    plots, note = _plots(result, out)
    info = {"dir": str(out), "files": ["report.json", *files, *([model_file] if model_file else []), *plots],
            "note": note}
    write_json(out / "report.json", {**result, "files": info})
    return info


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.2f}%"


def _with_ci(metrics: Mapping[str, Any] | None, key: str) -> str:
    if not metrics or metrics.get(key) is None:
        return "—"
    ci = (metrics.get("ci") or {}).get(key)
    return _pct(metrics[key]) + (f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else "")


def render_finetune(result: Mapping[str, Any], *, console: Console) -> None:
    """The chosen run's metrics per split, how it was chosen, the label curve, files and warnings."""
    from rich.table import Table

    if result.get("status") != "complete":
        console.print(f"fine-tune {result['status']}; continue with the same command plus --resume",
                      markup=False, highlight=False)
        return
    splits = [s for s in ("val", "test") if result.get(s)]
    head = Table(title=f"fine-tuned {result['model']} ({result['weights']['weights']} weights)", title_justify="left")
    head.add_column("metric")
    for s in splits:
        head.add_column(s, justify="right")
    for key, name in (("top1", "top-1"), ("top5", "top-5"), ("balanced_accuracy", "balanced acc"),
                      ("macro_f1", "macro-F1")):
        head.add_row(name, *(_with_ci(result[s], key) for s in splits))
    head.add_row("n", *(str(result[s].get("n", "")) for s in splits))
    console.print(head)
    c = result["chosen"]
    console.print(f"epoch {c['epoch']} of {c['epochs']} at lr {c['lr']:.3g} (per 256 images) chosen by validation "
                  f"{c['selected_by']}; train n = {result['n_fit']}, val n = {result['n_val']} "
                  f"({result['val_source']}); {result['device']}, {result['seconds']:.1f} s; "
                  "[..] = 95 % bootstrap interval",
                  style="dim", markup=False, highlight=False)
    _render_curve(result, console=console)
    files = result.get("files")
    if files:
        console.print(f"reports in {files['dir']}: {', '.join(files['files'])}", style="dim", markup=False,
                      highlight=False)
        if files.get("note"):
            console.print(files["note"], style="dim", markup=False, highlight=False)
    for w in result.get("warnings", []):
        console.print(f"warning: {w}", style="yellow", markup=False, highlight=False)


def _render_curve(result: Mapping[str, Any], *, console: Console) -> None:
    from rich.table import Table

    le = result.get("label_efficiency")
    if not le or not le.get("points"):
        return
    table = Table(title=f"label efficiency ({le['scored_on']} top-1 %, mean ± std over draws)", title_justify="left")
    for col in ("labels", "train rows", "draws", "fine-tuned", "epoch chosen by"):
        table.add_column(col, justify="left" if col == "labels" else "right")
    for p in le["points"]:
        s = p["finetune"]
        cell = f"{100 * s['mean']:.2f} ± {100 * s['std']:.2f}" if p["seeds"] > 1 else _pct(s["mean"])
        label = f"{p['value']:g}" if p["kind"] == "fraction" else f"{p['value']}-shot"
        table.add_row(label, str(p["n_train"]), str(p["seeds"]), cell, "; ".join(p["rule"]))
    console.print(table)


__all__ = ["label_efficiency_png", "learning_curve_png", "render_finetune", "write_finetune_reports"]
