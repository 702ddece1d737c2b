"""A study's outputs: report.html, report.md, results.csv, study.json, figures/, and the terminal summary.

The report says one thing first: the verdict — the question declared before any number was seen,
then the family of the other comparisons (study/verdict.py) — and beside it what the test set
can detect, which arms are near chance and how short the BYOL runs were. results.csv is tidy: one
row per arm × label budget × metric, with its interval's bounds and how the interval was made.
"""
from __future__ import annotations

import csv
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sslprobe.fileio import atomic_path, csv_text, write_json
from sslprobe.probing.report import render_comparison, summary
from sslprobe.results import FinetuneResult, LayerChoice, ProbeResult
from sslprobe.study import numbers
from sslprobe.study.document import LIST_MAX, Figures, build
from sslprobe.study.layout import Layout
from sslprobe.study.records import StudyRecord, input_text
from sslprobe.study.render import html_page, markdown

if TYPE_CHECKING:  # pragma: no cover
    from rich.console import Console


def _figures(r: StudyRecord, layout: Layout) -> Figures:
    """The report's PNGs in figures/: the arms' label curves (drawn here), their confusions and loss curves, and
    the near copies the guard found (side by side, drawn with PIL: they need no matplotlib)."""
    from sslprobe.plots import arms_label_efficiency_png

    d = layout.figures
    near = _near_pictures(r, d)
    try:
        import matplotlib.figure  # noqa: F401  (Figure objects, as every plot in plots.py)
    except ImportError:
        return Figures(note="figures skipped: matplotlib is not installed (pip install 'sslprobe[plots]')", near=near)
    d.mkdir(parents=True, exist_ok=True)
    curves = {name: numbers.points(x) for name, x in r.rows}
    le = None
    if any(curves.values()):
        le = d / "label_efficiency.png"
        scored = next((x.label_efficiency.scored_on for _, x in r.rows if x.label_efficiency is not None), "test")
        arms_label_efficiency_png(curves, le, scored_on=scored, metric=r.opts.config.metric)
    confusion, loss = {}, {}
    for run in r.runs:
        name = run.status.arm.name
        probe = run.stages.get("probe")
        if probe is not None and (probe.dir / "confusion.png").is_file():
            confusion[name] = _copy(probe.dir / "confusion.png", d / f"confusion-{name}.png")
        pre = run.stages.get("pretrain")
        if pre is not None and (pre.dir / "loss_curve.png").is_file():
            loss[name] = _copy(pre.dir / "loss_curve.png", d / f"loss-{name}.png")
    return Figures(le, confusion, loss, near=near)


THUMB_SIDE = 96  # CSS pixels of each image of a near-copy pair: enough to see that two images are one


