"""Issue 15: students of an eps-prediction teacher in another parameterization, and the clipped-teacher target
near t = 1 for teachers whose terminal log-SNR is low (DDPM's linear betas: -10.1)."""

import math

import pytest
import torch

from progdistill.config import ConfigError, load_config
from progdistill.denoiser import Denoiser
from progdistill.diffusion.distillation import distillation_target
from progdistill.diffusion.parameterization import get_parameterization
from progdistill.diffusion.samplers import ddim_step
from progdistill.diffusion.schedules import DiscreteSchedule, alpha_sigma, broadcast, ddpm_alphas_cumprod
from progdistill.training.objectives import ConversionObjective, DistillObjective, teacher_clip_threshold
from progdistill.config import student_config

from conftest import SmoothNet


@pytest.fixture(scope="module")
def ddpm_schedule():
    return DiscreteSchedule(ddpm_alphas_cumprod(1000, "linear", 1e-4, 0.02))


class Scaled(torch.nn.Module):
    """An eps network with enough amplitude that x_hat = (z - sigma eps) / alpha leaves [-1, 1] near t = 1."""

    def __init__(self, seed):
        super().__init__()
        self.net = SmoothNet(1, 1, seed=seed)

    def forward(self, z, cond, labels=None):
        return 1.3 * self.net(z, cond, labels)


def _teacher_steps(teacher, z_t, lams, clip):
    """Two teacher DDIM steps written out here (x_hat clamped to [-1, 1] where `clip`), not via the library."""
    z = z_t
    for a, b in zip(lams[:-1], lams[1:]):
        x_hat = teacher(z, a)
        x_hat = torch.where(clip[:, None], x_hat.clamp(-1, 1), x_hat)
        alpha_a, sigma_a = alpha_sigma(broadcast(a, z))
        alpha_b, sigma_b = alpha_sigma(broadcast(b, z))
        z = alpha_b * x_hat + sigma_b * (z - alpha_a * x_hat) / sigma_a
    return z


