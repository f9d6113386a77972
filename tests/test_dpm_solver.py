"""DPM-Solver++(2M) against diffusers' DPMSolverMultistepScheduler on the same discretized schedule.

The reference is diffusers with num_train_timesteps = N and alpha_bar[k] = alpha^2 at t = (k + 1) / N, so that
timestep k is our grid point t = (k + 1) / N. The settings that make its grid and final step equal ours:
- timestep_spacing="trailing" gives timesteps N-1 .. 0 for set_timesteps(N) ("linspace" rounds
  linspace(0, N - 1, N + 1) and repeats timesteps; "leading" has step ratio N // (N + 1) = 0).
- final_sigmas_type="zero" appends sigma = 0 (lambda = +inf) as the target of the last step, which diffusers then
  always takes first order: x_s = (0 / sigma_t) z + alpha_s (1 - 0) x_hat = x_hat. That is our t = 0 point, where
  `ddim` and `dpm_solver_pp_2m` return x_hat; the finite logsnr_max at grid[-1] is never used by either.
  ("sigma_min" would end at sigma of alpha_bar[0], i.e. t = 1 / N again: a zero-length step that returns z.)
- lower_order_final and euler_at_final then change nothing for solver_order=2: both only force the last step to first
  order, which "zero" already does (lower_order_final's second-to-last rule only demotes third-order steps).
"""

import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler

from progdistill.denoiser import Denoiser, noise_condition
from progdistill.diffusion.dpm_solver import dpm_solver_pp_2m
from progdistill.diffusion.samplers import ddim
from progdistill.diffusion.schedules import CosineSchedule, LinearBetaSchedule, alpha_sigma, step_grid

PREDICTION_TYPE = {"x": "sample", "eps": "epsilon", "v": "v_prediction"}


def reference_scheduler(schedule, steps: int, prediction: str, lower_order_final: bool = True,
                        euler_at_final: bool = False) -> DPMSolverMultistepScheduler:
    t = torch.arange(1, steps + 1, dtype=torch.float64) / steps
    abar = torch.sigmoid(schedule(t)).numpy()
    betas = 1 - abar / np.concatenate([[1.0], abar[:-1]])
    sched = DPMSolverMultistepScheduler(
        num_train_timesteps=steps, trained_betas=betas, prediction_type=PREDICTION_TYPE[prediction],
        algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint", timestep_spacing="trailing",
        final_sigmas_type="zero", lower_order_final=lower_order_final, euler_at_final=euler_at_final,
    )
    sched.set_timesteps(steps)
    assert sched.timesteps.tolist() == list(range(steps - 1, -1, -1))
    # diffusers builds sigma = sqrt((1 - alpha_bar) / alpha_bar) from alphas_cumprod rebuilt from the betas in float32
    # (where 1 - beta at t = 1 can round to 0, making sigma inf) and stores it in float32; having checked that
    # alpha_bar = 1 / (1 + sigma^2) agrees to float32 precision, give it the exact float64 sigmas (as test_samplers).
    exact = torch.cat([torch.from_numpy(np.sqrt((1 - abar) / abar)).flip(0), torch.zeros(1, dtype=torch.float64)])
    torch.testing.assert_close(1 / (1 + sched.sigmas.double() ** 2), 1 / (1 + exact**2), rtol=1e-4, atol=1e-7)
    sched.sigmas = exact
    return sched


def run_reference(sched, net, schedule, z, steps, clip=False, exact=True):
    """Drive sched.step (its own order selection, conversion and update formulas) and record each step's order.

    step() casts the sample to float32 before its update ("upcast to avoid precision issues" for fp16 pipelines),
    which for float64 inputs is a downcast; with exact=True the float64 sample is handed to the update methods instead.
    """
    orders, state = [], {}
    first, second = sched.dpm_solver_first_order_update, sched.multistep_dpm_solver_second_order_update
    convert = sched.convert_model_output

    def patched(update, order):
        def call(model_output, sample, noise=None):
            orders.append(order)
            assert torch.equal(sample, state["z"].float())
            return update(model_output, sample=state["z"] if exact else sample, noise=noise)
        return call

    sched.dpm_solver_first_order_update = patched(first, 1)
    sched.multistep_dpm_solver_second_order_update = patched(second, 2)
    if clip:  # our clip=True clips x_hat; diffusers' only option is dynamic thresholding, so clip its x0_pred
        sched.convert_model_output = lambda out, sample: convert(out, sample=sample).clamp(-1.0, 1.0)
    for k in sched.timesteps.tolist():
        logsnr = schedule(torch.full((z.shape[0],), (k + 1) / steps, dtype=torch.float64))
        out = net(z, noise_condition(logsnr).double())
        state["z"] = z
        z = sched.step(out, k, z).prev_sample
    return z, orders


