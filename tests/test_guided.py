"""Guided distillation (Meng et al. 2023): label-dropout teachers, guided sampling, the w-conditioned student's
initialisation, the stage-1 and stage-2 targets, the stochastic sampler, exact resume and the refusals."""

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from progdistill.build import build_denoiser, denoiser_from_spec, load_denoiser
from progdistill.cli import main
from kill_at import kill_after
from progdistill.config import ConfigError, load_config
from progdistill.diffusion.dpm_solver import dpm_solver_pp_2m
from progdistill.diffusion.samplers import ancestral, ddim_step, stochastic, stochastic_step
from progdistill.diffusion.schedules import CosineSchedule, alpha_sigma, step_grid
from progdistill.guidance import GuidanceError, guided
from progdistill.nets.spec import ModelSpec, SpecError, guidance_block
from progdistill.sampling import generate
from progdistill.training.objectives import DistillObjective, GuidedObjective, TeacherObjective

TOY = ['data.name="ring_classes"', "model.hidden=32", "model.depth=2", "model.emb_dim=16"]


def _mlp(label_dropout=0.1, seed=0, classes=8):
    """A class-conditional MLP denoiser (with the null class when label_dropout > 0) whose every parameter is
    random, so outputs depend on z, the noise level, the label and (once conditioned) w."""
    cfg = load_config("toy2d", TOY + [f"train.label_dropout={label_dropout}"])
    torch.manual_seed(seed)
    d = build_denoiser(cfg, (2,), classes)
    _randomise(d)
    return d.eval()


def _randomise(module, scale=0.3):
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, scale)


def _w_student(teacher, w_min=0.0, w_max=4.0, class_gate=False):
    student = denoiser_from_spec(replace(teacher.spec, guidance=guidance_block(w_min, w_max, 16,
                                                                               class_gate=class_gate)))
    missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("net.w_embed.") for k in missing)
    return student.eval()


# ------------------------------------------------------------------------------------------ label dropout


def test_label_dropout_replaces_labels_by_the_null_class_at_its_rate():
    x, labels = torch.randn(4000, 2), torch.arange(4000) % 8
    plain = TeacherObjective(CosineSchedule())(x, labels, torch.Generator().manual_seed(0))
    assert plain.inputs == {}  # no dropout: no extra draws, nothing changed for unguided runs
    dropout = TeacherObjective(CosineSchedule(), 0.25, null_label=8)(x, labels, torch.Generator().manual_seed(0))
    assert torch.equal(dropout.z_t, plain.z_t) and torch.equal(dropout.logsnr, plain.logsnr)
    assert torch.equal(dropout.x, x)
    extra = dropout.inputs
    dropped = extra["labels"] == 8
    assert abs(dropped.float().mean().item() - 0.25) < 0.03
    assert torch.equal(extra["labels"][~dropped], labels[~dropped])


def test_label_dropout_needs_labels():
    with pytest.raises(ConfigError, match="ring_classes"):
        load_config("toy2d", ["train.label_dropout=0.1"])  # the plain ring has no classes
    spec = _mlp().spec
    assert spec.null_class and spec.num_classes == 8 and spec.args["num_classes"] == 9  # one more embedding row
    assert ModelSpec.from_dict(spec.to_dict()) == spec


def test_records_without_the_guidance_fields_read_as_before():
    plain = _mlp(label_dropout=0.0).spec
    data = plain.to_dict()
    assert "null_class" not in data and "guidance" not in data  # unguided records are written as before
    assert ModelSpec.from_dict(data) == plain and not plain.null_class and plain.guidance is None
    with pytest.raises(SpecError, match="null_class"):
        ModelSpec.from_dict(data | {"null_class": "yes"})
    with pytest.raises(SpecError, match="w_min <= w_max"):
        ModelSpec.from_dict(data | {"guidance": {"w_min": 4, "w_max": 0, "embed_dim": 16, "embed_scale": 1000}})
    # w_min = w_max: a student for one w only (the single-w comparison of the guided benchmark)
    single = ModelSpec.from_dict(data | {"guidance": {"w_min": 2, "w_max": 2, "embed_dim": 16, "embed_scale": 1000}})
    assert single.w_range == (2.0, 2.0)
    with pytest.raises(ConfigError, match="must not exceed"):
        load_config("toy2d", TOY + ["guided.w_min=3", "guided.w_max=2"])
    assert load_config("toy2d", TOY + ["guided.w_min=2", "guided.w_max=2"]).guided.w_min == 2


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    """A label-dropout teacher on the 8-class ring, trained through the CLI (a few seconds)."""
    out = tmp_path_factory.mktemp("teacher")
    _run("train", "--out", str(out), "--no-progress", *_sets(TEACHER), "--label-dropout", "0.2")
    return out


