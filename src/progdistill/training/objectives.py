"""What a training step regresses x_hat onto: the data (teacher) or the two-teacher-step target (distillation).

Both return (z_t, logsnr_t, x_target); the loop and the loss are shared (ARCHITECTURE point 4).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..diffusion.distillation import conversion_target, distillation_target
from ..diffusion.samplers import DenoiserFn
from ..diffusion.schedules import Schedule, alpha_sigma, broadcast


Shard = tuple[int, int]  # (this process's rank, number of processes)


def shard_rows(n: int, shard: Shard) -> slice:
    """The contiguous rows of a global batch of n that process `rank` of `world` trains on."""
    rank, world = shard
    if n % world:
        raise ValueError(f"the global batch ({n}) must be divisible by the number of processes ({world})")
    size = n // world
    return slice(rank * size, (rank + 1) * size)


def global_rows(local: int, shard: Shard) -> tuple[int, slice]:
    """(global batch size, this process's rows in it) for a process holding `local` rows of the global batch."""
    n = local * shard[1]
    return n, shard_rows(n, shard)


def _noisy(x: Tensor, logsnr: Tensor, generator: torch.Generator, n: int, rows: slice) -> Tensor:
    """z_t = alpha_t x + sigma_t eps, eps ~ N(0, I), for this process's rows x of a global batch of n (noise drawn
    for all n rows, so every process count sees the same noise per example)."""
    eps = torch.randn((n, *x.shape[1:]), generator=generator, device=x.device, dtype=x.dtype)[rows]
    alpha, sigma = alpha_sigma(broadcast(logsnr, x))
    return alpha * x + sigma * eps


@dataclass
class TeacherObjective:
    """Continuous time: t ~ U(0, 1), target x."""

    schedule: Schedule

    def __call__(self, x: Tensor, labels: Tensor | None, generator: torch.Generator, shard: Shard = (0, 1)):
        """x, labels: this process's rows of the global batch (the sampler shards the data)."""
        n, rows = global_rows(x.shape[0], shard)
        t = torch.rand(n, generator=generator, device=x.device, dtype=torch.float64)[rows]
        logsnr = self.schedule(t).to(x.dtype)
        return _noisy(x, logsnr, generator, n, rows), logsnr, x


def teacher_clip_threshold(mode: str, logsnr: float) -> float:
    """The log-SNR below which a student step's target is built from clipped teacher steps, for the
    distill.teacher_clip mode: "none" (the paper: never), "noisy" (below `logsnr`), "all" (everywhere)."""
    return {"none": -math.inf, "noisy": logsnr, "all": math.inf}[mode]


@dataclass
class DistillObjective:
    """Discrete time on the student's grid of M steps: i ~ U{1..M}, t = i/M, t' = t - 1/(2M), t'' = t - 1/M;
    target x_tilde from two unclipped teacher DDIM steps (paper Algorithm 2).

    `clip_below`: student steps starting at a log-SNR below it take their target from two *clipped* teacher steps
    (see diffusion.distillation; -inf, the default, is the paper). `substeps` = 1 is the warm-up of a student of
    another parameterization: on the same M-step grid, the target is the teacher's own x_hat at t."""

    teacher: DenoiserFn
    schedule: Schedule
    student_steps: int
    clip_below: float = -math.inf
    substeps: int = 2

    def __call__(self, x: Tensor, labels: Tensor | None, generator: torch.Generator, shard: Shard = (0, 1)):
        """x, labels: this process's rows of the global batch (the sampler shards the data)."""
        m = self.student_steps
        n, rows = global_rows(x.shape[0], shard)
        i = torch.randint(1, m + 1, (n,), generator=generator, device=x.device)[rows]
        t = i.double() / m
        # Evaluated in float64 then cast, exactly as `step_grid` builds the sampler's grid.
        logsnr_t, logsnr_tp, logsnr_tpp = (self.schedule(s).to(x.dtype) for s in (t, t - 0.5 / m, t - 1.0 / m))
        z_t = _noisy(x, logsnr_t, generator, n, rows)
        clip = logsnr_t < self.clip_below
        if self.substeps == 1:
            return z_t, logsnr_t, conversion_target(self.teacher, z_t, logsnr_t, labels, clip)
        x_tilde = distillation_target(self.teacher, z_t, logsnr_t, logsnr_tp, logsnr_tpp, i == 1, labels, clip)
        return z_t, logsnr_t, x_tilde
