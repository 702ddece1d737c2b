"""starts: one reading of --weights/--init, one backbone per start, pinned down by hub weights or file sha256."""
import hashlib

import pytest
import torch

from sslprobe.backbone import random_backbone, save_backbone
from sslprobe.errors import SSLProbeError
from sslprobe.starts import Start, open_start, parse_start


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_parse_names_a_start_or_a_file():
    assert parse_start("random") == Start("random") and parse_start("pixels") == Start("pixels")
    assert parse_start("random-rescaled", names=("random", "pretrained")) == Start("file", "random-rescaled")
    assert parse_start("w/b.safetensors") == Start("file", weights="w/b.safetensors")
    assert [Start(k).trained for k in ("random", "random-rescaled", "pretrained", "file")] == [False, False, True, True]


def test_random_start_takes_the_callers_init():
    fair = open_start(Start("random"), model="test_resnet", image_size=16, seed=2, random_init="fair")
    train = open_start(Start("random"), model="test_resnet", image_size=16, seed=2, random_init="train")
    rescaled = open_start(Start("random-rescaled"), model="test_resnet", image_size=16, seed=2, random_init="train")
    assert _same(fair.net, random_backbone("test_resnet", image_size=16, seed=2, init="fair")[0])
    assert _same(train.net, random_backbone("test_resnet", image_size=16, seed=2, init="train")[0])
    assert _same(rescaled.net, fair.net) and not _same(train.net, fair.net)  # rescaled starts from the fair init
    assert fair.note.startswith("timm default, zero_init_last off") and fair.start == Start("random")
    assert fair.spec.model == "test_resnet" and fair.spec.small_stem and fair.hub_tag is None


def test_file_start_is_pinned_by_path_and_sha256_and_reopens(tmp_path, monkeypatch):
    net, spec, _ = random_backbone("test_resnet", image_size=16, seed=5, init="train")
    save_backbone(net, spec, tmp_path / "b.safetensors")
    monkeypatch.chdir(tmp_path)
    opened = open_start(parse_start("b.safetensors"), model=None)
    sha = hashlib.sha256((tmp_path / "b.safetensors").read_bytes()).hexdigest()
    assert opened.start == Start("file", weights=str((tmp_path / "b.safetensors").resolve()), sha256=sha)
    assert opened.start.trained and _same(opened.net, net) and opened.spec == spec
    again = open_start(opened.start, model=None)  # a recorded start (config.json) builds the same backbone
    assert again.start == opened.start and _same(again.net, net)


def test_refusals_name_the_flag(tmp_path):
    with pytest.raises(SSLProbeError, match="--init random needs --model"):
        open_start(Start("random"), model=None, flag="--init")
    with pytest.raises(SSLProbeError, match="pixels has no network"):
        open_start(Start("pixels"), model="test_resnet")
    torch.save(random_backbone("test_resnet", image_size=16)[0].state_dict(), tmp_path / "w.pt")
    with pytest.raises(SSLProbeError, match="pickle"):
        open_start(parse_start(str(tmp_path / "w.pt")), model="test_resnet")
    assert open_start(parse_start(str(tmp_path / "w.pt")), model="test_resnet", allow_pickle=True).start.sha256
