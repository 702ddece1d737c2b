"""sslprobe finetune's recipe per start and run length, its default rate grid chosen on validation, the refit on
train + validation (test scored once), PreciseBN, and --minutes covering the grid, the refit and the label curve."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import sslprobe.checkpoint as ckpts
from sslprobe.backbone import create_backbone
from sslprobe.config.finetune import LR_GRID, SCRATCH_LR, SCRATCH_WEIGHT_DECAY, TRAINED_LR, TRAINED_WEIGHT_DECAY
from sslprobe.finetuning import selection
from sslprobe.finetuning.data import JoinedRows, decode_rows, open_train
from sslprobe.finetuning.finetune import finetune
from sslprobe.finetuning.loop import Trainer, plan_run
from sslprobe.finetuning.network import with_head
from sslprobe.finetuning.recipe import INCEPTION_CROP, WHOLE_IMAGE, crop_for, resolve_recipe
from sslprobe.finetuning.timing import RunShape, SessionTiming, epoch_seconds, expected_seconds, session_epochs
from sslprobe.timebudget import StepTiming
from tests.conftest import write_class_folder

TINY = {"model": "test_resnet", "weights": "random", "image_size": 16, "batch_size": 8, "workers": 0}
ASKED = {"batch_size": 64, "base_lr": None, "backbone_lr_scale": None, "layer_decay": None, "weight_decay": None,
         "warmup_epochs": 5, "label_smoothing": 0.1, "crop_scale": None, "flip_p": 0.5}


def _cnn() -> torch.nn.Module:
    net = create_backbone("test_resnet", image_size=16)[0]
    net.reset_classifier(3)
    return net


def test_the_recipe_follows_the_start():
    scratch = resolve_recipe(_cnn(), trained=False, **ASKED)
    trained = resolve_recipe(_cnn(), trained=True, **ASKED)
    assert scratch.start == "scratch" and trained.start == "trained"
    assert scratch.lr_grid == pytest.approx([SCRATCH_LR * f for f in LR_GRID]) and len(scratch.lr_grid) == 3
    assert trained.lr_grid == pytest.approx([TRAINED_LR * f for f in LR_GRID])
    assert scratch.base_lr == SCRATCH_LR and scratch.lr == pytest.approx(SCRATCH_LR * 64 / 256)
    assert (scratch.weight_decay, trained.weight_decay) == (SCRATCH_WEIGHT_DECAY, TRAINED_WEIGHT_DECAY)
    assert scratch.backbone_lr_scale == 1.0 and trained.backbone_lr_scale == 1.0  # a CNN trains at one rate
    assert "ResNet strikes back" in scratch.note and "MAE" in trained.note and "BYOL" in trained.note
    vit = create_backbone("test_vit", image_size=32)[0]
    vit.reset_classifier(3)
    assert resolve_recipe(vit, trained=True, **ASKED).layer_decay == 0.75  # MAE's, for a ViT
    assert resolve_recipe(_cnn(), trained=True, **{**ASKED, "backbone_lr_scale": 0.1}).backbone_lr_scale == 0.1
    given = resolve_recipe(_cnn(), trained=False, **{**ASKED, "base_lr": 0.01, "weight_decay": 0.1})
    assert given.lr_grid == (0.01,) and given.weight_decay == 0.1 and "given" in given.note
    assert resolve_recipe(_cnn(), trained=True, lrs=(3e-3, 1e-3), **ASKED).lr_grid == (1e-3, 3e-3)


def test_warm_up_is_at_most_a_tenth_of_a_short_run_and_the_crop_follows_the_length():
    recipe = resolve_recipe(_cnn(), trained=False, **ASKED)  # 5 warm-up epochs asked
    fit, val = torch.arange(17 * 64), torch.arange(10)
    short = plan_run("s", recipe=recipe, seed=0, fit=fit, val=val, epochs=3, metric="top1", minutes=None)
    long = plan_run("l", recipe=recipe, seed=0, fit=fit, val=val, epochs=100, metric="top1", minutes=None)
    assert short.total_steps == 51 and short.warmup_steps == 5  # not 25 (half the run) nor 85 (5 epochs)
    assert long.warmup_steps == 5 * 17  # a long run gets its 5 epochs
    assert crop_for(3) == WHOLE_IMAGE and crop_for(30)[0] > INCEPTION_CROP[0] and crop_for(100) == INCEPTION_CROP
    assert recipe.crop(3) == WHOLE_IMAGE and resolve_recipe(_cnn(), trained=False, **{
        **ASKED, "crop_scale": (0.2, 1.0)}).crop(3) == (0.2, 1.0)


def _trainer(folder: Path, tmp_path: Path) -> Trainer:
    net, spec = create_backbone("test_resnet", image_size=16, init="train")
    with_head(net, 2, seed=0)
    rows = decode_rows(open_train(folder, image_column=None, label_column=None), None, spec=spec, squares=True,
                       workers=0, device=torch.device("cpu"), show_progress=False, what="train")
    recipe = resolve_recipe(net, trained=False, **{**ASKED, "batch_size": 8})
    start = {k: v.clone() for k, v in net.state_dict().items()}
    return Trainer(net, start, recipe, rows, 16, tuple(spec.mean), tuple(spec.std), torch.device("cpu"),
                   {"classes": ["dark", "light"]}, tmp_path / "runs", ckpts.parse_save_every("end"), "no", None, None)


def test_precise_bn_gives_evaluation_the_statistics_of_the_current_weights(class_folder, tmp_path):
    t = _trainer(class_folder, tmp_path)
    pos = torch.arange(len(t.train))
    x = torch.cat([b for b, _ in t.train.eval_batches(pos, batch=256, device=t.device)])
    from sslprobe.finetuning.augment import normalize

    x = normalize(x, mean=t.mean, std=t.std)

    def features() -> torch.Tensor:  # pooled backbone features (the new head's outputs are all near 0)
        return t.net.forward_head(t.net.forward_features(x), pre_logits=True)

    with torch.no_grad():
        t.net.train()
        batch_stats = features()  # what a training step's normalisation sees
        for m in t.net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):  # stale statistics, as after weights moved fast
                m.running_mean.add_(3.0)
                m.running_var.mul_(9.0)
        t.net.eval()
        stale = features()
        t.precise_bn(t.train, pos)
        assert t.net.training is False  # the mode is put back
        precise = features()
    scale, stale_err = batch_stats.abs().mean(), (stale - batch_stats).abs().mean()
    assert stale_err > 0.3 * scale
    # what is left: BatchNorm keeps the unbiased variance (n/(n−1) of the batch's, n = 24 images × the map's cells)
    assert (precise - batch_stats).abs().mean() < 0.05 * scale
    assert all(m.momentum == 0.1 for m in t.net.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_the_budget_prices_every_run_and_splits_the_minutes():
    timing = SessionTiming(StepTiming(step_s=0.1, batch=8, eval_image_s=0.001), run_s=0.5)
    main = [RunShape(f"main-{i}", 80, 20, 8) for i in range(3)] + [RunShape("refit", 96, 0, 8)]
    curve = [RunShape(f"draw-{i}", 8, 4, 8) for i in range(8)]
    # 10 steps, PreciseBN over the 80 training images and validation of 20
    assert epoch_seconds(timing, main[0]) == pytest.approx(10 * 0.1 + (80 + 20) * 0.001)
    assert expected_seconds(timing, main, epochs=2) == pytest.approx(4 * 0.5 + 2 * (3 * 1.1 + 1.2 + 0.096))
    alone, shared = session_epochs(timing, minutes=1, runs=main), session_epochs(timing, minutes=1, runs=main + curve)
    assert shared < alone and expected_seconds(timing, main + curve, epochs=shared) <= 60
    assert expected_seconds(timing, main + curve, epochs=shared + 1) > 60  # the most that fit
    assert session_epochs(timing, minutes=0.001, runs=main) == 1


def test_the_grid_goes_past_an_end_that_wins_outright():
    from types import SimpleNamespace

    from sslprobe.finetuning.loop import RunResult

    def run(lr: float, score: float) -> RunResult:
        return RunResult(SimpleNamespace(base_lr=lr), [], 1, score, 1.0, None, "complete")

    assert selection.past_edge([run(1, 0.5), run(3, 0.6), run(9, 0.7)], 3.0) == [27]
    assert selection.past_edge([run(1, 0.8), run(3, 0.6), run(9, 0.7)], 3.0) == [1 / 3]
    assert selection.past_edge([run(1, 0.5), run(3, 0.8), run(9, 0.7)], 3.0) == []
    assert selection.past_edge([run(1, 0.5), run(3, 0.7), run(9, 0.7)], 3.0) == []  # a tie is no sign


class _Spy:
    """The runs a session makes: (name, training rows it was given, the pool they index, rows validated)."""

    def __init__(self, monkeypatch):
        self.runs = []
        real = selection.Run
        spy = self

        class Run(real):
            def __init__(self, trainer, plan, *, fit, val_rows, val, task):
                spy.runs.append((plan.name, fit.clone(), trainer.train, val.clone(), plan))
                super().__init__(trainer, plan, fit=fit, val_rows=val_rows, val=val, task=task)

        monkeypatch.setattr(selection, "Run", Run)


def test_the_default_grid_chooses_on_val_and_the_refit_sees_train_and_val(class_folder, tmp_path, monkeypatch):
    test = write_class_folder(tmp_path / "test", per_class=6, size=(16, 16), seed=5)
    spy = _Spy(monkeypatch)
    scored = []
    real_eval = Trainer.eval_logits

    def eval_logits(self, rows, positions):
        scored.append(rows.images.source if hasattr(rows, "images") else "pool")
        return real_eval(self, rows, positions)

    monkeypatch.setattr(Trainer, "eval_logits", eval_logits)
    r = finetune(class_folder, out=tmp_path / "o", test=test, epochs=2, **TINY)
    grid = [g["lr"] for g in r.lr_grid]
    assert grid[:3] == pytest.approx([SCRATCH_LR * f for f in LR_GRID])  # three runs, no --lr given
    best = max(r.lr_grid, key=lambda g: (g["val_score"], -g["val_loss"], -g["lr"]))
    assert r.chosen.lr == best["lr"] and r.chosen.epoch == best["best_epoch"]
    for n in range(3, len(grid)):  # a run past the grid's end only when that end won outright
        tried = r.lr_grid[:n]
        top = max(tried, key=lambda g: (g["val_score"], -g["val_loss"], -g["lr"]))
        assert top["lr"] in (min(g["lr"] for g in tried), max(g["lr"] for g in tried))
        assert grid[n] == pytest.approx(top["lr"] * 3) or grid[n] == pytest.approx(top["lr"] / 3)
    names = [name for name, *_ in spy.runs]
    assert len(names) == len(grid) + 1 and names[-1] == "refit"
    _, refit_rows, _, refit_val, plan = spy.runs[-1]
    main_fit, main_val = spy.runs[0][1], spy.runs[0][3]
    assert sorted(refit_rows.tolist()) == sorted(torch.cat([main_fit, main_val]).tolist()) == list(range(24))
    assert refit_val.numel() == 0 and plan.epochs == r.chosen.epoch and plan.base_lr == r.chosen.lr
    assert r.schedule["refit"]["rows"] == 24 and "refit" in r.chosen.rule and r.n_fit + r.n_val == 24
    assert scored.count(str(test)) == 1  # test is scored once, by the refit
    assert r.test.n == 12 and r.val.n == r.n_val


def test_a_given_val_trains_in_the_refit(class_folder, tmp_path, monkeypatch):
    val = write_class_folder(tmp_path / "val", per_class=4, size=(16, 16), seed=7)
    test = write_class_folder(tmp_path / "test", per_class=4, size=(16, 16), seed=8)
    spy = _Spy(monkeypatch)
    r = finetune(class_folder, out=tmp_path / "o", val=val, test=test, epochs=1, lr=0.01, **TINY)
    name, rows, pool, _, _ = spy.runs[-1]
    assert name == "refit" and isinstance(pool, JoinedRows) and rows.tolist() == list(range(24 + 8))
    assert pool.labels.tolist() == [0] * 12 + [1] * 12 + [0] * 4 + [1] * 4
    x, _, y = next(pool.train_batches(torch.tensor([25, 0, 30, 13]), batch=4, start=0, device=torch.device("cpu")))
    assert y.tolist() == [0, 0, 1, 1] and torch.equal(x[1], pool.parts[0].square[0])
    assert torch.equal(x[0], pool.parts[1].square[1]) and r.schedule["refit"]["rows"] == 32


def test_minutes_cover_the_grid_the_refit_and_the_label_curve(class_folder, tmp_path, monkeypatch):
    test = write_class_folder(tmp_path / "test", per_class=4, size=(16, 16), seed=5)
    spy = _Spy(monkeypatch)
    r = finetune(class_folder, out=tmp_path / "o", test=test, minutes=0.05, shots=(4,), seeds=2, **TINY)
    budget = json.loads((tmp_path / "o" / "runs" / "budget.json").read_text())
    # priced: the main grid (3 + 2 past its edge) + refit, and 2 draws × (grid + 2 + refit)
    assert budget["minutes"] == 0.05 and budget["runs"] == 6 + 2 * 6
    plans = {name: plan for name, *_, plan in spy.runs}
    assert 2 * 4 + 4 <= len(plans) <= budget["runs"]
    grid_runs = [p for n, p in plans.items() if "refit" not in n]
    assert {p.epochs for p in grid_runs} == {budget["epochs"]}  # one length for every run
    main = max(p.total_steps for n, p in plans.items() if n.startswith("main"))
    assert all(p.total_steps <= main for n, p in plans.items() if n.startswith("shots"))
    (point,) = r.label_efficiency.points
    assert point.n_train == 8 and all("refit" in rule for rule in point.rule)


def _digits(root: Path, *, per_class: int) -> tuple[Path, Path]:
    """scikit-learn's 8×8 digits upsampled to 32 px as class folders: ``per_class`` train, the rest test."""
    from sklearn.datasets import load_digits

    d = load_digits()
    seen: dict[int, int] = {}
    for i in np.random.default_rng(0).permutation(len(d.target)).tolist():
        y = int(d.target[i])
        seen[y] = seen.get(y, 0) + 1
        folder = root / ("train" if seen[y] <= per_class else "test") / str(y)
        folder.mkdir(parents=True, exist_ok=True)
        img = Image.fromarray((d.images[i] * 255 / 16).astype(np.uint8)).resize((32, 32), Image.BILINEAR)
        img.convert("RGB").save(folder / f"{i:04d}.png")
    return root / "train", root / "test"


@pytest.mark.slow
def test_three_epochs_from_random_weights_beat_the_frozen_random_probe_on_digits(tmp_path):
    """Issue 22: 3 epochs of a random test_resnet at 32 px scored 27 %, below the frozen probe's 77 %. (Here the probe
    scores 94 %; flips off, as for any data whose mirror image is another class: with them 3 epochs scored 93 %.)"""
    from sslprobe.extraction.extract import extract
    from sslprobe.probing.probe import probe

    train, test = _digits(tmp_path / "digits", per_class=140)
    for name, folder in (("ftrain", train), ("ftest", test)):
        extract(folder, out=tmp_path / name, model="test_resnet", weights="random", image_size=32, workers=0,
                use_cache=False, show_progress=False)
    probed = probe(tmp_path / "ftrain", test=tmp_path / "ftest", knn_k=())
    tuned = finetune(train, out=tmp_path / "ft", test=test, model="test_resnet", weights="random", image_size=32,
                     epochs=3, flip_p=0.0, workers=0)
    assert tuned.test.top1 > probed.test.top1 + 0.02, (tuned.test.top1, probed.test.top1)
