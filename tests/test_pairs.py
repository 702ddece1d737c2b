"""Paired tests as one family: the declared primary pair alone at 95 %, the rest Holm-adjusted; p and interval agree."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from sslprobe.probing.pairs import paired_tests
from sslprobe.results import Metrics, ProbeResult
from tests.test_uncertainty import predictions


def test_a_one_point_gap_on_500_images_is_noise():
    pred, labels = predictions(500, 0.80, seed=1)
    other = pred.clone()
    fix = ((pred != labels).nonzero().flatten())[:5]  # B fixes 5 of A's errors: +1 point
    other[fix] = labels[fix]
    (p,) = paired_tests([("B", _result(other, labels, list("abcd"))), ("A", _result(pred, labels, list("abcd")))],
                        metric="top1")
    assert p.difference == pytest.approx(0.01) and (p.a_only_correct, p.b_only_correct) == (5, 0)
    assert not p.significant and p.ci[0] <= 0 < p.ci[1]


def test_seven_against_one_discordant_rows_give_one_answer():
    """7 vs 1 discordant of 500: the old bootstrap interval said "better", McNemar said p = 0.07. Now the
    interval and the p-value come from one test and agree, whichever way it falls."""
    labels = torch.arange(500) % 4
    a, b = labels.clone(), labels.clone()
    wrong = (labels + 1) % 4
    a[:40], b[:40] = wrong[:40], wrong[:40]  # both wrong on 40 rows
    b[40:47] = wrong[40:47]  # only A right on 7
    a[47:48] = wrong[47:48]  # only B right on 1
    (p,) = paired_tests([("A", _result(a, labels, list("abcd"))), ("B", _result(b, labels, list("abcd")))],
                        metric="top1")
    assert (p.a_only_correct, p.b_only_correct) == (7, 1)
    assert p.significant == (p.ci[0] > 0 or p.ci[1] < 0) == (p.p_adjusted < 0.05)


def _result(pred, labels, classes, paths=None) -> ProbeResult:
    """A probe result with just what pairing reads: classes, test predictions, labels and paths."""
    metrics = Metrics(top1=0.0, top5=0.0, balanced_accuracy=0.0, macro_f1=0.0, n=len(labels),
                      predictions=pred.tolist())
    return ProbeResult(C=1.0, val=metrics, test=metrics, classes=classes, test_labels=labels.tolist(),
                       test_paths=paths)


def test_paired_tests_pair_by_rows_and_refuse_different_test_sets():
    pred, labels = predictions(100, 0.6)
    a = _result(pred, labels, ["a", "b", "c", "d"], paths=[f"{i}.png" for i in range(100)])
    b = _result(labels, labels, ["a", "b", "c", "d"], paths=[f"{i}.png" for i in range(100)])
    moved = _result(labels, labels, ["a", "b", "c", "d"], paths=[f"x{i}.png" for i in range(100)])
    short = _result(labels[:50], labels[:50], ["a", "b", "c", "d"])
    pairs = paired_tests([("A", a), ("B", b), ("moved", moved), ("short", short)], metric="top1")
    ab = pairs[0]
    assert (ab.a, ab.b, ab.paired) == ("A", "B", True) and ab.difference < 0 and ab.significant
    reasons = {(p.a, p.b): p.reason for p in pairs if not p.paired}
    assert "row paths differ" in reasons[("A", "moved")] and "rows" in reasons[("A", "short")]
    # classes listed in another order still pair by name
    perm = ["d", "c", "b", "a"]
    inv = {c: i for i, c in enumerate(perm)}
    remapped = _result(torch.tensor([inv["abcd"[i]] for i in labels.tolist()]),
                       torch.tensor([inv["abcd"[i]] for i in labels.tolist()]), perm)
    (p,) = paired_tests([("A", dataclasses.replace(a, test_paths=None)), ("B", remapped)], metric="top1")
    assert p.paired and p.difference == pytest.approx(ab.difference)


def _equal_quality(replicate: int, *, sets: int = 6, better: int | None = None, n_train: int = 500, n_test: int = 400,
                   k: int = 5, dim: int = 20) -> list[tuple[str, ProbeResult]]:
    """The issue's simulation: one signal, six feature sets each with its own noise of the same size (``better``:
    that set's noise a third of the others'); a nearest-class-mean classifier per set, 500 train / 400 test."""
    g = torch.Generator().manual_seed(1000 + replicate)
    means = torch.randn(k, dim, generator=g)
    y_train, y_test = torch.randint(k, (n_train,), generator=g), torch.randint(k, (n_test,), generator=g)
    rows = []
    for s in range(sets):
        scale = 2.2 / (3 if s == better else 1)
        x_train = means[y_train] + scale * torch.randn(n_train, dim, generator=g)
        x_test = means[y_test] + scale * torch.randn(n_test, dim, generator=g)
        centroids = torch.stack([x_train[y_train == c].mean(0) for c in range(k)])
        pred = torch.cdist(x_test, centroids).argmin(1)
        rows.append((f"set{s}", _result(pred, y_test, [str(c) for c in range(k)])))
    return rows


def test_equal_sets_rarely_give_any_significant_pair():
    """Six sets of exactly equal quality, 150 replicates: the share of reports with any 'A beats B' stays at
    5 % plus Monte-Carlo error (it was 33 % with each of the 15 pairs tested at 95 % on its own)."""
    reps = 150
    hits = sum(any(p.significant for p in paired_tests(_equal_quality(r), metric="balanced", resamples=1000))
               for r in range(reps))
    assert hits / reps <= 0.05 + 2 * (0.05 * 0.95 / reps) ** 0.5, hits


def test_a_clearly_better_set_still_beats_every_other():
    """The correction must not buy its error rate by never deciding: a set with a third of the noise is
    significant against all five others in at least 90 % of replicates."""
    reps, wins = 40, 0
    for r in range(reps):
        pairs = paired_tests(_equal_quality(r, better=0), metric="balanced", resamples=1000)
        wins += all(p.significant and p.winner == "set0" for p in pairs if "set0" in (p.a, p.b))
    assert wins / reps >= 0.9, wins


def test_the_primary_pair_is_tested_alone_and_the_rest_as_a_family():
    rows = _equal_quality(0, sets=4, better=0)
    pairs = paired_tests(rows, metric="balanced", primary=("set0", "set1"), resamples=2000)
    assert pairs[0].role == "primary" and {pairs[0].a, pairs[0].b} == {"set0", "set1"}
    assert pairs[0].family == 1 and pairs[0].p_adjusted == pairs[0].p and pairs[0].level == pytest.approx(0.95)
    rest = pairs[1:]
    assert len(rest) == 5 and all(p.role == "secondary" and p.family == 5 for p in rest)
    assert all(p.p_adjusted >= p.p and p.level >= 0.95 for p in rest)
    for p in pairs:  # the interval at the level each pair was tested at agrees with its verdict
        assert p.significant == (p.ci[0] > 0 or p.ci[1] < 0)
    everyone = paired_tests(rows, metric="balanced", resamples=2000)
    assert all(p.role == "secondary" and p.family == 6 for p in everyone)


def test_the_other_metrics_are_reported_beside_the_declared_one():
    rows = _equal_quality(1, sets=2)
    (p,) = paired_tests(rows, metric="macro-f1", resamples=1000)
    assert p.metric == "macro-f1" and set(p.others) == {"balanced_accuracy", "top1"}
    assert all(d.ci[0] <= d.value <= d.ci[1] and d.level == 0.95 for d in p.others.values())


def _curved(name_draws: dict, labels: torch.Tensor) -> ProbeResult:
    """A result whose label curve holds each budget's draws' test predictions."""
    points = [{"kind": kind, "value": value, "n_train": 10, "seeds": len(draws), "C": [1.0] * len(draws),
               "C_rule": ["fixed"], "linear": {"mean": 0.0, "std": 0.0, "runs": [0.0] * len(draws),
                                              "predictions": [d.tolist() for d in draws]}}
              for (kind, value), draws in name_draws.items()]
    r = _result(labels, labels, list("abcd"))
    return dataclasses.replace(r, label_efficiency=ProbeResult.from_json(
        {**r.to_json(), "label_efficiency": {"scored_on": "test", "metric": "top1", "points": points}}
    ).label_efficiency)


def test_label_budgets_are_one_family_with_draws_pooled():
    """At every budget (1-shot included) the BYOL arm against each other arm, draws as repeats, one Holm family."""
    from sslprobe.probing.pairs import budget_tests

    g = torch.Generator().manual_seed(9)
    labels = torch.randint(4, (400,), generator=g)

    def draws(acc: float, n: int = 3) -> list[torch.Tensor]:
        return [torch.where(torch.rand(400, generator=g) < acc, labels, (labels + 1) % 4) for _ in range(n)]

    rows = [("pixels", _curved({("shots", 1): draws(0.5), ("fraction", 0.1): draws(0.7)}, labels)),
            ("random", _curved({("shots", 1): draws(0.5), ("fraction", 0.1): draws(0.7)}, labels)),
            ("byol", _curved({("shots", 1): draws(0.5), ("fraction", 0.1): draws(0.95)}, labels))]
    tests = budget_tests(rows, metric="top1", against=["byol"], resamples=2000)
    assert sorted((p.budget, p.a, p.b) for p in tests) == [
        ("1-shot", "pixels", "byol"), ("1-shot", "random", "byol"), ("10 %", "pixels", "byol"),
        ("10 %", "random", "byol")]
    assert all(p.family == 4 and p.repeats == 3 and p.role == "secondary" for p in tests)
    assert {p.budget for p in tests if p.significant} == {"10 %"}  # byol's 95 % vs 70 %; 1-shot all alike


def test_repeats_on_their_own_test_sets_pair_repeat_by_repeat():
    """--resplit: each repeat's A and B share that repeat's test images; the pair pools the repeats (nested), and
    an arm whose repeats are on other images than its partner's is unpaired."""
    sets = [predictions(200, 0.7, seed=s) for s in (1, 2)]
    paths = [[f"r{r}-{i}.png" for i in range(200)] for r in range(2)]
    a = [_result(p, y, list("abcd"), paths=ps) for (p, y), ps in zip(sets, paths)]
    b = [_result(y, y, list("abcd"), paths=ps) for (_, y), ps in zip(sets, paths)]
    stray = [b[0], _result(sets[1][1], sets[1][1], list("abcd"), paths=[f"x{i}.png" for i in range(200)])]
    pairs = paired_tests([("A", a[0]), ("B", b[0]), ("C", stray[0])], metric="top1",
                         repeats={"A": a, "B": b, "C": stray})
    ab = next(p for p in pairs if {p.a, p.b} == {"A", "B"})
    assert ab.paired and ab.repeats == 2 and ab.significant
    mean_gap = sum(float((y == y).double().mean() - (p == y).double().mean()) for p, y in sets) / 2
    assert abs(ab.difference) == pytest.approx(mean_gap)
    assert all(not p.paired for p in pairs if "C" in (p.a, p.b))


