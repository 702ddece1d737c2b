"""Where pretraining starts (--init random|pretrained|FILE), the defaults fitted to the run, and BYOL on a ViT.

Offline throughout: hub weights come from a fake local Hugging Face cache, files are written here.
"""
import json

import pytest
import timm
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from sslprobe.backbone import create_backbone, has_batchnorm
from sslprobe.errors import SSLProbeError
from sslprobe.fileio import file_sha256
from sslprobe.pretraining import pretrain as pm
from sslprobe.pretraining.pretrain import pretrain
from sslprobe.pretraining.recipe import BYOL_PRESETS, fit_defaults, nearest_preset, pick_optimizer
from tests.clirun import run
from tests.test_backbone import _fake_hub_cache
from tests.test_pretrain import FAST


def _plain_file(tmp_path, model="test_resnet", seed=7, **kw):
    """A timm state dict in safetensors, as a user exports one (no sslprobe metadata), with non-default weights."""
    net = timm.create_model(model, pretrained=False, num_classes=0, **kw)
    torch.manual_seed(seed)
    params = dict(net.named_parameters())  # new weights; BatchNorm statistics stay valid
    state = {k: (v + 0.05 * torch.randn_like(v) if k in params else v).contiguous()
             for k, v in net.state_dict().items()}
    path = tmp_path / f"{model}-{seed}.safetensors"
    save_file(state, str(path))
    return path, state


def _capture_step0(monkeypatch):
    """The online and target backbones exactly as build_byol hands them to the loop (before any step)."""
    seen = {}
    real = pm.build_byol

    def spy(cfg, **kw):
        net, opt, spec = real(cfg, **kw)
        seen["online"] = {k: v.clone() for k, v in net.backbone.state_dict().items()}
        seen["target"] = {k: v.clone() for k, v in net.target_backbone.state_dict().items()}
        seen["groups"] = [(len(g["params"]), g["lr_scale"]) for g in opt.param_groups]
        return net, opt, spec

    monkeypatch.setattr(pm, "build_byol", spy)
    return seen


def _same(a, b):
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_init_file_starts_both_networks_from_it_and_training_moves_them(class_folder, tmp_path, monkeypatch):
    path, state = _plain_file(tmp_path)
    seen = _capture_step0(monkeypatch)
    run_dir = tmp_path / "run"
    pretrain(class_folder, out=run_dir, init=str(path), **{**FAST, "image_size": 32})
    assert _same(seen["online"], state) and _same(seen["target"], state)
    # the heads train at the full rate, the trained backbone at 0.1× (its groups come after the heads')
    assert [s for _, s in seen["groups"]] == [1.0, 1.0, 0.1, 0.1]
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["start"] == {"init": "file", "weights": str(path.resolve()), "sha256": file_sha256(path)}
    assert cfg["backbone_lr_scale"] == 0.1 and not cfg["small_stem"]  # the file's standard (deep) stem is kept
    assert "backbone lr scale 0.1 (trained init" in cfg["defaults"]
    out = run_dir / "backbone.safetensors"
    trained = load_file(str(out))
    assert not torch.equal(trained["layer1.0.conv1.weight"], state["layer1.0.conv1.weight"])
    with safe_open(str(out), framework="pt") as f:
        assert json.loads(f.metadata()["init"]) == cfg["start"]
    # the export loads with timm alone and with extract --weights
    net = timm.create_model("test_resnet", pretrained=True, num_classes=0, pretrained_cfg_overlay={"file": str(out)})
    assert _same(net.state_dict(), trained)
    from sslprobe.extraction.extract import extract

    m = extract(class_folder, out=tmp_path / "feats", weights=str(out), device="cpu", workers=0, show_progress=False)
    assert m.counts.embedded == 24


