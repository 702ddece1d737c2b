"""`sslprobe study` end to end on generated images with tiny models: arms, reports, the guard, resume, bad input."""
import base64
import csv
import dataclasses
import hashlib
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from sslprobe.config.study import STUDY_ARMS, ByolRecipe
from sslprobe.errors import SSLProbeError
from sslprobe.study import plan, stages
from sslprobe.study.assignment import SplitRule, assign, guard
from sslprobe.study.numbers import CSV_COLUMNS
from sslprobe.study.run import StudyInterrupted, StudyResult, study
from sslprobe.study.sources import HashCache, hash_entries, open_sources
from tests.clirun import run
from tests.conftest import write_class_folder

TINY = {"model": "test_resnet", "image_size": 16, "steps": 4, "fractions": (0.5,), "shots": (1,), "seeds": 2,
        "knn_k": (5,), "workers": 0, "byol": ByolRecipe(batch_size=8, proj_hidden=32, proj_dim=16)}
ARMS = ("pixels", "random", "byol")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _data(root: Path) -> Path:
    d = write_class_folder(root, classes=("dark", "mid", "light"), per_class=12, size=(16, 16))
    (d / "mid" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")  # skipped and listed
    return d


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """One full study (pixels, random, BYOL), shared by the read-only tests below."""
    root = tmp_path_factory.mktemp("study")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SSLPROBE_CACHE_DIR", str(root / "cache"))
        result = study(_data(root / "data"), out=root / "out", arms=ARMS, **TINY)
    return root, result


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.links, self.text = [], [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a["src"])
        for key in ("href", "src"):
            if key in a and tag != "img":
                self.links.append(a[key])

    def handle_data(self, data):
        self.text.append(data)


def test_every_arm_runs_and_the_report_files_exist(done):
    root, r = done
    out = root / "out"
    assert [name for name, _ in r.rows] == list(ARMS)
    for f in ("report.html", "report.md", "results.csv", "study.json", "splits.json"):
        assert (out / f).is_file(), f
    assert r.verdict and "byol" in r.verdict
    doc = json.loads((out / "study.json").read_text())
    assert doc["verdict"] == r.verdict and [a["name"] for a in doc["arms"]] == list(ARMS)
    assert any(s["path"].endswith("mid/broken.png") for s in doc["skipped"])  # unreadable: skipped, listed
    assert "sslprobe pretrain" in "\n".join(doc["commands"]) and "sslprobe compare" in doc["commands"][-1]
    assert {"sslprobe", "torch", "timm", "python"} <= set(doc["versions"])
    assert r.to_json() == doc
    back = StudyResult.from_json(out / "study.json")  # the rows as study.json keeps them
    assert back.verdict == r.verdict and back.pairs == r.pairs and [n for n, _ in back.rows] == list(ARMS)
    assert [x.test.top1 for _, x in back.rows] == [x.test.top1 for _, x in r.rows] and back.out == out
    md = (out / "report.md").read_text()
    assert r.verdict in md and "## Commands" in md and "figures/label_efficiency.png" in md


def test_html_is_one_file_that_parses_and_embeds_its_images(done):
    root, r = done
    page = _Page()
    page.feed((root / "out" / "report.html").read_text())
    page.close()
    assert len(page.images) >= 5  # label curve, three confusion matrices, the BYOL loss curve
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:4] == b"\x89PNG"
    assert not page.links  # nothing outside the file: it opens offline
    text = " ".join(page.text)
    assert r.verdict in text and "Data and the leakage guard" in text and "Versions" in text


