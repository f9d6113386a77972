"""Samplers as stateless functions over a denoiser and a log-SNR grid (paper section 4).

A denoiser is any callable `denoiser(z, logsnr, labels) -> x_hat`. A grid is the log-SNR at t = 1 .. 0
(noisiest first; see `schedules.step_grid`), so every sampler here visits t = 1.
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch
from torch import Tensor

from .parameterization import eps_from_x
from .schedules import alpha_sigma, broadcast


class DenoiserFn(Protocol):
    def __call__(self, z: Tensor, logsnr: Tensor, labels: Tensor | None = None) -> Tensor: ...


Callback = Callable[[dict], None]


def ddim_step(z_t: Tensor, x_hat: Tensor, logsnr_t: Tensor, logsnr_s: Tensor) -> Tensor:
    """z_s = alpha_s x_hat + sigma_s eps_hat, eps_hat = (z_t - alpha_t x_hat) / sigma_t (deterministic DDIM)."""
    alpha_t, sigma_t = alpha_sigma(broadcast(logsnr_t, z_t))
    alpha_s, sigma_s = alpha_sigma(broadcast(logsnr_s, z_t))
    return alpha_s * x_hat + sigma_s * eps_from_x(z_t, x_hat, alpha_t, sigma_t)


def _predict(denoiser: DenoiserFn, z: Tensor, logsnr: Tensor, labels: Tensor | None, clip: bool) -> Tensor:
    x_hat = denoiser(z, logsnr.expand(z.shape[0]), labels)
    # Clipping x_hat; eps_hat is then re-derived from the clipped x_hat inside the step.
    return x_hat.clamp(-1.0, 1.0) if clip else x_hat


Update = Callable[[int, Tensor, Tensor], Tensor]


def fresh_noise(z: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal noise like z from `generator`: the per-step draw of the stochastic samplers."""
    return torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)


def run_sampler(
    denoiser: DenoiserFn,
    z: Tensor,
    grid: Tensor,
    update: Update,
    *,
    labels: Tensor | None = None,
    clip: bool = False,
    callback: Callback | None = None,
) -> Tensor:
    """The loop every sampler shares: predict x_hat at grid[i], then z = update(i, z, x_hat) to grid[i + 1]; the
    last of the len(grid) - 1 steps returns x_hat itself (the step to t = 0, where sigma = 0)."""
    n = len(grid) - 1
    for i in range(n):
        x_hat = _predict(denoiser, z, grid[i], labels, clip)
        z = x_hat if i == n - 1 else update(i, z, x_hat)
        if callback is not None:
            callback({"i": i, "steps": n, "z": z, "x_hat": x_hat})
    return z


@torch.no_grad()
def ddim(
    denoiser: DenoiserFn,
    z: Tensor,
    grid: Tensor,
    *,
    labels: Tensor | None = None,
    clip: bool = False,
    callback: Callback | None = None,
) -> Tensor:
    """Deterministic DDIM from z (at grid[0], i.e. t = 1) over len(grid) - 1 steps; the last step returns x_hat."""
    return run_sampler(denoiser, z, grid, lambda i, z, x_hat: ddim_step(z, x_hat, grid[i], grid[i + 1]),
                       labels=labels, clip=clip, callback=callback)


def ancestral_step(
    z_t: Tensor,
    x_hat: Tensor,
    logsnr_t: Tensor,
    logsnr_s: Tensor,
    noise: Tensor,
    variance: float = 0.0,
) -> Tensor:
    """Sample q(z_s | z_t, x = x_hat) with r = exp(lambda_t - lambda_s):

    mean = r (alpha_s / alpha_t) z_t + (1 - r) alpha_s x_hat;
    log var = (1 - variance) log((1 - r) sigma_s^2) + variance log((1 - r) sigma_t^2),
    so `variance` = 0 is the posterior ("small") variance and 1 the "large" one.
    """
    lt, ls = broadcast(logsnr_t, z_t), broadcast(logsnr_s, z_t)
    alpha_t, sigma_t = alpha_sigma(lt)
    alpha_s, sigma_s = alpha_sigma(ls)
    one_minus_r = -torch.expm1(lt - ls)  # 1 - r, computed without cancellation
    keep = (1 - one_minus_r) * (alpha_s / alpha_t)
    # From pure noise (alpha_t = 0: a flow schedule's t = 1) r = 0, and nothing of z_t is kept (not 0 * inf)
    keep = torch.where(alpha_t > 0, keep, torch.zeros_like(keep))
    mean = keep * z_t + one_minus_r * alpha_s * x_hat
    log_var = torch.log(one_minus_r) + 2 * ((1 - variance) * torch.log(sigma_s) + variance * torch.log(sigma_t))
    return mean + torch.exp(0.5 * log_var) * noise


