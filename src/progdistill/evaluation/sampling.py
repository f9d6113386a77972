"""Draw samples from a denoiser with a chosen sampler and step count, in batches, reproducibly."""

from __future__ import annotations

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..diffusion.dpm_solver import dpm_solver_pp_2m
from ..diffusion.samplers import ancestral, ddim
from ..diffusion.schedules import Schedule, step_grid

SAMPLERS = ("ddim", "ancestral", "dpm_solver")  # dpm_solver: DPM-Solver++(2M), one network evaluation per step


@torch.no_grad()
def generate(
    denoiser,
    schedule: Schedule,
    steps: int,
    num: int,
    data_shape: tuple[int, ...],
    *,
    sampler: str = "ddim",
    variance: str = "small",
    clip: bool = True,
    seed: int = 0,
    batch_size: int = 10_000,
    device: torch.device | str = "cpu",
    labels: Tensor | None = None,
    progress: bool = False,
) -> Tensor:
    """`num` samples on the `steps`-step grid; z_1 ~ N(0, I) from `seed`, so equal seeds give equal noise."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}: choose one of {', '.join(SAMPLERS)}")
    grid = step_grid(schedule, steps, device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    out = []
    bar = tqdm(total=num, desc=f"{sampler} {steps} steps", disable=not progress, leave=False)
    for start in range(0, num, batch_size):
        b = min(batch_size, num - start)
        z = torch.randn((b, *data_shape), generator=gen, device=device)
        lab = labels[start : start + b].to(device) if labels is not None else None
        if sampler == "ddim":
            x = ddim(denoiser, z, grid, labels=lab, clip=clip)
        elif sampler == "dpm_solver":
            x = dpm_solver_pp_2m(denoiser, z, grid, labels=lab, clip=clip)
        else:
            x = ancestral(denoiser, z, grid, labels=lab, clip=clip, variance=variance, generator=gen)
        out.append(x.cpu())
        bar.update(b)
    bar.close()
    return torch.cat(out)