def test_results_csv_is_tidy(done):
    root, _ = done
    with open(root / "out" / "results.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == CSV_COLUMNS
        rows = list(reader)
    assert {r["arm"] for r in rows} == set(ARMS)
    assert {r["labels"] for r in rows} == {"all", "50 %", "1-shot"}
    assert {r["method"] for r in rows} == {"linear", "knn", "layer-choice"}
    doc = json.loads((root / "out" / "study.json").read_text())
    used = {a["name"]: a["layer"] for a in doc["arms"]}
    assert used["pixels"] is None and used["random"] and used["byol"]
    for arm in ARMS:  # every row names the layer its arm was read at; each candidate has its validation row
        assert {r["layer"] for r in rows if r["arm"] == arm and r["method"] != "layer-choice"} == {used[arm] or ""}
    choice = [r for r in rows if r["method"] == "layer-choice"]
    assert {r["arm"] for r in choice} == {"random", "byol"} and {r["split"] for r in choice} == {"val"}
    assert [r["layer"] for r in choice if r["arm"] == "random"] == ["stage2", "stage3", "pre-logits"]
    rows = [r for r in rows if r["method"] != "layer-choice"]
    # one input: every arm the same centre crop (test_resnet's 95 %); networks from random weights the small stem
    seen = {r["arm"]: r["input"] for r in rows}
    assert seen["pixels"] == "16 px, centre crop 95 %, bilinear"
    assert seen["random"] == seen["byol"] == "16 px, small 3×3 stem, centre crop 95 %, bilinear"
    for r in rows:
        v = float(r["value"])
        assert 0 <= v <= 1
        if r["ci_method"] == "bootstrap over test rows":
            assert float(r["ci_low"]) <= v <= float(r["ci_high"])
    top1 = [r for r in rows if r["labels"] == "all" and r["metric"] == "top1" and r["method"] == "linear"]
    assert len(top1) == 3 and all(r["split"] == "test" and r["ci_low"] for r in top1)
    full = [r["metric"] for r in rows if r["labels"] == "all" and r["method"] == "linear" and r["arm"] == ARMS[0]]
    assert full == ["balanced_accuracy", "top1", "macro_f1"]  # declared metric first; 2 classes: no top-5
    assert all(r["ci_low"] for r in rows if r["labels"] == "all" and r["metric"] != "top5")
    assert {r["metric"] for r in rows if r["labels"] != "all"} == {"balanced_accuracy"}  # the curves' metric


def test_each_network_arm_is_probed_at_the_layer_validation_chose(done):
    root, _ = done
    out = root / "out"
    doc = json.loads((out / "study.json").read_text())
    for arm in doc["arms"][1:]:  # random, byol: three candidates each, scored on validation
        choice = arm["layer_choice"]
        assert [c["layer"] for c in choice["candidates"]] == ["stage2", "stage3", "pre-logits"]
        best = max(choice["candidates"], key=lambda c: (c["val"], -c["val_loss"]))
        assert choice["layer"] == arm["layer"] == best["layer"] and choice["metric"] == "balanced"
        probed = json.loads((out / "arms" / arm["name"] / "features" / "train" / "manifest.json").read_text())
        assert probed["layer"] == arm["layer"] and probed["dim"] == best["dim"]
    assert "Layer of each arm (validation)" in (out / "report.md").read_text()


def test_the_layer_choice_reads_train_and_val_rows_only(class_folder, tmp_path, monkeypatch):
    from sslprobe.probing import layers

    real, seen = layers.score_layer, {}

    def rigged(layer, train, val, *, protocol):  # record what the choice reads; make validation favour stage2
        seen[layer] = set(train.paths) | set(val.paths)
        c = real(layer, train, val, protocol=protocol)
        return dataclasses.replace(c, val=1.0 if layer == "stage2" else 0.0)

    monkeypatch.setattr(layers, "score_layer", rigged)
    r = study(class_folder, out=tmp_path / "out", arms=("random",), **TINY)
    splits = json.loads((tmp_path / "out" / "splits.json").read_text())["splits"]
    labelled = tmp_path / "out" / "data" / "labelled"
    held = {p for p in seen["stage2"] if splits[_sha(labelled / p)] == "test"}
    assert set(seen) == {"stage2", "stage3", "pre-logits"} and seen["stage2"] and not held
    probed = json.loads((tmp_path / "out" / "arms" / "random" / "features" / "test" / "manifest.json").read_text())
    assert probed["layer"] == "stage2" and r.rows[0][1].dim == 48  # the probe ran on the chosen layer


def test_layers_last_probes_pre_logits_alone(class_folder, tmp_path):
    study(class_folder, out=tmp_path / "out", arms=("random",), layers="last", **TINY)
    doc = json.loads((tmp_path / "out" / "study.json").read_text())
    assert doc["arms"][0]["layer"] == "pre-logits" and doc["arms"][0]["layer_choice"] is None
    assert "Layer of each arm" not in (tmp_path / "out" / "report.md").read_text()
    assert not (tmp_path / "out" / "arms" / "random" / "extract" / "layers").exists()


def test_tables_lead_with_the_declared_metric(done):
    root, r = done
    md = (root / "out" / "report.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| arm | what |"))
    cells = [c.strip() for c in header.strip("|").split("|")]
    assert cells[2:6] == ["balanced acc % [95 % CI]", "top-1 %", "macro-F1 %", "kNN balanced acc %"]  # no top-5
    assert "balanced acc % (linear or fine-tuned)" in md
    assert all(x.label_efficiency.metric == "balanced" and x.metric == "balanced" for _, x in r.rows)


def test_split_is_keyed_by_content_and_the_pool_holds_no_val_or_test_image(done):
    root, _ = done
    out = root / "out"
    splits = json.loads((out / "splits.json").read_text())["splits"]
    images = [p for p in (root / "data").rglob("*.png") if p.name != "broken.png"]
    assert {_sha(p) for p in images} <= set(splits)
    held = {k for k, s in splits.items() if s != "train"}
    pool = [_sha(p) for p in (out / "data" / "pool").iterdir() if p.suffix == ".png"]
    assert pool and not held & set(pool)
    assert set(pool) == {k for k, s in splits.items() if s == "train"}
    test_rows = json.loads((out / "arms" / "byol" / "features" / "test" / "manifest.json").read_text())["paths"]
    broken = _sha(root / "data" / "mid" / "broken.png")  # drawn like any file; no arm can read it
    assert {_sha(out / "data" / "labelled" / p) for p in test_rows} == \
        {k for k, s in splits.items() if s == "test"} - {broken}


