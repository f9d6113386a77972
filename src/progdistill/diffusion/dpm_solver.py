"""DPM-Solver++(2M) (Lu et al. 2022, data-prediction form) over the same log-SNR grid as `samplers.ddim`.

In diffusers' notation lambda = log(alpha / sigma) is half our log-SNR, so every step size h below is
(logsnr_s - logsnr_t) / 2.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .samplers import Callback, DenoiserFn, run_sampler
from .schedules import alpha_sigma, broadcast


def dpm_solver_pp_2m_step(
    z_t: Tensor,
    x_hat: Tensor,
    logsnr_t: Tensor,
    logsnr_s: Tensor,
    x_prev: Tensor | None = None,
    logsnr_prev: Tensor | None = None,
) -> Tensor:
    """One DPM-Solver++(2M) step from logsnr_t to logsnr_s; first order (= DDIM) when x_prev is None."""
    lt, ls = broadcast(logsnr_t, z_t), broadcast(logsnr_s, z_t)
    _, sigma_t = alpha_sigma(lt)
    alpha_s, sigma_s = alpha_sigma(ls)
    h = 0.5 * (ls - lt)
    d = x_hat
    if x_prev is not None:
        r = 0.5 * (lt - broadcast(logsnr_prev, z_t)) / h
        d = x_hat + (x_hat - x_prev) / (2 * r)
    return (sigma_s / sigma_t) * z_t - alpha_s * torch.expm1(-h) * d


@torch.no_grad()
def dpm_solver_pp_2m(
    denoiser: DenoiserFn,
    z: Tensor,
    grid: Tensor,
    *,
    labels: Tensor | None = None,
    clip: bool = False,
    callback: Callback | None = None,
) -> Tensor:
    """z_s = (sigma_s/sigma_t) z_t + alpha_s (1 - e^-h) (x_hat + (x_hat - x_prev)/2r), r = h_prev/h; ends with x_hat."""
    x_prev: Tensor | None = None  # x_hat of the step before, once there is one

    def update(i: int, z: Tensor, x_hat: Tensor) -> Tensor:
        nonlocal x_prev
        z = dpm_solver_pp_2m_step(z, x_hat, grid[i], grid[i + 1], x_prev, grid[i - 1] if i > 0 else None)
        x_prev = x_hat
        return z

    # As diffusers with final_sigmas_type="zero": the step to sigma = 0 lands on x_hat whatever its order.
    return run_sampler(denoiser, z, grid, update, labels=labels, clip=clip, callback=callback)
