"""Saved probes: round trip through safetensors, CSV predictions, and bad probe files."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from sslprobe.errors import SSLProbeError
from sslprobe.probing.features import FeatureSet
from sslprobe.probing.predict import ProbeModel, predict
from sslprobe.probing.probe import probe


def blobs(n_per: int, k: int, d: int, seed: int = 0):
    g = np.random.default_rng(seed)
    centres = g.normal(size=(k, d)) * 4
    y = np.repeat(np.arange(k), n_per)
    return (centres[y] + g.normal(size=(len(y), d)) + 10).astype(np.float32), y


def test_saved_probe_reproduces_test_predictions(tmp_path):
    X, y = blobs(30, 3, 5)
    Xt, yt = blobs(10, 3, 5, seed=1)
    tr = FeatureSet.from_arrays(X, y, classes=["ant", "bee", "cat"])
    te = FeatureSet.from_arrays(Xt, yt, classes=["ant", "bee", "cat"], paths=[f"t/{i}.png" for i in range(30)])
    r = probe(tr, test=te, Cs=[0.01, 0.1, 1.0], knn_k=(), out=tmp_path / "rep")
    assert "probe.safetensors" in r.files.files
    model = ProbeModel.load(tmp_path / "rep")  # a directory finds probe.safetensors inside
    assert model.classes == ("ant", "bee", "cat") and r.C == model.C
    rows = predict(te, probe=tmp_path / "rep" / "probe.safetensors", out=tmp_path / "preds.csv")
    hits = sum(row["prediction"] == ["ant", "bee", "cat"][t] for row, t in zip(rows, yt))
    assert hits / len(yt) == pytest.approx(r.test.top1)
    with open(tmp_path / "preds.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [t["path"] for t in table] == [f"t/{i}.png" for i in range(30)]
    assert all(0 < float(t["probability"]) <= 1 for t in table) and table[0]["prediction"] in model.classes


def test_predict_unlabeled_bare_file_and_width_check(tmp_path):
    m = ProbeModel(torch.eye(2, 3), torch.zeros(2), torch.zeros(3), torch.ones(3), ("x", "y"), 1.0)
    m.save(tmp_path / "p.safetensors")
    save_file({"features": torch.tensor([[5.0, 0, 0], [0, 5.0, 0]])}, str(tmp_path / "f.safetensors"))
    rows = predict(tmp_path / "f.safetensors", probe=tmp_path / "p.safetensors")
    assert [r["path"] for r in rows] == ["0", "1"] and [r["prediction"] for r in rows] == ["x", "y"]
    assert rows[0]["probability"] == pytest.approx(1 / (1 + np.exp(-5)))
    save_file({"features": torch.zeros(2, 4)}, str(tmp_path / "wide.safetensors"))
    with pytest.raises(SSLProbeError, match="width 4 differs"):
        predict(tmp_path / "wide.safetensors", probe=tmp_path / "p.safetensors")


def test_bad_probe_files(tmp_path):
    with pytest.raises(SSLProbeError, match="not found"):
        ProbeModel.load(tmp_path / "none.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(SSLProbeError, match="cannot read"):
        ProbeModel.load(tmp_path / "junk.safetensors")
    save_file({"weight": torch.zeros(2, 3), "bias": torch.zeros(2), "mean": torch.zeros(3), "std": torch.ones(3)},
              str(tmp_path / "bad.safetensors"), metadata={"classes": json.dumps(["only-one"])})
    with pytest.raises(SSLProbeError, match="inconsistent"):
        ProbeModel.load(tmp_path / "bad.safetensors")


def test_csv_cells_never_become_spreadsheet_formulas(tmp_path):
    from sslprobe.fileio import csv_text
    from sslprobe.probing.report import write_per_class_csv
    from sslprobe.results import ClassRow, Metrics

    assert csv_text("=HYPERLINK(\"http://x\").png") == "'=HYPERLINK(\"http://x\").png"
    assert csv_text("@cmd.jpg") == "'@cmd.jpg"
    assert csv_text("cats/001.png") == "cats/001.png"
    metrics = Metrics(top1=1.0, top5=1.0, balanced_accuracy=1.0, macro_f1=1.0, n=3,
                      per_class=[ClassRow(cls=0, precision=1.0, recall=1.0, f1=1.0, support=3)])
    write_per_class_csv(metrics, ["=cmd|' /C calc'!A0"], tmp_path / "c.csv")
    assert (tmp_path / "c.csv").read_text().splitlines()[1].startswith("'=cmd")
