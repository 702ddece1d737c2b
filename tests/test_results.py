"""Typed results: report.json is a result's to_json(), from_json reads it back (old files too), bad files fail."""
from __future__ import annotations

import dataclasses
import json

import pytest

from sslprobe.probing.features import FeatureSet
from sslprobe.probing.probe import probe
from sslprobe.results import (
    FinetuneResult,
    Metrics,
    PairedTest,
    ProbeCurvePoint,
    ProbeResult,
    ResultFormatError,
    read_scored,
)
from tests.blobs import blobs, one_thread  # noqa: F401  (autouse fixture)

# A probe's report.json as the version before typed results wrote it (abridged: 2 classes, 4 test rows).
OLD_REPORT = {
    "C": 0.1,
    "val": {"top1": 0.75, "top5": 1.0, "balanced_accuracy": 0.75, "macro_f1": 0.73, "n": 4,
            "per_class": [{"class": 0, "precision": 1.0, "recall": 0.5, "f1": 0.67, "support": 2},
                          {"class": 1, "precision": 0.67, "recall": 1.0, "f1": 0.8, "support": 2}],
            "confusion": [[1, 1], [0, 2]],
            "ci": {"top1": [0.25, 1.0], "balanced_accuracy": [0.25, 1.0], "level": 0.95, "resamples": 1000,
                   "method": "percentile bootstrap over test rows"},
            "predictions": [0, 1, 1, 1]},
    "label_efficiency": {"scored_on": "test", "knn_k": 20, "points": [
        {"kind": "shots", "value": 1, "n_train": 2, "seeds": 2, "linear": {"mean": 0.5, "std": 0.0, "runs": [0.5, 0.5]},
         "C": [1.0, 1.0], "C_rule": ["default C=1 (a class has 1 label: nothing to cross-validate)"], "knn": None}],
        "C_selection": "each subset by stratified k-fold CV on its own labels"},
    "test": {"top1": 0.5, "top5": 1.0, "balanced_accuracy": 0.5, "macro_f1": 0.33, "n": 4,
             "ci": {"top1": [0.0, 1.0], "balanced_accuracy": [0.0, 1.0], "level": 0.95, "resamples": 1000,
                    "method": "percentile bootstrap over test rows"}, "predictions": [0, 0, 0, 1]},
    "refit_iters": 7,
    "knn": {"k": 20, "temperature": 0.07, "selected_by": "top1",
            "val": {"top1": 0.5, "top5": 1.0, "balanced_accuracy": 0.5, "macro_f1": 0.33, "n": 4},
            "by_k": {"20": {"val": {"top1": 0.5, "top5": 1.0, "balanced_accuracy": 0.5, "macro_f1": 0.33, "n": 4}}}},
    "val_curve": [{"C": 0.1, "top1": 0.75, "balanced_accuracy": 0.75, "loss": None, "iters": 5, "converged": True,
                   "floor_limited": False}],
    "search": "grid",
    "selection": {"metric": "top1", "reason": "asked", "imbalance": 1.0,
                  "tie_break": "lower validation loss, then smaller C"},
    "classes": ["a", "b"], "n_train": 12, "n_fit": 8, "n_val": 4, "dim": 3, "standardize": True,
    "val_source": "holdout 0.2 (seed 0)", "device": "cpu", "dtype": "float64", "feature_dtype": "float32",
    "chunk_rows": None, "seconds": 0.5, "timing": {"load": 0.1}, "warnings": [],
    "inputs": {"train": "feats/train", "val": None, "test": "feats/test"},
    "test_labels": [0, 0, 1, 1], "test_paths": None, "manifests": {},
    "files": {"dir": "reports/x", "files": ["report.json", "per_class_val.csv"], "note": None},
}


def test_a_probes_report_json_is_its_result(tmp_path):
    """probe() returns a ProbeResult; report.json holds exactly its to_json(), and reading it back gives it."""
    X, y = blobs(30, 3, 4)
    Xt, yt = blobs(10, 3, 4, seed=1)
    r = probe(FeatureSet.from_arrays(X, y), test=FeatureSet.from_arrays(Xt, yt), Cs=[0.1, 1.0], knn_k=(5,),
              fractions=(0.5,), seeds=2, out=tmp_path / "rep")
    assert isinstance(r, ProbeResult) and r.test is not None and r.knn is not None and r.label_efficiency
    text = (tmp_path / "rep" / "report.json").read_text()
    written = json.loads(text)
    assert r.to_json() == written and list(r.to_json()) == list(written)  # same keys, same order
    assert ProbeResult.from_json(r.to_json()) == r
    assert ProbeResult.from_json(tmp_path / "rep" / "report.json") == r
    assert json.dumps(ProbeResult.from_json(written).to_json(), indent=2) + "\n" == text  # byte for byte
    assert r.test.top1 == written["test"]["top1"] and r.test.interval("top1") == tuple(written["test"]["ci"]["top1"])
    assert r.val.per_class[0].cls == written["val"]["per_class"][0]["class"]
    assert isinstance(r.label_efficiency.points[0], ProbeCurvePoint) and r.label_efficiency.points[0].linear.runs


