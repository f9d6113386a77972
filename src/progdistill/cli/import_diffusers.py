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
        "import-diffusers", help="make a diffusers UNet2DModel + DDPM/DDIM scheduler folder a progdistill teacher",
        description="Read a diffusers pipeline folder (unet/ with a UNet2DModel, scheduler/ with a DDPMScheduler "
                    "or DDIMScheduler: epsilon, v_prediction or sample; linear, scaled_linear or squaredcos_cap_v2 "
                    "betas) and write OUT/teacher, a teacher on the model's own discrete schedule. --config/--set "
                    "give the data it is distilled on (its shape must match the model) and the [distill] settings.",
        epilog="Then: progdistill distill --from OUT/teacher --set distill.start_steps=N")
    parser.add_argument("--model", required=True, help="the diffusers folder (holds unet/ and scheduler/)")
    parser.add_argument("--config", required=True, metavar="PRESET|FILE",
                        help=f"preset or TOML file for the data and [distill] ({', '.join(preset_names())})")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config value, e.g. --set data.root=/data/cifar-10-batches-py (repeatable)")
    parser.add_argument("--out", required=True, help="run folder to create")
    parser.add_argument("--force", action="store_true", help="write into a folder that already holds a run")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    """Import the diffusers folder --model as the teacher of a new run folder --out."""
    from ..interop.diffusers_io import import_diffusers

    out = Path(args.out)
    check_fresh_out(out, runfolder.teacher_record(out), args.force)
    cfg = load_config(args.config, args.overrides)
    stem = import_diffusers(args.model, out, cfg)
    print(f"teacher saved: {stem}.safetensors\n  distil it: progdistill distill --from {stem} "
          "--set distill.start_steps=N")
