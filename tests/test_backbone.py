"""Backbones: random/pretrained/file weights, small-image stems, metadata round trip, refusals."""
import os
import re

import numpy as np
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
    loaded, _ = create_backbone("test_resnet", weights=str(tmp_path / "plain.safetensors"))
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


# --- fair random init: no residual branch starts silenced --------------------------------------------------------


def _branch_ends(net: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The norm that closes the residual branch of each timm ResNet block (its output is what the block adds)."""
    from timm.models.resnet import BasicBlock, Bottleneck

    return {n: (m.bn3 if isinstance(m, Bottleneck) else m.bn2) for n, m in net.named_modules()
            if isinstance(m, (BasicBlock, Bottleneck))}


def _branch_outputs(net: torch.nn.Module, size: int) -> dict[str, torch.Tensor]:
    outs: dict[str, torch.Tensor] = {}
    # clone: the block adds its shortcut into this tensor in place
    hooks = [m.register_forward_hook(lambda _m, _i, o, n=n: outs.__setitem__(n, o.clone()))
             for n, m in _branch_ends(net).items()]
    with torch.no_grad():
        net.eval()(torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0)))
    for h in hooks:
        h.remove()
    return outs


@pytest.mark.parametrize("model", ["resnet18", "test_resnet"])
def test_fair_random_init_has_no_silent_residual_branch(model):
    net, _ = create_backbone(model, weights="random", image_size=32, seed=0)
    outs = _branch_outputs(net, 32)
    assert len(outs) == len(_branch_ends(net)) >= 4
    assert [n for n, o in outs.items() if not o.any()] == []


def test_training_init_keeps_timms_zero_init_last():
    # BYOL pretraining starts from timm's init: zeroed branches train faster (Goyal et al. 2017).
    from sslprobe.pretraining.trainstep import RunSpec, build_byol

    net, _ = create_backbone("test_resnet", weights="random", image_size=32, seed=0, init="train")
    assert all(not o.any() for o in _branch_outputs(net, 32).values())
    byol, _, _ = build_byol(RunSpec(model="test_resnet", image_size=16, small_stem=True, proj_hidden=16,
                                           proj_dim=8), device=torch.device("cpu"))
    assert all(not m.weight.any() for m in _branch_ends(byol.backbone).values())


def _silencers(net: torch.nn.Module) -> list[str]:
    """Norm γ, gains and layer scales at (almost) zero: each one silences the residual branch it ends."""
    found = []
    for name, m in net.named_modules():
        for leaf, p in m._parameters.items():
            if p is None or not p.is_floating_point() or p.numel() == 0:
                continue
            # GRN (ConvNeXt V2) is x + γ·…: its zero γ is an identity, not a dead branch
            norm = leaf == "weight" and "Norm" in type(m).__name__ and type(m).__name__ != "GlobalResponseNorm"
            scale = leaf.endswith("gain") or re.fullmatch(r"gamma\w*|ls\d*|layer_scale\w*|scale", leaf)
            if (norm or scale) and p.detach().abs().max() <= 1e-3:
                found.append(f"{name}.{leaf}")
    return found


@pytest.mark.parametrize("model", ["test_resnet", "test_byobnet", "regnetx_002", "test_nfnet", "test_convnext",
                                   "test_vit2", "test_mambaout", "cait_xxs24_224", "levit_128s"])
def test_fair_random_init_leaves_no_norm_gain_or_layer_scale_at_zero(model):
    # ResNet/RegNet/ByobNet zero_init_last, NFNet zero gains, ConvNeXt/DeiT-III/CaiT/MambaOut tiny layer
    # scales, LeViT zeroed BatchNorm γ: the untouched timm init has some in every one of these.
    from sslprobe.backbone import random_backbone

    assert _silencers(timm.create_model(model, pretrained=False, num_classes=0))
    net, _, note = random_backbone(model, seed=0)
    assert _silencers(net) == []
    assert note.startswith("timm default, ") and "\n" not in note


def test_fair_random_init_is_timms_init_but_for_the_silenced_branches():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(4)
        ref = timm.create_model("resnet18", pretrained=False, num_classes=0).state_dict()
    fair = create_backbone("resnet18", weights="random", image_size=224, seed=4)[0].state_dict()
    changed = sorted(k for k in ref if not torch.equal(ref[k], fair[k]))
    assert changed == sorted(f"{n}.bn2.weight" for n in _branch_ends(timm.create_model("resnet18")))
    assert all(torch.equal(fair[k], torch.ones_like(fair[k])) for k in changed)


def _strokes(n_per: int, *, seed: int, size: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST-like: white strokes on black (ring, bar, seven, L) shifted by up to 3 px; shape is all there is."""
    from PIL import Image, ImageDraw

    rng, s = np.random.default_rng(seed), size
    glyphs = [lambda d, w: d.ellipse([s * .3, s * .2, s * .7, s * .8], outline=255, width=w),
              lambda d, w: d.line([s * .5, s * .2, s * .5, s * .8], fill=255, width=w),
              lambda d, w: d.line([s * .3, s * .2, s * .7, s * .2, s * .4, s * .8], fill=255, width=w),
              lambda d, w: d.line([s * .35, s * .2, s * .35, s * .8, s * .7, s * .8], fill=255, width=w)]
    xs, ys = [], []
    for k, draw in enumerate(glyphs):
        for _ in range(n_per):
            im = Image.new("L", (s, s), 0)
            draw(ImageDraw.Draw(im), int(rng.integers(2, 4)))
            shift = tuple(int(v) for v in rng.integers(-3, 4, 2))
            xs.append(torch.from_numpy(np.asarray(im).copy()).float().div(255).roll(shift, (0, 1)).expand(3, -1, -1))
            ys.append(k)
    return (torch.stack(xs) - 0.5) / 0.25, torch.tensor(ys)


def _nearest_centroid(train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor]) -> float:
    (a, ya), (b, yb) = train, test
    mu, sd = a.mean(0), a.std(0) + 1e-6
    a, b = (a - mu) / sd, (b - mu) / sd
    centroids = torch.stack([a[ya == k].mean(0) for k in range(int(ya.max()) + 1)])
    return (torch.cdist(b, centroids).argmin(1) == yb).float().mean().item()


