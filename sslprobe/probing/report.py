"""Rich tables and report files for probe results: rendering only (the numbers come from metrics.py).

rich is imported inside the render functions so ``sslprobe.probing.probe`` stays cheap to import;
figures live in plots.py (matplotlib optional). The cells (``percent``, ``with_ci``, ``curve_cell``,
``curve_label``), the metrics table, the files-and-warnings footer and the per-class CSVs are public:
a fine-tune's report is made of the same pieces, so its rows read as a probe's (docs/architecture.md).
"""
from __future__ import annotations

import csv
import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sslprobe.config.common import METRIC_KEYS, METRIC_NAMES, METRIC_WORDS, METRICS
from sslprobe.fileio import atomic_path, csv_text, write_json
from sslprobe.results import (
    CurvePoint,
    FinetuneCurve,
    FinetuneResult,
    JsonRecord,
    Metrics,
    PairedTest,
    ProbeCurve,
    ProbeResult,
    ReportFiles,
)

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


def summary(result: Mapping[str, Any] | JsonRecord, *, drop: Sequence[str] = ()) -> dict:
    """``result``'s JSON without per-class tables, confusion matrices, predictions and the ``drop`` keys
    (for ``--json``, comparison.json and study.json)."""
    doc = result.to_json() if isinstance(result, JsonRecord) else result
    return _strip({k: v for k, v in doc.items() if k not in drop})


def percent(x: float | None, *, digits: int = 2, unit: str = "%") -> str:
    """'84.51%', or a dash for no value (the study's report: ``digits=1, unit=""`` → '84.5')."""
    return "—" if x is None else f"{100 * x:.{digits}f}{unit}"


def with_ci(metrics: Metrics | None, key: str, *, digits: int = 2, unit: str = "%") -> str:
    """'84.51% [83.8, 85.2]': the value and its 95 % bootstrap interval when the metrics carry one."""
    if metrics is None or metrics.value(key) is None:
        return "—"
    ci = metrics.interval(key)
    return percent(metrics.value(key), digits=digits, unit=unit) + (f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"
                                                                    if ci else "")


def stacked_ci(metrics: Metrics | None, key: str) -> str:
    """'84.51%' over '83.8–85.2': the value and its 95 % bootstrap interval on two lines, for a narrow column."""
    if metrics is None or metrics.value(key) is None:
        return "—"
    ci = metrics.interval(key)
    return percent(metrics.value(key)) + (f"\n{_bound(ci[0])}–{_bound(ci[1])}" if ci else "")


def _bound(x: float) -> str:
    return "100" if x >= 0.9995 else f"{100 * x:.1f}"  # '100–100' keeps a perfect interval as narrow as others


_LONG_NAMES = {"balanced": "balanced accuracy", "top1": "top-1", "macro-f1": "macro-F1"}


def metric_order(metric: str) -> list[str]:
    """The three metrics as tables show them: the declared one first, then the other two (``METRICS`` order)."""
    return [metric, *(m for m in METRICS if m != metric)]


def _selection_line(result: ProbeResult | FinetuneResult) -> str | None:
    sel = result.selection
    if not sel:
        return None
    std = "standardised" if getattr(result, "standardize", True) else "not standardised"
    why = f"{sel.reason}; " if sel.reason else ""
    return (f"C and kNN k chosen by validation {_LONG_NAMES.get(sel.metric, sel.metric)} (--metric; {why}largest / "
            f"smallest class {sel.imbalance:.3g}:1); ties → lower val loss; features {std}")


