"""Run logging: scalars to RUN/log.jsonl always and to TensorBoard when installed; per-round summaries and sample
grids during distillation."""

import math

from progdistill.config import load_config
from progdistill.training import runlog
from progdistill.training.rounds import distill
from progdistill.training.runlog import read_log
from progdistill.training.teacher import train_teacher

from conftest import write_fashion

TINY = ["train.batch_size=16", "distill.batch_size=16", "train.steps=12", "train.warmup=1",
        "train.checkpoint_every=100", "distill.start_steps=4", "distill.updates_per_round=10",
        "distill.log_samples=4", "distill.final_updates_per_round=10"]


def test_jsonl_tensorboard_and_round_grids(tmp_path):
    root = write_fashion(tmp_path / "fashion")
    out = tmp_path / "run"
    cfg = load_config("fashion_mnist", [f'data.root="{root}"', *TINY])
    distill(train_teacher(cfg, out, progress=False), out, cfg, progress=False)
    rows = read_log(out)
    teacher = [r for r in rows if r["phase"] == "teacher"]
    assert [r["step"] for r in teacher] == [10, 12]
    for r in teacher:
        assert {"loss", "loss_smoothed", "lr", "grad_norm", "images_per_s"} <= set(r)
        assert math.isfinite(r["loss"]) and r["images_per_s"] > 0
    assert [r["step"] for r in rows if r["phase"] == "round01"] == [10]
    gaps = [r for r in rows if r["phase"] == "round" and "student_vs_teacher_rms" in r]
    assert [(r["step"], r["student_steps"]) for r in gaps] == [(1, 2), (2, 1)]
    assert all(r["student_vs_teacher_rms"] >= 0 and r["teacher_short_vs_teacher_rms"] > 0 for r in gaps)
    assert (out / "students" / "samples" / "round01_0002steps.png").is_file()
    assert (out / "students" / "samples" / "round02_0001steps.png").is_file()
    events = list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert events and sum(e.stat().st_size for e in events) > 1000  # scalars and images went in


def test_jsonl_without_tensorboard(tmp_path, monkeypatch):
    monkeypatch.setattr(runlog, "_tensorboard_writer", lambda folder: None)
    cfg = load_config("toy2d", ["train.steps=20", "train.batch_size=64", "data.size=256", "train.warmup=1",
                                "train.checkpoint_every=100"])
    train_teacher(cfg, tmp_path, progress=False)
    assert [r["step"] for r in read_log(tmp_path)] == [10, 20]
    assert not (tmp_path / "tensorboard").exists()
