"""Draw samples from a denoiser with a chosen sampler and step count, in batches, reproducibly. It sits below both
training (per-round sample checks) and evaluation, so neither imports the other."""

from __future__ import annotations

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .diffusion.registry import SAMPLERS, get_sampler
from .diffusion.schedules import Schedule, step_grid
from .guidance import check_guidance, guided

__all__ = ["SAMPLERS", "balanced_labels", "generate"]


def balanced_labels(num: int, num_classes: int) -> Tensor | None:
    """0, 1, ..., C-1, 0, 1, ...: equal class counts, and the first C samples of a grid show one of each class."""
    return torch.arange(num) % num_classes if num_classes > 0 else None


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
    guidance: float | None = None,
) -> Tensor:
    """`num` samples on the `steps`-step grid; z_1 ~ N(0, I) from `seed`, so equal seeds give equal noise.

    `guidance`: the guidance weight w (diffusers' guidance_scale - 1) for a label-dropout teacher (two network
    evaluations per step) or a w-conditioned student (one); None samples unguided, which a w-conditioned student
    refuses (see `guidance.guided`)."""
    run = get_sampler(sampler).run
    if guidance is not None:
        denoiser = guided(denoiser, guidance)
    else:
        check_guidance(getattr(denoiser, "spec", None), None)
    grid = step_grid(schedule, steps, device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    out = []
    bar = tqdm(total=num, desc=f"{sampler} {steps} steps", disable=not progress, leave=False)
    for start in range(0, num, batch_size):
        b = min(batch_size, num - start)
        z = torch.randn((b, *data_shape), generator=gen, device=device)
        lab = labels[start : start + b].to(device) if labels is not None else None
        x = run(denoiser, z, grid, labels=lab, clip=clip, variance=variance, generator=gen)
        out.append(x.cpu())
        bar.update(b)
    bar.close()
    return torch.cat(out)
