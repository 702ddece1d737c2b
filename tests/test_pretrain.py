"""The BYOL loop on CPU with a tiny timm model: outputs, logging, config, determinism, errors."""
import json

import pytest
import torch
from safetensors import safe_open

from sslprobe.backbone import create_backbone
from sslprobe.errors import SSLProbeError
from sslprobe.pretraining.pretrain import pretrain
from sslprobe.pretraining.recipe import pick_optimizer
from sslprobe.results import PretrainResult

FAST = {"model": "test_resnet", "image_size": 16, "batch_size": 8, "max_steps": 4, "proj_hidden": 32, "proj_dim": 16,
        "workers": 0, "show_progress": False, "log_every": 2}


def test_pretrain_writes_backbone_config_and_metrics(class_folder, tmp_path):
    (class_folder / "dark" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    s = pretrain(class_folder, out=tmp_path / "run", **FAST)
    run = tmp_path / "run"
    assert s.steps == 4 and s.skipped == [{"path": "dark/broken.png", "reason": s.skipped[0]["reason"]}]
    saved = json.loads((run / "summary.json").read_text())
    assert saved == s.to_json() and list(saved) == list(s.to_json()) and PretrainResult.from_json(saved) == s
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [2, 4]
    assert set(lines[0]) >= {"step", "epoch", "loss", "lr", "tau", "img_per_s"}
    assert 0 <= lines[-1]["loss"] <= 8 and lines[-1]["tau"] > lines[0]["tau"]
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model"] == "test_resnet" and cfg["small_stem"] and cfg["optimizer"] == "sgd"
    assert cfg["views"][0]["blur_p"] == 0.0 and cfg["views"][1]["solarize_p"] == 0.2  # blur off at ≤ 64 px
    with safe_open(str(run / "backbone.safetensors"), framework="pt") as f:
        meta = f.metadata()
    assert meta["format"] == "sslprobe-backbone" and json.loads(meta["model"]) == "test_resnet"
    net, spec = create_backbone(None, weights=str(run / "backbone.safetensors"))
    assert spec.image_size == 16 and spec.small_stem
    assert net(torch.randn(2, 3, 16, 16)).shape == (2, 96)


def test_pretrain_changes_weights_and_is_deterministic(class_folder, tmp_path):
    pretrain(class_folder, out=tmp_path / "a", seed=1, **FAST)
    pretrain(class_folder, out=tmp_path / "b", seed=1, **FAST)
    a, _ = create_backbone(None, weights=str(tmp_path / "a" / "backbone.safetensors"))
    b, _ = create_backbone(None, weights=str(tmp_path / "b" / "backbone.safetensors"))
    init, _ = create_backbone("test_resnet", weights="random", image_size=16, seed=1)
    sa, sb, si = a.state_dict(), b.state_dict(), init.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["layer1.0.conv1.weight"], si["layer1.0.conv1.weight"])


@pytest.mark.parametrize("name, batch, expected", [
    ("auto", 255, "sgd"), ("auto", 256, "lars"), ("auto", 4096, "lars"), ("adamw", 512, "adamw"), ("lars", 8, "lars"),
])
def test_optimizer_choice(name, batch, expected):
    assert pick_optimizer(name, batch=batch) == expected


def test_batch_is_capped_to_data_size_and_lars_runs(class_folder, tmp_path):
    s = pretrain(class_folder, out=tmp_path / "r", **{**FAST, "batch_size": 512, "max_steps": 1})
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    assert cfg["batch_size"] == 24 and s.optimizer == "sgd"  # 24 images: capped, so below 256
    s = pretrain(class_folder, out=tmp_path / "l", **{**FAST, "optimizer": "lars", "max_steps": 1})
    assert s.optimizer == "lars"


@pytest.mark.parametrize("bad, match", [
    ({"batch_size": 0}, "batch-size"), ({"max_steps": 0}, "max-steps"), ({"tau_base": 1.0}, "tau-base"),
    ({"optimizer": "adam"}, "unknown optimizer"), ({"model": "nope_net"}, "unknown model"),
    ({"lr": 0.0}, "--lr must be a positive"), ({"lr": float("nan")}, "--lr must be a positive"),
    ({"max_minutes": 0}, "--max-minutes"), ({"stop_at": 0}, "--stop-at"), ({"resume": "maybe"}, "--resume"),
    ({"save_every": "often"}, "--save-every"), ({"log_every": 0}, "--log-every"),
])
def test_bad_arguments(class_folder, tmp_path, bad, match):
    with pytest.raises(SSLProbeError, match=match):
        pretrain(class_folder, out=tmp_path / "x", **{**FAST, **bad})