def metrics_table(result: ProbeResult | FinetuneResult, *, title: str) -> Table:
    """A rich table, one column per split: the declared metric, the other two (each with its interval), top-5, n."""
    from rich.table import Table

    splits = [s for s in ("val", "test") if result.split(s) is not None]
    table = Table(title=title, title_justify="left")
    table.add_column("metric")
    for s in splits:
        table.add_column(s, justify="right")
    for m in metric_order(result.metric):
        table.add_row(METRIC_NAMES[m], *(with_ci(result.split(s), METRIC_KEYS[m]) for s in splits))
    if result.shows_top5:
        table.add_row("top-5", *(with_ci(result.split(s), "top5") for s in splits))
    table.add_row("n", *(str(result.split(s).n) for s in splits))
    return table


def render_files_and_warnings(result: ProbeResult | FinetuneResult, *, console: Console) -> None:
    """Where the report files went (and why plots were skipped, if they were), then each warning."""
    files = result.files
    if files:
        console.print(f"reports in {files.dir}: {', '.join(files.files)}", style="dim", markup=False,
                      highlight=False)
        if files.note:
            console.print(files.note, style="dim", markup=False, highlight=False)
    for w in result.warnings:
        console.print(f"warning: {w}", style="yellow", markup=False, highlight=False)


def render_probe(result: ProbeResult, *, console: Console, title: str | None = None) -> None:
    """Print the chosen C, linear-probe metrics per split, kNN by k (in the declared metric) and warnings."""
    from rich.table import Table

    console.print(metrics_table(result, title=title or "linear probe"))
    console.print("[..] = 95 % bootstrap interval", style="dim", markup=False, highlight=False)
    searched = result.search not in (None, "fixed") and result.val_curve
    info = [f"C = {result.C:.3g}" + (f" ({result.search}, {len(result.val_curve)} fits)" if searched else ""),
            f"train n = {result.n_train}", f"dim = {result.dim}"]
    if result.device is not None:
        info.append(f"device = {result.device}")
    if result.seconds is not None:
        info.append(f"{result.seconds:.2f} s")
    console.print("  ".join(info), style="dim")
    if _selection_line(result):
        console.print(_selection_line(result), style="dim", markup=False, highlight=False)

    knn = result.knn
    if knn and knn.by_k:
        table = Table(title=f"kNN (cosine, T = {knn.temperature})", title_justify="left")
        table.add_column("k", justify="right")
        kn_splits = [s for s in ("val", "test") if any(getattr(v, s) for v in knn.by_k.values())]
        metric = result.metric
        for s in kn_splits:
            table.add_column(f"{s} {METRIC_NAMES[metric]}", justify="right")
        for k, row in knn.by_k.items():
            mark = " *" if str(k) == str(knn.k) else ""
            table.add_row(f"{k}{mark}", *(with_ci(getattr(row, s), METRIC_KEYS[metric]) for s in kn_splits))
        console.print(table)
    render_label_efficiency(result, console=console)
    render_files_and_warnings(result, console=console)


def curve_cell(point: CurvePoint | None, method: str) -> str:
    """A label-efficiency point's score (its curve's metric) for ``method`` ("linear", "knn", "finetune"): mean ±
    sample std over its draws."""
    stats = point.stats(method) if point is not None else None
    if not stats:
        return "—"
    return f"{100 * stats.mean:.2f} ± {100 * stats.std:.2f}" if point.seeds > 1 else percent(stats.mean)


def _le_rule(rules: Sequence[str]) -> str:
    return "; ".join(r.replace(" (a class has 1 label: nothing to cross-validate)", " (1 label/class)") for r in rules)


def budget_label(kind: str, value: float) -> str:
    """A label budget's name: its fraction of the labels, or 'K-shot'."""
    return f"{value:g}" if kind == "fraction" else f"{value}-shot"


def curve_label(point: CurvePoint) -> str:
    """A label-efficiency point's name: its fraction of the labels, or 'K-shot'."""
    return budget_label(point.kind, point.value)


def curve_table(le: ProbeCurve | FinetuneCurve, columns: Sequence[str]) -> Table:
    """A label-efficiency table's frame: the scored split and metric in its title, ``columns`` (labels first)."""
    from rich.table import Table

    table = Table(title=f"label efficiency ({le.scored_on} {METRIC_NAMES[le.scored_by]} %, mean ± std over seeded "
                  "draws)", title_justify="left")
    for col in columns:
        table.add_column(col, justify="left" if col == "labels" else "right")
    return table


