"""Bootstrap intervals, the one-metric bootstrap over repeats and rows, its p-value and interval, Holm."""
from __future__ import annotations

import math

import pytest
import torch

from sslprobe.probing.metrics import classification_metrics, intervals
from sslprobe.probing.uncertainty import (
    METRIC_KEYS,
    bootstrap,
    bootstrap_p,
    clusters_of,
    holm,
    metric_value,
    nested_bootstrap,
    order_interval,
    pooled_value,
    row_weights,
    signflip_p,
)


def predictions(n: int, acc: float, k: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(k, (n,), generator=g)
    wrong = torch.rand(n, generator=g) > acc
    return torch.where(wrong, (labels + 1) % k, labels), labels


def test_interval_brackets_the_estimate_with_the_binomial_width():
    pred, labels = predictions(500, 0.8)
    ci = intervals(pred, labels, num_classes=4, seed=0)
    p = float((pred == labels).double().mean())
    lo, hi = ci["top1"]
    assert lo < p < hi and ci["level"] == 0.95 and ci["resamples"] == 1000
    assert hi - lo == pytest.approx(2 * 1.96 * math.sqrt(p * (1 - p) / 500), rel=0.15)
    blo, bhi = ci["balanced_accuracy"]
    assert blo < hi and bhi > lo and bhi - blo > 0.02 and set(ci) >= {"macro_f1"}
    assert intervals(pred, labels, num_classes=4, seed=0) == ci  # seeded


def test_order_interval_and_bootstrap_p_never_disagree():
    """The interval at level 1 − α excludes 0 exactly when p < α, for any resampled differences and any α."""
    g = torch.Generator().manual_seed(0)
    for trial in range(200):
        b = int(torch.randint(20, 3000, (1,), generator=g))
        d = (torch.randn(b, generator=g) * 0.02 + float(torch.randn(1, generator=g)) * 0.02).double()
        if trial % 5 == 0:
            d = torch.round(d * 100) / 100  # ties at 0, as with few discordant rows
        d = d.sort().values
        p = bootstrap_p(d)
        for alpha in (0.05, 0.01, 0.05 / 3, 0.05 / 15, 0.2):
            lo, hi = order_interval(d, alpha)
            assert (lo > 0 or hi < 0) == (p < alpha), (b, alpha, p, lo, hi)


def test_holm_adjusted_values_by_hand():
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5]) == [0.5] and holm([]) == [] and holm([0.4, 0.6]) == pytest.approx([0.8, 0.8])


def test_metrics_from_counts_match_the_reported_ones():
    g = torch.Generator().manual_seed(3)
    labels = torch.cat([torch.zeros(60, dtype=torch.long), torch.randint(1, 5, (40,), generator=g)])
    pred = torch.where(torch.rand(100, generator=g) < 0.6, labels, torch.randint(0, 6, (100,), generator=g))
    scores = torch.nn.functional.one_hot(pred, 6).float()
    m = classification_metrics(scores, labels, num_classes=6)
    for metric, key in METRIC_KEYS.items():
        assert metric_value(pred, labels, metric=metric, num_classes=6) == pytest.approx(m[key])


def test_repeats_widen_the_interval_when_seeds_disagree():
    """Three repeats that differ (a seed effect) pool to a wider interval than one of them alone."""
    g = torch.Generator().manual_seed(4)
    labels = torch.randint(3, (300,), generator=g)
    runs = torch.stack([torch.where(torch.rand(300, generator=g) < acc, labels, (labels + 1) % 3)
                        for acc in (0.6, 0.75, 0.9)])
    one = bootstrap([runs[1:2]], labels, metrics=("top1",), num_classes=3, resamples=2000)["top1"][0]
    pooled = bootstrap([runs], labels, metrics=("top1",), num_classes=3, resamples=2000)["top1"][0]
    both = bootstrap([runs], labels, metrics=("top1", "balanced"), num_classes=3, resamples=2000)
    assert torch.equal(both["top1"][0], pooled)  # one pass, the same draws for every metric
    assert float(pooled.std()) > 1.5 * float(one.std())
    assert float(pooled.mean()) == pytest.approx(pooled_value(runs, labels, metric="top1", num_classes=3), abs=0.02)


def test_nested_bootstrap_resamples_each_repeats_own_test_set():
    """--resplit: with one repeat it is the row bootstrap of that set; with three test sets whose arms differ
    (a split effect) the pooled spread is wider than one set's, centred on the mean of the three."""
    sets = [predictions(300 + 50 * i, acc, k=3, seed=i) for i, acc in enumerate((0.6, 0.75, 0.9))]
    labels, preds = [y for _, y in sets], [p for p, _ in sets]
    one = nested_bootstrap([[preds[1]]], [labels[1]], metrics=("top1",), num_classes=3, resamples=4000)["top1"][0]
    rows = bootstrap([preds[1]], labels[1], metrics=("top1",), num_classes=3, resamples=4000)["top1"][0]
    assert float(one.std()) == pytest.approx(float(rows.std()), rel=0.1)
    pooled = nested_bootstrap([preds], labels, metrics=("top1",), num_classes=3, resamples=4000)["top1"][0]
    assert float(pooled.std()) > 1.5 * float(one.std())
    assert float(pooled.mean()) == pytest.approx(pooled_value(preds, labels, metric="top1", num_classes=3), abs=0.02)
    with pytest.raises(ValueError, match="each of the 3"):
        nested_bootstrap([preds[:2]], labels, metrics=("top1",), num_classes=3, resamples=10)


