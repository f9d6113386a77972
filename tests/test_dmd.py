"""Players phases (issue 30): the DMD gradient (zero when the fake score is the teacher, the score difference in
closed form on Gaussian data), gradient isolation between players, budgets counted from real network calls, exact
resume of a three-player dmd run and a two-player adversarial pd round after SIGKILL, adversarial_weight = 0 is pd."""

import json
from types import SimpleNamespace

import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file
from torch import nn

from kill_at import kill_after
from progdistill.denoiser import Denoiser
from progdistill.diffusion.dmd import dmd_gradient, dmd_loss
from progdistill.diffusion.schedules import CosineSchedule, alpha_sigma
from progdistill.nets.mlp import MLPNet
from progdistill.training.dmd import DMDObjective
from progdistill.training.loop import OptimSettings
from progdistill.training.players import PlayersLoop
from test_methods import DISTILL, ENV, _run, _sets, teacher_run  # noqa: F401 (the module's teacher fixture)

SCHEDULE = CosineSchedule()


class GaussianDenoiser(nn.Module):
    """The exact x_hat = E[x | z_t] of data x ~ N(mu, s^2 I) (a score known in closed form)."""

    def __init__(self, mu: float, s: float):
        super().__init__()
        self.mu, self.s = mu, s

    def forward(self, z, logsnr, labels=None):
        alpha, sigma = alpha_sigma(logsnr[:, None].double())
        gain = alpha * self.s ** 2 / (alpha ** 2 * self.s ** 2 + sigma ** 2)
        return self.mu + gain * (z - alpha * self.mu)