def test_label_dropout_trains_a_working_unconditional_branch(teacher_run):
    """At high noise x_hat is the mean of what the label allows: the class's ring mode for a label, the centre of
    the ring (the mean over all classes) for the null class."""
    teacher = load_denoiser(teacher_run / "teacher")[0]
    assert teacher.spec.null_class
    z = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    logsnr = torch.full((8,), -6.0)
    angle = 2 * torch.pi * torch.arange(8) / 8
    modes = 0.8 * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    x_cond = teacher(z, logsnr, torch.arange(8))
    x_null = teacher(z, logsnr, torch.full((8,), 8))
    assert torch.equal(torch.cdist(x_cond, modes).argmin(dim=1), torch.arange(8))  # nearest to its own mode
    assert (x_cond - modes).norm(dim=1).max() < 0.4, x_cond
    assert x_null.norm(dim=1).max() < 0.3, x_null  # the ring's centre, 0.8 from every mode
    assert (x_cond - x_null).norm(dim=1).min() > 0.5


# ------------------------------------------------------------------------------------------ guided sampling


@pytest.mark.parametrize("sampler", ["ddim", "ancestral", "dpm_solver"])
def test_guided_teacher_sampler_is_the_combination_of_two_network_calls(sampler):
    teacher, w, steps = _mlp(), 2.5, 6
    schedule, labels = CosineSchedule(), torch.arange(10) % 8
    calls = []
    teacher.net.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    x = generate(teacher, schedule, steps, 10, (2,), sampler=sampler, seed=3, labels=labels, guidance=w,
                 variance="large")
    assert calls == [20] * steps  # both branches in one doubled batch: 2 network evaluations per step

    def by_hand(z, logsnr, lab):  # two separate network calls, combined in x space
        return (1 + w) * teacher(z, logsnr, lab) - w * teacher(z, logsnr, torch.full_like(lab, 8))

    gen = torch.Generator().manual_seed(3)
    z = torch.randn((10, 2), generator=gen)
    grid = step_grid(schedule, steps)
    if sampler == "ddim":
        for i in range(steps):
            x_hat = by_hand(z, grid[i].expand(10), labels).clamp(-1, 1)
            z = x_hat if i == steps - 1 else ddim_step(z, x_hat, grid[i], grid[i + 1])
        expected = z
    elif sampler == "ancestral":
        expected = ancestral(by_hand, z, grid, labels=labels, clip=True, variance="large", generator=gen)
    else:
        expected = dpm_solver_pp_2m(by_hand, z, grid, labels=labels, clip=True)
    torch.testing.assert_close(x, expected, rtol=1e-5, atol=1e-6)
    unguided = generate(teacher, schedule, steps, 10, (2,), sampler=sampler, seed=3, labels=labels,
                        variance="large")
    assert (x - unguided).abs().max() > 1e-2  # guidance changes the samples
    at_zero = generate(teacher, schedule, steps, 10, (2,), sampler=sampler, seed=3, labels=labels, guidance=0.0,
                       variance="large")
    torch.testing.assert_close(at_zero, unguided, rtol=1e-5, atol=1e-6)  # w = 0: the conditional model


# ------------------------------------------------------------------------------------------ stage 1


@pytest.mark.parametrize("class_gate", [False, True])
def test_zero_initialised_w_embedding_makes_the_student_its_teacher(class_gate):
    teacher = _mlp()
    student = _w_student(teacher, class_gate=class_gate)
    z, logsnr, labels = torch.randn(6, 2), torch.linspace(-8, 8, 6), torch.tensor([0, 1, 2, 3, 8, 5])
    for w in (0.0, 1.0, torch.linspace(0, 4, 6)):
        assert torch.equal(student(z, logsnr, labels, w=w), teacher(z, logsnr, labels))
    # The w layers are trainable: the zero output layers get a gradient, after which w matters.
    student.train()
    student(z, logsnr, labels, w=torch.linspace(0, 4, 6)).pow(2).sum().backward()
    assert student.net.w_embed.mlp[-1].weight.grad.abs().max() > 0
    if class_gate:
        assert student.net.w_embed.gate[-1].weight.grad.abs().max() > 0


