"""The samplers by name (one table for the config, the command line, `generate` and evaluation)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import Tensor

from .dpm_solver import dpm_solver_pp_2m
from .samplers import VARIANCES, ancestral, ddim, stochastic

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


SAMPLERS: dict[str, SamplerInfo] = {
    "ddim": SamplerInfo(_ddim, "deterministic DDIM (the sampler students are distilled for)"),
    "ancestral": SamplerInfo(_ancestral, "stochastic ancestral sampling (variance small, large or interp)"),
    "dpm_solver": SamplerInfo(_dpm_solver, "DPM-Solver++(2M), one network evaluation per step"),
    "stochastic": SamplerInfo(_stochastic, "guided distillation's stochastic N-step sampler: a DDIM step of twice "
                              "the length, then noise back to the next grid point; the last step deterministic"),
}


def get_sampler(name: str) -> SamplerInfo:
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}: choose one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name]
