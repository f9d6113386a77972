"""The other distillation methods (issue 24): consistency distillation's target and boundary condition, TRACT's
targets against the teacher's and self-teacher's steps written out here, the multistep consistency sampler, exact
resume of both after SIGKILL, and budgets that add up from the objectives' real network calls to the report."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from conftest import SmoothNet
from kill_at import kill_after
from progdistill.config import ConfigError, load_config
from progdistill.denoiser import Denoiser
from progdistill.diffusion.consistency import c_skip, pseudo_huber
from progdistill.diffusion.distillation import distillation_target
from progdistill.diffusion.samplers import consistency
from progdistill.diffusion.schedules import CosineSchedule, alpha_sigma, step_grid
from progdistill.training.methods import split_updates, tract_steps
from progdistill.training.objectives import ConsistencyObjective, DistillObjective, TractObjective

SCHEDULE = CosineSchedule()
LOGSNR_MAX = float(SCHEDULE(torch.zeros(1, dtype=torch.float64)).float())
BOUNDARY = {"sigma_data": 0.5, "logsnr_max": LOGSNR_MAX, "skip_scale": 1.0}  # the paper's c_skip: a large share


def _ddim(z, x_hat, l_t, l_s):
    """One DDIM step written out: alpha_s x_hat + sigma_s (z - alpha_t x_hat) / sigma_t."""
    (a_t, s_t), (a_s, s_s) = alpha_sigma(l_t[:, None]), alpha_sigma(l_s[:, None])
    return a_s * x_hat + s_s * (z - a_t * x_hat) / s_t


def _ema_apart(model: Denoiser) -> AveragedModel:
    """An EMA of `model` whose weights differ from the model's (the model moved after the EMA was taken)."""
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3)
    return ema


def test_consistency_boundary_condition_is_exact():
    student = Denoiser(SmoothNet(2, seed=3), "v", BOUNDARY)
    z = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    at_zero = torch.full((64,), LOGSNR_MAX)  # the grid's t = 0 as step_grid casts it
    alpha, _ = alpha_sigma(at_zero[:, None])
    assert torch.equal(student(z, at_zero), z / alpha)  # exactly, not approximately
    inner = Denoiser(SmoothNet(2, seed=3), "v")
    later = step_grid(SCHEDULE, 8)[-2].expand(64)  # t = 1/8: the network's x_hat dominates
    assert not torch.allclose(student(z, later), z / alpha_sigma(later[:, None])[0])
    skip = c_skip(later.double(), LOGSNR_MAX)
    assert float(skip[0]) > 0.5  # the paper's c_skip at t = 1/8 on the cosine schedule; with the default scale 100:
    assert float(c_skip(later[:1].double(), LOGSNR_MAX, skip_scale=100.0)) < 1e-3  # the network's own x_hat
    torch.testing.assert_close(student(z, later).double(), skip[:, None] * z.double() / alpha_sigma(
        later.double()[:, None])[0] + (1 - skip[:, None]) * inner(z, later).double(), atol=1e-6, rtol=1e-6)
    assert float(c_skip(torch.tensor([LOGSNR_MAX]), LOGSNR_MAX)) == 1.0


def test_consistency_target_is_one_teacher_step_and_the_ema_network():
    teacher = Denoiser(SmoothNet(2, seed=1).double(), "v")
    student = Denoiser(SmoothNet(2, seed=2).double(), "v", BOUNDARY)
    ema = _ema_apart(student)
    n_grid, x = 8, torch.randn(256, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(5)).tanh()
    objective = ConsistencyObjective(teacher=teacher, schedule=SCHEDULE, grid_steps=n_grid)
    objective.bind(student, ema)
    target = objective(x, None, torch.Generator().manual_seed(11))
    # The same draws, then one teacher DDIM step and the EMA network's consistency function, written out.
    i = torch.randint(1, n_grid + 1, (256,), generator=torch.Generator().manual_seed(11))
    l_t, l_s = SCHEDULE(i.double() / n_grid), SCHEDULE((i - 1).double() / n_grid)
    torch.testing.assert_close(target.logsnr, l_t)
    z_s = _ddim(target.z_t, teacher(target.z_t, l_t), l_t, l_s)
    skip = c_skip(l_s, LOGSNR_MAX)[:, None]
    inner = Denoiser(ema.module.net, "v")(z_s, l_s)
    expected = skip * z_s / alpha_sigma(l_s[:, None])[0] + (1 - skip) * inner
    torch.testing.assert_close(target.x, expected)
    assert not torch.allclose(target.x, student(z_s, l_s))  # from the EMA, not the online student
    first = i == 1  # the previous grid point is t = 0: the boundary, z_s / alpha_s exactly
    assert first.any() and torch.equal(target.x[first], (z_s / alpha_sigma(l_s[:, None])[0])[first])


