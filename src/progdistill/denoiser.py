"""The one denoiser interface: any network `net(z, cond, labels)` plus a parameterization -> x_hat."""

from __future__ import annotations

from torch import Tensor, nn

from .diffusion.consistency import consistency_output
from .diffusion.parameterization import eps_from_x, get_parameterization
from .diffusion.schedules import alpha_sigma, broadcast
from .nets.base import noise_condition  # noqa: F401 (re-exported: the conditioning networks are fed)




class Denoiser(nn.Module):
    """x_hat(z, lambda) for a network and a parameterization; eps_hat and v_hat follow from x_hat.

    `consistency` ({"sigma_data", "logsnr_max", "skip_scale"}; consistency-distilled students): x_hat is the consistency function
    f = c_skip z / alpha + (1 - c_skip) x_hat_net, which is z / alpha exactly at log-SNR logsnr_max
    (diffusion/consistency.py)."""

    def __init__(self, net: nn.Module, parameterization: str, consistency: dict | None = None):
        super().__init__()
        self.net = net
        self.parameterization = get_parameterization(parameterization)
        self.consistency = consistency

    def forward(self, z: Tensor, logsnr: Tensor, labels: Tensor | None = None, w: Tensor | float | None = None
                ) -> Tensor:
        """x_hat(z, lambda, labels) and, for a w-conditioned network (a guided student), at guidance weight w
        (a number or one per example; see `guidance.py` for guided sampling of either kind of model)."""
        # Under mixed precision the network may answer in bf16/fp16; the parameterization runs in z's dtype.
        # Networks of discrete-time models (imported ones) bring their own map from log-SNR to their timestep.
        # Any module net(z, cond, labels) is accepted (an open type: tests and users wrap their own networks);
        # the project's networks (nets.base.DenoiserNet) may bring their own condition.
        cond = self.net.condition(logsnr) if hasattr(self.net, "condition") else noise_condition(logsnr)
        alpha, sigma = alpha_sigma(broadcast(logsnr.to(z.dtype), z))
        scale = self.parameterization.input_scale  # a flow model sees the flow point z / (alpha + sigma)
        z_in = z if scale is None else z * scale(alpha, sigma)
        out = (self.net(z_in, cond, labels) if w is None else self.net(z_in, cond, labels, w)).to(z.dtype)
        x_hat = self.parameterization.to_x(out, z, alpha, sigma)
        if self.consistency is None:
            return x_hat
        c = self.consistency
        return consistency_output(z, x_hat, logsnr, c["logsnr_max"], c["sigma_data"], c["skip_scale"])

    def eps(self, z: Tensor, logsnr: Tensor, labels: Tensor | None = None, w: Tensor | float | None = None
            ) -> Tensor:
        """eps_hat = (z - alpha x_hat) / sigma."""
        alpha, sigma = alpha_sigma(broadcast(logsnr, z))
        return eps_from_x(z, self(z, logsnr, labels, w), alpha, sigma)
