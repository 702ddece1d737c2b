"""What the study report says, section by section, as blocks (render.py writes them as Markdown and HTML).

Order: the verdict first (what a reader came for), then the numbers behind it (comparison table,
paired tests, label budgets, figures), then how they were made (arms, data and the leakage guard,
budget, the exact commands and versions) — enough to rerun and check every number.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from sslprobe.config.common import METRIC_KEYS, METRIC_NAMES, METRIC_WORDS
from sslprobe.images.phash import NEAR_BITS, NEAR_LEVELS
from sslprobe.probing.report import PAIR_COLUMNS, family_note, metric_order, pair_cells, percent
from sslprobe.probing.report import with_ci as report_with_ci
from sslprobe.results import CurvePoint, Metrics
from sslprobe.study import numbers
from sslprobe.study.records import StudyRecord, input_text
from sslprobe.study.render import Block, Code, Figure, Heading, Items, Para, Table

LIST_MAX = 20  # rows of a list (skipped files, duplicates) shown in the report; study.json has all


@dataclass(frozen=True)
class Figures:
    """The PNGs under figures/ the report shows (empty without matplotlib: ``note`` says so)."""

    label_efficiency: Path | None = None
    confusion: dict[str, Path] = field(default_factory=dict)
    loss: dict[str, Path] = field(default_factory=dict)
    note: str | None = None
    near: list[Path | None] = field(default_factory=list)  # the guard's near copies side by side (None: unreadable)


def _pct(x: float | None) -> str:
    return percent(x, digits=1, unit="")


def with_ci(m: Metrics | None, key: str) -> str:
    """'84.5 [83.8, 85.2]': a metric in percent with its 95 % bootstrap interval."""
    return report_with_ci(m, key, digits=1, unit="")


def _budget_cell(p: CurvePoint | None, method: str) -> str:
    s = numbers.headline_stats(p) if method == "linear" else (p.stats(method) if p is not None else None)
    if not s:
        return "—"
    return f"{100 * s.mean:.1f} ± {100 * s.std:.1f}" if p.seeds > 1 else _pct(s.mean)


def build(r: StudyRecord, figures: Figures) -> list[Block]:
    """Every section of the report, in reading order."""
    return [*_title(r), *_verdict(r), *_results(r), *_layers(r), *_repeats(r), *_pairs(r),
            *_label_efficiency(r, figures), *_confusions(figures), *_pretraining(r, figures), *_arms(r),
            *_data(r, figures), *_commands(r), *_versions(r)]


def _title(r: StudyRecord) -> list[Block]:
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime())
    stages = [d for run in r.runs for d in run.stages.values()]
    reused = sum(d.reused for d in stages)
    again = f" ({reused} of {len(stages)} stages reused from an earlier run)" if reused else ""
    return [Heading(f"sslprobe study: {r.opts.config.data}", 1),
            Para(f"{when} · {r.device_type} · this run {r.seconds:.0f} s{again} · does BYOL pretraining on these "
                 "images beat the baselines? Every arm was scored on the same test images, touched once.")]


def _verdict(r: StudyRecord) -> list[Block]:
    out: list[Block] = [Heading("Verdict")]
    if r.primary:
        how = "" if r.opts.config.primary else ", each the best of its kind on validation"
        out.append(Para(f"Declared question (before any number was seen): {r.primary[0]} vs {r.primary[1]} in "
                        f"{METRIC_WORDS[r.opts.config.metric]}{how}."))
    out.append(Para(r.verdict or "No two arms were scored on the same test images.", strong=True))
    lines = [*r.notes, *r.budget_sentences()]
    if lines:
        out.append(Items(tuple(lines)))
    return out


def _results(r: StudyRecord) -> list[Block]:
    """The comparison table: the declared metric first with its interval, the other two, top-5, kNN, C, budgets."""
    bs = numbers.label_budgets(r.rows)
    split = "test" if all(x.test is not None for _, x in r.rows) else "val"
    metric = r.opts.config.metric
    order = metric_order(metric)
    name_of = METRIC_NAMES[metric]
    top5 = bool(r.rows) and all(x.shows_top5 for _, x in r.rows)
    cols = ("arm", "what", f"{name_of} % [95 % CI]", *(f"{METRIC_NAMES[m]} %" for m in order[1:]),
            *(("top-5 %",) if top5 else ()), f"kNN {name_of} %", "C", "layer", *(f"{name_of} @{b.label}" for b in bs))
    titles = {a.status.arm.name: a.status.arm.title for a in r.runs}
    layers = r.layers()
    rows = []
    for name, x in r.rows:
        knn = getattr(x.knn, split) if x.knn is not None else None
        m = x.split(split)
        rows.append((name, titles.get(name, ""), *(with_ci(m, METRIC_KEYS[k]) for k in order),
                     *((with_ci(m, "top5"),) if top5 else ()),
                     with_ci(knn, METRIC_KEYS[metric]), f"{x.C:.3g}" if x.C is not None else "—",
                     layers.get(name, "—"),
                     *(_budget_cell(numbers.point(x, b), "linear") for b in bs)))
    first = r.rows[0][1].split(split) if r.rows else None
    n = first.n if first is not None else "?"
    return [Heading(f"Results ({split}, {n} images)"), Table(cols, tuple(rows)),
            Para(f"Every number is in the declared metric, {name_of} (--metric {metric}): it chose C, kNN k, the "
                 "fine-tune epoch and learning rate; the other two follow. [..] = 95 % bootstrap interval over the "
                 + ("test groups (--groups: whole groups resampled; kNN's over test images)" if r.prepared.row_groups
                    else "test images")
                 + ". Probe rows: the linear probe refit on train + val at the C chosen on val; fine-tune rows: the "
                 "epoch chosen on val. @budget columns: mean ± std (sample, n − 1) over seeded draws of the "
                 "train labels, each draw choosing its C (or epoch) on its own labels.")]


def _layers(r: StudyRecord) -> list[Block]:
    """Each network arm's candidate layers with their validation scores: the one it was probed at is marked."""
    rows = [(run.status.arm.name, c.layer, str(c.dim), f"{c.C:.3g}", _pct(c.val),
             "✓" if c.layer == run.layer.layer else "")
            for run in r.runs if run.layer is not None for c in run.layer.candidates]
    if not rows:
        return []
    name_of = METRIC_NAMES[r.opts.config.metric]
    return [Heading("Layer of each arm (validation)"),
            Table(("arm", "layer", "dim", "C", f"val {name_of} %", "probed"), tuple(rows)),
            Para(f"Each network arm was embedded at --layers {r.opts.config.layers} in one pass; each layer was fitted "
                 f"on train with one C search and scored on validation in {name_of}, the best one chosen (ties: "
                 "lower validation loss, then the deeper layer) and probed in full. Test rows played no part.")]