def test_nested_bootstrap_pairs_the_arms_within_every_draw():
    """Two arms that differ by the same rows in every repeat: the paired difference's spread is far below
    either arm's own spread, as it is on one test set."""
    sets = [predictions(400, acc, k=3, seed=10 + i) for i, acc in enumerate((0.6, 0.8))]
    labels = [y for _, y in sets]
    a = [p for p, _ in sets]
    b = [torch.where(torch.arange(len(y)) < 8, (y + 1) % 3, p) for p, y in sets]  # a few more errors
    v = nested_bootstrap([a, b], labels, metrics=("top1",), num_classes=3, resamples=2000)["top1"]
    assert float((v[0] - v[1]).std()) < 0.3 * float(v[0].std())


def test_signflip_with_one_test_set_per_repeat_matches_the_shared_form():
    """The randomization test reads each repeat on its own labels; given the same set twice it is the shared
    (R, N) form exactly (same swaps drawn)."""
    (a, y), (b, _) = predictions(200, 0.7, seed=1), predictions(200, 0.6, seed=1)
    shared = signflip_p(torch.stack([a, a]), torch.stack([b, b]), y, metric="balanced", num_classes=4,
                        resamples=500, seed=3)
    each = signflip_p([a, a], [b, b], [y, y], metric="balanced", num_classes=4, resamples=500, seed=3)
    assert shared == each


def _grouped(groups: int, size: int, *, correlated: bool, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Predictions on ``groups`` × ``size`` test rows, 75 % right; correlated: a group is right or wrong as a
    whole (one patient's images share what makes them hard), else each row on its own."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(4, (groups * size,), generator=g)
    cluster = torch.arange(groups).repeat_interleave(size)
    right = (torch.rand(groups, generator=g) < 0.75)[cluster] if correlated else \
        torch.rand(groups * size, generator=g) < 0.75
    return torch.where(right, labels, (labels + 1) % 4), labels, cluster


def test_the_cluster_bootstrap_widens_the_interval_when_groups_are_correlated():
    """40 groups of 25 rows: with rows right or wrong by group, the row bootstrap's interval is as if there were
    1,000 independent rows and the cluster bootstrap's is about √25 = 5 times wider (the design effect
    1 + (m − 1)ρ with ρ = 1); with independent rows the two agree."""
    def width(pred, labels, clusters):
        v = bootstrap([pred[None]], labels, metrics=["top1"], num_classes=4, resamples=2000, seed=1,
                      clusters=clusters)["top1"][0].sort().values
        lo, hi = order_interval(v, 0.05)
        return hi - lo

    pred, labels, cluster = _grouped(40, 25, correlated=True)
    assert width(pred, labels, cluster) / width(pred, labels, None) == pytest.approx(5.0, rel=0.25)
    pred, labels, cluster = _grouped(40, 25, correlated=False)
    assert width(pred, labels, cluster) / width(pred, labels, None) == pytest.approx(1.0, abs=0.2)


def test_row_weights_draw_whole_clusters():
    g = torch.Generator().manual_seed(0)
    cluster = clusters_of(["p1", "p1", "p2", "p3", "p3", "p3"])
    assert cluster.tolist() == [0, 0, 1, 2, 2, 2]
    w = row_weights(6, 500, generator=g, clusters=cluster)
    assert torch.equal(w[:, 0], w[:, 1]) and torch.equal(w[:, 3], w[:, 5])  # a group's rows drawn together
    assert float(w[:, [0, 2, 3]].sum(1).mean()) == pytest.approx(3.0)  # 3 groups drawn each time
    assert set(w.unique().tolist()) <= {0.0, 1.0, 2.0, 3.0}
    rows = row_weights(6, 500, generator=torch.Generator().manual_seed(0))
    assert torch.equal(rows.sum(1), torch.full((500,), 6.0, dtype=torch.float64))  # without clusters: rows


def test_the_randomization_test_swaps_whole_groups():
    """A leads B on 10 groups of 20 rows, each group won or lost whole: rows swapped singly make 200 independent
    coin flips (p tiny), groups swapped whole make 10 (p near the exact sign test's)."""
    g = torch.Generator().manual_seed(3)
    labels = torch.randint(4, (200,), generator=g)
    cluster = torch.arange(10).repeat_interleave(20)
    a_wins = torch.tensor([1, 1, 1, 1, 1, 1, 1, 0, 0, 1], dtype=torch.bool)[cluster]  # A ahead on 8 of 10
    a = torch.where(a_wins, labels, (labels + 1) % 4)
    b = torch.where(a_wins, (labels + 1) % 4, labels)
    rows = signflip_p(a, b, labels, metric="top1", num_classes=4, resamples=4000, seed=0)
    whole = signflip_p(a, b, labels, metric="top1", num_classes=4, resamples=4000, seed=0, clusters=cluster)
    assert rows < 0.001 and whole == pytest.approx(2 * 56 / 1024, abs=0.03)  # P(|wins − 5| ≥ 3) = 112/1024
