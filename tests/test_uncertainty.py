"""Bootstrap intervals, McNemar and paired differences between feature sets."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from sslprobe.probing.pairs import paired_tests
from sslprobe.probing.uncertainty import bootstrap_intervals, mcnemar_p, paired_difference
from sslprobe.results import Metrics, ProbeResult


def predictions(n: int, acc: float, k: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(k, (n,), generator=g)
    wrong = torch.rand(n, generator=g) > acc
    return torch.where(wrong, (labels + 1) % k, labels), labels


def test_interval_brackets_the_estimate_with_the_binomial_width():
    pred, labels = predictions(500, 0.8)
    ci = bootstrap_intervals(pred, labels, num_classes=4)
    p = float((pred == labels).double().mean())
    lo, hi = ci["top1"]
    assert lo < p < hi and ci["level"] == 0.95 and ci["resamples"] == 1000
    assert hi - lo == pytest.approx(2 * 1.96 * math.sqrt(p * (1 - p) / 500), rel=0.15)
    blo, bhi = ci["balanced_accuracy"]
    assert blo < hi and bhi > lo and bhi - blo > 0.02
    assert bootstrap_intervals(pred, labels, num_classes=4) == ci  # seeded


def test_mcnemar_exact_values():
    assert mcnemar_p(0, 0) == 1.0
    assert mcnemar_p(10, 0) == pytest.approx(2 * 0.5**10)
    assert mcnemar_p(3, 3) == pytest.approx(1.0)
    assert mcnemar_p(60, 40) == pytest.approx(0.0569, abs=2e-3)  # exact binomial, two-sided


def test_paired_difference_identical_and_clearly_better():
    pred, labels = predictions(400, 0.7)
    same = paired_difference(pred, pred, labels, num_classes=4)
    assert same["top1"] == 0 and same["top1_ci"] == [0.0, 0.0] and not same["significant"]
    better = labels.clone()  # perfect predictions vs 70 %
    d = paired_difference(better, pred, labels, num_classes=4)
    assert d["top1"] == pytest.approx(1 - float((pred == labels).double().mean()))
    assert d["significant"] and d["top1_ci"][0] > 0.2 and d["mcnemar_p"] < 1e-10 and d["b_only_correct"] == 0


def test_a_one_point_gap_on_500_images_is_noise():
    pred, labels = predictions(500, 0.80, seed=1)
    other = pred.clone()
    fix = ((pred != labels).nonzero().flatten())[:5]  # B fixes 5 of A's errors: +1 point
    other[fix] = labels[fix]
    d = paired_difference(other, pred, labels, num_classes=4)
    assert d["top1"] == pytest.approx(0.01)
    # paired, 5 discordant rows all one way: McNemar p = 2/32 = 0.0625, not significant at 5 %
    assert d["mcnemar_p"] == pytest.approx(0.0625)


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
    pairs = paired_tests([("A", a), ("B", b), ("moved", moved), ("short", short)])
    ab = pairs[0]
    assert (ab.a, ab.b, ab.paired) == ("A", "B", True) and ab.top1 < 0 and ab.significant
    reasons = {(p.a, p.b): p.reason for p in pairs if not p.paired}
    assert "row paths differ" in reasons[("A", "moved")] and "rows" in reasons[("A", "short")]
    # classes listed in another order still pair by name
    perm = ["d", "c", "b", "a"]
    inv = {c: i for i, c in enumerate(perm)}
    remapped = _result(torch.tensor([inv["abcd"[i]] for i in labels.tolist()]),
                       torch.tensor([inv["abcd"[i]] for i in labels.tolist()]), perm)
    (p,) = paired_tests([("A", dataclasses.replace(a, test_paths=None)), ("B", remapped)])
    assert p.paired and p.top1 == pytest.approx(ab.top1)
