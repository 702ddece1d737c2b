"""Untrusted files: pickles never run code, lying safetensors give one clean line, manifests can't escape.

A weights file or feature set may come from anywhere. Pickle (.pt/.pth/.bin/.ckpt) is refused
unless --allow-pickle and then read only by ``torch.load(weights_only=True)``; a safetensors file
whose header lies (sizes, lengths, JSON, offsets, metadata) is an ``error:`` line and exit 2.
"""
from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from sslprobe.errors import SSLProbeError
from sslprobe.probing.features import load_features
from tests.clirun import run
from tests.corpus import error_line


def assert_one_error_line(code: int, err: str, *needles: str) -> str:
    line = error_line(err)
    assert code == 2, err
    for n in needles:
        assert n.lower() in line.lower(), line
    return line


# --- pickles ------------------------------------------------------------------------------------

class Custom:
    """A class of ours inside a checkpoint: harmless, but weights_only must still refuse it."""

    def __init__(self) -> None:
        self.value = 3


class Payload:
    """Unpickling this writes a marker file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('pwned')",)


def _pickles(tmp_path: Path, marker: Path) -> dict[str, Path]:
    files = {}
    state = {"conv1.weight": torch.zeros(2)}
    for name, obj, how in [("custom.pt", {**state, "extra": Custom()}, "torch"),
                           ("payload.pt", {**state, "evil": Payload(marker)}, "torch"),
                           ("payload.pth", {**state, "evil": Payload(marker)}, "legacy"),
                           ("payload.bin", Payload(marker), "legacy"),
                           ("payload.ckpt", {"state_dict": {"w": Payload(marker)}}, "torch"),
                           ("payload.safetensors", Payload(marker), "legacy")]:  # a pickle in disguise
        files[name] = tmp_path / name
        if how == "torch":
            torch.save(obj, files[name])
        else:
            with open(files[name], "wb") as f:
                pickle.dump(obj, f)
    return files


def test_the_payload_is_live(tmp_path):
    """The test below can fail: plain unpickling of the same bytes does run the payload."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(Payload(marker)))
    assert marker.read_text() == "pwned"


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch's note on legacy pickles
@pytest.mark.parametrize("allow", [False, True])
@pytest.mark.parametrize("name", ["custom.pt", "payload.pt", "payload.pth", "payload.bin", "payload.ckpt",
                                  "payload.safetensors"])
def test_pickles_never_run(monkeypatch, capsys, tmp_path, class_folder, name, allow):
    marker = tmp_path / "pwned"
    path = _pickles(tmp_path, marker)[name]
    args = ["extract", class_folder, "--out", tmp_path / "f", "--weights", path, "--model", "test_resnet",
            "--workers", "0"] + (["--allow-pickle"] if allow else [])
    code, _, err = run(monkeypatch, capsys, *args)
    if name.endswith(".safetensors"):
        needle = "not a valid safetensors"
    else:
        needle = "weights_only" if allow else "--allow-pickle"
    assert_one_error_line(code, err, needle)
    assert not marker.exists()
    assert not (tmp_path / "f" / "features.safetensors").exists()


@pytest.mark.parametrize("allow", [False, True])
@pytest.mark.parametrize("name", ["x.bin", "x.pt", "x.weights"])
def test_random_bytes_are_not_a_model_file_not_a_pickle(monkeypatch, capsys, tmp_path, class_folder, name, allow):
    """Random bytes named like a checkpoint were called "a pickle file", and with --allow-pickle ended in a cut-off
    torch message (issue 24)."""
    path = tmp_path / name
    path.write_bytes(bytes(range(7, 250)) * 40)
    args = ["extract", class_folder, "--out", tmp_path / "f", "--weights", path, "--model", "test_resnet",
            "--workers", "0"] + (["--allow-pickle"] if allow else [])
    code, _, err = run(monkeypatch, capsys, *args)
    assert_one_error_line(code, err, "is not a model file (neither safetensors nor a torch checkpoint)")
    assert "pickle" not in err


def test_allowed_pickle_goes_through_weights_only(monkeypatch, capsys, tmp_path, class_folder):
    from sslprobe.backbone import create_backbone

    net, _ = create_backbone("test_resnet", weights="random", image_size=16, seed=1)
    torch.save(net.state_dict(), tmp_path / "plain.pth")
    calls = []
    real = torch.load

    def spy(*a, **kw):
        calls.append(kw.get("weights_only"))
        return real(*a, **kw)

    monkeypatch.setattr(torch, "load", spy)
    code, _, err = run(monkeypatch, capsys, "extract", class_folder, "--out", tmp_path / "f", "--weights",
                       tmp_path / "plain.pth", "--model", "test_resnet", "--image-size", "16", "--workers", "0",
                       "--allow-pickle")
    assert code == 0, err
    assert calls and all(c is True for c in calls)


