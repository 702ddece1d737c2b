"""The BYOL loop on CPU with a tiny timm model: outputs, logging, config, determinism, errors."""
import json

import pytest
import torch
from safetensors import safe_open

from sslprobe.backbone import create_backbone
from sslprobe.errors import SSLProbeError
from sslprobe.pretrain import pick_optimizer, pretrain

FAST = dict(model="test_resnet", image_size=16, batch_size=8, max_steps=4, proj_hidden=32, proj_dim=16,
            workers=0, show_progress=False, log_every=2)


def test_pretrain_writes_backbone_config_and_metrics(class_folder, tmp_path):
    (class_folder / "dark" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    s = pretrain(class_folder, out=tmp_path / "run", **FAST)
    run = tmp_path / "run"
    assert s["steps"] == 4 and s["skipped"] == [{"path": "dark/broken.png", "reason": s["skipped"][0]["reason"]}]
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
    assert cfg["batch_size"] == 24 and s["optimizer"] == "sgd"  # 24 images: capped, so below 256
    s = pretrain(class_folder, out=tmp_path / "l", **{**FAST, "optimizer": "lars", "max_steps": 1})
    assert s["optimizer"] == "lars"


@pytest.mark.parametrize("bad, match", [
    (dict(batch_size=0), "batch-size"), (dict(max_steps=0), "max-steps"), (dict(tau_base=1.0), "tau-base"),
    (dict(optimizer="adam"), "unknown optimizer"), (dict(model="nope_net"), "unknown model"),
])
def test_bad_arguments(class_folder, tmp_path, bad, match):
    with pytest.raises(SSLProbeError, match=match):
        pretrain(class_folder, out=tmp_path / "x", **{**FAST, **bad})


def test_nan_loss_stops_with_clear_message(class_folder, tmp_path):
    with pytest.raises(SSLProbeError, match="loss became nan"):
        pretrain(class_folder, out=tmp_path / "x", **{**FAST, "lr": float("nan")})