def test_dmd_gradient_is_the_score_difference_on_gaussian_data():
    """x_hat_fake - x_hat_real = sigma^2 / alpha (s_fake - s_real), with the scores of the noised Gaussians
    N(alpha mu, alpha^2 s^2 + sigma^2) written out; DMD's gradient is that over its per-sample normaliser."""
    real, fake = GaussianDenoiser(0.5, 0.3), GaussianDenoiser(-0.2, 0.8)
    x = torch.randn(16, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    logsnr = torch.linspace(-3, 3, 16, dtype=torch.float64)
    alpha, sigma = alpha_sigma(logsnr[:, None])
    z = alpha * x + sigma * torch.randn(16, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    score = lambda mu, s: -(z - alpha * mu) / (alpha ** 2 * s ** 2 + sigma ** 2)  # noqa: E731
    x_real, x_fake = real(z, logsnr), fake(z, logsnr)
    grad = dmd_gradient(x, x_real, x_fake)
    normaliser = (x - x_real).abs().mean(dim=1, keepdim=True)
    torch.testing.assert_close(grad * normaliser * alpha / sigma ** 2, score(-0.2, 0.8) - score(0.5, 0.3))
    # applied through 0.5 ||x - sg(x - grad)||^2: the loss's gradient in x is grad / numel
    xg = x.clone().requires_grad_(True)
    dmd_loss(xg, grad).backward()
    torch.testing.assert_close(xg.grad, (grad / x.numel()).float().double(), rtol=1e-6, atol=1e-9)


def _mlp(seed: int) -> Denoiser:
    torch.manual_seed(seed)
    net = Denoiser(MLPNet(data_dim=2, out_dim=2, hidden=32, depth=2, emb_dim=16), "v")
    for p in net.parameters():  # a non-zero output layer: every player's gradient is non-trivial
        nn.init.normal_(p, std=0.3) if p.ndim > 1 else None
    return net


def _objective(teacher, gan_weight=0.01, steps=2):
    settings = OptimSettings(lr=1e-3, total_steps=10)
    return DMDObjective(teacher, SCHEDULE, steps, {"generator": settings, "fake": settings, "disc": settings}, 2,
                        gan_weight, "snr_plus1", (2,), None, seed=3)


def _loop(objective, student):
    run = SimpleNamespace(accelerator=Accelerator(cpu=True))
    return PlayersLoop(objective.players(student), run, seed=0, grad_accum=1, total=1, resume=None)


def _batches(n=32):
    gen = torch.Generator().manual_seed(7)
    while True:
        yield torch.randn(n, 2, generator=gen).tanh(), None


def test_dmd_gradient_is_zero_while_the_fake_score_is_the_teacher():
    teacher = _mlp(0).requires_grad_(False)
    objective, student = _objective(teacher, gan_weight=0.0), _mlp(1)
    loop = _loop(objective, student)
    gen = next(st for st in loop.states if st.player.name == "generator")
    loop.update(gen, _batches(), objective)
    grads = [p.grad for p in student.parameters()]
    assert all(g is not None and torch.count_nonzero(g) == 0 for g in grads)
    assert float(loop.pending[-1][1][0]) == 0.0  # the loss itself: grad = 0 exactly, 0.5 ||x - x||^2


def test_each_player_update_gives_gradients_to_that_player_only():
    teacher = _mlp(0).requires_grad_(False)
    objective, student = _objective(teacher), _mlp(1)
    loop = _loop(objective, student)
    batches = _batches()
    loop.update(loop.states[1], batches, objective)  # the fake score moves away from the teacher first
    for st in loop.states:
        loop.update(st, batches, objective)
        for other in loop.states:
            grads = [p.grad for p in other.trainable]
            if other is st:
                assert all(g is not None for g in grads) and any(torch.count_nonzero(g) for g in grads), st.player.name
            else:
                assert all(g is None for g in grads), (st.player.name, other.player.name)
        assert all(p.grad is None for p in teacher.parameters())


def test_budget_counts_are_the_networks_real_calls():
    """Forward hooks on every network count the rows it was really called on, backward hooks the rows gradients
    really flowed through (on the layer z enters: every backward to z passes it); the loop's counter must agree."""
    teacher = _mlp(0).requires_grad_(False)
    objective, student = _objective(teacher, steps=4), _mlp(1)
    loop = _loop(objective, student)
    nets = {"teacher": teacher} | {st.player.name: st.raw for st in loop.states}
    seen = {name: [0, 0] for name in nets}
    for name, net in nets.items():
        net.register_forward_hook(lambda m, a, o, name=name: seen[name].__setitem__(0, seen[name][0] + a[0].shape[0]))
        first = net.net.inp if name != "disc" else net.net[0]  # the layer the noisy input enters
        first.register_full_backward_hook(
            lambda m, gi, go, name=name: seen[name].__setitem__(1, seen[name][1] + go[0].shape[0]))
    batches = _batches()
    for step in (1, 2):
        loop.step(step, batches, objective)
    counted = loop.counter.state_dict()
    # the head's calls are not network evaluations of the budget's networks (its cost is negligible)
    assert {k: v for k, v in counted["forward"].items()} == {k: v[0] for k, v in seen.items() if k != "disc"}
    assert counted["backward"] == {k: v[1] for k, v in seen.items() if k != "disc" and v[1]}
    assert counted["backward"]["teacher"] > 0 and counted["backward"]["generator"] == 2 * 32


def test_adversarial_weight_zero_is_pd_bitwise(teacher_run, tmp_path):  # noqa: F811
    args = ["distill", "--from", str(teacher_run / "teacher"), "--no-progress",
            *_sets(DISTILL + ["distill.start_steps=4", "distill.updates_per_round=10"])]
    _run(*args, "--out", str(tmp_path / "pd"))
    _run(*args, "--out", str(tmp_path / "zero"), "--set", "distill.adversarial_weight=0")
    for m in (2, 1):
        a, b = (load_file(tmp_path / d / "students" / f"student_{m:04d}steps.safetensors") for d in ("pd", "zero"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("method,extra,kill_at,steps", [
    ("dmd", ["distill.target_steps=2", "distill.total_updates=30", "distill.dmd_fake_updates=2"],
     "round01_step00000020", 2),
    ("pd", ["distill.start_steps=2", "distill.updates_per_round=30", "distill.adversarial_weight=0.1"],
     "round01_step00000020", 1)])
def test_players_phase_killed_and_resumed_bitwise(teacher_run, tmp_path, method, extra, kill_at, steps):  # noqa: F811
    """dmd: generator, fake score and head, killed mid-phase; adversarial pd: student and head, killed mid-round. Both end bitwise equal (every weight, the loss history and the counted budget)."""
    args = ["distill", "--from", str(teacher_run / "teacher"), "--method", method, "--no-progress",
            *_sets(DISTILL + extra)]
    _run(*args, "--out", str(tmp_path / "ref"))
    out = tmp_path / "killed"
    name = f"student_{steps:04d}steps"
    kill_after([*args, "--out", str(out)], kill_at, out / "students" / f"{name}.json", env=ENV)
    partial = json.loads(next((out / "students" / "checkpoints").glob(kill_at + ".json")).read_text())
    assert set(partial["players"]) == ({"generator", "fake", "disc"} if method == "dmd" else {"student", "disc"})
    _run("distill", "--resume", "--out", str(out), "--no-progress")
    ref, got = (load_file(d / "students" / f"{name}.safetensors") for d in (tmp_path / "ref", out))
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)
    records = [json.loads((d / "students" / f"{name}.json").read_text()) for d in (tmp_path / "ref", out)]
    assert records[0]["loss_history"] == records[1]["loss_history"]
    assert records[0]["budget"] == records[1]["budget"] and records[0]["budget"]["forward_equivalent"] > 0
    if method == "dmd":  # the 2-step generator also samples at 1 step, on its own grid (the report lists both)
        from progdistill.evaluation.methods import method_students

        stem = tmp_path / "ref" / "students" / name
        assert records[0]["sampling"]["counts"] == [1, 2]
        assert method_students(tmp_path / "ref") == ("ddim", {1: stem, 2: stem})


def test_a_non_finite_loss_of_any_player_stops_the_phase():
    from progdistill.training.loop import NonFiniteLossError

    teacher = _mlp(0).requires_grad_(False)
    objective, student = _objective(teacher), _mlp(1)
    real_loss = objective.loss
    objective.loss = lambda name, *a: real_loss(name, *a) * (float("nan") if name == "disc" else 1.0)
    loop = _loop(objective, student)
    loop.total = 10
    loop.step(1, _batches(), objective)
    with pytest.raises(NonFiniteLossError, match="player disc"):
        loop.flush()