# --- safetensors that lie -----------------------------------------------------------------------

def _st(header: dict | bytes, data: bytes = b"", *, length: int | None = None) -> bytes:
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(h) if length is None else length) + h + data


def _tensor(shape, offsets, dtype="F32") -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": offsets}


LIES = {  # name -> file bytes
    "empty": b"",
    "five-bytes": b"\x01\x02\x03\x04\x05",
    "shape-vs-bytes": _st({"features": _tensor([1000, 1000], [0, 16])}, bytes(16)),
    "huge-header-length": _st({"features": _tensor([2, 2], [0, 16])}, bytes(16), length=2**62),
    "header-past-eof": _st({"features": _tensor([2, 2], [0, 16])}, bytes(16), length=100_000),
    "non-json-header": _st(b"this is not json at all!", bytes(16)),
    "header-not-object": _st(b"[1, 2, 3]      ", bytes(16)),
    "offsets-out-of-range": _st({"features": _tensor([4], [0, 1_000_000])}, bytes(16)),
    "offsets-reversed": _st({"features": _tensor([4], [16, 0])}, bytes(16)),
    "overlapping-tensors": _st({"features": _tensor([2, 2], [0, 16]), "labels": _tensor([2], [8, 24], "I64")},
                               bytes(24)),
    "unknown-dtype": _st({"features": _tensor([4], [0, 16], "Q99")}, bytes(16)),
    "negative-shape": _st({"features": _tensor([-4], [0, 16])}, bytes(16)),
    "metadata-not-strings": _st({"__metadata__": {"format": 5}, "features": _tensor([4], [0, 16])}, bytes(16)),
}


@pytest.mark.parametrize("name", list(LIES))
def test_lying_safetensors_as_weights(monkeypatch, capsys, tmp_path, class_folder, name):
    path = tmp_path / "w.safetensors"
    path.write_bytes(LIES[name])
    code, _, err = run(monkeypatch, capsys, "extract", class_folder, "--out", tmp_path / "f", "--weights", path,
                       "--model", "test_resnet", "--workers", "0")
    assert_one_error_line(code, err, "w.safetensors")


@pytest.mark.parametrize("name", list(LIES))
def test_lying_safetensors_as_features(monkeypatch, capsys, tmp_path, name):
    (tmp_path / "feats").mkdir()
    (tmp_path / "feats" / "features.safetensors").write_bytes(LIES[name])
    (tmp_path / "bare.safetensors").write_bytes(LIES[name])
    for target in (tmp_path / "feats", tmp_path / "bare.safetensors"):
        with pytest.raises(SSLProbeError) as e:
            load_features(target)
        assert "\n" not in str(e.value)
        code, _, err = run(monkeypatch, capsys, "probe", target)
        assert_one_error_line(code, err)


def _backbone_meta(**override) -> dict[str, str]:
    meta = {"format": "sslprobe-backbone", "model": '"test_resnet"', "image_size": "16",
            "mean": "[0.5, 0.5, 0.5]", "std": "[0.5, 0.5, 0.5]", "interpolation": '"bilinear"',
            "crop_pct": "1.0", "small_stem": "true"}
    meta.update(override)
    return {k: v for k, v in meta.items() if v is not None}


METADATA_LIES = {
    "model-not-json": _backbone_meta(model="test_resnet"),
    "model-missing": _backbone_meta(model=None),
    "model-unknown": _backbone_meta(model='"no_such_net"'),
    "model-not-a-string": _backbone_meta(model="[1, 2]"),
    "image-size-negative": _backbone_meta(image_size="-16"),
    "image-size-string": _backbone_meta(image_size='"big"'),
    "mean-not-numbers": _backbone_meta(mean='["a", "b", "c"]'),
    "std-zero": _backbone_meta(std="[0, 0, 0]"),
    "crop-pct-nonsense": _backbone_meta(crop_pct='"all"'),
}


@pytest.mark.parametrize("name", list(METADATA_LIES))
def test_lying_backbone_metadata(monkeypatch, capsys, tmp_path, class_folder, name):
    from sslprobe.backbone import create_backbone

    net, _ = create_backbone("test_resnet", weights="random", image_size=16, seed=0)
    path = tmp_path / "b.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path), metadata=METADATA_LIES[name])
    code, _, err = run(monkeypatch, capsys, "extract", class_folder, "--out", tmp_path / "f", "--weights", path,
                       "--workers", "0")
    assert_one_error_line(code, err)
    assert not (tmp_path / "f" / "features.safetensors").exists()