def test_rerun_recomputes_nothing_and_a_changed_option_only_what_it_feeds(done, tmp_path, monkeypatch):
    root, first = done
    out = tmp_path / "out"
    shutil.copytree(root / "out", out, symlinks=True)
    monkeypatch.setenv("SSLPROBE_CACHE_DIR", str(root / "cache"))
    calls = {"pretrain": 0, "extract": 0, "probe": 0}

    def counting(name):
        real = getattr(stages, name)

        def wrapper(*a, **k):
            calls[name] += 1
            return real(*a, **k)
        return wrapper

    for name in calls:
        monkeypatch.setattr(stages, name, counting(name))
    again = study(root / "data", out=out, arms=ARMS, **TINY)
    assert calls == {"pretrain": 0, "extract": 0, "probe": 0}
    assert again.verdict == first.verdict
    assert all(d.reused for a in again.arms for d in a.stages.values())
    study(root / "data", out=out, arms=ARMS, **{**TINY, "shots": ()})  # only the probe depends on the label curve
    assert calls == {"pretrain": 0, "extract": 0, "probe": 3}


def test_an_interrupted_study_resumes_where_it_stopped(class_folder, tmp_path, monkeypatch):
    real = stages.pretrain

    def stop_then_interrupt(*a, **k):
        real(*a, **{**k, "stop_at": 2})
        raise KeyboardInterrupt

    monkeypatch.setattr(stages, "pretrain", stop_then_interrupt)
    with pytest.raises(StudyInterrupted, match="arm 'byol' at pretrain.*run the same command again"):
        study(class_folder, out=tmp_path / "s", arms=("random", "byol"), **TINY)
    monkeypatch.setattr(stages, "pretrain", real)
    extracts = []
    monkeypatch.setattr(stages, "extract", lambda *a, **k: extracts.append(a[0].weights) or real_extract(*a, **k))
    r = study(class_folder, out=tmp_path / "s", arms=("random", "byol"), **TINY)
    assert [a.stages["probe"].reused for a in r.arms] == [True, False]
    assert r.arms[1].stages["pretrain"].info["resumed_from"] == 2  # continued from its checkpoint
    assert len(extracts) == 1 and extracts[0].endswith("backbone.safetensors")


def test_an_interrupted_fine_tune_arm_names_its_stage_and_one_way_on(class_folder, tmp_path, monkeypatch):
    """A finetune arm has no pretrain stage: Ctrl-C names 'finetune', and only the study's way to continue."""
    from sslprobe.finetuning import finetune as module

    def interrupt(*a, **k):
        raise KeyboardInterrupt("rerun with the same flags plus --resume")

    monkeypatch.setattr(module, "finetune", interrupt)
    with pytest.raises(StudyInterrupted) as e:
        study(class_folder, out=tmp_path / "s", arms=("finetune-random",), **TINY)
    assert "arm 'finetune-random' at finetune; run the same command again" in str(e.value)
    assert "--resume" not in str(e.value) and "pretrain" not in str(e.value)


real_extract = stages.extract


def _inputs(tmp_path):
    data = write_class_folder(tmp_path / "data", per_class=8, size=(8, 8))
    test = write_class_folder(tmp_path / "test", per_class=3, size=(8, 8), seed=1)
    pool = tmp_path / "pool"
    pool.mkdir()
    shutil.copy(test / "dark" / "000.png", data / "light" / "copy-of-a-test-image.png")  # planted, other class
    shutil.copy(test / "light" / "001.png", pool / "also-a-test-image.png")
    shutil.copy(data / "dark" / "002.png", pool / "a-train-image.png")
    shutil.copy(data / "dark" / "003.png", data / "light" / "dark-003-again.png")  # conflicting label
    sets = open_sources(str(data), labels=None, test=str(test), unlabeled=str(pool), image_column=None,
                        label_column=None)
    return hash_entries(sets, cache=HashCache(tmp_path / "hashes.json")), test


