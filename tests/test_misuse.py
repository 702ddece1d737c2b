"""Command-line misuse: every wrong invocation exits 2 with one `error:` line and no traceback.

One table across pretrain, extract, probe, compare, predict, cache and demo: missing arguments,
bad paths, wrong types, nonsense sizes, mutually exclusive flags. Each case fails before any
real work starts, so the whole table runs in seconds.
"""
from __future__ import annotations

import sys

import pytest
import torch
from safetensors.torch import save_file

from sslprobe.cli import main
from tests.corpus import user_lines

PT = ["--out", "{tmp}/r", "--model", "test_resnet", "--image-size", "16", "--max-steps", "1", "--workers", "0"]
EX = ["--out", "{tmp}/f", "--workers", "0", "--cache-dir", "{tmp}/cache"]

CASES = [  # (id, argv, text the error line must contain)
    # pretrain
    ("pretrain-missing-data", ["pretrain", "--out", "{tmp}/r"], "missing argument"),
    ("pretrain-missing-out", ["pretrain", "{data}"], "--out"),
    ("pretrain-data-missing", ["pretrain", "{missing}", "--out", "{tmp}/r"], "does not exist"),
    ("pretrain-data-empty", ["pretrain", "{empty}", "--out", "{tmp}/r"], "no images found"),
    ("pretrain-data-is-file", ["pretrain", "{file}", *PT], "is a file, not a folder"),
    ("pretrain-unknown-model", ["pretrain", "{data}", *PT, "--model", "no_such_model"], "unknown model"),
    ("pretrain-batch-size-0", ["pretrain", "{data}", *PT, "--batch-size", "0"], "--batch-size"),
    ("pretrain-batch-size-text", ["pretrain", "{data}", *PT, "--batch-size", "abc"], "--batch-size"),
    ("pretrain-image-size-neg", ["pretrain", "{data}", *PT, "--image-size", "-1"], "--image-size"),
    ("pretrain-image-size-float", ["pretrain", "{data}", *PT, "--image-size", "1.5"], "--image-size"),
    ("pretrain-epochs-neg", ["pretrain", "{data}", *PT, "--epochs", "-3"], "--epochs"),
    ("pretrain-epochs-text", ["pretrain", "{data}", "--out", "{tmp}/r", "--epochs", "many"], "--epochs"),
    ("pretrain-max-steps-0", ["pretrain", "{data}", *PT, "--max-steps", "0"], "--max-steps"),
    ("pretrain-lr-neg", ["pretrain", "{data}", *PT, "--lr", "-1"], "--lr"),
    ("pretrain-lr-0", ["pretrain", "{data}", *PT, "--lr", "0"], "--lr"),
    ("pretrain-warmup-neg", ["pretrain", "{data}", *PT, "--warmup-epochs", "-1"], "--warmup-epochs"),
    ("pretrain-tau-1.5", ["pretrain", "{data}", *PT, "--tau-base", "1.5"], "--tau-base"),
    ("pretrain-optimizer", ["pretrain", "{data}", *PT, "--optimizer", "adam"], "optimizer"),
    ("pretrain-proj-hidden-0", ["pretrain", "{data}", *PT, "--proj-hidden", "0"], "--proj-hidden"),
    ("pretrain-device-tpu", ["pretrain", "{data}", *PT, "--device", "tpu"], "device"),
    ("pretrain-workers-neg", ["pretrain", "{data}", *PT, "--workers", "-1"], "--workers"),
    ("pretrain-out-is-file", ["pretrain", "{data}", *PT, "--out", "{file}"], "--out"),
    # extract
    ("extract-missing-out", ["extract", "{data}"], "--out"),
    ("extract-weights-not-safetensors", ["extract", "{data}", *EX, "--weights", "{notst}"], "safetensors"),
    ("extract-random-needs-model", ["extract", "{data}", *EX, "--weights", "random"], "--model"),
    ("extract-weights-missing", ["extract", "{data}", *EX, "--weights", "{tmp}/nope.safetensors"], "not found"),
    ("extract-weights-is-dir", ["extract", "{data}", *EX, "--weights", "{empty}"], "not found"),
    ("extract-pickle-without-flag", ["extract", "{data}", *EX, "--weights", "{pickle}", "--model", "test_resnet"],
     "--allow-pickle"),
    ("extract-unknown-model", ["extract", "{data}", *EX, "--model", "resnet999"], "unknown model"),
    # a study checks the model before its first arm, and names the closest names by spelling
    ("study-misspelt-model", ["study", "{data}", "--out", "{tmp}/s", "--model", "resnet181"], "closest: resnet18"),
    ("extract-image-size-0", ["extract", "{data}", *EX, "--model", "test_resnet", "--image-size", "0"], "--image-size"),
    ("extract-batch-size-neg", ["extract", "{data}", *EX, "--model", "test_resnet", "--batch-size", "-5"],
     "--batch-size"),
    ("extract-workers-neg", ["extract", "{data}", *EX, "--model", "test_resnet", "--workers", "-2"], "--workers"),
    ("extract-layer-nonsense", ["extract", "{data}", *EX, "--model", "test_resnet", "--layer", "banana"], "--layer"),
    ("extract-layer-out-of-range", ["extract", "{data}", *EX, "--model", "test_resnet", "--layer", "99"], "--layer"),
    ("extract-layers-nonsense", ["extract", "{data}", *EX, "--model", "test_resnet", "--layers", "2,banana"],
     "--layers"),
    ("extract-layers-out-of-range", ["extract", "{data}", *EX, "--model", "test_resnet", "--layers", "2,99"],
     "--layers 99 is out of range"),
    ("extract-layer-and-layers", ["extract", "{data}", *EX, "--model", "test_resnet", "--layer", "2", "--layers",
                                  "auto"], "give one of them"),
    ("extract-layers-of-pixels", ["extract", "{data}", *EX, "--weights", "pixels", "--layers", "auto"],
     "no layers to choose from"),
    ("extract-dtype", ["extract", "{data}", *EX, "--model", "test_resnet", "--dtype", "float8"], "--dtype"),
    ("extract-pool", ["extract", "{data}", *EX, "--model", "test_resnet", "--pool", "max"], "--pool"),
    ("extract-out-is-file", ["extract", "{data}", "--out", "{file}", "--weights", "pixels"], "--out"),
    ("extract-no-cache-with-cache-dir", ["extract", "{data}", *EX, "--weights", "pixels", "--no-cache"], "--no-cache"),
    # probe and compare
    ("probe-missing-train", ["probe"], "missing argument"),
    ("probe-train-missing", ["probe", "{tmp}/nothing"], "does not exist"),
    ("probe-not-features", ["probe", "{file}"], "neither a feature dir"),
    ("probe-one-class", ["probe", "{onefeat}"], "class"),
    ("probe-widths-differ", ["probe", "{feat}", "--test", "{widefeat}"], "width"),
    ("probe-C-0", ["probe", "{feat}", "--C", "0"], "--C"),
    ("probe-C-text", ["probe", "{feat}", "--C", "big"], "--C"),
    ("probe-fractions-2", ["probe", "{feat}", "--fractions", "2.0"], "fractions"),
    ("probe-fractions-text", ["probe", "{feat}", "--fractions", "abc"], "--fractions"),
    ("probe-shots-0", ["probe", "{feat}", "--shots", "0"], "shots"),
    ("probe-knn-k-0", ["probe", "{feat}", "--knn-k", "0"], "--knn-k"),
    ("probe-knn-t-neg", ["probe", "{feat}", "--knn-t", "-1"], "temperature"),
    ("probe-seeds-0", ["probe", "{feat}", "--seeds", "0"], "--seeds"),
    ("probe-search", ["probe", "{feat}", "--search", "random"], "--search"),
    ("probe-val-missing", ["probe", "{feat}", "--val", "{tmp}/nope"], "does not exist"),
    ("probe-out-is-file", ["probe", "{feat}", "--out", "{file}"], "--out"),
    ("probe-unknown-option", ["probe", "{feat}", "--frobnicate"], "no such option"),
    ("compare-not-name-eq-dir", ["compare", "byol"], "NAME=DIR"),
    ("compare-duplicate-name", ["compare", "a={feat}", "a={feat}"], "twice"),
    ("compare-nothing", ["compare"], "missing argument"),
    # predict, cache, demo, the app itself
    ("predict-missing-probe", ["predict", "{feat}", "--out", "{tmp}/p.csv"], "--probe"),
    ("predict-probe-missing", ["predict", "{feat}", "--probe", "{tmp}/nope", "--out", "{tmp}/p.csv"], "does not exist"),
    ("predict-probe-is-features", ["predict", "{feat}", "--probe", "{feat}", "--out", "{tmp}/p.csv"], "probe"),
    ("predict-out-is-dir", ["predict", "{feat}", "--probe", "{feat}", "--out", "{empty}"], "--out"),
    ("cache-clear-says-nothing", ["cache", "clear", "--cache-dir", "{tmp}/cache"], "--store"),
    ("cache-clear-store-escapes", ["cache", "clear", "--cache-dir", "{tmp}/cache", "--store", "../../x"], "store id"),
    ("cache-clear-all-and-store", ["cache", "clear", "--cache-dir", "{tmp}/cache", "--all", "--store", "abc"],
     "exactly one"),
    ("cache-clear-older-than-neg", ["cache", "clear", "--cache-dir", "{tmp}/cache", "--older-than", "-1"],
     "--older-than"),
    ("cache-dir-is-file", ["cache", "info", "--cache-dir", "{file}"], "--cache-dir"),
    ("cache-unknown-subcommand", ["cache", "frob"], "no such command"),
    ("demo-steps-0", ["demo", "--steps", "0"], "--steps"),
    ("unknown-command", ["frobnicate"], "no such command"),
]


