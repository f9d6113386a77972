"""The pieces of training, tested directly: a phase (its data check, checkpoints, final write and cleanup, resume
config) and the distillation plan (rounds, students' parameterization, clipping, guided w), without the CLI."""

import math
from dataclasses import replace

import pytest
import torch

from progdistill.build import build_denoiser
from progdistill.checkpoint import read_record
from progdistill.config import ConfigError, load_config
from progdistill.nets.spec import guidance_block
from progdistill.training.objectives import TeacherObjective
from progdistill.training.phase import Phase, Run, optim_settings, resume_config, run_phase
from progdistill.training.plan import plan_distillation, plan_rounds
from progdistill.build import schedule_of

SMALL = ["model.hidden=16", "model.depth=1", "model.emb_dim=8", "data.size=256", "train.batch_size=32",
         "data.workers=0", 'device="cpu"']


def _phase(cfg, tmp_path, **changes) -> Phase:
    phase = Phase(name="teacher", desc="test", settings=optim_settings(cfg.train.optim, 12, "constant"),
                  weighting="snr_plus1", seed=3, data_seed=4, batch_size=32, batch_field="train.batch_size",
                  grad_accum=1, checkpoints=tmp_path / "ckpts", prefix="p_step", checkpoint_every=3, keep=2,
                  record={"config": cfg.to_dict(), "note": "mine"}, kind="thing", final=tmp_path / "final")
    return replace(phase, **changes)


def _train(cfg, tmp_path, phase):
    run = Run.open(cfg, tmp_path, progress=False)
    torch.manual_seed(0)
    denoiser = build_denoiser(cfg, (2,))
    try:
        return run_phase(phase, denoiser, TeacherObjective(schedule_of(cfg)), run)
    finally:
        run.close()


def test_a_phase_checkpoints_prunes_writes_its_result_and_cleans_up(tmp_path):
    cfg = load_config("toy2d", SMALL)
    kept = _train(cfg, tmp_path, _phase(cfg, tmp_path, clean_up=False))
    assert sorted(p.name for p in (tmp_path / "ckpts").glob("*.json")) == ["p_step00000006.json",
                                                                            "p_step00000009.json"]  # keep=2
    partial = read_record(tmp_path / "ckpts" / "p_step00000009")
    assert partial["kind"] == "thing_partial" and partial["note"] == "mine" and partial["step"] == 9
    final = read_record(tmp_path / "final")
    assert final["kind"] == "thing" and final["step"] == 12 and final["note"] == "mine"
    assert final["sampling_weights"] == "ema" and final["num_processes"] == 1
    assert [s for s, _ in final["loss_history"]] == [12]
    again = _train(cfg, tmp_path / "b", _phase(cfg, tmp_path / "b"))  # the same phase, cleaning up
    assert not list((tmp_path / "b" / "ckpts").glob("*.json"))
    for a, b in zip(kept.model.parameters(), again.model.parameters()):
        assert torch.equal(a, b)  # a phase is a pure function of its settings


def test_a_phase_refuses_a_batch_larger_than_its_data_before_training(tmp_path):
    cfg = load_config("toy2d", SMALL)
    with pytest.raises(ConfigError, match=r"train.batch_size \(512\) is larger than the data \(256 examples\)"):
        _train(cfg, tmp_path, _phase(cfg, tmp_path, batch_size=512))
    assert not (tmp_path / "final.json").exists() and not (tmp_path / "ckpts").exists()


def test_a_phase_without_a_final_checkpoint_writes_nothing(tmp_path):
    cfg = load_config("toy2d", SMALL)
    _train(cfg, tmp_path, _phase(cfg, tmp_path, final=None, checkpoint_every=0))
    assert not (tmp_path / "ckpts").exists() and not list(tmp_path.glob("final*"))