def _repeats(r: StudyRecord) -> list[Block]:
    """With --repeats: each arm's metric per repeat beside the pooled one and its interval over repeats and rows."""
    rows = numbers.repeat_rows(r.repeated(), metric=r.opts.config.metric, seed=r.opts.config.seed,
                               groups=r.prepared.row_groups or None)
    if not rows:
        return []
    return [Heading(f"Repeats ({r.opts.repeats} seeds from {r.opts.config.seed})"),
            Table(("arm", f"pooled {METRIC_NAMES[r.opts.config.metric]} % [95 % CI]", "each repeat %"), tuple(rows)),
            Para(_REPEATS_RESPLIT if r.opts.config.resplit else _REPEATS_FIXED)]


_REPEATS_FIXED = ("The pooled interval resamples repeats and test images together (the two-way bootstrap); every "
                  "seeded stage — BYOL, the random init, fine-tuning, the label draws — reran with each seed, on the "
                  "same split.")
_REPEATS_RESPLIT = ("Every repeat drew its own validation/test split (--resplit; splits.json, splits-r2.json, …) and "
                    "reran every seeded stage — BYOL, the random init, fine-tuning, the label draws — on it, so each "
                    "repeat is scored on its own test images. The pooled interval resamples repeats and, within each "
                    "drawn repeat, its own test images (the nested bootstrap); it covers the seed, the split and the "
                    "test images. The label-budget tests use the first repeat.")


