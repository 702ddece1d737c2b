"""Extraction: features equal a direct timm forward; manifest; pixels; bad files; errors."""
import json
import os

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import load_file

from sslprobe.backbone import create_backbone, eval_transform
from sslprobe.errors import SSLProbeError
from sslprobe.extraction import cached_pass as cached_pass
from sslprobe.extraction.extract import extract
from sslprobe.images.folders import open_images
from sslprobe.results import ExtractResult

FAST = {"workers": 0, "show_progress": False, "batch_size": 5}


def test_features_equal_direct_forward(class_folder, tmp_path):
    m = extract(class_folder, out=tmp_path / "f", model="test_resnet", weights="random", image_size=32, seed=3, **FAST)
    t = load_file(str(tmp_path / "f" / "features.safetensors"))
    assert t["features"].shape == (24, 96) and t["labels"].tolist() == [0] * 12 + [1] * 12
    net, spec = create_backbone("test_resnet", weights="random", image_size=32, seed=3)
    images, tf = open_images(class_folder), eval_transform(spec)
    with torch.no_grad():
        direct = net.eval()(torch.stack([tf(images.read(i)) for i in range(len(images))]))
    assert torch.allclose(t["features"], direct, atol=1e-5)
    assert m.paths[0] == "dark/000.png" and m.classes == ["dark", "light"]
    assert m.counts.to_json() == {"found": 24, "embedded": 24, "skipped": 0}
    assert m.weights_info["weights"] == "random" and m.weights_info["seed"] == 3
    saved = json.loads((tmp_path / "f" / "manifest.json").read_text())
    assert saved == m.to_json() and list(saved) == list(m.to_json()) and ExtractResult.from_json(saved) == m


def test_bad_files_skipped_and_listed(class_folder, tmp_path):
    (class_folder / "light" / "empty.jpg").write_bytes(b"")
    (class_folder / "light" / "fake.png").write_text("<html></html>")
    m = extract(class_folder, out=tmp_path / "f", weights="pixels", image_size=8, **FAST)
    assert m.counts.to_json() == {"found": 26, "embedded": 24, "skipped": 2}
    assert [s["path"] for s in m.skipped] == ["light/empty.jpg", "light/fake.png"]
    assert all(s["reason"] for s in m.skipped)
    t = load_file(str(tmp_path / "f" / "features.safetensors"))
    assert t["features"].shape == (24, 3 * 8 * 8) and t["features"].min() >= 0 and t["features"].max() <= 1
    assert "light/empty.jpg" not in m.paths and len(m.paths) == 24


def test_unlabeled_folder_gets_minus_one(tmp_path):
    from tests.conftest import write_class_folder

    write_class_folder(tmp_path / "d", per_class=3)
    flat = tmp_path / "flat"
    flat.mkdir()
    for p in (tmp_path / "d").rglob("*.png"):
        p.rename(flat / f"{p.parent.name}_{p.name}")
    m = extract(flat, out=tmp_path / "f", weights="pixels", image_size=4, **FAST)
    assert load_file(str(tmp_path / "f" / "features.safetensors"))["labels"].tolist() == [-1] * 6
    assert m.classes == [] and m.kind == "folder"


def test_sslprobe_backbone_needs_no_model(class_folder, tmp_path):
    from sslprobe.backbone import save_backbone

    net, spec = create_backbone("test_resnet", weights="random", image_size=16, seed=5)
    save_backbone(net, spec, tmp_path / "b.safetensors")
    m = extract(class_folder, out=tmp_path / "f", weights=str(tmp_path / "b.safetensors"), **FAST)
    assert m.model == "test_resnet" and len(m.weights_info["weights_sha256"]) == 64
    assert m.preprocessing["image_size"] == 16


