"""What the network predicts, and how each prediction becomes x_hat (paper section 2).

One registry maps a name to its conversion; losses and samplers only ever see x_hat, and derive
eps_hat = (z - alpha x_hat) / sigma and v_hat = alpha eps_hat - sigma x_hat from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor


@dataclass(frozen=True)
class Parameterization:
    """A network output type: `to_x(out, z, alpha, sigma) -> x_hat`; `ideal(x, eps, alpha, sigma)` is the output
    a perfect network would give (used for round-trip tests and for converting targets)."""

    name: str
    channel_factor: int  # the network emits channel_factor * C channels for C data channels
    to_x: Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]
    ideal: Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]
    # The factor the network's input z is multiplied by (None: z itself). "flow": the network sees the flow point
    # z_fm = z / (alpha + sigma), as a flow-matching model expects.
    input_scale: Callable[[Tensor, Tensor], Tensor] | None = None


def _x_from_eps(out: Tensor, z: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    # x_hat = (z - sigma eps) / alpha: unbounded as alpha -> 0, which is why eps cannot be distilled.
    return (z - sigma * out) / alpha


def _x_from_v(out: Tensor, z: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    return alpha * z - sigma * out


def _x_from_both(out: Tensor, z: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    x_out, eps_out = out.chunk(2, dim=1)
    return sigma**2 * x_out + alpha * (z - sigma * eps_out)


def _x_from_flow(out: Tensor, z: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    # The velocity u = eps - x at the flow point z_fm = (1 - t) x + t eps, t = sigma / (alpha + sigma):
    # x_hat = z_fm - t u = (z - sigma u) / (alpha + sigma); finite at both ends (t = 1: x_hat = eps - u).
    return (z - sigma * out) / (alpha + sigma)


PARAMETERIZATIONS: dict[str, Parameterization] = {
    "eps": Parameterization("eps", 1, _x_from_eps, lambda x, eps, a, s: eps),
    "x": Parameterization("x", 1, lambda out, z, a, s: out, lambda x, eps, a, s: x),
    "v": Parameterization("v", 1, _x_from_v, lambda x, eps, a, s: a * eps - s * x),
    "both": Parameterization("both", 2, _x_from_both, lambda x, eps, a, s: torch.cat([x, eps], dim=1)),
    # flow matching's velocity (SD3, FLUX): u = eps - x, the network fed the flow point z / (alpha + sigma)
    "flow": Parameterization("flow", 1, _x_from_flow, lambda x, eps, a, s: eps - x,
                             input_scale=lambda a, s: 1.0 / (a + s)),
}


def get_parameterization(name: str) -> Parameterization:
    """The registered parameterization called `name`, or a ValueError listing the valid ones."""
    try:
        return PARAMETERIZATIONS[name]
    except KeyError:
        raise ValueError(
            f"unknown parameterization {name!r}: choose one of {', '.join(PARAMETERIZATIONS)}"
        ) from None


def eps_from_x(z: Tensor, x_hat: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """eps_hat = (z - alpha x_hat) / sigma."""
    return (z - alpha * x_hat) / sigma


def v_from_x(z: Tensor, x_hat: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """v_hat = alpha eps_hat - sigma x_hat."""
    return alpha * eps_from_x(z, x_hat, alpha, sigma) - sigma * x_hat
