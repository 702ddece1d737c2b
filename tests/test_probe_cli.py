"""probe / compare / predict through the command line: options, files written, one-line errors."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from tests.clirun import run


def write_feats(path, *, n_per=20, k=3, d=6, sep=4.0, seed=0, classes=("ant", "bee", "cat"), labels=True):
    g = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(size=(k, d)) * sep
    y = np.repeat(np.arange(k), n_per)
    x = centres[y] + g.normal(size=(len(y), d))
    path.mkdir(parents=True, exist_ok=True)
    tensors = {"features": torch.tensor(x, dtype=torch.float32)}
    if labels:
        tensors["labels"] = torch.tensor(y)
    save_file(tensors, str(path / "features.safetensors"))
    (path / "manifest.json").write_text(json.dumps({"classes": list(classes),
                                                    "paths": [f"img/{i}.png" for i in range(len(y))]}))
    return path


def test_probe_with_options_writes_reports(monkeypatch, capsys, tmp_path):
    tr, te = write_feats(tmp_path / "tr"), write_feats(tmp_path / "te", seed=1)
    code, out, err = run(monkeypatch, capsys, "probe", tr, "--test", te, "--search", "binary", "--fractions",
                         "0.25,1", "--shots", "2", "--seeds", "2", "--knn-k", "5,20", "--half-features",
                         "--chunk-rows", "16", "--out", tmp_path / "rep", "--json")
    assert code == 0, err
    r = json.loads(out)
    assert r["search"] == "binary" and r["feature_dtype"] == "float16" and r["chunk_rows"] == 16
    assert set(r["knn"]["by_k"]) == {"5", "20"} and len(r["label_efficiency"]["points"]) == 3
    assert "per_class" not in r["test"] and r["test"]["top1"] > 0.9
    assert (tmp_path / "rep" / "report.json").exists() and (tmp_path / "rep" / "probe.safetensors").exists()
    code, out, err = run(monkeypatch, capsys, "probe", tr, "--test", te, "--shots", "1,5", "--seeds", "2",
                         "--float64", "--knn-k", "none")
    assert code == 0, err
    assert "label efficiency" in out and "5-shot" in out and "±" in out and "kNN (" not in out


def test_compare_prints_one_table(monkeypatch, capsys, tmp_path):
    for name, sep in (("byol", 4.0), ("random", 0.2)):
        write_feats(tmp_path / name / "train", sep=sep)
        write_feats(tmp_path / name / "test", sep=sep, seed=1)
    code, out, err = run(monkeypatch, capsys, "compare", f"byol={tmp_path / 'byol'}", f"random={tmp_path / 'random'}",
                         "--shots", "2", "--seeds", "2", "--search", "binary", "--out", tmp_path / "cmp")
    assert code == 0, err
    assert "byol" in out and "random" in out and "2-shot" in out
    assert (tmp_path / "cmp" / "comparison.json").exists() and (tmp_path / "cmp" / "random" / "report.json").exists()
    code, out, err = run(monkeypatch, capsys, "compare", f"a={tmp_path / 'byol' / 'train'}", "--C", "1", "--json")
    assert code == 0, err
    assert json.loads(out)["a"]["C"] == 1.0


def test_predict_writes_csv(monkeypatch, capsys, tmp_path):
    tr = write_feats(tmp_path / "tr")
    new = write_feats(tmp_path / "new", seed=2, labels=False)
    code, _, err = run(monkeypatch, capsys, "probe", tr, "--C", "1", "--out", tmp_path / "rep", "--json")
    assert code == 0, err
    code, _, err = run(monkeypatch, capsys, "predict", new, "--probe", tmp_path / "rep" / "probe.safetensors",
                       "--out", tmp_path / "preds.csv")
    assert code == 0, err
    assert "60 rows classified" in err
    with open(tmp_path / "preds.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    truth = np.repeat(["ant", "bee", "cat"], 20)
    assert rows[0]["path"] == "img/0.png" and np.mean([r["prediction"] for r in rows] == truth) > 0.9


@pytest.mark.parametrize("args, needle", [
    (["probe", "{tr}", "--search", "random"], "--search"),
    (["probe", "{tr}", "--fractions", "0.1,abc"], "--fractions"),
    (["probe", "{tr}", "--fractions", "2"], "fractions"),
    (["probe", "{tr}", "--shots", "0"], "shots"),
    (["probe", "{tr}", "--seeds", "0"], "--seeds"),
    (["probe", "{tr}", "--knn-k", "0"], "--knn-k"),
    (["probe", "{tr}", "--chunk-rows", "0"], "--chunk-rows"),
    (["probe", "{tr}", "--test", "{nolab}"], "labels"),
    (["probe", "{nan}"], "NaN/inf"),
    (["probe", "{one}"], "at least 2 classes"),
    (["probe", "{tr}", "--test", "{wide}"], "widths differ"),
    (["compare", "nonsense"], "NAME=DIR"),
    (["compare", "a={tr}", "a={tr}"], "twice"),
    (["compare", "a={tmp}/missing"], "does not exist"),
    (["predict", "{tr}", "--probe", "{tmp}/none.safetensors", "--out", "{tmp}/p.csv"], "does not exist"),
    (["predict", "{wide}", "--probe", "{probe}", "--out", "{tmp}/p.csv"], "width"),
])
def test_misuse_exits_2_with_one_line(monkeypatch, capsys, tmp_path, args, needle):
    from sslprobe.probing.predict import ProbeModel

    subs = {"{tr}": write_feats(tmp_path / "tr"), "{tmp}": tmp_path,
            "{nolab}": write_feats(tmp_path / "nl", labels=False),
            "{wide}": write_feats(tmp_path / "wide", d=7), "{one}": tmp_path / "one.safetensors",
            "{nan}": tmp_path / "nan.safetensors", "{probe}": tmp_path / "p.safetensors"}
    save_file({"features": torch.randn(6, 4), "labels": torch.zeros(6, dtype=torch.long)}, str(subs["{one}"]))
    x = torch.randn(6, 4)
    x[2, 1] = float("nan")
    save_file({"features": x, "labels": torch.tensor([0, 1] * 3)}, str(subs["{nan}"]))
    ProbeModel(torch.zeros(2, 6), torch.zeros(2), torch.zeros(6), torch.ones(6), ("a", "b"), 1.0).save(subs["{probe}"])
    filled = []
    for a in args:
        for k, v in subs.items():
            a = a.replace(k, str(v))
        filled.append(a)
    code, _, err = run(monkeypatch, capsys, *filled)
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert needle in lines[0]


def test_unseen_test_class_warns_and_counts_as_error(monkeypatch, capsys, tmp_path):
    tr = write_feats(tmp_path / "tr", k=2, classes=("ant", "bee"))
    te = write_feats(tmp_path / "te", k=3, classes=("ant", "bee", "zebra"), seed=1)
    code, out, err = run(monkeypatch, capsys, "probe", tr, "--test", te, "--C", "1", "--json")
    assert code == 0, err
    r = json.loads(out)
    assert any("zebra" in w and "count as errors" in w for w in r["warnings"])
    assert r["test"]["top1"] <= 2 / 3 + 1e-9
