"""The samplers against an independent reference: diffusers' DDIMScheduler on the same discretized schedule."""

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

from progdistill.denoiser import Denoiser, noise_condition
from progdistill.diffusion.samplers import ancestral, ancestral_step, ddim
from progdistill.diffusion.schedules import CosineSchedule, LinearBetaSchedule, alpha_sigma, step_grid

PREDICTION_TYPE = {"x": "sample", "eps": "epsilon", "v": "v_prediction"}


def reference_scheduler(schedule, steps: int, prediction: str, clip: bool) -> DDIMScheduler:
    """diffusers' DDIM with num_train_timesteps = N and alphas_cumprod[k] = alpha^2 at t = (k + 1) / N."""
    t = torch.arange(1, steps + 1, dtype=torch.float64) / steps
    abar = torch.sigmoid(schedule(t)).numpy()
    betas = 1 - abar / np.concatenate([[1.0], abar[:-1]])
    sched = DDIMScheduler(num_train_timesteps=steps, trained_betas=betas, prediction_type=PREDICTION_TYPE[prediction],
                          clip_sample=clip, clip_sample_range=1.0, set_alpha_to_one=True, steps_offset=0)
    # diffusers rebuilds alphas_cumprod from the betas in float32, which rounds alpha_1^2 = sigmoid(-20) ~ 2e-9
    # away; having checked it agrees to float32 precision, give the reference the exact float64 values.
    torch.testing.assert_close(sched.alphas_cumprod.double(), torch.from_numpy(abar), rtol=1e-4, atol=1e-7)
    sched.alphas_cumprod = torch.from_numpy(abar)
    sched.set_timesteps(steps)
    assert sched.timesteps.tolist() == list(range(steps - 1, -1, -1))
    return sched


def run_reference(sched, net, schedule, z, steps, eta=0.0, noises=None):
    for j, k in enumerate(sched.timesteps.tolist()):
        logsnr = schedule(torch.full((z.shape[0],), (k + 1) / steps, dtype=torch.float64))
        out = net(z, noise_condition(logsnr).double())
        noise = noises[j] if noises is not None else None
        z = sched.step(out, k, z, eta=eta, use_clipped_model_output=True, variance_noise=noise).prev_sample
    return z


@pytest.mark.parametrize("prediction", ["x", "v", "eps"])
@pytest.mark.parametrize("steps", [1, 2, 4, 16])
@pytest.mark.parametrize("clip", [False, True])
def test_ddim_matches_diffusers(smooth_net, prediction, steps, clip):
    # eps needs alpha_1 away from 0: with logsnr_min = -20 both sides divide by alpha ~ 4.5e-5 and any float32
    # rounding in diffusers' alphas_cumprod is amplified 1e4-fold.
    schedule = CosineSchedule(-10.0 if prediction == "eps" else -20.0, 20.0)
    net = smooth_net(channels=2, seed=steps)
    z = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 1.5
    ours = ddim(Denoiser(net, prediction), z, step_grid(schedule, steps, dtype=torch.float64), clip=clip)
    ref = run_reference(reference_scheduler(schedule, steps, prediction, clip), net, schedule, z, steps)
    torch.testing.assert_close(ours, ref.to(ours.dtype), atol=1e-9, rtol=1e-8)
    if clip:
        assert ours.abs().max() <= 1.0


def test_ddim_matches_diffusers_on_linear_schedule(smooth_net):
    schedule, steps = LinearBetaSchedule(), 8
    net = smooth_net(channels=2, seed=3)
    z = torch.randn(32, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ours = ddim(Denoiser(net, "v"), z, step_grid(schedule, steps, dtype=torch.float64))
    ref = run_reference(reference_scheduler(schedule, steps, "v", False), net, schedule, z, steps)
    torch.testing.assert_close(ours, ref.to(ours.dtype), atol=1e-9, rtol=1e-8)


@pytest.mark.parametrize("steps", [2, 8])
def test_ancestral_small_variance_matches_ddim_eta_one(smooth_net, steps):
    """DDIM with eta = 1 samples the posterior q(z_s | z_t, x_hat): our 'small' variance."""
    schedule = CosineSchedule()
    net = smooth_net(channels=2, seed=7)
    z = torch.randn(16, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    gen = torch.Generator().manual_seed(5)
    noises = [torch.randn(z.shape, generator=gen, dtype=torch.float64) for _ in range(steps - 1)] + [None]
    ours = ancestral(Denoiser(net, "x"), z, step_grid(schedule, steps, dtype=torch.float64), variance="small",
                     generator=torch.Generator().manual_seed(5))
    ref = run_reference(reference_scheduler(schedule, steps, "x", False), net, schedule, z, steps, eta=1.0,
                        noises=noises)
    torch.testing.assert_close(ours, ref.to(ours.dtype), atol=1e-9, rtol=1e-8)


def test_ancestral_variances():
    z = torch.zeros(200_000, 1, dtype=torch.float64)
    x_hat = torch.zeros_like(z)
    lt, ls = torch.tensor(-1.0, dtype=torch.float64), torch.tensor(1.5, dtype=torch.float64)
    noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    one_minus_r = 1 - np.exp(-1.0 - 1.5)
    small = one_minus_r * torch.sigmoid(-ls).item()
    large = one_minus_r * torch.sigmoid(-lt).item()
    for gamma, expected in [(0.0, small), (1.0, large), (0.5, np.sqrt(small * large))]:
        var = ancestral_step(z, x_hat, lt, ls, noise, gamma).var().item()
        assert var == pytest.approx(expected * noise.var().item(), rel=1e-9)
    # The mean is the posterior mean: r (alpha_s / alpha_t) z_t + (1 - r) alpha_s x_hat.
    zt, xh = torch.tensor([[0.7]], dtype=torch.float64), torch.tensor([[-0.2]], dtype=torch.float64)
    (a_t, _), (a_s, _) = alpha_sigma(lt), alpha_sigma(ls)
    r = np.exp(-2.5)
    mean = ancestral_step(zt, xh, lt, ls, torch.zeros_like(zt), 0.3)
    assert mean.item() == pytest.approx(r * (a_s / a_t).item() * 0.7 + (1 - r) * a_s.item() * -0.2, rel=1e-12)


def test_sampler_callback_and_bad_variance(smooth_net):
    calls = []
    z = torch.randn(4, 2, dtype=torch.float64)
    grid = step_grid(CosineSchedule(), 4, dtype=torch.float64)
    ddim(Denoiser(smooth_net(), "x"), z, grid, callback=calls.append)
    assert [c["i"] for c in calls] == [0, 1, 2, 3] and all(c["steps"] == 4 for c in calls)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ancestral(Denoiser(smooth_net(), "x"), z, grid, variance=1.5)
