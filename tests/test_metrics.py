"""The metrics probe and fine-tune are scored by: hand-made scores, scikit-learn parity, the declared metric, the
intervals of all three."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sslprobe.probing.metrics import (
    class_imbalance,
    classification_metrics,
    scored,
    selection_score,
    selection_scores,
)


def hand_case():
    # 3 classes, 6 rows; predictions (argmax): 0, 1, 1, 2, 2, 0
    scores = torch.tensor([
        [0.9, 0.05, 0.05],   # y=0 ✓
        [0.2, 0.7, 0.1],     # y=0 ✗ (second choice 0)
        [0.1, 0.8, 0.1],     # y=1 ✓
        [0.1, 0.3, 0.6],     # y=1 ✗ (second choice 1)
        [0.0, 0.1, 0.9],     # y=2 ✓
        [0.5, 0.2, 0.3],     # y=2 ✗ (second choice 2)
    ])
    return scores, torch.tensor([0, 0, 1, 1, 2, 2])


def test_metrics_by_hand():
    scores, labels = hand_case()
    m = classification_metrics(scores, labels, num_classes=3)
    assert m["n"] == 6 and m["top1"] == pytest.approx(0.5)
    assert m["top5"] == pytest.approx(1.0)  # top-min(5, K) = top-3 always hits
    assert m["confusion"] == [[1, 1, 0], [0, 1, 1], [1, 0, 1]]
    assert m["balanced_accuracy"] == pytest.approx(0.5)
    # every class: precision 1/2, recall 1/2 → F1 1/2
    assert m["macro_f1"] == pytest.approx(0.5)
    assert m["per_class"][1] == {"class": 1, "precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_top5_and_imbalance_against_sklearn():
    from sklearn.metrics import (
        balanced_accuracy_score,
        confusion_matrix,
        f1_score,
        top_k_accuracy_score,
    )

    g = torch.Generator().manual_seed(0)
    K = 8
    labels = torch.cat([torch.zeros(40, dtype=torch.long), torch.randint(1, K - 1, (60,), generator=g)])
    scores = torch.randn(100, K, generator=g) + 2.0 * torch.nn.functional.one_hot(labels, K)
    m = classification_metrics(scores, labels, num_classes=K)
    y, s = labels.numpy(), scores.numpy()
    pred = s.argmax(1)
    assert m["top1"] == pytest.approx((pred == y).mean())
    assert m["top5"] == pytest.approx(top_k_accuracy_score(y, s, k=5, labels=np.arange(K)))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["confusion"] == confusion_matrix(y, pred, labels=np.arange(K)).tolist()
    assert sum(c["support"] for c in m["per_class"]) == 100 and m["per_class"][K - 1]["support"] == 0


def test_metrics_with_impossible_class():
    """-inf marks classes the model never saw; their rows are simply wrong."""
    scores = torch.tensor([[2.0, 1.0, -math.inf], [0.0, 3.0, -math.inf], [1.0, 0.0, -math.inf]])
    m = classification_metrics(scores, torch.tensor([0, 1, 2]), num_classes=3)
    assert m["top1"] == pytest.approx(2 / 3) and m["top5"] == pytest.approx(2 / 3)
    assert m["per_class"][2]["recall"] == 0.0
    assert m["balanced_accuracy"] == pytest.approx(2 / 3)


def test_metrics_two_classes_top5_is_top2():
    m = classification_metrics(torch.tensor([[0.0, 1.0], [1.0, 0.0]]), torch.tensor([0, 0]), num_classes=2)
    assert m["top1"] == 0.5 and m["top5"] == 1.0


@pytest.mark.parametrize("scores,labels", [
    (torch.zeros(3, 2), torch.tensor([0, 1, 0])),     # wrong K
    (torch.zeros(3, 3), torch.tensor([0, 1])),        # wrong N
    (torch.zeros(2, 3), torch.tensor([0, 3])),        # label out of range
    (torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)),
])
def test_metrics_reject_bad_shapes(scores, labels):
    with pytest.raises(ValueError):
        classification_metrics(scores, labels, num_classes=3)


def test_selection_score_balanced_is_mean_recall():
    y = torch.tensor([0] * 8 + [1] * 2)
    pred = torch.zeros(10, dtype=torch.long)  # majority class always
    assert selection_score(pred, y, metric="top1", num_classes=2) == pytest.approx(0.8)
    assert selection_score(pred, y, metric="balanced", num_classes=2) == pytest.approx(0.5)


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_selection_scores_are_the_reported_metrics():
    """The three selection metrics equal classification_metrics' (scikit-learn's definitions), a class never
    predicted and a class never true included; an unknown metric is an error."""
    g = torch.Generator().manual_seed(1)
    K = 6
    labels = torch.cat([torch.zeros(50, dtype=torch.long), torch.randint(1, K - 1, (40,), generator=g)])
    pred = torch.where(torch.rand(90, generator=g) < 0.7, labels, torch.randint(K, (90,), generator=g))
    m = classification_metrics(torch.nn.functional.one_hot(pred, K).float(), labels, num_classes=K)
    got = selection_scores(pred, labels, num_classes=K)
    assert got == pytest.approx({"balanced": m["balanced_accuracy"], "top1": m["top1"], "macro-f1": m["macro_f1"]})
    for metric, value in got.items():
        assert selection_score(pred, labels, metric=metric, num_classes=K) == value
    with pytest.raises(ValueError, match="unknown metric 'f1'"):
        selection_score(pred, labels, metric="f1", num_classes=K)


def test_majority_guessing_scores_low_in_balanced_and_macro_f1():
    """The imbalanced set's lesson: top-1 rewards predicting the majority class, the other two do not."""
    y = torch.tensor([0] * 8 + [1] * 2)
    s = selection_scores(torch.zeros(10, dtype=torch.long), y, num_classes=2)
    assert s == pytest.approx({"top1": 0.8, "balanced": 0.5, "macro-f1": (2 * 8 / 18) / 2})


def test_class_imbalance_is_largest_over_smallest_present_class():
    assert class_imbalance(torch.tensor([0, 0, 0, 2])) == 3.0
    assert class_imbalance(torch.tensor([1, 1, 0, 0])) == 1.0


def test_metrics_carry_an_interval_for_each_of_the_three():
    g = torch.Generator().manual_seed(3)
    labels = torch.cat([torch.zeros(300, dtype=torch.long), torch.randint(1, 4, (200,), generator=g)])
    pred = torch.where(torch.rand(500, generator=g) < 0.75, labels, torch.randint(4, (500,), generator=g))
    m = scored(torch.nn.functional.one_hot(pred, 4).float(), labels, num_classes=4, seed=0)
    assert (m.ci.level, m.ci.resamples) == (0.95, 1000)
    for key in ("balanced_accuracy", "top1", "macro_f1"):
        lo, hi = m.interval(key)
        assert lo < m.value(key) < hi and hi - lo < 0.15, key
    p = m.top1  # the top-1 interval has the binomial width
    assert m.ci.top1[1] - m.ci.top1[0] == pytest.approx(2 * 1.96 * math.sqrt(p * (1 - p) / 500), rel=0.15)
    assert scored(torch.nn.functional.one_hot(pred, 4).float(), labels, num_classes=4, seed=0).ci == m.ci  # seeded
    assert m.summary().ci == m.ci and set(m.to_json()["ci"]) >= {"balanced_accuracy", "top1", "macro_f1"}
