"""The numbers a study reports, read from its arms' results: headline metrics, label budgets, differences.

Results are :class:`~sslprobe.results.ProbeResult` (or a fine-tune's result, read the same way). Full-label
numbers carry the probe's 95 % bootstrap intervals over test rows; a label-budget number is a mean
over seeded draws in the curve's metric (the declared --metric), with the two-way bootstrap interval
over the draws and the test rows (probing.pairs.pooled); its tests against other arms are
probing.pairs.budget_tests.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sslprobe.config.common import METRIC_KEYS, METRICS
from sslprobe.probing.pairs import budget_runs, pooled
from sslprobe.results import CurvePoint, CurveStats, FinetuneResult, LayerCandidate, LayerChoice, Metrics, ProbeResult

Scored = ProbeResult | FinetuneResult

@dataclass(frozen=True)
class LabelBudget:
    """One label budget of the curve: ("fraction", 0.1) or ("shots", 5)."""

    kind: str
    value: float

    @property
    def label(self) -> str:
        return f"{100 * self.value:g} %" if self.kind == "fraction" else f"{int(self.value)}-shot"


def points(r: Scored) -> Sequence[CurvePoint]:
    """The label-budget points of a result (none without a label curve)."""
    return r.label_efficiency.points if r.label_efficiency is not None else []


def label_budgets(rows: Sequence[tuple[str, Scored]]) -> list[LabelBudget]:
    """Every label budget any arm has, in curve order (fractions, then shots, each ascending)."""
    seen: list[LabelBudget] = []
    for _, r in rows:
        for p in points(r):
            b = LabelBudget(p.kind, p.value)
            if b not in seen:
                seen.append(b)
    return sorted(seen, key=lambda b: (b.kind != "fraction", b.value))


def point(r: Scored, b: LabelBudget) -> CurvePoint | None:
    return next((p for p in points(r) if p.kind == b.kind and p.value == b.value), None)


def split_of(r: Scored) -> str:
    return r.headline_split


def headline_stats(p: CurvePoint | None) -> CurveStats | None:
    """A budget point's main statistics (its curve's metric): the linear probe's, or a fine-tuned row's."""
    return None if p is None else p.headline


def repeat_rows(arms: Sequence[tuple[str, Sequence[Scored]]], *, metric: str, seed: int,
                groups: Mapping[str, str] | None = None) -> list[tuple[str, str, str]]:
    """(arm, pooled % [95 % CI], each repeat's %) for the arms run more than once (--repeats); ``groups``: the
    test rows' groups (--groups), resampled whole."""
    key, rows = METRIC_KEYS[metric], []
    for name, every in arms:
        if len(every) < 2:
            continue
        value, ci = pooled(every, metric=metric, seed=seed, groups=groups)
        rows.append((name, f"{100 * value:.1f} [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]",
                     " / ".join(f"{100 * x.test.value(key):.1f}" for x in every if x.test is not None)))
    return rows


def csv_rows(name: str, r: Scored, *, method: str, groups: Mapping[str, str] | None = None, layer: str = "",
             choice: LayerChoice | None = None) -> list[dict[str, Any]]:
    """results.csv rows of one arm: the full-label metrics (one row each), then every label budget (mean over draws,
    in the curve's metric; ``groups``: the test rows' groups, resampled whole by the budgets' intervals), each
    naming the ``layer`` the arm was read at; then, when the layer was chosen, one ``layer-choice`` row per
    candidate: its validation score in the declared metric."""
    return [*({**row, "layer": layer} for row in _scored_rows(name, r, method=method, groups=groups)),
            *(_candidate_row(name, c, choice.metric, n=int(r.n_train)) for c in (choice.candidates if choice else ()))]


def _candidate_row(name: str, c: LayerCandidate, metric: str, *, n: int) -> dict[str, Any]:
    """A layer the arm could have been read at: its validation score at the C its search chose."""
    return {**_row(name, "layer-choice", "all", "all", 1.0, n, 1, "val", METRIC_KEYS[metric], c.val, None, None, ""),
            "layer": c.layer}


def _scored_rows(name: str, r: Scored, *, method: str, groups: Mapping[str, str] | None) -> list[dict[str, Any]]:
    split = split_of(r)
    used = int(r.n_train) + (int(r.n_val) if split == "test" else 0)
    keys = [*(METRIC_KEYS[m] for m in (r.metric, *(m for m in METRICS if m != r.metric))),
            *(("top5",) if r.shows_top5 else ())]
    out = [*_full(name, method, r.split(split), keys, split=split, n=used)]
    knn = getattr(r.knn, split) if r.knn is not None else None
    if knn and method == "linear":
        out += _full(name, "knn", knn, keys, split=split, n=used)
    le = r.label_efficiency
    scored_on, curve_key = (le.scored_on, METRIC_KEYS[le.scored_by]) if le is not None else (split, "")
    for b in label_budgets([(name, r)]):
        p = point(r, b)
        for m in ("linear", "finetune", "knn"):
            stats = p.stats(m) if p is not None else None
            if stats:
                runs = budget_runs(r, b.kind, b.value) if m != "knn" and stats.predictions else None
                ci = pooled(runs, metric=le.scored_by, groups=groups)[1] if runs else None
                how = f"bootstrap over draws and test {'groups' if groups else 'rows'}" if ci else ""
                out.append(_row(name, m, b.label, b.kind, b.value, p.n_train, len(stats.runs), scored_on, curve_key,
                                stats.mean, ci, stats.std, how))
    return out


def _full(name: str, method: str, m: Metrics | None, keys: Sequence[str], *, split: str,
          n: int) -> list[dict[str, Any]]:
    """One row per metric of ``keys`` (the declared metric first)."""
    if m is None:
        return []
    return [_row(name, method, "all", "all", 1.0, n, 1, split, metric, m.value(metric), m.interval(metric), None,
                 "bootstrap over test rows" if m.interval(metric) else "")
            for metric in keys if m.value(metric) is not None]


def _row(arm: str, method: str, labels: str, kind: str, value: float, n_train: int, seeds: int, split: str,
         metric: str, v: float, ci: Sequence[float] | None, std: float | None, ci_method: str) -> dict[str, Any]:
    return {"arm": arm, "method": method, "labels": labels, "label_kind": kind, "label_value": value,
            "n_train": n_train, "seeds": seeds, "split": split, "metric": metric, "value": v,
            "ci_low": None if ci is None else ci[0], "ci_high": None if ci is None else ci[1], "std": std,
            "ci_method": ci_method}


CSV_COLUMNS = ("arm", "method", "labels", "label_kind", "label_value", "n_train", "seeds", "split", "metric", "value",
               "ci_low", "ci_high", "std", "ci_method", "input", "layer")  # input: the arm's resolution, stem, crop