def test_leakage_guard_on_planted_duplicates(tmp_path):
    inputs, test = _inputs(tmp_path)
    splits = assign(inputs, rule=SplitRule(seed=0, test_fraction=0.2, val_fraction=0.25, fixed_test=True),
                    path=tmp_path / "splits.json")
    g = guard(inputs, splits)
    test_keys = {_sha(p) for p in test.rglob("*.png")}
    assert not test_keys & {e.key for e in g.pool}
    assert not test_keys & {e.key for e, s in g.labelled if s != "test"}
    kept = {(k["origin"], k["path"]): k["why"] for k in g.kept_out}
    assert kept.pop(("data", "light/copy-of-a-test-image.png")) == "the same bytes are a --test image"
    assert kept.pop(("unlabeled", "also-a-test-image.png")) == "the same bytes are a test image"
    assert all(why == "the same bytes are a val image" for why in kept.values())  # a-train-image, if drawn for val
    assert len(g.pool) == len({e.key for e, s in g.labelled if s == "train"})  # the pool's train copy counted once
    assert any(set(c["labels"]) == {"dark", "light"} for c in g.conflicts)
    assert len(g.duplicates) == 4
    again = assign(inputs, rule=splits.rule, path=tmp_path / "splits.json")
    assert again.of_key == splits.of_key and again.notes == ("reused splits.json",)


def test_drawn_split_keeps_duplicates_together(tmp_path):
    data = write_class_folder(tmp_path / "data", per_class=10, size=(8, 8))
    for i in range(10):
        shutil.copy(data / "dark" / f"{i:03d}.png", data / "dark" / f"dup-{i}.png")
    sets = open_sources(str(data), labels=None, test=None, unlabeled=None, image_column=None, label_column=None)
    inputs = hash_entries(sets, cache=HashCache(tmp_path / "h.json"))
    splits = assign(inputs, rule=SplitRule(seed=3, test_fraction=0.2, val_fraction=0.2, fixed_test=False),
                    path=tmp_path / "splits.json")
    g = guard(inputs, splits)
    assert splits.counts() == {"train": 12, "val": 4, "test": 4}  # per class: 2 test, 2 val, 6 train
    by_key = {}
    for e, s in g.labelled:
        by_key.setdefault(e.key, set()).add(s)
    assert all(len(v) == 1 for v in by_key.values()) and len(g.duplicates) == 10


def test_labels_csv_data_and_class_names_that_are_not_folder_names(tmp_path):
    src = write_class_folder(tmp_path / "src", classes=("a", "b"), per_class=10, size=(8, 8))
    rows = ["path,label"] + [f"{p.relative_to(src).as_posix()},{'T-shirt/top' if p.parent.name == 'a' else 'bag'}"
                             for p in sorted(src.rglob("*.png"))]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    r = study(src, out=tmp_path / "s", labels=tmp_path / "labels.csv", arms=("pixels",), **TINY)
    assert set(r.rows[0][1].classes) == {"T-shirt/top", "bag"}
    assert (tmp_path / "s" / "data" / "labelled" / "T-shirt_top").is_dir()


def test_finetune_arm_is_a_row_of_the_same_comparison(class_folder, tmp_path, monkeypatch):
    import sslprobe.finetuning.finetune as ft

    real = ft.finetune
    monkeypatch.setattr(ft, "finetune", lambda *a, **k: real(*a, **{**k, "epochs": 2, "batch_size": 8}))
    r = study(class_folder, out=tmp_path / "s", arms=("random", "finetune-random"), **{**TINY, "fractions": (),
                                                                                       "shots": ()})
    assert [name for name, _ in r.rows] == ["random", "finetune-random"]
    assert r.pairs and r.pairs[0].paired  # scored on the same test images
    lines = (tmp_path / "s" / "results.csv").read_text().splitlines()
    assert "finetune" in {row["method"] for row in csv.DictReader(lines)}


def test_arms_plan_and_notes_for_what_cannot_run(monkeypatch):
    assert tuple(plan.ARMS) == STUDY_ARMS
    assert plan.default_arms(cuda=False) == ("pixels", "random", "byol")
    assert "imagenet" in plan.default_arms(cuda=True)
    with pytest.raises(SSLProbeError, match="unknown arm 'byol2'"):
        plan.parse_arms(["byol2"])
    monkeypatch.setattr(plan, "_weights_cached", lambda model: False)
    monkeypatch.setattr(plan, "_hub_reachable", lambda: False)
    notes = {s.arm.name: s for s in plan.arm_statuses(plan.parse_arms(["random", "imagenet", "byol-imagenet"]),
                                                      model="test_resnet", image_size=None)}
    assert notes["random"].runnable and not notes["imagenet"].runnable
    assert "not in the local cache" in notes["imagenet"].note
    assert not notes["byol-imagenet"].runnable and "not in the local cache" in notes["byol-imagenet"].note


@pytest.mark.parametrize("make, needle", [
    (lambda d: write_class_folder(d, classes=("only",), per_class=6), "has one class"),
    (lambda d: _flat(d), "has no labels"),
])
def test_bad_data_is_one_line(tmp_path, make, needle):
    with pytest.raises(SSLProbeError, match=needle):
        study(make(tmp_path / "d"), out=tmp_path / "s", arms=("pixels",), **TINY)
    assert not (tmp_path / "s").exists()  # refused before --out was made


