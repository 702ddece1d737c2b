"""RUN_DIR/backbone.safetensors is a plain timm state dict: timm, load_state_dict and `extract` all load it."""
import pytest
import timm
import torch
from safetensors.torch import load_file

from sslprobe.backbone import adapt_small_stem
from sslprobe.pretraining.pretrain import pretrain
from tests.test_pretrain import FAST


def _trained(class_folder, tmp_path, size, model="test_resnet"):
    run = tmp_path / f"run{size}{model}"
    pretrain(class_folder, out=run, **{**FAST, "image_size": size, "max_steps": 2, "model": model})
    return run / "backbone.safetensors"


def test_timm_pretrained_cfg_overlay_loads_a_normal_stem_backbone(class_folder, tmp_path):
    path = _trained(class_folder, tmp_path, 72)  # > 64 px: the model keeps timm's own stem
    net = timm.create_model("test_resnet", pretrained=True, num_classes=0, pretrained_cfg_overlay={"file": str(path)})
    saved = load_file(str(path))
    state = net.state_dict()
    assert set(state) == set(saved)
    assert all(torch.equal(state[k], saved[k]) for k in saved)
    fresh = timm.create_model("test_resnet", pretrained=False, num_classes=0)
    assert not torch.equal(fresh.state_dict()["layer1.0.conv1.weight"], saved["layer1.0.conv1.weight"])


@pytest.mark.parametrize("model, conv_stem", [("test_resnet", False), ("resnet18", True)])
def test_small_stem_backbone_loads_strictly_after_the_same_stem_change(class_folder, tmp_path, model, conv_stem):
    path = _trained(class_folder, tmp_path, 16, model)
    saved = load_file(str(path))
    net = timm.create_model(model, pretrained=False, num_classes=0)
    if conv_stem:  # the 7×7 stride-2 conv became 3×3 stride-1: shapes differ without the same change
        with pytest.raises(RuntimeError, match="conv1.weight"):
            net.load_state_dict(saved, strict=True)
    assert adapt_small_stem(net)
    net.load_state_dict(saved, strict=True)
    assert net.eval()(torch.randn(2, 3, 16, 16)).shape == (2, net.num_features)


def test_extract_reads_the_backbone(class_folder, tmp_path):
    from sslprobe.extraction.extract import extract

    path = _trained(class_folder, tmp_path, 16)
    m = extract(class_folder, out=tmp_path / "feats", weights=str(path), device="cpu", workers=0, show_progress=False)
    assert m.counts.embedded == 24 and m.dim == 96
