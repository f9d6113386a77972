"""diffusers interop with small, locally made models (nothing is downloaded): export to a pipeline folder that stock
diffusers loads and runs to the same images as our sampler; import of a diffusers UNet2DModel + scheduler as a
teacher on its own discrete schedule, and one distillation round from it."""

import json
from pathlib import Path

import pytest
import torch
from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler, DiffusionPipeline, UNet2DModel

from progdistill.build import build_denoiser, load_denoiser, model_record, schedule_of
from progdistill.cli import main
from progdistill.config import ConfigError, load_config
from progdistill.diffusion.schedules import DiscreteSchedule, ddpm_alphas_cumprod, step_grid
from progdistill.sampling import generate
from progdistill.checkpoint import save_checkpoint

from conftest import write_fashion

SHAPE = (1, 28, 28)


def _student(tmp: Path, param: str, num_classes: int, steps: int, seed: int = 0) -> tuple[Path, object]:
    """A student checkpoint of the small U-Net with a randomised (not zero) output layer, so outputs vary."""
    cfg = load_config("fashion_mnist", [f"model.parameterization={param}"])
    torch.manual_seed(seed)
    d = build_denoiser(cfg, SHAPE, num_classes)
    with torch.no_grad():
        for p in d.net.unet.conv_out.parameters():
            p.normal_(0, 0.05)
    stem = save_checkpoint(tmp / f"student_{param}_{num_classes}_{steps}", {"model": d}, {
        "kind": "student", "config": cfg.to_dict(), **model_record(d.spec, cfg, steps),
        "sampling_weights": "model", "sampling_steps": steps, "round": 1})
    return stem, cfg


def _as_images(x: torch.Tensor):
    """Our samples in [-1, 1] as the pipelines' output_type="np" arrays."""
    return (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("param,num_classes,clip", [
    ("v", 0, True), ("v", 0, False), ("x", 0, True), ("eps", 0, True), ("both", 0, True),
    ("v", 10, True), ("both", 10, True),
])
def test_export_matches_our_sampler(tmp_path, param, num_classes, clip):
    for steps in (1, 2, 4, 8):
        stem, cfg = _student(tmp_path, param, num_classes, steps)
        out = tmp_path / f"export_{steps}"
        args = ["export-diffusers", "--ckpt", str(stem), "--out", str(out)] + ([] if clip else ["--no-clip"])
        assert main(args) == 0
        denoiser, _, _ = load_denoiser(stem)
        labels = torch.tensor([0, 3, 7, 9]) if num_classes else None
        ours = generate(denoiser, schedule_of(cfg), steps, 4, SHAPE, seed=11, labels=labels, clip=clip)
        remote = num_classes > 0 or param == "both"
        index = json.loads((out / "model_index.json").read_text())
        if remote:
            pipe = DiffusionPipeline.from_pretrained(out, trust_remote_code=True)
        else:
            assert index["_class_name"] == "DDIMPipeline" and index["unet"] == ["diffusers", "UNet2DModel"]
            pipe = DDIMPipeline.from_pretrained(out)
        assert isinstance(pipe.scheduler, DDIMScheduler)
        pipe.set_progress_bar_config(disable=True)
        gen = torch.Generator().manual_seed(11)
        if num_classes:
            images = pipe(class_labels=labels, generator=gen, num_inference_steps=steps, output_type="np").images
        else:
            images = pipe(batch_size=4, generator=gen, num_inference_steps=steps, output_type="np",
                          use_clipped_model_output=True).images
        expected = _as_images(ours)
        assert expected.std() > 0.05  # the comparison is not between constant images
        assert abs(images - expected).max() < 1e-4, (param, num_classes, steps)


def test_export_refuses_bad_input(tmp_path, capsys):
    cfg = load_config("toy2d")
    d = build_denoiser(cfg, (2,))
    stem = save_checkpoint(tmp_path / "mlp", {"model": d}, {
        "kind": "teacher", "config": cfg.to_dict(), **model_record(d.spec, cfg, 8), "sampling_weights": "model"})
    assert main(["export-diffusers", "--ckpt", str(stem), "--out", str(tmp_path / "e")]) == 2
    assert "needs an image model" in capsys.readouterr().err
    student, _ = _student(tmp_path, "v", 0, 4)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    assert main(["export-diffusers", "--ckpt", str(student), "--out", str(tmp_path / "full")]) == 2
    assert (tmp_path / "full" / "keep.txt").read_text() == "x"
    assert main(["export-diffusers", "--ckpt", str(student), "--out", str(tmp_path / "e3"),
                 "--train-timesteps", "1001"]) == 2
    assert "multiple of the step count" in capsys.readouterr().err
    assert main(["export-diffusers", "--ckpt", str(tmp_path / "missing"), "--out", str(tmp_path / "e4")]) == 2


def test_discrete_schedule_knots_and_inverse():
    abar = ddpm_alphas_cumprod(1000, "linear", 1e-4, 0.02)
    sch = DiscreteSchedule(abar)
    j = torch.tensor([0, 1, 124, 499, 999])
    lam = sch((j + 1).double() / 1000)
    assert torch.allclose(lam, (abar[j] / (1 - abar[j])).log())
    grid = step_grid(sch, 8)  # float32, as the samplers use it
    assert sch.timestep(grid[:-1]).tolist() == [999.0, 874.0, 749.0, 624.0, 499.0, 374.0, 249.0, 124.0]
    mid = sch(torch.tensor([0.5 - 0.25 / 1000], dtype=torch.float64))  # halfway between timesteps 498 and 499
    assert sch.timestep(mid).item() == pytest.approx(498.75, abs=1e-3)
    with pytest.raises(ValueError, match="alpha_bar"):
        DiscreteSchedule(torch.tensor([0.9, 0.5, 0.0]))


def _hub_model(tmp: Path, prediction: str, betas: str, scheduler=DDPMScheduler, size: int = 28) -> Path:
    """A small diffusers pipeline folder as a user would have downloaded it."""
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=size, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4)
    sched = scheduler(num_train_timesteps=1000, beta_schedule=betas, prediction_type=prediction)
    folder = tmp / f"hub_{prediction}_{size}"
    DDPMPipeline(unet=unet, scheduler=sched).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def fashion(tmp_path_factory):
    return write_fashion(tmp_path_factory.mktemp("fashion"), n_train=128)