def test_test_folder_that_is_data_itself_is_refused(tmp_path):
    data = write_class_folder(tmp_path / "data", per_class=4, size=(8, 8))
    with pytest.raises(SSLProbeError, match="is DATA itself"):
        study(data, out=tmp_path / "s", test=tmp_path / "data" / ".", arms=("pixels",), **TINY)
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("names", [("train", "test"), ("Train", "TEST", "val")])
def test_a_folder_already_split_is_used_as_the_split_not_as_classes(tmp_path, names):
    for name in names:
        write_class_folder(tmp_path / "d" / name, classes=("cat", "dog"), per_class=6, size=(8, 8),
                           seed=len(name))
    result = study(tmp_path / "d", out=tmp_path / "s", arms=("pixels",), **TINY)
    row = dict(result.rows)["pixels"]
    assert sorted(row.classes) == ["cat", "dog"]
    test_dir = next(n for n in names if n.lower() == "test")
    doc = json.loads((tmp_path / "s" / "study.json").read_text())
    assert doc["data"]["test"]["source"] == str(tmp_path / "d" / test_dir) and doc["data"]["test"]["images"] == 12
    report = (tmp_path / "s" / "report.md").read_text()
    assert "holds train/ and test/" in report and ("val/ is not used" in report) == ("val" in names)


def _flat(d: Path) -> Path:
    write_class_folder(d / "x", per_class=3)
    for p in (d / "x").rglob("*.png"):
        p.rename(d / f"{p.parent.name}-{p.name}")
    return d


def test_test_folder_with_other_classes_and_bad_csvs(tmp_path):
    data = write_class_folder(tmp_path / "data", per_class=4, size=(8, 8))
    other = write_class_folder(tmp_path / "test", classes=("dark", "blue"), per_class=2, size=(8, 8))
    with pytest.raises(SSLProbeError, match="missing from the test set: light; only in the test set: blue"):
        study(data, out=tmp_path / "s", test=other, arms=("pixels",), **TINY)
    (tmp_path / "cols.csv").write_text("file,class\ndark/000.png,dark\n")
    with pytest.raises(SSLProbeError, match="exactly the columns path,label"):
        study(data, out=tmp_path / "s", labels=tmp_path / "cols.csv", arms=("pixels",), **TINY)
    (tmp_path / "gone.csv").write_text("path,label\ndark/000.png,dark\ndark/nope.png,dark\n")
    with pytest.raises(SSLProbeError, match="names 1 file.*not found.*dark/nope.png"):
        study(data, out=tmp_path / "s", labels=tmp_path / "gone.csv", arms=("pixels",), **TINY)


def test_cli_study_errors_are_one_line_exit_2(monkeypatch, capsys, tmp_path):
    data = write_class_folder(tmp_path / "data", classes=("only",), per_class=3, size=(8, 8))
    code, _, err = run(monkeypatch, capsys, "study", data, "--out", tmp_path / "s", "--arms", "pixels")
    assert code == 2 and err.count("\n") == 1 and "has one class" in err
    code, _, err = run(monkeypatch, capsys, "study", data, "--out", tmp_path / "s", "--arms", "byol2")
    assert code == 2 and "--arms must be one of" in err
    code, _, err = run(monkeypatch, capsys, "study", data, "--out", tmp_path / "s", "--epochs", "3", "--minutes", "2")
    assert code == 2 and "give one of them" in err
    code, _, err = run(monkeypatch, capsys, "study", data, "--out", tmp_path / "s", "--layers", "2,top")
    assert code == 2 and "--layers takes last, auto, or stage numbers" in err


def test_hugging_face_data_is_written_out_once(tmp_path):
    import datasets
    from PIL import Image

    rows = {"image": [Image.new("RGB", (8, 8), (30 + 200 * (i % 2), 5 * i, 20)) for i in range(24)],
            "label": [i % 2 for i in range(24)]}
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["red", "dim"])})
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(tmp_path / "hf"))
    r = study(tmp_path / "hf", out=tmp_path / "s", arms=("pixels",), **TINY)
    written = sorted((tmp_path / "s" / "data" / "labelled").rglob("*.png"))
    assert len(written) == 24 and written[0].read_bytes()[:4] == b"\x89PNG" and not written[0].is_symlink()
    assert set(r.rows[0][1].classes) == {"red", "dim"}


