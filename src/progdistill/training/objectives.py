"""What a training step regresses x_hat onto: the data (teacher), the guided teacher's x_hat_w (guided
distillation, stage 1) or the two-teacher-step target (distillation).

Each returns one `Target`: the noisy input z_t, its log-SNR, the regression target and the keyword inputs of the
student's call that differ from the batch's ({"labels": labels with some dropped to the null class}, {"w": w}); the
loop and the loss are shared by every objective. Every random draw is made for the whole global batch from the
generator, so results do not depend on the process count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor

from ..diffusion.distillation import consistency_target, conversion_target, distillation_target, tract_target
from ..diffusion.samplers import DenoiserFn
from ..diffusion.schedules import Schedule, alpha_sigma, broadcast
from ..guidance import ClassifierFreeGuidance
from .noise import Noise, global_batch_noise


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


def _noisy(x: Tensor, logsnr: Tensor, generator: torch.Generator, n: int, rows: slice,
           noise: Noise = global_batch_noise) -> Tensor:
    """z_t = alpha_t x + sigma_t eps, eps ~ N(0, I), for this process's rows x of a global batch of n (every process
    count sees the same noise per example; training/noise.py)."""
    eps = noise(tuple(x.shape[1:]), x.dtype, x.device, generator, n, rows)
    alpha, sigma = alpha_sigma(broadcast(logsnr, x))
    return alpha * x + sigma * eps


def _uniform(lo: float, hi: float, generator: torch.Generator, n: int, rows: slice, like: Tensor) -> Tensor:
    """U[lo, hi] per example, drawn for the global batch of n; this process's rows."""
    u = torch.rand(n, generator=generator, device=like.device, dtype=torch.float64)[rows]
    return (lo + (hi - lo) * u).to(torch.float32)


def training_w_range(w_min: float, w_max: float, margin: float) -> tuple[float, float]:
    """The w drawn in training for a student of range [w_min, w_max] (guided.w_margin): [w_min - margin, w_max] for
    a range, so that w_min is inside the fitted distribution rather than at its edge; a single w (w_min = w_max)
    is trained at that w only. The teacher is guided at any finite w, negative w included."""
    return (w_min - margin, w_max) if w_min < w_max else (w_min, w_max)