FEATURE_LIES = {  # tensors (and metadata) of a well-formed file that still isn't a feature set
    "features-1d": ({"features": torch.zeros(6), "labels": torch.zeros(6, dtype=torch.int64)}, None),
    "zero-width": ({"features": torch.zeros(6, 0), "labels": torch.tensor([0, 1] * 3)}, None),
    "labels-2d": ({"features": torch.zeros(6, 3), "labels": torch.zeros(6, 2, dtype=torch.int64)}, None),
    "labels-float-fractions": ({"features": torch.randn(6, 3), "labels": torch.tensor([0.5, 1.5] * 3)}, None),
    "labels-nan": ({"features": torch.randn(6, 3), "labels": torch.tensor([0.0, float("nan")] * 3)}, None),
    "labels-below-minus-one": ({"features": torch.randn(6, 3), "labels": torch.tensor([0, -7] * 3)}, None),
    "features-bool": ({"features": torch.ones(6, 3, dtype=torch.bool), "labels": torch.tensor([0, 1] * 3)}, None),
    "classes-not-a-list": ({"features": torch.randn(6, 3), "labels": torch.tensor([0, 1] * 3)}, {"classes": "5"}),
    "classes-a-dict": ({"features": torch.randn(6, 3), "labels": torch.tensor([0, 1] * 3)}, {"classes": '{"a": 1}'}),
    "classes-too-few": ({"features": torch.randn(6, 3), "labels": torch.tensor([0, 1] * 3)}, {"classes": '["a"]'}),
}


@pytest.mark.parametrize("name", list(FEATURE_LIES))
def test_feature_files_that_are_not_feature_sets(monkeypatch, capsys, tmp_path, name):
    tensors, meta = FEATURE_LIES[name]
    path = tmp_path / "x.safetensors"
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(SSLProbeError) as e:
        load_features(path)
    assert "\n" not in str(e.value)
    code, _, err = run(monkeypatch, capsys, "probe", path)
    assert_one_error_line(code, err)


# --- manifests that name paths outside their directory -------------------------------------------

def _feature_dir(root: Path, paths: list[str]) -> Path:
    root.mkdir(parents=True)
    save_file({"features": torch.randn(len(paths), 3), "labels": torch.tensor([0, 1] * (len(paths) // 2))},
              str(root / "features.safetensors"))
    (root / "manifest.json").write_text(json.dumps({"format": "sslprobe-features", "classes": ["a", "b"],
                                                    "paths": paths}))
    return root


# Backslashes are ordinary name characters on POSIX (extract can list a file called "a\\..\\b"), so only
# POSIX escapes are refused.
@pytest.mark.parametrize("bad", ["../../x.png", "/etc/passwd", "a/../../x.png", "..", "a/./../../x.png"])
def test_feature_manifest_paths_must_stay_inside(monkeypatch, capsys, tmp_path, bad):
    d = _feature_dir(tmp_path / "f", ["a/1.png", bad, "b/2.png", "b/3.png"])
    with pytest.raises(SSLProbeError, match="manifest"):
        load_features(d)
    code, _, err = run(monkeypatch, capsys, "probe", d)
    assert_one_error_line(code, err, "manifest")


def test_feature_manifest_with_plain_relative_paths_loads(tmp_path):
    fs = load_features(_feature_dir(tmp_path / "f", ["a/1.png", "a/..b.png", "b/2.png", "b/c/3.png"]))
    assert fs.paths == ("a/1.png", "a/..b.png", "b/2.png", "b/c/3.png")


# --- the embedding cache never reaches outside its directory ------------------------------------

def _fingerprint(model: str = "test_resnet"):
    from sslprobe.cache import Fingerprint

    return Fingerprint(model=model, weights="random", weights_id="seed=0", preprocessing="{}", layer="pre-logits",
                       pool="auto", dtype="float32", compute="float32", sslprobe_major="0")


def test_cache_clear_never_follows_a_linked_store(tmp_path):
    from sslprobe.cache import clear_stores

    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / ("ab" * 12)).symlink_to(victim, target_is_directory=True)  # named like a store id
    assert clear_stores(cache, all_stores=True) == []
    assert clear_stores(cache, store="ab" * 12) == []
    assert (victim / "precious.txt").read_text() == "keep me"


def test_cache_shard_from_another_store_is_not_trusted(tmp_path):
    """A shard copied (by hand, by a sync tool) into the wrong store must not feed its rows to it."""
    from sslprobe.cache import Store

    keys = [bytes([i]) * 32 for i in range(3)]
    vit = Store.open(tmp_path, _fingerprint("test_vit"))
    stray = vit.write_shard(keys, torch.randn(3, 4))
    resnet = Store.open(tmp_path, _fingerprint("test_resnet"))
    (resnet.shard_dir / stray.name).write_bytes(stray.read_bytes())
    resnet.refresh()
    _, found = resnet.get(keys)
    assert found == [False, False, False]
