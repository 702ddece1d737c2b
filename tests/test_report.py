"""Atomic JSON and the rich renderers (the metrics themselves: test_metrics.py)."""
from __future__ import annotations

import dataclasses
import io
import json

import numpy as np
import pytest
import torch
from rich.console import Console

from sslprobe.fileio import write_json
from sslprobe.probing.metrics import classification_metrics
from sslprobe.probing.report import (
    render_comparison,
    render_probe,
    summary,
)
from sslprobe.results import FinetuneResult, PairedTest, ProbeResult
from tests.test_metrics import hand_case


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

    win = PairedTest(a="byol", b="random", paired=True, n=500, metric="balanced", role="primary", difference=0.031,
                     ci=(0.019, 0.043), level=0.95, p=1e-4, p_adjusted=1e-4, family=1, significant=True)
    tie = dataclasses.replace(win, b="imagenet", role="secondary", difference=0.004, ci=(-0.006, 0.014), p=0.2,
                              p_adjusted=0.4, family=2, level=0.975, significant=False)
    lose = dataclasses.replace(win, b="pixels", role="secondary", difference=-0.05, ci=(-0.07, -0.03), p=1e-3,
                               p_adjusted=2e-3, family=2, level=0.975)
    unpaired = PairedTest(a="x", b="y", paired=False, reason="no test set on both sides")
    text = verdict_sentence([win, tie, lose, unpaired])
    assert text.startswith("Primary question: byol beats random by 3.1 points of balanced accuracy "
                           "(95 % CI 1.9 to 4.3, p 0.0001)")
    assert "Of the 2 other comparisons (Holm-adjusted): pixels beats byol by 5.0 points of balanced accuracy " \
           "(97.5 % CI 3.0 to 7.0, p 0.002); the rest are within noise" in text
    r = dataclasses.replace(fake_result(), paired_tests=[win, tie])
    buf = io.StringIO()
    render_comparison([("byol", r), ("random", fake_result())], console=Console(file=buf, width=160))
    out = buf.getvalue()
    assert "within noise" in out and "byol better (primary)" in out and "+3.10 [+1.9, +4.3] (95 %)" in out
    assert "Holm-adjusted" in " ".join(out.split())  # the table's caption (wrapped to the console)
    assert "The other comparison: byol and imagenet are not distinguishable" in verdict_sentence([win, tie])


def test_tables_lead_with_the_declared_metric_and_fit_80_columns():
    sel = {"metric": "macro-f1", "imbalance": 3.0, "tie_break": "lower validation loss, then smaller C"}
    point = {"kind": "shots", "value": 5, "n_train": 15, "seeds": 3, "C": [1.0] * 3, "C_rule": ["fixed"], "knn": None,
             "linear": {"mean": 0.7, "std": 0.1, "runs": [0.6, 0.7, 0.8]}}
    r = ProbeResult.from_json({**fake_doc(), "selection": sel,
                               "label_efficiency": {"scored_on": "test", "metric": "macro-f1", "points": [point]}})
    buf = io.StringIO()
    render_probe(r, console=Console(file=buf, width=80))
    text = buf.getvalue()
    head = text.split("kNN")[0]
    assert head.index("macro-F1") < head.index("balanced acc") < head.index("top-1")
    assert "top-5" not in head  # 3 classes: top-5 is 100 % by construction, not shown
    flat = " ".join(text.split())
    assert "val macro-F1" in flat and "label efficiency (test macro-F1 %" in flat
    assert "chosen by validation macro-F1 (--metric; largest / smallest class 3:1)" in flat
    buf = io.StringIO()
    render_comparison([("random", r), ("byol", r)], console=Console(file=buf, width=80))
    text = buf.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "label efficiency (macro-F1 %, mean ± std)" in text and "70.00 ± 10.00" in text
    ci = {"top1": [0.45, 0.55], "balanced_accuracy": [0.44, 0.56], "macro_f1": [0.43, 0.57], "level": 0.95,
          "resamples": 1000, "method": "percentile bootstrap over test rows"}
    split = {**fake_doc()["val"], "ci": ci}
    r = ProbeResult.from_json({**fake_doc(), "selection": sel, "val": split, "test": split})
    buf = io.StringIO()
    render_comparison([("random", r), ("byol", r)], console=Console(file=buf, width=80))
    text = buf.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 80 and "…" not in text  # nothing cut at 80 columns
    header = text.split("random")[0].splitlines()

    def column(name):  # a header's horizontal position, whichever of its lines it is on
        return min(line.find(name) for line in header if name in line)

    assert column("macro-F1") < column("balanced") < column("top-1") < column("kNN")
    assert "43.0–57.0" in text and "44.0–56.0" in text and "45.0–55.0" in text  # each metric's interval


def test_top5_is_shown_from_ten_classes_on():
    few = ProbeResult.from_json(fake_doc())
    many = ProbeResult.from_json({**fake_doc(), "classes": [f"c{i}" for i in range(10)]})
    assert not few.shows_top5 and many.shows_top5
    for r, shown in ((few, False), (many, True)):
        buf = io.StringIO()
        render_probe(r, console=Console(file=buf, width=120))
        assert ("top-5" in buf.getvalue()) == shown