def test_groups_make_the_pairs_and_intervals_resample_whole_groups():
    """A beats B on 8 of 10 patients (20 images each), each patient won or lost whole: by rows the gap looks
    certain; with the rows' groups the pair is within noise, its interval wider, and it says how many groups."""
    from sslprobe.probing.pairs import grouped_intervals

    g = torch.Generator().manual_seed(3)
    labels = torch.randint(4, (200,), generator=g)
    patient = [f"p{i // 20}" for i in range(200)]
    a_wins = torch.tensor([i // 20 not in (3, 6) for i in range(200)])
    a = torch.where(a_wins, labels, (labels + 1) % 4)
    b = torch.where(a_wins, (labels + 1) % 4, labels)
    paths = [f"{i:03d}.png" for i in range(200)]
    rows = [("A", _result(a, labels, list("abcd"), paths)), ("B", _result(b, labels, list("abcd"), paths))]
    (by_rows,) = paired_tests(rows, metric="top1", resamples=2000)
    (by_groups,) = paired_tests(rows, metric="top1", resamples=2000, groups=dict(zip(paths, patient)))
    assert by_rows.significant and by_rows.groups is None
    assert not by_groups.significant and by_groups.groups == 10 and by_groups.se > 3 * by_rows.se
    r = dataclasses.replace(rows[0][1], test=dataclasses.replace(rows[0][1].test, ci=None))
    assert grouped_intervals(r, dict(zip(paths, patient))) is r  # nothing to redo without intervals
    from sslprobe.results import Intervals

    with_ci = dataclasses.replace(r, test=dataclasses.replace(r.test, ci=Intervals(
        top1=(0.0, 1.0), balanced_accuracy=(0.0, 1.0), level=0.95, resamples=1, method="rows")))
    grouped = grouped_intervals(with_ci, dict(zip(paths, patient)))
    lo, hi = grouped.test.ci.top1
    assert "10 test groups" in grouped.test.ci.method and hi - lo > 0.4  # 8 of 10 whole groups: 0.8 ± ~0.25
