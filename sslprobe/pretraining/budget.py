"""A time budget for BYOL that fits the whole schedule in, rather than cutting a longer one off.

``pretrain --max-minutes`` stops a run whose learning rate is still high and whose target EMA has
not reached 1. Here the schedule itself is sized: a short timing run measures the step rate of this
model, batch and machine, and ``max_steps`` is set so that warm-up, cosine decay and τ's ramp all
complete within the minutes (docs/pretrain.md, "Time budgets"; docs/study.md, "Budget"). The fitted
steps are saved, so a rerun or a resumed run keeps the schedule it started with.
"""
from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from sslprobe.errors import SSLProbeError
from sslprobe.fileio import write_json

MEASURE_STEPS = 20  # timed steps; the first window (warm-up, first allocations) is not counted
MEASURE_LOG_EVERY = 5


@dataclass(frozen=True)
class FittedBudget:
    """``max_steps`` that fit ``minutes``, and the measurement they come from."""

    minutes: float
    max_steps: int
    steps_per_second: float
    setup_seconds: float  # what a run costs besides its steps: decoding the pool, building, saving
    measured_steps: int


def step_rate(metrics: Path, *, global_batch: int) -> float:
    """Steps per second of the logged windows after the first (metrics.jsonl's img_per_s ÷ batch)."""
    rates = []
    for line in metrics.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and rec.get("img_per_s") and rec.get("step", 0) > MEASURE_LOG_EVERY:
            rates.append(float(rec["img_per_s"]) / global_batch)
    if not rates:
        raise SSLProbeError(f"the timing run logged no step rate ({metrics}); pass --epochs instead of --minutes")
    return statistics.median(rates)


def fit(minutes: float, *, steps_per_second: float, setup_seconds: float, measured_steps: int) -> FittedBudget:
    """The longest schedule whose steps, with the run's setup, take at most ``minutes``."""
    train_seconds = minutes * 60 - setup_seconds
    steps = math.floor(train_seconds * steps_per_second)
    if steps < 1:
        raise SSLProbeError(f"--minutes {minutes:g} leaves no time to train: setting a run up takes "
                            f"{setup_seconds:.0f} s here; give more minutes")
    return FittedBudget(minutes, steps, steps_per_second, setup_seconds, measured_steps)


def saved_fit(workdir: Path, minutes: float) -> FittedBudget | None:
    """The fit saved in ``workdir`` for these minutes; None when there is none (a damaged one is measured again)."""
    saved = workdir / "budget.json"
    if not saved.is_file():
        return None
    try:
        doc = json.loads(saved.read_text())
        return FittedBudget(**doc) if doc.get("minutes") == minutes else None
    except (OSError, ValueError, TypeError):
        return None


def measured_fit(minutes: float, *, run: Path, wall: float) -> FittedBudget:
    """The fit from a timing run of :data:`MEASURE_STEPS` steps in ``run`` that took ``wall`` seconds in all."""
    config = json.loads((run / "config.json").read_text())
    rate = step_rate(run / "metrics.jsonl", global_batch=int(config["global_batch"]))
    return fit(minutes, steps_per_second=rate, setup_seconds=max(0.0, wall - MEASURE_STEPS / rate),
               measured_steps=MEASURE_STEPS)


def save_fit(workdir: Path, budget: FittedBudget) -> None:
    write_json(workdir / "budget.json", asdict(budget))


def fitted_steps(minutes: float, *, workdir: Path, measure: Callable[[Path, int], Path]) -> FittedBudget:
    """The saved fit in ``workdir`` for these minutes, else a timing run (``measure(out, steps)`` runs
    pretraining for ``steps`` steps into ``out`` and returns its directory) and a new fit."""
    budget = saved_fit(workdir, minutes)
    if budget is not None:
        return budget
    t0 = time.perf_counter()
    run = measure(workdir / "timing", MEASURE_STEPS)
    budget = measured_fit(minutes, run=run, wall=time.perf_counter() - t0)
    save_fit(workdir, budget)
    return budget