@pytest.fixture
def places(tmp_path, class_folder):
    (tmp_path / "empty").mkdir()
    (tmp_path / "afile.png").write_bytes(b"not a folder")
    (tmp_path / "w.safetensors").write_text("not really")
    torch.save({"w": torch.zeros(1)}, tmp_path / "w.pt")
    save_file({"features": torch.randn(6, 4), "labels": torch.zeros(6, dtype=torch.long)},
              str(tmp_path / "one.safetensors"))
    save_file({"features": torch.randn(6, 4), "labels": torch.tensor([0, 1] * 3)}, str(tmp_path / "feat.safetensors"))
    save_file({"features": torch.randn(6, 5), "labels": torch.tensor([0, 1] * 3)}, str(tmp_path / "wide.safetensors"))
    return {"{missing}": tmp_path / "missing", "{empty}": tmp_path / "empty", "{data}": class_folder,
            "{file}": tmp_path / "afile.png", "{notst}": tmp_path / "w.safetensors", "{pickle}": tmp_path / "w.pt",
            "{onefeat}": tmp_path / "one.safetensors", "{feat}": tmp_path / "feat.safetensors",
            "{widefeat}": tmp_path / "wide.safetensors", "{tmp}": tmp_path}


def _fill(args: list[str], places: dict) -> list[str]:
    out = []
    for a in args:
        for k, v in places.items():
            a = a.replace(k, str(v))
        out.append(a)
    return out


def test_table_is_big_enough():
    assert len(CASES) >= 25 and len({c[0] for c in CASES}) == len(CASES)
    assert {c[1][0] for c in CASES} >= {"pretrain", "extract", "probe", "compare", "predict", "cache"}


@pytest.mark.parametrize("args, needle", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_misuse_exits_2_with_one_line(monkeypatch, capsys, places, args, needle):
    monkeypatch.setattr(sys, "argv", ["sslprobe", *_fill(args, places)])
    with pytest.raises(SystemExit) as e:
        main()
    out, err = capsys.readouterr()
    lines = user_lines(err)
    assert e.value.code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and needle.lower() in lines[0].lower(), lines[0]
    assert "Traceback" not in err + out
    assert not (places["{tmp}"] / "r" / "backbone.safetensors").exists()