def test_a_report_written_before_the_types_reads_and_writes_back_unchanged():
    r = ProbeResult.from_json(OLD_REPORT)
    assert r.C == 0.1 and r.test.top1 == 0.5 and r.test.interval("top1") == (0.0, 1.0)
    assert r.knn.k == 20 and r.knn.by_k["20"].val.top1 == 0.5 and r.knn.test is None
    assert r.label_efficiency.points[0].headline.mean == 0.5 and r.label_efficiency.points[0].knn is None
    assert r.val_curve[0].loss is None and r.selection.metric == "top1" and r.files.note is None
    assert r.to_json() == OLD_REPORT and list(r.to_json()) == list(OLD_REPORT)
    assert read_scored(OLD_REPORT) == r and r.protocol == "linear" and r.headline_split == "test"


def test_a_report_from_before_metric_reads_as_top1():
    """Before --metric a curve said no metric (top-1), intervals had no macro-F1 and selection said why."""
    r = ProbeResult.from_json(OLD_REPORT)
    assert r.label_efficiency.metric is None and r.label_efficiency.scored_by == "top1" and r.metric == "top1"
    assert r.test.interval("macro_f1") is None and r.test.interval("top1") == (0.0, 1.0)
    assert r.selection.reason == "asked" and r.val_curve[0].macro_f1 is None
    X, y = blobs(30, 3, 4)
    new = probe(FeatureSet.from_arrays(X, y), Cs=[0.1, 1.0], knn_k=(), fractions=(0.5,), seeds=2).to_json()
    assert new["label_efficiency"]["metric"] == "balanced" and new["selection"]["metric"] == "balanced"
    assert "reason" not in new["selection"] and set(new["val"]["ci"]) >= {"balanced_accuracy", "top1", "macro_f1"}
    assert set(new["val_curve"][0]) >= {"balanced_accuracy", "top1", "macro_f1"}


def test_older_reports_without_later_keys_still_read():
    """Bookkeeping keys added over time (selection, timing, manifests, …) may be missing from an old file."""
    minimal = {"C": 1.0, "val": OLD_REPORT["val"], "classes": ["a", "b"], "n_train": 12}
    r = ProbeResult.from_json(minimal)
    assert r.test is None and r.knn is None and r.selection is None and r.val_curve == [] and r.manifests == {}
    assert r.headline_split == "val"


def test_a_missing_or_unknown_key_is_a_clear_error(tmp_path):
    with pytest.raises(ResultFormatError, match=r"missing key 'C' for ProbeResult"):
        ProbeResult.from_json({k: v for k, v in OLD_REPORT.items() if k != "C"})
    with pytest.raises(ResultFormatError, match=r"unexpected key 'surprise' for ProbeResult"):
        ProbeResult.from_json({**OLD_REPORT, "surprise": 1})
    bad_point = {**OLD_REPORT, "val_curve": [{"C": 0.1}]}
    with pytest.raises(ResultFormatError, match=r"val_curve\[0\]: missing key 'top1' for CPoint"):
        ProbeResult.from_json(bad_point)
    with pytest.raises(ResultFormatError, match=r"\.test: expected a JSON object"):
        ProbeResult.from_json({**OLD_REPORT, "test": [1, 2]})
    path = tmp_path / "report.json"
    path.write_text(json.dumps({**OLD_REPORT, "val": {**OLD_REPORT["val"], "extra": 1}}))
    with pytest.raises(ResultFormatError, match=rf"{path.name}\.val: unexpected key 'extra' for Metrics"):
        ProbeResult.from_json(path)
    path.write_text("{not json")
    with pytest.raises(ResultFormatError, match="cannot read ProbeResult"):
        ProbeResult.from_json(path)


def test_optional_keys_are_left_out_and_nulls_are_kept():
    m = Metrics(top1=0.5, top5=1.0, balanced_accuracy=0.5, macro_f1=0.4, n=2)
    assert m.to_json() == {"top1": 0.5, "top5": 1.0, "balanced_accuracy": 0.5, "macro_f1": 0.4, "n": 2}
    assert m.interval("top1") is None and Metrics.from_json(m.to_json()) == m
    r = ProbeResult(C=1.0, val=m)
    doc = r.to_json()
    assert "test" not in doc and "files" not in doc and "paired_tests" not in doc  # absent until there is one
    assert doc["knn"] is None and doc["chunk_rows"] is None and doc["test_labels"] is None  # always written
    unpaired = PairedTest(a="x", b="y", paired=False, reason="no test set on both sides")
    assert unpaired.to_json() == {"a": "x", "b": "y", "paired": False, "reason": "no test set on both sides"}
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.C = 2.0  # type: ignore[misc]


def test_a_fine_tunes_report_reads_as_its_type():
    doc = {k: v for k, v in OLD_REPORT.items() if k in ("val", "test", "knn", "classes", "n_train", "n_fit", "n_val",
                                                          "warnings", "test_labels", "test_paths", "files")}
    doc = {**doc, "knn": None, "protocol": "finetune", "status": "complete", "model": "resnet18",
           "chosen": {"run": "main", "lr": 0.1, "epoch": 3, "epochs": 5, "selected_by": "top1", "rule": "val"},
           "learning_curve": [{"epoch": 1, "step": 4, "train_loss": 1.0, "val_loss": None, "val_top1": None,
                               "val_balanced": None, "lr": 0.1, "seconds": 1.0}]}
    r = read_scored(doc)
    assert isinstance(r, FinetuneResult) and r.C is None and r.chosen.epoch == 3 and r.protocol == "finetune"
    assert r.learning_curve[0].val_loss is None
    assert FinetuneResult.from_json(r.to_json()) == r