def test_class_gate_scales_the_class_offset_from_the_null_class():
    """guided.class_gate: the label embedding becomes c + gamma(w) (c - null); the null class itself is unchanged."""
    teacher = _mlp()
    student = _w_student(teacher, class_gate=True)
    emb = student.net.w_embed
    with torch.no_grad():
        emb.gate[-1].weight.normal_(0, 0.2)
        emb.gate[-1].bias.normal_(0, 0.2)
    d = emb.gate[-1].out_features
    w, c, null = torch.tensor([0.0, 1.5, 4.0]), torch.randn(3, d), torch.randn(d)
    gamma = emb.gate(emb.embed(w))
    torch.testing.assert_close(emb.gate_classes(w, c, null), c + gamma * (c - null))
    torch.testing.assert_close(emb.gate_classes(w, null.expand(3, d), null), null.expand(3, d))
    z, logsnr = torch.randn(3, 2), torch.zeros(3)
    assert not torch.equal(student(z, logsnr, torch.tensor([1, 2, 3]), w=0.0),
                           student(z, logsnr, torch.tensor([1, 2, 3]), w=4.0))
    # Recorded in the model block only when on, so that the records of networks without it read as before.
    assert student.spec.guidance["class_gate"] is True and "class_gate" not in _w_student(teacher).spec.guidance
    assert ModelSpec.from_dict(student.spec.to_dict()) == student.spec
    with pytest.raises(SpecError, match="class_gate must be true or false"):
        ModelSpec.from_dict(student.spec.to_dict() | {"guidance": student.spec.guidance | {"class_gate": 1}})
    with pytest.raises(SpecError, match="no null class"):  # the gate is anchored at the null class's embedding
        denoiser_from_spec(replace(_mlp(label_dropout=0.0).spec, guidance=guidance_block(0, 4, 16, class_gate=True)))


@pytest.mark.parametrize("class_gate", [False, True])
def test_zero_initialised_w_embedding_on_the_unet(class_gate):
    cfg = load_config("fashion_mnist", ["train.label_dropout=0.1"])
    torch.manual_seed(0)
    teacher = build_denoiser(cfg, (1, 28, 28), 10).eval()
    with torch.no_grad():
        teacher.net.unet.conv_out.weight.normal_(0, 0.05)
    student = _w_student(teacher, class_gate=class_gate)
    extra = {k for k in student.state_dict() if k.startswith("net.w_embed.")}
    assert set(student.state_dict()) - extra == set(teacher.state_dict())  # the UNet2DModel part is the teacher's
    z, logsnr, labels = torch.randn(3, 1, 28, 28), torch.tensor([-5.0, 0.0, 5.0]), torch.tensor([0, 10, 4])
    assert torch.equal(student(z, logsnr, labels, w=torch.tensor([0.0, 2.0, 4.0])), teacher(z, logsnr, labels))
    with torch.no_grad():
        layer = student.net.w_embed.gate[-1] if class_gate else student.net.w_embed.mlp[-1]
        layer.weight.normal_(0, 0.1)
    assert not torch.equal(student(z, logsnr, labels, w=4.0), student(z, logsnr, labels, w=0.0))
    with pytest.raises(ValueError, match="pass w"):
        student(z, logsnr, labels)