@pytest.mark.parametrize("prediction,betas", [("epsilon", "linear"), ("v_prediction", "squaredcos_cap_v2")])
def test_import_distill_one_round_and_export_back(tmp_path, fashion, prediction, betas):
    hub = _hub_model(tmp_path, prediction, betas)
    run = tmp_path / "run"
    assert main(["import-diffusers", "--model", str(hub), "--out", str(run), "--config", "fashion_mnist",
                 "--set", f"data.root={fashion}", "--set", "data.conditional=false"]) == 0
    teacher, record, cfg = load_denoiser(run / "teacher")
    assert cfg.model.arch == "diffusers" and cfg.diffusion.schedule == "discrete"
    assert cfg.model.parameterization == {"epsilon": "eps", "v_prediction": "v"}[prediction]
    sch = schedule_of(cfg)

    # The imported teacher on our sampler is diffusers' own DDIM on the same model and schedule.
    unet = UNet2DModel.from_pretrained(hub / "unet")
    ddim = DDIMScheduler.from_pretrained(hub / "scheduler", timestep_spacing="trailing", set_alpha_to_one=True,
                                         clip_sample=False)
    pipe = DDIMPipeline(unet=unet, scheduler=ddim)
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(batch_size=8, generator=torch.Generator().manual_seed(5), num_inference_steps=8,
               output_type="np").images
    t8 = generate(teacher, sch, 8, 32, SHAPE, seed=5, clip=False)
    assert abs(_as_images(t8[:8]) - ref).max() < 1e-4

    assert main(["distill", "--from", str(run / "teacher"), "--no-progress", "--set", "distill.start_steps=8",
                 "--set", "distill.target_steps=4", "--set", "distill.updates_per_round=40",
                 "--set", "distill.batch_size=32", "--set", "distill.lr=1e-3",
                 "--set", "distill.checkpoint_every=0", "--set", "distill.convert_updates=40"]) == 0
    student, _, scfg = load_denoiser(run / "students" / "student_0004steps")
    # Imported teachers sample with their best sampler, clipped DDIM; an eps teacher gets a v student (its target
    # from clipped teacher steps at the noisy grid points), the others keep their parameterization.
    assert cfg.sample.clip and scfg.model.parameterization == "v"
    assert cfg.distill.teacher_clip == ("noisy" if prediction == "epsilon" else "none")
    # The round brings the student's 4 steps closer to the teacher's 8 than where it started: the teacher's own
    # 4 steps for a v teacher, the teacher's weights read as v for an eps teacher (a random eps model is far from
    # its own x_hat when read as v, so that case also needs the warm-up to move at all in 40 + 40 updates).
    from progdistill.denoiser import Denoiser

    init = Denoiser(load_denoiser(run / "teacher")[0].net, "v")
    c8 = generate(teacher, sch, 8, 32, SHAPE, seed=5)
    gap = lambda d: (generate(d, sch, 4, 32, SHAPE, seed=5) - c8).pow(2).mean().sqrt().item()  # noqa: E731
    gap_init, gap_student = gap(init), gap(student)
    assert gap_student < 0.8 * gap_init, (gap_student, gap_init)

    # ... and the distilled student goes back to diffusers on the model's own 1000 timesteps.
    out = tmp_path / "export"
    assert main(["export-diffusers", "--ckpt", str(run / "students" / "student_0004steps"), "--out", str(out)]) == 0
    back = DDIMPipeline.from_pretrained(out)
    back.set_progress_bar_config(disable=True)
    assert back.scheduler.config.num_train_timesteps == 1000
    images = back(batch_size=4, generator=torch.Generator().manual_seed(9), num_inference_steps=4,
                  output_type="np", use_clipped_model_output=True).images
    ours = generate(student, sch, 4, 4, SHAPE, seed=9, clip=cfg.sample.clip)
    assert abs(images - _as_images(ours)).max() < 1e-4


