"""Extraction: features equal a direct timm forward; manifest; pixels; bad files; errors."""
import json

import pytest
import torch
from safetensors.torch import load_file

from sslprobe.backbone import create_backbone, eval_transform
from sslprobe.data import open_images
from sslprobe.errors import SSLProbeError
from sslprobe.extract import extract

FAST = dict(workers=0, show_progress=False, batch_size=5)


def test_features_equal_direct_forward(class_folder, tmp_path):
    m = extract(class_folder, out=tmp_path / "f", model="test_resnet", weights="random", image_size=32, seed=3, **FAST)
    t = load_file(str(tmp_path / "f" / "features.safetensors"))
    assert t["features"].shape == (24, 96) and t["labels"].tolist() == [0] * 12 + [1] * 12
    net, spec = create_backbone("test_resnet", weights="random", image_size=32, seed=3)
    images, tf = open_images(class_folder), eval_transform(spec)
    with torch.no_grad():
        direct = net.eval()(torch.stack([tf(images.read(i)) for i in range(len(images))]))
    assert torch.allclose(t["features"], direct, atol=1e-5)
    saved = json.loads((tmp_path / "f" / "manifest.json").read_text())
    assert saved == json.loads(json.dumps(m))
    assert m["paths"][0] == "dark/000.png" and m["classes"] == ["dark", "light"]
    assert m["counts"] == {"found": 24, "embedded": 24, "skipped": 0} and m["weights"] == "random" and m["seed"] == 3


def test_bad_files_skipped_and_listed(class_folder, tmp_path):
    (class_folder / "light" / "empty.jpg").write_bytes(b"")
    (class_folder / "light" / "fake.png").write_text("<html></html>")
    m = extract(class_folder, out=tmp_path / "f", weights="pixels", image_size=8, **FAST)
    assert m["counts"] == {"found": 26, "embedded": 24, "skipped": 2}
    assert [s["path"] for s in m["skipped"]] == ["light/empty.jpg", "light/fake.png"]
    assert all(s["reason"] for s in m["skipped"])
    t = load_file(str(tmp_path / "f" / "features.safetensors"))
    assert t["features"].shape == (24, 3 * 8 * 8) and 0 <= t["features"].min() and t["features"].max() <= 1
    assert "light/empty.jpg" not in m["paths"] and len(m["paths"]) == 24


def test_unlabeled_folder_gets_minus_one(tmp_path):
    from tests.conftest import write_class_folder

    write_class_folder(tmp_path / "d", per_class=3)
    flat = tmp_path / "flat"
    flat.mkdir()
    for p in (tmp_path / "d").rglob("*.png"):
        p.rename(flat / f"{p.parent.name}_{p.name}")
    m = extract(flat, out=tmp_path / "f", weights="pixels", image_size=4, **FAST)
    assert load_file(str(tmp_path / "f" / "features.safetensors"))["labels"].tolist() == [-1] * 6
    assert m["classes"] == [] and m["kind"] == "folder"


def test_sslprobe_backbone_needs_no_model(class_folder, tmp_path):
    from sslprobe.backbone import save_backbone

    net, spec = create_backbone("test_resnet", weights="random", image_size=16, seed=5)
    save_backbone(net, spec, tmp_path / "b.safetensors")
    m = extract(class_folder, out=tmp_path / "f", weights=str(tmp_path / "b.safetensors"), **FAST)
    assert m["model"] == "test_resnet" and len(m["weights_sha256"]) == 64 and m["preprocessing"]["image_size"] == 16


def test_all_bad_is_an_error(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.jpg").write_bytes(b"")
    with pytest.raises(SSLProbeError, match="no readable image"):
        extract(tmp_path / "d", out=tmp_path / "f", weights="pixels", **FAST)
    assert not (tmp_path / "f" / "features.safetensors").exists()


def test_random_needs_model(class_folder, tmp_path):
    with pytest.raises(SSLProbeError, match="--model"):
        extract(class_folder, out=tmp_path / "f", weights="random", **FAST)