VARIANCES = {"small": 0.0, "large": 1.0, "interp": 0.5}


@torch.no_grad()
def ancestral(
    denoiser: DenoiserFn,
    z: Tensor,
    grid: Tensor,
    *,
    labels: Tensor | None = None,
    clip: bool = False,
    variance: str | float = "small",
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """Stochastic (ancestral) sampler; `variance` is "small", "large", "interp" (log-midpoint) or a weight in [0, 1]
    on the large variance in log space. The last step returns x_hat."""
    gamma = VARIANCES[variance] if isinstance(variance, str) else float(variance)
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"ancestral variance weight must lie in [0, 1], got {gamma}")

    def update(i: int, z: Tensor, x_hat: Tensor) -> Tensor:
        noise = fresh_noise(z, generator)
        return ancestral_step(z, x_hat, grid[i], grid[i + 1], noise, gamma)

    return run_sampler(denoiser, z, grid, update, labels=labels, clip=clip, callback=callback)


def stochastic_step(
    z_t: Tensor,
    x_hat: Tensor,
    logsnr_t: Tensor,
    logsnr_k: Tensor,
    logsnr_s: Tensor,
    noise: Tensor,
) -> Tensor:
    """The stochastic N-step sampler's step (Meng et al. 2023): a deterministic DDIM step of twice the length, from t
    to k = t - 2/N, then forward noise back up to s = t - 1/N:

    z_s = (alpha_s / alpha_k) z_k + sigma_{s|k} noise,  sigma_{s|k}^2 = (1 - exp(lambda_s - lambda_k)) sigma_s^2.
    """
    z_k = ddim_step(z_t, x_hat, logsnr_t, logsnr_k)
    lk, ls = broadcast(logsnr_k, z_t), broadcast(logsnr_s, z_t)
    alpha_k, _ = alpha_sigma(lk)
    alpha_s, sigma_s = alpha_sigma(ls)
    var = -torch.expm1(ls - lk) * sigma_s**2  # 1 - exp(lambda_s - lambda_k), without cancellation
    return (alpha_s / alpha_k) * z_k + var.sqrt() * noise


@torch.no_grad()
def stochastic(
    denoiser: DenoiserFn,
    z: Tensor,
    grid: Tensor,
    *,
    labels: Tensor | None = None,
    clip: bool = False,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """The stochastic N-step sampler of guided distillation over an N-step grid, one network evaluation per step:
    every step but the last is `stochastic_step` (to grid[i + 2], noised back to grid[i + 1]); the last step (from
    t = 1/N) returns x_hat, deterministically. With N = 1 it is one DDIM step."""

    def update(i: int, z: Tensor, x_hat: Tensor) -> Tensor:
        noise = fresh_noise(z, generator)
        return stochastic_step(z, x_hat, grid[i], grid[i + 2], grid[i + 1], noise)

    return run_sampler(denoiser, z, grid, update, labels=labels, clip=clip, callback=callback)


@torch.no_grad()
def consistency(
    denoiser: DenoiserFn,
    z: Tensor,
    grid: Tensor,
    *,
    labels: Tensor | None = None,
    clip: bool = False,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """Multistep consistency sampling (Song et al. 2023, Algorithm 1) over an N-step grid, one network evaluation
    per step: x = f(z, t) at grid[i], then x re-noised to grid[i + 1] with fresh noise; the last evaluation (at
    t = 1/N) returns x. Made for consistency students (their x_hat is f); with N = 1 it is one DDIM step."""
    from .consistency import consistency_step

    def update(i: int, z: Tensor, x_hat: Tensor) -> Tensor:
        noise = fresh_noise(z, generator)
        return consistency_step(x_hat, grid[i + 1], noise)

    return run_sampler(denoiser, z, grid, update, labels=labels, clip=clip, callback=callback)


# ------------------------------------------------------------------------------------------------ the registry
