"""Consistency models in variance-preserving terms (Song et al. 2023), and the pseudo-Huber metric (Song & Dhariwal
2023).

A consistency function maps any point z_t of an ODE trajectory to its end, the data x. Song et al. write it in the
EDM variable x + sigma eps; here z_t = alpha_t x + sigma_t eps, so that variable is z_t / alpha_t and its noise level
s_t = sigma_t / alpha_t = exp(-lambda / 2). The network's own x_hat (through its parameterization) is mixed with the
identity so that the boundary condition holds exactly at the smallest time of the grid, t = 0 (log-SNR lambda_max):

    f(z_t, t) = c_skip(t) z_t / alpha_t + (1 - c_skip(t)) x_hat(z_t, t),
    c_skip(t) = sigma_data^2 / ((k (s_t - s_min))^2 + sigma_data^2),   s_min = exp(-lambda_max / 2).

With k = 1, c_skip is the paper's (with s - s_min for its t - eps). Its c_out multiplies a raw network output,
whereas x_hat here already is an estimate of x, so the weight on it is 1 - c_skip and f stays an estimate of x:
every sampler of the project runs a consistency model as a denoiser, and the multistep consistency sampler
(`consistency_step`) is the one it is made for.

The scale k (`skip_scale`) plays the part of LCM's `timestep_scaling`: a student starts from its teacher's weights,
whose x_hat was never trained to cancel a c_skip share of the noisy input, so with k = 1 the student starts far from
its teacher wherever s is near sigma_data (on a cosine schedule, c_skip is 0.2 at t = 1/2 and 0.86 at t = 1/8) and
its multistep samples keep that share of noise. A large k (default 100) makes f the network's own x_hat everywhere
but at t = 0, where the boundary condition still holds exactly.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .schedules import alpha_sigma, broadcast

SIGMA_DATA = 0.5  # the paper's sigma_data for data in [-1, 1]
# Pseudo-Huber's c = 0.00054 sqrt(d) for d the data's dimension (Song & Dhariwal 2023, "improved techniques").
PSEUDO_HUBER_SCALE = 0.00054


def c_skip(logsnr: Tensor, logsnr_max: float, sigma_data: float = SIGMA_DATA, skip_scale: float = 1.0) -> Tensor:
    """The weight of z_t / alpha_t in f: exactly 1 at log-SNR logsnr_max (t = 0), falling to ~0 as noise grows
    (faster by the factor `skip_scale`)."""
    s = torch.exp(-0.5 * logsnr.double())
    s_min = math.exp(-0.5 * logsnr_max)
    return (sigma_data**2 / ((skip_scale * (s - s_min)) ** 2 + sigma_data**2)).to(logsnr.dtype)


def consistency_output(z: Tensor, x_hat: Tensor, logsnr: Tensor, logsnr_max: float,
                       sigma_data: float = SIGMA_DATA, skip_scale: float = 1.0) -> Tensor:
    """f(z_t, t) = c_skip z_t / alpha_t + (1 - c_skip) x_hat; f = z_t / alpha_t exactly at logsnr = logsnr_max."""
    lam = broadcast(logsnr.to(z.dtype), z)
    alpha, _ = alpha_sigma(lam)
    skip = c_skip(lam, logsnr_max, sigma_data, skip_scale)
    f = skip * (z / alpha) + (1.0 - skip) * x_hat
    # At pure noise (alpha = 0: a flow schedule's t = 1) c_skip is 0 and f is x_hat (not 0 * inf)
    return torch.where(alpha > 0, f, x_hat)


def consistency_step(x_hat: Tensor, logsnr_s: Tensor, noise: Tensor) -> Tensor:
    """Multistep consistency sampling: the model's x estimate re-noised to the next time s, alpha_s x + sigma_s eps
    with fresh eps (the paper's Algorithm 1)."""
    alpha, sigma = alpha_sigma(broadcast(logsnr_s, x_hat))
    return alpha * x_hat + sigma * noise


def pseudo_huber(x_hat: Tensor, x_target: Tensor) -> Tensor:
    """Per example sqrt(||x_hat - x_target||^2 + c^2) - c, c = 0.00054 sqrt(d) (the norm over all d values)."""
    d = x_hat[0].numel()
    c = PSEUDO_HUBER_SCALE * math.sqrt(d)
    sq = (x_hat - x_target).pow(2).flatten(1).sum(dim=1)
    return torch.sqrt(sq + c * c) - c