def test_nan_loss_stops_with_clear_message(class_folder, tmp_path, monkeypatch):
    monkeypatch.setattr("sslprobe.pretraining.trainstep.warmup_cosine", lambda *a, **k: float("nan"))
    with pytest.raises(SSLProbeError, match="loss became nan at step 2; stopped without saving.*No checkpoint"):
        pretrain(class_folder, out=tmp_path / "x", **FAST)
    assert not (tmp_path / "x" / "backbone.safetensors").exists()


# --- never lose a run: checkpoints, exact resume, interruption, NaN -------------------------------------------

def _weights(run):
    from sslprobe.checkpoint import find_latest, load_tensors

    return load_tensors(find_latest(run / "checkpoints"))


def _assert_same(a, b):
    model = [k for k in a if k.startswith(("model.", "optim."))]
    assert model and set(a) == set(b)
    for k in model:
        assert torch.allclose(a[k], b[k], atol=1e-6, rtol=1e-5), k


@pytest.mark.parametrize("ram", [True, False])
def test_stop_and_resume_equals_straight_run(class_folder, tmp_path, monkeypatch, ram):
    if not ram:  # the streaming DataLoader path must resume mid-epoch too
        monkeypatch.setattr("sslprobe.pretraining.batches.RAM_CACHE_BYTES", 0)
    kw = {**FAST, "max_steps": 8, "batch_size": 6}  # 4 steps per epoch: the stop falls mid-epoch 1
    straight = pretrain(class_folder, out=tmp_path / "a", **kw)
    first = pretrain(class_folder, out=tmp_path / "b", stop_at=5, **kw)
    assert first.status == "stopped: --stop-at 5" and first.steps == 5
    assert (tmp_path / "b" / "backbone.safetensors").exists()
    second = pretrain(class_folder, out=tmp_path / "b", resume="yes", **kw)
    assert straight.status == second.status == "complete" and second.resumed_from == 5
    _assert_same(_weights(tmp_path / "a"), _weights(tmp_path / "b"))
    steps = [json.loads(x)["step"] for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 4, 5, 6, 8]  # one run's log: the resumed part appended, nothing repeated


def test_resume_refuses_changed_config_and_unfinished_overwrite(class_folder, tmp_path):
    pretrain(class_folder, out=tmp_path / "r", stop_at=2, **FAST)
    with pytest.raises(SSLProbeError, match=r"differs in 2 key\(s\): base_lr: 0.06 → 0.1; lr: "):
        pretrain(class_folder, out=tmp_path / "r", resume="yes", **{**FAST, "lr": 0.1})
    with pytest.raises(SSLProbeError, match="unfinished run .* step 2 of 4.*--resume"):
        pretrain(class_folder, out=tmp_path / "r", **FAST)
    with pytest.raises(SSLProbeError, match="no usable checkpoint"):
        pretrain(class_folder, out=tmp_path / "new", resume="yes", **FAST)
    assert pretrain(class_folder, out=tmp_path / "new2", resume="auto", **FAST).resumed_from is None
    assert pretrain(class_folder, out=tmp_path / "r", resume="auto", **FAST).resumed_from == 2


def _interrupt_at(monkeypatch, call, how):
    """Make the ``call``-th make_view call deliver a Ctrl-C: as a real SIGINT, or a bare KeyboardInterrupt."""
    import signal

    import sslprobe.pretraining.trainstep as ts

    real, n = ts.make_view, [0]

    def fake(*a, **k):
        n[0] += 1
        if n[0] == call:
            if how in ("signal", "sigterm"):  # SIGTERM: what a scheduler (or torchrun) sends on preemption
                signal.raise_signal(signal.SIGINT if how == "signal" else signal.SIGTERM)
            else:
                raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(ts, "make_view", fake)


@pytest.mark.parametrize("how, saved_step", [("signal", 3), ("sigterm", 3), ("raise", 2)])
def test_ctrl_c_saves_and_resume_continues_exactly(class_folder, tmp_path, monkeypatch, how, saved_step):
    from sslprobe.pretraining.pretrain import PretrainInterrupted

    kw = {**FAST, "max_steps": 6}
    pretrain(class_folder, out=tmp_path / "a", **kw)
    # views of step index 2 (third step): signal → the step finishes; raise → it never starts
    _interrupt_at(monkeypatch, 5, how)
    with pytest.raises(PretrainInterrupted, match=f"at step {saved_step} of 6.*--resume"):
        pretrain(class_folder, out=tmp_path / "b", **kw)
    monkeypatch.undo()
    assert _interrupted_step(tmp_path / "b") == saved_step
    pretrain(class_folder, out=tmp_path / "b", resume="yes", **kw)
    _assert_same(_weights(tmp_path / "a"), _weights(tmp_path / "b"))


