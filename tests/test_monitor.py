"""Monitoring: collapse indicator and warning, metrics log trimming on resume, the loss meter and run log, online
kNN and its cadence, loss curve, compile flag."""
import json
import math
import sys

import pytest
import torch

from sslprobe.errors import SSLProbeError
from sslprobe.pretraining.byol import projection_std
from sslprobe.pretraining.monitor import (
    KnnEval,
    LossMeter,
    MetricsLog,
    RunLog,
    check_collapse,
    collapse_threshold,
    describe,
    knn_due,
    loss_curve,
)
from sslprobe.pretraining.pretrain import pretrain
from tests.test_pretrain import FAST


def test_projection_std_on_known_vectors():
    assert projection_std(torch.tensor([[3.0, 0.0], [0.0, 5.0]])).item() == pytest.approx(math.sqrt(0.5))
    assert projection_std(torch.tensor([[1.0, 2.0]] * 8)).item() == pytest.approx(0.0, abs=1e-7)  # collapsed
    z = torch.randn(4096, 256, generator=torch.Generator().manual_seed(0))
    assert projection_std(z).item() == pytest.approx(1 / 16, rel=0.02)  # healthy ≈ 1/√D


@pytest.mark.parametrize("std, warns", [(0.0, True), (0.1 / 16 - 1e-4, True), (0.1 / 16 + 1e-4, False),
                                        (1 / 16, False)])
def test_collapse_warning_threshold(std, warns):
    assert collapse_threshold(256) == pytest.approx(0.1 / 16)
    assert (check_collapse(std, proj_dim=256, step=7) is not None) is warns


def test_describe_has_every_field():
    text = describe(epoch=3, step=120, total=1000, loss=0.51234, lr=0.2, tau=0.99612, rate=1234.5, wait=0.25)
    for part in ("ep 3", "120/1000", "loss 0.5123", "lr 0.2", "τ 0.99612", "1,234 img/s", "data wait 25%"):
        assert part in text


def test_metrics_log_trims_to_checkpoint_and_drops_half_lines(tmp_path):
    p = tmp_path / "metrics.jsonl"
    p.write_text('{"step": 2, "loss": 1}\n{"step": 4, "loss": 1}\n{"step": 6, "loss": 1}\n{"step": 8, "lo')
    log = MetricsLog(p, resume_step=4)
    log.write({"step": 6, "loss": 0.5})
    log.close()
    assert [r["step"] for r in log.records()] == [2, 4, 6] and log.records()[-1]["loss"] == 0.5
    MetricsLog(p, resume_step=None).close()  # a fresh run starts an empty log
    assert p.read_text() == ""


def test_loss_meter_means_each_window_and_starts_afresh(monkeypatch):
    import sslprobe.pretraining.monitor as mon

    clock = [10.0]
    monkeypatch.setattr(mon.time, "perf_counter", lambda: clock[0])
    m = LossMeter(torch.device("cpu"))
    assert math.isnan(m.loss) and LossMeter(torch.device("cpu"), loss=0.7).loss == 0.7  # resumed: the checkpoint's
    for loss, std in ((1.0, 0.2), (3.0, 0.4)):
        m.add(torch.tensor(loss), torch.tensor(std), images=8, wait=0.5)
    clock[0] += 4.0
    w = m.take()
    assert (w.loss, w.proj_std, w.img_per_s, w.data_wait) == (2.0, pytest.approx(0.3), 4.0, 0.25) and m.loss == 2.0
    assert m.steps == m.images == 0 and m.wait == 0
    m.add(torch.tensor(5.0), torch.tensor(0.1), images=8, wait=0.0)
    clock[0] += 2.0
    assert m.take().loss == 5.0 and m.loss == 5.0  # the second window holds only its own step


