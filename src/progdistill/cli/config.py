"""`progdistill config`: print the resolved config as JSON."""

from __future__ import annotations

import argparse

from ..config import dump_json, load_config
from .common import add_config_args


def register(commands: argparse._SubParsersAction) -> None:
    """Add the config command and its options."""
    parser = commands.add_parser("config", help="print the resolved config as JSON")
    add_config_args(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    """Print the config --config and --set resolve to."""
    print(dump_json(load_config(args.config, args.overrides)))