def render_label_efficiency(result: ProbeResult, *, console: Console) -> None:
    """Mean ± std (over seeds) per label fraction / shot count, linear and kNN, in the curve's metric."""

    le = result.label_efficiency
    if not le or not le.points:
        return
    has_knn = any(p.knn for p in le.points)
    knn_k = le.knn_k if le.knn_k is not None else 20
    table = curve_table(le, ("labels", "train rows", "seeds", "linear", *([f"kNN k={knn_k}"] if has_knn else []),
                             "C (median)", "C chosen by"))
    for p in le.points:
        cs = sorted(p.C)
        table.add_row(curve_label(p), str(p.n_train), str(p.seeds), curve_cell(p, "linear"),
                      *([curve_cell(p, "knn")] if has_knn else []), f"{cs[len(cs) // 2]:.3g}" if cs else "—",
                      _le_rule(p.C_rule))
    console.print(table)


def render_comparison(rows: Sequence[tuple[str, ProbeResult | FinetuneResult]], *, console: Console,
                      title: str | None = None) -> None:
    """One table comparing several probe results (e.g. random vs ImageNet vs BYOL features), their label budgets,
    then the paired tests between them and one verdict sentence that respects the intervals.

    The declared metric leads (with its interval), then the other two and top-5, kNN in the declared metric, C.
    Intervals sit under their values, so the table fits 80 columns; label-efficiency points (when the results
    have them) are a table of their own, in the curves' metric.
    """
    from rich.table import Table

    split = "test" if all(r.test is not None for _, r in rows) else "val"
    metric = rows[0][1].metric
    order = metric_order(metric)
    table = Table(title=title or f"linear probe comparison ({split})", title_justify="left",
                  caption="under each value: its 95 % bootstrap interval over test rows", caption_justify="left")
    top5 = all(r.shows_top5 for _, r in rows)
    for col in ("features", *(METRIC_NAMES[m] for m in order), *(("top-5",) if top5 else ()),
                f"kNN {METRIC_NAMES[metric]}", "C"):
        table.add_column(col, justify="left" if col == "features" else "right", overflow="fold")
    for name, r in rows:
        m, knn = r.split(split), r.knn
        knn_cell = stacked_ci(getattr(knn, split), METRIC_KEYS[metric]) + f"\nk={knn.k}" if knn else "—"
        c_cell = f"{r.C:.3g}" if r.C is not None else "—"  # a fine-tuned row has no C
        table.add_row(name, *(stacked_ci(m, METRIC_KEYS[k]) for k in order),
                      *((stacked_ci(m, "top5"),) if top5 else ()), knn_cell, c_cell)
    console.print(table)
    _render_budgets(rows, console=console)
    if _selection_line(rows[0][1]):
        console.print(_selection_line(rows[0][1]), style="dim", markup=False, highlight=False)
    pairs = getattr(rows[0][1], "paired_tests", None) or []
    render_paired(pairs, console=console)


def _render_budgets(rows: Sequence[tuple[str, ProbeResult | FinetuneResult]], *, console: Console) -> None:
    """The rows' label-efficiency points side by side: linear (or fine-tuned) and kNN at each budget."""
    from rich.table import Table

    le_points = _budgets(rows)
    if not le_points:
        return
    seeds = sorted({p.seeds for _, r in rows for p in _points(r)})
    names = "/".join(sorted({METRIC_NAMES[r.label_efficiency.scored_by] for _, r in rows if r.label_efficiency}))
    table = Table(title=f"label efficiency ({names} %, mean ± std)", title_justify="left",
                  caption=f"over {'/'.join(map(str, seeds))} seeded draws, each choosing C (or its epoch) with its own "
                  "labels", caption_justify="left")
    table.add_column("features", overflow="fold")
    for kind, value in le_points:
        label = budget_label(kind, value)
        table.add_column(f"linear @{label}", justify="right", overflow="fold")
        table.add_column(f"kNN @{label}", justify="right", overflow="fold")
    for name, r in rows:
        pts = {(p.kind, p.value): p for p in _points(r)}
        table.add_row(name, *(c for key in le_points for c in (curve_cell(pts.get(key), r.protocol),
                                                               curve_cell(pts.get(key), "knn"))))
    console.print(table)