@pytest.mark.parametrize("teacher_steps,student_steps", [(8, 2), (16, 2), (8, 4), (4, 1)])
def test_tract_target_is_a_teacher_step_then_the_self_teacher_jump(teacher_steps, student_steps):
    teacher = Denoiser(SmoothNet(2, seed=1).double(), "x")
    student = Denoiser(SmoothNet(2, seed=4).double(), "x")
    ema = _ema_apart(student)
    x = torch.randn(512, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2)).tanh()
    objective = TractObjective(teacher=teacher, schedule=SCHEDULE, teacher_steps=teacher_steps,
                               student_steps=student_steps)
    objective.bind(student, ema)
    target = objective(x, None, torch.Generator().manual_seed(9))
    j = torch.randint(1, teacher_steps + 1, (512,), generator=torch.Generator().manual_seed(9))
    seg = teacher_steps // student_steps
    e = (j - 1) // seg * seg
    l_t, l_tp, l_e = (SCHEDULE(k.double() / teacher_steps) for k in (j, j - 1, e))
    z_t = target.z_t
    z_tp = _ddim(z_t, teacher(z_t, l_t), l_t, l_tp)  # the teacher's one step
    self_teacher = ema.module
    z_e = torch.where((j - 1 == e)[:, None], z_tp, _ddim(z_tp, self_teacher(z_tp, l_tp), l_tp, l_e))
    inside = e > 0
    # The student's one DDIM step from t onto the target lands where the teacher + self-teacher composition does.
    torch.testing.assert_close(_ddim(z_t, target.x, l_t, l_e)[inside], z_e[inside], atol=1e-9, rtol=1e-9)
    last = torch.where((j - 1 == e)[:, None], teacher(z_t, l_t), self_teacher(z_tp, l_tp))
    torch.testing.assert_close(target.x[~inside], last[~inside])
    assert (~inside).any() and (j - 1 != e).any() and (inside.any() or student_steps == 1)


def test_tract_with_segments_of_two_and_the_teacher_as_self_teacher_is_progressive_distillation():
    teacher = Denoiser(SmoothNet(2, seed=6).double(), "v")
    x = torch.randn(256, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3)).tanh()
    objective = TractObjective(teacher=teacher, schedule=SCHEDULE, teacher_steps=16, student_steps=8)
    objective.bind(teacher, None)  # no EMA: the model itself is the self-teacher; here the teacher
    target = objective(x, None, torch.Generator().manual_seed(4))
    j = torch.randint(1, 17, (256,), generator=torch.Generator().manual_seed(4))
    start = j % 2 == 0  # segment starts, where the student samples: TRACT's target is PD's two-step target
    m = 8
    t = j.double() / 16
    pd = distillation_target(teacher, target.z_t, *(SCHEDULE(s) for s in (t, t - 0.5 / m, t - 1.0 / m)), j == 2)
    torch.testing.assert_close(target.x[start], pd[start], atol=1e-10, rtol=1e-10)


class Counting(torch.nn.Module):
    """A denoiser that counts the examples it is called on."""

    def __init__(self, net):
        super().__init__()
        self.net, self.rows = net, 0

    def forward(self, z, logsnr, labels=None):
        self.rows += z.shape[0]
        return self.net(z, logsnr, labels)


