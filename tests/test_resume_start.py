"""Resume from the first second: a job on preemptible machines runs the same `--resume` command at every restart.
Killed after its run folder was written but before its first checkpoint, it starts from step 0 with the folder's
settings; a finished run's `--resume` says so and exits 0; a disk that fills during a checkpoint write ends in one
line naming the file, the space it needed and the command that continues, with nothing lost."""

import errno
from pathlib import Path

import torch
from safetensors.torch import load_file

from progdistill import checkpoint as ckpt_mod
from progdistill.build import load_denoiser
from progdistill.cli import main
from progdistill.cli.common import start_run
from progdistill.config import load_config
from progdistill.training.rounds import Start, distill, record_start
from progdistill.training.teacher import train_teacher

TINY = ["model.hidden=16", "model.depth=1", "model.emb_dim=8", "data.size=256", "train.batch_size=32",
        "train.steps=20", "train.warmup=2", "train.checkpoint_every=5", "data.workers=0", 'device="cpu"']
DISTILL = ["distill.start_steps=4", "distill.batch_size=32", "distill.updates_per_round=10",
           "distill.final_updates_per_round=0", "distill.checkpoint_every=5", "distill.log_samples=0",
           "distill.optim.lr=1e-3"]


def _same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(f"{a}.safetensors"), load_file(f"{b}.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def _sets(items):
    return [x for item in items for x in ("--set", item)]


def test_train_resume_before_the_first_checkpoint_starts_from_step_0_and_a_finished_run_exits_0(tmp_path, capsys):
    cfg = load_config("toy2d", TINY)
    straight = train_teacher(cfg, tmp_path / "straight", progress=False)
    killed = tmp_path / "killed"
    start_run(killed, cfg)  # what `train` writes before its first step; the job died here
    assert main(["train", "--resume", "--out", str(killed), "--no-progress"]) == 0
    assert "no checkpoint yet; starting it from step 0 with its saved config" in capsys.readouterr().err
    _same_weights(killed / "teacher", straight)
    assert main(["train", "--resume", "--out", str(killed), "--no-progress"]) == 0  # restarted once more: done
    out = capsys.readouterr()
    assert "already holds a finished teacher" in out.out and "teacher saved" in out.out


def test_distill_resume_before_the_first_checkpoint_keeps_the_distillation_settings(tmp_path, capsys):
    cfg = load_config("toy2d", TINY)
    teacher = train_teacher(cfg, tmp_path / "run", progress=False)
    dcfg = load_config("toy2d", TINY + DISTILL)
    straight = distill(teacher, tmp_path / "straight", dcfg, progress=False)
    killed = tmp_path / "killed"
    record_start(killed, Start(teacher, dcfg), dcfg)  # what `distill` writes first; the job died here
    assert main(["distill", "--resume", "--out", str(killed), "--no-progress"]) == 0
    assert capsys.readouterr().err.count("no distillation checkpoint yet") == 1  # said once
    for steps in (2, 1):
        _same_weights(killed / "students" / f"student_{steps:04d}steps", straight[0].parent / f"student_{steps:04d}steps")
    # The settings were the distillation's, not the teacher's own (which distil 256 -> 1 in 4 000 updates a round).
    assert load_denoiser(killed / "students" / "student_0001steps")[1]["config"]["distill"]["updates_per_round"] == 10
    assert main(["distill", "--resume", "--out", str(killed), "--no-progress"]) == 0
    assert "finished" in capsys.readouterr().err


def test_a_full_disk_during_a_checkpoint_is_one_line_and_loses_nothing(tmp_path, capsys, monkeypatch):
    straight = train_teacher(load_config("toy2d", TINY), tmp_path / "straight", progress=False)
    out = tmp_path / "full"
    real_save, calls = ckpt_mod.save_file, []

    def fills_on_the_third(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) == 3:  # half the file written, then the device is full
            Path(path).write_bytes(b"\0" * 64)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(tensors, path, metadata=metadata)

    monkeypatch.setattr(ckpt_mod, "save_file", fills_on_the_third)
    assert main(["train", "--out", str(out), "--no-progress", *_sets(TINY)]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "no space left on the device writing" in err and "teacher_step00000015.safetensors" in err
    assert "MiB needed" in err and f"progdistill train --resume --out {out}" in err
    assert not list(out.rglob("*.tmp"))  # the temporary file is gone
    monkeypatch.setattr(ckpt_mod, "save_file", real_save)  # space freed
    assert main(["train", "--resume", "--out", str(out), "--no-progress"]) == 0
    _same_weights(out / "teacher", straight)


def test_guided_resume_before_stage_1s_first_checkpoint_keeps_the_guided_settings(tmp_path, capsys):
    from progdistill import runfolder
    from progdistill.training.guided import distill_guided

    labelled = TINY + ['data.name="ring_classes"', "train.label_dropout=0.2"]
    teacher = train_teacher(load_config("toy2d", labelled), tmp_path / "run", progress=False)
    gcfg = load_config("toy2d", labelled + DISTILL + ["guided.w_min=0.0", "guided.w_max=2.0", "guided.stage1_updates=8",
                                                      "guided.checkpoint_every=4", "distill.start_steps=2"])
    straight = distill_guided(teacher, tmp_path / "straight", gcfg, progress=False)
    assert runfolder.guided_start(tmp_path / "straight").is_file()
    killed = tmp_path / "killed"
    record_start(killed, Start(teacher, gcfg), gcfg, runfolder.guided_start(killed))  # written first; died here
    assert main(["distill", "--resume", "--out", str(killed), "--no-progress"]) == 0
    assert "no distillation checkpoint yet" in capsys.readouterr().err
    _same_weights(runfolder.stage1_stem(killed), runfolder.stage1_stem(tmp_path / "straight"))
    _same_weights(killed / "students" / "student_0001steps", straight[-1])