def test_run_log_records_windows_warns_once_and_logs_knn(tmp_path):
    from sslprobe.pretraining.monitor import Window

    log = MetricsLog(tmp_path / "m.jsonl", resume_step=None)
    healthy, collapsed = Window(1.5, 0.25, 100.0, 0.1), Window(1.4, 0.0, 100.0, 0.1)
    with RunLog(log, show=False, start=0, total=6, steps_per_epoch=3, proj_dim=16, warn=True) as run:
        run.window(2, healthy, lr=0.1, tau=0.99)
        with pytest.warns(RuntimeWarning, match="step 4: projections look collapsed"):
            run.window(4, collapsed, lr=0.1, tau=0.99)
        run.window(6, collapsed, lr=0.1, tau=0.99)  # collapsed again: recorded, not warned again
        run.knn(6, 0.51234)
    log.close()
    recs = log.records()
    assert [(r["step"], r["epoch"], r.get("collapsed")) for r in recs[:3]] == [(2, 0, None), (4, 1, True), (6, 1, True)]
    assert recs[0]["img_per_s"] == 100.0 and recs[3] == {"step": 6, "epoch": 1, "knn_top1": 0.5123}
    assert len(run.warnings) == 1


@pytest.mark.parametrize("total, final, due", [
    (7, False, [6]),  # every 2nd epoch of 3 steps ends at step 6
    (7, True, [7]),  # the last weights, no epoch ending there
    (6, True, []),  # the schedule ends with an epoch: the in-loop check covers it
])
def test_knn_cadence(total, final, due):
    assert [s for s in range(1, total + 1) if knn_due(s, steps_per_epoch=3, every=2, total=total, final=final)] == due


def test_collapse_is_logged_and_warned(class_folder, tmp_path, monkeypatch):
    monkeypatch.setattr("sslprobe.pretraining.byol.projection_std", lambda z: torch.zeros((), device=z.device))
    with pytest.warns(RuntimeWarning, match="collapsed"):
        s = pretrain(class_folder, out=tmp_path / "r", **FAST)
    lines = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert all(x["proj_std"] == 0 and x["collapsed"] for x in lines) and len(s.warnings) == 1


def test_healthy_run_logs_proj_std_without_warning(class_folder, tmp_path, recwarn):
    pretrain(class_folder, out=tmp_path / "r", **FAST)
    lines = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert all(x["proj_std"] > collapse_threshold(16) and "collapsed" not in x for x in lines)
    assert {"data_wait", "img_per_s", "lr", "tau"} <= set(lines[0])
    assert not [w for w in recwarn if "collapsed" in str(w.message)]


def test_online_knn_every_epoch(class_folder, tmp_path):
    s = pretrain(class_folder, out=tmp_path / "r", eval_train=class_folder, eval_test=class_folder,
                 **{**FAST, "max_steps": 7})  # 3 steps per epoch: kNN after steps 3, 6 and at the end (7)
    knn = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines() if "knn_top1" in x]
    assert [x["step"] for x in knn] == [3, 6, 7]
    assert 0.5 <= s.knn_top1 <= 1  # two brightness classes, the bank is the test set itself


def test_knn_eval_needs_labels_and_both_folders(class_folder, tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for p in list((class_folder / "dark").iterdir())[:3]:
        (flat / p.name).write_bytes(p.read_bytes())
    with pytest.raises(SSLProbeError, match="no class subfolders"):
        KnnEval(flat, class_folder, size=16, device=torch.device("cpu"), workers=0)
    with pytest.raises(SSLProbeError, match="both --eval-train and --eval-test"):
        pretrain(class_folder, out=tmp_path / "r", eval_train=class_folder, **FAST)


def test_loss_curve_png_and_skip_without_matplotlib(tmp_path, monkeypatch):
    recs = [{"step": i, "loss": 4 - i / 10} for i in range(1, 10)] + [{"step": 9, "knn_top1": 0.5}]
    out = loss_curve(recs, tmp_path / "c.png")
    assert out == str(tmp_path / "c.png") and (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails as if not installed
    assert loss_curve(recs, tmp_path / "d.png").startswith("skipped: matplotlib")
    assert not (tmp_path / "d.png").exists()


def test_compile_flag_falls_back_cleanly(class_folder, tmp_path, monkeypatch):
    def unavailable(*a, **k):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", unavailable)
    s = pretrain(class_folder, out=tmp_path / "a", compile=True, **FAST)
    assert s.compile.startswith("off (RuntimeError") and s.status == "complete"

    def fails_at_first_call(net, **k):
        def run(*a, **kw):
            raise RuntimeError("inductor failed")
        return run

    monkeypatch.setattr(torch, "compile", fails_at_first_call)
    with pytest.warns(UserWarning, match="--compile failed"):
        s = pretrain(class_folder, out=tmp_path / "b", compile=True, **FAST)
    assert s.compile.startswith("off (compile failed") and s.steps == 4