def test_all_bad_is_an_error(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.jpg").write_bytes(b"")
    with pytest.raises(SSLProbeError, match="no readable image"):
        extract(tmp_path / "d", out=tmp_path / "f", weights="pixels", **FAST)
    assert not (tmp_path / "f" / "features.safetensors").exists()


def test_random_needs_model(class_folder, tmp_path):
    with pytest.raises(SSLProbeError, match="--model"):
        extract(class_folder, out=tmp_path / "f", weights="random", **FAST)


# ---------------------------------------------------------------------------- the cache through extract

NET = {"model": "test_resnet", "weights": "random", "image_size": 32, "seed": 3}


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SSLPROBE_CACHE_DIR", str(tmp_path / "cache"))


def _feats(out):
    return load_file(str(out / "features.safetensors"))["features"]


def _by_path(m, feats):
    return dict(zip(m.paths, feats))


def test_cache_hit_is_bit_identical(class_folder, tmp_path):
    a = extract(class_folder, out=tmp_path / "a", **NET, **FAST)
    b = extract(class_folder, out=tmp_path / "b", **NET, **FAST)
    assert (a.cache.hits, a.cache.misses) == (0, 24)
    assert (b.cache.hits, b.cache.misses) == (24, 0) and b.cache.store == a.cache.store
    assert torch.equal(_feats(tmp_path / "a"), _feats(tmp_path / "b")) and a.paths == b.paths
    c = extract(class_folder, out=tmp_path / "c", **NET, **FAST, use_cache=False)
    assert c.cache.enabled is False and c.cache.hits == 0
    assert torch.equal(_feats(tmp_path / "c"), _feats(tmp_path / "a"))


@pytest.mark.parametrize("change", [{"seed": 4}, {"image_size": 24}, {"layer": "2"}, {"dtype": "float16"},
                                    {"pool": "mean"}, {"weights": "random-rescaled"}])
def test_changing_any_fingerprint_input_is_a_miss(class_folder, tmp_path, change):
    a = extract(class_folder, out=tmp_path / "a", **NET, **FAST)
    b = extract(class_folder, out=tmp_path / "b", **{**NET, **change}, **FAST)
    assert b.cache.store != a.cache.store and b.cache.hits == 0 and b.cache.misses == 24


def test_a_new_decode_policy_is_a_miss(class_folder, tmp_path, monkeypatch):
    import sslprobe.extraction.extract

    a = extract(class_folder, out=tmp_path / "a", **NET, **FAST)
    monkeypatch.setattr(sslprobe.extraction.extract, "DECODE_POLICY", sslprobe.extraction.extract.DECODE_POLICY + 1)
    b = extract(class_folder, out=tmp_path / "b", **NET, **FAST)
    assert b.cache.store != a.cache.store and b.cache.misses == 24


def test_weights_file_content_is_in_the_fingerprint(class_folder, tmp_path):
    from sslprobe.backbone import save_backbone

    for seed in (1, 2):
        net, spec = create_backbone("test_resnet", weights="random", image_size=16, seed=seed)
        save_backbone(net, spec, tmp_path / "b.safetensors")  # same path, new bytes
        m = extract(class_folder, out=tmp_path / f"f{seed}", weights=str(tmp_path / "b.safetensors"), **FAST)
        assert m.cache.misses == 24


def test_one_changed_image_recomputes_exactly_that_row(class_folder, tmp_path):
    extract(class_folder, out=tmp_path / "a", **NET, **FAST)
    Image.fromarray(np.full((20, 24, 3), 99, np.uint8)).save(class_folder / "light" / "004.png")
    (class_folder / "dark" / "001.png").rename(class_folder / "dark" / "renamed.png")
    (class_folder / "light" / "007.png").unlink()
    m = extract(class_folder, out=tmp_path / "b", **NET, **FAST)
    assert (m.cache.hits, m.cache.misses) == (22, 1) and m.counts.found == 23
    assert "light/007.png" not in m.paths and "dark/renamed.png" in m.paths
    fresh = extract(class_folder, out=tmp_path / "c", **NET, **FAST, use_cache=False)
    assert fresh.paths == m.paths
    assert torch.allclose(_feats(tmp_path / "b"), _feats(tmp_path / "c"), atol=1e-6)


def test_killed_and_resumed_equals_uninterrupted(class_folder, tmp_path, monkeypatch):
    real, calls = cached_pass._embed_batch, []

    def dies_after_three(model, x):
        if len(calls) == 3:
            raise KeyboardInterrupt  # as Ctrl-C inside the loop
        calls.append(1)
        return real(model, x)

    monkeypatch.setattr(cached_pass, "_embed_batch", dies_after_three)
    with pytest.raises(KeyboardInterrupt):
        extract(class_folder, out=tmp_path / "a", **NET, **FAST, shard_rows=5)
    assert not (tmp_path / "a").exists()
    monkeypatch.setattr(cached_pass, "_embed_batch", real)
    m = extract(class_folder, out=tmp_path / "a", **NET, **FAST, shard_rows=5)
    assert (m.cache.hits, m.cache.misses) == (15, 9)  # three finished batches of 5 kept
    extract(class_folder, out=tmp_path / "u", **NET, **FAST, use_cache=False)
    assert torch.allclose(_feats(tmp_path / "a"), _feats(tmp_path / "u"), atol=1e-6)


def test_damaged_shard_is_recomputed(class_folder, tmp_path):
    a = extract(class_folder, out=tmp_path / "a", **NET, **FAST, shard_rows=10)
    shards = sorted((tmp_path / "cache" / a.cache.store / "shards").iterdir())
    assert len(shards) == 3
    data = bytearray(shards[1].read_bytes())
    data[-3] ^= 0x40
    shards[1].write_bytes(bytes(data))
    shards[2].write_bytes(shards[2].read_bytes()[:100])  # truncated
    b = extract(class_folder, out=tmp_path / "b", **NET, **FAST)
    assert b.cache.invalid_shards == 2 and (b.cache.hits, b.cache.misses) == (10, 14)
    assert torch.allclose(_feats(tmp_path / "a"), _feats(tmp_path / "b"), atol=1e-6)


def test_float16_storage(class_folder, tmp_path):
    m = extract(class_folder, out=tmp_path / "h", **NET, **FAST, dtype="float16")
    f = _feats(tmp_path / "h")
    extract(class_folder, out=tmp_path / "f", **NET, **FAST)
    assert f.dtype == torch.float16 and m.dtype == "float16"
    assert torch.allclose(f.float(), _feats(tmp_path / "f"), rtol=1e-2, atol=1e-3)


def _dist_worker(rank, world, port, data, out, cache):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), SSLPROBE_CACHE_DIR=cache, OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    extract(data, out=out, **NET, **FAST, device="cpu")


