"""Noise schedules as functions t in [0, 1] -> log-SNR, and the stable alpha/sigma that follow from log-SNR.

lambda = log(alpha^2 / sigma^2) with alpha^2 + sigma^2 = 1 (variance preserving), so
alpha^2 = sigmoid(lambda) and sigma^2 = sigmoid(-lambda). Computing through the sigmoid keeps both ends finite.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


def alpha_sigma(logsnr: Tensor) -> tuple[Tensor, Tensor]:
    """alpha = sqrt(sigmoid(lambda)), sigma = sqrt(sigmoid(-lambda))."""
    return torch.sigmoid(logsnr).sqrt(), torch.sigmoid(-logsnr).sqrt()


def broadcast(v: Tensor, like: Tensor) -> Tensor:
    """Reshape a per-example tensor of shape [B] (or a scalar) so it broadcasts against `like` of shape [B, ...]."""
    if v.ndim == 0:
        return v
    return v.reshape(v.shape + (1,) * (like.ndim - v.ndim))


@dataclass(frozen=True)
class CosineSchedule:
    """lambda(t) = -2 log tan(a t + b), b = arctan(exp(-lambda_max / 2)), a = arctan(exp(-lambda_min / 2)) - b.

    alpha_t ~ cos(pi t / 2); the ends are lambda_max at t = 0 and lambda_min at t = 1 (paper section 1).
    """

    logsnr_min: float = -20.0
    logsnr_max: float = 20.0

    def __post_init__(self) -> None:
        if not self.logsnr_min < self.logsnr_max:
            raise ValueError(
                f"cosine schedule needs logsnr_min < logsnr_max, got {self.logsnr_min} and {self.logsnr_max}"
            )

    def __call__(self, t: Tensor) -> Tensor:
        b = math.atan(math.exp(-0.5 * self.logsnr_max))
        a = math.atan(math.exp(-0.5 * self.logsnr_min)) - b
        logsnr = -2.0 * torch.log(torch.tan(a * t + b))
        return logsnr.clamp(self.logsnr_min, self.logsnr_max)


@dataclass(frozen=True)
class LinearBetaSchedule:
    """DDPM's linear betas (beta_start .. beta_end over num_timesteps) in continuous time.

    log alpha_bar(t) = -(B0 t + (B1 - B0) t^2 / 2) with B0 = beta_start * T, B1 = beta_end * T, so
    lambda(t) = -log(expm1(B0 t + (B1 - B0) t^2 / 2)), clipped to [logsnr_min, logsnr_max].
    """

    beta_start: float = 1e-4
    beta_end: float = 0.02
    num_timesteps: int = 1000
    logsnr_min: float = -20.0
    logsnr_max: float = 20.0

    def __post_init__(self) -> None:
        if not 0 < self.beta_start < self.beta_end < 1:
            raise ValueError(
                f"linear schedule needs 0 < beta_start < beta_end < 1, got {self.beta_start} and {self.beta_end}"
            )
        if self.num_timesteps < 1:
            raise ValueError(f"linear schedule needs num_timesteps >= 1, got {self.num_timesteps}")

    def __call__(self, t: Tensor) -> Tensor:
        b0 = self.beta_start * self.num_timesteps
        b1 = self.beta_end * self.num_timesteps
        u = b0 * t + 0.5 * (b1 - b0) * t * t
        # expm1(0) = 0 at t = 0 gives +inf, which the clip turns into logsnr_max.
        logsnr = -torch.log(torch.expm1(u))
        return logsnr.clamp(self.logsnr_min, self.logsnr_max)


Schedule = CosineSchedule | LinearBetaSchedule


def make_schedule(name: str, logsnr_min: float = -20.0, logsnr_max: float = 20.0) -> Schedule:
    """The schedule called `name` ("cosine" or "linear") with the given log-SNR range."""
    if name == "cosine":
        return CosineSchedule(logsnr_min, logsnr_max)
    if name == "linear":
        return LinearBetaSchedule(logsnr_min=logsnr_min, logsnr_max=logsnr_max)
    raise ValueError(f"unknown schedule {name!r}: choose 'cosine' or 'linear'")


def step_grid(schedule: Schedule, steps: int, dtype: torch.dtype = torch.float32, device=None) -> Tensor:
    """log-SNR at t_i = i / N for i = N .. 0 (N + 1 values, noisiest first): the sampler's grid, which includes t = 1."""
    if steps < 1:
        raise ValueError(f"the number of sampling steps must be >= 1, got {steps}")
    t = torch.arange(steps, -1, -1, dtype=torch.float64, device=device) / steps
    return schedule(t).to(dtype)
