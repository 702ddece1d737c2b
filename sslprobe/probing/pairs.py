"""Paired tests between the results of a comparison, as one family: is A's lead over B more than noise?

Two results are paired when they were scored on the same test images: the same row paths when both
list them, else the same labels row by row. Every arm of one test set is resampled on the same
bootstrap draws (``uncertainty.bootstrap``: test rows, and repeats when there are several), so each
pair's difference has a paired distribution; its two-sided p and its interval are read from the
same resampled differences and cannot disagree (``uncertainty.order_interval``).

One pair may be declared the **primary** question before any number is seen (a study's best
self-supervised arm against its best baseline, each chosen on validation; ``--primary A,B``); it is
tested alone at 95 %. Every other pair is **secondary**: one family whose p-values are Holm-adjusted
(Holm 1979) and whose intervals are widened to the level each adjustment used, so the chance of any
false "A beats B" in the family stays at 5 % (docs/probe.md, "Verdict").

``groups`` (a test row's path → its group: a study's ``--groups``) makes every bootstrap resample whole
groups and the randomization test swap whole groups (``uncertainty.row_weights``); a row whose path it
does not name is a group of its own.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations

import torch

from sslprobe.probing.uncertainty import (
    LEVEL,
    METRIC_KEYS,
    METRICS,
    PAIRED_RESAMPLES,
    RESAMPLES,
    bootstrap,
    bootstrap_p,
    clusters_of,
    holm,
    minimum_detectable,
    nested_bootstrap,
    order_interval,
    pooled_value,
    signflip_p,
)
from sslprobe.results import FinetuneResult, Intervals, PairedTest, ProbeResult

Scored = ProbeResult | FinetuneResult
ALPHA = 1 - LEVEL


def _test_rows(r: Scored) -> tuple[list[str], list[int]] | None:
    """(class names of the test labels in row order, the linear predictions) or None."""
    if r.test is None or r.test.predictions is None or r.test_labels is None:
        return None
    return [r.classes[i] for i in r.test_labels], r.test.predictions


def _why_unpaired(a: Scored, b: Scored) -> str | None:
    ra, rb = _test_rows(a), _test_rows(b)
    if ra is None or rb is None:
        return "no test set on both sides"
    if len(ra[0]) != len(rb[0]):
        return f"different test sets ({len(ra[0])} vs {len(rb[0])} rows)"
    if a.test_paths and b.test_paths and a.test_paths != b.test_paths:
        return "different test images (row paths differ)"
    if ra[0] != rb[0]:
        return "different test labels row by row"
    return None


def _runs(name: str, rows: Mapping[str, Scored], repeats: Mapping[str, Sequence[Scored]]) -> Sequence[Scored]:
    return repeats.get(name) or [rows[name]]


def _why_unpaired_runs(a: Sequence[Scored], b: Sequence[Scored]) -> str | None:
    """Why two arms' runs cannot be paired: repeat by repeat when both have every repeat (each repeat may
    have its own test set: ``--resplit``), else all on one test set."""
    pairs = zip(a, b) if len(a) == len(b) else ((a[0], x) for x in (*a, *b))
    return next((why for x, y in pairs if (why := _why_unpaired(x, y)) is not None), None)


def _groups(rows: Sequence[tuple[str, Scored]], repeats: Mapping[str, Sequence[Scored]]) -> list[list[str]]:
    """Names of the results that share their test sets (each group is bootstrapped on one set of draws)."""
    groups: list[list[str]] = []
    by_name = dict(rows)
    for name, r in rows:
        if _test_rows(r) is None:
            continue
        mine = _runs(name, by_name, repeats)
        home = next((g for g in groups if _why_unpaired_runs(_runs(g[0], by_name, repeats), mine) is None), None)
        if home is None:
            groups.append([name])
        else:
            home.append(name)
    return groups


def _renumbered(pred: Sequence[int], classes: Sequence[str], index: Mapping[str, int]) -> torch.Tensor:
    """Predictions as indices of ``index`` (a class the test labels lack is -1: always wrong)."""
    return torch.tensor([index.get(classes[p], -1) for p in pred])


@dataclass(frozen=True)
class _Group:
    """One test set's labels (or, with ``--resplit``, each repeat's), its arms' predictions (R, N) (or a list of
    each repeat's) in one class numbering, and every metric's bootstrap (A, resamples) of those arms, all on the
    same draws (the counts once per draw, each metric from them)."""

    names: list[str]
    labels: torch.Tensor | list[torch.Tensor]
    preds: list[torch.Tensor] | list[list[torch.Tensor]]
    values: dict[str, torch.Tensor]
    k: int
    clusters: torch.Tensor | list[torch.Tensor | None] | None = None  # the test rows' groups (--groups)

    @property
    def groups(self) -> int | None:
        """How many groups the first test set's rows fall in, when they are resampled by group."""
        first = self.clusters[0] if isinstance(self.clusters, list) else self.clusters
        return int(first.max()) + 1 if first is not None and first.numel() else None

    @property
    def first_labels(self) -> torch.Tensor:
        return self.labels if isinstance(self.labels, torch.Tensor) else self.labels[0]


