"""Loss weightings on the x-space error, as functions of log-SNR (paper section 3), and the loss itself."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .schedules import broadcast

# w(lambda) multiplies the per-example mean squared x error ||x - x_hat||^2 / D.
WEIGHTINGS: dict[str, Callable[[Tensor], Tensor]] = {
    "snr": lambda logsnr: torch.exp(logsnr),  # = eps-MSE
    "snr_trunc": lambda logsnr: torch.exp(logsnr).clamp(min=1.0),  # = max(x-MSE, eps-MSE)
    "snr_plus1": lambda logsnr: torch.exp(logsnr) + 1.0,  # = v-MSE
    "constant": lambda logsnr: torch.ones_like(logsnr),  # = x-MSE
    # = flow matching's velocity MSE: x_hat - x = -t (u_hat - u), t = 1 / (1 + e^(lambda/2)); finite at t = 0
    # (lambda = inf, where the x error is 0) by capping lambda at 60
    "velocity": lambda logsnr: (1.0 + torch.exp(0.5 * logsnr.clamp(max=60.0))).square(),
}

# Combinations known not to train: eps-prediction with snr_trunc diverged in the paper (x_hat ~ 1/alpha near t = 1).
FORBIDDEN = {("eps", "snr_trunc"): "eps prediction with snr_trunc weighting diverges (paper section 3); "
             "use parameterization x, v or both, or another weighting"}


def get_weighting(name: str) -> Callable[[Tensor], Tensor]:
    """The registered weighting called `name`, or a ValueError listing the valid ones."""
    try:
        return WEIGHTINGS[name]
    except KeyError:
        raise ValueError(f"unknown loss weighting {name!r}: choose one of {', '.join(WEIGHTINGS)}") from None


def check_combination(parameterization: str, weighting: str) -> None:
    """Raise ValueError for a parameterization/weighting pair that is known to diverge."""
    reason = FORBIDDEN.get((parameterization, weighting))
    if reason:
        raise ValueError(reason)


def per_example_x_mse(x_hat: Tensor, x_target: Tensor) -> Tensor:
    """||x - x_hat||^2 averaged over every non-batch dimension (averaged, not summed: a sum would scale the loss,
    and so the learning rate that suits it, with the data size)."""
    return (x_hat - x_target).pow(2).flatten(1).mean(dim=1)


# Not a weighting but a metric: consistency distillation's pseudo-Huber distance (diffusion/consistency.py), unweighted.
PSEUDO_HUBER = "pseudo_huber"


def weighted_loss(x_hat: Tensor, x_target: Tensor, logsnr: Tensor, weighting: str) -> Tensor:
    """mean over the batch of w(lambda) * mean-over-pixels (x_target - x_hat)^2; for `PSEUDO_HUBER`, the mean
    pseudo-Huber distance instead."""
    if weighting == PSEUDO_HUBER:
        from .consistency import pseudo_huber

        return pseudo_huber(x_hat.float(), x_target.float()).mean()
    w = get_weighting(weighting)(logsnr.to(torch.float32))
    return (broadcast(w, logsnr) * per_example_x_mse(x_hat.float(), x_target.float())).mean()
