"""Crash safety: SIGKILL a teacher run and a distillation run mid-round, resume, and end with bitwise the same
weights as an uninterrupted run; interrupted writes, damaged checkpoints and non-finite losses lose nothing."""

import json
import os
import subprocess
import sys
from pathlib import Path

from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from progdistill.cli import main
from kill_at import kill_after
from progdistill.config import ConfigError, load_config
from progdistill import checkpoint as ckpt_mod
from progdistill.checkpoint import CheckpointError, load_tensors, save_checkpoint
from progdistill.training.loop import NonFiniteLossError
from progdistill.training.resume import latest_loadable
from progdistill.training.teacher import train_teacher

# A 2-D run killed part-way (at a checkpoint it stops at itself); one thread, so every run does identical float ops.
TEACHER = ["model.hidden=64", "model.depth=2", "model.emb_dim=32", "data.size=4000", "train.batch_size=128",
           "train.steps=400", "train.checkpoint_every=100", "train.warmup=50", 'train.lr_decay="cosine"',
           "train.keep_checkpoints=2"]
DISTILL = ["distill.start_steps=8", "distill.batch_size=128", "distill.updates_per_round=100",
           "distill.final_updates_per_round=150", "distill.checkpoint_every=25"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from progdistill.cli import main; sys.exit(main())", *args]


def _run(*args: str) -> None:
    subprocess.run(_cli(*args), check=True, env=ENV, capture_output=True, timeout=600)


def _same_tensors(a: Path, b: Path) -> None:
    ta, tb = load_file(a), load_file(b)
    assert ta.keys() == tb.keys()
    for key in ta:
        assert torch.equal(ta[key], tb[key]), key


def _sets(items: list[str]) -> list[str]:
    return [x for s in items for x in ("--set", s)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted teacher run and its distillation 8 -> 1."""
    out = tmp_path_factory.mktemp("ref")
    _run("train", "--out", str(out), "--no-progress", *_sets(TEACHER + DISTILL))
    _run("distill", "--from", str(out / "teacher"), "--no-progress", *_sets(DISTILL))
    return out


def test_teacher_killed_and_resumed_matches_uninterrupted(reference, tmp_path):
    out = tmp_path / "run"
    kill_after(["train", "--out", str(out), "--no-progress", *_sets(TEACHER + DISTILL)], "teacher_step00000300",
                out / "teacher.json", env=ENV)
    _run("train", "--out", str(out), "--resume", "--no-progress")
    _same_tensors(out / "teacher.safetensors", reference / "teacher.safetensors")
    ref, got = (json.loads((d / "teacher.json").read_text()) for d in (reference, out))
    assert got["loss_history"] == ref["loss_history"]


def test_distillation_killed_mid_round_and_resumed_matches(reference, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    for suffix in (".safetensors", ".json"):  # the same teacher as the reference run
        (out / f"teacher{suffix}").write_bytes((reference / f"teacher{suffix}").read_bytes())
    partials = out / "students" / "checkpoints"
    kill_after(["distill", "--from", str(out / "teacher"), "--no-progress", *_sets(DISTILL)], "round02_step00000075",
                out / "students" / "student_0001steps.json", env=ENV)
    assert (out / "students" / "student_0004steps.json").exists()  # round 1 finished, round 2 interrupted
    _run("distill", "--resume", "--out", str(out), "--no-progress")
    for m in (4, 2, 1):
        name = f"student_{m:04d}steps.safetensors"
        _same_tensors(out / "students" / name, reference / "students" / name)
    assert not list(partials.glob("*.json"))  # finished rounds clean up their mid-round checkpoints


def test_interrupted_write_leaves_previous_checkpoint(tmp_path, monkeypatch):
    net = torch.nn.Linear(3, 3)
    stem = save_checkpoint(tmp_path / "c", {"model": net}, {"step": 1})
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def dies_mid_write(tensors, path, metadata=None):
        Path(path).write_bytes(b"half a file")
        raise KeyboardInterrupt  # the process is interrupted inside the write

    monkeypatch.setattr(ckpt_mod, "save_file", dies_mid_write)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "c", {"model": torch.nn.Linear(3, 3)}, {"step": 2})
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no temp files, old files untouched
    assert load_tensors(stem)["model.weight"].shape == (3, 3)


def test_weights_and_record_from_different_writes_are_refused(tmp_path):
    a = save_checkpoint(tmp_path / "a_step1", {"model": torch.nn.Linear(2, 2)}, {"step": 1})
    b = save_checkpoint(tmp_path / "a_step2", {"model": torch.nn.Linear(2, 2)}, {"step": 2})
    # A crash between the two renames: new weights beside the old record.
    save_checkpoint(tmp_path / "other", {"model": torch.nn.Linear(2, 2)}, {"step": 3})
    (tmp_path / "a_step2.safetensors").write_bytes((tmp_path / "other.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="do not belong to the record"):
        load_tensors(b)
    assert latest_loadable(tmp_path, "a_step*") == a  # resume falls back to the older, intact checkpoint


def test_resume_errors(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "empty"), "--resume", "--no-progress"]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path), "--resume", "--set", "train.lr=1"]) == 2
    assert "drop --config/--set" in capsys.readouterr().err
    assert main(["distill", "--resume", "--out", str(tmp_path / "empty")]) == 2
    assert "nothing to distil" in capsys.readouterr().err
    assert main(["distill"]) == 2
    assert "--from" in capsys.readouterr().err


def test_batch_larger_than_data_fails_before_training(tmp_path):
    cfg = load_config("toy2d", ["data.size=100", "train.batch_size=256"])
    with pytest.raises(ConfigError, match="larger than the data"):
        train_teacher(cfg, tmp_path, progress=False)
    assert not any(tmp_path.iterdir())


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    from progdistill.training import teacher as teacher_mod

    real = teacher_mod.TeacherObjective.__call__
    calls = {"n": 0}

    def poisoned(self, x, labels, gen, shard=(0, 1)):
        calls["n"] += 1
        target = real(self, x, labels, gen, shard)
        return replace(target, x=target.x * float("nan")) if calls["n"] >= 13 else target

    monkeypatch.setattr(teacher_mod.TeacherObjective, "__call__", poisoned)
    cfg = load_config("toy2d", ["data.size=500", "train.batch_size=50", "model.hidden=16", "model.depth=1",
                                "train.steps=50", "train.checkpoint_every=5"])
    with pytest.raises(NonFiniteLossError, match="teacher_step00000010.safetensors"):
        train_teacher(cfg, tmp_path, progress=False)
    assert not (tmp_path / "teacher.json").exists()
    good = latest_loadable(tmp_path / "checkpoints", "teacher_step*")
    assert good.name == "teacher_step00000010"
    assert all(torch.isfinite(v).all() for k, v in load_tensors(good).items() if v.is_floating_point())


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_TOKENS = ["--set", "--config", "toy2d", "fashion_mnist", "nope", "--from", "--ckpt", "--run", "--resume", "--steps",
           "abc", "3", "1,2,x", "--num", "-1", "0", "--label", "--sampler", "ddim", "--scale", "nan",
           "train.steps=0", "distill.target_steps=3", 'data.name="folder"', "train.lr=-1", "distill.start_steps=7",
           "train.batch_size=1e9", "model.arch=unet", "mixed_precision=fp16", "=", ""]


@settings(max_examples=120, deadline=None)
@given(st.sampled_from(["train", "distill", "sample", "evaluate"]), st.lists(st.sampled_from(_TOKENS), max_size=6))
def test_fuzz_commands_fail_cleanly(tmp_path_factory, command, args):
    """Random command lines end with exit code 2 and a one-line error, never a traceback (and never start work:
    --out is an existing file, checkpoints and runs do not exist)."""
    import contextlib
    import io

    blocker = tmp_path_factory.getbasetemp() / "a-file"
    blocker.write_text("not a folder")
    tail = {"train": ["--out", str(blocker)], "distill": ["--out", str(blocker)],
            "sample": ["--ckpt", str(blocker), "--out", str(blocker) + ".png"],
            "evaluate": ["--run", str(blocker)]}[command]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main([command, *args, *tail])
        except SystemExit as e:
            code = e.code
    assert code == 2, (command, args)
    assert "error" in err.getvalue() and "Traceback" not in err.getvalue()