def _interrupted_step(run):
    from sslprobe.checkpoint import find_latest

    return find_latest(run / "checkpoints").step


def test_interrupt_between_optimizer_and_ema_saves_nothing_new(class_folder, tmp_path, monkeypatch):
    import sslprobe.pretraining.pretrain as pm
    import sslprobe.pretraining.trainstep as ts

    real, n = ts.cosine_to_one, [0]

    def fake(*a, **k):
        n[0] += 1
        if n[0] == 3:  # inside step index 2, after opt.step(): a half-updated state
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(ts, "cosine_to_one", fake)
    with pytest.raises(pm.PretrainInterrupted, match="checkpoint at step 2"):
        pretrain(class_folder, out=tmp_path / "r", save_every="2", **{**FAST, "max_steps": 6})
    assert _interrupted_step(tmp_path / "r") == 2


def test_nan_leaves_last_good_checkpoint(class_folder, tmp_path, monkeypatch):
    import sslprobe.pretraining.trainstep as ts

    real = ts.warmup_cosine
    monkeypatch.setattr(ts, "warmup_cosine", lambda step, *a, **k: float("nan") if step >= 2 else real(step, *a, **k))
    with pytest.raises(SSLProbeError, match=r"loss became nan at step 4.*last good checkpoint \(step 2\) is intact"):
        pretrain(class_folder, out=tmp_path / "r", save_every="2", **{**FAST, "max_steps": 6})
    w = _weights(tmp_path / "r")
    assert _interrupted_step(tmp_path / "r") == 2
    assert all(torch.isfinite(v).all() for k, v in w.items() if k.startswith("model."))


def test_max_minutes_stops_with_checkpoint_then_resumes(class_folder, tmp_path):
    s = pretrain(class_folder, out=tmp_path / "r", max_minutes=1e-9, **FAST)
    assert s.status.startswith("stopped: --max-minutes") and s.steps == 1
    assert _interrupted_step(tmp_path / "r") == 1 and (tmp_path / "r" / "backbone.safetensors").exists()
    s = pretrain(class_folder, out=tmp_path / "r", resume="yes", **FAST)
    assert s.status == "complete" and s.steps == 4


def test_time_based_checkpoint_cadence(class_folder, tmp_path, monkeypatch):
    import sslprobe.checkpoint as ck

    saved = []
    real = ck.save
    monkeypatch.setattr(ck, "save", lambda d, *, step, **k: saved.append(step) or real(d, step=step, **k))
    pretrain(class_folder, out=tmp_path / "r", save_every="0.000001m", **FAST)
    assert saved == [1, 2, 3, 4]
    saved.clear()
    pretrain(class_folder, out=tmp_path / "e", save_every="end", **FAST)
    assert saved == [4]


def test_config_records_views_blur_rule_and_augment_overrides(class_folder, tmp_path):
    pretrain(class_folder, out=tmp_path / "r", augment={"gray_p": 0.5, "solarize_p": (0.0, 0.4)}, **FAST)
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    assert cfg["blur"] == "off (automatic: image size 16 ≤ 64 px)"
    assert cfg["views"][0]["gray_p"] == 0.5 and cfg["views"][1]["solarize_p"] == 0.4 and cfg["views"][0]["blur_p"] == 0
    assert cfg["global_batch"] == 8 and cfg["world_size"] == 1 and cfg["precision"] == "float32"
    with pytest.raises(SSLProbeError, match="unknown augmentation option"):
        pretrain(class_folder, out=tmp_path / "x", augment={"sharpen": 1.0}, **FAST)