def _stage1_draws(n, seed, schedule, w_min, w_max):
    """The objective's draws, redone by hand: t, the noise, then w, all for the whole batch."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.rand(n, generator=gen, dtype=torch.float64)
    eps = torch.randn((n, 2), generator=gen)
    w = (w_min + (w_max - w_min) * torch.rand(n, generator=gen, dtype=torch.float64)).float()
    return schedule(t).float(), eps, w


def test_stage1_target_is_the_guided_teacher_x_hat():
    teacher, schedule = _mlp(), CosineSchedule()
    x, labels = torch.rand(12, 2) * 2 - 1, torch.arange(12) % 8
    objective = GuidedObjective(teacher, schedule, 0.5, 3.0, null_label=8)
    out = objective(x, labels, torch.Generator().manual_seed(5))
    z, target, extra = out.z_t, out.x, out.inputs
    logsnr_ref, eps, w = _stage1_draws(12, 5, schedule, 0.5, 3.0)
    alpha, sigma = alpha_sigma(logsnr_ref[:, None])
    z_ref = alpha * x + sigma * eps
    direct = (1 + w[:, None]) * teacher(z_ref, logsnr_ref, labels) - w[:, None] * teacher(z_ref, logsnr_ref,
                                                                                          torch.full_like(labels, 8))
    torch.testing.assert_close(z, z_ref)
    torch.testing.assert_close(extra["w"], w)
    torch.testing.assert_close(target, direct, rtol=1e-5, atol=1e-6)
    assert 0.5 <= w.min() and w.max() <= 3.0 and w.std() > 0.3  # per example
    # Two processes, each with half the batch, draw the same noise and w per example as one process.
    halves = [objective(x[r * 6:(r + 1) * 6], labels[r * 6:(r + 1) * 6], torch.Generator().manual_seed(5), (r, 2))
              for r in range(2)]
    torch.testing.assert_close(torch.cat([h.x for h in halves]), target)
    torch.testing.assert_close(torch.cat([h.inputs["w"] for h in halves]), extra["w"])


def test_stage1_target_at_w_zero_is_the_conditional_teacher():
    teacher = _mlp()
    x, labels = torch.rand(10, 2) * 2 - 1, torch.arange(10) % 8
    out = GuidedObjective(teacher, CosineSchedule(), 0.0, 0.0, null_label=8)(
        x, labels, torch.Generator().manual_seed(1))
    assert torch.equal(out.inputs["w"], torch.zeros(10))
    torch.testing.assert_close(out.x, teacher(out.z_t, out.logsnr, labels), rtol=0, atol=1e-7)


# ------------------------------------------------------------------------------------------ stage 2


def test_stage2_target_lands_on_two_guided_teacher_steps_at_the_same_w():
    torch.manual_seed(0)
    teacher = _w_student(_mlp())
    _randomise(teacher.net.w_embed)  # a trained-looking w-conditioned teacher: w matters
    schedule, m, n = CosineSchedule(), 4, 64
    x, labels = torch.rand(n, 2) * 2 - 1, torch.arange(n) % 8
    out = DistillObjective(teacher, schedule, m, w_range=(0.0, 4.0))(x, labels, torch.Generator().manual_seed(2))
    z_t, logsnr_t, x_tilde, w = out.z_t, out.logsnr, out.x, out.inputs["w"]
    assert w.min() >= 0 and w.max() <= 4 and w.std() > 0.5
    gen = torch.Generator().manual_seed(2)  # the objective's draws: i, the noise, then w
    i = torch.randint(1, m + 1, (n,), generator=gen)
    t = i.double() / m
    lt, ltp, ltpp = (schedule(s).float() for s in (t, t - 0.5 / m, t - 1.0 / m))
    assert torch.equal(lt, logsnr_t)

    def two_steps(w_):
        x1 = teacher(z_t, lt, labels, w=w_)
        z_tp = ddim_step(z_t, x1, lt, ltp)
        x2 = teacher(z_tp, ltp, labels, w=w_)
        return ddim_step(z_tp, x2, ltp, ltpp), x2

    z_tpp, x_mid = two_steps(w)
    inner = i > 1
    one_step = ddim_step(z_t, x_tilde, lt, ltpp)
    torch.testing.assert_close(one_step[inner], z_tpp[inner], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(x_tilde[~inner], x_mid[~inner])  # the last step's target: x_hat at the midpoint
    other, _ = two_steps(4.0 - w)  # at another w the teacher lands elsewhere
    assert (other[inner] - z_tpp[inner]).abs().max() > 1e-3


# ------------------------------------------------------------------------------------------ stochastic sampler


def test_stochastic_step_adds_the_forward_noise_of_its_formula():
    schedule = CosineSchedule()
    lt, ls, lk = (schedule(torch.tensor(s, dtype=torch.float64)).float() for s in (0.75, 0.5, 0.25))
    z_t, x_hat = torch.randn(1, 3).expand(200_000, 3), torch.rand(1, 3).expand(200_000, 3)
    noise = torch.randn(200_000, 3, generator=torch.Generator().manual_seed(0))
    z_s = stochastic_step(z_t, x_hat, lt, lk, ls, noise)
    alpha_k, sigma_k = alpha_sigma(lk)
    alpha_s, sigma_s = alpha_sigma(ls)
    formula = (1 - torch.exp(ls - lk)) * sigma_s**2
    # The forward process from k to s: z_s's variance given z_k is sigma_s^2 - (alpha_s / alpha_k)^2 sigma_k^2.
    torch.testing.assert_close(formula, sigma_s**2 - (alpha_s / alpha_k) ** 2 * sigma_k**2, rtol=1e-5, atol=1e-7)
    var = z_s.var(dim=0)
    assert ((var / formula) - 1).abs().max() < 0.02
    mean = (alpha_s / alpha_k) * ddim_step(z_t[:1], x_hat[:1], lt, lk)
    assert (z_s.mean(dim=0) - mean[0]).abs().max() < 4 * formula.sqrt() / 200_000**0.5


def test_stochastic_sampler_runs_one_evaluation_per_step_and_ends_deterministically():
    teacher = _w_student(_mlp())
    calls = []
    teacher.net.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    labels = torch.arange(5)
    x = generate(teacher, CosineSchedule(), 4, 5, (2,), sampler="stochastic", seed=1, labels=labels, guidance=1.0)
    assert calls == [5] * 4  # a student: one network evaluation per step
    gen = torch.Generator().manual_seed(1)
    z = torch.randn((5, 2), generator=gen)
    grid = step_grid(CosineSchedule(), 4)
    fixed = guided(teacher, 1.0)
    torch.testing.assert_close(x, stochastic(fixed, z, grid, labels=labels, clip=True, generator=gen))
    # The generator was drawn from for the noise of every step but the last: 1 + 3 draws of (5, 2) after z.
    gen2 = torch.Generator().manual_seed(1)
    for _ in range(4):
        torch.randn((5, 2), generator=gen2)
    assert torch.equal(gen.get_state(), gen2.get_state())


# ------------------------------------------------------------------------------------------ refusals


def test_guidance_refused_where_the_model_cannot_give_it():
    with pytest.raises(GuidanceError, match="unconditional"):
        guided(_mlp(label_dropout=0.0, classes=0), 1.0)
    with pytest.raises(GuidanceError, match="without label dropout"):
        guided(_mlp(label_dropout=0.0), 1.0)
    student = _w_student(_mlp(), 0.0, 3.0)
    with pytest.raises(GuidanceError, match=r"\[0, 3\]"):
        generate(student, CosineSchedule(), 2, 4, (2,), labels=torch.arange(4), guidance=3.5)
    with pytest.raises(GuidanceError, match="give one"):
        generate(student, CosineSchedule(), 2, 4, (2,), labels=torch.arange(4))


# ------------------------------------------------------------------------------------------ CLI and resume

TEACHER = TOY + ["data.size=2000", "train.batch_size=64", "train.steps=600", "train.checkpoint_every=300",
                 "train.warmup=20", "train.lr=3e-3", "train.ema_decay=0.9"]
DISTILL = ["distill.start_steps=4", "distill.batch_size=64", "distill.updates_per_round=150",
           "distill.final_updates_per_round=150", "distill.checkpoint_every=25", "distill.log_samples=4",
           "guided.checkpoint_every=25"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from progdistill.cli import main; sys.exit(main())", *args]


def _run(*args: str) -> None:
    subprocess.run(_cli(*args), check=True, env=ENV, capture_output=True, timeout=600)


def _sets(items: list[str]) -> list[str]:
    return [x for s in items for x in ("--set", s)]


def _same_tensors(a: Path, b: Path) -> None:
    ta, tb = load_file(a), load_file(b)
    assert ta.keys() == tb.keys()
    for key in ta:
        assert torch.equal(ta[key], tb[key]), key


def test_guided_distillation_resumes_exactly_after_kills_in_stage1_and_stage2(teacher_run, tmp_path, capsys):
    # Shorter than DISTILL's rounds: what is checked is exactness across two kills, not the students' quality.
    args = ["distill", "--from", str(teacher_run / "teacher"), "--guided", "--w-max", "3",
            "--stage1-updates", "75", "--no-progress",
            *_sets(DISTILL + ["distill.updates_per_round=50", "distill.final_updates_per_round=50"])]
    ref = tmp_path / "ref"
    _run(*args, "--out", str(ref))
    stage1 = json.loads((ref / "stage1.json").read_text())
    assert stage1["kind"] == "guided_stage1" and stage1["model"]["guidance"]["w_max"] == 3.0
    assert stage1["model"]["null_class"] and not list((ref / "checkpoints").glob("*.json"))
    out = tmp_path / "run"
    kill_after([*args, "--out", str(out)], "stage1_step00000050", env=ENV)
    assert not (out / "stage1.json").exists()
    kill_after(["distill", "--resume", "--out", str(out), "--no-progress"], "round02_step00000025", env=ENV)
    assert (out / "students" / "student_0002steps.json").exists()
    assert not (out / "students" / "student_0001steps.json").exists()
    _run("distill", "--resume", "--out", str(out), "--no-progress")
    _same_tensors(out / "stage1.safetensors", ref / "stage1.safetensors")
    for m in (2, 1):
        name = f"student_{m:04d}steps.safetensors"
        _same_tensors(out / "students" / name, ref / "students" / name)
    # The students sample at any w in the trained range, one evaluation per step; outside it they refuse.
    student = ref / "students" / "student_0001steps"
    assert main(["sample", "--ckpt", str(student), "--guidance", "2", "--num", "8", "--out",
                 str(tmp_path / "s.pt"), "--no-progress"]) == 0
    assert torch.load(tmp_path / "s.pt")["samples"].shape == (8, 2)
    # dmd trains generators without a w input: from a w-conditioned student it is refused, naming what to do
    assert main(["distill", "--from", str(student), "--method", "dmd", "--out", str(tmp_path / "dmd"),
                 "--no-progress"]) == 2
    assert "w-conditioned" in capsys.readouterr().err


def test_dmd_guided_real_score_on_a_label_dropout_teacher(teacher_run, tmp_path):
    """distill.dmd_guidance = w: the real score is the label-dropout teacher's classifier-free guided x_hat (two
    teacher calls per real-score evaluation, counted), a fixed-w generator without a w input."""
    out = tmp_path / "dmd"
    _run("distill", "--from", str(teacher_run / "teacher"), "--method", "dmd", "--out", str(out), "--no-progress",
         *_sets(DISTILL + ["distill.target_steps=1", "distill.total_updates=4", "distill.dmd_fake_updates=1",
                           "distill.dmd_guidance=2"]))
    record = json.loads((out / "students" / "student_0001steps.json").read_text())
    assert record["model"].get("guidance") is None and record["config"]["distill"]["dmd_guidance"] == 2.0
    unguided = tmp_path / "plain"
    _run("distill", "--from", str(teacher_run / "teacher"), "--method", "dmd", "--out", str(unguided),
         "--no-progress", *_sets(DISTILL + ["distill.target_steps=1", "distill.total_updates=4",
                                            "distill.dmd_fake_updates=1"]))
    plain = json.loads((unguided / "students" / "student_0001steps.json").read_text())
    # the generator updates' real-score calls: 4 updates x the batch, once unguided, twice guided
    batch = record["budget"]["images_seen"] // 4
    assert record["budget"]["evals"]["teacher"]["forward"] - plain["budget"]["evals"]["teacher"]["forward"] == 4 * batch


def test_cli_refusals(teacher_run, tmp_path, capsys):
    assert main(["sample", "--ckpt", str(teacher_run / "teacher"), "--guidance", "1", "--num", "8", "--steps", "8",
                 "--out", str(tmp_path / "t.pt"), "--no-progress"]) == 0  # a label-dropout teacher guides
    plain = tmp_path / "plain"
    _run("train", "--out", str(plain), "--no-progress",
         *_sets(TOY + ["data.size=500", "train.batch_size=50", "train.steps=5"]))
    assert main(["distill", "--from", str(plain / "teacher"), "--guided", "--no-progress"]) == 2
    assert "without label dropout" in capsys.readouterr().err
    assert not (plain / "guided").exists() or not any((plain / "guided").rglob("*.json"))
    assert main(["sample", "--ckpt", str(plain / "teacher"), "--guidance", "1", "--out", str(tmp_path / "x.pt")]) == 2
    assert "without label dropout" in capsys.readouterr().err
    assert main(["distill", "--from", str(plain / "teacher"), "--w-max", "3"]) == 2
    assert "add --guided" in capsys.readouterr().err


def test_stage1_options_reach_the_model_and_the_optimizer():
    from progdistill.training.guided import stage1_settings

    cfg = load_config("toy2d", TOY)
    assert cfg.guided.stage1_lr == 0 and stage1_settings(cfg).lr == cfg.distill.optim.lr  # 0: the [distill] rate
    fast = load_config("toy2d", TOY + ["guided.stage1_lr=1e-3"])
    assert stage1_settings(fast).lr == 1e-3 and stage1_settings(fast).total_steps == fast.guided.stage1_updates
    preset = load_config("fashion_mnist", []).guided  # measured in BENCHMARKS.md, "Guided stage 1"
    assert preset.stage1_lr == 1e-3 and preset.class_gate
    for bad in ("guided.stage1_lr=-1", "guided.embed_scale=0"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            load_config("fashion_mnist", [bad])
    block = guidance_block(0, 4, 16, 2.5, class_gate=True)
    assert block["embed_scale"] == 2.5 and block["class_gate"] is True


def test_w_margin_widens_the_trained_w_below_w_min_in_both_stages(teacher_run, tmp_path, monkeypatch):
    """guided.w_margin = m: stage 1 and every stage-2 round draw w from [w_min - m, w_max] (the teacher guided at
    w < w_min, negative w included); the model's range, and so sampling, stays [w_min, w_max]."""
    from progdistill.training import guided as stage1_module, methods as methods_module
    from progdistill.training.objectives import training_w_range

    assert training_w_range(1.0, 3.0, 1.5) == (-0.5, 3.0)
    assert training_w_range(1.0, 3.0, 0.0) == (1.0, 3.0)
    assert training_w_range(2.0, 2.0, 1.0) == (2.0, 2.0)  # a single-w student is trained at its w only
    for bad in ("-0.5", "nan"):
        with pytest.raises(ConfigError, match="guided.w_margin"):
            load_config("toy2d", TOY + [f"guided.w_margin={bad}"])
    assert load_config("toy2d", TOY).guided.w_margin == 0  # the paper's: [w_min, w_max]
    assert load_config("fashion_mnist", []).guided.w_margin == 1.0  # measured in BENCHMARKS.md, "w margin"

    drawn = {"stage1": [], "stage2": []}

    def recording(cls, key):
        class Recording(cls):
            def __call__(self, *args, **kwargs):
                out = super().__call__(*args, **kwargs)
                drawn[key].append(out.inputs["w"])
                return out
        return Recording

    monkeypatch.setattr(stage1_module, "GuidedObjective", recording(GuidedObjective, "stage1"))
    monkeypatch.setattr(methods_module, "DistillObjective", recording(DistillObjective, "stage2"))
    out = tmp_path / "g"
    assert main(["distill", "--from", str(teacher_run / "teacher"), "--guided", "--w-min", "1", "--w-max", "3",
                 "--w-margin", "1.5", "--stage1-updates", "30", "--out", str(out), "--no-progress",
                 *_sets(DISTILL + ["distill.updates_per_round=20", "distill.final_updates_per_round=20"])]) == 0
    for key in drawn:
        w = torch.cat(drawn[key])
        assert -0.5 <= w.min() < 0 and 2.5 < w.max() <= 3.0, key  # below w_min = 1, down to -0.5
        assert (w < 1).float().mean() > 0.2, key  # about 1.5 / 3.5 of the draws
    stage1 = json.loads((out / "stage1.json").read_text())
    assert stage1["model"]["guidance"]["w_min"] == 1.0 and stage1["config"]["guided"]["w_margin"] == 1.5
    student = out / "students" / "student_0001steps"
    assert main(["sample", "--ckpt", str(student), "--guidance", "0.5", "--num", "4",
                 "--out", str(tmp_path / "s.pt"), "--no-progress"]) == 2  # trained on it, still outside the range
    assert main(["distill", "--from", str(teacher_run / "teacher"), "--w-margin", "1"]) == 2  # needs --guided