@pytest.mark.parametrize("prediction", ["x", "v", "eps"])
@pytest.mark.parametrize("steps", [1, 2, 4, 10, 16])
@pytest.mark.parametrize("clip", [False, True])
def test_dpm_solver_pp_2m_matches_diffusers(smooth_net, prediction, steps, clip):
    # eps needs alpha_1 away from 0 (see test_samplers): x_hat = (z - sigma eps) / alpha amplifies rounding 1e4-fold.
    schedule = CosineSchedule(-10.0 if prediction == "eps" else -20.0, 20.0)
    net = smooth_net(channels=2, seed=steps)
    z = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 1.5
    ours = dpm_solver_pp_2m(Denoiser(net, prediction), z, step_grid(schedule, steps, dtype=torch.float64), clip=clip)
    ref, orders = run_reference(reference_scheduler(schedule, steps, prediction), net, schedule, z, steps, clip)
    assert orders == ([1] + [2] * (steps - 2) + [1])[:steps]
    torch.testing.assert_close(ours, ref, atol=1e-9, rtol=1e-8)
    if clip:
        assert ours.abs().max() <= 1.0


@pytest.mark.parametrize("lower_order_final, euler_at_final", [(False, False), (True, True), (False, True)])
@pytest.mark.parametrize("steps", [4, 10, 16])
def test_final_step_settings_do_not_matter_with_zero_final_sigma(smooth_net, steps, lower_order_final, euler_at_final):
    schedule = CosineSchedule()
    net = smooth_net(channels=2, seed=11)
    z = torch.randn(32, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ours = dpm_solver_pp_2m(Denoiser(net, "v"), z, step_grid(schedule, steps, dtype=torch.float64))
    sched = reference_scheduler(schedule, steps, "v", lower_order_final, euler_at_final)
    ref, orders = run_reference(sched, net, schedule, z, steps)
    assert orders == [1] + [2] * (steps - 2) + [1]
    torch.testing.assert_close(ours, ref, atol=1e-9, rtol=1e-8)


def test_dpm_solver_pp_2m_matches_diffusers_on_linear_schedule(smooth_net):
    schedule, steps = LinearBetaSchedule(), 8
    net = smooth_net(channels=2, seed=3)
    z = torch.randn(32, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ours = dpm_solver_pp_2m(Denoiser(net, "v"), z, step_grid(schedule, steps, dtype=torch.float64))
    ref, _ = run_reference(reference_scheduler(schedule, steps, "v"), net, schedule, z, steps)
    torch.testing.assert_close(ours, ref, atol=1e-9, rtol=1e-8)


@pytest.mark.parametrize("steps", [4, 16])
def test_unpatched_diffusers_step_agrees_to_float32(smooth_net, steps):
    """The stock step(), which rounds the sample to float32 each step, agrees to that precision."""
    schedule = CosineSchedule()
    net = smooth_net(channels=2, seed=5)
    z = torch.randn(64, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ours = dpm_solver_pp_2m(Denoiser(net, "x"), z, step_grid(schedule, steps, dtype=torch.float64))
    ref, _ = run_reference(reference_scheduler(schedule, steps, "x"), net, schedule, z, steps, exact=False)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("steps", [1, 2])
def test_one_and_two_steps_equal_ddim(smooth_net, steps):
    # Two steps are DDIM too: a first-order step, then the last step, which returns x_hat.
    grid = step_grid(CosineSchedule(), steps, dtype=torch.float64)
    den = Denoiser(smooth_net(channels=2, seed=1), "v")
    z = torch.randn(16, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    torch.testing.assert_close(dpm_solver_pp_2m(den, z, grid), ddim(den, z, grid), atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 10, 16])
def test_point_mass_is_integrated_exactly(steps):
    """For data at a point c, x_hat = c exactly and the probability-flow ODE has z_t = alpha_t c + sigma_t eps with
    eps fixed: both the first- and second-order updates are exact, so every z lies on it and the result is c."""
    c = torch.tensor([[0.3, -0.8]], dtype=torch.float64)
    calls = []

    def point_mass(z, logsnr, labels=None):
        calls.append(logsnr)
        return c.expand_as(z)

    grid = step_grid(CosineSchedule(-10.0, 10.0), steps, dtype=torch.float64)
    z = torch.randn(8, 2, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    a1, s1 = alpha_sigma(grid[0])
    eps = (z - a1 * c) / s1
    trajectory = []
    out = dpm_solver_pp_2m(point_mass, z, grid, callback=trajectory.append)
    assert len(calls) == steps and [step["i"] for step in trajectory] == list(range(steps))
    torch.testing.assert_close(out, c.expand_as(z), atol=0.0, rtol=0.0)
    for step in trajectory[:-1]:
        a, s = alpha_sigma(grid[step["i"] + 1])
        torch.testing.assert_close(step["z"], a * c + s * eps, atol=1e-12, rtol=1e-12)