def test_lars_is_the_papers_for_global_batch_256():
    from sslprobe.pretraining.recipe import default_lr
    from sslprobe.pretraining.trainstep import RunSpec, build_byol, make_optimizer

    cfg = RunSpec(model="test_resnet", image_size=16, small_stem=True, proj_hidden=32, proj_dim=16,
                         optimizer="lars")
    net, opt, _ = build_byol(cfg, device=torch.device("cpu"))
    decay, plain = opt.param_groups
    assert type(opt).__name__ == "LARS" and decay["trust"] == 1e-3 and decay["momentum"] == 0.9
    assert decay["lars"] and decay["weight_decay"] == 1.5e-6 and not plain["lars"] and plain["weight_decay"] == 0
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim <= 1 for p in plain["params"])
    assert not any(p is q for p in decay["params"] + plain["params"] for q in net.target_backbone.parameters())
    assert make_optimizer("sgd", net, lr=0.1, weight_decay=0.0).defaults["momentum"] == 0.9
    assert make_optimizer("adamw", net, lr=1e-3, weight_decay=0.0).param_groups[1]["weight_decay"] == 0
    assert default_lr("lars") == 0.2 and default_lr("sgd") == 0.06


def test_run_config_derives_schedule_lr_and_notes(tmp_path):
    from sslprobe.config.pretrain import PretrainConfig
    from sslprobe.distributed import Dist
    from sslprobe.pretraining.augment import byol_views
    from sslprobe.pretraining.trainstep import run_config

    _, spec = create_backbone("test_resnet", weights="random", image_size=16)
    options = PretrainConfig(data=str(tmp_path), out=tmp_path, epochs=10, weight_decay=1e-6, warmup_epochs=10.0,
                             tau_base=0.99, proj_hidden=32, proj_dim=16, seed=1)
    kw = {"options": options, "spec": spec, "batch": 8, "steps_per_epoch": 3, "device": torch.device("cpu"),
          "max_steps": None, "views": byol_views(16)}
    one = run_config(dist=Dist(), **kw)
    assert (one.total_steps, one.warmup_steps, one.optimizer, one.global_batch) == (30, 15, "sgd", 8)  # warm-up ≤ half
    assert one.lr == pytest.approx(0.06 * 8 / 256) and one.base_lr == 0.06 and one.small_stem
    assert one.sync_batchnorm == "n/a (one process)" and one.precision == "float32" and one.blur.startswith("off")
    two = run_config(dist=Dist(rank=1, world=64), **{**kw, "max_steps": 100,
                                                     "options": options.replace(lr=0.3, warmup_epochs=1.0)})
    assert (two.total_steps, two.warmup_steps, two.optimizer, two.global_batch) == (100, 3, "lars", 512)
    assert two.lr == pytest.approx(0.3 * 2) and two.sync_batchnorm.startswith("no: SyncBatchNorm has no CPU kernel")


def test_cli_resume_flag_continues(monkeypatch, capsys, class_folder, tmp_path):
    from tests.test_cli import run

    args = ["pretrain", class_folder, "--out", tmp_path / "r", "--model", "test_resnet", "--image-size", "16",
            "--batch-size", "8", "--max-steps", "4", "--proj-hidden", "32", "--proj-dim", "16", "--workers", "0"]
    code, _, err = run(monkeypatch, capsys, *args, "--stop-at", "2", "--no-blur", "--gray-p", "0.3", "--blur-p", "1",
                       "0.5")
    assert code == 0 and "stopped: --stop-at 2" in err and "--resume" in err
    code, _, err = run(monkeypatch, capsys, *args, "--no-blur", "--gray-p", "0.3", "--blur-p", "1", "0.5")
    assert code == 2 and "unfinished run" in err
    code, _, err = run(monkeypatch, capsys, *args, "--resume")
    assert code == 2 and "gray_p" in err  # changed options are named
    code, _, err = run(monkeypatch, capsys, *args, "--resume", "--no-blur", "--gray-p", "0.3", "--blur-p", "1", "0.5")
    assert code == 0 and "resumed from step 2" in err and "complete: 4/4" in err


