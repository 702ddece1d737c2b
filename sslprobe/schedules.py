"""Schedules over training steps: linear warm-up + cosine decay for learning rates, cosine ramp to 1 for BYOL's τ.

Pure functions of the step, so a resumed run recomputes the value it left off at. Pretraining
(``pretraining/trainstep.py``) and fine-tuning (``finetuning/loop.py``) set every group's rate from
:func:`warmup_cosine` each step; both size the warm-up with :func:`warmup_steps`.

timm's ``CosineLRScheduler`` (``warmup_prefix=True``, ``t_in_epochs=False``) is not used: its
warm-up starts at 0 where ours starts at peak/warmup (step k runs at (k+1)/warmup of the peak), a
difference of up to peak/warmup; after the warm-up the two agree to 2e-16 (tests/test_schedules.py).
"""
from __future__ import annotations

import math


def warmup_cosine(step: int, total: int, *, warmup: int, peak: float = 1.0) -> float:
    """Linear warm-up to ``peak`` over ``warmup`` steps, then half a cosine to 0 at ``total`` (per step).

    Step k < warmup runs at peak·(k+1)/warmup, so the first step already trains; then
    peak·(1 + cos(π·(k − warmup)/(total − warmup)))/2 (SGDR without restarts, Loshchilov & Hutter
    2017, eq. 5 with η_min = 0; the warm-up is Goyal et al. 2017's gradual one, per step as in MAE).
    Steps before 0 or past ``total`` take the value at the nearer end of the cosine.
    """
    if warmup > 0 and step < warmup:
        return peak * (step + 1) / warmup
    k = (step - warmup) / max(total - warmup, 1)
    return peak * 0.5 * (1 + math.cos(math.pi * min(max(k, 0.0), 1.0)))


def cosine_to_one(step: int, total: int, start: float) -> float:
    """``start`` at k = 0 rising to 1 at k = K along a half cosine: 1 − (1 − start)(cos(πk/K) + 1)/2.

    BYOL's target decay τ (Grill et al. 2020, §3.2); k is clamped to [0, K].
    """
    k = min(max(step, 0), total)
    return 1 - (1 - start) * (math.cos(math.pi * k / max(total, 1)) + 1) / 2


def warmup_steps(epochs: float, *, steps_per_epoch: int, total: int) -> int:
    """A warm-up of ``epochs`` in steps, at most half the run (a short run still gets its cosine)."""
    return min(round(epochs * steps_per_epoch), total // 2)


__all__ = ["cosine_to_one", "warmup_cosine", "warmup_steps"]
