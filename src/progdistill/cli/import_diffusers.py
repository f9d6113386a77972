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
                    "stay in the folder, named in the checkpoint with their content hashes. SD3 folders "
                    "(transformer/ with an SD3Transformer2DModel, three text encoders and tokenizers, vae/, "
                    "scheduler/ with a FlowMatchEulerDiscreteScheduler) are imported the same way, on the flow "
                    "schedule with the scheduler's shift (docs/flow.md). FLUX folders (transformer/ with a "
                    "FluxTransformer2DModel, CLIP text_encoder/, T5 text_encoder_2/, their tokenizers, vae/, "
                    "scheduler/) too, at the resolution --set data.image_size=N (FLUX's shift depends on it); a "
                    "transformer with guidance_embeds (FLUX.1-dev) is w-conditioned, w in [guided.w_min, "
                    "guided.w_max].",
        epilog="Then: progdistill distill --from OUT/teacher [--guided --out OUT]; for Stable Diffusion folders "
               "start from --config stable_diffusion (docs/latent.md)")
    parser.add_argument("--model", required=True, help="the diffusers folder (holds unet/ or transformer/, and "
                        "scheduler/)")
    parser.add_argument("--config", metavar="PRESET|FILE",
                        help=f"preset or TOML file for the data and [distill] ({', '.join(preset_names())}; default: "
                             "stable_diffusion for a Stable Diffusion, SD3 or FLUX folder, required otherwise)")
    parser.add_argument("--captions", metavar="DIR",
                        help="Stable Diffusion, SD3 and FLUX folders: the captioned images to distil on (images and a "
                             "metadata.jsonl; the caption column is data.caption_column, default text)")
    parser.add_argument("--max-sequence-length", type=int, metavar="N",
                        help="SD3 and FLUX folders: the T5 prompt length, the pipeline's max_sequence_length "
                             "(default 256 for SD3, 512 for FLUX, as there); recorded with the model and given in the "
                             "export's call")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config value, e.g. --set data.root=/data/cifar-10-batches-py (repeatable)")
    parser.add_argument("--out", required=True, help="run folder to create")
    parser.add_argument("--force", action="store_true", help="write into a folder that already holds a run")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    """Import the diffusers folder --model as the teacher of a new run folder --out."""
    from ..config import ConfigError
    from ..interop.diffusers_io import import_diffusers
    from ..interop.flux import import_flux, is_flux_folder
    from ..interop.folder_checks import check_import_layout
    from ..interop.sd3 import import_sd3, is_sd3_folder
    from ..interop.stable_diffusion import import_stable_diffusion, is_stable_diffusion_folder

    out = Path(args.out)
    check_fresh_out(out, runfolder.teacher_record(out), args.force)
    check_import_layout(args.model)
    sd3, flux = is_sd3_folder(args.model), is_flux_folder(args.model)
    latent = sd3 or flux or is_stable_diffusion_folder(args.model)
    if args.max_sequence_length is not None and not (sd3 or flux):
        raise ConfigError(f"--max-sequence-length is for SD3 and FLUX folders; {args.model}/transformer holds "
                          "neither an SD3Transformer2DModel nor a FluxTransformer2DModel")
    if args.config is None and not latent:
        raise ConfigError("--config is required for a pixel-space model (the data it is distilled on)")
    if args.captions and not latent:
        raise ConfigError(f"--captions is for Stable Diffusion and SD3 folders; {args.model} holds neither a "
                          "UNet2DConditionModel (unet/) nor an SD3Transformer2DModel (transformer/)")
    cfg = load_config(args.config or "stable_diffusion", args.overrides)
    if flux:
        stem = import_flux(args.model, out, cfg, args.captions, args.max_sequence_length)
    elif sd3:
        stem = import_sd3(args.model, out, cfg, args.captions, args.max_sequence_length)
    elif latent:
        stem = import_stable_diffusion(args.model, out, cfg, args.captions)
    else:
        stem = import_diffusers(args.model, out, cfg)
    print(f"teacher saved: {stem}.safetensors\n  distil it: progdistill distill --from {stem} "
          "--set distill.start_steps=N")
