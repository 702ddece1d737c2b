"""The embedding store: fingerprints, shards (validation, atomic concurrent writes), info/clear."""
import dataclasses
import os
import threading
import time

import pytest
import torch
from typer.testing import CliRunner

from sslprobe.cache import (
    Fingerprint,
    Store,
    clear_stores,
    content_key,
    default_cache_dir,
    list_stores,
)
from sslprobe.errors import SSLProbeError

FP = Fingerprint(model="test_resnet", weights="random", weights_id="seed=0", preprocessing='{"image_size": 32}',
                 layer="pre-logits", pool="auto", dtype="float32", compute="float32", sslprobe_major="0")


def _rows(n, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [content_key(f"img{seed}-{i}".encode()) for i in range(n)], torch.randn(n, d, generator=g)


def test_default_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("SSLPROBE_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "sslprobe"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == __import__("pathlib").Path.home() / ".cache" / "sslprobe"
    monkeypatch.setenv("SSLPROBE_CACHE_DIR", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(Fingerprint)])
def test_every_fingerprint_field_changes_the_store(field):
    other = dataclasses.replace(FP, **{field: getattr(FP, field) + "x"})
    assert other.store_id != FP.store_id and len(other.store_id) == 24
    assert dataclasses.replace(FP).store_id == FP.store_id  # and it is stable


def test_round_trip_is_bit_identical(tmp_path):
    s = Store.open(tmp_path, FP)
    keys, feats = _rows(10)
    s.write_shard(keys[:4], feats[:4])
    s.write_shard(keys[4:], feats[4:])
    again = Store.open(tmp_path, FP)
    again.refresh()
    got, found = again.get(list(reversed(keys)) + [content_key(b"unknown")])
    assert found == [True] * 10 + [False]
    assert torch.equal(got, feats.flip(0))
    assert not [p for p in os.listdir(s.shard_dir) if p.endswith(".tmp")]


def test_float16_store_keeps_its_dtype(tmp_path):
    fp = dataclasses.replace(FP, dtype="float16")
    keys, feats = _rows(3)
    Store.open(tmp_path, fp).write_shard(keys, feats)
    s = Store.open(tmp_path, fp)
    s.refresh()
    got, _ = s.get(keys)
    assert got.dtype == torch.float16 and torch.equal(got, feats.half())


def _corrupt_body(path):
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # a feature byte: header intact, checksum must catch it
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage", "empty", "wrong_rows"])
def test_damaged_shard_is_never_trusted(tmp_path, damage):
    s = Store.open(tmp_path, FP)
    keys, feats = _rows(5)
    good = s.write_shard(keys[:2], feats[:2])
    bad = s.write_shard(keys[2:], feats[2:])
    if damage == "flip":
        _corrupt_body(bad)
    elif damage == "truncate":
        bad.write_bytes(bad.read_bytes()[:-7])
    elif damage == "garbage":
        bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    elif damage == "empty":
        bad.write_bytes(b"")
    else:  # a header that lies about its row count
        from safetensors import safe_open
        from safetensors.torch import load_file, save_file

        with safe_open(str(bad), "pt") as f:
            meta = dict(f.metadata())
        meta["rows"] = "2"
        save_file(load_file(str(bad)), str(bad), metadata=meta)
    r = Store.open(tmp_path, FP)
    r.refresh()
    got, found = r.get(keys)
    assert found == [True, True, False, False, False]
    assert torch.equal(got, feats[:2]) and good.exists()
    assert r.invalid == [bad.name]


def test_store_ignores_foreign_names_and_symlinks(tmp_path):
    s = Store.open(tmp_path, FP)
    keys, feats = _rows(2)
    real = s.write_shard(keys, feats)
    outside = tmp_path / "outside.safetensors"
    real.rename(outside)
    (s.shard_dir / "link.safetensors").symlink_to(outside)  # could point anywhere on the machine
    (s.shard_dir / "..evil.safetensors").write_bytes(outside.read_bytes())  # not a shard name we write
    s.refresh()
    assert len(s) == 0 and s.invalid == ["link.safetensors"]
    other = tmp_path / "elsewhere"
    other.mkdir()
    s.shard_dir.rename(tmp_path / "old_shards")
    s.shard_dir.symlink_to(other, target_is_directory=True)
    with pytest.raises(SSLProbeError, match="symbolic link"):
        Store.open(tmp_path, FP)


def test_concurrent_writers_both_land(tmp_path):
    """Many threads writing shards into one store at once: every shard whole, every row there."""
    errors = []

    def write(seed):
        try:
            st = Store.open(tmp_path, FP)
            for j in range(5):
                k, f = _rows(3, seed=seed * 10 + j)
                st.write_shard(k, f, tag=f"t{seed}")
        except Exception as e:  # noqa: BLE001 - pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors
    s = Store.open(tmp_path, FP)
    s.refresh()
    assert len(s) == 4 * 5 * 3 and not s.invalid
    keys, feats = _rows(3, seed=31)
    assert torch.equal(s.get(keys)[0], feats)


def test_store_ids_cannot_escape(tmp_path):
    for bad in ("../../x", "/etc", "abc", "0" * 23 + "/"):
        with pytest.raises(SSLProbeError, match="not a store id"):
            clear_stores(tmp_path, store=bad)
    with pytest.raises(SSLProbeError, match="exactly one"):
        clear_stores(tmp_path)
    with pytest.raises(SSLProbeError, match="exactly one"):
        clear_stores(tmp_path, all_stores=True, older_than_days=3)


def test_info_and_clear(tmp_path):
    a = Store.open(tmp_path, FP)
    a.write_shard(*_rows(4))
    b = Store.open(tmp_path, dataclasses.replace(FP, model="test_vit"))
    b.write_shard(*_rows(3))
    old = time.time() - 40 * 86400
    os.utime(b.root / "used", (old, old))
    info = {s["store"]: s for s in list_stores(tmp_path)}
    assert info[a.root.name]["rows"] == 4 and info[b.root.name]["rows"] == 3
    assert info[b.root.name]["model"] == "test_vit" and info[a.root.name]["bytes"] > 4 * 6 * 4
    assert clear_stores(tmp_path, older_than_days=30) == [b.root.name]
    assert [s["store"] for s in list_stores(tmp_path)] == [a.root.name]
    with pytest.raises(SSLProbeError, match="no store"):
        clear_stores(tmp_path, store=b.root.name)
    assert clear_stores(tmp_path, all_stores=True) == [a.root.name] and list_stores(tmp_path) == []


def test_cache_commands(tmp_path):
    from sslprobe.cli import app

    Store.open(tmp_path, FP).write_shard(*_rows(4))
    run = CliRunner().invoke
    r = run(app, ["cache", "info", "--cache-dir", str(tmp_path)])
    assert r.exit_code == 0 and "1 store(s), 4 rows" in r.output and "test_resnet" in r.output
    r = run(app, ["cache", "info", "--cache-dir", str(tmp_path), "--json"])
    assert '"rows": 4' in r.output
    r = run(app, ["cache", "clear", "--all", "--cache-dir", str(tmp_path)])
    assert r.exit_code == 0 and list_stores(tmp_path) == []
