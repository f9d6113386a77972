"""The `progdistill` command line: train, distill, sample, evaluate, demo, config."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .config import ConfigError, dump_json, load_config, preset_names

EPILOG = "Config values come from defaults, then --config (a preset name or a TOML file), then --set overrides."


def _config_args(p: argparse.ArgumentParser, default: str | None = "toy2d") -> None:
    p.add_argument("--config", default=default, metavar="PRESET|FILE",
                   help=f"preset name or TOML file (default: {default}; presets: {', '.join(preset_names())})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config value, e.g. --set train.lr=1e-3 (repeatable)")


def _progress_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _check_fresh_out(out: Path, marker: str, force: bool) -> None:
    """Refuse to write a run into a folder that already holds one (nothing there is touched)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a folder")
    if (out / marker).exists() and not force:
        raise ConfigError(f"--out {out} already holds a run ({marker}); choose another folder or pass --force")


def cmd_train(a: argparse.Namespace) -> None:
    from .training.teacher import train_teacher

    cfg = load_config(a.config, a.overrides)
    out = Path(a.out)
    _check_fresh_out(out, "teacher.json", a.force)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(dump_json(cfg))
    stem = train_teacher(cfg, out, progress=not a.no_progress)
    print(f"teacher saved: {stem}.safetensors")


def cmd_distill(a: argparse.Namespace) -> None:
    from .training.checkpoint import read_record
    from .training.rounds import distill

    record = read_record(a.from_ckpt)
    if not isinstance(record.get("config"), dict):
        raise ConfigError(f"checkpoint {a.from_ckpt} records no config")
    cfg = load_config(a.config, a.overrides, base=record["config"])
    ckpt_dir = Path(a.from_ckpt).resolve().parent
    out = Path(a.out) if a.out else (ckpt_dir.parent if record.get("kind") == "student" else ckpt_dir)
    for stem in distill(a.from_ckpt, out, cfg, progress=not a.no_progress):
        print(f"student saved: {stem}.safetensors")


def cmd_sample(a: argparse.Namespace) -> None:
    import torch

    from .build import load_denoiser, schedule_of
    from .evaluation.plots import scatter_panels
    from .evaluation.sampling import generate

    denoiser, record, cfg = load_denoiser(a.ckpt)
    steps = a.steps or record.get("sampling_steps") or cfg.distill.start_steps
    x = generate(denoiser, schedule_of(cfg), steps, a.num, tuple(record["data_shape"]), sampler=a.sampler,
                 variance=a.variance, clip=not a.no_clip, seed=a.seed, progress=not a.no_progress)
    out = Path(a.out)
    if out.suffix == ".pt":
        out.parent.mkdir(parents=True, exist_ok=True)
        torch.save(x, out)
    else:
        scatter_panels([(f"{record['kind']} {a.sampler} {steps} steps", x)], out, ncols=1)
    print(f"{a.num} samples ({a.sampler}, {steps} steps) written to {out}")


def cmd_evaluate(a: argparse.Namespace) -> None:
    from .evaluation.report import evaluate_run, markdown_table, METRIC

    steps = [int(s) for s in a.steps.split(",")] if a.steps else None
    rows = evaluate_run(a.run, a.out, steps=steps, num=a.num, seed=a.seed, ancestral=not a.no_ancestral,
                        progress=not a.no_progress)
    print(markdown_table(rows, METRIC))
    print(f"report written to {Path(a.out) if a.out else Path(a.run) / 'eval'}")


# The demo: a shorter version of the toy2d preset (about 5 minutes on 2 CPU cores); --quick: well under a minute.
DEMO = ["train.steps=6000", "distill.start_steps=64", "distill.updates_per_round=1500",
        "distill.final_updates_per_round=3000"]
QUICK = ["train.steps=1500", "train.checkpoint_every=500", "distill.start_steps=16",
         "distill.updates_per_round=300", "distill.final_updates_per_round=600"]