def row_clusters(r: Scored, groups: Mapping[str, str] | None) -> torch.Tensor | None:
    """The groups of a result's test rows as 0 … G − 1 (a row ``groups`` does not name: a group of its own), or
    None without groups or row paths."""
    if not groups or not r.test_paths:
        return None
    return clusters_of([("group", groups[p]) if p in groups else ("row", i) for i, p in enumerate(r.test_paths)])


def _draws(group: Sequence[str], rows: Mapping[str, Scored], repeats: Mapping[str, Sequence[Scored]], *,
           metric: str, seed: int, resamples: int, groups: Mapping[str, str] | None = None) -> _Group:
    runs = [_runs(name, rows, repeats) for name in group]
    first = runs[0]
    tests = [_test_rows(x)[0] for x in first]
    index = {c: i for i, c in enumerate(sorted({c for names in tests for c in names}))}
    if all(_why_unpaired(first[0], x) is None for arm in runs for x in arm):  # one test set: crossed
        labels = torch.tensor([index[c] for c in tests[0]])
        preds = [torch.stack([_renumbered(_test_rows(x)[1], x.classes, index) for x in arm]) for arm in runs]
        clusters = row_clusters(first[0], groups)
        values = bootstrap(preds, labels, metrics=METRICS, num_classes=len(index), resamples=resamples, seed=seed,
                           clusters=clusters)
        return _Group(list(group), labels, preds, values, len(index), clusters)
    each = [torch.tensor([index[c] for c in names]) for names in tests]  # a test set per repeat: nested
    nested = [[_renumbered(_test_rows(x)[1], x.classes, index) for x in arm] for arm in runs]
    clustered = [row_clusters(x, groups) for x in first]
    clustered = clustered if any(c is not None for c in clustered) else None
    values = nested_bootstrap(nested, each, metrics=METRICS, num_classes=len(index), resamples=resamples, seed=seed,
                              clusters=clustered)
    return _Group(list(group), each, nested, values, len(index), clustered)


def _pair(a: str, b: str, g: _Group, *, metric: str, resamples: int, seed: int) -> dict:
    """The unadjusted test of one pair: difference, p, standard error, the 80 %-power detectable difference, and
    the other metrics' differences with 95 % intervals (descriptive, unadjusted).

    p is the larger of the paired bootstrap's and the sign-flip randomization test's: the bootstrap's alone is
    optimistic when few rows disagree (it resamples the rows as they are), the randomization test's alone
    gives no interval; the larger keeps both honest (uncertainty.signflip_p)."""
    i, j = g.names.index(a), g.names.index(b)

    def value(m: str) -> float:
        return (pooled_value(g.preds[i], g.labels, metric=m, num_classes=g.k)
                - pooled_value(g.preds[j], g.labels, metric=m, num_classes=g.k))

    diff = (g.values[metric][i] - g.values[metric][j]).sort().values
    exchange = signflip_p(g.preds[i], g.preds[j], g.labels, metric=metric, num_classes=g.k, resamples=resamples,
                          seed=seed, clusters=g.clusters)
    others = {METRIC_KEYS[m]: {"value": value(m), "level": LEVEL,
                               "ci": order_interval((g.values[m][i] - g.values[m][j]).sort().values, ALPHA)}
              for m in METRICS if m != metric}
    hit_a, hit_b = g.preds[i][0] == g.first_labels, g.preds[j][0] == g.first_labels
    return {"a": a, "b": b, "paired": True, "n": int(g.first_labels.numel()), "metric": metric,
            "difference": value(metric),
            "p": max(bootstrap_p(diff), exchange), "se": float(diff.std()), "detectable": minimum_detectable(diff),
            "repeats": max(len(g.preds[i]), len(g.preds[j])), "resamples": resamples,
            "a_only_correct": int((hit_a & ~hit_b).sum()), "b_only_correct": int((hit_b & ~hit_a).sum()),
            "others": others, "_sorted": diff, **({"groups": g.groups} if g.groups is not None else {})}