@pytest.mark.parametrize("kind", ["pd", "cd", "tract"])
def test_objectives_evaluate_as_many_networks_as_their_budget_counts(kind):
    teacher = Counting(Denoiser(SmoothNet(2, seed=1), "v"))
    own = Counting(Denoiser(SmoothNet(2, seed=2), "v", BOUNDARY if kind == "cd" else None))
    objective = {"pd": lambda: DistillObjective(teacher, SCHEDULE, 4),
                 "cd": lambda: ConsistencyObjective(teacher=teacher, schedule=SCHEDULE, grid_steps=8),
                 "tract": lambda: TractObjective(teacher=teacher, schedule=SCHEDULE, teacher_steps=8,
                                                 student_steps=2)}[kind]()
    if kind != "pd":
        objective.bind(own, None)
    objective(torch.zeros(48, 2), None, torch.Generator().manual_seed(0))
    assert (teacher.rows, own.rows) == (48 * objective.EVALS[0], 48 * objective.EVALS[1])


def test_multistep_consistency_sampling():
    student = Denoiser(SmoothNet(2, seed=3), "v", BOUNDARY)
    z = torch.randn(32, 2, generator=torch.Generator().manual_seed(1))
    one = consistency(student, z, step_grid(SCHEDULE, 1))
    torch.testing.assert_close(one, student(z, step_grid(SCHEDULE, 1)[0].expand(32)))  # 1 step: f(z, 1)
    grid = step_grid(SCHEDULE, 4)
    gen = torch.Generator().manual_seed(7)
    got = consistency(student, z, grid, generator=gen)
    # Written out: x = f(z, t_0); then re-noise to t_i with fresh noise, x = f(z_i, t_i); return the last x.
    gen = torch.Generator().manual_seed(7)
    x = student(z, grid[0].expand(32))
    for i in range(1, 4):
        a, s = alpha_sigma(grid[i])
        x = student(a * x + s * torch.randn(z.shape, generator=gen), grid[i].expand(32))
    torch.testing.assert_close(got, x)


def test_tract_phases_and_budgets_split():
    assert tract_steps(1024, 1, 2) == [32, 1]  # the paper's 1024 -> 32 -> 1
    assert tract_steps(32, 1, 3) == [8, 2, 1] and tract_steps(32, 1, 5) == [16, 8, 4, 2, 1]
    assert split_updates(10, 3) == [4, 3, 3] and sum(split_updates(901, 4)) == 901
    with pytest.raises(ConfigError, match="tract_phases"):
        load_config("toy2d", ["distill.method='tract'", "distill.start_steps=8", "distill.tract_phases=4"])
    with pytest.raises(ConfigError, match="lora_rank"):
        load_config("toy2d", ["distill.method='cd'", "distill.lora_rank=4"])


def test_pseudo_huber_is_l2_like_far_and_zero_at_equality():
    a = torch.zeros(3, 4)
    assert torch.equal(pseudo_huber(a, a), torch.zeros(3))
    far = torch.full((3, 4), 10.0)
    torch.testing.assert_close(pseudo_huber(far, a), torch.full((3,), 20.0), atol=1e-2, rtol=0)  # ~ ||d||


# ---------------------------------------------------------------------------------------------------- end to end

TEACHER = ["model.hidden=64", "model.depth=2", "model.emb_dim=32", "data.size=2000", "train.batch_size=64",
           "train.steps=150", "train.checkpoint_every=150"]
