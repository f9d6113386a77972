"""The distillation target: one student DDIM step onto x_tilde lands exactly on two teacher steps."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from progdistill.denoiser import Denoiser
from progdistill.diffusion.distillation import distillation_target, x_tilde_from_two_steps
from progdistill.diffusion.samplers import ddim_step
from progdistill.diffusion.schedules import CosineSchedule, LinearBetaSchedule, step_grid
from progdistill.training.objectives import DistillObjective


@settings(max_examples=30, deadline=None)
@given(st.sampled_from([1, 2, 4, 8, 64]), st.sampled_from(["x", "v", "both"]), st.integers(0, 1000),
       st.sampled_from(["cosine", "linear"]))
def test_student_step_onto_x_tilde_lands_on_two_teacher_steps(m, prediction, seed, schedule_name):
    from conftest import SmoothNet

    schedule = CosineSchedule() if schedule_name == "cosine" else LinearBetaSchedule()
    teacher = Denoiser(SmoothNet(2, 2 if prediction == "both" else 1, seed=seed), prediction)
    gen = torch.Generator().manual_seed(seed)
    i = torch.randint(2, m + 1, (32,), generator=gen) if m > 1 else torch.ones(32, dtype=torch.long)
    t = i.double() / m
    l_t, l_tp, l_tpp = (schedule(s) for s in (t, t - 0.5 / m, t - 1.0 / m))
    z_t = torch.randn(32, 2, generator=gen, dtype=torch.float64)
    # The teacher's two steps t -> t' -> t'' written out here, independently of distillation_target.
    z_tp = ddim_step(z_t, teacher(z_t, l_t), l_t, l_tp)
    z_tpp = ddim_step(z_tp, teacher(z_tp, l_tp), l_tp, l_tpp)
    if m == 1:  # t'' = 0: the target is the teacher's x_hat at the midpoint
        target = distillation_target(teacher, z_t, l_t, l_tp, l_tpp, i == 1)
        torch.testing.assert_close(target, teacher(z_tp, l_tp))
        return
    x_tilde = distillation_target(teacher, z_t, l_t, l_tp, l_tpp, i == 1)
    torch.testing.assert_close(x_tilde, x_tilde_from_two_steps(z_t, z_tpp, l_t, l_tpp))
    student_lands = ddim_step(z_t, x_tilde, l_t, l_tpp)
    torch.testing.assert_close(student_lands, z_tpp, atol=1e-9, rtol=1e-9)


def test_target_is_unclipped_and_steps_are_ordered():
    """A teacher predicting x far outside [-1, 1] must pass through unclipped; swapping t' and t'' would change it."""

    class Far(torch.nn.Module):
        def forward(self, z, cond, labels=None):
            return 3.0 * torch.ones_like(z) + 0 * cond[:, None]

    teacher = Denoiser(Far(), "x")
    schedule = CosineSchedule()
    grid = step_grid(schedule, 8, dtype=torch.float64)
    l_t, l_tp, l_tpp = grid[2].expand(4), step_grid(schedule, 16, dtype=torch.float64)[5].expand(4), grid[3].expand(4)
    z_t = torch.randn(4, 2, dtype=torch.float64)
    target = distillation_target(teacher, z_t, l_t, l_tp, l_tpp, torch.zeros(4, dtype=torch.bool))
    # A teacher that always predicts x = 3 makes every DDIM path aim at 3, so x_tilde = 3 exactly.
    torch.testing.assert_close(target, torch.full_like(z_t, 3.0))


def test_distill_objective_uses_the_student_grid():
    calls = []

    class Recorder(torch.nn.Module):
        def forward(self, z, cond, labels=None):
            calls.append(cond.clone())
            return torch.zeros_like(z)

    schedule = CosineSchedule()
    obj = DistillObjective(Denoiser(Recorder(), "x"), schedule, student_steps=4)
    x = torch.zeros(256, 2)
    out = obj(x, None, torch.Generator().manual_seed(0))
    logsnr_t, x_tilde = out.logsnr, out.x
    student_grid = step_grid(schedule, 4)  # t = 1, 3/4, 1/2, 1/4, 0
    assert set(logsnr_t.tolist()) <= set(student_grid[:-1].tolist())
    assert len(set(logsnr_t.tolist())) == 4  # every student step is drawn
    teacher_grid = step_grid(schedule, 8)
    from progdistill.denoiser import noise_condition

    first, second = calls
    torch.testing.assert_close(first, noise_condition(logsnr_t))
    # The teacher's second evaluation is half a student step later, on the teacher's 8-step grid.
    assert set(torch.round(second, decimals=5).tolist()) <= set(
        torch.round(noise_condition(teacher_grid), decimals=5).tolist())
    assert torch.all(second < first)
    assert torch.isfinite(x_tilde).all()