def test_repeats_rerun_every_seeded_stage_and_pool_the_intervals(class_folder, tmp_path, monkeypatch):
    """--repeats 3: three BYOL runs with seeds 0, 1, 2; each repeat's number beside the pooled one; the pooled
    interval (repeats and rows resampled) wider than a single repeat's."""
    monkeypatch.setenv("SSLPROBE_CACHE_DIR", str(tmp_path / "cache"))
    seeds = []
    real = stages.pretrain
    monkeypatch.setattr(stages, "pretrain", lambda c, **k: seeds.append(c.seed) or real(c, **k))
    r = study(class_folder, out=tmp_path / "s", arms=("random", "byol"), repeats=3, **TINY)
    assert sorted(seeds) == [0, 1, 2] and len({a.stages["pretrain"].dir for a in r.arms[1:]}) == 1
    byol = next(a for a in r.arms if a.status.arm.name == "byol")
    assert len(byol.repeats) == 2 and all(x.test is not None for x in byol.repeats)
    (pair,) = [p for p in r.pairs if p.paired]
    assert pair.repeats == 3 and pair.role == "primary" and {pair.a, pair.b} == {"byol", "random"}
    report = (tmp_path / "s" / "report.md").read_text()
    assert "## Repeats (3 seeds from 0)" in report and "One seed" not in r.verdict
    single = study(class_folder, out=tmp_path / "s", arms=("random", "byol"), **TINY)  # repeat 1's stages reused
    # the pooled spread counts the seeds too (strictly wider when they disagree: test_uncertainty's repeats test)
    assert pair.se >= single.pairs[0].se and single.pairs[0].repeats == 1 and "One seed" in single.verdict


def test_resplit_draws_a_split_per_repeat_and_nests_the_bootstrap(class_folder, tmp_path, monkeypatch):
    """--resplit: every repeat has its own splits-rN.json and test images; the arms still pair repeat by repeat,
    and the pooled numbers are each repeat's on its own test set."""
    monkeypatch.setenv("SSLPROBE_CACHE_DIR", str(tmp_path / "cache"))
    r = study(class_folder, out=tmp_path / "s", arms=("pixels", "random"), repeats=2, resplit=True, **TINY)
    first, second = (json.loads((tmp_path / "s" / f).read_text()) for f in ("splits.json", "splits-r2.json"))
    assert first != second and "splits-r2.json" in r.files
    pixels = next(a for a in r.arms if a.status.arm.name == "pixels")
    assert pixels.result.test_paths != pixels.repeats[0].test_paths  # a new test set, not a new seed alone
    (pair,) = r.pairs
    assert pair.paired and pair.repeats == 2
    report = (tmp_path / "s" / "report.md").read_text()
    assert "nested bootstrap" in report and "own validation/test split" in report
    with pytest.raises(SSLProbeError, match="--repeats 2 or more"):
        study(class_folder, out=tmp_path / "t", arms=("pixels",), repeats=1, resplit=True, **TINY)


def test_repeats_default_to_one_on_cpu_and_fit_three_into_a_gpu_budget(tmp_path):
    from sslprobe.config.study import StudyConfig
    from sslprobe.study.plan import StudyOptions

    c = StudyConfig(data=str(tmp_path), out=tmp_path / "s", minutes=30.0)
    assert StudyOptions.resolve(c, cuda=False).repeats == 1
    gpu = StudyOptions.resolve(c, cuda=True)
    assert gpu.repeats == 3 and gpu.budget.minutes == pytest.approx(10.0)  # the arm's 30 minutes, shared
    assert StudyOptions.resolve(c.replace(minutes=9.0), cuda=True).repeats == 1  # 3 min a repeat: too little
    given = StudyOptions.resolve(c.replace(repeats=2), cuda=True)
    assert given.repeats == 2 and given.budget.minutes == 30.0  # a given --repeats keeps --minutes per repeat


def test_every_byol_arm_of_a_study_gets_one_timing_and_one_step_count(class_folder, tmp_path, monkeypatch):
    """--minutes: byol and byol-imagenet share one timing folder and train the same steps (the timing used to
    be keyed by the start, so two noisy measurements gave two step counts)."""
    from types import SimpleNamespace

    from sslprobe.config.study import StudyConfig
    from sslprobe.study import stages
    from sslprobe.study.plan import ARMS, StudyOptions
    from sslprobe.study.progress import StudyProgress
    from sslprobe.study.run import _Study
    from sslprobe.timebudget import FittedSteps

    timings, runs = [], []

    def fit(minutes, *, workdir, measure):
        timings.append(workdir)  # a saved fit is reused by its folder; a second folder is a second, noisier timing
        return FittedSteps(minutes, 10 + len(set(timings)), 1.0, 0.0, 5)

    def fake_pretrain(config, **_):
        runs.append(config)
        return SimpleNamespace(complete=True, steps=config.max_steps, final_loss=0.0, skipped=0, resumed_from=None,
                               loss_curve=[], status="complete")

    monkeypatch.setattr(stages, "fitted_steps", fit)
    monkeypatch.setattr(stages, "pretrain", fake_pretrain)
    c = StudyConfig(data=str(class_folder), out=tmp_path / "s", arms=("byol", "byol-imagenet"), minutes=1.0,
                    model="test_resnet", image_size=16, workers=0)
    s = _Study(StudyOptions.resolve(c, cuda=False), device_type="cpu", show_progress=False, console=None)
    progress = StudyProgress(show=False, stages=1)
    ctx = s._context(s._prepare(progress), progress)
    for name in ("byol", "byol-imagenet"):
        stages.byol_backbone(ctx, ARMS[name], index=1, arms=2)
    assert len(set(timings)) == 1 and [r.max_steps for r in runs] == [11, 11]
    assert {r.init for r in runs} == {"random", "pretrained"}


