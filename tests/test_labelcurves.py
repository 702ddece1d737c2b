"""labelcurves: the stratified subsets, the plan of points and draws, and their aggregation, whatever the learner."""
from __future__ import annotations

import pytest
import torch

from sslprobe.errors import SSLProbeError
from sslprobe.labelcurves import LabelPlan, class_ranks, draws, parse_points, run_curve, stats, stratified_sample


def test_fraction_sample_is_stratified_and_seeded():
    y = torch.tensor([0] * 100 + [1] * 40 + [2] * 3)
    rows = stratified_sample(y, fraction=0.1, seed=0)
    assert torch.bincount(y[rows], minlength=3).tolist() == [10, 4, 1]  # at least one per class
    assert torch.equal(rows, stratified_sample(y, fraction=0.1, seed=0))
    assert not torch.equal(rows, stratified_sample(y, fraction=0.1, seed=1))
    assert torch.equal(stratified_sample(y, fraction=1.0, seed=3), torch.arange(len(y)))


def test_shots_sample_caps_at_class_size():
    y = torch.tensor([0] * 10 + [1] * 2 + [2] * 7)
    rows = stratified_sample(y, shots=5, seed=0)
    assert torch.bincount(y[rows], minlength=3).tolist() == [5, 2, 5]
    assert rows.unique().numel() == rows.numel()
    with pytest.raises(ValueError):
        stratified_sample(y, seed=0)


def test_parse_points_validates():
    assert parse_points([1.0, 0.1], [5, 1]) == [("fraction", 0.1), ("fraction", 1.0), ("shots", 1), ("shots", 5)]
    for bad in ({"fractions": [0]}, {"fractions": [1.5]}, {"shots": [0]}, {"shots": [2.5]}):
        with pytest.raises(SSLProbeError):
            parse_points(**bad)


def test_class_ranks_group_by_class_in_a_seeded_order():
    y = torch.tensor([2, 0, 1, 0, 2, 2, 1])
    order, rank, counts = class_ranks(y, seed=4)
    assert y[order].tolist() == sorted(y.tolist()) and counts.tolist() == [2, 2, 3]
    assert rank.tolist() == [0, 1, 0, 1, 0, 1, 2]
    assert torch.equal(order, class_ranks(y, seed=4)[0])


def test_draws_are_seeded_per_draw_and_stop_after_a_whole_split():
    y = torch.tensor([0] * 30 + [1] * 10)
    got = list(draws(y, "fraction", 0.2, seeds=3, seed=5))
    assert [d.seed for d in got] == [5, 1005, 2005] and [d.name for d in got][1] == "fraction0.2-draw1"
    for d in got:
        assert torch.equal(d.rows, stratified_sample(y, fraction=0.2, seed=d.seed)) and not d.whole
    (whole,) = draws(y, "shots", 50, seeds=3, seed=5)
    assert whole.whole and whole.rows.numel() == 40
    with pytest.raises(SSLProbeError, match="fewer than 2 classes"):
        list(draws(torch.zeros(5, dtype=torch.long), "shots", 1, seeds=1, seed=0))


def test_run_curve_collects_each_points_results_and_can_be_stopped():
    y = torch.tensor([0, 1] * 20)
    plan = LabelPlan([("fraction", 0.5), ("fraction", 1.0), ("shots", 3)], seeds=2, seed=0)
    assert plan.n_draws == 5
    seen, ticks = [], []
    curve = run_curve(plan, labels=y, fit_and_score=lambda d: seen.append(d.name) or {"n": d.rows.numel()},
                      progress=lambda: ticks.append(1))
    assert seen == ["fraction0.5-draw0", "fraction0.5-draw1", "fraction1-draw0", "shots3-draw0", "shots3-draw1"]
    assert len(ticks) == 5 and [p.column("n") for p in curve] == [[20, 20], [40], [6, 6]]
    assert curve[2].row(x=1) == {"kind": "shots", "value": 3, "n_train": 6, "seeds": 2, "x": 1}
    assert run_curve(plan, labels=y, fit_and_score=lambda d: None if d.index == 1 else {}) is None
    with pytest.raises(SSLProbeError, match="--seeds"):
        run_curve(LabelPlan([("shots", 1)], seeds=0, seed=0), labels=y, fit_and_score=lambda d: {})


def test_stats_is_mean_and_sample_std():
    """The one std of every ± shown: the sample std (n − 1), 0 for one draw."""
    assert stats([0.5]) == {"mean": 0.5, "std": 0.0, "runs": [0.5]}
    assert stats([0.2, 0.4])["std"] == pytest.approx(0.1 * 2**0.5)
    assert stats([0.1, 0.2, 0.6])["std"] == pytest.approx(0.26457513, rel=1e-6)
