"""Flow-matching teachers (issue 31, first part): the flow schedule (x_t = (1 - t) x + t eps, exact at t = 0 and 1,
SD3's shift), the velocity parameterization, DDIM on it being the flow's Euler step, pd's target being the mean of
the teacher's two velocities, and a 2-D flow teacher trained and distilled by every method from the command line."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from progdistill.cli import main
from progdistill.config import ConfigError, load_config
from progdistill.denoiser import Denoiser
from progdistill.diffusion.distillation import distillation_target
from progdistill.diffusion.dpm_solver import dpm_solver_pp_2m
from progdistill.diffusion.parameterization import get_parameterization
from progdistill.diffusion.samplers import ancestral, ddim
from progdistill.diffusion.schedules import (FlowSchedule, alpha_sigma, broadcast, flow_time, flux_shift,
                                             make_schedule, schedule_from_spec, schedule_spec, step_grid)
from progdistill.diffusion.weighting import weighted_loss
from progdistill.nets.base import noise_condition

FLOW = ['diffusion.schedule="flow"', 'model.parameterization="flow"', 'diffusion.weighting="velocity"']


class VelocityNet(torch.nn.Module):
    """A fixed smooth velocity field u(z_fm, cond) in float64."""

    def __init__(self, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.w = torch.nn.Parameter(torch.randn(3, 2, generator=gen, dtype=torch.float64))

    def forward(self, z, cond, labels=None):
        return torch.tanh(torch.cat([z, cond[:, None].to(z.dtype)], dim=1) @ self.w)


def _fm_point(x, eps, t):
    return (1 - t)[:, None] * x + t[:, None] * eps


def test_flow_schedule_ends_are_exact_and_shift_is_sd3s():
    sched = FlowSchedule()
    t = torch.tensor([1.0, 0.75, 0.5, 0.0], dtype=torch.float64)
    alpha, sigma = alpha_sigma(sched(t))
    assert alpha[0] == 0 and sigma[0] == 1 and alpha[-1] == 1 and sigma[-1] == 0  # pure noise and data, exactly
    # rescaled to the flow point, alpha and sigma are 1 - t and t
    torch.testing.assert_close(alpha / (alpha + sigma), 1 - t)
    torch.testing.assert_close(flow_time(sched(t)), t)
    shifted = FlowSchedule(3.0)
    torch.testing.assert_close(flow_time(shifted(t)), 3 * t / (1 + 2 * t))  # SD3: shift s / (1 + (shift - 1) s)
    assert step_grid(sched, 4)[0] == -math.inf and step_grid(sched, 4)[-1] == math.inf
    spec = schedule_spec("flow", shift=3.0)
    assert spec == {"name": "flow", "shift": 3.0} and schedule_from_spec(spec) == shifted
    assert make_schedule("flow") == FlowSchedule()
    with pytest.raises(ValueError, match="shift > 0"):
        FlowSchedule(0.0)


@pytest.mark.parametrize("shift,dynamic", [(1.0, False), (3.0, False), (None, True)])
def test_diffusers_flow_euler_scheduler_visits_our_grid_and_takes_our_steps(shift, dynamic):
    """FlowMatchEulerDiscreteScheduler given our unshifted times as `sigmas=` shifts them (SD3's static shift, or
    FLUX's dynamic one through `mu`) onto exactly our grid, and its Euler steps with our velocity network equal the
    project's DDIM on the flow schedule: the route by which a flow student's steps reach the stock pipelines."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    n, seq_len = 4, 1024
    if dynamic:
        sched = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
        mu = calculate_shift(seq_len)
        ours = FlowSchedule(flux_shift(seq_len))
        assert math.isclose(flux_shift(seq_len), math.exp(mu), rel_tol=1e-12)
    else:
        sched, mu, ours = FlowMatchEulerDiscreteScheduler(shift=shift), None, FlowSchedule(shift)
    grid = step_grid(ours, n, dtype=torch.float64)
    sched.set_timesteps(sigmas=[i / n for i in range(n, 0, -1)], mu=mu)
    torch.testing.assert_close(sched.sigmas.double(), flow_time(grid), rtol=1e-6, atol=1e-6)
    net = VelocityNet(5)
    z0 = torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    z = z0.clone()
    for i, timestep in enumerate(sched.timesteps):
        sigma = sched.sigmas[i].double()  # the network's time input from the scheduler's own sigma
        cond = noise_condition((2 * (torch.log1p(-sigma) - torch.log(sigma))).expand(3))
        z = sched.step(net(z, cond), timestep, z).prev_sample
    torch.testing.assert_close(z, ddim(Denoiser(net, "flow"), z0.clone(), grid), rtol=1e-6, atol=1e-6)


def test_velocity_parameterization_round_trip_and_input():
    p = get_parameterization("flow")
    x, eps = torch.randn(6, 2, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64)
    t = torch.tensor([1.0, 0.9, 0.5, 0.3, 0.01, 0.0], dtype=torch.float64)
    alpha, sigma = alpha_sigma(broadcast(FlowSchedule()(t), x))
    z = alpha * x + sigma * eps  # the VP point the project works in
    torch.testing.assert_close(z * p.input_scale(alpha, sigma), _fm_point(x, eps, t))  # the network sees z_fm
    torch.testing.assert_close(p.to_x(p.ideal(x, eps, alpha, sigma), z, alpha, sigma), x)  # u = eps - x
    assert get_parameterization("v").input_scale is None  # every other parameterization sees z as before


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_ddim_on_the_flow_schedule_is_the_euler_step(shift):
    """The project's DDIM over the flow grid equals Euler on z_fm with the network's velocity, z + (t_s - t) u."""
    net = VelocityNet()
    sched, n = FlowSchedule(shift), 4
    grid = step_grid(sched, n, dtype=torch.float64)
    z0 = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ours = ddim(Denoiser(net, "flow"), z0.clone(), grid)
    t = flow_time(grid)
    z = z0.clone()  # at t = 1 the VP and flow points are both pure noise
    for i in range(n):
        z = z + (t[i + 1] - t[i]) * net(z, noise_condition(grid[i].expand(5)))
    torch.testing.assert_close(ours, z, rtol=1e-12, atol=1e-12)
    for sampler in (dpm_solver_pp_2m, lambda d, z, g: ancestral(d, z, g, generator=torch.Generator().manual_seed(0))):
        assert sampler(Denoiser(net, "flow"), z0.clone(), grid).isfinite().all()


def test_pd_target_is_the_mean_velocity_over_the_two_teacher_steps():
    """FLOW.md: the student's velocity target over a doubled step is (z_t'' - z_t) / (t'' - t) in flow coordinates,
    also from pure noise (t = 1)."""
    net, sched = VelocityNet(3), FlowSchedule()
    teacher = Denoiser(net, "flow")
    t = torch.tensor([1.0, 0.75, 0.5], dtype=torch.float64)
    step = 0.125
    lt, ltp, ltpp = (sched(s) for s in (t, t - step, t - 2 * step))
    z_vp = torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    x_tilde = distillation_target(teacher, z_vp, lt, ltp, ltpp, torch.zeros(3, dtype=torch.bool))
    a, s = alpha_sigma(broadcast(lt, z_vp))
    z_fm = z_vp / (a + s)
    u_target = (z_fm - x_tilde) / t[:, None]  # the velocity whose one Euler step to t = 0 gives x_tilde ...
    z_tpp_student = z_fm + (-2 * step) * u_target  # ... and the student's one step t -> t''
    z_tp = z_fm - step * net(z_fm, noise_condition(lt))
    z_tpp_teacher = z_tp - step * net(z_tp, noise_condition(ltp))
    torch.testing.assert_close(z_tpp_student, z_tpp_teacher, rtol=1e-10, atol=1e-10)


def test_velocity_weighting_is_the_velocity_mse_and_finite_at_the_data_end():
    sched = FlowSchedule()
    t = torch.tensor([1.0, 0.6, 0.2, 0.0], dtype=torch.float64)
    x, u_err = torch.randn(4, 2, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
    x_hat = x - t[:, None] * u_err  # x_hat - x = -t (u_hat - u)
    got = weighted_loss(x_hat, x, sched(t), "velocity")
    torch.testing.assert_close(got.double(), u_err[:3].pow(2).mean(1).sum() / 4 + 0.0, rtol=1e-5, atol=1e-6)


def test_flow_teacher_trains_distils_by_every_method_and_samples(tmp_path, capsys):
    """A 2-D flow teacher from the command line; pd, cd, tract and dmd distil it; its record describes the flow
    schedule; every sampler is finite on it; an eps teacher on the flow schedule is refused."""
    teacher = tmp_path / "t"
    small = ["model.hidden=32", "model.depth=2", "model.emb_dim=16", "data.size=2000", "train.batch_size=64",
             "train.steps=60", "train.checkpoint_every=60", "diffusion.shift=2.0"]
    sets = lambda items: [x for s in items for x in ("--set", s)]  # noqa: E731
    assert main(["train", "--out", str(teacher), "--no-progress", *sets(FLOW + small)]) == 0
    record = json.loads((teacher / "teacher.json").read_text())
    assert record["model"]["schedule"] == {"name": "flow", "shift": 2.0}
    assert record["model"]["parameterization"] == "flow"
    distill = ["distill.start_steps=4", "distill.batch_size=64", "distill.updates_per_round=10",
               "distill.final_updates_per_round=0", "distill.target_steps=1", "distill.total_updates=4"]
    for method in ("pd", "cd", "tract", "dmd"):
        out = tmp_path / method
        assert main(["distill", "--from", str(teacher / "teacher"), "--method", method, "--out", str(out),
                     "--no-progress", *sets(distill)]) == 0, capsys.readouterr().err
        weights = load_file(out / "students" / "student_0001steps.safetensors")
        assert all(v.isfinite().all() for v in weights.values()), method
    for sampler in ("ddim", "ancestral", "dpm_solver"):
        assert main(["sample", "--ckpt", str(teacher / "teacher"), "--sampler", sampler, "--steps", "4", "--num", "64",
                     "--out", str(tmp_path / f"{sampler}.pt"), "--no-progress"]) == 0
        assert torch.load(tmp_path / f"{sampler}.pt")["samples"].isfinite().all(), sampler
    assert main(["export-diffusers", "--ckpt", str(teacher / "teacher"), "--out", str(tmp_path / "x")]) == 2
    assert "flow-matching model" in capsys.readouterr().err  # one line, not a KeyError
    with pytest.raises(ConfigError, match="divides by zero"):
        load_config("toy2d", ['diffusion.schedule="flow"', 'model.parameterization="eps"'])
    with pytest.raises(ConfigError, match="needs diffusion.schedule"):
        load_config("toy2d", ['model.parameterization="flow"'])
