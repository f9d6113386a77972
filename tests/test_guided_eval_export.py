"""Guided students outside training: the diffusers export (a pipeline whose call takes guidance_scale = 1 + w) and
the guided evaluation sweep (Frechet distance, class accuracy and network evaluations per sampler, steps and w)."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline

from progdistill.build import build_denoiser, denoiser_from_spec, load_denoiser, model_record, schedule_of
from progdistill.checkpoint import save_checkpoint
from progdistill.cli import main
from progdistill.config import load_config
from progdistill.nets.spec import guidance_block
from progdistill.sampling import generate

SHAPE = (1, 28, 28)


def _guided_student(tmp, steps: int, w_min=0.0, w_max=4.0, class_gate=False):
    """A w-conditioned small U-Net student (null class included) with random output and w-embedding output layers,
    so that its output depends on w."""
    cfg = load_config("fashion_mnist", ["train.label_dropout=0.1"])
    torch.manual_seed(0)
    teacher = build_denoiser(cfg, SHAPE, 10)
    d = denoiser_from_spec(replace(teacher.spec, guidance=guidance_block(w_min, w_max, 16, class_gate=class_gate)))
    d.load_state_dict(teacher.state_dict(), strict=False)
    with torch.no_grad():
        gate = [*d.net.w_embed.gate[-1].parameters()] if class_gate else []
        for p in [*d.net.unet.conv_out.parameters(), *d.net.w_embed.mlp[-1].parameters(), *gate]:
            p.normal_(0, 0.05)
    stem = save_checkpoint(tmp / f"student_{steps}", {"model": d}, {
        "kind": "student", "config": cfg.to_dict(), **model_record(d.spec, cfg, steps),
        "sampling_weights": "model", "sampling_steps": steps, "round": 1})
    return stem, d


@pytest.mark.parametrize("class_gate", [False, True])
def test_guided_student_export_matches_our_sampler(tmp_path, class_gate):
    labels = torch.tensor([0, 3, 7, 9])
    for steps in ((1, 2, 4, 8) if not class_gate else (2,)):
        stem, d = _guided_student(tmp_path, steps, class_gate=class_gate)
        out = tmp_path / f"export_{steps}"
        assert main(["export-diffusers", "--ckpt", str(stem), "--out", str(out)]) == 0
        index = json.loads((out / "model_index.json").read_text())
        assert index["unet"] == ["progdistill_unet", "GuidedUNet2DModel"]
        summary = json.loads((out / "progdistill_export.json").read_text())
        assert summary["guidance_scale_range"] == [1.0, 5.0] and "guidance_scale=" in summary["call"]
        pipe = DiffusionPipeline.from_pretrained(out, trust_remote_code=True)
        pipe.set_progress_bar_config(disable=True)
        outputs = {}
        for w in (0.0, 2.5):
            ours = generate(d, schedule_of(d.spec), steps, 4, SHAPE, seed=11, labels=labels, guidance=w)
            images = pipe(class_labels=labels, guidance_scale=1.0 + w, generator=torch.Generator().manual_seed(11),
                          num_inference_steps=steps, output_type="np").images
            expected = (ours / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
            assert expected.std() > 0.05
            assert abs(images - expected).max() < 1e-4, (steps, w)
            outputs[w] = images
        assert abs(outputs[0.0] - outputs[2.5]).max() > 1e-3  # w reaches the exported network
    with pytest.raises(ValueError, match=r"outside the range .*\[1, 5\]"):
        pipe(class_labels=labels, guidance_scale=6.0, num_inference_steps=1)
    with pytest.raises(ValueError, match="pass guidance_scale"):
        pipe(class_labels=labels, num_inference_steps=1)


@pytest.fixture(scope="module")
def guided_run(tmp_path_factory):
    """A tiny label-dropout teacher on synthetic Fashion-MNIST-shaped data, guided-distilled 2 -> 1 steps."""
    from conftest import write_fashion

    from progdistill.training.guided import distill_guided
    from progdistill.training.teacher import train_teacher

    tmp = tmp_path_factory.mktemp("guided_run")
    root = write_fashion(tmp / "fashion", n_train=64)
    sets = [f"data.root={json.dumps(str(root))}", "train.label_dropout=0.2", "train.steps=4", "train.batch_size=16",
            "train.warmup=0", "train.checkpoint_every=100", "data.workers=0", "distill.start_steps=2",
            "distill.updates_per_round=2", "distill.final_updates_per_round=0", "distill.batch_size=16",
            "distill.checkpoint_every=0", "distill.log_samples=0", "guided.stage1_updates=2",
            "guided.checkpoint_every=0"]
    cfg = load_config("fashion_mnist", sets)
    run = tmp / "run"
    train_teacher(cfg, run, progress=False)
    distill_guided(run / "teacher", run / "guided", cfg, progress=False)
    return run


def test_guided_evaluation_rows_plot_and_cli(guided_run, tmp_path):
    from progdistill.evaluation.guided import evaluate_guided

    rows = evaluate_guided(guided_run, tmp_path / "eval", steps=[1, 2], ws=[0.0, 2.0], num=20, teacher_steps=[4],
                           progress=False)
    v = {(r["sampler"], r["steps"], r["w"], r["metric"]): r["value"] for r in rows}
    for w in (0.0, 2.0):
        for k in (1, 2, 4):
            assert v[("teacher_ddim", k, w, "nfe")] == 2 * k  # two network evaluations per guided teacher step
        for s in ("student", "student_stochastic"):
            assert v[(s, 1, w, "nfe")] == 1
            assert 0 <= v[(s, 1, w, "class_accuracy")] <= 1 and v[(s, 1, w, "frechet_classifier")] > 0
    assert ("student", 2, 0.0, "nfe") not in v  # the run's students: 1 step only (2 is the stage-1 model's grid)
    assert 0 <= v[("data", 0, None, "class_accuracy")] <= 1
    # The teacher's rows at w = 0 are its plain conditional sampler's (same noise, same labels).
    teacher, _, _ = load_denoiser(guided_run / "teacher")
    from progdistill.evaluation.classifier import class_accuracy, load_classifier
    from progdistill.sampling import balanced_labels

    x = generate(teacher, schedule_of(teacher.spec), 1, 20, SHAPE, seed=1234, labels=balanced_labels(20, 10))
    assert v[("teacher_ddim", 1, 0.0, "class_accuracy")] == pytest.approx(
        class_accuracy(x, balanced_labels(20, 10), load_classifier()))
    for name in ("report.json", "report.md", "quality_vs_accuracy.png", "samples/w2_steps_0001.png"):
        assert (tmp_path / "eval" / name).is_file(), name
    assert "| student | 1 |" in (tmp_path / "eval" / "report.md").read_text()

    assert main(["evaluate", "--run", str(guided_run), "--guidance", "0,1", "--steps", "1", "--num", "10",
                 "--no-progress", "--out", str(tmp_path / "cli")]) == 0
    cli_rows = json.loads((tmp_path / "cli" / "report.json").read_text())
    assert {r["w"] for r in cli_rows if r["sampler"] == "student"} == {0.0, 1.0}
    assert np.isfinite([r["value"] for r in cli_rows]).all()