def _pairs(r: StudyRecord) -> list[Block]:
    rows = tuple(pair_cells(p) for p in r.pairs)
    if not rows:
        return []
    metric = METRIC_NAMES[r.opts.config.metric]
    groups = next((p.groups for p in r.pairs if p.groups), None)
    whole = (f" Whole test groups ({groups}, --groups) are resampled by the bootstrap and swapped by the "
             "randomization test." if groups else "")
    return [Heading(f"Paired tests (same test images, {metric}, A − B, points)"), Table(PAIR_COLUMNS, rows),
            Para(family_note(r.pairs) + "." + whole)]


def _label_efficiency(r: StudyRecord, figures: Figures) -> list[Block]:
    bs = numbers.label_budgets(r.rows)
    if not bs:
        return []
    rows = []
    for name, x in r.rows:
        for b in bs:
            p = numbers.point(x, b)
            if p:
                rows.append((name, b.label, str(p.n_train), str(p.seeds), _budget_cell(p, "linear"),
                             _budget_cell(p, "knn")))
    name_of = METRIC_NAMES[r.opts.config.metric]
    out: list[Block] = [Heading("Label efficiency")]
    if figures.label_efficiency is not None:
        out.append(Figure(figures.label_efficiency, f"{name_of} against labelled train images (the linear probe; "
                                                    "fine-tune arms: fine-tuned), mean ± std over seeded draws"))
    out.append(Table(("arm", "labels", "train images", "draws", f"{name_of} % (linear or fine-tuned)",
                      f"kNN {name_of} %"), tuple(rows)))
    return out


def _confusions(figures: Figures) -> list[Block]:
    if not figures.confusion:
        return [Para(figures.note)] if figures.note else []
    return [Heading("Confusion matrices (test)"),
            *(Figure(path, name, width=350) for name, path in figures.confusion.items())]


def _pretraining(r: StudyRecord, figures: Figures) -> list[Block]:
    out: list[Block] = []
    for run in r.runs:
        pre = run.stages.get("pretrain")
        if pre is None:
            continue
        info = pre.info
        fitted = info.get("fitted")
        fit = (f"; --minutes {fitted['minutes']:g}: {fitted['steps_per_second']:.2f} steps/s measured over "
               f"{fitted['measured_steps']} steps, set-up {fitted['setup_seconds']:.0f} s, so {fitted['max_steps']} "
               "steps (warm-up, cosine and τ complete within the budget)") if fitted else ""
        out += [Heading(f"BYOL pretraining: {run.status.arm.name}", 3),
                Para(f"{info.get('steps')} steps, final loss {info.get('final_loss', float('nan')):.4f}, on the "
                     f"{len(r.prepared.guard.pool)}-image pool{fit}. Run: {pre.dir}"
                     + (" (reused)" if pre.reused else ""))]
        if run.status.arm.name in figures.loss:
            out.append(Figure(figures.loss[run.status.arm.name], f"BYOL loss, {run.status.arm.name}"))
    return [Heading("BYOL pretraining"), Para(r.opts.budget.describe()), *out] if out else []


def _arms(r: StudyRecord) -> list[Block]:
    rows = []
    for run in r.runs:
        a = run.status.arm
        if not run.status.runnable:
            rows.append((a.name, a.title, "", run.status.note))
            continue
        reused = [s for s, d in run.stages.items() if d.reused]
        rows.append((a.name, a.title, input_text(run.input),
                     "ran" + (f" (reused: {', '.join(reused)})" if reused else "")))
    return [Heading("Arms"), Table(("arm", "what", "input", "status"), tuple(rows)),
            Para("One input (docs/study.md): every arm sees the same centre crop of each image, pixels included; "
                 "an arm that starts from ImageNet weights sees it at the resolution those were trained at when "
                 "the study's size is smaller; arms from random weights get the small 3×3 stem at ≤ 64 px.")]


