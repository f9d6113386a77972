"""The progressive-distillation target (paper Algorithm 2, section 5): two teacher DDIM steps, one student step."""

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


@torch.no_grad()
def distillation_target(
    teacher: DenoiserFn,
    z_t: Tensor,
    logsnr_t: Tensor,
    logsnr_tp: Tensor,
    logsnr_tpp: Tensor,
    is_last: Tensor,
    labels: Tensor | None = None,
) -> Tensor:
    """x_tilde for a student step t -> t'' made of the teacher's two unclipped DDIM steps t -> t' -> t''.

    Where t'' = 0 (`is_last`), the formula is 0/0-prone, and the teacher's x_hat at the midpoint z_t' is the
    target instead (as in the official code).
    """
    x_hat_t = teacher(z_t, logsnr_t, labels)
    z_tp = ddim_step(z_t, x_hat_t, logsnr_t, logsnr_tp)
    x_hat_tp = teacher(z_tp, logsnr_tp, labels)
    z_tpp = ddim_step(z_tp, x_hat_tp, logsnr_tp, logsnr_tpp)
    x_tilde = x_tilde_from_two_steps(z_t, z_tpp, logsnr_t, logsnr_tpp)
    return torch.where(broadcast(is_last, z_t), x_hat_tp, x_tilde)