def test_import_refuses_bad_input(tmp_path, fashion, capsys):
    base = ["--config", "fashion_mnist", "--set", f"data.root={fashion}"]
    assert main(["import-diffusers", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "r0"), *base]) == 2
    assert "not found" in capsys.readouterr().err
    hub = _hub_model(tmp_path, "epsilon", "linear", scheduler=DDIMScheduler)
    sched_cfg = hub / "scheduler" / "scheduler_config.json"
    good = sched_cfg.read_text()
    sched_cfg.write_text(json.dumps(json.loads(good) | {"_class_name": "EulerDiscreteScheduler"}))
    assert main(["import-diffusers", "--model", str(hub), "--out", str(tmp_path / "r1"), *base]) == 2
    assert "DDPMScheduler or DDIMScheduler" in capsys.readouterr().err
    sched_cfg.write_text(good)
    # Labelled data is fine for an unconditional model; data of the wrong shape is not.
    hub32 = _hub_model(tmp_path, "epsilon", "linear", size=32)
    assert main(["import-diffusers", "--model", str(hub32), "--out", str(tmp_path / "r2"), *base]) == 2
    assert "does not match the model's input [1, 32, 32]" in capsys.readouterr().err
    (hub / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"garbage")
    assert main(["import-diffusers", "--model", str(hub), "--out", str(tmp_path / "r3"), *base]) == 2
    assert "could not load the U-Net weights" in capsys.readouterr().err
    assert not (tmp_path / "r3" / "teacher.json").exists()


def test_eps_distillation_refused_on_continuous_schedule(tmp_path):
    from progdistill.training.rounds import distill
    cfg = load_config("toy2d", ["model.parameterization=eps", "distill.weighting=snr",
                              "distill.parameterization=eps"])
    d = build_denoiser(cfg, (2,))
    stem = save_checkpoint(tmp_path / "t", {"model": d}, {
        "kind": "teacher", "config": cfg.to_dict(), **model_record(d.spec, cfg, 8), "sampling_weights": "model"})
    with pytest.raises(ConfigError, match="cannot be distilled on this schedule"):
        distill(stem, tmp_path, progress=False)


