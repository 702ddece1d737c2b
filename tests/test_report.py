"""Metrics on hand-made scores, atomic JSON, and the rich renderers."""
from __future__ import annotations

import dataclasses
import io
import json
import math

import numpy as np
import pytest
import torch
from rich.console import Console

from sslprobe.fileio import write_json
from sslprobe.probing.report import (
    classification_metrics,
    render_comparison,
    render_probe,
    summary,
)
from sslprobe.results import FinetuneResult, PairedTest, ProbeResult


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


def test_write_json_atomic(tmp_path):
    target = tmp_path / "sub" / "report.json"
    write_json(target, {"a": 1, "t": (1, 2), "x": float("nan"), "v": torch.tensor([1.5]), "np": np.float32(2)})
    assert json.loads(target.read_text()) == {"a": 1, "t": [1, 2], "x": None, "v": [1.5], "np": 2.0}
    write_json(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 2}
    with pytest.raises(TypeError):
        write_json(target, {"bad": object()})
    assert json.loads(target.read_text()) == {"a": 2}  # the failed write left the old file intact
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.json"]  # no temp files


def fake_doc(test: bool = True, warnings=()) -> dict:
    """A probe's report.json, by hand (the keys of an older report: no selection, manifests, timing…)."""
    scores, labels = hand_case()
    m = classification_metrics(scores, labels, num_classes=3)
    knn_split = {"top1": 0.8, "top5": 1.0, "balanced_accuracy": 0.8, "macro_f1": 0.8, "n": 6}
    by_k = {str(k): {"val": knn_split, **({"test": knn_split} if test else {})} for k in (10, 20, 200)}
    r = {"C": 0.0316, "val": m, "knn": {"k": 20, "temperature": 0.07, "selected_by": "top1", **by_k["20"],
                                        "by_k": by_k},
         "val_curve": [{"C": 0.01, "top1": 0.4, "balanced_accuracy": 0.4, "loss": 1.0, "iters": 3, "converged": True,
                        "floor_limited": False}], "classes": ["a", "b", "c"], "n_train": 6,
         "dim": 4, "device": "cpu", "seconds": 0.12, "warnings": list(warnings),
         "inputs": {"train": "t", "val": None, "test": "x" if test else None}}
    if test:
        r["test"] = m
    return r


def fake_result(test: bool = True, warnings=()) -> ProbeResult:
    return ProbeResult.from_json(fake_doc(test, warnings))


def test_render_probe():
    buf = io.StringIO()
    render_probe(fake_result(warnings=["test: 3 rows of classes not in train (zebra) count as errors"]),
                 console=Console(file=buf, width=120), title="feats/train")
    text = buf.getvalue()
    for s in ("feats/train", "top-1", "50.00%", "C = 0.0316", "kNN", "80.00%", "zebra", "200"):
        assert s in text
    buf = io.StringIO()
    render_probe(fake_result(test=False), console=Console(file=buf, width=120))
    assert "test" not in buf.getvalue().split("kNN")[0]


def test_render_without_knn():
    r = dataclasses.replace(fake_result(), knn=None)
    buf = io.StringIO()
    render_probe(r, console=Console(file=buf, width=120))
    render_comparison([("pixels", r)], console=Console(file=buf, width=120))
    assert "kNN (" not in buf.getvalue() and "50.00%" in buf.getvalue()


def test_render_comparison():
    buf = io.StringIO()
    render_comparison([("random", fake_result()), ("byol", fake_result())], console=Console(file=buf, width=120))
    text = buf.getvalue()
    assert "random" in text and "byol" in text and "50.00%" in text and "80.00%" in text
    buf = io.StringIO()
    render_comparison([("pixels", fake_result(test=False))], console=Console(file=buf, width=120))
    assert "(val)" in buf.getvalue()


def test_render_comparison_takes_a_fine_tuned_row():
    doc = {k: v for k, v in fake_doc().items() if k not in ("C", "val_curve", "dim")}
    point = {"kind": "fraction", "value": 0.5, "n_train": 3, "seeds": 1}
    ft = FinetuneResult.from_json({**doc, "protocol": "finetune", "knn": None, "label_efficiency": {
        "scored_on": "test", "selection": "own hold-out",
        "points": [{**point, "finetune": {"mean": 0.9, "std": 0.0, "runs": [0.9]}, "lr": [0.1], "epoch": [2],
                    "rule": ["validation split"]}]}})
    probe = ProbeResult.from_json({**fake_doc(), "label_efficiency": {"scored_on": "test", "points": [
        {**point, "linear": {"mean": 0.7, "std": 0.0, "runs": [0.7]}, "C": [1.0], "C_rule": ["fixed"], "knn": None}]}})
    buf = io.StringIO()
    render_comparison([("probe", probe), ("finetune", ft)], console=Console(file=buf, width=160))
    text = buf.getvalue()
    assert "90.00%" in text and "70.00%" in text and "—" in text


def test_summary_drops_bulky_fields():
    r = fake_result()
    s = summary(r)
    assert "per_class" not in s["val"] and "confusion" not in s["test"]
    assert s["val"]["top1"] == r.val.top1 and s["val_curve"] == [p.to_json() for p in r.val_curve]
    assert r.val.per_class  # the input is not modified
    assert summary(r.to_json()) == s and "val_curve" not in summary(r, drop=("val_curve",))
    json.dumps(s, allow_nan=False)


def test_paired_table_and_verdict_respect_the_interval():
    from sslprobe.probing.report import verdict_sentence

    win = PairedTest(a="byol", b="random", paired=True, top1=0.031, top1_ci=(0.019, 0.043), balanced_accuracy=0.03,
                     balanced_accuracy_ci=(0.018, 0.042), mcnemar_p=1e-4, significant=True)
    tie = dataclasses.replace(win, b="imagenet", top1=0.004, top1_ci=(-0.006, 0.014), significant=False,
                              mcnemar_p=0.4)
    lose = dataclasses.replace(win, b="pixels", top1=-0.05, top1_ci=(-0.07, -0.03))
    unpaired = PairedTest(a="x", b="y", paired=False, reason="no test set on both sides")
    text = verdict_sentence([win, tie, lose, unpaired])
    assert "byol beats random by 3.1 points of test top-1 (95 % CI 1.9 to 4.3)" in text
    assert "byol and imagenet are not distinguishable on this test set" in text
    assert "pixels beats byol by 5.0 points of test top-1 (95 % CI 3.0 to 7.0)" in text
    r = dataclasses.replace(fake_result(), paired_tests=[win, tie])
    buf = io.StringIO()
    render_comparison([("byol", r), ("random", fake_result())], console=Console(file=buf, width=160))
    out = buf.getvalue()
    assert "within noise" in out and "byol better" in out and "+3.10 [+1.9, +4.3]" in out
