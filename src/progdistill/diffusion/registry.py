"""The samplers by name (one table for the config, the command line, `generate` and evaluation)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import Tensor

from .dpm_solver import dpm_solver_pp_2m
from .sampler_names import SAMPLER_DESCRIPTIONS
from .samplers import VARIANCES, ancestral, consistency, ddim, stochastic

__all__ = ["SAMPLERS", "SamplerInfo", "VARIANCES", "get_sampler"]

# One table of the samplers by name, for the config, the command line and evaluation. Every entry takes
# (denoiser, z, grid, *, labels, clip, variance, generator) and returns x_0; any step count >= 1 is valid for each.


@dataclass(frozen=True)
class SamplerInfo:
    run: Callable[..., Tensor]
    description: str


def _ddim(denoiser, z, grid, *, labels=None, clip=False, variance="small", generator=None) -> Tensor:
    return ddim(denoiser, z, grid, labels=labels, clip=clip)


def _ancestral(denoiser, z, grid, *, labels=None, clip=False, variance="small", generator=None) -> Tensor:
    return ancestral(denoiser, z, grid, labels=labels, clip=clip, variance=variance, generator=generator)


def _dpm_solver(denoiser, z, grid, *, labels=None, clip=False, variance="small", generator=None) -> Tensor:
    return dpm_solver_pp_2m(denoiser, z, grid, labels=labels, clip=clip)


def _stochastic(denoiser, z, grid, *, labels=None, clip=False, variance="small", generator=None) -> Tensor:
    return stochastic(denoiser, z, grid, labels=labels, clip=clip, generator=generator)


def _consistency(denoiser, z, grid, *, labels=None, clip=False, variance="small", generator=None) -> Tensor:
    return consistency(denoiser, z, grid, labels=labels, clip=clip, generator=generator)


SAMPLERS: dict[str, SamplerInfo] = {
    name: SamplerInfo(run, SAMPLER_DESCRIPTIONS[name])
    for name, run in (("ddim", _ddim), ("ancestral", _ancestral), ("dpm_solver", _dpm_solver),
                      ("stochastic", _stochastic), ("consistency", _consistency))
}


def get_sampler(name: str) -> SamplerInfo:
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}: choose one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name]
