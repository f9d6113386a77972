"""Noise schedules as functions t in [0, 1] -> log-SNR, and the stable alpha/sigma that follow from log-SNR.

Flow matching's interpolant (FlowSchedule) is one of them: the VP process rescaled, at the same log-SNR.

lambda = log(alpha^2 / sigma^2) with alpha^2 + sigma^2 = 1 (variance preserving), so
alpha^2 = sigmoid(lambda) and sigma^2 = sigmoid(-lambda). Computing through the sigmoid keeps both ends finite.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

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


class DiscreteSchedule:
    """A discrete-time model's schedule (e.g. a diffusers DDPM/DDIM scheduler): alpha_bar_j for timesteps
    j = 0 .. T-1, placed at t_j = (j + 1) / T, so that t = i / N is timestep i T / N - 1 (diffusers' "trailing"
    spacing) and t = 1 is the last timestep. Between knots log-SNR is interpolated linearly in t; t = 0 maps to
    max(logsnr_max, lambda_0 + 1), which only the last (x_hat-returning) step and teacher training ever touch.
    `timestep(logsnr)` inverts the map to the (fractional) timestep a discrete-time network is conditioned on.
    """

    def __init__(self, alphas_cumprod, logsnr_max: float = 20.0):
        abar = torch.as_tensor(alphas_cumprod, dtype=torch.float64).flatten()
        if abar.numel() < 1 or not bool(((abar > 0) & (abar < 1)).all()):
            raise ValueError("a discrete schedule needs 0 < alpha_bar < 1 at every timestep (a zero-terminal-SNR "
                             "schedule has no finite log-SNR at its last timestep)")
        lam = torch.log(abar) - torch.log1p(-abar)
        if not bool((lam[1:] < lam[:-1]).all()):
            raise ValueError("a discrete schedule's alpha_bar must decrease strictly with the timestep")
        self.num_timesteps = abar.numel()
        self.knots_t = torch.arange(self.num_timesteps + 1, dtype=torch.float64) / self.num_timesteps
        self.knots_logsnr = torch.cat([torch.tensor([max(logsnr_max, float(lam[0]) + 1.0)]), lam])
        self.logsnr_min, self.logsnr_max = float(lam[-1]), float(self.knots_logsnr[0])

    def __call__(self, t: Tensor) -> Tensor:
        tt = t.detach().to(torch.float64).clamp(0.0, 1.0) * self.num_timesteps
        lo = tt.floor().clamp(max=self.num_timesteps - 1)
        w = tt - lo
        k = self.knots_logsnr.to(t.device)
        i = lo.long()
        return ((1 - w) * k[i] + w * k[i + 1]).to(t.dtype)

    def timestep(self, logsnr: Tensor) -> Tensor:
        """The fractional timestep index j = t T - 1 at which the schedule has this log-SNR; values within 1e-3
        of an integer are snapped to it, so grid points (computed in float32) hit the network's exact timesteps."""
        k = -self.knots_logsnr.to(logsnr.device)  # increasing
        x = -logsnr.detach().to(torch.float64).clamp(-self.logsnr_max, -self.logsnr_min)
        hi = torch.searchsorted(k, x).clamp(1, self.num_timesteps)
        w = (x - k[hi - 1]) / (k[hi] - k[hi - 1])
        j = (hi - 1).to(torch.float64) + w - 1.0
        snapped = torch.where((j - j.round()).abs() < 1e-3, j.round(), j)
        return snapped.to(torch.float32)


@dataclass(frozen=True)
class FlowSchedule:
    """Flow matching / rectified flow (SD3, FLUX): x_t = (1 - t) x + t eps, the variance-preserving process rescaled.

    With alpha = 1 - t and sigma = t the log-SNR is lambda(t) = 2 log((1 - t) / t), infinite at both ends: t = 1 is
    pure noise (alpha_sigma gives alpha = 0, sigma = 1 exactly) and t = 0 the data. A VP point z at this log-SNR is
    the flow point z_fm = z / (alpha_vp + sigma_vp) (docs/flow.md), so DDIM on this schedule is the Euler step of the
    flow's ODE, and every method of the project applies to it unchanged. `shift`: SD3's static shift of the time grid,
    t -> shift t / (1 + (shift - 1) t) (1: none)."""

    shift: float = 1.0

    def __post_init__(self) -> None:
        if not (isinstance(self.shift, (int, float)) and self.shift > 0 and math.isfinite(self.shift)):
            raise ValueError(f"flow schedule needs a finite shift > 0, got {self.shift!r}")

    # Unclipped: the ends are exact (t = 1 has alpha = 0, t = 0 sigma = 0).
    logsnr_min: ClassVar[float] = -math.inf
    logsnr_max: ClassVar[float] = math.inf

    def shifted(self, t: Tensor) -> Tensor:
        """The flow time the schedule places at grid time t (SD3's shift; t itself when shift = 1)."""
        return t if self.shift == 1.0 else self.shift * t / (1 + (self.shift - 1) * t)

    def __call__(self, t: Tensor) -> Tensor:
        s = self.shifted(t)
        return 2.0 * (torch.log1p(-s) - torch.log(s))


