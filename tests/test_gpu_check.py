"""bench/gpu_check.py: the prepared GPU check keeps running between GPU runs (its --smoke mode on the CPU).

The smoke run is one subprocess of the script as the GPU machine runs it; the other tests check that a
failing or over-budget stage costs only its own rows, and the pieces the full run depends on.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.py"
ROW_KEYS = {"key", "measure", "value", "unit", "goal", "met", "note", "status"}
STAGE_KEYS = {"name", "title", "status", "seconds", "budget_s", "rows", "details"}
# lightly is a bench extra, not a test dependency: without it the two BYOL stages must say so in every row
LIGHTLY = importlib.util.find_spec("lightly") is not None
NEEDS_LIGHTLY = {"byol_r50", "byol_r18"}


@pytest.fixture(scope="module")
def gc():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = mod  # its dataclasses look their module up while the file runs
    try:
        spec.loader.exec_module(mod)
        yield mod
    finally:
        del sys.modules["gpu_check"]


def _run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def test_smoke_runs_every_stage_and_writes_every_planned_row(gc, tmp_path):
    out = tmp_path / "check.json"
    r = _run("--smoke", "--json", str(out), "--work", str(tmp_path / "work"))
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["schema"] == gc.SCHEMA and doc["mode"] == "smoke" and doc["goals_judged"] is False
    assert [s["name"] for s in doc["stages"]] == [s.name for s in gc.STAGES]
    for stage, s in zip(gc.STAGES, doc["stages"]):
        assert [row["key"] for row in s["rows"]] == [p.key for p in stage.planned]
        if stage.name in NEEDS_LIGHTLY and not LIGHTLY:
            assert s["status"].startswith("skipped: lightly not installed"), s["status"]
            assert all(row["status"] == s["status"] for row in s["rows"]), s["rows"]
            continue
        assert set(s) == STAGE_KEYS and s["status"] == "ok", (s["name"], s["status"], s["details"].get("traceback"))
        for row in s["rows"]:
            assert set(row) == ROW_KEYS and row["met"] is None  # goals are not judged on toy sizes
            assert row["status"] == "ok" or row["status"].startswith("skipped: no CUDA"), (s["name"], row)
            assert row["status"] != "ok" or row["value"] is not None, (s["name"], row)
    # the CUDA-only paths still leave their rows: nvJPEG ran its CPU fallback, compile and the tests say why not
    rows = {(s["name"], row["key"]): row for s in doc["stages"] for row in s["rows"]}
    assert rows[("extract", "gpu_decode")]["value"] is not None
    if LIGHTLY:
        assert rows[("byol_r18", "compiled")]["status"] == "skipped: no CUDA"
    assert "skipped" in rows[("cuda_tests", "tests")]["value"]
    assert rows[("probe", "offload")]["status"] == "ok"  # the host-resident probe scores as the on-device one
    md = out.with_suffix(".md").read_text()
    assert md.count("\n| ") == 2 + len(rows) and "SMOKE" in md
    assert "goal" in r.stdout and "quality" in r.stdout and "wall " in r.stdout


def test_a_failing_stage_keeps_the_other_stages_rows(gc, tmp_path, monkeypatch):
    def nvjpeg_missing() -> None:
        raise OSError("no nvJPEG here")

    def ok(ctx):
        return {"a": gc.Measured(1.5, "s"), "b": gc.guarded(nvjpeg_missing)}, {"work": str(ctx.work)}

    def boom(ctx):
        ctx.keep({"a": gc.Measured(0.5, "s")})  # measured before the failure: kept
        raise RuntimeError("the device fell over")

    planned = (gc.Planned("a", "a row", gc.Goal("<=", 2.0, "≤ 2 s")), gc.Planned("b", "b row"))
    stages = (gc.Stage("first", "ok", 10, planned, ok), gc.Stage("second", "fails", 10, planned, boom),
              gc.Stage("third", "ok again", 10, planned, ok))
    monkeypatch.setattr(gc, "STAGES", stages)
    monkeypatch.setattr(gc, "BY_NAME", {s.name: s for s in stages})
    out = tmp_path / "check.json"
    doc = gc.main(["--smoke", "--json", str(out), "--work", str(tmp_path / "w")])
    first, second, third = doc["stages"]
    assert second["status"] == "failed: RuntimeError: the device fell over"
    assert "Traceback" in second["details"]["traceback"]
    (a, b) = second["rows"]
    assert a["value"] == 0.5 and a["status"] == "ok" and b["value"] is None and b["status"] == second["status"]
    assert first["status"] == third["status"] == "ok" and third["rows"][0]["value"] == 1.5
    assert third["rows"][1]["status"] == "failed: OSError: no nvJPEG here"  # a row's failure is the row's only
    assert json.loads(out.read_text())["stages"] == doc["stages"]  # written after every stage


def test_judged_goals_and_unplanned_rows(gc):
    planned = (gc.Planned("x", "x", gc.Goal(">=", 1.8, "≥ 1.8×")), gc.Planned("y", "y", goal_text="context"))
    rows = gc.row_dicts(planned, {"x": gc.Measured(1.79, "× lightly")}, status="ok", judge=True)
    assert rows[0]["met"] is False and rows[0]["goal"] == "≥ 1.8×"
    assert rows[1]["status"] == "not measured" and rows[1]["goal"] == "context" and rows[1]["met"] is None
    assert gc.row_dicts(planned, {"x": gc.Measured(2.0)}, status="ok", judge=True)[0]["met"] is True
    with pytest.raises(KeyError, match="unplanned"):
        gc.row_dicts(planned, {"z": gc.Measured(1)}, status="ok", judge=True)


def test_an_isolated_stage_past_its_budget_is_stopped_and_recorded(tmp_path):
    out = tmp_path / "check.json"
    r = _run("--smoke", "--isolate", "--only", "cuda_tests", "--budget", "cuda_tests=1", "--json", str(out),
             "--work", str(tmp_path / "work"))
    assert r.returncode == 0, r.stderr[-3000:]
    env, tests = json.loads(out.read_text())["stages"]  # env always runs: every report names its device
    assert env["status"] == "ok" and env["rows"][0]["value"].startswith("CPU only")  # back from its own process
    assert tests["status"] == "failed: timeout after 1 s (budget)" and tests["rows"][0]["status"] == tests["status"]


def test_a_stopped_stage_keeps_the_rows_it_had_measured(gc, tmp_path):
    part = tmp_path / "parts" / "byol_r18.json"
    part.parent.mkdir()
    ctx = gc.Context(smoke=True, device="cpu", sizes=gc.SMOKE, work=tmp_path, idx_dir=None,
                     partial=gc.partial_path(part))
    ctx.keep({"lightly": gc.Measured(7890, "img/s"), "eager": gc.Measured(1.3, "× lightly", "a note")})
    kept = gc.kept_rows(part)
    assert kept["eager"] == gc.Measured(1.3, "× lightly", "a note")
    rows = gc.row_dicts(gc.R18_ROWS, kept, status="failed: timeout after 180 s (budget)", judge=True)
    by = {r["key"]: r for r in rows}
    assert by["lightly"]["value"] == 7890 and by["eager"]["status"] == "ok"
    assert by["compiled"]["status"] == "failed: timeout after 180 s (budget)" and by["compiled"]["met"] is None
    assert gc.kept_rows(tmp_path / "parts" / "none.json") == {}


def test_the_cuda_only_tests_are_found(gc):
    assert "tests/test_pretrain.py::test_cuda_step_never_waits_for_the_gpu" in gc.cuda_only_tests(ROOT / "tests")


def test_fashion_mnist_idx_round_trip(gc, tmp_path):
    idx = gc.write_toy_idx(tmp_path / "idx", train=30, test=20)
    x, y = gc.read_idx(idx / "train-images-idx3-ubyte.gz"), gc.read_idx(idx / "train-labels-idx1-ubyte.gz")
    assert x.shape == (30, 28, 28) and x.dtype == np.uint8 and y.tolist() == [i % 10 for i in range(30)]
    assert gc.fmnist_folder(idx, tmp_path / "train", prefix="train", per_class=2) == 20
    assert sorted(p.name for p in (tmp_path / "train").iterdir()) == sorted(gc.FMNIST_CLASSES)
    assert gc.find_idx(idx) == idx