def test_ram_and_streaming_give_the_same_batches(class_folder):
    from sslprobe.images.folders import open_images
    from sslprobe.pretraining.batches import BatchSource

    images = open_images(class_folder)
    kw = {"store": 8, "batch": 5, "device": torch.device("cpu"), "seed": 3, "workers": 0, "show_progress": False}
    ram, stream = BatchSource(images, **kw), BatchSource(images, **kw, ram_limit=0)
    assert ram.ram is not None and stream.ram is None and ram.steps_per_epoch == stream.steps_per_epoch == 4
    a, b = ram.batches(start=3), stream.batches(start=3)  # from mid-epoch 0 into epoch 2
    for _ in range(6):
        (sa, xa, aa), (sb, xb, ab) = next(a), next(b)
        assert sa == sb and torch.equal(xa, xb) and torch.equal(aa, ab)
    r0 = BatchSource(images, **kw, rank=0, world=2)
    r1 = BatchSource(images, **kw, rank=1, world=2)
    (_, x0, _), (_, x1, _) = next(r0.batches(start=0)), next(r1.batches(start=0))
    assert r0.steps_per_epoch == 2 and not any(torch.equal(u, v) for u in x0 for v in x1)  # disjoint rank slices


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_step_never_waits_for_the_gpu():
    from sslprobe.pretraining.trainstep import RunSpec, TrainStep, build_byol

    dev = torch.device("cuda")
    cfg = RunSpec(model="test_resnet", image_size=32, small_stem=True, batch_size=16, proj_hidden=64,
                         proj_dim=32, optimizer="lars", total_steps=10, warmup_steps=2)
    net, opt, spec = build_byol(cfg, device=dev)
    step = TrainStep(net, opt, cfg=cfg, spec=spec, device=dev)
    x = torch.randint(0, 255, (16, 3, 32, 32), dtype=torch.uint8, device=dev)
    step(x, 0)  # warm-up: constants copied once, cuDNN plans chosen
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for i in range(1, 4):
            loss, std = step(x, i)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(loss) and std > 0


def test_cli_ctrl_c_exits_130_saying_how_to_resume(monkeypatch, capsys, class_folder, tmp_path):
    from tests.test_cli import run

    _interrupt_at(monkeypatch, 3, "signal")
    code, _, err = run(monkeypatch, capsys, "pretrain", class_folder, "--out", tmp_path / "r", "--model", "test_resnet",
                       "--image-size", "16", "--batch-size", "8", "--max-steps", "4", "--proj-hidden", "32",
                       "--workers", "0")
    assert code == 130 and "interrupted (SIGINT) at step 2 of 4" in err and "--resume" in err
    assert _interrupted_step(tmp_path / "r") == 2


def test_resuming_a_finished_run_rewrites_outputs_and_keeps_its_loss(class_folder, tmp_path):
    first = pretrain(class_folder, out=tmp_path / "r", **FAST)
    (tmp_path / "r" / "backbone.safetensors").unlink()  # as if killed right after the last checkpoint
    again = pretrain(class_folder, out=tmp_path / "r", resume="auto", **FAST)
    assert again.resumed_from == 4 and again.final_loss == pytest.approx(first.final_loss)
    assert (tmp_path / "r" / "backbone.safetensors").exists()


def test_store_decode_uses_jpeg_draft_and_reports_bad_files(tmp_path, monkeypatch):
    import numpy as np
    from PIL import Image

    from sslprobe.images.datasets import ImageDataset, collate
    from sslprobe.images.folders import open_images
    from sslprobe.images.transforms import Uint8Transform

    d = tmp_path / "imgs"
    d.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (600, 800, 3), dtype=np.uint8)).save(d / "big.jpg", quality=90)
    Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(d / "small.png")
    (d / "zero.jpg").write_bytes(b"")
    asked = []
    from PIL import JpegImagePlugin

    real = JpegImagePlugin.JpegImageFile.draft
    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft",
                        lambda self, mode, size: asked.append(size) or real(self, mode, size))
    ds = ImageDataset(open_images(d), Uint8Transform(size=32), draft=(32, 32))
    items = [ds[i] for i in range(len(ds))]
    assert asked == [(32, 32)]  # only the JPEG, at the store size
    b = collate(items)
    assert b.images.shape == (2, 3, 32, 32) and b.images.dtype == torch.uint8
    assert [ds.images.ids[i] for i, _ in b.skipped] == ["zero.jpg"] and "empty" in b.skipped[0][1]


# --- CPU: views made in DataLoader workers, beside the model step ---------------------------------------------

def _stop_signal_handlers(x, step, aspect=None):
    import os
    import signal

    return os.getpid(), signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)