def test_resume_config_takes_the_saved_config_and_refuses_other_sections(tmp_path):
    saved = load_config("toy2d", SMALL)
    record = {"config": saved.to_dict()}
    assert resume_config(record, None, ("distill",), tmp_path / "c") == saved
    other_workers = load_config("toy2d", SMALL + ["data.workers=2"])
    assert resume_config(record, other_workers, ("all",), tmp_path / "c", free=("data.workers",)).data.workers == 2
    with pytest.raises(ConfigError, match="only data.workers may differ; here train differ"):
        resume_config(record, load_config("toy2d", SMALL + ["train.steps=7"]), ("all",), tmp_path / "c",
                      free=("data.workers",))
    with pytest.raises(ConfigError, match=r"\[distill\] settings saved in .*c.json"):
        resume_config(record, load_config("toy2d", SMALL + ["distill.seed=9"]), ("distill",), tmp_path / "c")
    assert resume_config(record, load_config("toy2d", SMALL + ["train.steps=7"]), ("distill",), tmp_path / "c") == saved


def test_plan_rounds_halve_from_the_checkpoint_to_the_target():
    cfg = load_config("toy2d", ["distill.start_steps=8", "distill.updates_per_round=10",
                                "distill.final_updates_per_round=30", "distill.long_round_max_steps=2"])
    rounds = plan_rounds(cfg, {"kind": "teacher"})
    assert [(r.number, r.teacher_steps, r.student_steps, r.updates) for r in rounds] == [
        (1, 8, 4, 10), (2, 4, 2, 30), (3, 2, 1, 30)]
    continued = plan_rounds(cfg, {"kind": "student", "sampling_steps": 4, "round": 1})  # a saved 4-step student
    assert [(r.number, r.student_steps) for r in continued] == [(2, 2), (3, 1)]
    with pytest.raises(ConfigError, match="the checkpoint's step count"):
        plan_rounds(cfg, {"kind": "student", "sampling_steps": 3})


def _teacher(cfg, **spec_changes):
    torch.manual_seed(0)
    spec = build_denoiser(cfg, (2,), num_classes=8 if cfg.train.label_dropout else 0).spec
    return replace(spec, **spec_changes), {"kind": "teacher", "sampling": {"steps": 8, "clip": True,
                                                                            "variance": "small"}}


def test_plan_of_an_eps_teacher_gives_v_students_a_warm_up_and_clipped_targets():
    cfg = load_config("toy2d", ["model.parameterization=eps", "diffusion.schedule=linear", "diffusion.weighting=snr",
                                "distill.start_steps=8", "distill.weighting=snr_plus1"])
    spec, record = _teacher(cfg)
    plan = plan_distillation(spec, record, cfg, None)
    assert plan.spec.parameterization == "v" and plan.teacher_parameterization == "eps"
    assert plan.cfg.distill.convert_updates == 2 * cfg.distill.updates_per_round
    assert plan.clip_below == 0.0 and plan.w_train is None
    assert plan.spec.teacher_clip == {"mode": "noisy", "logsnr": 0.0}  # recorded in every student's model block
    # Continuing from such a student (a v network) with a fresh config: its recorded clipping, not "auto" for v.
    student_record = {"kind": "student", "sampling_steps": 4, "round": 1, "sampling": record["sampling"]}
    fresh = load_config("toy2d", ["distill.weighting=snr_plus1"])
    assert plan_distillation(plan.spec, student_record, fresh, None).clip_below == 0.0
    explicit = load_config("toy2d", ["distill.teacher_clip=none"])
    assert plan_distillation(plan.spec, student_record, explicit, None).clip_below == -math.inf
    same = plan_distillation(*_teacher(load_config("toy2d")), load_config("toy2d"), None)
    assert same.spec.parameterization == "v" and same.clip_below == -math.inf  # a v teacher: the paper's targets


def test_plan_of_a_guided_teacher_draws_w_with_the_margin_its_model_block_records():
    cfg = load_config("toy2d", ['data.name="ring_classes"', "train.label_dropout=0.1", "guided.w_margin=0.25"])
    spec, record = _teacher(cfg, guidance=guidance_block(1.0, 3.0, 16, w_margin=0.5))
    assert plan_distillation(spec, record, cfg, None).w_train == (0.5, 3.0)  # the record's 0.5, not the config's
    legacy, _ = _teacher(cfg, guidance=guidance_block(1.0, 3.0, 16))  # written before the margin was recorded
    assert plan_distillation(legacy, record, cfg, None).w_train == (0.75, 3.0)  # its config's guided.w_margin
    with pytest.raises(ConfigError, match="keeps the teacher's parameterization"):
        plan_distillation(spec, record, cfg, load_config("toy2d", ['data.name="ring_classes"',
                                                                   "distill.parameterization=x"]))
