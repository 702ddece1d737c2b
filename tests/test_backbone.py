"""Backbones: random/pretrained/file weights, small-image stems, metadata round trip, refusals."""
import os

import pytest
import timm
import torch
from safetensors.torch import save_file

from sslprobe.backbone import (
    adapt_small_stem,
    create_backbone,
    eval_transform,
    read_weights,
    save_backbone,
)
from sslprobe.errors import SSLProbeError


def test_random_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a, _ = create_backbone("test_resnet", weights="random", seed=1)
    assert torch.equal(torch.random.get_rng_state(), before)
    b, _ = create_backbone("test_resnet", weights="random", seed=1)
    c, _ = create_backbone("test_resnet", weights="random", seed=2)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["layer1.0.conv1.weight"], sc["layer1.0.conv1.weight"])


def test_small_images_get_small_stem_and_keep_resolution():
    net, spec = create_backbone("test_resnet", weights="random", image_size=32)
    assert spec.small_stem and spec.image_size == 32
    assert isinstance(net.maxpool, torch.nn.Identity)  # deep stem: only the max-pool goes
    fmap = net.forward_features(torch.randn(2, 3, 32, 32))
    plain = timm.create_model("test_resnet", num_classes=0).forward_features(torch.randn(2, 3, 32, 32))
    assert plain.shape[-1] == 1 and fmap.shape[-1] == 2  # the default stem collapses to 1×1
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, net.num_features)
    _, big = create_backbone("test_resnet", weights="random", image_size=96)
    assert not big.small_stem


def test_plain_conv_stem_is_replaced_by_3x3_stride1():
    net = timm.create_model("resnet18", pretrained=False, num_classes=0)
    assert adapt_small_stem(net)
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1)


def test_models_without_resnet_stem_are_left_alone():
    net, spec = create_backbone("test_vit", weights="random", image_size=32)
    assert not spec.small_stem
    assert net(torch.randn(1, 3, 32, 32)).shape == (1, net.num_features)


def test_unknown_model_is_a_clear_error():
    with pytest.raises(SSLProbeError, match="unknown model 'resnet_nope'"):
        create_backbone("resnet_nope", weights="random")


def test_saved_backbone_rebuilds_without_model_name(tmp_path):
    net, spec = create_backbone("test_resnet", weights="random", image_size=32, seed=3)
    save_backbone(net, spec, tmp_path / "b.safetensors")
    again, spec2 = create_backbone(None, weights=str(tmp_path / "b.safetensors"))
    assert spec2 == spec
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(net.eval()(x), again.eval()(x))
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_plain_timm_state_dict_needs_model(tmp_path):
    net = timm.create_model("test_resnet", pretrained=False)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(SSLProbeError, match="--model"):
        create_backbone(None, weights=str(tmp_path / "plain.safetensors"))
    loaded, spec = create_backbone("test_resnet", weights=str(tmp_path / "plain.safetensors"))
    assert torch.equal(loaded.state_dict()["layer1.0.conv1.weight"], net.state_dict()["layer1.0.conv1.weight"])
    with pytest.raises(SSLProbeError, match="does not fit"):
        create_backbone("resnet18", weights=str(tmp_path / "plain.safetensors"))


@pytest.mark.parametrize("content", [b"", b"not safetensors at all", b"\xff" * 8 + b"{}"])
def test_bad_safetensors_is_refused(tmp_path, content):
    p = tmp_path / "w.safetensors"
    p.write_bytes(content)
    with pytest.raises(SSLProbeError, match="not a valid safetensors"):
        create_backbone("test_resnet", weights=str(p))


def test_pickle_needs_flag_and_loads_weights_only(tmp_path):
    net = timm.create_model("test_resnet", pretrained=False)
    torch.save(net.state_dict(), tmp_path / "w.pth")
    with pytest.raises(SSLProbeError, match="--allow-pickle"):
        read_weights(tmp_path / "w.pth")
    state, _ = read_weights(tmp_path / "w.pth", allow_pickle=True)
    assert "conv1.0.weight" in state

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"x": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(SSLProbeError, match="weights_only"):
        read_weights(tmp_path / "evil.pt", allow_pickle=True)


def test_missing_weights_file(tmp_path):
    with pytest.raises(SSLProbeError, match="not found"):
        create_backbone("test_resnet", weights=str(tmp_path / "nope.safetensors"))


def _fake_hub_cache(root, repo: str, state: dict) -> None:
    base = root / "hub" / f"models--{repo.replace('/', '--')}"
    rev = "0" * 40
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(rev)
    (base / "snapshots" / rev).mkdir(parents=True)
    save_file(state, str(base / "snapshots" / rev / "model.safetensors"))


def test_pretrained_loads_from_hub_cache_offline(tmp_path, monkeypatch):
    """The real timm hub path, fed from a local Hugging Face cache (as after a first online run)."""
    import huggingface_hub.constants as hc

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    ref = timm.create_model("test_resnet", pretrained=False)
    torch.manual_seed(7)
    state = {k: (torch.randn_like(v) if v.is_floating_point() else v).contiguous() for k, v in ref.state_dict().items()}
    _fake_hub_cache(tmp_path, ref.pretrained_cfg["hf_hub_id"], state)
    net, spec = create_backbone("test_resnet", weights="pretrained")
    assert torch.equal(net.state_dict()["conv1.0.weight"], state["conv1.0.weight"])
    assert spec.image_size == 160 and spec.mean == (0.5, 0.5, 0.5)


def test_pretrained_offline_without_cache_is_one_line_error(tmp_path, monkeypatch):
    import huggingface_hub.constants as hc

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    with pytest.raises(SSLProbeError) as e:
        create_backbone("test_resnet", weights="pretrained")
    assert "--weights random" in str(e.value) and "\n" not in str(e.value)


def test_eval_transform_uses_spec():
    _, spec = create_backbone("test_resnet", weights="random", image_size=40)
    from PIL import Image

    x = eval_transform(spec)(Image.new("RGB", (60, 50), (255, 0, 0)))
    assert x.shape == (3, 40, 40)
    assert x[0].mean().item() == pytest.approx((1 - 0.5) / 0.5, abs=1e-3)
