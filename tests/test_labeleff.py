"""The probe's label-efficiency curve (the generic subsets and draws: test_labelcurves.py)."""
from __future__ import annotations

import pytest
import torch

from sslprobe.errors import SSLProbeError
from sslprobe.probing.labeleff import label_efficiency


def test_curve_mean_std_and_single_run_for_whole_split():
    y = torch.tensor([0, 1] * 50)
    calls = []

    def linear(rows):
        calls.append(rows.numel())
        return rows.numel() / 100, 1.0, "rule", [rows.numel() % 2] * 4  # the draw's predictions of 4 rows

    points = label_efficiency([("fraction", 0.1), ("fraction", 1.0), ("shots", 2)], labels=y, seeds=3, seed=0,
                              linear=linear, knn=lambda rows: 0.5)
    assert calls == [10, 10, 10, 100, 4, 4, 4]  # fraction 1.0 draws the same rows every seed: run once
    p = points[0]
    assert p["n_train"] == 10 and p["seeds"] == 3 and p["linear"]["mean"] == pytest.approx(0.1)
    assert p["linear"]["std"] == 0.0 and p["knn"]["runs"] == [0.5] * 3 and p["C"] == [1.0] * 3
    assert p["C_rule"] == ["rule"] and p["linear"]["predictions"] == [[0, 0, 0, 0]] * 3  # kept per draw
    assert points[1]["seeds"] == 1 and points[2]["kind"] == "shots" and points[2]["n_train"] == 4


def test_curve_refuses_degenerate_subsets():
    y = torch.tensor([0] * 99 + [1])
    with pytest.raises(SSLProbeError, match="fewer than 2 classes"):
        label_efficiency([("shots", 1)], labels=y[:99], seeds=1, seed=0, linear=None, knn=lambda r: 0.0)


def test_probe_refuses_zero_seeds_before_any_work(monkeypatch):
    import sslprobe.probing.probe as P
    from sslprobe.errors import SSLProbeError

    monkeypatch.setattr(P, "as_feature_set", lambda *a, **k: (_ for _ in ()).throw(AssertionError("loaded data")))
    with pytest.raises(SSLProbeError, match="--seeds"):
        P.probe("unused", fractions=[0.1], seeds=0)
