"""`sslprobe views` draws what pretraining draws; grey images keep one channel through pretraining and extraction."""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from sslprobe.errors import SSLProbeError
from sslprobe.pretraining.pretrain import pretrain
from sslprobe.pretraining.preview import draw_views
from tests.clirun import run

FAST = {"model": "test_resnet", "image_size": 16, "batch_size": 6, "max_steps": 2, "proj_hidden": 32, "proj_dim": 16,
        "workers": 0, "show_progress": False, "log_every": 1}


def _photos(root, n=10, size=(40, 30), grey=False):
    """Non-square noisy images (width × height ``size``), grey ones saved as RGB files."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        a = rng.integers(0, 255, (size[1], size[0], 1 if grey else 3), dtype=np.uint8)
        Image.fromarray(np.repeat(a, 3, 2) if grey else a).save(root / f"{i:02d}.png")
    return root


def _grey_classes(root):
    for c, base in (("dark", 60), ("light", 190)):
        d = root / c
        d.mkdir(parents=True)
        rng = np.random.default_rng(c == "light")
        for i in range(6):
            Image.fromarray(rng.normal(base, 20, (20, 24)).clip(0, 255).astype(np.uint8), "L").save(d / f"{i}.png")
    return root


@pytest.mark.parametrize("step", [0, 3])
def test_the_preview_draws_the_views_pretraining_trains_on(tmp_path, monkeypatch, step):
    import sslprobe.pretraining.trainstep as ts

    data = _photos(tmp_path / "photos")
    seen = {}
    real = ts.TrainStep.model_step

    def keep(self, v1, v2, s):
        seen.setdefault(s, (v1.clone(), v2.clone(), self.make_views.mean, self.make_views.std))
        return real(self, v1, v2, s)

    monkeypatch.setattr(ts.TrainStep, "model_step", keep)
    augment = {"rot90_p": 0.75, "vflip_p": 0.5, "crop_scale": (0.2, 1.0)}
    pretrain(data, out=tmp_path / "run", augment=augment, seed=4, **{**FAST, "max_steps": step + 1})
    pairs = draw_views(data, n=4, model="test_resnet", image_size=16, batch_size=6, step=step, seed=4,
                       augment=augment)
    v1, v2, mean, std = seen[step]
    m, s = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
    assert pairs.view1.shape == (4, 3, 16, 16) and pairs.store_size == 32  # 40 px long side, capped at 2 × 16
    assert torch.allclose(pairs.view1, v1[:4] * s + m, atol=1e-5) and torch.allclose(pairs.view2, v2[:4] * s + m,
                                                                                       atol=1e-5)
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["store_size"] == 32 and cfg["views"][0]["rot90_p"] == 0.75 and cfg["views"][1]["vflip_p"] == 0.5


def test_views_command_writes_the_figure_and_refuses_bad_input(tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    data = _photos(tmp_path / "photos")
    code, _, err = run(monkeypatch, capsys, "views", data, "--out", tmp_path / "v.png", "--model", "test_resnet",
                       "--image-size", "16", "--batch-size", "6", "--n", "3", "--rot90-p", "0.75", "--grayscale")
    assert code == 2 and "'00.png' is in colour" in err and "drop --grayscale" in err and len(err.splitlines()) == 1
    code, _, err = run(monkeypatch, capsys, "views", data, "--out", tmp_path / "v.png", "--model", "test_resnet",
                       "--image-size", "16", "--batch-size", "6", "--n", "3", "--rot90-p", "0.75")
    assert code == 0 and "3 view pairs of step 0" in err and "32 px store" in err
    assert Image.open(tmp_path / "v.png").size[1] > 300
    for bad, needle in ((["--n", "0"], "--n must be ≥ 1"), (["--vflip-p", "1.5"], "--vflip-p is a probability"),
                        (["--step", "-1"], "--step must be ≥ 0")):
        code, _, err = run(monkeypatch, capsys, "views", data, "--out", tmp_path / "w.png", *bad)
        assert code == 2 and needle in err and not (tmp_path / "w.png").exists()


def test_grey_images_keep_one_channel_through_pretraining_and_extraction(tmp_path, monkeypatch, capsys):
    from sslprobe.backbone import create_backbone
    from sslprobe.extraction.extract import extract

    data = _grey_classes(tmp_path / "grey")
    s = pretrain(data, out=tmp_path / "run", grayscale=True, eval_train=data, eval_test=data, **FAST)
    assert s.status == "complete" and s.knn_top1 is not None  # the kNN monitor reads one channel too
    assert json.loads((tmp_path / "run" / "config.json").read_text())["in_chans"] == 1
    weights = tmp_path / "run" / "backbone.safetensors"
    with safe_open(str(weights), framework="pt") as f:
        assert json.loads(f.metadata()["in_chans"]) == 1 and f.get_tensor("conv1.0.weight").shape[1] == 1
    net, spec = create_backbone(None, weights=str(weights))
    assert spec.in_chans == 1 and len(spec.mean) == 1 and net(torch.randn(2, 1, 16, 16)).shape[0] == 2
    m = extract(data, out=tmp_path / "feats", weights=str(weights), workers=0, show_progress=False)
    assert m.counts.embedded == 12 and m.preprocessing["in_chans"] == 1
    pairs = draw_views(data, n=2, model="test_resnet", image_size=16, batch_size=6, grayscale=True)
    assert pairs.stored.shape[1] == 1 and pairs.view1.shape == (2, 1, 16, 16)
    with pytest.raises(SSLProbeError, match="backbone for grey images; add --grayscale"):
        pretrain(data, out=tmp_path / "again", init=str(weights), **FAST)


def test_grayscale_on_colour_images_is_one_line_saying_what_to_do(tmp_path, monkeypatch, capsys):
    data = _photos(tmp_path / "photos")
    _photos(tmp_path / "mixed", grey=True)
    Image.fromarray(np.full((30, 40, 3), (200, 30, 30), np.uint8)).save(tmp_path / "mixed" / "05.png")  # one in colour
    for folder, name in ((data, "00.png"), (tmp_path / "mixed", "05.png")):
        code, _, err = run(monkeypatch, capsys, "pretrain", folder, "--out", tmp_path / "r", "--model", "test_resnet",
                           "--image-size", "16", "--max-steps", "1", "--grayscale")
        assert code == 2 and f"'{name}' is in colour" in err and "drop --grayscale, or convert the images" in err
        assert len(err.strip().splitlines()) == 1 and not (tmp_path / "r").exists()
