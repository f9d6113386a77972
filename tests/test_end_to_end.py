"""Train a small 2-D teacher, distil it, and check that distillation beat plain DDIM at the same step count."""

import json

import pytest
import torch

from progdistill.build import load_denoiser, schedule_of
from progdistill.cli import main
from progdistill.config import load_config
from progdistill.data import sample_toy
from progdistill.evaluation.metrics import sliced_wasserstein
from progdistill.sampling import generate
from progdistill.training.rounds import distill
from progdistill.training.teacher import train_teacher

SMALL = ["model.hidden=64", "model.depth=2", "model.emb_dim=32", "data.size=20000", "train.steps=1500",
         "train.batch_size=256", "train.lr=2e-3", "train.warmup=100", "train.checkpoint_every=500",
         "distill.start_steps=16", "distill.target_steps=4", "distill.updates_per_round=300",
         "distill.batch_size=256", "distill.lr=1e-3"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("run")
    cfg = load_config("toy2d", SMALL)
    stem = train_teacher(cfg, out, progress=False)
    students = distill(stem, out, cfg, progress=False)
    return out, cfg, stem, students


def test_student_beats_teacher_ddim_at_same_steps(trained_run):
    out, cfg, stem, students = trained_run
    assert [s.name for s in students] == ["student_0008steps", "student_0004steps"]
    reference = sample_toy(cfg.data.name, 4000, seed=99)
    teacher, record, _ = load_denoiser(stem)
    student, srecord, _ = load_denoiser(students[-1])
    assert srecord["sampling_steps"] == 4 and srecord["round"] == 2
    kw = dict(data_shape=(2,), seed=7, clip=True)
    sw_teacher = sliced_wasserstein(generate(teacher, schedule_of(cfg), 4, 4000, **kw), reference)
    sw_student = sliced_wasserstein(generate(student, schedule_of(cfg), 4, 4000, **kw), reference)
    sw_teacher_16 = sliced_wasserstein(generate(teacher, schedule_of(cfg), 16, 4000, **kw), reference)
    print(f"SW: teacher DDIM-4 {sw_teacher:.4f}, student-4 {sw_student:.4f}, teacher DDIM-16 {sw_teacher_16:.4f}")
    assert sw_student < 0.75 * sw_teacher


def test_periodic_checkpoints_and_records(trained_run):
    out, cfg, stem, students = trained_run
    kept = sorted(p.name for p in (out / "checkpoints").glob("*.json"))
    assert kept == ["teacher_step00000500.json", "teacher_step00001000.json"]
    record = json.loads((out / "teacher.json").read_text())
    assert record["config"]["train"]["steps"] == 1500 and record["sampling_weights"] == "ema"


def test_resume_distillation_from_a_saved_round(trained_run, tmp_path):
    out, cfg, stem, students = trained_run
    cfg2 = load_config(None, ["distill.target_steps=2", "distill.updates_per_round=20",
                              "distill.final_updates_per_round=20"], base=cfg.to_dict())
    more = distill(students[-1], tmp_path, cfg2, progress=False)
    assert [s.name for s in more] == ["student_0002steps"]
    record = json.loads(more[0].with_suffix(".json").read_text())
    assert record["round"] == 3 and record["sampling_steps"] == 2 and record["teacher"] == str(students[-1])
    assert record["step"] == 20 and len(record["loss_history"]) > 0


def test_cli_sample_evaluate_and_errors(trained_run, tmp_path, capsys):
    out, cfg, stem, students = trained_run
    assert main(["sample", "--ckpt", str(students[-1]), "--num", "500", "--out", str(tmp_path / "s.png"),
                 "--no-progress"]) == 0
    assert (tmp_path / "s.png").stat().st_size > 1000
    assert main(["sample", "--ckpt", str(stem), "--steps", "4", "--sampler", "ancestral", "--num", "100",
                 "--out", str(tmp_path / "s.pt"), "--no-progress"]) == 0
    assert torch.load(tmp_path / "s.pt")["samples"].shape == (100, 2)
    assert main(["evaluate", "--run", str(out), "--out", str(tmp_path / "eval"), "--steps", "4,16", "--num", "500",
                 "--no-progress"]) == 0
    rows = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert {(r["sampler"], r["steps"]) for r in rows} == {
        ("data", 0), ("teacher_ddim", 4), ("teacher_ddim", 16), ("teacher_ancestral", 4), ("teacher_ancestral", 16),
        ("student", 8), ("student", 4)}
    assert all(set(r) == {"sampler", "steps", "metric", "value"} for r in rows)
    for name in ("report.md", "metric_vs_steps.png", "samples.png"):
        assert (tmp_path / "eval" / name).is_file()
    capsys.readouterr()
    # Bad input: clear errors, exit code 2, nothing overwritten.
    assert main(["sample", "--ckpt", str(tmp_path / "nope"), "--out", str(tmp_path / "x.png")]) == 2
    assert "no checkpoint record" in capsys.readouterr().err
    before = (out / "teacher.safetensors").read_bytes()
    assert main(["train", "--out", str(out), "--set", "train.steps=1"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (out / "teacher.safetensors").read_bytes() == before
    assert main(["distill", "--from", str(stem), "--out", str(tmp_path / "d"), "--set", "distill.target_steps=32"]) == 2
    assert "above distill.start_steps" in capsys.readouterr().err
    assert main(["distill", "--from", str(students[-1]), "--out", str(tmp_path / "d"),
                 "--set", "distill.target_steps=8"]) == 2
    assert "above the checkpoint's step count" in capsys.readouterr().err


def test_eps_teacher_distils_into_v_students_not_eps(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path), "--no-progress", "--set", "model.parameterization=eps",
                 "--set", "diffusion.weighting=snr", *[a for s in SMALL[:3] for a in ("--set", s)],
                 "--set", "train.steps=2"]) == 0
    assert main(["distill", "--from", str(tmp_path / "teacher"), "--set", "distill.start_steps=4",
                 "--set", "distill.parameterization=eps", "--no-progress"]) == 2
    assert "diverges" in capsys.readouterr().err
    # By default (distill.parameterization = "auto") an eps teacher's students are v, which distil.
    assert main(["distill", "--from", str(tmp_path / "teacher"), "--set", "distill.start_steps=2",
                 "--set", "distill.updates_per_round=2", "--set", "distill.final_updates_per_round=0",
                 "--no-progress"]) == 0
    from progdistill.build import load_denoiser

    assert load_denoiser(tmp_path / "students" / "student_0001steps")[2].model.parameterization == "v"


def test_demo_quick(tmp_path):
    assert main(["demo", "--data", "ring", "--quick", "--out", str(tmp_path / "demo"), "--num", "300", "--no-progress",
                 "--set", "train.steps=200", "--set", "distill.updates_per_round=20",
                 "--set", "distill.final_updates_per_round=20"]) == 0
    rows = json.loads((tmp_path / "demo" / "eval" / "report.json").read_text())
    assert {r["steps"] for r in rows if r["sampler"] == "student"} == {1, 2, 4, 8}
