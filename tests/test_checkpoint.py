"""Checkpoint files: save cadence parsing, atomic verified saves, config diffs, optimiser round trips; the
run's Checkpointer: cadence counted from the last save, one save per step, stop messages, non-finite refusal."""
import json

import pytest
import torch
from torch import nn

from sslprobe import checkpoint as ck
from sslprobe.errors import SSLProbeError
from sslprobe.optim import LARS
from sslprobe.pretraining.byol import param_groups


@pytest.mark.parametrize("text, steps, minutes", [
    ("500", 500, None), ("10m", None, 10.0), ("2.5min", None, 2.5), ("500,10m", 500, 10.0), ("10m, 7", 7, 10.0),
    ("end", None, None),
])
def test_parse_save_every(text, steps, minutes):
    assert ck.parse_save_every(text) == ck.SaveEvery(steps=steps, minutes=minutes)


@pytest.mark.parametrize("text", ["", "0", "-5", "10h", "m", "abc", "0m"])
def test_parse_save_every_rejects(text):
    with pytest.raises(SSLProbeError, match="--save-every"):
        ck.parse_save_every(text)


@pytest.mark.parametrize("every, step, last, minutes, due", [
    (ck.SaveEvery(steps=10), 19, 10, 0.0, False), (ck.SaveEvery(steps=10), 20, 10, 0.0, True),
    (ck.SaveEvery(minutes=5), 3, 0, 4.9, False), (ck.SaveEvery(minutes=5), 3, 0, 5.0, True),
    (ck.SaveEvery(), 10**6, 0, 10**6, False),
])
def test_save_every_due(every, step, last, minutes, due):
    assert every.due(step=step, last_step=last, elapsed_min=minutes) is due


def test_save_keeps_only_the_newest_verified_and_ignores_corrupt(tmp_path):
    d = tmp_path / "ck"
    ck.save(d, step=1, tensors={"a": torch.ones(3)}, state={"x": 1})
    (d / ".step-000000002.safetensors.abc.tmp").write_bytes(b"half")  # left by a killed write
    c2 = ck.save(d, step=2, tensors={"a": torch.full((3,), 2.0)}, state={"x": 2})
    assert sorted(p.name for p in d.iterdir()) == ["step-000000002.json", "step-000000002.safetensors"]
    got = ck.find_latest(d)
    assert got.step == 2 and got.state["x"] == 2 and torch.equal(ck.load_tensors(got)["a"], torch.full((3,), 2.0))
    # A newer checkpoint whose tensors never finished (JSON missing) is not used …
    (d / "step-000000003.safetensors").write_bytes(b"partial")
    assert ck.find_latest(d).step == 2
    # … nor one whose tensors do not match the recorded hash.
    meta = json.loads(c2.json_path.read_text())
    (d / "step-000000004.safetensors").write_bytes(c2.tensors_path.read_bytes()[:-1] + b"x")
    (d / "step-000000004.json").write_text(json.dumps({**meta, "step": 4, "tensors": "step-000000004.safetensors"}))
    assert ck.find_latest(d).step == 2
    assert ck.find_latest(tmp_path / "nothing") is None


def test_config_diff_names_nested_keys():
    a = {"lr": 0.1, "views": [{"blur_p": 1.0}, {"blur_p": 0.1}], "device": "cpu"}
    b = {"lr": 0.2, "views": [{"blur_p": 1.0}, {"blur_p": 0.0}], "device": "cuda", "new": 1}
    assert ck.config_diff(a, b, ignore=("device",)) == {"lr": (0.1, 0.2), "new": ("<absent>", 1),
                                                        "views.1.blur_p": (0.1, 0.0)}
    assert ck.config_diff(a, dict(a)) == {}
    assert ck.config_diff({"t": (1, 2)}, {"t": [1, 2]}) == {}  # tuples and lists are the same JSON


@pytest.mark.parametrize("make", [
    lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9),
    lambda m: torch.optim.AdamW(m.parameters(), lr=0.01),
    lambda m: LARS(param_groups(m, weight_decay=1e-4), lr=0.1),
])
def test_optimizer_round_trip_continues_identically(make):
    def model():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))

    def train(m, opt, n, seed):
        g = torch.Generator().manual_seed(seed)
        for _ in range(n):
            opt.zero_grad()
            m(torch.randn(5, 4, generator=g)).pow(2).mean().backward()
            opt.step()

    a = model()
    oa = make(a)
    train(a, oa, 2, 0)
    tensors, meta = ck.pack_optimizer(oa)
    tensors = {k: v.clone() for k, v in tensors.items()}  # as read back from the file: no shared buffers
    meta = json.loads(json.dumps(meta))  # what the checkpoint's JSON gives back
    b = model()
    b.load_state_dict(a.state_dict())
    ob = make(b)
    ck.unpack_optimizer(ob, tensors, meta)
    train(a, oa, 2, 1)
    train(b, ob, 2, 1)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def test_rng_round_trip():
    saved = ck.rng_tensors()
    x = torch.rand(3)
    ck.restore_rng(saved)
    assert torch.equal(torch.rand(3), x)