def test_worker_views_equal_in_process_views(class_folder):
    import os
    import signal

    from sslprobe.images.folders import open_images
    from sslprobe.pretraining.augment import byol_views
    from sslprobe.pretraining.batches import BatchSource
    from sslprobe.pretraining.trainstep import ViewMaker

    images = open_images(class_folder)
    src = BatchSource(images, store=24, batch=5, device=torch.device("cpu"), seed=3, workers=1, show_progress=False)
    assert src.can_map and src.steps_per_epoch == 4
    make = ViewMaker(byol_views(24, blur=True, solarize_p=(0.5, 0.5)), 16, (0.5,) * 3, (0.25,) * 3, seed=3)
    here, there = src.batches(start=3), src.mapped(make, start=3)  # from mid-epoch 0 into epoch 2
    for _ in range(6):
        (s, x, a), (t, (w1, w2)) = next(here), next(there)
        v1, v2 = make(x, s, aspect=a)
        assert s == t and w1.shape == (5, 3, 16, 16)
        assert torch.equal(v1, w1) and torch.equal(v2, w2)
    there.close()
    pid, on_int, on_term = next(src.mapped(_stop_signal_handlers, start=0))[1]
    assert pid != os.getpid() and on_int == on_term == signal.SIG_IGN  # Ctrl-C is the training process's to handle
    assert not BatchSource(images, store=24, batch=5, device=torch.device("cpu"), seed=3, workers=0,
                           show_progress=False).can_map


def test_step_feed_gives_the_same_inputs_on_both_view_paths(class_folder):
    from sslprobe.images.folders import open_images
    from sslprobe.pretraining.batches import BatchSource
    from sslprobe.pretraining.trainstep import RunSpec, StepFeed, TrainStep, build_byol

    cfg = RunSpec(model="test_resnet", image_size=16, small_stem=True, batch_size=5, proj_hidden=32,
                         proj_dim=16, optimizer="sgd", total_steps=10)
    net, opt, spec = build_byol(cfg, device=torch.device("cpu"))
    step = TrainStep(net, opt, cfg=cfg, spec=spec, device=torch.device("cpu"))
    kw = {"store": 16, "batch": 5, "device": torch.device("cpu"), "seed": 3, "show_progress": False}
    images = open_images(class_folder)
    here = StepFeed(BatchSource(images, workers=0, **kw), step, start=3)
    there = StepFeed(BatchSource(images, workers=1, **kw), step, start=3)
    try:
        assert not here.in_workers and there.in_workers
        for _ in range(3):
            (s, (x, a)), (t, (w1, w2)) = here.next(), there.next()
            v1, v2 = step.views(x, s, a)
            assert s == t and x.dtype == torch.uint8 and torch.equal(v1, w1) and torch.equal(v2, w2)
        loss, proj_std = there.train((w1, w2), t)
        assert torch.isfinite(loss) and proj_std > 0
    finally:
        here.close(), there.close()


def test_worker_views_train_and_resume_exactly_like_in_process(class_folder, tmp_path, monkeypatch):
    import sslprobe.pretraining.trainstep as ts

    kw = {**FAST, "max_steps": 8, "batch_size": 6}
    straight = pretrain(class_folder, out=tmp_path / "a", **kw)  # workers=0: views in this process
    in_process = []
    real = ts.TrainStep.__call__
    monkeypatch.setattr(ts.TrainStep, "__call__", lambda self, *a: in_process.append(1) or real(self, *a))
    first = pretrain(class_folder, out=tmp_path / "b", stop_at=5, **{**kw, "workers": 1})
    second = pretrain(class_folder, out=tmp_path / "b", resume="yes", **{**kw, "workers": 1})
    assert not in_process  # every step's views came from the worker
    assert first.steps == 5 and second.resumed_from == 5 and straight.status == second.status == "complete"
    _assert_same(_weights(tmp_path / "a"), _weights(tmp_path / "b"))
    assert second.final_loss == pytest.approx(straight.final_loss, rel=1e-5)


def test_ctrl_c_with_worker_views_saves_and_resumes(class_folder, tmp_path, monkeypatch):
    import signal

    import sslprobe.pretraining.trainstep as ts
    from sslprobe.pretraining.pretrain import PretrainInterrupted

    kw = {**FAST, "max_steps": 6, "workers": 1}
    pretrain(class_folder, out=tmp_path / "a", **kw)
    real, n = ts.TrainStep.model_step, [0]

    def step_then_sigint(self, *a):
        n[0] += 1
        if n[0] == 3:
            signal.raise_signal(signal.SIGINT)  # mid-step: the step finishes, then the loop saves
        return real(self, *a)

    monkeypatch.setattr(ts.TrainStep, "model_step", step_then_sigint)
    with pytest.raises(PretrainInterrupted, match="at step 3 of 6.*--resume"):
        pretrain(class_folder, out=tmp_path / "b", **kw)
    monkeypatch.undo()
    pretrain(class_folder, out=tmp_path / "b", resume="yes", **kw)
    _assert_same(_weights(tmp_path / "a"), _weights(tmp_path / "b"))
