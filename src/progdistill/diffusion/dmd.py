"""Distribution matching (DMD, Yin et al. 2024; DMD2): the gradient that moves a generator's samples from its own
distribution (the fake score's) towards the data's (the real score's), and the adversarial loss terms beside it.

With z_t = alpha_t x + sigma_t eps and a denoiser's x_hat(z_t), the score of the noised distribution is
s(z_t) = (alpha_t x_hat(z_t) - z_t) / sigma_t^2, so s_fake - s_real = alpha_t (x_hat_fake - x_hat_real) / sigma_t^2:
the gradient of KL(p_fake || p_real) at x is, up to a positive factor per time, x_hat_fake - x_hat_real. DMD divides
it per sample by mean |x - x_hat_real| (its normaliser) and applies it through 0.5 ||x - stopgrad(x - grad)||^2,
whose gradient in x is `grad` (over the element count).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def dmd_gradient(x: Tensor, real_x_hat: Tensor, fake_x_hat: Tensor) -> Tensor:
    """(fake_x_hat - real_x_hat) / mean|x - real_x_hat| per sample (NaN-free): DMD2's distribution-matching
    gradient on the generator's samples x (without gradient)."""
    dims = tuple(range(1, x.ndim))
    normaliser = (x - real_x_hat).abs().mean(dim=dims, keepdim=True)
    return torch.nan_to_num((fake_x_hat - real_x_hat) / normaliser).detach()


def dmd_loss(x: Tensor, grad: Tensor) -> Tensor:
    """0.5 * mean (x - stopgrad(x - grad))^2: a loss whose gradient in x is grad / x.numel()."""
    return 0.5 * F.mse_loss(x.float(), (x - grad).detach().float(), reduction="mean")


def generator_gan_loss(fake_logits: Tensor) -> Tensor:
    """The non-saturating generator loss, softplus(-D(fake))."""
    return F.softplus(-fake_logits.float()).mean()


def discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """The non-saturating discriminator loss, softplus(-D(real)) + softplus(D(fake))."""
    return F.softplus(-real_logits.float()).mean() + F.softplus(fake_logits.float()).mean()


def approximate_r1(real_logits: Tensor, perturbed_logits: Tensor) -> Tensor:
    """R1's approximation by finite differences (as in adversarial post-training): mean (D(x) - D(x + sigma n))^2,
    which is about sigma^2 ||grad_x D||^2 without a second backward."""
    return (real_logits.float() - perturbed_logits.float()).pow(2).mean()