def test_two_processes_equal_one(class_folder, tmp_path):
    import socket

    import torch.multiprocessing as mp

    (class_folder / "light" / "bad.png").write_bytes(b"nope")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_dist_worker, args=(2, port, str(class_folder), str(tmp_path / "two"), str(tmp_path / "c2")),
                       nprocs=2, start_method="spawn")
    one = extract(class_folder, out=tmp_path / "one", **NET, **FAST, device="cpu", use_cache=False)
    two = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert two["world_size"] == 2 and two["paths"] == one.paths and two["skipped"] == one.skipped
    assert two["cache"]["misses"] == 24 and two["counts"] == one.counts.to_json()
    shards = os.listdir(tmp_path / "c2" / two["cache"]["store"] / "shards")
    assert {n.split("-")[2] for n in shards} == {"r0", "r1"}  # each rank wrote its own shards
    assert torch.allclose(_feats(tmp_path / "two"), _feats(tmp_path / "one"), atol=1e-6)
    assert load_file(str(tmp_path / "two" / "features.safetensors"))["labels"].tolist() == [0] * 12 + [1] * 12


# ---------------------------------------------------------------------------- layers, pooling, baselines


def test_stage_features_equal_timm_features_only(class_folder, tmp_path):
    from sslprobe.backbone import adapt_small_stem

    m = extract(class_folder, out=tmp_path / "f", **NET, **FAST, layer="2")
    net, spec = create_backbone("test_resnet", weights="random", image_size=32, seed=3)
    fo = timm.create_model("test_resnet", features_only=True, out_indices=(2,))
    adapt_small_stem(fo)
    fo.load_state_dict({k: v for k, v in net.state_dict().items() if k in fo.state_dict()})
    images, tf = open_images(class_folder), eval_transform(spec)
    with torch.no_grad():
        direct = fo.eval()(torch.stack([tf(images.read(i)) for i in range(len(images))]))[0].mean((2, 3))
    assert m.layer == "stage2" and m.dim == direct.shape[1]
    assert torch.allclose(_feats(tmp_path / "f"), direct, atol=1e-5)