def _decide(t: dict, *, role: str, p_adjusted: float, family: int) -> PairedTest:
    """The pair's verdict at its (adjusted) level, with the interval from the bootstrap at that level.

    Holm multiplies the pair's p by ``p_adjusted / p``; the bootstrap interval at α / that multiplier
    excludes 0 whenever ``p_adjusted`` < α (the bootstrap's own p is at most p). When the randomization
    test keeps the pair within noise although that interval misses 0 (a handful of disagreeing rows), the
    interval is extended to reach 0: interval and verdict say the same, always. (p is never 0: the
    randomization test's is at least 1 / (resamples + 1).)
    """
    alpha = ALPHA / max(p_adjusted / t["p"], 1.0)
    significant = p_adjusted < ALPHA
    lo, hi = order_interval(t.pop("_sorted"), alpha)
    if not significant:
        lo, hi = min(lo, 0.0), max(hi, 0.0)
    return PairedTest.from_json({**t, "role": role, "ci": [lo, hi], "level": 1 - alpha, "p_adjusted": p_adjusted,
                                 "family": family, "significant": significant})


def paired_tests(rows: Sequence[tuple[str, Scored]], *, metric: str = "balanced",
                 primary: tuple[str, str] | None = None, seed: int = 0, resamples: int = PAIRED_RESAMPLES,
                 repeats: Mapping[str, Sequence[Scored]] | None = None,
                 groups: Mapping[str, str] | None = None) -> list[PairedTest]:
    """One entry per pair of results (in the given order): A − B in ``metric``, primary or in the Holm family,
    or why the two are unpaired. ``repeats``: an arm's results over repeats (seeds), pooled by the bootstrap;
    ``groups``: test row path → group, resampled and swapped whole."""
    tests, unpaired = _tests(rows, metric=metric, primary=primary, seed=seed, resamples=resamples,
                             repeats=repeats or {}, groups=groups)
    return _family(tests, primary=primary) + unpaired


def budget_tests(rows: Sequence[tuple[str, Scored]], *, metric: str, against: Collection[str], seed: int = 0,
                 resamples: int = PAIRED_RESAMPLES, groups: Mapping[str, str] | None = None) -> list[PairedTest]:
    """Label budgets in the same statistics: at every budget (1-shot included) each arm of ``against`` against
    every other arm, its seeded draws pooled as repeats (the draws are the same subsets for every arm, so they
    pair), every (budget, pair) in one Holm family. Needs curves scored on test with their draws' predictions."""
    tests: list[dict] = []
    for kind, value in dict.fromkeys((p.kind, p.value) for _, r in rows for p in _points(r)):
        runs = {name: budget_runs(r, kind, value) for name, r in rows}
        present = [(n, got[0]) for n, got in runs.items() if got]
        found, _ = _tests(present, metric=metric, primary=None, seed=seed, resamples=resamples,
                          repeats={n: runs[n] for n, _ in present}, keep=lambda a, b: a in against or b in against,
                          groups=groups)
        name = f"{100 * value:g} %" if kind == "fraction" else f"{value:g}-shot"
        tests += [{**t, "budget": name} for t in found]
    return _family(tests, primary=None)


def _points(r: Scored) -> list:
    le = r.label_efficiency
    return le.points if le is not None and le.scored_on == "test" else []


def budget_runs(r: Scored, kind: str, value: float) -> list[Scored] | None:
    """An arm's draws at one label budget, each as a result whose test predictions are that draw's."""
    p = next((p for p in _points(r) if p.kind == kind and p.value == value), None)
    got = p.headline if p is not None else None
    if got is None or not got.predictions or r.test is None:
        return None
    return [dataclasses.replace(r, test=dataclasses.replace(r.test, predictions=pred)) for pred in got.predictions]