def test_each_arm_says_what_it_will_cost_before_it_starts(tmp_path):
    from sslprobe.config.study import StudyConfig
    from sslprobe.study.plan import ARMS, StudyOptions
    from sslprobe.study.run import _Study

    c = StudyConfig(data=str(tmp_path), out=tmp_path / "s", minutes=6.0)
    s = _Study(StudyOptions.resolve(c, cuda=False), device_type="cpu", show_progress=False, console=None)
    assert s._expected(ARMS["pixels"], []) == ""  # nothing known yet: nothing promised
    byol = s._expected(ARMS["byol"], [20.0, 40.0])
    assert byol.startswith("about 6 min of BYOL") and "about 0.5 min to extract and probe" in byol
    assert "6 min of fine-tuning, label curve included" in s._expected(ARMS["finetune-random"], [30.0])


def test_imagenet_starts_see_the_same_crop_at_their_trained_resolution():
    """One input rule: an ImageNet start runs at its weights' resolution when the study's is smaller, never below
    the study's; random starts at the study's size."""
    from sslprobe.study.plan import input_size

    assert input_size(imagenet=True, model="resnet18", image_size=32) == 224
    assert input_size(imagenet=True, model="resnet18", image_size=288) == 288
    assert input_size(imagenet=False, model="resnet18", image_size=32) == 32
    assert input_size(imagenet=True, model="resnet18", image_size=None) is None  # the model's own: the trained one


def test_a_larger_imagenet_start_says_it_takes_longer(tmp_path):
    from sslprobe.config.study import StudyConfig
    from sslprobe.study.plan import ARMS, StudyOptions
    from sslprobe.study.run import _Study

    c = StudyConfig(data=str(tmp_path), out=tmp_path / "s", minutes=2.0, image_size=112)
    s = _Study(StudyOptions.resolve(c, cuda=False), device_type="cpu", show_progress=False, console=None)
    assert "at 224 px instead of 112: roughly 8 min" in s._expected(ARMS["byol-imagenet"], [])


