"""The progressive-distillation target (paper Algorithm 2, section 5): two teacher DDIM steps, one student step.

Deviation available for teachers whose terminal log-SNR is low (docs/imported_teachers.md): `clip` makes the
teacher's two steps *clipped* DDIM steps (x_hat clamped to [-1, 1], eps_hat re-derived from it), the sampler such
teachers are actually used with; the paper's target is the unclipped one (clip = False everywhere).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .samplers import DenoiserFn, ddim_step
from .schedules import alpha_sigma, broadcast


def x_tilde_from_two_steps(z_t: Tensor, z_tpp: Tensor, logsnr_t: Tensor, logsnr_tpp: Tensor) -> Tensor:
    """x_tilde = (z_t'' - (sigma_t'' / sigma_t) z_t) / (alpha_t'' - (sigma_t'' / sigma_t) alpha_t):
    the x_hat for which one DDIM step from z_t lands exactly on z_t''."""
    alpha_t, sigma_t = alpha_sigma(broadcast(logsnr_t, z_t))
    alpha_pp, sigma_pp = alpha_sigma(broadcast(logsnr_tpp, z_t))
    ratio = sigma_pp / sigma_t
    return (z_tpp - ratio * z_t) / (alpha_pp - ratio * alpha_t)


def _maybe_clip(x_hat: Tensor, clip: Tensor | bool) -> Tensor:
    if isinstance(clip, bool):
        return x_hat.clamp(-1.0, 1.0) if clip else x_hat
    return torch.where(broadcast(clip, x_hat), x_hat.clamp(-1.0, 1.0), x_hat)


@torch.no_grad()
def distillation_target(
    teacher: DenoiserFn,
    z_t: Tensor,
    logsnr_t: Tensor,
    logsnr_tp: Tensor,
    logsnr_tpp: Tensor,
    is_last: Tensor,
    labels: Tensor | None = None,
    clip: Tensor | bool = False,
) -> Tensor:
    """x_tilde for a student step t -> t'' made of the teacher's two DDIM steps t -> t' -> t''.

    Where t'' = 0 (`is_last`), the formula is 0/0-prone, and the teacher's x_hat at the midpoint z_t' is the
    target instead (as in the official code). `clip` (one bool, or one per example) clips the teacher's x_hat in
    both of its steps (and in the midpoint target); x_tilde is then a convex combination of the two clipped x_hat,
    so it lies in [-1, 1] and the student's clipped sampler step reproduces the teacher's two clipped steps.
    """
    x_hat_t = _maybe_clip(teacher(z_t, logsnr_t, labels), clip)
    z_tp = ddim_step(z_t, x_hat_t, logsnr_t, logsnr_tp)
    x_hat_tp = _maybe_clip(teacher(z_tp, logsnr_tp, labels), clip)
    z_tpp = ddim_step(z_tp, x_hat_tp, logsnr_tp, logsnr_tpp)
    x_tilde = x_tilde_from_two_steps(z_t, z_tpp, logsnr_t, logsnr_tpp)
    return torch.where(broadcast(is_last, z_t), x_hat_tp, x_tilde)


@torch.no_grad()
def conversion_target(teacher: DenoiserFn, z_t: Tensor, logsnr_t: Tensor, labels: Tensor | None = None,
                      clip: Tensor | bool = False) -> Tensor:
    """The teacher's own x_hat at z_t (clipped where `clip`): the target that makes one student step equal one
    teacher step. Used to warm up a student whose parameterization differs from its teacher's before the first
    round (training.rounds), so that it starts that round as a copy of the teacher's sampler."""
    return _maybe_clip(teacher(z_t, logsnr_t, labels), clip)


@torch.no_grad()
def consistency_target(teacher: DenoiserFn, target_net: DenoiserFn, z_t: Tensor, logsnr_t: Tensor,
                       logsnr_s: Tensor, labels: Tensor | None = None) -> Tensor:
    """Consistency distillation's target (Song et al. 2023, Algorithm 2) for a student call at z_t: one teacher DDIM
    step from t to the previous grid point s, then the target network's consistency function there,
    f_target(z_s, s). At s = 0 the target network's boundary condition makes it z_s / alpha_s exactly."""
    z_s = ddim_step(z_t, teacher(z_t, logsnr_t, labels), logsnr_t, logsnr_s)
    return target_net(z_s, logsnr_s, labels)


@torch.no_grad()
def tract_target(teacher: DenoiserFn, self_teacher: DenoiserFn, z_t: Tensor, logsnr_t: Tensor, logsnr_tp: Tensor,
                 logsnr_e: Tensor, teacher_lands: Tensor, to_zero: Tensor, labels: Tensor | None = None) -> Tensor:
    """TRACT's target (Berthelot et al. 2023) for a student step from t to the end e of t's segment: one teacher
    DDIM step t -> t' (the next point of the teacher's grid), then the self-teacher's DDIM step t' -> e; where
    t' = e (`teacher_lands`) the teacher's step lands on the end itself. x_tilde is the x_hat for which one DDIM step
    from z_t lands on that z_e. Where e = 0 (`to_zero`), the last model's x_hat is the target instead (as the
    progressive-distillation target does at t'' = 0)."""
    x_hat_t = teacher(z_t, logsnr_t, labels)
    z_tp = ddim_step(z_t, x_hat_t, logsnr_t, logsnr_tp)
    x_hat_tp = self_teacher(z_tp, logsnr_tp, labels)
    lands = broadcast(teacher_lands, z_t)
    z_e = torch.where(lands, z_tp, ddim_step(z_tp, x_hat_tp, logsnr_tp, logsnr_e))
    x_tilde = x_tilde_from_two_steps(z_t, z_e, logsnr_t, logsnr_e)
    return torch.where(broadcast(to_zero, z_t), torch.where(lands, x_hat_t, x_hat_tp), x_tilde)
