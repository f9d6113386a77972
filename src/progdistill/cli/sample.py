"""`progdistill sample`: draw samples from a checkpoint into an image grid, a scatter plot or a .pt file."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import ConfigError
from ..config.choices import VARIANCES
from ..diffusion.sampler_names import SAMPLER_DESCRIPTIONS
from .common import add_progress_arg, at_least, warn_off_student

if TYPE_CHECKING:
    from torch import Tensor

    from ..nets.spec import ModelSpec


def register(commands: argparse._SubParsersAction) -> None:
    """Add the sample command and its options."""
    parser = commands.add_parser("sample", help="draw samples from a checkpoint")
    parser.add_argument("--ckpt", required=True, help="teacher or student checkpoint")
    parser.add_argument("--steps", type=int,
                        help="sampling steps, >= 1 (default: the checkpoint's: a student's own, which is the only "
                             "count a student is trained for; a teacher's distill.start_steps)")
    parser.add_argument("--sampler", choices=list(SAMPLER_DESCRIPTIONS), default=None,
                        help="default: the checkpoint's (ddim; consistency for consistency-distilled students); "
                             + "; ".join(f"{name}: {text}" for name, text in SAMPLER_DESCRIPTIONS.items()))
    parser.add_argument("--variance", choices=list(VARIANCES),
                        help="ancestral sampler variance (default: the checkpoint's)")
    parser.add_argument("--no-clip", action="store_true",
                        help="do not clip x_hat to [-1, 1] (default: as the checkpoint records)")
    parser.add_argument("--num", type=int, default=5000, help="number of samples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--guidance", type=float, metavar="W",
                        help="classifier-free guidance weight w (diffusers' guidance_scale = 1 + w; 0: the conditional "
                             "model): a label-dropout teacher costs 2 network evaluations per step, a guided student 1 "
                             "(and needs a w within its trained range)")
    parser.add_argument("--label", type=int, help="class label for every sample (class-conditional models; "
                        "default: all classes in turn)")
    parser.add_argument("--prompt", action="append", default=[], metavar="TEXT",
                        help="text-to-image models: a prompt (repeatable; samples take them in turn; default: the "
                             "empty caption, i.e. unconditional)")
    parser.add_argument("--components", metavar="DIR", help="text-to-image models: the Stable Diffusion folder with "
                        "the VAE, tokenizer and text encoder, if it moved since the import (hashes checked)")
    parser.add_argument("--device", default="cpu", help="torch device for sampling, e.g. cpu or cuda")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the network (CUDA graphs on cuda); pays off for many samples or steps, "
                             "and falls back to eager with a warning when compiling fails")
    parser.add_argument("--out", required=True,
                        help="a .png (image grid, or scatter plot for 2-D data), or a .pt file {samples, labels}")
    add_progress_arg(parser)
    parser.set_defaults(func=run)


def sample_labels(args: argparse.Namespace, num_classes: int) -> Tensor:
    """The class label of every sample: --label for all, or all classes in turn."""
    import torch

    from ..evaluation.images import balanced_labels

    if args.label is None:
        return balanced_labels(args.num, num_classes)
    if not 0 <= args.label < max(num_classes, 1) or num_classes == 0:
        raise ConfigError(f"--label {args.label}: this model has {num_classes} classes"
                          + (" (it is unconditional)" if num_classes == 0 else f"; use 0..{num_classes - 1}"))
    return torch.full((args.num,), args.label)


def prompt_labels(args: argparse.Namespace, spec: ModelSpec) -> Tensor | None:
    """The condition of every sample's prompt (--prompt in turn; None: the empty caption): text-encoder hidden
    states, or the layout's mapping of them (SD3: hidden states and pooled embeddings)."""
    from .. import conditioning
    from ..interop.stable_diffusion import prompt_embeddings

    if not args.prompt:
        return None
    embeddings = prompt_embeddings(spec, args.prompt, args.components)
    return conditioning.rows(embeddings, [i % len(args.prompt) for i in range(args.num)])


def run(args: argparse.Namespace) -> None:
    """Sample --num points or images from --ckpt and write them to --out."""
    import torch

    from ..build import load_checkpoint, schedule_of
    from ..guidance import check_guidance
    from ..sampling import generate

    at_least("--num", args.num)
    at_least("--steps", args.steps)
    loaded = load_checkpoint(args.ckpt, args.device)
    steps = args.steps if args.steps is not None else int(loaded.sampling["steps"])
    args.sampler = args.sampler or loaded.sampling.get("sampler", "ddim")
    check_guidance(loaded.spec, args.guidance)  # before any sampling: what the model lacks, or its trained w range
    # A guided student's stochastic sampler is one of its own (Meng et al.), no warning for it.
    own_sampler = args.sampler == "stochastic" and loaded.spec.guidance
    warn_off_student(loaded.record, steps, "ddim" if own_sampler else args.sampler)
    text = loaded.spec.text_conditioned
    if args.prompt and not text:
        raise ConfigError("--prompt is for text-to-image models (imported Stable Diffusion folders); this model "
                          + (f"has {loaded.spec.num_classes} classes: use --label" if loaded.spec.num_classes
                             else "is unconditional"))
    if text and args.label is not None:
        raise ConfigError("--label is for class-conditional models; this is a text-to-image model: use --prompt")
    labels = prompt_labels(args, loaded.spec) if text else sample_labels(args, loaded.spec.num_classes)
    samples = generate(loaded.denoiser, schedule_of(loaded.spec), steps, args.num, loaded.spec.data_shape,
                       sampler=args.sampler, variance=args.variance or loaded.sampling["variance"],
                       clip=loaded.sampling["clip"] and not args.no_clip, seed=args.seed, labels=labels,
                       device=args.device, progress=not args.no_progress, guidance=args.guidance,
                       compile=args.compile)
    weight_in_title = f" w={args.guidance:g}" if args.guidance is not None else ""
    title = f"{loaded.record['kind']} {args.sampler} {steps} steps{weight_in_title}"
    out = Path(args.out)
    if text:  # latents through the model's own VAE (hash-checked), as the stock pipeline decodes them
        from ..data.components import load_components

        vae = load_components(loaded.spec.components, need=("vae",), folder=args.components)
        samples = torch.cat([vae.decode(samples[i : i + 64]) for i in range(0, len(samples), 64)])
        labels = None
    write_samples(samples, labels, out, title, loaded.spec)
    weight_note = f", guidance w = {args.guidance:g}" if args.guidance is not None else ""
    print(f"{args.num} samples ({args.sampler}, {steps} steps{weight_note}) written to {out}")


def write_samples(samples: Tensor, labels: Tensor, out: Path, title: str, spec: ModelSpec) -> None:
    """Write samples as a .pt file {samples, labels}, an image grid (a row per class) or a 2-D scatter plot."""
    import torch

    from ..evaluation.images import save_grid
    from ..evaluation.plots import scatter_panels

    num, num_classes = len(samples), spec.num_classes
    if out.suffix == ".pt":
        out.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"samples": samples, "labels": labels}, out)
    elif samples.ndim == 4:
        ncols = num_classes if num_classes and num >= num_classes else min(num, 10)
        save_grid([(title if i == 0 else "", samples[i : i + ncols]) for i in range(0, num, ncols)], out, ncols)
    else:
        scatter_panels([(title, samples)], out, ncols=1)
