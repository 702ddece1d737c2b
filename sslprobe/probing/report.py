"""Rich tables and report files for probe results: rendering only (the numbers come from metrics.py).

rich is imported inside the render functions so ``sslprobe.probing.probe`` stays cheap to import;
figures live in plots.py (matplotlib optional). The cells (``percent``, ``with_ci``, ``curve_cell``,
``curve_label``), the metrics table, the files-and-warnings footer and the per-class CSVs are public:
a fine-tune's report is made of the same pieces, so its rows read as a probe's (docs/architecture.md).
"""
from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sslprobe.fileio import atomic_path, csv_text, write_json

if TYPE_CHECKING:  # pragma: no cover
    from rich.console import Console
    from rich.table import Table

    from sslprobe.probing.predict import ProbeModel

_BULKY = ("per_class", "confusion", "predictions", "test_labels", "test_paths")


def _strip(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {k: _strip(v) for k, v in obj.items() if k not in _BULKY}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def summary(result: Mapping[str, Any]) -> dict:
    """A copy of ``result`` without per-class tables and confusion matrices (for ``--json``)."""
    return _strip(result)


def percent(x: float | None, *, digits: int = 2, unit: str = "%") -> str:
    """'84.51%', or a dash for no value (the study's report: ``digits=1, unit=""`` → '84.5')."""
    return "—" if x is None else f"{100 * x:.{digits}f}{unit}"


def with_ci(metrics: Mapping[str, Any] | None, key: str, *, digits: int = 2, unit: str = "%") -> str:
    """'84.51% [83.8, 85.2]': the value and its 95 % bootstrap interval when the metrics carry one."""
    if not metrics or metrics.get(key) is None:
        return "—"
    ci = (metrics.get("ci") or {}).get(key)
    return percent(metrics[key], digits=digits, unit=unit) + (f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else "")


_SELECT_NAMES = {"top1": "top-1", "balanced": "balanced accuracy"}


def _selection_line(result: Mapping[str, Any]) -> str | None:
    sel = result.get("selection")
    if not sel:
        return None
    std = "standardised" if result.get("standardize", True) else "not standardised"
    return (f"C and kNN k chosen by validation {_SELECT_NAMES.get(sel['metric'], sel['metric'])} "
            f"({sel['reason']}); ties → lower val loss; features {std}; [..] = 95 % bootstrap interval")


def metrics_table(result: Mapping[str, Any], *, title: str) -> Table:
    """A rich table of top-1, top-5, balanced accuracy and macro-F1 (with intervals) and n, one column per split."""
    from rich.table import Table

    splits = [s for s in ("val", "test") if result.get(s)]
    table = Table(title=title, title_justify="left")
    table.add_column("metric")
    for s in splits:
        table.add_column(s, justify="right")
    for key, name in (("top1", "top-1"), ("top5", "top-5"), ("balanced_accuracy", "balanced acc"),
                      ("macro_f1", "macro-F1")):
        table.add_row(name, *(with_ci(result[s], key) for s in splits))
    table.add_row("n", *(str(result[s].get("n", "")) for s in splits))
    return table


def render_files_and_warnings(result: Mapping[str, Any], *, console: Console) -> None:
    """Where the report files went (and why plots were skipped, if they were), then each warning."""
    files = result.get("files")
    if files:
        console.print(f"reports in {files['dir']}: {', '.join(files['files'])}", style="dim", markup=False,
                      highlight=False)
        if files.get("note"):
            console.print(files["note"], style="dim", markup=False, highlight=False)
    for w in result.get("warnings", []):
        console.print(f"warning: {w}", style="yellow", markup=False, highlight=False)


def render_probe(result: Mapping[str, Any], *, console: Console, title: str | None = None) -> None:
    """Print the chosen C, linear-probe metrics per split, kNN top-1 by k and warnings."""
    from rich.table import Table

    console.print(metrics_table(result, title=title or "linear probe"))
    searched = result.get("search") not in (None, "fixed") and result.get("val_curve")
    info = [f"C = {result['C']:.3g}" + (f" ({result['search']}, {len(result['val_curve'])} fits)" if searched else "")]
    if "n_train" in result:
        info.append(f"train n = {result['n_train']}")
    if "dim" in result:
        info.append(f"dim = {result['dim']}")
    if "device" in result:
        info.append(f"device = {result['device']}")
    if "seconds" in result:
        info.append(f"{result['seconds']:.2f} s")
    console.print("  ".join(info), style="dim")
    if _selection_line(result):
        console.print(_selection_line(result), style="dim", markup=False, highlight=False)

    knn = result.get("knn")
    if knn and knn.get("by_k"):
        table = Table(title=f"kNN (cosine, T = {knn.get('temperature', 0.07)})", title_justify="left")
        table.add_column("k", justify="right")
        kn_splits = [s for s in ("val", "test") if any(v.get(s) for v in knn["by_k"].values())]
        for s in kn_splits:
            table.add_column(f"{s} top-1", justify="right")
        for k, row in knn["by_k"].items():
            mark = " *" if str(k) == str(knn.get("k")) else ""
            table.add_row(f"{k}{mark}", *(with_ci(row.get(s), "top1") for s in kn_splits))
        console.print(table)
    render_label_efficiency(result, console=console)
    render_files_and_warnings(result, console=console)


def curve_cell(point: Mapping[str, Any] | None, method: str) -> str:
    """A label-efficiency point's top-1 for ``method`` ("linear", "knn", "finetune"): mean ± std over its draws."""
    stats = (point or {}).get(method)
    if not stats:
        return "—"
    return f"{100 * stats['mean']:.2f} ± {100 * stats['std']:.2f}" if point["seeds"] > 1 else percent(stats["mean"])


def _le_rule(point: Mapping[str, Any]) -> str:
    rules = point.get("C_rule") or []
    return "; ".join(r.replace(" (a class has 1 label: nothing to cross-validate)", " (1 label/class)") for r in rules)


def curve_label(point: Mapping[str, Any]) -> str:
    """A label-efficiency point's name: its fraction of the labels, or 'K-shot'."""
    return f"{point['value']:g}" if point["kind"] == "fraction" else f"{point['value']}-shot"


def render_label_efficiency(result: Mapping[str, Any], *, console: Console) -> None:
    """Mean ± std top-1 (over seeds) per label fraction / shot count, linear and kNN."""
    from rich.table import Table

    le = result.get("label_efficiency")
    if not le or not le.get("points"):
        return
    table = Table(title=f"label efficiency ({le['scored_on']} top-1 %, mean ± std over seeds)", title_justify="left")
    has_knn = any(p.get("knn") for p in le["points"])
    for col in ("labels", "train rows", "seeds", "linear", *([f"kNN k={le.get('knn_k', 20)}"] if has_knn else []),
                "C (median)", "C chosen by"):
        table.add_column(col, justify="left" if col == "labels" else "right")
    for p in le["points"]:
        cs = sorted(p.get("C") or [])
        table.add_row(curve_label(p), str(p["n_train"]), str(p["seeds"]), curve_cell(p, "linear"),
                      *([curve_cell(p, "knn")] if has_knn else []), f"{cs[len(cs) // 2]:.3g}" if cs else "—",
                      _le_rule(p))
    console.print(table)


def render_comparison(rows: Sequence[tuple[str, Mapping[str, Any]]], *, console: Console,
                      title: str | None = None) -> None:
    """One table comparing several probe results (e.g. random vs ImageNet vs BYOL features), then
    the paired tests between them and one verdict sentence that respects the intervals.

    Label-efficiency points (when the results have them) become extra linear / kNN columns.
    """
    from rich.table import Table

    split = "test" if all(r.get("test") for _, r in rows) else "val"
    table = Table(title=title or f"linear probe comparison ({split})", title_justify="left",
                  caption="[..] = 95 % bootstrap interval over test rows", caption_justify="left")
    for col in ("features", "linear top-1", "balanced acc", "kNN top-1", "C"):
        table.add_column(col, justify="left" if col == "features" else "right")
    le_points: list[tuple[str, float]] = []
    for _, r in rows:
        for p in (r.get("label_efficiency") or {}).get("points", []):
            if (p["kind"], p["value"]) not in le_points:
                le_points.append((p["kind"], p["value"]))
    for kind, value in le_points:
        label = curve_label({"kind": kind, "value": value})
        table.add_column(f"linear @{label}", justify="right")
        table.add_column(f"kNN @{label}", justify="right")
    for name, r in rows:
        knn = r.get("knn") or {}
        knn_cell = with_ci(knn.get(split), "top1") + (f" (k={knn['k']})" if knn.get("k") is not None else "")
        c_cell = f"{r['C']:.3g}" if r.get("C") is not None else "—"  # a fine-tuned row has no C
        cells = [name, with_ci(r[split], "top1"), with_ci(r[split], "balanced_accuracy"), knn_cell, c_cell]
        pts = {(p["kind"], p["value"]): p for p in (r.get("label_efficiency") or {}).get("points", [])}
        main = "linear" if r.get("protocol", "linear") == "linear" else r["protocol"]
        for key in le_points:
            cells += [curve_cell(pts.get(key), main), curve_cell(pts.get(key), "knn")]
        table.add_row(*cells)
    console.print(table)
    if le_points:
        seeds = sorted({p["seeds"] for _, r in rows for p in (r.get("label_efficiency") or {}).get("points", [])})
        console.print(f"label-efficiency cells: mean ± std over {'/'.join(map(str, seeds))} seeded draws; each "
                      "subset chose C by k-fold CV on its own labels", style="dim", markup=False, highlight=False)
    if _selection_line(rows[0][1]):
        console.print(_selection_line(rows[0][1]), style="dim", markup=False, highlight=False)
    pairs = rows[0][1].get("paired_tests") or []
    render_paired(pairs, console=console)


def render_paired(pairs: Sequence[Mapping[str, Any]], *, console: Console) -> None:
    """Paired differences of linear test top-1 (same test images), significance and a verdict."""
    from rich.table import Table

    if not pairs:
        return
    table = Table(title="paired tests on the same test images (linear top-1, A − B)", title_justify="left")
    for col in ("A", "B", "Δ top-1 [95 % CI]", "Δ balanced acc [95 % CI]", "McNemar p", "verdict"):
        table.add_column(col, justify="left" if col in ("A", "B", "verdict") else "right")
    for p in pairs:
        if not p.get("paired"):
            table.add_row(p["a"], p["b"], "—", "—", "—", f"not paired: {p['reason']}")
            continue
        table.add_row(p["a"], p["b"], _signed_ci(p["top1"], p["top1_ci"]),
                      _signed_ci(p["balanced_accuracy"], p["balanced_accuracy_ci"]), f"{p['mcnemar_p']:.3g}",
                      _pair_verdict(p))
    console.print(table)
    console.print(verdict_sentence(pairs), markup=False, highlight=False)


def _signed_ci(d: float, ci: Sequence[float]) -> str:
    return f"{100 * d:+.2f} [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]"


def _pair_verdict(p: Mapping[str, Any]) -> str:
    if not p["significant"]:
        return "within noise"
    return f"{p['a'] if p['top1'] > 0 else p['b']} better"


def verdict_sentence(pairs: Sequence[Mapping[str, Any]]) -> str:
    """One sentence per paired comparison that respects the intervals, e.g. 'byol beats random by
    3.1 points (95 % CI 1.9 to 4.3)' or 'byol and random are not distinguishable on this test set'."""
    out = []
    for p in pairs:
        if not p.get("paired"):
            continue
        lo, hi = (100 * v for v in p["top1_ci"])
        if p["significant"]:
            win, lose, d = (p["a"], p["b"], 1) if p["top1"] > 0 else (p["b"], p["a"], -1)
            a_lo, a_hi = sorted((d * lo, d * hi))
            out.append(f"{win} beats {lose} by {100 * abs(p['top1']):.1f} points of test top-1 "
                       f"(95 % CI {a_lo:.1f} to {a_hi:.1f})")
        else:
            out.append(f"{p['a']} and {p['b']} are not distinguishable on this test set "
                       f"(Δ {100 * p['top1']:+.1f} points, 95 % CI {lo:+.1f} to {hi:+.1f})")
    return "; ".join(out) + "." if out else ""


def write_per_class_csv(metrics: Mapping[str, Any], classes: Sequence[str], path: str | os.PathLike) -> None:
    """Per-class precision, recall, F1 and support as CSV (atomic)."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["class", "precision", "recall", "f1", "support"])
        for row in metrics["per_class"]:
            w.writerow([csv_text(classes[row["class"]]), f"{row['precision']:.6f}", f"{row['recall']:.6f}",
                        f"{row['f1']:.6f}", row["support"]])


def write_per_class_csvs(result: Mapping[str, Any], out: Path) -> list[str]:
    """per_class_{val,test}.csv for the splits ``result`` scored; returns the file names written."""
    files = []
    for split in ("val", "test"):
        if result.get(split):
            write_per_class_csv(result[split], result["classes"], out / f"per_class_{split}.csv")
            files.append(f"per_class_{split}.csv")
    return files


def write_reports(result: dict, out: str | os.PathLike, *, probe_model: ProbeModel | None = None) -> dict:
    """Write a probe's report dir; returns {"files": [...], "note": … or None} (also put in report.json).

    report.json (every number, curves, manifests), per_class_{val,test}.csv, probe.safetensors and,
    with matplotlib, confusion.png, val_curve.png and label_efficiency.png.
    """
    from sslprobe.plots import write_plots

    out = Path(out)
    files = write_per_class_csvs(result, out)
    if probe_model is not None:
        probe_model.save(out / "probe.safetensors")
        files.append("probe.safetensors")
    plots, note = write_plots(result, out)
    info = {"dir": str(out), "files": ["report.json", *files, *plots], "note": note}
    write_json(out / "report.json", {**result, "files": info})
    return info


__all__ = ["curve_cell", "curve_label", "metrics_table", "percent", "render_comparison",
           "render_files_and_warnings", "render_label_efficiency", "render_paired", "render_probe", "summary",
           "verdict_sentence", "with_ci", "write_per_class_csv", "write_per_class_csvs", "write_reports"]
