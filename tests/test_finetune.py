"""sslprobe finetune: it learns what frozen random features miss, resumes exactly, exports a network timm loads that
predicts as the trained one did, refuses bad input in one line, and runs end to end from the command line."""
from __future__ import annotations

import csv
import json
import math
import re
import signal
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from sslprobe.backbone import adapt_small_stem, create_backbone, save_backbone
from sslprobe.errors import SSLProbeError
from sslprobe.finetuning.augment import TrainViews
from sslprobe.finetuning.data import decode_rows, hold_out, open_train
from sslprobe.finetuning.export import load_finetuned, predict_images
from sslprobe.finetuning.finetune import finetune
from sslprobe.finetuning.loop import FinetuneInterrupted
from sslprobe.finetuning.recipe import param_groups, resolve_recipe
from sslprobe.images.crops import crop_boxes
from sslprobe.probing.features import load_features
from sslprobe.probing.holdout import stratified_split
from sslprobe.probing.pairs import paired_tests
from sslprobe.results import FinetuneResult
from tests.clirun import run
from tests.conftest import write_class_folder

TINY = {"model": "test_resnet", "weights": "random", "image_size": 16, "batch_size": 8, "lr": 0.01,
        "warmup_epochs": 1, "workers": 0}


def write_shapes(root: Path, *, per_class: int, seed: int, size: int = 32) -> Path:
    """A bright plus or a bright hollow square at a random place on noise: frozen random features barely tell them
    apart (their pooled responses are nearly the same), a trained detector does."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(("plus", "square")):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            a = rng.normal(128, 40, (size, size, 3))
            y, x = rng.integers(5, size - 5, 2)
            if c == 0:
                a[y - 4:y + 5, x - 1:x + 2] = 255
                a[y - 1:y + 2, x - 4:x + 5] = 255
            else:
                a[y - 4:y + 5, x - 4:x + 5] = 255
                a[y - 2:y + 3, x - 2:x + 3] = 128
            Image.fromarray(a.clip(0, 255).astype(np.uint8)).save(root / name / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One probe of frozen random features and one fine-tune of the same network family on the shapes task."""
    from sslprobe.extraction.extract import extract
    from sslprobe.probing.probe import probe

    root = tmp_path_factory.mktemp("shapes")
    train, test = write_shapes(root / "train", per_class=80, seed=0), write_shapes(root / "test", per_class=40, seed=1)
    for name, folder in (("ftrain", train), ("ftest", test)):
        extract(folder, out=root / name, model="test_resnet", weights="random", image_size=32, workers=0,
                use_cache=False, show_progress=False)
    probed = probe(root / "ftrain", test=root / "ftest", knn_k=())
    tuned = finetune(train, out=root / "ft", test=test, model="test_resnet", image_size=32, epochs=8, batch_size=32,
                     lr=0.02, warmup_epochs=1, crop_scale=(0.5, 1.0), workers=0)
    return {"root": root, "train": train, "test": test, "probe": probed, "finetune": tuned}


def test_loss_falls_and_fine_tuning_beats_the_frozen_random_probe(shapes):
    r = shapes["finetune"]
    losses = [e.train_loss for e in r.learning_curve]
    assert r.status == "complete" and len(losses) == 8 and losses[-1] < 0.7 * losses[0]
    assert r.test.top1 >= 0.85 and r.test.top1 > shapes["probe"].test.top1 + 0.15
    assert r.chosen.epoch == max(r.learning_curve, key=lambda e: (e.val_top1, -e.val_loss)).epoch
    assert r.recipe["backbone"].startswith("1×") and r.test.ci.top1[0] <= r.test.top1


def test_the_hold_out_is_the_probes(shapes):
    """The same images validate: the probe's stratified split of the extracted rows, and the fine-tune's."""
    images = open_train(shapes["train"], image_column=None, label_column=None)
    spec = create_backbone("test_resnet", image_size=32)[1]
    rows = decode_rows(images, None, spec=spec, squares=False, workers=0, device=torch.device("cpu"),
                       show_progress=False, what="train")
    held = hold_out(rows, fraction=0.2, seed=0)
    fs = load_features(shapes["root"] / "ftrain")
    _, probe_val = stratified_split(fs.labels, fraction=0.2, seed=0)
    assert [images.ids[i] for i in rows.idx[held.val].tolist()] == [fs.paths[i] for i in probe_val.tolist()]
    assert shapes["finetune"].n_val == shapes["probe"].n_val == len(probe_val)


