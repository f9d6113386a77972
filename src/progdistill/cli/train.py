"""`progdistill train`: train a teacher, or continue an unfinished teacher run."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import runfolder
from ..config import ConfigError, load_config
from .common import EPILOG, add_config_args, add_progress_arg, check_fresh_out, start_run


def register(commands: argparse._SubParsersAction) -> None:
    """Add the train command and its options."""
    parser = commands.add_parser("train", help="train a teacher diffusion model (continuous time)", epilog=EPILOG)
    add_config_args(parser, default=None)
    parser.add_argument("--resume", action="store_true",
                        help="continue the unfinished run in --out from its newest checkpoint, exactly")
    parser.add_argument("--out", required=True, help="run folder to create (teacher.safetensors/.json, checkpoints/)")
    parser.add_argument("--force", action="store_true", help="write into a folder that already holds a run")
    parser.add_argument("--label-dropout", type=float, metavar="P",
                        help="classifier-free guidance: replace each label by the null class with probability P, so "
                             "the teacher also learns the unconditional model (= --set train.label_dropout=P; e.g. "
                             "0.1)")
    add_progress_arg(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    """Train a teacher into --out (or continue the unfinished one there) and say where it was saved."""
    from ..training.teacher import train_teacher

    out = Path(args.out)
    if args.resume:
        if args.config or args.overrides or args.label_dropout is not None:
            raise ConfigError("--resume continues with the config saved in the run's checkpoint; drop "
                              "--config/--set/--label-dropout")
        if runfolder.has_teacher(out):  # a restarted job's command finds its work done: not an error
            print(f"progdistill: {out} already holds a finished teacher ({runfolder.teacher_record(out).name}); "
                  "nothing left to resume")
            print(f"teacher saved: {runfolder.teacher_stem(out)}.safetensors")
            return
        stem = train_teacher(None, out, progress=not args.no_progress, resume=True)
    else:
        dropout = ([f"train.label_dropout={float(args.label_dropout)!r}"] if args.label_dropout is not None
                   else [])
        cfg = load_config(args.config or "toy2d", args.overrides + dropout)
        check_fresh_out(out, runfolder.teacher_record(out), args.force)
        if runfolder.has_teacher_checkpoints(out) and not args.force:
            raise ConfigError(f"--out {out} holds checkpoints of an unfinished run: continue it with --resume, or "
                              "pass --force to start over (its checkpoints will be replaced as the new run goes)")
        start_run(out, cfg)
        stem = train_teacher(cfg, out, progress=not args.no_progress)
    print(f"teacher saved: {stem}.safetensors")
