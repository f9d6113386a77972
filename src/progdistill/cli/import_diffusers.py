"""`progdistill import-diffusers`: make a diffusers U-Net and scheduler folder a progdistill teacher."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import runfolder
from ..config import load_config, preset_names
from .common import check_fresh_out


def register(commands: argparse._SubParsersAction) -> None:
    """Add the import-diffusers command and its options."""
    parser = commands.add_parser(
        "import-diffusers", help="make a diffusers folder (pixel UNet2DModel, or Stable Diffusion layout) a teacher",
        description="Read a diffusers pipeline folder and write OUT/teacher, a teacher on the model's own discrete "
                    "schedule. Pixel models: unet/ with a UNet2DModel, scheduler/ with a DDPMScheduler or "
                    "DDIMScheduler (epsilon, v_prediction or sample; linear, scaled_linear or squaredcos_cap_v2 "
                    "betas); --config/--set give the data (its shape must match the model) and [distill]. Latent "
                    "text-to-image models (unet/ with a UNet2DConditionModel, vae/, text_encoder/, tokenizer/, "
                    "scheduler/): --captions gives your captioned images (a metadata.jsonl with file_name and a "
                    "caption column), encoded once into the latent cache here; the VAE, tokenizer and text encoder "
                    "stay in the folder, named in the checkpoint with their content hashes.",
        epilog="Then: progdistill distill --from OUT/teacher [--guided --out OUT]; for Stable Diffusion folders "
               "start from --config stable_diffusion (docs/latent.md)")
    parser.add_argument("--model", required=True, help="the diffusers folder (holds unet/ and scheduler/)")
    parser.add_argument("--config", metavar="PRESET|FILE",
                        help=f"preset or TOML file for the data and [distill] ({', '.join(preset_names())}; default: "
                             "stable_diffusion for a Stable Diffusion folder, required otherwise)")
    parser.add_argument("--captions", metavar="DIR",
                        help="Stable Diffusion folders: the captioned images to distil on (images and a "
                             "metadata.jsonl; the caption column is data.caption_column, default text)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config value, e.g. --set data.root=/data/cifar-10-batches-py (repeatable)")
    parser.add_argument("--out", required=True, help="run folder to create")
    parser.add_argument("--force", action="store_true", help="write into a folder that already holds a run")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    """Import the diffusers folder --model as the teacher of a new run folder --out."""
    from ..config import ConfigError
    from ..interop.diffusers_io import import_diffusers
    from ..interop.stable_diffusion import import_stable_diffusion, is_stable_diffusion_folder

    out = Path(args.out)
    check_fresh_out(out, runfolder.teacher_record(out), args.force)
    latent = is_stable_diffusion_folder(args.model)
    if args.config is None and not latent:
        raise ConfigError("--config is required for a pixel-space model (the data it is distilled on)")
    if args.captions and not latent:
        raise ConfigError(f"--captions is for Stable Diffusion folders; {args.model}/unet holds no "
                          "UNet2DConditionModel")
    cfg = load_config(args.config or "stable_diffusion", args.overrides)
    stem = (import_stable_diffusion(args.model, out, cfg, args.captions) if latent
            else import_diffusers(args.model, out, cfg))
    print(f"teacher saved: {stem}.safetensors\n  distil it: progdistill distill --from {stem} "
          "--set distill.start_steps=N")