def test_json_cannot_point_at_another_file(tmp_path):
    import hashlib

    d = tmp_path / "ck"
    good = ck.save(d, step=2, tensors={"a": torch.ones(2)}, state={})
    other = d / "other.safetensors"
    other.write_bytes(good.tensors_path.read_bytes())
    meta = json.loads(good.json_path.read_text())
    forged = {**meta, "step": 4, "tensors": other.name, "bytes": other.stat().st_size,
              "sha256": hashlib.sha256(other.read_bytes()).hexdigest()}
    (d / "step-000000004.json").write_text(json.dumps(forged))
    (d / "step-000000006.json").write_text(json.dumps({**forged, "step": 6, "tensors": "../../x.safetensors"}))
    assert ck.find_latest(d).step == 2
    bad = d / "step-000000008.safetensors"
    bad.write_bytes(b"\xff" * 64)  # right size and hash recorded, but not safetensors
    (d / "step-000000008.json").write_text(json.dumps({**meta, "step": 8, "tensors": bad.name, "bytes": 64,
                                                       "sha256": hashlib.sha256(bad.read_bytes()).hexdigest()}))
    assert ck.find_latest(d).step == 2


# --- the run's Checkpointer (pretraining/checkpointer.py) ------------------------------------------------------

def _checkpointer(tmp_path, monkeypatch, when):
    import sslprobe.pretraining.checkpointer as cp
    from sslprobe.distributed import Dist
    from sslprobe.pretraining.trainstep import RunSpec, build_byol

    clock = [100.0]
    monkeypatch.setattr(cp.time, "monotonic", lambda: clock[0])
    cfg = RunSpec(model="test_resnet", image_size=16, small_stem=True, proj_hidden=32, proj_dim=16,
                         optimizer="sgd", steps_per_epoch=3, total_steps=9)
    net, opt, _ = build_byol(cfg, device=torch.device("cpu"))
    saved = []
    real = ck.save
    monkeypatch.setattr(ck, "save", lambda d, *, step, **k: saved.append(step) or real(d, step=step, **k))
    c = cp.Checkpointer(tmp_path / "checkpoints", byol=net, opt=opt, cfg=cfg, dist=Dist(), when=when, found=None)
    return c, net, clock, saved


def test_checkpointer_cadence_counts_from_the_last_save(tmp_path, monkeypatch):
    c, _, clock, saved = _checkpointer(tmp_path, monkeypatch, ck.SaveEvery(steps=3, minutes=5))
    assert [s for s in range(1, 4) if c.due(s)] == [3]
    clock[0] += 60
    c.save(2, loss=0.5)  # any save (here: not a due one) restarts both clocks
    assert not c.due(4) and c.due(5)
    clock[0] += 5 * 60
    assert c.due(3)  # the minutes ran out before the steps
    c.save(2, loss=0.5)  # the same step again: nothing new written
    assert saved == [2] and c.last.step == 2 and c.last.state["loss"] == 0.5
    assert c.last.state["epoch"] == 0 and c.last.state["batch_in_epoch"] == 2 and c.last.state["elapsed_s"] == 60


def test_checkpointer_stop_messages_and_non_finite_refusal(tmp_path, monkeypatch):
    c, net, _, saved = _checkpointer(tmp_path, monkeypatch, ck.SaveEvery())
    assert c.last_good() == "No checkpoint had been saved yet."
    assert c.stop(1, loss=1.0, why="SIGTERM", save=False).startswith(
        "interrupted (SIGTERM) at step 1 of 9; no checkpoint (none saved yet)")
    msg = c.stop(2, loss=1.0, why="SIGINT")
    assert saved == [2] and f"checkpoint at step 2 in {tmp_path / 'checkpoints'}" in msg and msg.endswith("--resume")
    with torch.no_grad():
        next(net.parameters()).fill_(float("nan"))
    with pytest.raises(SSLProbeError, match=r"non-finite by step 4; nothing saved. The last good checkpoint \(step 2"):
        c.save(4, loss=1.0)
    assert saved == [2] and ck.find_latest(tmp_path / "checkpoints").step == 2