@pytest.mark.parametrize("student_param", ["v", "x"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_eps_teacher_v_and_x_student_one_step_lands_on_two_teacher_steps(ddpm_schedule, student_param, seed):
    m = 8
    teacher = Denoiser(Scaled(seed), "eps").double()
    objective = DistillObjective(teacher, ddpm_schedule, m, clip_below=teacher_clip_threshold("noisy", 0.0))
    x = torch.rand(512, 1, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2 - 1
    gen = torch.Generator().manual_seed(seed)
    out = objective(x, None, gen)
    z_t, lam_t, x_tilde = out.z_t, out.logsnr, out.x
    # Re-draw the same i as the objective did, to know t' and t''.
    i = torch.randint(1, m + 1, (512,), generator=torch.Generator().manual_seed(seed))
    t = i.double() / m
    lams = [ddpm_schedule(s) for s in (t, t - 0.5 / m, t - 1.0 / m)]
    torch.testing.assert_close(lams[0], lam_t)
    clip = lam_t < 0.0
    assert clip.any() and (~clip & (i > 1)).any()  # both parts of the grid are drawn
    # A student of the other parameterization whose output is exactly the one that means x_tilde...
    p = get_parameterization(student_param)
    alpha, sigma = alpha_sigma(broadcast(lam_t, z_t))
    eps_tilde = (z_t - alpha * x_tilde) / sigma
    out = p.ideal(x_tilde, eps_tilde, alpha, sigma)
    x_student = p.to_x(out, z_t, alpha, sigma)
    # ... lands in one DDIM step on the teacher's two steps: the paper's unclipped ones on the well-conditioned
    # part of the grid (log-SNR >= 0), the clipped ones at the noisiest grid points.
    inner = i > 1
    lands = ddim_step(z_t, x_student, lam_t, lams[2])
    expected = _teacher_steps(teacher, z_t, lams, clip)
    torch.testing.assert_close(lands[inner], expected[inner], atol=1e-8, rtol=1e-8)
    # Where the teacher's unclipped x_hat leaves [-1, 1], the clipped target differs from the paper's; and there
    # it is a convex combination of clipped x_hat, so it stays in [-1, 1].
    unclipped = _teacher_steps(teacher, z_t, lams, torch.zeros_like(clip))
    assert (expected[clip & inner] - unclipped[clip & inner]).abs().max() > 1e-3
    assert x_tilde[clip].abs().max() <= 1.0 + 1e-9
    # The last student step (t'' = 0) targets the teacher's x_hat at the midpoint, clipped where t is noisy.
    last = i == 1
    if last.any():
        z_tp = _teacher_steps(teacher, z_t, lams[:2], clip)
        mid = teacher(z_tp, lams[1])
        mid = torch.where(clip[:, None], mid.clamp(-1, 1), mid)
        torch.testing.assert_close(x_tilde[last], mid[last])


def test_clipped_target_is_the_convex_combination_of_clipped_x_hat(ddpm_schedule):
    """x_tilde from two clipped steps = a c1 + b c2 with a + b = 1, a, b >= 0 (direct computation)."""
    teacher = Denoiser(Scaled(3), "eps").double()
    m = 4
    for i in range(2, m + 1):
        t = torch.full((64,), i / m, dtype=torch.float64)
        lt, ltp, ltpp = (ddpm_schedule(s) for s in (t, t - 0.5 / m, t - 1.0 / m))
        z = torch.randn(64, 1, generator=torch.Generator().manual_seed(i), dtype=torch.float64)
        target = distillation_target(teacher, z, lt, ltp, ltpp, torch.zeros(64, dtype=torch.bool), clip=True)
        c1 = teacher(z, lt).clamp(-1, 1)
        a_t, s_t = alpha_sigma(lt[0])
        a_p, s_p = alpha_sigma(ltp[0])
        a_pp, s_pp = alpha_sigma(ltpp[0])
        z_tp = a_p * c1 + s_p * (z - a_t * c1) / s_t
        c2 = teacher(z_tp, ltp).clamp(-1, 1)
        w2 = a_pp - s_pp * a_p / s_p
        w1 = s_pp * (a_p / s_p - a_t / s_t)
        assert w1 >= 0 and w2 >= 0
        torch.testing.assert_close(target, (w1 * c1 + w2 * c2) / (w1 + w2))


def test_conversion_objective_targets_the_teachers_clipped_x_hat(ddpm_schedule):
    teacher = Denoiser(Scaled(4), "eps").double()
    obj = ConversionObjective(teacher, ddpm_schedule, 8, clip_below=math.inf)
    x = torch.zeros(64, 1, dtype=torch.float64)
    out = obj(x, None, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out.x, teacher(out.z_t, out.logsnr).clamp(-1, 1))


def test_student_parameterization_config():
    cfg = load_config("toy2d", ["model.parameterization=eps", "distill.parameterization=v"])
    assert student_config(cfg).model.parameterization == "v"
    assert student_config(load_config("toy2d", ["distill.parameterization=same"])).model.parameterization == "v"
    # "auto": an eps teacher gets v students, a warm-up of 2 x updates_per_round and clipped targets near t = 1;
    # other teachers keep their output and the paper's target; explicit values stay.
    auto = student_config(load_config("toy2d", ["model.parameterization=eps", "distill.weighting=snr_plus1",
                                                "distill.updates_per_round=70"]))
    assert (auto.model.parameterization, auto.distill.convert_updates, auto.distill.teacher_clip) == ("v", 140, "noisy")
    same = student_config(load_config("toy2d", ["model.parameterization=x"]))
    assert (same.model.parameterization, same.distill.convert_updates, same.distill.teacher_clip) == ("x", 0, "none")
    kept = student_config(load_config("toy2d", ["model.parameterization=eps", "distill.parameterization=x",
                                                "distill.convert_updates=0", "distill.teacher_clip=none"]))
    assert (kept.model.parameterization, kept.distill.convert_updates, kept.distill.teacher_clip) == ("x", 0, "none")
    with pytest.raises(ConfigError, match="cannot start a 'both' student"):
        student_config(load_config("toy2d", ["model.parameterization=eps", "distill.parameterization=both"]))
    with pytest.raises(ConfigError, match="distill.parameterization"):
        load_config("toy2d", ["distill.parameterization=y"])
    with pytest.raises(ConfigError, match="distill.teacher_clip"):
        load_config("toy2d", ["distill.teacher_clip=some"])
    assert teacher_clip_threshold("none", 0.0) == -math.inf and teacher_clip_threshold("all", 0.0) == math.inf