def cmd_demo(a: argparse.Namespace) -> None:
    from .evaluation.report import METRIC, evaluate_run, markdown_table
    from .training.rounds import distill
    from .training.teacher import train_teacher

    overrides = [f"data.name={json.dumps(a.data)}", *DEMO]
    if a.quick:
        overrides += QUICK
    cfg = load_config("toy2d", overrides + a.overrides)
    out = Path(a.out)
    _check_fresh_out(out, "teacher.json", a.force)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(dump_json(cfg))
    progress = not a.no_progress
    print(f"[1/3] training a {cfg.data.name} teacher for {cfg.train.steps} steps")
    stem = train_teacher(cfg, out, progress=progress)
    print(f"[2/3] distilling {cfg.distill.start_steps} -> {cfg.distill.target_steps} steps")
    distill(stem, out, cfg, progress=progress)
    print("[3/3] evaluating every sampler against fresh data")
    rows = evaluate_run(out, out / "eval", num=a.num, progress=progress)
    print(markdown_table(rows, METRIC))
    print(f"report, plot and samples in {out / 'eval'}")


def cmd_config(a: argparse.Namespace) -> None:
    print(dump_json(load_config(a.config, a.overrides)))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="progdistill",
        description="Progressive distillation of diffusion samplers (Salimans & Ho, ICLR 2022): train a teacher, "
                    "halve its DDIM step count round by round, and measure quality against steps.",
        epilog=EPILOG)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a teacher diffusion model (continuous time)", epilog=EPILOG)
    _config_args(p)
    p.add_argument("--out", required=True, help="run folder to create (teacher.safetensors/.json, checkpoints/)")
    p.add_argument("--force", action="store_true", help="write into a folder that already holds a run")
    _progress_arg(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("distill", help="progressively distil a teacher (or continue from a saved student)",
                       epilog="The checkpoint's own config is the base; --config/--set change its [distill] "
                              "section and device.")
    p.add_argument("--from", dest="from_ckpt", required=True, metavar="CKPT",
                   help="teacher or student checkpoint (path without suffix, or the .json/.safetensors file)")
    _config_args(p, default=None)
    p.add_argument("--out", help="run folder for students/ (default: the checkpoint's run folder)")
    _progress_arg(p)
    p.set_defaults(func=cmd_distill)

    p = sub.add_parser("sample", help="draw samples from a checkpoint")
    p.add_argument("--ckpt", required=True, help="teacher or student checkpoint")
    p.add_argument("--steps", type=int, help="sampling steps (default: the student's own; teacher: start_steps)")
    p.add_argument("--sampler", choices=["ddim", "ancestral"], default="ddim")
    p.add_argument("--variance", choices=["small", "large", "interp"], default="small",
                   help="ancestral sampler variance")
    p.add_argument("--no-clip", action="store_true", help="do not clip x_hat to [-1, 1]")
    p.add_argument("--num", type=int, default=5000, help="number of samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="a .png scatter plot, or a .pt tensor of the samples")
    _progress_arg(p)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("evaluate", help="metric vs step count for the teacher and every student of a run")
    p.add_argument("--run", required=True, help="run folder made by train/distill")
    p.add_argument("--out", help="report folder (default: RUN/eval)")
    p.add_argument("--steps", help="comma-separated teacher step counts (default: powers of two up to start)")
    p.add_argument("--num", type=int, default=10_000, help="samples per sampler and step count")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--no-ancestral", action="store_true", help="skip the teacher's ancestral sampler")
    _progress_arg(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("demo", help="train, distil 64 -> 1 steps and evaluate on 2-D data (~5 min on 2 CPU cores)",
                       description="Train a 2-D teacher, distil it from 64 steps down to 1, evaluate every sampler "
                                   "against fresh data; leaves report.json/.md, a plot and sample panels in OUT/eval.")
    p.add_argument("--out", required=True, help="run folder to create")
    p.add_argument("--data", default="ring", help="2-D distribution: ring, checkerboard, moons, swissroll")
    p.add_argument("--quick", action="store_true", help="a much shorter run (about a minute), for a smoke test")
    p.add_argument("--num", type=int, default=10_000, help="evaluation samples per sampler and step count")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config value of the toy2d preset (repeatable)")
    p.add_argument("--force", action="store_true", help="write into a folder that already holds a run")
    _progress_arg(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("config", help="print the resolved config as JSON")
    _config_args(p)
    p.set_defaults(func=cmd_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .training.checkpoint import CheckpointError
    from .training.loop import NonFiniteLossError

    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ConfigError, CheckpointError, NonFiniteLossError, ValueError, FileNotFoundError) as e:
        print(f"progdistill: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("progdistill: interrupted; checkpoints written so far are intact", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