def _near_pictures(r: StudyRecord, d: Path) -> list[Path | None]:
    """figures/near-NNN.png: each near copy the guard listed (the first ``LIST_MAX``), held-out image left."""
    from PIL import Image

    from sslprobe.images.decode import BadImageError

    entries = {f"{e.origin}:{e.id}": e for e in r.prepared.inputs.entries}
    out = []
    for n, pair in enumerate(r.prepared.guard.near[:LIST_MAX], start=1):
        canvas = Image.new("RGB", (2 * THUMB_SIDE + 8, THUMB_SIDE), "white")
        try:
            for k, name in enumerate((pair["held"], pair["copy"])):
                e = entries[name]
                im = r.prepared.inputs.sets[e.origin].read(e.index)
                scale = THUMB_SIDE / max(im.size)
                im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))),
                               Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS)
                canvas.paste(im, (k * (THUMB_SIDE + 8) + (THUMB_SIDE - im.width) // 2, (THUMB_SIDE - im.height) // 2))
        except (BadImageError, KeyError):
            out.append(None)  # an image gone since hashing: the pair is still listed in words
            continue
        path = d / f"near-{n:03d}.png"
        with atomic_path(path) as tmp:
            canvas.save(tmp, "PNG")
        out.append(path)
    return out


def _copy(src: Path, dst: Path) -> Path:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
    return dst


def write_results_csv(rows: Sequence[tuple[str, ProbeResult | FinetuneResult]], path: Path, *,
                      methods: Mapping[str, str], inputs: Mapping[str, str] | None = None,
                      groups: Mapping[str, str] | None = None, layers: Mapping[str, str] | None = None,
                      choices: Mapping[str, LayerChoice] | None = None) -> None:
    """results.csv: one row per arm, method, label budget and metric; ``inputs``: each arm's input, said once per row
    (resolution, stem, crop: docs/study.md, "One input"); ``groups``: the test rows' groups (--groups); ``layers``:
    the layer each arm was read at, ``choices``: the candidates each chose among (one layer-choice row each)."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=numbers.CSV_COLUMNS)
        w.writeheader()
        for name, r in rows:
            for row in numbers.csv_rows(name, r, method=methods.get(name, "linear"), groups=groups,
                                        layer=(layers or {}).get(name, ""), choice=(choices or {}).get(name)):
                row = {**row, "input": (inputs or {}).get(name, "")}
                w.writerow({k: csv_text(v) if isinstance(v, str) else ("" if v is None else v)
                            for k, v in row.items()})


def study_json(r: StudyRecord, files: Mapping[str, str]) -> dict[str, Any]:
    """study.json: the options, data, guard, arms (with notes), results without per-row lists, the verdict."""
    p, g = r.prepared, r.prepared.guard
    return {
        "format": "sslprobe-study", "version": 1, "command": r.command(), "options": asdict(r.opts),
        "data": {origin: {"source": s.source, "kind": s.kind, "images": len(s)} for origin, s in p.inputs.sets.items()},
        "splits": {"rule": asdict(p.splits.rule), "counts": p.splits.counts(), "notes": list(p.splits.notes)},
        "guard": {**g.summary(), "kept_out": list(g.kept_out), "duplicates": list(g.duplicates),
                  "conflicts": list(g.conflicts), "near_copies": list(g.near)},
        "skipped": r.skipped,
        "arms": [{"name": run.status.arm.name, "title": run.status.arm.title, "ran": run.result is not None,
                  "note": run.status.note, "input": run.input, "layer": r.layers().get(run.status.arm.name),
                  "layer_choice": run.layer.to_json() if run.layer else None,
                  "stages": {s: {"dir": str(d.dir), "key": d.key, "reused": d.reused, "command": d.command}
                             for s, d in run.stages.items()}} for run in r.runs],
        "results": {name: summary(x, drop=("val_curve", "paired_tests")) for name, x in r.rows},
        "primary": list(r.primary) if r.primary else None, "metric": r.opts.config.metric,
        "paired_tests": [p.to_json() for p in r.pairs], "verdict": r.verdict, "notes": r.notes,
        "label_budget_verdicts": r.budget_sentences(),
        "commands": r.stage_commands(), "versions": r.versions(), "seconds": r.seconds, "files": dict(files),
    }


def write_all(r: StudyRecord, layout: Layout) -> tuple[dict[str, str], dict[str, Any]]:
    """Every output file; returns {name: path} and study.json's content."""
    figures = _figures(r, layout)
    files = {name: str(layout.file(name)) for name in ("report.html", "report.md", "results.csv", "study.json",
                                                        "splits.json")}
    if r.opts.config.resplit:
        files.update({s.name: str(s) for s in (layout.for_repeat(i).splits for i in range(1, r.opts.repeats))})
    write_results_csv(r.rows, layout.file("results.csv"),
                      methods={run.status.arm.name: "finetune" if run.status.arm.finetune else "linear"
                               for run in r.runs},
                      inputs={run.status.arm.name: input_text(run.input) for run in r.runs},
                      groups=r.prepared.row_groups or None, layers=r.layers(),
                      choices={run.status.arm.name: run.layer for run in r.runs if run.layer})
    blocks = build(r, figures)
    with atomic_path(layout.file("report.md")) as tmp:
        tmp.write_text(markdown(blocks, base=layout.out))
    with atomic_path(layout.file("report.html")) as tmp:
        tmp.write_text(html_page(blocks, title=f"sslprobe study: {r.opts.config.data}"))
    doc = study_json(r, files)
    write_json(layout.file("study.json"), doc)
    return files, doc


def render_terminal(r: StudyRecord, files: Mapping[str, str], *, console: Console) -> None:
    """The comparison table, its paired tests, the verdict and where the report is."""
    if r.rows:  # a fine-tuned row has no C: its cell is a dash
        render_comparison(r.rows, console=console, title="study: comparison on the same test images")
    for run in r.runs:
        if not run.status.runnable:
            console.print(f"{run.status.arm.name}: {run.status.note}", style="yellow", markup=False, highlight=False)
    for name, pooled, each in numbers.repeat_rows(r.repeated(), metric=r.opts.config.metric, seed=r.opts.config.seed,
                                                  groups=r.prepared.row_groups or None):
        console.print(f"  {name}: pooled over {r.opts.repeats} repeats {pooled} (each: {each})", markup=False,
                      highlight=False)
    for line in r.budget_sentences():
        console.print(f"  {line}", markup=False, highlight=False)
    console.print(f"Verdict: {r.verdict or 'no two arms were scored on the same test images'}", style="bold",
                  markup=False, highlight=False)
    for line in r.notes:
        console.print(f"  note: {line}", markup=False, highlight=False)
    console.print(f"report: {files['report.html']} (also report.md, results.csv, study.json)", style="dim",
                  markup=False, highlight=False)