def _budgets(rows: Sequence[tuple[str, ProbeResult | FinetuneResult]]) -> list[tuple[str, float]]:
    """Every (kind, value) label budget of the rows' curves, in first-seen order."""
    out: list[tuple[str, float]] = []
    for _, r in rows:
        for p in _points(r):
            if (p.kind, p.value) not in out:
                out.append((p.kind, p.value))
    return out


def _points(r: ProbeResult | FinetuneResult) -> Sequence[CurvePoint]:
    return r.label_efficiency.points if r.label_efficiency is not None else []


PAIR_COLUMNS = ("A", "B", "Δ [CI]", "p", "p adj.", "verdict")


def pair_cells(p: PairedTest) -> tuple[str, ...]:
    """A pair as table cells: A, B, Δ [its interval], p, adjusted p, verdict (with its role)."""
    if not p.paired:
        return p.a, p.b, "—", "—", "—", f"not paired: {p.reason}"
    return (p.a, p.b, f"{signed_ci(p.difference, p.ci)} ({100 * p.level:.3g} %)", f"{p.p:.2g}", f"{p.p_adjusted:.2g}",
            f"{pair_verdict(p)}{' (primary)' if p.role == 'primary' else ''}")


def render_paired(pairs: Sequence[PairedTest], *, console: Console) -> None:
    """The paired tests (same test images, A − B in the declared metric), the primary first, and the verdict."""
    from rich.table import Table

    tested = [p for p in pairs if p.paired]
    if not pairs:
        return
    metric = METRIC_WORDS.get(tested[0].metric, tested[0].metric) if tested else ""
    table = Table(title=f"paired tests on the same test images ({metric}, A − B, points)", title_justify="left",
                  caption=family_note(pairs), caption_justify="left")
    for col in PAIR_COLUMNS:
        table.add_column(col, justify="left" if col in ("A", "B", "verdict") else "right")
    for p in pairs:
        table.add_row(*pair_cells(p))
    console.print(table)
    console.print(verdict_sentence(pairs), markup=False, highlight=False)


def signed_ci(d: float, ci: Sequence[float]) -> str:
    return f"{100 * d:+.2f} [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]"


def pair_verdict(p: PairedTest) -> str:
    """'within noise' or 'NAME better' for a paired test: its ``significant``, nothing else."""
    return f"{p.winner} better" if p.significant else "within noise"


def family_note(pairs: Sequence[PairedTest]) -> str:
    """What the intervals and p-values are adjusted for, in one line."""
    tested = [p for p in pairs if p.paired]
    secondary = [p for p in tested if p.role == "secondary"]
    if not tested:
        return ""
    note = ("p: the larger of the paired bootstrap's and a sign-flip randomization test's; CI: the same bootstrap "
            "over the test images")
    if tested[0].repeats and tested[0].repeats > 1:
        note += f" and {tested[0].repeats} repeats"
    if secondary:
        note += (f"; the {len(secondary)} secondary comparisons are one family: Holm-adjusted p, intervals widened "
                 "to the adjusted level")
    return note