DISTILL = ["distill.start_steps=8", "distill.batch_size=64", "distill.updates_per_round=40",
           "distill.final_updates_per_round=0", "distill.checkpoint_every=20", "distill.log_samples=0"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


def _sets(items):
    return [x for s in items for x in ("--set", s)]


def _run(*args):
    cmd = [sys.executable, "-c", "import sys; from progdistill.cli import main; sys.exit(main())", *args]
    subprocess.run(cmd, check=True, env=ENV, capture_output=True, timeout=600)


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("methods")
    _run("train", "--out", str(out / "t"), "--no-progress", *_sets(TEACHER))
    return out / "t"


@pytest.mark.parametrize("method,kill_at,students", [("cd", "round01_step00000080", (1,)),
                                                     ("tract", "round02_step00000020", (2, 1))])
def test_killed_and_resumed_bitwise(teacher_run, tmp_path, method, kill_at, students):
    """cd: one 120-update phase (pd's 40 x 3 rounds) killed at update 80; tract: 2 phases of 60, killed in the
    second. Both resume to bitwise the weights (model and EMA) and records of an uninterrupted run."""
    args = ["distill", "--from", str(teacher_run / "teacher"), "--method", method, "--no-progress", *_sets(DISTILL)]
    _run(*args, "--out", str(tmp_path / "ref"))
    out = tmp_path / "killed"
    kill_after([*args, "--out", str(out)], kill_at, out / "students" / "student_0001steps.json", env=ENV)
    _run("distill", "--resume", "--out", str(out), "--no-progress")
    for m in students:
        name = f"student_{m:04d}steps"
        ref, got = load_file(tmp_path / "ref" / "students" / f"{name}.safetensors"), load_file(
            out / "students" / f"{name}.safetensors")
        assert ref.keys() == got.keys() and any(k.startswith("ema.") for k in ref)
        assert all(torch.equal(ref[k], got[k]) for k in ref)
        records = [json.loads((d / "students" / f"{name}.json").read_text()) for d in (tmp_path / "ref", out)]
        assert records[0]["loss_history"] == records[1]["loss_history"]
        assert records[0]["budget"] == records[1]["budget"]


def test_budgets_add_up_from_rounds_to_the_record(teacher_run, tmp_path):
    """Every method at one budget by default (pd's 3 rounds x 40 updates), and each record's counts are the sum of
    its phases: images = updates x batch, evaluations = images x the objective's per-image calls."""
    from progdistill.cli import main

    budgets = {}
    for method in ("pd", "cd", "tract"):
        assert main(["distill", "--from", str(teacher_run / "teacher"), "--method", method, "--out",
                     str(tmp_path / method), "--no-progress", *_sets(DISTILL + ["distill.tract_phases=3"])]) == 0
        record = json.loads((tmp_path / method / "students" / "student_0001steps.json").read_text())
        budgets[method] = record["budget"]
    assert {m: b["student_updates"] for m, b in budgets.items()} == {"pd": 120, "cd": 120, "tract": 120}
    for method, (teacher, own) in {"pd": (2, 0), "cd": (1, 1), "tract": (1, 1)}.items():
        b = budgets[method]
        assert b["images_seen"] == 120 * 64
        assert (b["teacher_evals"], b["self_evals"]) == (teacher * 120 * 64, own * 120 * 64)
    first = json.loads((tmp_path / "pd" / "students" / "student_0004steps.json").read_text())["budget"]
    assert first == {"student_updates": 40, "images_seen": 2560, "teacher_evals": 5120, "self_evals": 0}
    cd = json.loads((tmp_path / "cd" / "students" / "student_0001steps.json").read_text())
    assert cd["sampling"]["sampler"] == "consistency" and cd["model"]["consistency"] == {
        "logsnr_max": LOGSNR_MAX, "sigma_data": 0.5, "skip_scale": 100.0}
    assert math.isfinite(cd["loss_history"][-1][1])


def test_consistency_student_samples_with_its_own_sampler_and_refuses_what_it_cannot(teacher_run, tmp_path, capsys):
    from progdistill.cli import main

    run = tmp_path / "cd"
    assert main(["distill", "--from", str(teacher_run / "teacher"), "--method", "cd", "--out", str(run),
                 "--no-progress", *_sets(DISTILL + ["distill.total_updates=10"])]) == 0
    student = run / "students" / "student_0001steps"
    assert main(["sample", "--ckpt", str(student), "--steps", "4", "--num", "16", "--out", str(tmp_path / "s.pt"),
                 "--no-progress"]) == 0
    assert "consistency, 4 steps" in capsys.readouterr().out  # the record's sampler, no off-student warning
    assert torch.load(tmp_path / "s.pt")["samples"].shape == (16, 2)
    assert main(["export-diffusers", "--ckpt", str(student), "--out", str(tmp_path / "x")]) == 2
    assert "consistency-distilled" in capsys.readouterr().err
    assert main(["distill", "--from", str(student), "--method", "cd", "--out", str(tmp_path / "again"),
                 "--no-progress"]) == 2
    assert "samples at any step count already" in capsys.readouterr().err
    assert main(["distill", "--from", str(teacher_run / "teacher"), "--method", "tract", "--guided",
                 "--out", str(tmp_path / "g"), "--no-progress"]) == 2
    assert "--guided distils with progressive distillation" in capsys.readouterr().err