def test_import_defaults_for_an_eps_teacher_and_diffusers_own_ddim(tmp_path, fashion):
    from progdistill.interop.diffusers_io import diffusers_default_ddim
    from progdistill.checkpoint import read_record

    hub = _hub_model(tmp_path, "epsilon", "linear")
    base = ["--config", "fashion_mnist", "--set", f"data.root={fashion}", "--set", "data.conditional=false"]
    assert main(["import-diffusers", "--model", str(hub), "--out", str(tmp_path / "run"), *base]) == 0
    teacher, record, cfg = load_denoiser(tmp_path / "run" / "teacher")
    d = cfg.distill
    # An eps teacher: v students, warmed up from the teacher's weights, targets from clipped teacher steps at the
    # noisy grid points; its own samples with clipped DDIM.
    assert (cfg.model.parameterization, d.parameterization, d.weighting, d.teacher_clip, d.convert_updates) == (
        "eps", "v", "snr_plus1", "noisy", 2 * d.updates_per_round)
    assert d.teacher_clip_logsnr == 0.0 and cfg.sample.clip and record["sampling"]["clip"]
    # A value the user sets is kept.
    assert main(["import-diffusers", "--model", str(hub), "--out", str(tmp_path / "run_x"), *base,
                 "--set", "distill.parameterization=x", "--set", "distill.teacher_clip=none"]) == 0
    dx = load_denoiser(tmp_path / "run_x" / "teacher")[2].distill
    assert (dx.parameterization, dx.weighting, dx.teacher_clip) == ("x", "snr_trunc", "none")
    # v_prediction imports keep their parameterization and the paper's target.
    hub_v = _hub_model(tmp_path, "v_prediction", "linear")
    assert main(["import-diffusers", "--model", str(hub_v), "--out", str(tmp_path / "run_v"), *base]) == 0
    dv = load_denoiser(tmp_path / "run_v" / "teacher")[2]
    assert (dv.distill.parameterization, dv.distill.weighting, dv.distill.teacher_clip,
            dv.distill.convert_updates) == ("same", "snr_plus1", "none", 0)
    assert dv.sample.clip

    # diffusers' own DDIM as the scheduler is configured is what DDIMPipeline gives with that scheduler.
    sched = read_record(tmp_path / "run" / "teacher")["diffusers_scheduler"]
    assert sched["_class_name"] == "DDPMScheduler" and sched["clip_sample"] is True
    ours = diffusers_default_ddim(teacher, sched, 4, 3, SHAPE, seed=7)
    pipe = DDIMPipeline(unet=UNet2DModel.from_pretrained(hub / "unet"),
                        scheduler=DDIMScheduler.from_config(DDPMScheduler.from_pretrained(hub / "scheduler").config))
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(batch_size=3, generator=torch.Generator().manual_seed(7), num_inference_steps=4,
               output_type="np").images
    assert abs(_as_images(ours) - ref).max() < 1e-4

    # evaluate on an imported teacher reports diffusers' own DDIM beside ours.
    from progdistill.evaluation.report import evaluate_run

    rows = evaluate_run(tmp_path / "run", tmp_path / "eval", steps=[1, 2], num=6, progress=False,
                        samplers=("teacher_ddim",))
    got = {(r["sampler"], r["steps"]) for r in rows if r["metric"] == "frechet_classifier"}
    assert {("teacher_ddim", 2), ("diffusers_ddim", 1), ("diffusers_ddim", 2)} <= got
    x2 = diffusers_default_ddim(teacher, sched, 2, 6, SHAPE, seed=1234)
    agreement = {r["steps"]: r["value"] for r in rows
                 if r["sampler"] == "diffusers_ddim" and r["metric"] == "teacher_rms"}
    ours2 = generate(teacher, schedule_of(cfg), 2, 6, SHAPE, seed=1234)
    assert agreement[2] == pytest.approx((x2.double() - ours2.double()).pow(2).mean().sqrt().item(), rel=1e-4)


def test_dmd_generator_of_an_imported_teacher_exports_back(tmp_path, fashion):
    """dmd on an imported diffusers pixel teacher (eps, unconditional): a 2-step generator (fake score, head on the
    UNet2DModel's mid block), exported to DDIMPipeline and equal to the project's sampler at 1 and 2 steps."""
    hub = _hub_model(tmp_path, "epsilon", "linear")
    run = tmp_path / "run"
    assert main(["import-diffusers", "--model", str(hub), "--out", str(run), "--config", "fashion_mnist",
                 "--set", f"data.root={fashion}", "--set", "data.conditional=false"]) == 0
    assert main(["distill", "--from", str(run / "teacher"), "--method", "dmd", "--no-progress",
                 "--set", "distill.target_steps=2", "--set", "distill.total_updates=3", "--set",
                 "distill.batch_size=8", "--set", "distill.dmd_fake_updates=2", "--set", "distill.dmd_gan_weight=0.1",
                 "--set", "distill.checkpoint_every=0", "--set", "distill.convert_updates=2"]) == 0
    stem = run / "dmd" / "students" / "student_0002steps"
    student, record, scfg = load_denoiser(stem)
    assert record["sampling"]["counts"] == [1, 2] and record["budget"]["players"]["generator"]["updates"] == 3
    assert {"teacher", "generator", "fake"} <= set(record["budget"]["evals"])
    sch = schedule_of(scfg)
    for steps in (1, 2):
        out = tmp_path / f"export{steps}"
        assert main(["export-diffusers", "--ckpt", str(stem), "--out", str(out), "--steps", str(steps)]) == 0
        back = DDIMPipeline.from_pretrained(out)
        back.set_progress_bar_config(disable=True)
        images = back(batch_size=4, generator=torch.Generator().manual_seed(9), num_inference_steps=steps,
                      output_type="np", use_clipped_model_output=True).images
        ours = generate(student, sch, steps, 4, SHAPE, seed=9, clip=scfg.sample.clip)
        assert abs(images - _as_images(ours)).max() < 1e-4, steps
