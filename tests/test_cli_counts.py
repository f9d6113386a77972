"""Integer options of the command line: 0 and negative counts are errors that name the option (never a silent
default); a student sampled off its own step count or sampler says so. And the one sampler registry behind
generate, the config and the CLI."""

from __future__ import annotations

import pytest
import torch

from progdistill.cli import build_parser, main
from progdistill.config import ConfigError, load_config
from progdistill.diffusion.dpm_solver import dpm_solver_pp_2m
from progdistill.diffusion.registry import SAMPLERS, get_sampler
from progdistill.diffusion.samplers import ancestral, consistency, ddim, stochastic
from progdistill.diffusion.schedules import CosineSchedule, step_grid
from progdistill.sampling import generate
from progdistill.training.rounds import distill
from progdistill.training.teacher import train_teacher

TINY = ["model.hidden=16", "model.depth=1", "model.emb_dim=8", "data.size=512", "train.steps=4",
        "train.batch_size=32", "train.warmup=1", "train.checkpoint_every=4", "distill.start_steps=4",
        "distill.target_steps=2", "distill.updates_per_round=2", "distill.final_updates_per_round=2",
        "distill.batch_size=32", "distill.checkpoint_every=0", "distill.log_samples=0"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("run")
    cfg = load_config("toy2d", TINY)
    stem = train_teacher(cfg, out, progress=False)
    (student,) = distill(stem, out, cfg, progress=False)
    return out, stem, student


@pytest.mark.parametrize("args, message", [
    (["--steps", "0"], "--steps must be >= 1, got 0 (leave it out for the default)"),
    (["--steps", "-2"], "--steps must be >= 1, got -2"),
    (["--num", "0"], "--num must be >= 1, got 0"),
])
def test_sample_rejects_bad_counts(tiny_run, tmp_path, capsys, args, message):
    out, stem, student = tiny_run
    assert main(["sample", "--ckpt", str(stem), "--out", str(tmp_path / "s.pt"), "--no-progress", *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "s.pt").exists()


def test_teacher_takes_any_step_count(tiny_run, tmp_path, capsys):
    out, stem, student = tiny_run
    assert main(["sample", "--ckpt", str(stem), "--steps", "3", "--num", "8", "--out", str(tmp_path / "s.pt"),
                 "--no-progress"]) == 0
    assert "warning" not in capsys.readouterr().err
    assert torch.load(tmp_path / "s.pt")["samples"].shape == (8, 2)


@pytest.mark.parametrize("args, warning", [
    ([], None),
    (["--steps", "2"], None),
    (["--steps", "4"], "distilled for 2 DDIM steps; sampling it with 4"),
    (["--sampler", "ancestral"], "distilled for the ddim sampler, not ancestral"),
])
def test_student_off_its_own_count_warns(tiny_run, tmp_path, capsys, args, warning):
    out, stem, student = tiny_run
    assert main(["sample", "--ckpt", str(student), "--num", "8", "--out", str(tmp_path / "s.pt"), "--no-progress",
                 *args]) == 0
    captured = capsys.readouterr()
    assert (warning in captured.err) if warning else "warning" not in captured.err
    assert f"({args[1] if args and args[0] == '--sampler' else 'ddim'}, " \
           f"{args[1] if args and args[0] == '--steps' else 2} steps)" in captured.out


@pytest.mark.parametrize("args, message", [
    (["--num", "0"], "--num must be >= 1, got 0"),
    (["--max-baseline-steps", "0"], "--max-baseline-steps must be >= 1, got 0"),
    (["--steps", "0,4"], "--steps values must be >= 1"),
    (["--steps", ""], "--steps must be comma-separated integers"),
])
def test_evaluate_rejects_bad_counts(tiny_run, tmp_path, capsys, args, message):
    out, stem, student = tiny_run
    assert main(["evaluate", "--run", str(out), "--out", str(tmp_path / "e"), "--no-progress", *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "e").exists()


@pytest.mark.parametrize("args, message", [
    (["--steps", "0"], "--steps must be >= 1, got 0"),
    (["--train-timesteps", "-1"], "--train-timesteps must be >= 1, got -1"),
])
def test_export_rejects_bad_counts(tiny_run, tmp_path, capsys, args, message):
    out, stem, student = tiny_run
    assert main(["export-diffusers", "--ckpt", str(student), "--out", str(tmp_path / "x"), *args]) == 2
    assert message in capsys.readouterr().err


def test_demo_rejects_zero_samples(tmp_path, capsys):
    assert main(["demo", "--data", "ring", "--quick", "--num", "0", "--out", str(tmp_path / "d")]) == 2
    assert "--num must be >= 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


# ------------------------------------------------------------------------------------------ the sampler registry


def test_config_and_cli_take_their_choices_from_the_registry(capsys):
    assert set(SAMPLERS) == {"ddim", "ancestral", "dpm_solver", "stochastic", "consistency"}
    with pytest.raises(ValueError, match="unknown sampler 'euler': choose one of ddim, ancestral, dpm_solver, "
                       "stochastic, consistency"):
        get_sampler("euler")
    with pytest.raises(ConfigError, match="unknown config key in \\[sample\\]: sampler"):  # removed: nothing read it
        load_config("toy2d", ['sample.sampler="ddim"'])
    sample = build_parser()._subparsers._group_actions[0].choices["sample"]
    (action,) = [a for a in sample._actions if a.dest == "sampler"]
    assert list(action.choices) == list(SAMPLERS)
    # evaluate's report names map onto registry samplers (diffusers' own DDIM is the one outside it)
    from progdistill.evaluation.rows import DIFFUSERS_SAMPLER, ROWS

    assert {row.sampler for row in ROWS.values()} - {DIFFUSERS_SAMPLER} <= set(SAMPLERS)


@pytest.mark.parametrize("clip", [False, True])
def test_generate_runs_each_registered_sampler(clip):
    torch.manual_seed(0)
    w = torch.randn(2, 2)

    def denoiser(z, logsnr, labels=None):  # smooth, label- and noise-level-dependent, so clipping matters
        return 3 * torch.tanh(z @ w) * torch.sigmoid(logsnr)[:, None] + (0 if labels is None else labels[:, None])

    schedule, labels = CosineSchedule(), torch.tensor([0, 1, 0, 1, 0])
    grid = step_grid(schedule, 5)
    z = torch.randn((5, 2), generator=torch.Generator().manual_seed(3))
    direct = {
        "ddim": ddim(denoiser, z, grid, labels=labels, clip=clip),
        "dpm_solver": dpm_solver_pp_2m(denoiser, z, grid, labels=labels, clip=clip),
    }
    for name in SAMPLERS:
        x = generate(denoiser, schedule, 5, 5, (2,), sampler=name, variance="large", clip=clip, seed=3, labels=labels)
        if name in ("ancestral", "stochastic", "consistency"):  # the generator drew z first, then per-step noise
            gen = torch.Generator().manual_seed(3)
            z0 = torch.randn((5, 2), generator=gen)
            direct[name] = (ancestral(denoiser, z0, grid, labels=labels, clip=clip, variance="large", generator=gen)
                            if name == "ancestral" else
                            stochastic(denoiser, z0, grid, labels=labels, clip=clip, generator=gen)
                            if name == "stochastic" else
                            consistency(denoiser, z0, grid, labels=labels, clip=clip, generator=gen))
        torch.testing.assert_close(x, direct[name])
    assert not torch.equal(direct["ddim"], direct["dpm_solver"])
    with pytest.raises(ValueError, match="unknown sampler 'euler': choose one of ddim, ancestral, dpm_solver"):
        generate(denoiser, schedule, 5, 5, (2,), sampler="euler")
    assert not torch.equal(direct["stochastic"], direct["ddim"])