def test_init_from_an_earlier_run_is_a_new_run_with_its_model_and_stem(class_folder, tmp_path, monkeypatch):
    first = tmp_path / "first"
    pretrain(class_folder, out=first, **FAST)  # 16 px: small stem, test_resnet
    earlier = load_file(str(first / "backbone.safetensors"))
    seen = _capture_step0(monkeypatch)
    kw = {k: v for k, v in FAST.items() if k not in ("model", "image_size")}
    s = pretrain(class_folder, out=tmp_path / "second", init=str(first / "backbone.safetensors"), **kw)
    assert _same(seen["online"], earlier) and _same(seen["target"], earlier)
    assert s.model == "test_resnet" and s.image_size == 16 and s.small_stem and s.resumed_from is None
    with pytest.raises(SSLProbeError, match="holds a test_resnet backbone but --model resnet18 was given; drop"):
        pretrain(class_folder, out=tmp_path / "x", init=str(first / "backbone.safetensors"), model="resnet18", **kw)
    with pytest.raises(SSLProbeError, match="trained with the small-image stem; drop --no-small-stem"):
        pretrain(class_folder, out=tmp_path / "x", init=str(first / "backbone.safetensors"), small_stem=False, **kw)


def test_resume_checks_the_init_file(class_folder, tmp_path):
    path, _ = _plain_file(tmp_path)
    kw = {**FAST, "image_size": 32}
    pretrain(class_folder, out=tmp_path / "r", init=str(path), stop_at=2, **kw)
    _plain_file(tmp_path, seed=8)[0].replace(path)  # other weights under the same name
    with pytest.raises(SSLProbeError, match=r"differs in 1 key\(s\): start\.sha256"):
        pretrain(class_folder, out=tmp_path / "r", init=str(path), resume="yes", **kw)
    with pytest.raises(SSLProbeError, match=r"start\.init: 'file' → 'random'"):
        pretrain(class_folder, out=tmp_path / "r", resume="yes", **kw)


def _hub(tmp_path, monkeypatch, cached=True):
    import huggingface_hub.constants as hc

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    ref = timm.create_model("test_resnet", pretrained=False)
    torch.manual_seed(3)
    params = dict(ref.named_parameters())
    state = {k: (v + 0.05 * torch.randn_like(v) if k in params else v).contiguous()
             for k, v in ref.state_dict().items()}
    if cached:
        _fake_hub_cache(tmp_path, ref.pretrained_cfg["hf_hub_id"], state)
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


def test_init_pretrained_from_the_hub_cache_keeps_its_stem(class_folder, tmp_path, monkeypatch):
    state = _hub(tmp_path, monkeypatch)
    seen = _capture_step0(monkeypatch)
    s = pretrain(class_folder, out=tmp_path / "r", init="pretrained", **{**FAST, "image_size": 32})
    assert _same(seen["online"], state) and not s.small_stem  # a pretrained stem is kept, even at 32 px
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    assert cfg["start"] == {"init": "pretrained", "weights": "timm/test_resnet.r160_in1k", "sha256": None}
    with pytest.raises(SSLProbeError, match="pretrained test_resnet was trained with the standard stem; drop"):
        pretrain(class_folder, out=tmp_path / "x", init="pretrained", small_stem=True, **{**FAST, "image_size": 32})