def _tests(rows: Sequence[tuple[str, Scored]], *, metric: str, primary: tuple[str, str] | None, seed: int,
           resamples: int, repeats: Mapping[str, Sequence[Scored]], keep: Callable[[str, str], bool] | None = None,
           groups: Mapping[str, str] | None = None) -> tuple[list[dict], list[PairedTest]]:
    """Every pair's unadjusted test (those ``keep`` allows), and the pairs that cannot be paired."""
    by_name = dict(rows)
    sets = {g[0]: g for g in _groups(rows, repeats)}
    drawn = {first: _draws(g, by_name, repeats, metric=metric, seed=seed, resamples=resamples, groups=groups)
             for first, g in sets.items()}
    home = {n: first for first, g in sets.items() for n in g}
    tests, unpaired = [], []
    for (na, _), (nb, _) in combinations(rows, 2):
        if keep is not None and not keep(na, nb):
            continue
        if na not in home or home.get(na) != home.get(nb):
            why = _why_unpaired(by_name[na], by_name[nb])
            unpaired.append(PairedTest(a=na, b=nb, paired=False, reason=why or "different test sets"))
            continue
        if primary is not None and (nb, na) == tuple(primary):
            na, nb = nb, na  # the declared question reads as declared: A − B with A first
        tests.append(_pair(na, nb, drawn[home[na]], metric=metric, resamples=resamples, seed=seed))
    return tests, unpaired


def pooled(runs: Sequence[Scored], *, metric: str, seed: int = 0, resamples: int = RESAMPLES,
           groups: Mapping[str, str] | None = None) -> tuple[float, list[float]]:
    """An arm's metric pooled over its repeats (mean), with the 95 % interval of the two-way bootstrap (the
    nested one when the repeats have their own test sets: ``--resplit``); ``groups`` resampled whole."""
    name = "arm"
    g = _draws([name], {name: runs[0]}, {name: runs}, metric=metric, seed=seed, resamples=resamples, groups=groups)
    return (pooled_value(g.preds[0], g.labels, metric=metric, num_classes=g.k),
            order_interval(g.values[metric][0].sort().values, ALPHA))


def grouped_intervals(r: Scored, groups: Mapping[str, str], *, seed: int = 0) -> Scored:
    """``r`` with its test intervals from the cluster bootstrap over the groups of its test rows (``RESAMPLES``
    draws of whole groups, every metric on the same draws), in place of the probe's over rows; unchanged when
    its test rows carry no predictions or paths."""
    rows, clusters = _test_rows(r), row_clusters(r, groups)
    if rows is None or clusters is None or r.test is None or r.test.ci is None:
        return r
    index = {c: i for i, c in enumerate(sorted(set(rows[0])))}
    labels = torch.tensor([index[c] for c in rows[0]])
    pred = _renumbered(rows[1], r.classes, index)
    values = bootstrap([pred[None]], labels, metrics=METRICS, num_classes=len(index), resamples=RESAMPLES, seed=seed,
                       clusters=clusters)
    ci = {METRIC_KEYS[m]: tuple(order_interval(v[0].sort().values, ALPHA)) for m, v in values.items()}
    method = f"percentile bootstrap over {int(clusters.max()) + 1} test groups (--groups)"
    test = dataclasses.replace(r.test, ci=Intervals(**ci, level=LEVEL, resamples=RESAMPLES, method=method))
    return dataclasses.replace(r, test=test)


def _family(tests: list[dict], *, primary: tuple[str, str] | None) -> list[PairedTest]:
    """The primary pair alone at 95 %; every other pair in one Holm family."""
    is_primary = [primary is not None and {t["a"], t["b"]} == set(primary) for t in tests]
    family = [t for t, first in zip(tests, is_primary) if not first]
    adjusted = holm([t["p"] for t in family])
    decided = {id(t): _decide(t, role="secondary", p_adjusted=q, family=len(family)) for t, q in zip(family, adjusted)}
    for t, first in zip(tests, is_primary):
        if first:
            decided[id(t)] = _decide(t, role="primary", p_adjusted=t["p"], family=1)
    return sorted((decided[id(t)] for t in tests), key=lambda p: p.role != "primary")


__all__ = ["ALPHA", "budget_runs", "budget_tests", "grouped_intervals", "paired_tests", "pooled", "row_clusters"]
