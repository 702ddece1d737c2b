"""The shared time budget: minutes → steps (pretraining, the study) or whole epochs (fine-tuning) from a timed run."""
import json

import pytest

from sslprobe.errors import SSLProbeError
from sslprobe.timebudget import MEASURE_STEPS, FittedSteps, StepTiming, fit_steps, fitted_steps, saved_fit, step_rate


def _fake_timing(out, steps, *, img_per_s=80.0):
    out.mkdir(parents=True)
    (out / "config.json").write_text(json.dumps({"global_batch": 8}))
    (out / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "img_per_s": img_per_s}) + "\n"
                                               for s in (5, 10, 15, 20)))
    return out


def test_time_budget_fits_the_whole_schedule(tmp_path):
    b = fit_steps(2.0, steps_per_second=4.0, setup_seconds=30.0, measured_steps=20)
    assert b.max_steps == 360  # (120 s − 30 s) × 4 steps/s: warm-up, cosine and τ all end inside the minutes
    with pytest.raises(SSLProbeError, match="leaves no time"):
        fit_steps(0.4, steps_per_second=4.0, setup_seconds=30.0, measured_steps=20)
    measured = []

    def measure(out, steps):
        measured.append(steps)
        out.mkdir(parents=True)
        (out / "config.json").write_text(json.dumps({"global_batch": 8}))
        (out / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "img_per_s": 80.0}) + "\n"
                                                   for s in (5, 10, 15, 20)))
        return out

    first = fitted_steps(1.0, workdir=tmp_path, measure=measure)
    assert first.steps_per_second == 10.0 and 0 < first.max_steps <= 600
    assert fitted_steps(1.0, workdir=tmp_path, measure=measure) == first and measured == [20]  # saved: a resume
    # keeps its schedule



def test_step_rate_skips_the_first_window_and_refuses_an_empty_log(tmp_path):
    (tmp_path / "m.jsonl").write_text("not json\n" + "".join(json.dumps({"step": s, "img_per_s": r}) + "\n"
                                                          for s, r in ((5, 8.0), (10, 80.0), (15, 160.0))))
    assert step_rate(tmp_path / "m.jsonl", global_batch=8) == 15.0  # median of 10 and 20 steps/s; step 5 left out
    (tmp_path / "e.jsonl").write_text("")
    with pytest.raises(SSLProbeError, match="no step rate"):
        step_rate(tmp_path / "e.jsonl", global_batch=8)


def test_a_fit_for_other_minutes_or_a_damaged_one_is_measured_again(tmp_path):
    (tmp_path / "budget.json").write_text(json.dumps({"minutes": 2.0, "max_steps": 5, "steps_per_second": 1.0,
                                                      "setup_seconds": 0.0, "measured_steps": MEASURE_STEPS}))
    assert saved_fit(tmp_path, 2.0) == FittedSteps(2.0, 5, 1.0, 0.0, MEASURE_STEPS) and saved_fit(tmp_path, 1.0) is None
    (tmp_path / "budget.json").write_text("{")
    assert saved_fit(tmp_path, 2.0) is None


def test_under_torchrun_only_the_main_rank_fits_and_every_rank_takes_its_answer(tmp_path):
    rank0 = fitted_steps(1.0, workdir=tmp_path / "a", measure=_fake_timing)
    answers, shared, measured = iter([None, rank0]), [], []  # rank 0: no saved fit, then its new one

    def share(value):  # what distributed.broadcast does: rank 0's value everywhere
        shared.append(value)
        return next(answers)

    def measure(out, steps):  # every rank runs the timing run (DDP), this one too
        measured.append(steps)
        return _fake_timing(out, steps)

    other = fitted_steps(1.0, workdir=tmp_path / "b", measure=measure, main=False, share=share)
    assert other == rank0 and measured == [MEASURE_STEPS]
    assert shared == [None, None] and not (tmp_path / "b" / "budget.json").exists()  # not read, fitted nor saved here


def test_fine_tuning_minutes_become_whole_epochs():
    t = StepTiming(step_s=0.5, batch=8, eval_image_s=0.01)
    assert t.epochs(minutes=1, n_train=16, n_val=10, batch=8) == 60 // (2 * 0.5 + 0.1)
    assert t.epochs(minutes=0.001, n_train=16, n_val=10, batch=8) == 1
    assert t.epochs(minutes=1, n_train=16, n_val=0, batch=4) == 60 // (4 * 0.5 * 4 / 8)  # the step scales with batch
