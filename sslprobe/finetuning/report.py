"""A fine-tune's report: the table on the terminal and the files of a probe report, plus the learning curve.

The metrics are ``probing.metrics.scored``'s (top-1/top-5, balanced accuracy, macro-F1, per class,
confusion, bootstrap intervals), shown in ``probing.report``'s table and cells (the declared metric first), and
the files a probe writes — report.json, per_class_{val,test}.csv, confusion.png, label_efficiency.png — with
learning_curve.png (loss and the declared metric on validation per epoch, the chosen epoch marked; the figures are
``plots.write_finetune_plots``) instead of the C path, so a fine-tune sits next to probe rows.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING

from sslprobe.fileio import write_json
from sslprobe.plots import write_finetune_plots
from sslprobe.probing.report import (
    curve_cell,
    curve_label,
    curve_table,
    metrics_table,
    render_files_and_warnings,
    write_per_class_csvs,
)
from sslprobe.results import FinetuneResult, FinetuneStopped, ReportFiles

if TYPE_CHECKING:  # pragma: no cover
    from rich.console import Console


def write_finetune_reports(result: FinetuneResult, out: str | os.PathLike, *,
                           model_file: str | None) -> FinetuneResult:
    """report.json, per-class CSVs, plots; returns ``result`` with its ``files`` (report.json is its ``to_json()``)."""
    out = Path(out)
    files = write_per_class_csvs(result, out)
    plots, note = write_finetune_plots(result, out)
    info = ReportFiles(dir=str(out), files=["report.json", *files, *([model_file] if model_file else []), *plots],
                       note=note)
    result = dataclasses.replace(result, files=info)
    write_json(out / "report.json", result.to_json())
    return result


def render_finetune(result: FinetuneResult | FinetuneStopped, *, console: Console) -> None:
    """The chosen run's metrics per split, how it was chosen, the label curve, files and warnings."""
    if not isinstance(result, FinetuneResult) or result.status != "complete":
        console.print(f"fine-tune {result.status}; continue with the same command plus --resume",
                      markup=False, highlight=False)
        return
    console.print(metrics_table(result, title=f"fine-tuned {result.model} ({result.weights['weights']} weights)"))
    c = result.chosen
    refit = result.schedule.get("refit")
    then = (f"; test: refit on train + val (n = {refit['rows']}) for {refit['epochs']} epochs" if refit else
            "; no refit (no test set)")
    console.print(f"epoch {c.epoch} of {c.epochs} at lr {c.lr:.3g} (per 256 images, of {len(result.lr_grid)}) chosen "
                  f"by validation {c.selected_by}; train n = {result.n_fit}, val n = {result.n_val} "
                  f"({result.val_source}){then}; {result.device}, {result.seconds:.1f} s; "
                  "[..] = 95 % bootstrap interval",
                  style="dim", markup=False, highlight=False)
    _render_curve(result, console=console)
    render_files_and_warnings(result, console=console)


def _render_curve(result: FinetuneResult, *, console: Console) -> None:

    le = result.label_efficiency
    if not le or not le.points:
        return
    table = curve_table(le, ("labels", "train rows", "draws", "fine-tuned", "epoch chosen by"))
    for p in le.points:
        table.add_row(curve_label(p), str(p.n_train), str(p.seeds), curve_cell(p, "finetune"), "; ".join(p.rule))
    console.print(table)


__all__ = ["render_finetune", "write_finetune_reports"]
