"""The shared schedules: warm-up + cosine for learning rates, the cosine ramp of BYOL's τ, the warm-up length."""
import math

import pytest
import torch

from sslprobe.schedules import cosine_to_one, warmup_cosine, warmup_steps


@pytest.mark.parametrize(
    "step, total, base, expected",
    [(0, 100, 0.996, 0.996), (100, 100, 0.996, 1.0), (50, 100, 0.99, 0.995), (200, 100, 0.99, 1.0),
     (-5, 100, 0.99, 0.99)],
)
def test_tau_rises_from_base_to_one_along_a_cosine(step, total, base, expected):
    assert cosine_to_one(step, total, base) == pytest.approx(expected)


@pytest.mark.parametrize("step, expected", [(0, 0.1), (9, 1.0), (10, 1.0), (55, 0.5), (100, 0.0), (150, 0.0)])
def test_lr_warmup_then_cosine(step, expected):
    assert warmup_cosine(step, 100, peak=1.0, warmup=10) == pytest.approx(expected, abs=1e-9)


def test_fine_tuning_factor_is_the_same_curve_at_peak_one():
    assert warmup_cosine(0, 10, warmup=2) == 0.5 and warmup_cosine(1, 10, warmup=2) == 1.0
    assert warmup_cosine(2, 10, warmup=2) == 1.0 and warmup_cosine(10, 10, warmup=2) == pytest.approx(0.0)
    assert warmup_cosine(3, 10, warmup=2, peak=0.4) == pytest.approx(0.4 * 0.5 * (1 + math.cos(math.pi / 8)))


def test_no_warmup_starts_at_the_peak_even_before_step_zero():
    assert warmup_cosine(0, 10, warmup=0, peak=2.0) == 2.0 and warmup_cosine(-1, 10, warmup=0, peak=2.0) == 2.0


def test_warmup_is_at_most_half_the_run():
    assert warmup_steps(10, steps_per_epoch=5, total=1000) == 50
    assert warmup_steps(10, steps_per_epoch=5, total=60) == 30
    assert warmup_steps(0.5, steps_per_epoch=3, total=100) == 2  # round(1.5): banker's rounding, as before


def _timm_lr(total: int, warmup: int, peak: float) -> list[float]:
    from timm.scheduler import CosineLRScheduler

    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=peak)
    sched = CosineLRScheduler(opt, t_initial=total - warmup, warmup_t=warmup, warmup_lr_init=0.0, warmup_prefix=True,
                              t_in_epochs=False)
    return [sched._get_lr(k)[0] for k in range(total + 1)]


def test_timms_cosine_scheduler_differs_only_in_the_warmup_so_ours_is_kept():
    """The module docstring's claim: timm's warm-up starts at 0 (ours at peak/warmup); the cosine agrees to 1e-7."""
    total, warmup, peak = 100, 10, 1.0
    theirs = _timm_lr(total, warmup, peak)
    ours = [warmup_cosine(k, total, warmup=warmup, peak=peak) for k in range(total + 1)]
    assert max(abs(a - b) for a, b in zip(ours[warmup:], theirs[warmup:])) < 1e-7
    assert max(abs(a - b) for a, b in zip(ours[:warmup], theirs[:warmup])) == pytest.approx(peak / warmup)