def test_vit_cls_and_mean_pooling(class_folder, tmp_path):
    net, spec = create_backbone("test_vit", weights="random", image_size=32, seed=0)
    images, tf = open_images(class_folder), eval_transform(spec)
    with torch.no_grad():
        tokens = net.eval().forward_features(torch.stack([tf(images.read(i)) for i in range(len(images))]))
    kw = dict(model="test_vit", weights="random", image_size=32, seed=0, **FAST)
    patches = tokens[:, net.num_prefix_tokens:].mean(1)
    for pool, want in (("auto", tokens[:, 0]), ("cls", tokens[:, 0]), ("mean", patches)):
        extract(class_folder, out=tmp_path / pool, pool=pool, **kw)
        assert torch.allclose(_feats(tmp_path / pool), want, atol=1e-5), pool
    assert not torch.allclose(_feats(tmp_path / "cls"), _feats(tmp_path / "mean"))
    m = extract(class_folder, out=tmp_path / "blk", layer="-2", pool="mean", **kw)
    assert m.layer == f"stage{len(net.blocks) - 2}" and m.dim == net.num_features


@pytest.mark.parametrize("kw, match", [({"layer": "9"}, "out of range"), ({"layer": "head"}, "stage number"),
                                       ({"pool": "cls"}, "class token"), ({"pool": "max"}, "--pool"),
                                       ({"dtype": "int8"}, "--dtype")])
def test_layer_pool_dtype_errors(class_folder, tmp_path, kw, match):
    with pytest.raises(SSLProbeError, match=match):
        extract(class_folder, out=tmp_path / "f", **{**NET, **kw}, **FAST)


# ---------------------------------------------------------------------------- several layers (--layers)


def _images(class_folder, spec):
    images, tf = open_images(class_folder), eval_transform(spec)
    return torch.stack([tf(images.read(i)) for i in range(len(images))])


def test_layers_pool_each_stage_as_a_manual_forward(class_folder, tmp_path):
    m = extract(class_folder, out=tmp_path / "f", **NET, **FAST, layers="auto")
    assert m.layers == {"stage2": "layers/stage2", "stage3": "layers/stage3", "pre-logits": "."}
    net, spec = create_backbone("test_resnet", weights="random", image_size=32, seed=3)
    with torch.no_grad():  # the ResNet by hand: stem, then the stages one by one
        net.eval()
        x = net.maxpool(net.act1(net.bn1(net.conv1(_images(class_folder, spec)))))
        s2 = net.layer2(net.layer1(x))
        s3 = net.layer3(s2)
        s4 = net.layer4(s3)
    want = {"layers/stage2": s2.mean((2, 3)), "layers/stage3": s3.mean((2, 3)), ".": s4.mean((2, 3))}
    for d, w in want.items():
        got = ExtractResult.from_json(tmp_path / "f" / d / "manifest.json")
        assert got.dim == w.shape[1] and got.paths == m.paths and torch.allclose(_feats(tmp_path / "f" / d), w,
                                                                                   atol=1e-5), d
    assert m.layer == "pre-logits" and m.dim == 96


def test_layers_cost_one_forward_pass_per_image(class_folder, tmp_path, monkeypatch):
    from timm.models.resnet import ResNet

    seen, passes = [], ResNet.forward_intermediates

    def counted(self, x, *a, **kw):
        seen.append(x.shape[0])
        return passes(self, x, *a, **kw)

    monkeypatch.setattr(ResNet, "forward_intermediates", counted)
    extract(class_folder, out=tmp_path / "a", **NET, **FAST, layers="2,3,pre-logits")
    assert sum(seen) == 24 and len(seen) == 5  # 24 images in batches of 5: five passes, each image once
    seen.clear()
    extract(class_folder, out=tmp_path / "b", **NET, **FAST, layers="auto")  # the same three layers
    assert seen == []  # every layer of every image from the cache


