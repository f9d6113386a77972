"""`progdistill export-diffusers`: write a checkpoint as a diffusers pipeline folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import at_least, warn_off_student


def register(commands: argparse._SubParsersAction) -> None:
    """Add the export-diffusers command and its options."""
    parser = commands.add_parser(
        "export-diffusers", help="write a checkpoint as a diffusers pipeline folder (UNet2DModel + DDIMScheduler)",
        description="Write a standard diffusers pipeline folder whose DDIM sampler takes exactly the steps of "
                    "`progdistill sample` (same noise, same images to float rounding). Unconditional eps/x/v "
                    "models load with DDIMPipeline.from_pretrained(OUT); class-conditional and 'both' models ship "
                    "their pipeline/component code and load with DiffusionPipeline.from_pretrained(OUT, "
                    "trust_remote_code=True). Latent text-to-image models (imported Stable Diffusion folders) load "
                    "with the stock StableDiffusionPipeline.from_pretrained(OUT): pipe(prompt, num_inference_steps="
                    "N, guidance_scale=1 + w) takes exactly the student's steps, one U-Net call per step for a "
                    "guided student. SD3 models load with the stock StableDiffusion3Pipeline: pipe(prompt, "
                    "num_inference_steps=N, sigmas=[...]) takes the student's steps (the sigmas are printed); a "
                    "guided student is written at one guidance weight (--w) and runs with guidance_scale=1. FLUX "
                    "models load with the stock FluxPipeline: pipe(prompt, num_inference_steps=N, guidance_scale=1 + w) takes the "
                    "student's steps.")
    parser.add_argument("--ckpt", required=True, help="student or teacher checkpoint (image model)")
    parser.add_argument("--out", required=True, help="new folder for the pipeline")
    parser.add_argument("--steps", type=int, help="sampling steps the pipeline is set up for (default: the student's)")
    parser.add_argument("--train-timesteps", type=int, help="the scheduler's num_train_timesteps, a multiple of the "
                        "steps (default: the multiple nearest 1024; imported models keep their own)")
    parser.add_argument("--no-clip", action="store_true", help="set clip_sample=False (default: the config's)")
    parser.add_argument("--components", metavar="DIR", help="latent models: the Stable Diffusion folder holding "
                        "the VAE, tokenizer and text encoder, if it moved since the import (content hashes checked)")
    parser.add_argument("--w", type=float, help="guided SD3 students: the guidance weight the export is written at "
                        "(default: the middle of the student's range)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    """Export --ckpt to --out and print how to load and call the pipeline."""
    from ..build import read_model_record
    from ..interop.diffusers_io import export_diffusers
    from ..config import ConfigError
    from ..interop.flux import export_flux
    from ..interop.sd3 import export_sd3
    from ..interop.stable_diffusion import export_stable_diffusion
    from ..nets.families import FAMILIES

    at_least("--steps", args.steps)
    at_least("--train-timesteps", args.train_timesteps)
    record, spec = read_model_record(args.ckpt)
    if args.steps is not None:
        warn_off_student(record, args.steps)
    if FAMILIES[spec.kind].export == "FluxPipeline":
        if args.w is not None:
            raise ConfigError("--w is for guided SD3 students; a FLUX student takes w as the pipeline's "
                              "guidance_scale = 1 + w")
        summary = export_flux(args.ckpt, Path(args.out), steps=args.steps, components_folder=args.components)
        print(f"FluxPipeline written to {args.out}: {summary['steps']} steps (the pipeline's own grid at "
              f"{summary['height']}x{summary['width']}), one transformer call per step\n"
              f"  pipe = FluxPipeline.from_pretrained({args.out!r})\n  image = {summary['call']}.images[0]")
        return
    if FAMILIES[spec.kind].export == "StableDiffusion3Pipeline":
        summary = export_sd3(args.ckpt, Path(args.out), steps=args.steps, w=args.w, components_folder=args.components)
        print(f"StableDiffusion3Pipeline written to {args.out}: {summary['steps']} steps on sigmas "
              f"{summary['sigmas']}, one transformer call per step\n"
              f"  pipe = StableDiffusion3Pipeline.from_pretrained({args.out!r})\n  image = {summary['call']}.images[0]")
        return
    if args.w is not None:
        raise ConfigError("--w is for guided SD3 students; other guided students take w in the pipeline's call")
    if spec.text_conditioned:
        summary = export_stable_diffusion(args.ckpt, Path(args.out), steps=args.steps,
                                          components_folder=args.components)
        name = summary.get("pipeline", "StableDiffusionPipeline")
        print(f"{name} written to {args.out}: {summary['steps']} steps, prediction_type "
              f"{summary['prediction_type']}, {summary['unet_calls_per_step']} U-Net call(s) per step\n"
              f"  pipe = {name}.from_pretrained({args.out!r})\n  image = {summary['call']}.images[0]")
        return
    summary = export_diffusers(args.ckpt, Path(args.out), steps=args.steps, train_timesteps=args.train_timesteps,
                               clip=False if args.no_clip else None)
    print(f"diffusers pipeline written to {args.out}: {summary['steps']} steps, prediction_type "
          f"{summary['prediction_type']}, {summary['num_train_timesteps']} training timesteps\n"
          f"  pipe = {summary['load'].replace('folder', repr(args.out))}\n"
          f"  images = {summary['call']}.images")