def _data(r: StudyRecord, figures: Figures) -> list[Block]:
    p, g = r.prepared, r.prepared.guard
    counts = p.splits.counts()
    per = {s: sum(1 for _, sp in g.labelled if sp == s) for s in ("train", "val", "test")}
    grouped = p.splits.rule.groups is not None
    in_split = {s: {p.splits.group_of[k] for k, sp in p.splits.of_key.items() if sp == s and k in p.splits.group_of}
                for s in ("train", "val", "test")}
    rows = tuple((s, str(counts[s]), str(per[s]), *((str(len(in_split[s])),) if grouped else ()))
                 for s in ("train", "val", "test"))
    rule = p.splits.rule
    drawn = ("test is --test as given; val drawn" if rule.fixed_test else
             f"test {rule.test_fraction:g} and val {rule.val_fraction:g} of the rest, drawn") + \
        (" as whole groups (--groups " + r.opts.config.groups + "), as close to those shares per class as the "
         "groups allow," if grouped else " per class") + \
        f" with seed {rule.seed} and saved in splits.json, keyed by sha256 of the image bytes"
    items = [drawn, *p.splits.notes,
             f"pretraining pool: {len(g.pool)} distinct images (train + unlabelled), none of them a val or test image "
             "nor a near copy of one",
             f"{len(g.kept_out)} image(s) kept out by the leakage guard, {len(g.duplicates)} group(s) of exact "
             f"duplicates, {len(g.near)} near copy(ies) of a val or test image, {len(g.conflicts)} image(s) labelled "
             "differently in two places",
             f"{len(r.skipped)} unreadable image(s) skipped"]
    if grouped:
        items.insert(1, "no group is on two sides of the split; every interval and paired test resamples (and the "
                        "randomization test swaps) whole test groups, not images (kNN's intervals: test images)")
    columns = ("split", "distinct images", "labelled rows", *(("groups",) if grouped else ()))
    out: list[Block] = [Heading("Data and the leakage guard"), Table(columns, rows), Items(tuple(items))]
    for title, entries in (("Kept out by the guard", [f"{k['origin']}:{k['path']} — kept out of {k['from']}: "
                                                      f"{k['why']}" for k in g.kept_out]),
                           ("Exact duplicates", [f"{d['split']}: {', '.join(d['paths'])}" for d in g.duplicates]),
                           ("Label conflicts", [f"{', '.join(c['labels'])}: {', '.join(c['paths'])}"
                                                for c in g.conflicts]),
                           ("Skipped images", [f"{s['path']}: {s['reason']}" for s in r.skipped])):
        if entries:
            more = [f"… {len(entries) - LIST_MAX} more in study.json"] if len(entries) > LIST_MAX else []
            out += [Heading(title, 3), Items(tuple(entries[:LIST_MAX] + more))]
    return out + _near(r, figures)


def _near(r: StudyRecord, figures: Figures) -> list[Block]:
    """The near copies of val and test images the guard found, in words and side by side (held-out image left)."""
    near = r.prepared.guard.near
    if not near:
        return []
    more = f" The first {LIST_MAX} are shown; study.json lists all {len(near)}." if len(near) > LIST_MAX else ""
    out: list[Block] = [
        Heading("Near copies of val and test images", 3),
        Para("A resized or re-encoded copy of a held-out image, found by its perceptual hash (pHash within "
             f"{NEAR_BITS} bits) and confirmed by its 8×8 thumbnail (within {NEAR_LEVELS:g} grey levels): kept out "
             "of the pretraining pool, and out of train when labelled (docs/study.md, \"The near-duplicate guard\")."
             + more)]
    for k, pair in enumerate(near[:LIST_MAX]):
        caption = (f"{pair['held']} ({pair['split']}) | {pair['copy']} — {pair['bits']} bits, {pair['levels']:g} "
                   f"grey levels; kept out of {pair['kept_out_of']}")
        picture = figures.near[k] if k < len(figures.near) else None
        if picture is not None:
            out.append(Figure(picture, caption, width=2 * 96 + 8))
        else:
            out.append(Para(caption))
    return out


def _commands(r: StudyRecord) -> list[Block]:
    steps = r.stage_commands()
    return [Heading("Commands"), Para("The study, as it was asked for:"), Code(r.command()),
            Para("The same, step by step (each arm's rows are cut by splits.json into features/{train,val,test} "
                 "between extract and compare):"), Code("\n".join(steps))]


def _versions(r: StudyRecord) -> list[Block]:
    return [Heading("Versions"), Table(("package", "version"), tuple((k, str(v)) for k, v in r.versions().items()))]
