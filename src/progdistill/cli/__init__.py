"""The `progdistill` command line: train, distill, sample, evaluate, demo, export-diffusers, import-diffusers,
config. One module per command registers its options and holds its `run`; heavy imports wait inside `run`, so
that `--help` starts quickly."""

from __future__ import annotations

import argparse
import sys

from ..config import ConfigError
from . import config, demo, distill, evaluate, export_diffusers, import_diffusers, sample, train
from .common import EPILOG

__all__ = ["build_parser", "main"]

COMMANDS = (train, distill, sample, evaluate, demo, export_diffusers, import_diffusers, config)


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command, each sub-parser set up by its own module."""
    parser = argparse.ArgumentParser(
        prog="progdistill",
        description="Progressive distillation of diffusion samplers (Salimans & Ho, ICLR 2022): train a teacher, "
                    "halve its DDIM step count round by round, and measure quality against steps.",
        epilog=EPILOG)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; a user error prints `progdistill: error: ...` and returns 2, an interrupt 130."""
    args = build_parser().parse_args(argv)
    # Imported after parsing, so that --help loads no checkpoint or training code.
    from ..checkpoint import CheckpointError
    from ..training.loop import NonFiniteLossError

    try:
        args.func(args)
    except (ConfigError, CheckpointError, NonFiniteLossError, ValueError, FileNotFoundError) as error:
        print(f"progdistill: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("progdistill: interrupted; checkpoints written so far are intact", file=sys.stderr)
        return 130
    return 0