def test_the_export_loads_in_timm_and_predicts_as_the_trained_network(shapes):
    r, path = shapes["finetune"], shapes["root"] / "ft" / "model.safetensors"
    got = predict_images(shapes["test"], model=path, workers=0, out=shapes["root"] / "preds.csv")
    assert [row["prediction"] for row in got.rows] == [r.classes[p] for p in r.test.predictions]
    assert [row["path"] for row in got.rows] == r.test_paths and not got.skipped
    with open(shapes["root"] / "preds.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == len(got.rows)
    ft = load_finetuned(path.parent)
    assert ft.classes == ("plus", "square") and ft.info["epoch"] == r.chosen.epoch
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    plain = timm.create_model(json.loads(meta["model"]), num_classes=len(ft.classes))
    if json.loads(meta["small_stem"]):
        adapt_small_stem(plain)
    plain.load_state_dict(load_file(str(path)))
    x = torch.randn(3, 3, 32, 32)
    assert torch.allclose(plain.eval()(x), ft.net(x), atol=1e-5)
    again = create_backbone(weights=str(path))[0]  # extract --weights reads it as a backbone, head dropped
    assert again.num_features == ft.net.num_features


def test_report_files_and_the_paired_row_beside_the_probe(shapes):
    r, out = shapes["finetune"], shapes["root"] / "ft"
    assert {"report.json", "per_class_val.csv", "per_class_test.csv", "model.safetensors", "confusion.png",
            "learning_curve.png"} <= set(r.files.files)
    assert all((out / f).is_file() for f in r.files.files)
    saved = json.loads((out / "report.json").read_text())
    assert saved["chosen"] == r.chosen.to_json() and saved == r.to_json() and FinetuneResult.from_json(saved) == r
    (pair,) = paired_tests([("probe", shapes["probe"]), ("finetune", r)])
    assert pair.paired and pair.n == 80 and pair.difference < 0  # the probe (A) trails the fine-tune (B)


def _curve(r: dict) -> list[tuple]:
    return [(e.epoch, e.step, e.train_loss, e.val_loss, e.val_top1) for e in r.learning_curve]


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "model.safetensors"))


def test_resume_is_exact_after_a_stop_and_after_ctrl_c(class_folder, tmp_path, monkeypatch):
    backbone = tmp_path / "bb.safetensors"
    save_backbone(*create_backbone("test_resnet", image_size=16, init="train"), backbone)
    kw = {**TINY, "weights": str(backbone), "model": None, "epochs": 3, "save_every": "end"}
    straight = finetune(class_folder, out=tmp_path / "a", **kw)
    assert straight.recipe["backbone"].startswith("1×") and straight.schedule["total_steps"] == 6
    stopped = finetune(class_folder, out=tmp_path / "b", stop_after=3, **kw)
    assert stopped.status.startswith("stopped") and not (tmp_path / "b" / "model.safetensors").exists()
    with pytest.raises(SSLProbeError, match="unfinished fine-tune .*--resume"):
        finetune(class_folder, out=tmp_path / "b", **kw)
    with pytest.raises(SSLProbeError, match="configuration differs .*label_smoothing"):
        finetune(class_folder, out=tmp_path / "b", resume="yes", **{**kw, "label_smoothing": 0.0})
    resumed = finetune(class_folder, out=tmp_path / "b", resume="yes", **kw)
    assert resumed.resumed == ["main"] and _curve(resumed) == _curve(straight)
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    original = TrainViews.__call__

    def interrupt_at_step_4(self, x, aspect, step):
        if step == 3:
            signal.raise_signal(signal.SIGINT)  # the handler only marks it: the step finishes, then it saves
        return original(self, x, aspect, step)

    monkeypatch.setattr(TrainViews, "__call__", interrupt_at_step_4)
    with pytest.raises(FinetuneInterrupted, match="at step 4 of 6 .*--resume"):
        finetune(class_folder, out=tmp_path / "c", **kw)
    monkeypatch.setattr(TrainViews, "__call__", original)
    finetune(class_folder, out=tmp_path / "c", resume="auto", **kw)
    c = _weights(tmp_path / "c")
    assert all(torch.equal(a[k], c[k]) for k in a)


def test_rows_decoded_again_at_every_use_train_as_kept_rows_do(class_folder, tmp_path, monkeypatch):
    from sslprobe.finetuning import data

    kept = finetune(class_folder, out=tmp_path / "kept", epochs=2, **TINY)
    monkeypatch.setattr(data, "RAM_BYTES", 0)  # nothing fits: the workers decode every batch again
    streamed = finetune(class_folder, out=tmp_path / "streamed", epochs=2, **TINY)
    a, b = _weights(tmp_path / "kept"), _weights(tmp_path / "streamed")
    assert _curve(kept) == _curve(streamed) and all(torch.equal(a[k], b[k]) for k in a)


