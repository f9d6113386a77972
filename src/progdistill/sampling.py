"""Draw samples from a denoiser with a chosen sampler and step count, in batches, reproducibly. It sits below both
training (per-round sample checks) and evaluation, so neither imports the other."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .diffusion.registry import SAMPLERS, get_sampler
from .diffusion.schedules import Schedule, step_grid
from .compiling import maybe_compiled
from . import conditioning
from .guidance import check_guidance, guided

__all__ = ["SAMPLERS", "balanced_labels", "generate", "sample_in_batches"]


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
    compile: bool = False,
) -> Tensor:
    """`num` samples on the `steps`-step grid; z_1 ~ N(0, I) from `seed`, so equal seeds give equal noise.

    `guidance`: the guidance weight w (diffusers' guidance_scale - 1) for a label-dropout teacher (two network
    evaluations per step) or a w-conditioned student (one); None samples unguided, which a w-conditioned student
    refuses (see `guidance.guided`). `compile`: the network through torch.compile (CUDA graphs on CUDA), falling
    back to eager with a warning when that fails (progdistill.compiling)."""
    run = get_sampler(sampler).run
    if guidance is not None:
        denoiser = guided(denoiser, guidance)
    else:
        check_guidance(getattr(denoiser, "spec", None), None)
    on_cuda = torch.device(device).type == "cuda"
    denoiser = maybe_compiled(denoiser, "the sampler's network", compile,
                              **({"mode": "reduce-overhead"} if on_cuda else {}))
    grid = step_grid(schedule, steps, device=device)

    def denoise(z: Tensor, batch_labels: Tensor | None, generator: torch.Generator) -> Tensor:
        return run(denoiser, z, grid, labels=batch_labels, clip=clip, variance=variance, generator=generator)

    return sample_in_batches(denoise, num, data_shape, seed=seed, batch_size=batch_size, device=device,
                             labels=labels, progress=progress, desc=f"{sampler} {steps} steps")


# (starting noise [b, *data_shape], the batch's labels or None, the generator that drew the noise) -> samples
BatchSampler = Callable[[Tensor, "Tensor | None", torch.Generator], Tensor]


@torch.no_grad()
def sample_in_batches(
    denoise: BatchSampler,
    num: int,
    data_shape: tuple[int, ...],
    *,
    seed: int = 0,
    batch_size: int = 10_000,
    device: torch.device | str = "cpu",
    labels: Tensor | None = None,
    progress: bool = False,
    desc: str = "",
) -> Tensor:
    """`num` samples, `batch_size` at a time, on the CPU: each batch's z_1 ~ N(0, I) drawn from one generator seeded
    with `seed` (so equal seeds give equal noise whatever the sampler) and passed to `denoise` with its labels."""
    gen = torch.Generator(device=device).manual_seed(seed)
    out = []
    bar = tqdm(total=num, desc=desc, disable=not progress, leave=False)
    for start in range(0, num, batch_size):
        b = min(batch_size, num - start)
        z = torch.randn((b, *data_shape), generator=gen, device=device)
        batch_labels = conditioning.to(conditioning.rows(labels, slice(start, start + b)), device)
        out.append(denoise(z, batch_labels, gen).cpu())
        bar.update(b)
    bar.close()
    return torch.cat(out)
