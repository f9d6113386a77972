"""Classifier-free guidance in x space (Ho & Salimans 2022, in the convention of Meng et al. 2023):

    x_hat_w(z) = (1 + w) x_hat(z, c) - w x_hat(z, null)

w = 0 is the plain conditional model; diffusers' `guidance_scale` is 1 + w. Samplers that need eps_hat derive it
from the combined x_hat, eps_hat = (z - alpha x_hat_w) / sigma, which is the same combination of the two eps_hat.
"""

from __future__ import annotations

from torch import Tensor

from .schedules import broadcast


def guided_x_hat(x_cond: Tensor, x_uncond: Tensor, w: Tensor | float) -> Tensor:
    """(1 + w) x_cond - w x_uncond, with w a number or one per example."""
    if isinstance(w, Tensor):
        w = broadcast(w.to(x_cond.dtype), x_cond)
    return (1 + w) * x_cond - w * x_uncond