def test_hub_weights_not_available_offline_is_one_line_saying_what_to_do(tmp_path, monkeypatch):
    _hub(tmp_path, monkeypatch, cached=False)
    with pytest.raises(SSLProbeError) as e:
        create_backbone("test_resnet", weights="pretrained", flag="--init")
    msg = str(e.value)
    assert "not available offline" in msg and "--init FILE.safetensors" in msg and "\n" not in msg
    # without HF_HUB_OFFLINE an unreachable hub fails at once too, not after huggingface_hub's retries
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr("sslprobe.backbone.hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(SSLProbeError, match="not available offline"):
        create_backbone("test_resnet", weights="pretrained")
    with pytest.raises(SSLProbeError, match="timm has no pretrained weights for 'botnet50ts_256'; use --init random"):
        create_backbone("botnet50ts_256", weights="pretrained", flag="--init")


@pytest.mark.parametrize("args, needle", [
    (["--init", "{missing}"], "is not random, pretrained or an existing file"),
    (["--init", "{pickle}"], "is a pickle file"),
    (["--init", "{plain}", "--model", "resnet18"], "does not fit resnet18"),
    (["--init", "pretrained"], "not available offline"),
])
def test_cli_bad_init_is_one_line_exit_2(monkeypatch, capsys, class_folder, tmp_path, args, needle):
    _hub(tmp_path, monkeypatch, cached=False)
    (tmp_path / "w.pth").write_bytes(b"not really")
    paths = {"missing": tmp_path / "nope.safetensors", "pickle": tmp_path / "w.pth",
             "plain": _plain_file(tmp_path)[0]}
    args = [a.format(**paths) for a in args]
    code, _, err = run(monkeypatch, capsys, "pretrain", class_folder, "--out", tmp_path / "r", "--model",
                       "test_resnet", "--max-steps", "1", "--workers", "0", *args)
    lines = [x for x in err.splitlines() if x.strip()]
    assert code == 2 and needle in err and len(lines) == 1, err


def test_cli_prints_and_records_the_fitted_values(monkeypatch, capsys, class_folder, tmp_path):
    code, _, err = run(monkeypatch, capsys, "pretrain", class_folder, "--out", tmp_path / "r", "--model",
                       "test_resnet", "--image-size", "16", "--batch-size", "8", "--max-steps", "2",
                       "--proj-hidden", "32", "--proj-dim", "16", "--workers", "0", "--tau-base", "0.98")
    line = next(x for x in err.splitlines() if x.startswith("pretrain: "))
    assert code == 0 and "sgd" in line and "base lr 0.06 (lightly's BYOL example)" in line
    assert "τ_base 0.98 (given)" in line and "weight decay 1e-06 (BYOL's 40-epoch preset)" in line
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    assert cfg["defaults"] == line.removeprefix("pretrain: ") and cfg["tau_base"] == 0.98
    assert cfg["weight_decay"] == 1e-6 and cfg["base_lr"] == 0.06


# --- the defaults that follow the run ---------------------------------------------------------------------------

@pytest.mark.parametrize("epochs, preset", [(1, 40), (40, 40), (63, 40), (64, 100), (100, 100), (200, 300),
                                            (300, 300), (547, 300), (548, 1000), (1000, 1000), (5000, 1000)])
def test_nearest_preset_on_a_log_scale(epochs, preset):
    assert nearest_preset(epochs).epochs == preset


def test_fitted_defaults_follow_the_official_presets():
    lars = {p.epochs: fit_defaults(optimizer="lars", epochs=p.epochs, trained=False) for p in BYOL_PRESETS}
    assert [(d.base_lr, d.weight_decay, d.tau_base) for d in lars.values()] == [
        (0.45, 1e-6, 0.97), (0.45, 1e-6, 0.99), (0.3, 1e-6, 0.99), (0.2, 1.5e-6, 0.996)]
    assert {d.warmup_epochs for d in lars.values()} == {10.0} and {d.backbone_lr_scale for d in lars.values()} == {1.0}
    assert "BYOL's 100-epoch preset" in lars[100].note and lars[100].note.startswith("lars for a 100-epoch run")
    sgd = fit_defaults(optimizer="sgd", epochs=1000, trained=True)
    assert (sgd.base_lr, sgd.tau_base, sgd.backbone_lr_scale) == (0.06, 0.996, 0.1)
    vit = fit_defaults(optimizer="adamw", epochs=300, trained=False)
    assert (vit.base_lr, vit.weight_decay, vit.tau_base, vit.warmup_epochs) == (1.5e-4, 0.1, 0.99, 40.0)


def test_given_values_always_win():
    d = fit_defaults(optimizer="lars", epochs=100, trained=True, lr=0.3, weight_decay=0.0, tau_base=0.9,
                     warmup_epochs=0.0, backbone_lr_scale=1.0)
    assert (d.base_lr, d.weight_decay, d.tau_base, d.warmup_epochs, d.backbone_lr_scale) == (0.3, 0.0, 0.9, 0.0, 1.0)
    assert d.note.count("(given)") == 5


def test_run_config_fits_the_schedule_length_and_records_the_start(tmp_path):
    from sslprobe.config.pretrain import PretrainConfig
    from sslprobe.distributed import Dist
    from sslprobe.pretraining.augment import byol_views
    from sslprobe.pretraining.trainstep import run_config
    from sslprobe.starts import Start

    _, spec = create_backbone("test_resnet", weights="random", image_size=16)
    options = PretrainConfig(data=str(tmp_path), out=tmp_path, epochs=100, proj_hidden=32, proj_dim=16, seed=1)
    kw = {"options": options, "spec": spec, "batch": 64, "steps_per_epoch": 10, "device": torch.device("cpu"),
          "max_steps": None, "views": byol_views(16)}
    cfg = run_config(dist=Dist(world=4), **kw)  # global batch 256: LARS, BYOL's 100-epoch preset
    assert (cfg.optimizer, cfg.base_lr, cfg.weight_decay, cfg.tau_base, cfg.warmup_steps) == (
        "lars", 0.45, 1e-6, 0.99, 100)
    assert cfg.lr == pytest.approx(0.45) and cfg.start == Start() and cfg.backbone_lr_scale == 1.0
    long = run_config(dist=Dist(world=4), **{**kw, "max_steps": 10_000})  # 1000 epochs by steps
    assert (long.base_lr, long.weight_decay, long.tau_base) == (0.2, 1.5e-6, 0.996)
    vit = run_config(dist=Dist(), batchnorm=False, start=Start("pretrained", "timm/x"), **kw)
    assert (vit.optimizer, vit.base_lr, vit.weight_decay, vit.backbone_lr_scale) == ("adamw", 1.5e-4, 0.1, 0.1)
    assert vit.warmup_steps == round(100 * 40 / 300 * 10)


# --- ViTs ----------------------------------------------------------------------------------------------------------

def test_auto_optimizer_reads_batchnorm_from_the_model():
    assert has_batchnorm(timm.create_model("test_resnet", num_classes=0))
    assert not has_batchnorm(timm.create_model("test_vit", num_classes=0))
    assert pick_optimizer("auto", batch=4096, batchnorm=False) == "adamw"
    assert pick_optimizer("auto", batch=4096, batchnorm=True) == "lars"
    assert pick_optimizer("sgd", batch=8, batchnorm=False) == "sgd"  # an explicit choice wins


def test_byol_on_a_vit_end_to_end(class_folder, tmp_path):
    kw = {**FAST, "model": "test_vit", "image_size": 32}
    s = pretrain(class_folder, out=tmp_path / "vit", **kw)
    cfg = json.loads((tmp_path / "vit" / "config.json").read_text())
    assert s.status == "complete" and s.optimizer == "adamw" and not s.small_stem
    assert cfg["base_lr"] == 1.5e-4 and cfg["weight_decay"] == 0.1
    out = tmp_path / "vit" / "backbone.safetensors"
    trained = load_file(str(out))
    fresh = create_backbone("test_vit", weights="random", init="train", image_size=32)[0].state_dict()
    assert any(not torch.equal(trained[k], fresh[k]) for k in trained)
    net = timm.create_model("test_vit", pretrained=True, num_classes=0, img_size=32,
                            pretrained_cfg_overlay={"file": str(out)})
    assert _same(net.state_dict(), trained)
    from sslprobe.extraction.extract import extract

    m = extract(class_folder, out=tmp_path / "feats", weights=str(out), device="cpu", workers=0, show_progress=False)
    assert m.counts.embedded == 24 and m.dim == net.num_features
    # and a new run from it: the ViT's weights are its start
    s2 = pretrain(class_folder, out=tmp_path / "vit2", init=str(out), **{**FAST, "model": None, "image_size": None})
    assert s2.model == "test_vit" and s2.image_size == 32


def test_the_backbone_runs_at_its_scale_of_the_scheduled_rate():
    from sslprobe.pretraining.trainstep import RunSpec, TrainStep, build_byol

    cfg = RunSpec(model="test_resnet", image_size=16, small_stem=True, proj_hidden=32, proj_dim=16,
                         optimizer="sgd", lr=0.1, total_steps=10, backbone_lr_scale=0.1)
    net, opt, spec = build_byol(cfg, device=torch.device("cpu"))
    backbone = {id(p) for p in net.backbone.parameters()}
    assert all((id(p) in backbone) == (g["lr_scale"] == 0.1) for g in opt.param_groups for p in g["params"])
    step = TrainStep(net, opt, cfg=cfg, spec=spec, device=torch.device("cpu"))
    step.model_step(torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16), 3)
    heads, slow = {g["lr"] for g in opt.param_groups[:2]}, {g["lr"] for g in opt.param_groups[2:]}
    assert len(heads) == len(slow) == 1 and slow.pop() == pytest.approx(0.1 * heads.pop())
