"""The command line as a package: one module per command, each with its own options and `run`; `--help` loads
no model, training or evaluation code; run-folder paths come from `runfolder` only; `python -m progdistill.cli`
(how torchrun and accelerate launch start it) works."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from progdistill import cli, runfolder
from progdistill.cli import COMMANDS, build_parser

CLI_SOURCES = sorted((Path(cli.__file__).parent).glob("*.py"))
# What `progdistill --help` and `progdistill COMMAND --help` must not import (torch itself still comes in through
# the sampler registry that `sample --sampler` lists).
HEAVY = ("torch", "numpy", "diffusers", "accelerate", "safetensors", "progdistill.nets", "progdistill.denoiser", "progdistill.build",
         "progdistill.checkpoint", "progdistill.sampling", "progdistill.training", "progdistill.evaluation",
         "progdistill.interop")


def _subparsers() -> dict:
    return build_parser()._subparsers._group_actions[0].choices


def test_each_command_is_a_module_with_its_own_run():
    commands = _subparsers()
    assert list(commands) == ["train", "distill", "sample", "evaluate", "demo", "export-diffusers",
                              "import-diffusers", "config"]
    for module, (name, parser) in zip(COMMANDS, commands.items()):
        assert module.__name__ == "progdistill.cli." + name.replace("-", "_")
        assert parser.get_default("func") is module.run


def test_help_imports_no_model_training_or_evaluation_code():
    script = ("import json, sys\nfrom progdistill.cli import build_parser\nparser = build_parser()\n"
              "parser.format_help()\n"
              "for sub in parser._subparsers._group_actions[0].choices.values():\n    sub.format_help()\n"
              "print(json.dumps(sorted(sys.modules)))")
    loaded = json.loads(subprocess.run([sys.executable, "-c", script], check=True, capture_output=True,
                                       text=True, timeout=300).stdout)
    # The config checks read the network-family registry, which (like the nets package's lazy __init__) imports
    # no torch: those two are the light part of progdistill.nets.
    light = {"progdistill.nets", "progdistill.nets.families"}
    assert [m for m in loaded if any(m == h or m.startswith(h + ".") for h in HEAVY) and m not in light] == []


def test_python_dash_m_runs_the_command(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "progdistill.cli", "config", "--set", "train.steps=7"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and json.loads(proc.stdout)["train"]["steps"] == 7
    proc = subprocess.run([sys.executable, "-m", "progdistill.cli", "config", "--set", "nope=1"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.splitlines()[-1].startswith("progdistill: error: ")


@pytest.mark.parametrize("source", CLI_SOURCES, ids=lambda p: p.name)
def test_commands_build_no_run_folder_paths_themselves(source):
    """No `path / "name"`, `.glob("...")`, `.with_suffix(...)` or `.joinpath(...)` in a command: ask runfolder."""
    spelled = []
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) and any(
                isinstance(side, (ast.Constant, ast.JoinedStr)) for side in (node.left, node.right)):
            spelled.append(ast.unparse(node))
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("glob", "rglob", "with_suffix", "with_name", "joinpath")):
            spelled.append(ast.unparse(node))
    assert spelled == []


def test_run_folder_of_a_checkpoint(tmp_path):
    run = tmp_path / "run"
    assert runfolder.run_of_checkpoint(runfolder.teacher_stem(run), "teacher") == run.resolve()
    assert runfolder.run_of_checkpoint(runfolder.student_stem(run, 4), "student") == run.resolve()
    assert runfolder.default_guided_dir(runfolder.teacher_stem(run)) == run.resolve() / "guided"
    assert not runfolder.has_teacher_checkpoints(run)
    checkpoint = runfolder.teacher_checkpoint(run, 10).with_suffix(".json")
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_text("{}")
    assert runfolder.has_teacher_checkpoints(run) and not runfolder.has_teacher(run)
    runfolder.teacher_record(run).write_text("{}")
    assert runfolder.has_teacher(run)
