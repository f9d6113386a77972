"""What every network that `build_net` makes shares: the noise condition it is fed, and its optional parts."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from .args import SpecError


def noise_condition(logsnr: Tensor) -> Tensor:
    """arctan(exp(-lambda / 2)) / (pi / 2): a schedule-independent noise level in [0, 1] (= t for the cosine
    schedule), which networks embed; this is the conditioning the paper's code feeds its U-Net."""
    return torch.atan(torch.exp(-0.5 * logsnr.float())) / (0.5 * math.pi)


class DenoiserNet(nn.Module):
    """Base of the project's networks, net(z, cond, labels[, w]) -> output. Subclasses override what differs: the
    condition (imported discrete-time models take their own timestep), the w input, the diffusers modules."""

    num_classes: int = 0
    # The state-dict keys (under this network) that a w-conditioned copy adds to its teacher's start with this.
    w_input_prefix: str = "w_embed."

    def condition(self, logsnr: Tensor) -> Tensor:
        """The `cond` this network is called with at log-SNR `logsnr`."""
        return noise_condition(logsnr)

    def condition_on_w(self, dim: int, scale: float, class_gate: bool = False) -> None:
        """Add the guidance weight w as an input (a w-conditioned network), its embedding starting at zero."""
        raise SpecError(f"a {type(self).__name__} network cannot be conditioned on the guidance weight")

    def diffusers_modules(self) -> Iterable[nn.Module]:
        """The modules of a diffusers model inside this network (none for a network of the project's own)."""
        return ()


def enable_gradient_checkpointing(module: nn.Module) -> int:
    """Switch on gradient (activation) checkpointing in every diffusers model inside `module` (their own switch:
    each block's activations are recomputed in the backward pass instead of kept; torch's non-reentrant checkpoint,
    which restores the RNG state, so dropout draws the same masks). Returns how many models; a SpecError where there
    is none (the MLP)."""
    roots = [m for m in module.modules()
             if getattr(m, "_supports_gradient_checkpointing", False) and hasattr(m, "enable_gradient_checkpointing")]
    if not roots:
        raise SpecError(f"perf.gradient_checkpointing: {type(module).__name__} has no diffusers model to checkpoint "
                        "(the MLP has no blocks); leave it off")
    for root in roots:
        root.enable_gradient_checkpointing()
    return len(roots)