def flux_shift(image_seq_len: int, base_seq_len: int = 256, max_seq_len: int = 4096, base_shift: float = 0.5,
               max_shift: float = 1.15) -> float:
    """FLUX's resolution-dependent ("dynamic") shift as a FlowSchedule shift: diffusers shifts sigmas by
    e^mu / (e^mu + 1 / t - 1) = s t / (1 + (s - 1) t) with s = e^mu, mu linear in the image's token count
    (FluxPipeline's calculate_shift, whose defaults these are)."""
    slope = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return math.exp(image_seq_len * slope + base_shift - slope * base_seq_len)


def flow_time(logsnr: Tensor) -> Tensor:
    """The flow-matching time t = sigma / (alpha + sigma) = sigmoid(-lambda / 2) of a log-SNR (1 at -inf, 0 at inf)."""
    return torch.sigmoid(-0.5 * logsnr)


Schedule = CosineSchedule | LinearBetaSchedule | DiscreteSchedule | FlowSchedule


def ddpm_alphas_cumprod(num_timesteps: int, beta_schedule: str, beta_start: float, beta_end: float) -> Tensor:
    """alpha_bar_j of a diffusers DDPM/DDIM scheduler with these settings, computed by diffusers itself."""
    from diffusers import DDPMScheduler

    try:
        sched = DDPMScheduler(num_train_timesteps=num_timesteps, beta_schedule=beta_schedule,
                              beta_start=beta_start, beta_end=beta_end)
    except NotImplementedError:
        raise ValueError(f"unknown beta_schedule {beta_schedule!r}: choose linear, scaled_linear or "
                         "squaredcos_cap_v2") from None
    return sched.alphas_cumprod.to(torch.float64)


SCHEDULES = ("cosine", "linear", "discrete", "flow")


def make_schedule(name: str, logsnr_min: float = -20.0, logsnr_max: float = 20.0, *, num_timesteps: int = 1000,
                  beta_schedule: str = "linear", beta_start: float = 1e-4, beta_end: float = 0.02,
                  shift: float = 1.0) -> Schedule:
    """The schedule called `name` ("cosine", "linear", "discrete" or "flow") with the given log-SNR range; "discrete"
    is a diffusers scheduler's alpha_bar over `num_timesteps` from `beta_schedule`, `beta_start`, `beta_end`; "flow"
    is flow matching's interpolant with its time shift `shift` (it has no log-SNR range: its ends are exact)."""
    if name == "cosine":
        return CosineSchedule(logsnr_min, logsnr_max)
    if name == "linear":
        return LinearBetaSchedule(logsnr_min=logsnr_min, logsnr_max=logsnr_max)
    if name == "discrete":
        return DiscreteSchedule(ddpm_alphas_cumprod(num_timesteps, beta_schedule, beta_start, beta_end), logsnr_max)
    if name == "flow":
        return FlowSchedule(float(shift))
    raise ValueError(f"unknown schedule {name!r}: choose 'cosine', 'linear', 'discrete' or 'flow'")


SCHEDULE_PARAMS = {"cosine": ("logsnr_min", "logsnr_max"), "linear": ("logsnr_min", "logsnr_max"),
                   "discrete": ("logsnr_max", "num_timesteps", "beta_schedule", "beta_start", "beta_end"),
                   "flow": ("shift",)}


def schedule_spec(name: str, logsnr_min: float = -20.0, logsnr_max: float = 20.0, *, num_timesteps: int = 1000,
                  beta_schedule: str = "linear", beta_start: float = 1e-4, beta_end: float = 0.02,
                  shift: float = 1.0) -> dict:
    """{"name": name, and the parameters that schedule uses}: how a checkpoint record stores its schedule."""
    values = dict(logsnr_min=float(logsnr_min), logsnr_max=float(logsnr_max), num_timesteps=int(num_timesteps),
                  beta_schedule=beta_schedule, beta_start=float(beta_start), beta_end=float(beta_end),
                  shift=float(shift))
    if name not in SCHEDULE_PARAMS:
        raise ValueError(f"unknown schedule {name!r}: choose {', '.join(SCHEDULE_PARAMS)}")
    return {"name": name, **{k: values[k] for k in SCHEDULE_PARAMS[name]}}


def schedule_from_spec(spec: dict) -> Schedule:
    """The schedule a `schedule_spec` dict describes; its parameters must all be there."""
    name = spec.get("name")
    if name not in SCHEDULE_PARAMS:
        raise ValueError(f"unknown schedule {name!r}: this version knows {', '.join(SCHEDULE_PARAMS)}")
    missing = [k for k in SCHEDULE_PARAMS[name] if k not in spec]
    unknown = sorted(set(spec) - {"name", *SCHEDULE_PARAMS[name]})
    if missing or unknown:
        raise ValueError(f"schedule {name!r} " + (f"lacks {', '.join(missing)}" if missing else
                                                  f"does not take {', '.join(unknown)}"))
    return make_schedule(**spec)


def step_grid(schedule: Schedule, steps: int, dtype: torch.dtype = torch.float32, device=None) -> Tensor:
    """log-SNR at t_i = i / N for i = N .. 0 (N + 1 values, noisiest first): the sampler's grid, which includes t = 1."""
    if steps < 1:
        raise ValueError(f"the number of sampling steps must be >= 1, got {steps}")
    t = torch.arange(steps, -1, -1, dtype=torch.float64, device=device) / steps
    return schedule(t).to(dtype)
