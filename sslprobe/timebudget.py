"""A time budget: minutes → steps or epochs, from a timed run, so the whole schedule fits rather than being cut off.

A cosine schedule needs its length in advance (``max_minutes`` stops a run whose learning rate is
still high and whose target EMA has not reached 1). Here the schedule itself is sized from a
measurement of this model, batch and machine:

- pretraining (``pretrain --minutes``, the study's BYOL arms): a short timing run of
  :data:`MEASURE_STEPS` logged steps gives the step rate, and ``max_steps`` is set so that warm-up,
  cosine decay and τ's ramp all complete within the minutes (:func:`fitted_steps`; docs/pretrain.md,
  "Time budgets"; docs/study.md, "Budget"). The fit is saved, so a rerun or a resumed run keeps the
  schedule it started with.
- fine-tuning (``finetune --minutes``): the timed seconds of one training step and of evaluating one
  image give the whole epochs that fit (:class:`StepTiming`; ``finetuning/timing.py`` times them).
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
class FittedSteps:
    """``max_steps`` that fit ``minutes``, and the measurement they come from (saved as budget.json)."""

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


def fit_steps(minutes: float, *, steps_per_second: float, setup_seconds: float, measured_steps: int) -> FittedSteps:
    """The longest schedule whose steps, with the run's setup, take at most ``minutes``."""
    train_seconds = minutes * 60 - setup_seconds
    steps = math.floor(train_seconds * steps_per_second)
    if steps < 1:
        raise SSLProbeError(f"--minutes {minutes:g} leaves no time to train: setting a run up takes "
                            f"{setup_seconds:.0f} s here; give more minutes")
    return FittedSteps(minutes, steps, steps_per_second, setup_seconds, measured_steps)


def saved_fit(workdir: Path, minutes: float) -> FittedSteps | None:
    """The fit saved in ``workdir`` for these minutes; None when there is none (a damaged one is measured again)."""
    saved = workdir / "budget.json"
    if not saved.is_file():
        return None
    try:
        doc = json.loads(saved.read_text())
        return FittedSteps(**doc) if doc.get("minutes") == minutes else None
    except (OSError, ValueError, TypeError):
        return None


def measured_fit(minutes: float, *, run: Path, wall: float) -> FittedSteps:
    """The fit from a timing run of :data:`MEASURE_STEPS` steps in ``run`` that took ``wall`` seconds in all."""
    config = json.loads((run / "config.json").read_text())
    rate = step_rate(run / "metrics.jsonl", global_batch=int(config["global_batch"]))
    return fit_steps(minutes, steps_per_second=rate, setup_seconds=max(0.0, wall - MEASURE_STEPS / rate),
               measured_steps=MEASURE_STEPS)


def save_fit(workdir: Path, budget: FittedSteps) -> None:
    write_json(workdir / "budget.json", asdict(budget))


def fitted_steps(minutes: float, *, workdir: Path, measure: Callable[[Path, int], Path], main: bool = True,
                 share: Callable[[FittedSteps | None], FittedSteps | None] = lambda fit: fit) -> FittedSteps:
    """The saved fit in ``workdir`` for these minutes, else a timing run (``measure(out, steps)`` runs
    pretraining for ``steps`` steps into ``out`` and returns its directory) and a new fit, saved.

    Under torchrun every rank calls it and runs ``measure``; only the ``main`` rank reads, fits and
    saves, and ``share`` (rank 0's value on every rank: ``distributed.broadcast``) gives every rank
    its answer, so all train the same schedule. The wall time of ``measure`` counts as setup.
    """
    budget = share(saved_fit(workdir, minutes) if main else None)
    if budget is not None:
        return budget
    t0 = time.perf_counter()
    run = measure(workdir / "timing", MEASURE_STEPS)
    wall = time.perf_counter() - t0
    if main:
        budget = measured_fit(minutes, run=run, wall=wall)
        save_fit(workdir, budget)
    return share(budget)


@dataclass(frozen=True)
class StepTiming:
    """Seconds of one training step of ``batch`` images and of evaluating one image (fine-tuning's measurement)."""

    step_s: float
    batch: int
    eval_image_s: float

    def epochs(self, *, minutes: float, n_train: int, n_val: int, batch: int) -> int:
        """Whole epochs of ``n_train`` rows (and validation on ``n_val``) that fit in ``minutes``; at least one.

        Whole epochs: a cosine schedule needs its length in advance and an exact resume needs it fixed.
        """
        per_epoch = (n_train // batch) * self.step_s * batch / self.batch + n_val * self.eval_image_s
        return max(1, int(minutes * 60 // max(per_epoch, 1e-9)))


__all__ = ["MEASURE_LOG_EVERY", "MEASURE_STEPS", "FittedSteps", "StepTiming", "fit_steps", "fitted_steps",
           "measured_fit", "save_fit", "saved_fit", "step_rate"]