@dataclass
class Target:
    """What one training step regresses the student onto: w(lambda) ||x - x_hat(z_t, logsnr, **inputs)||^2, where
    `inputs` replace or add to the call's {"labels": labels} (e.g. dropped labels, the guidance weight w)."""

    z_t: Tensor
    logsnr: Tensor
    x: Tensor
    inputs: dict[str, Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class UniformW:
    """The guidance weight drawn per example, w ~ U[lo, hi] (guided distillation; see `training_w_range`)."""

    lo: float
    hi: float

    def draw(self, generator: torch.Generator, n: int, rows: slice, like: Tensor) -> Tensor:
        return _uniform(self.lo, self.hi, generator, n, rows, like)


def _draw_times(schedule: Schedule, x: Tensor, generator: torch.Generator, shard: Shard, noise: Noise):
    """(global batch size, this process's rows, log-SNR at t ~ U(0, 1), z_t) for this process's rows x."""
    n, rows = global_rows(x.shape[0], shard)
    t = torch.rand(n, generator=generator, device=x.device, dtype=torch.float64)[rows]
    logsnr = schedule(t).to(x.dtype)
    return n, rows, logsnr, _noisy(x, logsnr, generator, n, rows, noise)


@dataclass
class TeacherObjective:
    """Continuous time: t ~ U(0, 1), target x. With `label_dropout` > 0, each example's label is replaced by the
    null class `null_label` with that probability (classifier-free guidance's unconditional model)."""

    schedule: Schedule
    label_dropout: float = 0.0
    null_label: int = 0
    noise: Noise = global_batch_noise
    EVALS: ClassVar[tuple[int, int]] = (0, 0)  # (teacher, self-teacher) network evaluations per training example

    def __call__(self, x: Tensor, labels: Tensor | None, generator: torch.Generator, shard: Shard = (0, 1)) -> Target:
        """x, labels: this process's rows of the global batch (the sampler shards the data)."""
        n, rows, logsnr, z_t = _draw_times(self.schedule, x, generator, shard, self.noise)
        if self.label_dropout <= 0 or labels is None:  # draws nothing more: unguided runs are as before
            return Target(z_t, logsnr, x)
        drop = torch.rand(n, generator=generator, device=x.device, dtype=torch.float64)[rows] < self.label_dropout
        return Target(z_t, logsnr, x, {"labels": torch.where(drop, torch.full_like(labels, self.null_label), labels)})


@dataclass
class GuidedObjective:
    """Guided distillation, stage 1 (Meng et al. 2023): t ~ U(0, 1) and w ~ U[w_min, w_max] per example (the
    training range, `training_w_range`); the target is the label-dropout teacher's guided
    x_hat_w(z_t) = (1 + w) x_hat(z_t, c) - w x_hat(z_t, null), and the student is called with that w."""

    teacher: DenoiserFn
    schedule: Schedule
    w_min: float
    w_max: float
    null_label: int | Tensor  # the null class, or the empty caption's hidden states (guidance.null_condition)
    noise: Noise = global_batch_noise
    EVALS: ClassVar[tuple[int, int]] = (2, 0)  # both branches of classifier-free guidance

    def __call__(self, x: Tensor, labels: Tensor | None, generator: torch.Generator, shard: Shard = (0, 1)) -> Target:
        """x, labels: this process's rows of the global batch (the sampler shards the data)."""
        n, rows, logsnr, z_t = _draw_times(self.schedule, x, generator, shard, self.noise)
        w = UniformW(self.w_min, self.w_max).draw(generator, n, rows, x)
        with torch.no_grad():  # both branches in one teacher call on the doubled batch
            x_w = ClassifierFreeGuidance(self.teacher, w, self.null_label)(z_t, logsnr, labels)
        return Target(z_t, logsnr, x_w, {"w": w})


def teacher_clip_threshold(mode: str, logsnr: float) -> float:
    """The log-SNR below which a student step's target is built from clipped teacher steps, for the
    distill.teacher_clip mode: "none" (the paper: never), "noisy" (below `logsnr`), "all" (everywhere)."""
    return {"none": -math.inf, "noisy": logsnr, "all": math.inf}[mode]


@dataclass
class GridDraw:
    """A draw on the student's grid of M steps: i ~ U{1..M}, t = i/M, t' = t - 1/(2M), t'' = t - 1/M, z_t; with
    `w` (guided students), w ~ U[w.lo, w.hi] per example, an input of the teacher and of the student."""

    i: Tensor
    logsnr: tuple[Tensor, Tensor, Tensor]  # at t, t', t''
    z_t: Tensor
    teacher: DenoiserFn
    inputs: dict[str, Tensor]


def _grid_draw(teacher: DenoiserFn, schedule: Schedule, m: int, w: UniformW | None, x: Tensor,
               generator: torch.Generator, shard: Shard, noise: Noise) -> GridDraw:
    """Random grid points (and w) for this process's rows x of the global batch."""
    n, rows = global_rows(x.shape[0], shard)
    i = torch.randint(1, m + 1, (n,), generator=generator, device=x.device)[rows]
    t = i.double() / m
    # Evaluated in float64 then cast, exactly as `step_grid` builds the sampler's grid.
    logsnr = tuple(schedule(s).to(x.dtype) for s in (t, t - 0.5 / m, t - 1.0 / m))
    z_t = _noisy(x, logsnr[0], generator, n, rows, noise)
    if w is None:
        return GridDraw(i, logsnr, z_t, teacher, {})
    w_drawn = w.draw(generator, n, rows, x)
    return GridDraw(i, logsnr, z_t, lambda z, s, lab: teacher(z, s, lab, w=w_drawn), {"w": w_drawn})


@dataclass
class DistillObjective:
    """Discrete time on the student's grid of M steps (`GridDraw`); target x_tilde from two unclipped teacher DDIM
    steps (paper Algorithm 2).

    `clip_below`: student steps starting at a log-SNR below it take their target from two *clipped* teacher steps
    (see diffusion.distillation; -inf, the default, is the paper). `w_range` (guided distillation, stage 2; the
    training range, `training_w_range`): w ~ U[w_range] per example; the w-conditioned teacher takes its two steps at
    that w, and the student is called with it."""

    teacher: DenoiserFn
    schedule: Schedule
    student_steps: int
    clip_below: float = -math.inf
    w_range: tuple[float, float] | None = None
    noise: Noise = global_batch_noise
    EVALS: ClassVar[tuple[int, int]] = (2, 0)  # two teacher steps

    def __call__(self, x: Tensor, labels: Tensor | None, generator: torch.Generator, shard: Shard = (0, 1)) -> Target:
        """x, labels: this process's rows of the global batch (the sampler shards the data)."""
        w = UniformW(*self.w_range) if self.w_range is not None else None
        d = _grid_draw(self.teacher, self.schedule, self.student_steps, w, x, generator, shard, self.noise)
        logsnr_t, logsnr_tp, logsnr_tpp = d.logsnr
        x_tilde = distillation_target(d.teacher, d.z_t, logsnr_t, logsnr_tp, logsnr_tpp, d.i == 1, labels,
                                      logsnr_t < self.clip_below)
        return Target(d.z_t, logsnr_t, x_tilde, d.inputs)


@dataclass
class ConversionObjective:
    """The warm-up of a student of another parameterization (training/reparam.py): on the same M-step grid as
    `DistillObjective`, the target is the teacher's own x_hat at t (one teacher step = one student step), clipped
    where the distillation target is."""

    teacher: DenoiserFn
    schedule: Schedule
    student_steps: int
    clip_below: float = -math.inf
    noise: Noise = global_batch_noise
    EVALS: ClassVar[tuple[int, int]] = (1, 0)

    def __call__(self, x: Tensor, labels: Tensor | None, generator: torch.Generator, shard: Shard = (0, 1)) -> Target:
        """x, labels: this process's rows of the global batch (the sampler shards the data)."""
        d = _grid_draw(self.teacher, self.schedule, self.student_steps, None, x, generator, shard, self.noise)
        logsnr_t = d.logsnr[0]
        return Target(d.z_t, logsnr_t, conversion_target(d.teacher, d.z_t, logsnr_t, labels,
                                                         logsnr_t < self.clip_below))


def _frozen(model) -> DenoiserFn:
    """A network as a target's source: evaluated in eval mode (its own mode unchanged), without gradients."""

    @torch.no_grad()
    def call(z: Tensor, logsnr: Tensor, labels: Tensor | None = None) -> Tensor:
        training = model.training
        model.eval()
        try:
            return model(z, logsnr, labels)
        finally:
            model.train(training)

    return call


@dataclass
class SelfTargetObjective:
    """An objective whose target also comes from the student's own EMA network (the loop's EMA, decay from the
    phase's settings): `run_phase` binds it once the EMA exists (restored on resume). With no EMA (decay 0), the
    student's current weights stand in, without gradients."""

    _self: DenoiserFn | None = field(default=None, init=False, repr=False)

    def bind(self, model, ema) -> None:
        self._self = _frozen(ema.module if ema is not None else model)


@dataclass(kw_only=True)
class ConsistencyObjective(SelfTargetObjective):
    """Consistency distillation (Song et al. 2023, Algorithm 2) on the grid of N steps t_i = i/N: i ~ U{1..N},
    z_t at t = i/N; the target is the target network's f at the teacher's one DDIM step to s = (i - 1)/N
    (`consistency_target`). The student is a consistency model (denoiser.consistency), so its x_hat is f and the
    loop's loss compares f_student(z_t, t) with the target (distill.cd_metric: L2 or pseudo-Huber)."""

    teacher: DenoiserFn
    schedule: Schedule
    grid_steps: int
    noise: Noise = global_batch_noise
    EVALS: ClassVar[tuple[int, int]] = (1, 1)  # one teacher step; the target network once

    def __call__(self, x: Tensor, labels: Tensor | None, generator: torch.Generator, shard: Shard = (0, 1)) -> Target:
        """x, labels: this process's rows of the global batch (the sampler shards the data)."""
        n, rows = global_rows(x.shape[0], shard)
        i = torch.randint(1, self.grid_steps + 1, (n,), generator=generator, device=x.device)[rows]
        logsnr_t, logsnr_s = (self.schedule(s).to(x.dtype) for s in (i.double() / self.grid_steps,
                                                                       (i - 1).double() / self.grid_steps))
        z_t = _noisy(x, logsnr_t, generator, n, rows, self.noise)
        return Target(z_t, logsnr_t, consistency_target(self.teacher, self._self, z_t, logsnr_t, logsnr_s, labels))


@dataclass(kw_only=True)
class TractObjective(SelfTargetObjective):
    """TRACT (Berthelot et al. 2023): the teacher's grid of T steps is cut into `student_steps` segments of
    L = T / student_steps steps; j ~ U{1..T}, z_t at t = j/T, and the student learns to jump from t to the end
    e of t's segment: one teacher step to t' = (j - 1)/T, then the self-teacher (the student's EMA) from t' to e
    (`tract_target`). With L = 2 and j at a segment's start, and a self-teacher equal to the teacher, this is the
    progressive-distillation target."""

    teacher: DenoiserFn
    schedule: Schedule
    teacher_steps: int
    student_steps: int
    noise: Noise = global_batch_noise
    EVALS: ClassVar[tuple[int, int]] = (1, 1)  # the self-teacher is evaluated for every example, used where t' > e

    def __call__(self, x: Tensor, labels: Tensor | None, generator: torch.Generator, shard: Shard = (0, 1)) -> Target:
        """x, labels: this process's rows of the global batch (the sampler shards the data)."""
        n, rows = global_rows(x.shape[0], shard)
        big, seg = self.teacher_steps, self.teacher_steps // self.student_steps
        j = torch.randint(1, big + 1, (n,), generator=generator, device=x.device)[rows]
        e = torch.div(j - 1, seg, rounding_mode="floor") * seg
        logsnr_t, logsnr_tp, logsnr_e = (self.schedule(k.double() / big).to(x.dtype) for k in (j, j - 1, e))
        z_t = _noisy(x, logsnr_t, generator, n, rows, self.noise)
        x_tilde = tract_target(self.teacher, self._self, z_t, logsnr_t, logsnr_tp, logsnr_e, j - 1 == e, e == 0,
                               labels)
        return Target(z_t, logsnr_t, x_tilde)