def _shapes_class_folder(root: Path, *, classes=("dark", "light"), per_class: int = 10, seed: int = 0,
                         groups: int = 0) -> Path:
    """Class folders of 48-px pictures — a few random rectangles and ellipses on a background whose brightness
    depends on the class — with the edges a perceptual hash keys on (pure noise has none). ``groups``: each image
    in CLASS/gNN/ (for folder:1), round robin."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        for i in range(per_class):
            im = Image.new("RGB", (48, 48), (60 + 120 * c,) * 3)
            draw = ImageDraw.Draw(im)
            for _ in range(4):
                x0, y0 = rng.integers(0, 36, 2)
                x1, y1 = x0 + rng.integers(6, 20), y0 + rng.integers(6, 20)
                shape = draw.rectangle if rng.random() < 0.5 else draw.ellipse
                shape((int(x0), int(y0), int(x1), int(y1)), fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
            folder = root / name / (f"g{i % groups:02d}" if groups else "")
            folder.mkdir(parents=True, exist_ok=True)
            im.save(folder / f"{i:03d}.png")
    return root


def _jpeg_copy(src: Path, dst: Path, *, scale: float = 0.75, quality: int = 80) -> Path:
    from PIL import Image

    with Image.open(src) as im:
        im.convert("RGB").resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.LANCZOS) \
            .save(dst, "JPEG", quality=quality)
    return dst


def test_a_resized_jpeg_copy_of_a_test_image_is_reported_and_kept_out_of_pretraining(tmp_path):
    """--unlabeled holds a 0.75×, JPEG-80 copy of a test image (other bytes, same picture): the guard lists the
    pair with its thumbnail and the pool folder BYOL reads does not hold the copy; distinct images stay in."""
    data = _shapes_class_folder(tmp_path / "data", per_class=10)
    test = _shapes_class_folder(tmp_path / "test", per_class=4, seed=1)
    pool = tmp_path / "pool"
    pool.mkdir()
    copy = _jpeg_copy(test / "light" / "002.png", pool / "holiday-photo.jpg")
    _shapes_class_folder(tmp_path / "more", per_class=3, seed=2)
    for p in (tmp_path / "more").rglob("*.png"):
        shutil.copy(p, pool / f"{p.parent.name}-{p.name}")
    r = study(data, out=tmp_path / "s", test=test, unlabeled=pool, arms=("pixels", "byol"), **TINY)
    near = r.record["guard"]["near_copies"]
    assert [(n["held"], n["copy"], n["split"]) for n in near] == [("test:light/002.png", "unlabeled:holiday-photo.jpg",
                                                                    "test")]
    assert near[0]["bits"] <= 10 and near[0]["levels"] <= 4 and near[0]["kept_out_of"] == "the pretraining pool"
    pool_files = {_sha(p) for p in (tmp_path / "s" / "data" / "pool").iterdir() if not p.name.startswith(".")}
    assert _sha(copy) not in pool_files and len(pool_files) == 6 + 20 - 4  # 6 unlabeled, 20 DATA minus 4 val
    assert {_sha(p) for p in (tmp_path / "more").rglob("*.png")} <= pool_files
    md = (tmp_path / "s" / "report.md").read_text()
    assert "### Near copies of val and test images" in md and "figures/near-001.png" in md
    assert (tmp_path / "s" / "figures" / "near-001.png").read_bytes()[:4] == b"\x89PNG"
    hashes = json.loads((tmp_path / "s" / "hashes.json").read_text())
    assert _sha(copy) in hashes["fingerprints"] and hashes["fingerprint_version"] >= 1


def test_groups_keep_each_group_on_one_side_and_the_tests_resample_groups(tmp_path):
    """--groups folder:1 (DATA/CLASS/gNN/…): splits.json records each image's group, no group has images in two
    splits, and the paired test and the arms' intervals resample the test groups."""
    data = _shapes_class_folder(tmp_path / "data", per_class=24, groups=8)
    r = study(data, out=tmp_path / "s", groups="folder:1", arms=("pixels", "random"), **{**TINY, "shots": ()})
    doc = json.loads((tmp_path / "s" / "splits.json").read_text())
    sides: dict[str, set[str]] = {}
    for key, group in doc["groups"].items():
        sides.setdefault(group, set()).add(doc["splits"][key])
    assert len(sides) == 8 and all(len(s) == 1 for s in sides.values())
    assert doc["rule"]["groups"] == "folder:1" and {s for v in sides.values() for s in v} == {"train", "val", "test"}
    test_groups = sum(1 for v in sides.values() if v == {"test"})
    (pair,) = r.pairs
    assert pair.paired and pair.groups == test_groups
    assert all(f"{test_groups} test groups" in x.test.ci.method for _, x in r.rows)
    md = (tmp_path / "s" / "report.md").read_text()
    assert "no group is on two sides of the split" in md
    assert "| split | distinct images | labelled rows | groups |" in md
    with pytest.raises(SSLProbeError, match="folder:N"):
        study(data, out=tmp_path / "t", groups="folders:2", arms=("pixels",), **TINY)


def test_fingerprints_are_cached_by_content_and_a_rerun_decodes_nothing(tmp_path, monkeypatch):
    from sslprobe.study import sources

    inputs, _ = _inputs(tmp_path)
    assert all(e.fingerprint is not None for e in inputs.entries)
    doc = json.loads((tmp_path / "hashes.json").read_text())
    assert set(doc["fingerprints"]) == {e.key for e in inputs.entries}  # by content: a copy is one entry

    def no_decoding(source):
        raise AssertionError(f"decoded {source} again")

    monkeypatch.setattr(sources, "fingerprint", no_decoding)
    sets = open_sources(str(tmp_path / "data"), labels=None, test=str(tmp_path / "test"),
                        unlabeled=str(tmp_path / "pool"), image_column=None, label_column=None)
    again = hash_entries(sets, cache=HashCache(tmp_path / "hashes.json"), threads=2)
    assert [(e.key, e.fingerprint) for e in again.entries] == [(e.key, e.fingerprint) for e in inputs.entries]
def test_random_rescaled_calibrates_on_training_images_only(tmp_path, monkeypatch):
    """The labelled folder every arm embeds holds val and test too: the rescale picks from the train split alone."""
    import sslprobe.fairinit as fairinit

    seen, real = [], fairinit.calibration_batch
    monkeypatch.setattr(fairinit, "calibration_batch",
                        lambda ids, *a, **k: seen.append(list(ids)) or real(ids, *a, **k))
    out = tmp_path / "s"
    r = study(_data(tmp_path / "data"), out=out, arms=("random-rescaled",), **{**TINY, "fractions": (), "shots": ()})
    assert [name for name, _ in r.rows] == ["random-rescaled"]
    split = {s: {p.relative_to(out / "data" / "splits" / s).as_posix()
                 for p in (out / "data" / "splits" / s).rglob("*") if p.is_file() and not p.name.startswith(".")}
             for s in ("train", "val", "test")}
    assert len(seen) == 1 and set(seen[0]) == split["train"] and split["val"] and split["test"]
    assert not set(seen[0]) & (split["val"] | split["test"])