def test_each_layer_is_cached_once_and_any_subset_reuses_it(class_folder, tmp_path):
    last = extract(class_folder, out=tmp_path / "last", **NET, **FAST)  # pre-logits alone, as before --layers
    auto = extract(class_folder, out=tmp_path / "auto", **NET, **FAST, layers="auto")
    assert auto.cache.store == last.cache.store and auto.cache.shards_written == 0  # pre-logits: nothing new
    stage2 = ExtractResult.from_json(tmp_path / "auto" / "layers" / "stage2" / "manifest.json")
    assert stage2.cache.shards_written == 1 and stage2.cache.misses == 24
    again = extract(class_folder, out=tmp_path / "again", **NET, **FAST)
    assert (again.cache.hits, again.cache.misses) == (24, 0)
    one = extract(class_folder, out=tmp_path / "one", **NET, **FAST, layer="2")
    assert (one.cache.hits, one.cache.misses) == (24, 0) and one.cache.store == stage2.cache.store
    assert torch.equal(_feats(tmp_path / "one"), _feats(tmp_path / "auto" / "layers" / "stage2"))
    assert torch.equal(_feats(tmp_path / "again"), _feats(tmp_path / "auto"))


def test_a_damaged_shard_of_one_layer_is_recomputed_for_that_layer_alone(class_folder, tmp_path):
    a = extract(class_folder, out=tmp_path / "a", **NET, **FAST, layers="auto", shard_rows=10)
    stage3 = ExtractResult.from_json(tmp_path / "a" / "layers" / "stage3" / "manifest.json")
    shards = sorted((tmp_path / "cache" / stage3.cache.store / "shards").iterdir())
    data = bytearray(shards[1].read_bytes())
    data[-3] ^= 0x40  # a flipped bit in stage3's second shard of 10 rows
    shards[1].write_bytes(bytes(data))
    b = extract(class_folder, out=tmp_path / "b", **NET, **FAST, layers="auto", shard_rows=10)
    assert (b.cache.hits, b.cache.misses) == (14, 10) and b.cache.shards_written == 0  # pre-logits had every row
    again = ExtractResult.from_json(tmp_path / "b" / "layers" / "stage3" / "manifest.json")
    assert again.cache.invalid_shards == 1 and again.cache.shards_written == 1
    for d in (".", "layers/stage2", "layers/stage3"):
        assert torch.allclose(_feats(tmp_path / "a" / d), _feats(tmp_path / "b" / d), atol=1e-6), d
    assert a.cache.store == b.cache.store


def test_layers_last_writes_what_extract_always_wrote(class_folder, tmp_path):
    plain = extract(class_folder, out=tmp_path / "plain", **NET, **FAST, use_cache=False)
    last = extract(class_folder, out=tmp_path / "last", **NET, **FAST, layers="last", use_cache=False)
    saved = json.loads((tmp_path / "last" / "manifest.json").read_text())
    assert "layers" not in saved and not (tmp_path / "last" / "layers").exists()
    assert last.cache.fingerprint == plain.cache.fingerprint and last.cache.fingerprint["layer"] == "pre-logits"
    assert torch.equal(_feats(tmp_path / "last"), _feats(tmp_path / "plain"))
    auto = extract(class_folder, out=tmp_path / "auto", **NET, **FAST, layers="auto", use_cache=False)
    assert torch.equal(_feats(tmp_path / "auto"), _feats(tmp_path / "plain"))  # one pass, the same pre-logits
    assert auto.cache.fingerprint == plain.cache.fingerprint


