"""`pretrain --minutes`: a timing run fits the whole schedule into the minutes, and the fit is kept."""
import json
import math

from sslprobe import timebudget as budgets
from sslprobe.pretraining import pretrain as pretrain_module
from sslprobe.pretraining.pretrain import pretrain
from tests.clirun import run

FAST = {"model": "test_resnet", "image_size": 16, "batch_size": 8, "proj_hidden": 32, "proj_dim": 16, "workers": 0,
        "show_progress": False, "log_every": 1}
RATE = 1.0  # steps per second, whatever this machine measures: 0.1 minutes then fit 6 steps less the setup


def _no_timing_run(*args, **kwargs):
    raise AssertionError("a saved fit was measured again")


def _schedule(out):
    return [(r["step"], r["lr"], r["tau"]) for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())]


def test_minutes_fit_the_whole_schedule_and_a_rerun_keeps_the_fit(class_folder, tmp_path, monkeypatch):
    monkeypatch.setattr(budgets, "step_rate", lambda metrics, *, global_batch: RATE)
    out = tmp_path / "run"
    s = pretrain(class_folder, out=out, minutes=0.1, **FAST)
    fitted = json.loads((out / "budget" / "budget.json").read_text())
    assert fitted["max_steps"] == math.floor((0.1 * 60 - fitted["setup_seconds"]) * RATE) >= 1
    assert s.status == "complete" and s.steps == s.total_steps == fitted["max_steps"]
    assert s.budget == fitted and json.loads((out / "summary.json").read_text())["budget"] == fitted
    timing = json.loads((out / "budget" / "timing" / "summary.json").read_text())
    assert timing["status"] == "complete" and timing["total_steps"] == budgets.MEASURE_STEPS
    # the schedule is a run of exactly the fitted steps: warm-up, cosine and τ end where the run ends
    ref = pretrain(class_folder, out=tmp_path / "ref", max_steps=fitted["max_steps"], **FAST)
    assert ref.budget is None and _schedule(out) == _schedule(tmp_path / "ref")
    monkeypatch.setattr(pretrain_module, "_timing_run", _no_timing_run)
    again = pretrain(class_folder, out=out, minutes=0.1, **FAST)  # a rerun of the finished run
    assert again.status == "complete" and again.total_steps == fitted["max_steps"] and again.budget == fitted
    resumed = pretrain(class_folder, out=out, minutes=0.1, resume="yes", **FAST)
    assert resumed.resumed_from == fitted["max_steps"] and resumed.budget == fitted


def test_cli_prints_the_fit_and_refuses_minutes_with_max_steps(class_folder, tmp_path, monkeypatch, capsys):
    (tmp_path / "run" / "budget").mkdir(parents=True)
    budgets.save_fit(tmp_path / "run" / "budget", budgets.FittedSteps(0.5, 3, 2.0, 1.0, budgets.MEASURE_STEPS))
    monkeypatch.setattr(pretrain_module, "_timing_run", _no_timing_run)
    code, _, err = run(monkeypatch, capsys, "pretrain", class_folder, "--out", tmp_path / "run", "--minutes", "0.5",
                       "--model", "test_resnet", "--image-size", "16", "--batch-size", "8", "--proj-hidden", "32",
                       "--proj-dim", "16", "--workers", "0")
    assert code == 0, err
    assert "--minutes 0.5 fits 3 steps" in err and "complete: 3/3 steps" in err
    code, _, err = run(monkeypatch, capsys, "pretrain", class_folder, "--out", tmp_path / "r2", "--minutes", "1",
                       "--max-steps", "5")
    lines = [x for x in err.splitlines() if x.strip()]
    assert code == 2 and lines == ["error: --minutes and --max-steps are both run lengths; give one of them"], err
    code, _, err = run(monkeypatch, capsys, "pretrain", class_folder, "--out", tmp_path / "r2", "--minutes", "0")
    assert code == 2 and "--minutes must be a positive number" in err
    assert not (tmp_path / "r2").exists()
