"""`progdistill demo`: train, distil and evaluate end to end on Fashion-MNIST or 2-D data."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from .. import runfolder
from ..config import Config, ConfigError, load_config
from .common import add_progress_arg, at_least, check_fresh_out, start_run
from .evaluate import print_report

# The 2-D demo: a shorter version of the toy2d preset (about 5 minutes on 2 CPU cores); --quick: under a minute.
DEMO = ["train.steps=6000", "distill.start_steps=64", "distill.updates_per_round=1500",
        "distill.final_updates_per_round=3000"]
QUICK = ["train.steps=1500", "train.checkpoint_every=500", "distill.start_steps=16",
         "distill.updates_per_round=300", "distill.final_updates_per_round=600"]
# The image demo is the fashion_mnist preset (teacher ~15 min, distillation 32 -> 1 ~10 min on 2 CPU cores);
# --quick: a few-minute smoke test on 2000 images that shows the pipeline, not quality.
IMAGE_QUICK = ["train.steps=30", "train.checkpoint_every=10", "data.limit=2000", "distill.start_steps=4",
               "distill.updates_per_round=4", "distill.final_updates_per_round=4"]


def register(commands: argparse._SubParsersAction) -> None:
    """Add the demo command and its options."""
    parser = commands.add_parser(
        "demo", help="train, distil and evaluate end to end on Fashion-MNIST (~35 min on 2 CPU cores) or 2-D data",
        description="Train a small class-conditional U-Net teacher on Fashion-MNIST (about 15 minutes on 2 CPU "
                    "cores), distil it from 32 sampling steps down to 1 (about 10 minutes), and evaluate the "
                    "teacher's DDIM, DPM-Solver++(2M) and every student (a few minutes). Leaves report.json/.md, "
                    "a plot of the classifier Frechet distance against steps and one sample grid per step count "
                    "in OUT/eval. With --data ring (or checkerboard, moons, swissroll) it runs the 2-D version "
                    "(about 5 minutes). Give it more time with --scale, a GPU with --device cuda.")
    parser.add_argument("--out", required=True, help="run folder to create")
    parser.add_argument("--data", default="fashion-mnist",
                        help="fashion-mnist (default; from /usr/share/datasets/fashion-mnist, see "
                             "--set data.root=... and --set data.download=true) or a 2-D distribution: ring, "
                             "checkerboard, moons, swissroll")
    parser.add_argument("--quick", action="store_true", help="a much shorter run (a few minutes), for a smoke test")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply teacher steps and distillation updates (e.g. 4 on a GPU for better quality)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--num", type=int, help="evaluation samples per sampler and step count "
                        "(default: 500 for images, 10000 for 2-D data)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config value of the preset (repeatable)")
    parser.add_argument("--force", action="store_true", help="write into a folder that already holds a run")
    add_progress_arg(parser)
    parser.set_defaults(func=run)


def scaled(cfg: Config, scale: float) -> Config:
    """cfg with teacher steps and distillation updates multiplied by `scale` (at least 1 each)."""
    if scale == 1.0:
        return cfg
    if not (scale > 0):
        raise ConfigError(f"--scale must be > 0, got {scale}")
    train, distill = cfg.train, cfg.distill
    return replace(cfg, train=replace(train, steps=max(1, round(train.steps * scale))),
                   distill=replace(distill, updates_per_round=max(1, round(distill.updates_per_round * scale)),
                                   final_updates_per_round=max(0, round(distill.final_updates_per_round * scale)))
                   ).validate()


def demo_config(args: argparse.Namespace, images: bool) -> tuple[Config, int]:
    """The demo's config (the fashion_mnist preset, or a shortened toy2d) and its evaluation sample count."""
    if images:
        if args.data != "fashion-mnist":
            raise ConfigError(f"the demo runs on fashion-mnist or 2-D data; for {args.data} use "
                              "'progdistill train/distill/evaluate' with --config and --set data.root=...")
        overrides = IMAGE_QUICK if args.quick else []
        # Fetch Fashion-MNIST (checksums verified) only if it is neither in the system folder nor in the cache.
        cfg = load_config("fashion_mnist", overrides + ["data.download=true", f"device={json.dumps(args.device)}"]
                          + args.overrides)
        num = args.num if args.num is not None else (100 if args.quick else 500)
    else:
        overrides = [f"data.name={json.dumps(args.data)}", *DEMO] + (QUICK if args.quick else [])
        cfg = load_config("toy2d", overrides + [f"device={json.dumps(args.device)}"] + args.overrides)
        num = args.num if args.num is not None else 10_000
    return scaled(cfg, args.scale), num


def run(args: argparse.Namespace) -> None:
    """Train a teacher, distil it and evaluate every sampler and student, into a new run folder --out."""
    from ..data.images import IMAGE_DATASETS
    from ..evaluation.report import IMAGE_SAMPLERS_WITHOUT_ANCESTRAL, evaluate_run
    from ..training.rounds import distill
    from ..training.teacher import train_teacher

    at_least("--num", args.num)
    images = args.data in IMAGE_DATASETS
    cfg, num = demo_config(args, images)
    out = Path(args.out)
    check_fresh_out(out, runfolder.teacher_record(out), args.force)
    start_run(out, cfg)
    progress = not args.no_progress
    print(f"[1/3] training a {cfg.data.name} teacher for {cfg.train.steps} steps")
    stem = train_teacher(cfg, out, progress=progress)
    print(f"[2/3] distilling {cfg.distill.start_steps} -> {cfg.distill.target_steps} steps")
    distill(stem, out, cfg, progress=progress)
    print(f"[3/3] evaluating every sampler and student on {num} samples each")
    device = "cuda" if cfg.device == "cuda" or (cfg.device == "auto" and cuda_available()) else "cpu"
    extra = {"samplers": IMAGE_SAMPLERS_WITHOUT_ANCESTRAL, "device": device} if images else {}
    report = runfolder.eval_dir(out)
    rows = evaluate_run(out, report, num=num, progress=progress, **extra)
    print_report(rows)
    print(f"report, plot and samples in {report}")


def cuda_available() -> bool:
    """Whether torch sees a CUDA device."""
    import torch

    return torch.cuda.is_available()
