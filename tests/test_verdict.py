"""The study's declared question and what the report says beside the verdict (study/verdict.py)."""
from __future__ import annotations

import pytest
import torch

from sslprobe.errors import SSLProbeError
from sslprobe.probing.pairs import paired_tests
from sslprobe.results import ClassRow, Metrics, ProbeResult
from sslprobe.study import verdict
from sslprobe.study.plan import ARMS


def _metrics(value: float, *, ci: float = 0.05, support=(50, 50, 50, 50)) -> Metrics:
    rows = [ClassRow(cls=i, precision=0, recall=0, f1=0, support=s) for i, s in enumerate(support)]
    return Metrics.from_json({"top1": value, "top5": 1.0, "balanced_accuracy": value, "macro_f1": value,
                              "n": sum(support), "per_class": [r.to_json() for r in rows],
                              "ci": {"top1": [value - ci, value + ci], "balanced_accuracy": [value - ci, value + ci],
                                     "level": 0.95, "resamples": 1000, "method": "test"}})


def _row(val: float, test: float, **kw) -> ProbeResult:
    return ProbeResult(C=1.0, val=_metrics(val), test=_metrics(test), classes=list("abcd"), **kw)


def test_primary_is_the_best_of_each_kind_on_validation_never_test():
    """Validation says byol-imagenet and random are the best of their kinds; test would say byol and pixels."""
    rows = [("pixels", _row(0.60, 0.90)), ("random", _row(0.70, 0.50)), ("byol", _row(0.50, 0.95)),
            ("byol-imagenet", _row(0.80, 0.40))]
    arms = [ARMS[n] for n, _ in rows]
    assert verdict.primary_pair(rows, arms, metric="balanced") == ("byol-imagenet", "random")
    assert verdict.primary_pair(rows, arms, metric="balanced", declared=("pixels", "byol")) == ("pixels", "byol")
    with pytest.raises(SSLProbeError, match="--primary names imagenet"):
        verdict.primary_pair(rows, arms, metric="balanced", declared=("imagenet", "byol"))
    assert verdict.primary_pair(rows[:2], arms[:2], metric="balanced") is None  # no self-supervised arm


def test_chance_levels_per_metric():
    m = _metrics(0.5, support=(60, 20, 20))
    assert verdict.chance(m, "balanced") == pytest.approx(1 / 3)
    assert verdict.chance(m, "top1") == pytest.approx(0.6)
    expected = sum(2 * p / 3 / (p + 1 / 3) for p in (0.6, 0.2, 0.2)) / 3
    assert verdict.chance(m, "macro-f1") == pytest.approx(expected)


def test_cautions_name_near_chance_arms():
    rows = [("random", _row(0.3, 0.28)), ("byol", _row(0.6, 0.62))]
    notes = verdict.cautions(rows, metric="balanced")
    assert any(n.startswith("random is near chance") for n in notes)
    assert not any(n.startswith("byol is near chance") for n in notes)


def test_a_short_byol_run_is_said_in_words():
    text = verdict.budget_sentence("byol", steps=24, batch=256, pool=1680, images_per_second=18.0)
    assert "3.7 epochs (24 steps of 256 on 1,680 images)" in text and "300–1,000 epochs" in text
    assert "7.8 h" in text  # 300 epochs × 1,680 images at 18 images/s
    assert verdict.budget_sentence("byol", steps=2000, batch=256, pool=1680, images_per_second=None) is None


def test_the_headline_says_one_seed_and_the_detectable_difference():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(4, (500,), generator=g)
    rows = []
    for name, acc in (("pixels", 0.8), ("byol", 0.8)):
        pred = torch.where(torch.rand(500, generator=g) < acc, labels, (labels + 1) % 4)
        m = Metrics(top1=0, top5=0, balanced_accuracy=0, macro_f1=0, n=500, predictions=pred.tolist())
        rows.append((name, ProbeResult(C=1.0, val=m, test=m, classes=list("abcd"), test_labels=labels.tolist())))
    pairs = paired_tests(rows, metric="balanced", primary=("byol", "pixels"), resamples=2000)
    text = verdict.headline(pairs)
    assert text.startswith("Primary question: byol and pixels are not distinguishable") or "beats" in text
    assert "One seed" in text and "One seed" not in verdict.headline(pairs, repeats=3)
    mde = verdict.detectable_sentence(pairs)
    assert mde.startswith("With 500 test images, differences under about") and "80 % power" in mde
    assert 3 < float(mde.split("about ")[1].split(" points")[0]) < 12  # ≈ 2.8 × the SE of a 500-row difference