def test_vit_blocks_pooled_as_the_model_pools(class_folder, tmp_path):
    kw = dict(model="test_vit", weights="random", image_size=32, seed=0, **FAST)
    m = extract(class_folder, out=tmp_path / "auto", layers="auto", **kw)
    assert list(m.layers) == ["stage2", "stage4", "pre-logits"]  # half and three quarters of 6 blocks, then the head
    extract(class_folder, out=tmp_path / "blk", layer="2", **kw)
    extract(class_folder, out=tmp_path / "head", **kw)
    assert torch.equal(_feats(tmp_path / "auto" / "layers" / "stage2"), _feats(tmp_path / "blk"))
    assert torch.equal(_feats(tmp_path / "auto"), _feats(tmp_path / "head"))
    net, spec = create_backbone("test_vit", weights="random", image_size=32, seed=0)
    with torch.no_grad():  # the class token after block 2 (timm pools a ViT by its class token)
        net.eval()
        x = net.norm_pre(net._pos_embed(net.patch_embed(_images(class_folder, spec))))
        for blk in net.blocks[:3]:
            x = blk(x)
    assert torch.allclose(_feats(tmp_path / "blk"), x[:, 0], atol=1e-5)


@pytest.mark.parametrize("kw, match", [({"layers": "2,9"}, "out of range"), ({"layers": "2,auto"}, "stands alone"),
                                       ({"layers": "2,top"}, "stage numbers"), ({"layers": "auto", "layer": "2"},
                                                                                "one of them"),
                                       ({"layers": "auto", "weights": "pixels", "model": None}, "no layers")])
def test_layers_errors(class_folder, tmp_path, kw, match):
    with pytest.raises(SSLProbeError, match=match):
        extract(class_folder, out=tmp_path / "f", **{**NET, **kw}, **FAST)


def test_calibration_folder_gives_the_network_of_those_images(class_folder, tmp_path):
    """--calibration TRAIN: a folder of train and test images is embedded by the network calibrated on TRAIN
    alone (the same weights as extracting TRAIN itself), not by one that looked at the test images."""
    import shutil

    train = tmp_path / "train"
    for d in class_folder.iterdir():
        (train / d.name).mkdir(parents=True)
        for f in sorted(d.iterdir())[:8]:
            shutil.copy(f, train / d.name / f.name)
    rr = {**NET, "weights": "random-rescaled"}
    alone = extract(train, out=tmp_path / "t", **rr, **FAST).weights_info
    whole = extract(class_folder, out=tmp_path / "w", **rr, **FAST).weights_info
    told = extract(class_folder, out=tmp_path / "c", **rr, calibration=str(train), **FAST).weights_info
    assert told["weights_sha256"] == alone["weights_sha256"] != whole["weights_sha256"]
    assert told["calibration_images"] == 16 and whole["calibration_images"] == 24
    assert told["calibration_source"] == str(train) and whole["calibration_source"] == str(class_folder)
    with pytest.raises(SSLProbeError, match="--calibration only applies to --weights random-rescaled"):
        extract(class_folder, out=tmp_path / "x", **NET, calibration=str(train), **FAST)


def test_random_rescaled_extract_is_seeded(class_folder, tmp_path):
    a = extract(class_folder, out=tmp_path / "a", **{**NET, "weights": "random-rescaled"}, **FAST)
    b = extract(class_folder, out=tmp_path / "b", **{**NET, "weights": "random-rescaled"}, **FAST)
    c = extract(class_folder, out=tmp_path / "c", **{**NET, "weights": "random-rescaled", "seed": 9}, **FAST)
    assert a.weights_info["weights"] == "random-rescaled" and a.weights_info["calibration_images"] == 24
    assert b.cache.hits == 24
    assert a.weights_info["weights_sha256"] == b.weights_info["weights_sha256"] != c.weights_info["weights_sha256"]
    f = _feats(tmp_path / "a")
    assert torch.isfinite(f).all() and f.std() > 0


def test_random_manifest_records_the_fair_init(class_folder, tmp_path):
    m = extract(class_folder, out=tmp_path / "a", **NET, **FAST)
    assert m.weights_info["init"].startswith("timm default, zero_init_last off")
    r = extract(class_folder, out=tmp_path / "b", **{**NET, "weights": "random-rescaled"}, **FAST)
    init = r.weights_info["init"]
    assert init.startswith("timm default, zero_init_last off") and "rescaled" in init
    assert "init=" in m.cache.fingerprint["weights_id"] and "init=" in r.cache.fingerprint["weights_id"]


