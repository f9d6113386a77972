"""What several commands share: the config and progress options, and checks of options and output folders.

Light on purpose: `progdistill --help` imports this, so anything heavy is imported inside a function."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import runfolder
from ..config import Config, ConfigError, dump_json, preset_names

EPILOG = "Config values come from defaults, then --config (a preset name or a TOML file), then --set overrides."


def add_config_args(parser: argparse.ArgumentParser, default: str | None = "toy2d") -> None:
    """Add --config PRESET|FILE and the repeatable --set KEY=VALUE."""
    parser.add_argument("--config", default=default, metavar="PRESET|FILE",
                        help=f"preset name or TOML file (default: "
                             f"{default or 'toy2d; distill: the checkpoint config'}; "
                             f"presets: {', '.join(preset_names())})")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config value, e.g. --set train.lr=1e-3 (repeatable)")


def add_progress_arg(parser: argparse.ArgumentParser) -> None:
    """Add --no-progress."""
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def check_fresh_out(out: Path, marker: Path, force: bool) -> None:
    """Refuse to write a run into a folder that already holds one (nothing there is touched)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a folder")
    if marker.exists() and not force:
        raise ConfigError(f"--out {out} already holds a run ({marker.name}); choose another folder or pass --force")


def start_run(out: Path, cfg: Config) -> None:
    """Create the run folder and write the config it starts with (provenance)."""
    out.mkdir(parents=True, exist_ok=True)
    runfolder.config_path(out).write_text(dump_json(cfg))


def at_least(name: str, value: int | None, low: int = 1) -> None:
    """Raise unless an integer option, when given, is >= low (0 is an error, not "the default")."""
    if value is not None and value < low:
        raise ConfigError(f"{name} must be >= {low}, got {value}" + (" (leave it out for the default)"
                                                                       if value == 0 else ""))


def int_list(text: str, name: str) -> list[int]:
    """Parse a comma-separated list of integers >= 1, naming the option when it is not one."""
    try:
        values = [int(s) for s in text.split(",")]
    except ValueError:
        raise ConfigError(f"{name} must be comma-separated integers such as 1,2,4,8, got {text!r}") from None
    if any(v < 1 for v in values):
        raise ConfigError(f"{name} values must be >= 1, got {text!r}")
    return values


def name_list(text: str) -> tuple[str, ...]:
    """Split a comma-separated list of names, stripping the blanks around each."""
    return tuple(s.strip() for s in text.split(","))


def warn_off_student(record: dict, steps: int, sampler: str = "ddim") -> None:
    """Warn when a student is used at another step count or sampler than the DDIM one it was distilled for."""
    own = record.get("sampling_steps")
    if record.get("kind") != "student" or own is None:
        return
    if record.get("sampling", {}).get("sampler") == "consistency":  # a consistency student: any step count
        if sampler not in ("consistency", "ddim"):
            print(f"progdistill: warning: this consistency student samples with --sampler consistency (or ddim), "
                  f"not {sampler}", file=sys.stderr)
        return
    if int(own) != steps and steps not in record.get("sampling", {}).get("counts", []):
        print(f"progdistill: warning: this student was distilled for {own} DDIM steps; sampling it with {steps} "
              "is outside what it was trained for (leave out --steps for its own)", file=sys.stderr)
    if sampler != "ddim":
        print(f"progdistill: warning: this student was distilled for the ddim sampler, not {sampler}",
              file=sys.stderr)
