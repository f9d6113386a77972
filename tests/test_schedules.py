import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from progdistill.diffusion.schedules import CosineSchedule, LinearBetaSchedule, alpha_sigma, make_schedule, step_grid


@pytest.mark.parametrize("schedule", [CosineSchedule(), CosineSchedule(-10, 12), LinearBetaSchedule()])
def test_monotone_and_clipped(schedule):
    t = torch.linspace(0, 1, 2001, dtype=torch.float64)
    logsnr = schedule(t)
    assert torch.all(logsnr[1:] <= logsnr[:-1])
    assert torch.all(torch.diff(logsnr)[(logsnr[1:] < schedule.logsnr_max) & (logsnr[:-1] > schedule.logsnr_min)] < 0)
    assert logsnr.max() <= schedule.logsnr_max and logsnr.min() >= schedule.logsnr_min
    assert logsnr[0] == schedule.logsnr_max


def test_cosine_endpoints_match_paper():
    s = CosineSchedule()
    ends = s(torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert torch.allclose(ends, torch.tensor([20.0, -20.0], dtype=torch.float64), atol=1e-6)
    alpha, sigma = alpha_sigma(ends)
    assert alpha[1].item() == pytest.approx(4.54e-5, rel=1e-2)  # alpha_1 ~ 4.5e-5, not 0
    assert sigma[0].item() == pytest.approx(4.54e-5, rel=1e-2)
    # alpha_t ~ cos(pi t / 2) in the interior
    t = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    assert torch.allclose(alpha_sigma(s(t))[0], torch.cos(math.pi * t / 2), atol=1e-4)


@given(st.floats(-30, 30))
def test_alpha_sigma_variance_preserving(logsnr):
    alpha, sigma = alpha_sigma(torch.tensor(logsnr, dtype=torch.float64))
    assert float(alpha**2 + sigma**2) == pytest.approx(1.0, abs=1e-12)
    assert torch.isfinite(alpha) and torch.isfinite(sigma) and alpha > 0 and sigma > 0


def test_linear_schedule_matches_discrete_ddpm():
    betas = np.linspace(1e-4, 0.02, 1000)
    alphas_cumprod = np.cumprod(1 - betas)
    i = np.array([10, 100, 300, 600, 999])
    logsnr_discrete = np.log(alphas_cumprod[i] / (1 - alphas_cumprod[i]))
    logsnr = LinearBetaSchedule()(torch.tensor((i + 1) / 1000, dtype=torch.float64)).numpy()
    # The continuous-time form is an approximation of the product; it ignores the O(beta^2) terms of log(1 - beta), so it agrees to < 0.1 in log-SNR.
    assert np.allclose(logsnr, logsnr_discrete, atol=0.1)


def test_step_grid_includes_both_ends():
    grid = step_grid(CosineSchedule(), 4, dtype=torch.float64)
    assert grid.shape == (5,)
    assert grid[0] == pytest.approx(-20.0, abs=1e-6) and grid[-1] == pytest.approx(20.0, abs=1e-6)
    with pytest.raises(ValueError, match="steps"):
        step_grid(CosineSchedule(), 0)


def test_bad_schedules_are_refused():
    with pytest.raises(ValueError, match="unknown schedule"):
        make_schedule("sqrt")
    with pytest.raises(ValueError, match="logsnr_min < logsnr_max"):
        CosineSchedule(5, -5)
    with pytest.raises(ValueError, match="beta_start < beta_end"):
        LinearBetaSchedule(beta_start=0.1, beta_end=0.01)


@settings(max_examples=50)
@given(st.floats(-15, -1), st.floats(1, 15), st.floats(0, 1))
def test_cosine_any_range_hits_its_ends(lo, hi, t):
    s = CosineSchedule(lo, hi)
    ends = s(torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert ends[0].item() == pytest.approx(hi, abs=1e-6) and ends[1].item() == pytest.approx(lo, abs=1e-6)
    assert lo - 1e-9 <= s(torch.tensor(t, dtype=torch.float64)).item() <= hi + 1e-9