def test_rows_of_the_silenced_random_init_in_an_old_cache_are_not_reused(class_folder, tmp_path):
    from sslprobe.cache import Fingerprint, Store, content_key

    fresh = extract(class_folder, out=tmp_path / "fresh", **NET, **FAST, use_cache=False)
    # The store an earlier version filled for these images: same fingerprint but for the weights id.
    old = Fingerprint(**{**fresh.cache.fingerprint, "weights_id": f"seed=3;timm={timm.__version__}"})
    keys = [content_key((class_folder / p).read_bytes()) for p in fresh.paths]
    Store.open(tmp_path / "cache", old).write_shard(keys, torch.zeros(len(keys), fresh.dim))
    m = extract(class_folder, out=tmp_path / "f", **NET, **FAST)
    assert m.cache.hits == 0 and torch.equal(_feats(tmp_path / "f"), _feats(tmp_path / "fresh"))


def test_small_stem_choice_reaches_the_features(class_folder, tmp_path):
    m = extract(class_folder, out=tmp_path / "a", **{**NET, "image_size": 40}, small_stem=False, **FAST)
    s = extract(class_folder, out=tmp_path / "b", **{**NET, "image_size": 40}, **FAST)
    assert not m.preprocessing["small_stem"] and s.preprocessing["small_stem"]
    assert m.cache.store != s.cache.store
    with pytest.raises(SSLProbeError, match="drop --layer/--pool/--small-stem"):
        extract(class_folder, out=tmp_path / "p", weights="pixels", small_stem=True, **FAST)


# ---------------------------------------------------------------------------- decoding


def _jpeg(w=400, h=300, seed=0):
    import io

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).resize((w, h)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def test_jpeg_draft_decodes_smaller_but_not_below_target():
    from sslprobe.images.decode import decode_image

    data = _jpeg()
    assert decode_image(data).size == (400, 300)
    assert decode_image(data, draft=(60, 60)).size == (100, 75)  # 1/4 scale: the smallest ≥ 60 px
    assert decode_image(data, draft=(500, 500)).size == (400, 300)


def test_jpeg_draft_refuses_what_a_full_decode_refuses():
    """Draft mode shrinks the claimed size: the byte-count check must run on the full header first."""
    from sslprobe.images.decode import BadImageError, decode_image
    from tests.corpus import jpeg_with_size

    bomb = jpeg_with_size(8000, 8000)  # a few hundred bytes claiming 64 M pixels
    for draft in (None, (60, 60), (224, 224)):
        with pytest.raises(BadImageError, match="truncated"):
            decode_image(bomb, draft=draft)


def test_gpu_decode_path_and_cpu_fallback():
    """decode_jpeg runs on the CPU too, so the nvJPEG path's resize/crop and its fallback are testable here."""
    from sslprobe.images.decode import decode_image, gpu_decode
    from sslprobe.images.transforms import Uint8Transform

    jpegs = [torch.frombuffer(bytearray(_jpeg(seed=s)), dtype=torch.uint8) for s in range(2)]
    bad = torch.frombuffer(bytearray(b"\xff\xd8\xff not really a jpeg"), dtype=torch.uint8)
    imgs, failed = gpu_decode([jpegs[0], bad, jpegs[1]], device=torch.device("cpu"),
                              transform=Uint8Transform(size=32, resize=36, interpolation="bicubic"))
    assert failed == [1] and imgs.shape == (2, 3, 32, 32) and imgs.dtype == torch.uint8
    _, spec = create_backbone("test_resnet", weights="random", image_size=32)
    from dataclasses import replace

    tf = Uint8Transform.from_timm(eval_transform(replace(spec, crop_pct=32 / 36, interpolation="bicubic")))
    pil = tf(decode_image(jpegs[0].numpy().tobytes()))
    assert (imgs[0].float() - pil.float()).abs().mean() < 4  # same image, two decoders and resizers


def test_gpu_decode_request_on_cpu_falls_back(class_folder, tmp_path):
    m = extract(class_folder, out=tmp_path / "g", **NET, **FAST, decode="gpu")
    assert m.preprocessing["decode"] == "pil-draft" and m.counts.embedded == 24