def test_fair_random_features_beat_the_silenced_ones_on_shapes():
    # The silenced ResNet-18 is its 3×3 stem read through 1×1 shortcuts every 8th pixel: here it
    # measured 0.54 nearest-centroid accuracy (chance 0.25), the fair init 0.85.
    (xa, ya), (xb, yb) = _strokes(25, seed=0), _strokes(25, seed=1)
    fair, _ = create_backbone("resnet18", weights="random", image_size=24, seed=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        silenced = timm.create_model("resnet18", pretrained=False, num_classes=0)
        adapt_small_stem(silenced)
    acc = {}
    with torch.no_grad():
        for name, net in (("fair", fair), ("silenced", silenced)):
            acc[name] = _nearest_centroid((net.eval()(xa), ya), (net(xb), yb))
    assert acc["fair"] >= 0.7 and acc["fair"] - acc["silenced"] >= 0.2, acc


# --- trained weights keep the stem they were trained with -----------------------------------------------------------


def _plain_file(tmp_path, net: torch.nn.Module, name: str = "plain.safetensors"):
    """A bare state dict in safetensors, as timm or torchvision users export one (no sslprobe metadata)."""
    path = tmp_path / name
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return path


@pytest.mark.parametrize("size", [64, 32])
def test_plain_timm_resnet18_file_keeps_its_7x7_stem_on_small_images(tmp_path, size):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        ref = timm.create_model("resnet18", pretrained=False).eval()
    net, spec = create_backbone("resnet18", weights=str(_plain_file(tmp_path, ref)), image_size=size)
    assert not spec.small_stem and net.conv1.kernel_size == (7, 7) and isinstance(net.maxpool, torch.nn.MaxPool2d)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert torch.allclose(net.eval()(x), ref.forward_head(ref.forward_features(x), pre_logits=True), atol=1e-5)


def test_plain_file_with_a_small_stem_keeps_it_at_any_size(tmp_path):
    small, _ = create_backbone("resnet18", weights="random", image_size=32, seed=0)
    path = _plain_file(tmp_path, small)
    for size in (32, 224):
        net, spec = create_backbone("resnet18", weights=str(path), image_size=size)
        assert spec.small_stem and net.conv1.kernel_size == (3, 3) and isinstance(net.maxpool, torch.nn.Identity)


def test_stem_that_does_not_fit_the_file_is_a_one_line_error(tmp_path):
    path = _plain_file(tmp_path, timm.create_model("resnet18", pretrained=False))
    with pytest.raises(SSLProbeError, match=r"was trained with the standard 7×7 stem; drop --small-stem$"):
        create_backbone("resnet18", weights=str(path), image_size=32, small_stem=True)
    assert not create_backbone("resnet18", weights=str(path), image_size=32, small_stem=False)[1].small_stem
    net, spec = create_backbone("test_resnet", weights="random", image_size=32)
    save_backbone(net, spec, tmp_path / "b.safetensors")
    with pytest.raises(SSLProbeError, match="trained with the small-image stem; drop --no-small-stem"):
        create_backbone(None, weights=str(tmp_path / "b.safetensors"), small_stem=False)


def test_deep_stem_plain_file_follows_the_request(tmp_path):
    # A deep stem (test_resnet) only loses its max-pool: no tensor shape shows which one a file had.
    path = _plain_file(tmp_path, timm.create_model("test_resnet", pretrained=False))
    assert not create_backbone("test_resnet", weights=str(path), image_size=32)[1].small_stem
    net, spec = create_backbone("test_resnet", weights=str(path), image_size=32, small_stem=True)
    assert spec.small_stem and isinstance(net.maxpool, torch.nn.Identity)


def test_pretrained_keeps_its_stem_on_small_images(tmp_path, monkeypatch):
    import huggingface_hub.constants as hc

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    ref = timm.create_model("test_resnet", pretrained=False)
    _fake_hub_cache(tmp_path, ref.pretrained_cfg["hf_hub_id"], {k: v.contiguous() for k, v in ref.state_dict().items()})
    net, spec = create_backbone("test_resnet", weights="pretrained", image_size=32)
    assert not spec.small_stem and isinstance(net.maxpool, torch.nn.MaxPool2d)
    with pytest.raises(SSLProbeError, match="pretrained test_resnet was trained with the standard stem; drop --small"):
        create_backbone("test_resnet", weights="pretrained", image_size=32, small_stem=True)


def test_stem_decision():
    from sslprobe.backbone import stem_for_weights

    assert stem_for_weights(requested=None, trained=False, source="w") is False
    assert stem_for_weights(requested=None, trained=True, source="w") is True
    assert stem_for_weights(requested=True, trained=None, source="w") is True  # the file cannot tell
    assert stem_for_weights(requested=None, trained=None, source="w") is False
    with pytest.raises(SSLProbeError, match="drop --no-small-stem"):
        stem_for_weights(requested=False, trained=True, source="w")
    assert create_backbone("test_resnet", weights="random", image_size=96, small_stem=True)[1].small_stem
    assert not create_backbone("test_resnet", weights="random", image_size=32, small_stem=False)[1].small_stem


def test_small_stem_random_backbone_leaves_global_rng_alone():
    torch.manual_seed(5)
    before = torch.random.get_rng_state()
    create_backbone("resnet18", weights="random", image_size=32, seed=0)
    assert torch.equal(torch.random.get_rng_state(), before)