def test_a_finished_session_resumes_without_training(class_folder, tmp_path):
    first = finetune(class_folder, out=tmp_path / "o", epochs=1, **TINY)
    again = finetune(class_folder, out=tmp_path / "o", epochs=1, resume="yes", **TINY)
    assert again.timing["train"] < first.timing["train"] and again.val.top1 == first.val.top1


def _corrupt(folder: Path) -> None:
    (folder / "light" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")


@pytest.mark.parametrize("case, needle", [
    ("unlabelled", "has no labels; fine-tuning needs one subfolder per class"),
    ("one class", "has only the class 'dark'; fine-tuning needs at least 2 classes"),
    ("unknown test classes", "--test .* has classes TRAIN lacks \\(zebra\\)"),
    ("weights do not fit", "does not fit test_resnet"),
    ("pixels", "--weights pixels has no network to fine-tune"),
    ("two budgets", "--epochs and --minutes are both budgets"),
])
def test_bad_input_is_one_line_exit_2(case, needle, monkeypatch, capsys, tmp_path):
    train = write_class_folder(tmp_path / "train", per_class=4, size=(8, 8))
    args = ["finetune", train, "--model", "test_resnet", "--out", tmp_path / "o", "--workers", "0", "--epochs", "1"]
    if case == "unlabelled":
        flat = tmp_path / "flat"
        flat.mkdir()
        Image.new("RGB", (8, 8)).save(flat / "a.png")
        args[1] = flat
    elif case == "one class":
        args[1] = write_class_folder(tmp_path / "one", classes=("dark",), per_class=4, size=(8, 8))
    elif case == "unknown test classes":
        args += ["--test", write_class_folder(tmp_path / "t", classes=("dark", "zebra"), per_class=2, size=(8, 8))]
    elif case == "weights do not fit":
        save_file({"conv1.weight": torch.zeros(1, 1, 1, 1)}, str(tmp_path / "w.safetensors"))
        args += ["--weights", tmp_path / "w.safetensors"]
    elif case == "pixels":
        args += ["--weights", "pixels"]
    else:
        args += ["--minutes", "1"]
    code, out, err = run(monkeypatch, capsys, *args)
    assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
    assert re.search(needle, err), err


def test_cli_end_to_end_grid_curve_skipped_files_and_predict(monkeypatch, capsys, tmp_path):
    train = write_class_folder(tmp_path / "train", per_class=10, size=(16, 16))
    test = write_class_folder(tmp_path / "test", per_class=4, size=(16, 16), seed=3)
    _corrupt(train)
    code, out, err = run(monkeypatch, capsys, "finetune", train, "--test", test, "--model", "test_resnet",
                         "--image-size", "16", "--epochs", "2", "--batch-size", "8", "--lrs", "0.003,0.03",
                         "--shots", "3", "--seeds", "2", "--warmup-epochs", "0", "--workers", "0", "--out",
                         tmp_path / "o", "--metric", "macro-f1", "--json")
    assert code == 0, err
    r = FinetuneResult.from_json(json.loads(out))  # the summary: a report.json without the bulky parts
    assert [g["lr"] for g in r.lr_grid] == [0.003, 0.03]
    best = max(r.lr_grid, key=lambda g: (g["val_score"], -g["val_loss"], -g["lr"]))
    assert r.chosen.lr == best["lr"] and r.chosen.epoch == best["best_epoch"]
    # --metric macro-f1 chose the epoch and rate, and is the label curve's metric
    assert (r.selection.metric, r.chosen.selected_by, r.label_efficiency.metric) == ("macro-f1",) * 3
    by_epoch = {e.epoch: e for e in r.learning_curve}
    assert by_epoch[r.chosen.epoch].val_macro_f1 == best["val_score"]
    (point,) = r.label_efficiency.points
    assert point.kind == "shots" and point.n_train == 6 and point.seeds == 2
    assert point.rule == ["best validation macro-f1 over epochs and 2 learning rates; refit on the whole subset"]
    assert point.finetune.mean >= 0
    assert r.skipped["train"][0]["path"] == "light/broken.png" and r.n_train == 20
    assert r.test.per_class is None and (tmp_path / "o" / "label_efficiency.png").is_file()
    code, _, err = run(monkeypatch, capsys, "predict", train, "--finetuned", tmp_path / "o", "--out",
                       tmp_path / "p.csv", "--workers", "0")
    assert code == 0 and "20 images classified, 1 skipped" in err and "light/broken.png" in err, err
    with open(tmp_path / "p.csv", newline="") as f:
        assert {row["prediction"] for row in csv.DictReader(f)} <= {"dark", "light"}
    code, _, err = run(monkeypatch, capsys, "predict", train, "--out", tmp_path / "p.csv")
    assert code == 2 and "--probe PROBE" in err and "--finetuned MODEL" in err


def test_minutes_plan_whole_epochs_and_random_rescaled_round_trips(class_folder, tmp_path, monkeypatch):
    import sslprobe.fairinit as fairinit
    from sslprobe.probing.holdout import stratified_split

    seen, real = [], fairinit.calibration_batch
    monkeypatch.setattr(fairinit, "calibration_batch", lambda ids, *a, **k: seen.extend(ids) or real(ids, *a, **k))
    r = finetune(class_folder, out=tmp_path / "m", minutes=0.01, **{**TINY, "weights": "random-rescaled"})
    assert r.schedule["minutes"] == 0.01 and r.schedule["epochs"] >= 1
    # calibrated on the 20 training rows: the 4 of the validation hold-out are never among its candidates
    assert "rescaled" in r.weights["init"] and r.weights["calibration_images"] == 20
    ids = sorted(f"{d.name}/{f.name}" for d in class_folder.iterdir() for f in d.iterdir())
    _, held = stratified_split(torch.tensor([i >= 12 for i in range(24)]).long(), fraction=0.2, seed=0)
    assert set(seen) == set(ids) - {ids[i] for i in held.tolist()} and len(seen) == 20
    got = predict_images(class_folder, model=tmp_path / "m" / "model.safetensors", workers=0)
    assert len(got.rows) == 24  # the biases the rescaled init added are put back before the strict load


def test_a_grey_backbone_fine_tunes_on_one_channel(class_folder, tmp_path):
    save_backbone(*create_backbone("test_resnet", image_size=16, init="train", in_chans=1), tmp_path / "g.safetensors")
    r = finetune(class_folder, out=tmp_path / "g", epochs=1, **{**TINY, "weights": str(tmp_path / "g.safetensors"),
                                                                "model": None})
    ft = load_finetuned(tmp_path / "g")
    assert ft.spec.in_chans == 1 and r.status == "complete"
    got = predict_images(class_folder, model=ft, workers=0)
    assert len(got.rows) == 24 and {row["prediction"] for row in got.rows} <= {"dark", "light"}


def test_recipe_rates_per_layer():
    cnn = create_backbone("test_resnet", image_size=16)[0]
    cnn.reset_classifier(3)
    base = {"batch_size": 64, "base_lr": None, "backbone_lr_scale": None, "layer_decay": None, "weight_decay": 0.05,
            "warmup_epochs": 5, "label_smoothing": 0.1, "crop_scale": (0.08, 1.0), "flip_p": 0.5}
    rec = resolve_recipe(cnn, trained=True, **{**base, "backbone_lr_scale": 0.1})
    assert rec.lr == pytest.approx(1e-3 * 64 / 256) and rec.backbone_lr_scale == 0.1
    head = {id(p) for p in cnn.get_classifier().parameters()}
    for g in param_groups(cnn, rec):
        assert g["lr_scale"] == (1.0 if id(g["params"][0]) in head else 0.1)
        assert g["weight_decay"] == (0.0 if g["params"][0].ndim <= 1 else 0.05)
    assert {g["lr_scale"] for g in param_groups(cnn, resolve_recipe(cnn, trained=False, **base))} == {1.0}
    vit = create_backbone("test_vit", image_size=32)[0]
    vit.reset_classifier(3)
    rec = resolve_recipe(vit, trained=True, **base)
    scales = sorted({g["lr_scale"] for g in param_groups(vit, rec)})
    assert rec.layer_decay == 0.75 and scales[-1] == 1.0 and scales[0] == pytest.approx(0.75 ** (len(scales) - 1))


def test_crop_boxes_keep_the_photo_geometry():
    g = torch.Generator().manual_seed(0)
    aspect = torch.tensor([2.0] * 500 + [20.0] * 10)
    b = crop_boxes(len(aspect), scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), generator=g, device="cpu", aspect=aspect)
    w, h, cx, cy = b.unbind(1)
    wide = slice(0, 500)
    crop_ratio = w[wide] / h[wide] * 2.0  # crop width / height in the original image's pixels
    assert crop_ratio.min() >= 3 / 4 - 1e-5 and crop_ratio.max() <= 4 / 3 + 1e-5
    assert (w * h)[wide].min() >= 0.08 - 1e-6 and (w <= 1).all() and (h <= 1).all()
    assert ((cx - w / 2) >= -1e-6).all() and ((cx + w / 2) <= 1 + 1e-6).all() and ((cy + h / 2) <= 1 + 1e-6).all()
    # a 20:1 panorama fits no 4:3 crop of 8-100 % of its area: the whole height at the widest allowed ratio
    assert torch.allclose(h[500:], torch.ones(10)) and torch.allclose(w[500:] / h[500:] * 20, torch.full((10,), 4 / 3))
    assert math.isclose(float(w[500]), 4 / 60, rel_tol=1e-5)