def pair_sentence(p: PairedTest) -> str:
    """One pair in words, exactly as its ``significant`` says (a label budget's pair names its budget)."""
    metric = METRIC_WORDS.get(p.metric, p.metric)
    at = "" if not p.budget else f" at {p.budget} of the labels" if "%" in p.budget else f" at {p.budget}"
    lo, hi = (100 * v for v in p.ci)
    level = f"{100 * p.level:.3g} % CI"
    if p.significant:
        sign = 1 if p.difference > 0 else -1
        a_lo, a_hi = sorted((sign * lo, sign * hi))
        loser = p.b if sign > 0 else p.a
        return (f"{p.winner} beats {loser} by {100 * abs(p.difference):.1f} points of {metric}{at} "
                f"({level} {a_lo:.1f} to {a_hi:.1f}, p {p.p_adjusted:.2g})")
    return (f"{p.a} and {p.b} are not distinguishable{at} on this test set (Δ {100 * p.difference:+.1f} points "
            f"of {metric}, {level} {lo:+.1f} to {hi:+.1f})")


def verdict_sentence(pairs: Sequence[PairedTest]) -> str:
    """The verdict in words: the declared primary question first, then the family of the others (only the
    significant ones by name), each exactly as its ``significant`` says, e.g. 'byol beats random by 3.1
    points of balanced accuracy (95 % CI 1.9 to 4.3, p 0.001)'."""
    tested = [p for p in pairs if p.paired]
    primary = [p for p in tested if p.role == "primary"]
    secondary = [p for p in tested if p.role != "primary"]
    out = [f"Primary question: {pair_sentence(p)}" for p in primary]
    if secondary:
        found = [pair_sentence(p) for p in secondary if p.significant]
        scope = "other comparison" if primary else "comparison"
        head = f"of the {len(secondary)} {scope}{'s' if len(secondary) > 1 else ''} (Holm-adjusted)"
        if found:
            out.append(f"{head[0].upper()}{head[1:]}: " + "; ".join(found)
                       + ("" if len(found) == len(secondary) else "; the rest are within noise"))
        elif len(secondary) == 1:
            out.append(("The other comparison: " if primary else "") + pair_sentence(secondary[0]))
        else:
            out.append(f"None {head} is beyond noise")
    return ". ".join(out) + "." if out else ""


def write_per_class_csv(metrics: Metrics, classes: Sequence[str], path: str | os.PathLike) -> None:
    """Per-class precision, recall, F1 and support as CSV (atomic)."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["class", "precision", "recall", "f1", "support"])
        for row in metrics.per_class or []:
            w.writerow([csv_text(classes[row.cls]), f"{row.precision:.6f}", f"{row.recall:.6f}",
                        f"{row.f1:.6f}", row.support])


def write_per_class_csvs(result: ProbeResult | FinetuneResult, out: Path) -> list[str]:
    """per_class_{val,test}.csv for the splits ``result`` scored; returns the file names written."""
    files = []
    for split in ("val", "test"):
        metrics = result.split(split)
        if metrics is not None:
            write_per_class_csv(metrics, result.classes, out / f"per_class_{split}.csv")
            files.append(f"per_class_{split}.csv")
    return files


def write_reports(result: ProbeResult, out: str | os.PathLike, *, probe_model: ProbeModel | None = None) -> ProbeResult:
    """Write a probe's report dir; returns ``result`` with its ``files`` (report.json is its ``to_json()``).

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
    result = dataclasses.replace(result, files=ReportFiles(dir=str(out), files=["report.json", *files, *plots],
                                                           note=note))
    write_json(out / "report.json", result.to_json())
    return result


__all__ = ["PAIR_COLUMNS", "budget_label", "curve_cell", "curve_label", "curve_table", "family_note", "metric_order",
           "metrics_table", "pair_cells", "pair_sentence", "pair_verdict", "percent", "render_comparison",
           "render_files_and_warnings", "render_label_efficiency", "render_paired", "render_probe", "signed_ci",
           "stacked_ci", "summary", "verdict_sentence", "with_ci", "write_per_class_csv", "write_per_class_csvs",
           "write_reports"]
