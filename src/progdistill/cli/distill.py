"""`progdistill distill`: progressive distillation of a teacher (plain or guided), or its continuation."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import runfolder
from ..config import ConfigError, load_config
from ..config.choices import DISTILL_METHODS
from .common import add_config_args, add_progress_arg


def register(commands: argparse._SubParsersAction) -> None:
    """Add the distill command and its options."""
    parser = commands.add_parser(
        "distill", help="progressively distil a teacher (or continue from a saved student)",
        epilog="The checkpoint's own config is the base; --config/--set change its [distill] (with --guided also "
               "[guided]) and [perf] sections, device and mixed_precision.")
    parser.add_argument("--from", dest="from_ckpt", metavar="CKPT",
                        help="teacher or student checkpoint (path without suffix, or the .json/.safetensors file)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the distillation in --out from its newest mid-round checkpoint (or last round)")
    add_config_args(parser, default=None)
    parser.add_argument("--method", choices=DISTILL_METHODS,
                        help="pd: progressive distillation (the default), cd: consistency distillation (one student "
                             "for every step count), tract: TRACT's few long phases, dmd: DMD2 (a distill.target_steps-step "
                             "generator, fake score and discriminator; from a teacher or any student) (= --set "
                             "distill.method=...; pd with --set distill.adversarial_weight=W is adversarial pd; "
                             "docs/methods.md)")
    parser.add_argument("--out", help="run folder for students/ (default: the checkpoint's run folder; with --guided, "
                        "RUN/guided; with --method cd, tract or dmd, RUN/cd, RUN/tract or RUN/dmd)")
    group = parser.add_argument_group("guided distillation (Meng et al. 2023; docs/guided.md)")
    group.add_argument("--guided", action="store_true",
                       help="from a teacher trained with label dropout: stage 1 trains a student conditioned on the "
                            "guidance weight w (OUT/stage1), stage 2 distils it round by round with w as an input")
    group.add_argument("--w-min", type=float, metavar="W",
                       help="lowest w trained for (= --set guided.w_min; default 0)")
    group.add_argument("--w-max", type=float, metavar="W",
                       help="highest w trained for (= --set guided.w_max; default 4); diffusers' guidance_scale is "
                            "1 + w")
    group.add_argument("--w-margin", type=float, metavar="M",
                       help="train on w in [w_min - M, w_max] so that w_min is not the edge of the fitted range; "
                            "sampling stays in [w_min, w_max] (= --set guided.w_margin; default 0, the paper's; the "
                            "fashion_mnist preset: 1)")
    group.add_argument("--stage1-updates", type=int, metavar="N",
                       help="stage-1 optimizer steps (= --set guided.stage1_updates)")
    add_progress_arg(parser)
    parser.set_defaults(func=run)


def guided_overrides(args: argparse.Namespace) -> list[str]:
    """--w-min/--w-max/--w-margin/--stage1-updates as [guided] overrides; they need --guided."""
    given = {"w_min": args.w_min, "w_max": args.w_max, "w_margin": args.w_margin,
             "stage1_updates": args.stage1_updates}
    given = {key: value for key, value in given.items() if value is not None}
    if given and not args.guided:
        names = ", ".join("--" + key.replace("_", "-") for key in given)
        raise ConfigError(f"{names} set up guided distillation: add --guided")
    return [f"guided.{key}={value!r}" for key, value in given.items()]


def run(args: argparse.Namespace) -> None:
    """Distil --from into its run folder (or --out), or continue the distillation in --out; list the students."""
    stems = resume(args) if args.resume else start(args)
    for stem in stems:
        print(f"student saved: {stem}.safetensors")


def resume(args: argparse.Namespace) -> list[Path]:
    """Continue the plain or guided distillation in --out with its saved settings."""
    from ..training.guided import distill_guided
    from ..training.rounds import distill

    if not args.out:
        raise ConfigError("--resume needs --out RUN (the run folder whose distillation to continue)")
    if args.config or args.overrides or guided_overrides(args):
        raise ConfigError("--resume continues with the saved settings; drop --config/--set/--w-min/--w-max/"
                          "--stage1-updates")
    out = Path(args.out)
    progress = not args.no_progress
    if args.guided or runfolder.is_guided_run(out):
        return distill_guided(args.from_ckpt, out, None, progress=progress, resume=True)
    return distill(args.from_ckpt, out, None, progress=progress, resume=True)


def start(args: argparse.Namespace) -> list[Path]:
    """Distil --from with its own config changed by --config/--set and the guided options."""
    from ..checkpoint import read_record
    from ..config import config_from_record
    from ..training.guided import distill_guided
    from ..training.methods import method_of
    from ..training.rounds import distill

    if not args.from_ckpt:
        raise ConfigError("give --from CKPT (a teacher or student checkpoint), or --resume --out RUN")
    record = read_record(args.from_ckpt)
    if not isinstance(record.get("config"), dict):
        raise ConfigError(f"checkpoint {args.from_ckpt} records no config")
    # The checkpoint's config is provenance, read leniently (fields this version does not know are skipped).
    chosen = [f"distill.method={args.method!r}"] if args.method else []
    cfg = load_config(args.config, args.overrides + guided_overrides(args) + chosen,
                      base=config_from_record(record["config"])[0].to_dict())
    progress = not args.no_progress
    method = method_of(cfg)
    if args.guided and not method.guided:
        raise ConfigError(f"--guided distils with progressive distillation; distill.method = "
                          f"{cfg.distill.method!r} takes unguided and class-conditional teachers (docs/methods.md)")
    if args.guided:
        out = Path(args.out) if args.out else runfolder.default_guided_dir(args.from_ckpt)
        stems = distill_guided(args.from_ckpt, out, cfg, progress=progress)
        print(f"guided stage-1 model saved: {runfolder.stage1_stem(out)}.safetensors")
        return stems
    out = Path(args.out) if args.out else runfolder.run_of_checkpoint(args.from_ckpt, record.get("kind"))
    if not args.out and method.own_folder:  # beside, not over, the run's progressive-distillation students
        out = out / method.name
    return distill(args.from_ckpt, out, cfg, progress=progress)
