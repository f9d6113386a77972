"""Guided distillation (Meng et al., CVPR 2023; docs/guided.md): one fast student for every guidance weight w.

Stage 1 (`train_stage1`): a w-conditioned copy of a label-dropout teacher learns the teacher's guided
x_hat_w = (1 + w) x_hat(z, c) - w x_hat(z, null) at continuous t, w ~ U[w_min, w_max] per example. It runs as one
training phase (training/phase.py: checkpoints, exact resume) and leaves GUIDED/stage1.
Stage 2: progressive distillation of the stage-1 model with w as an input, by the ordinary round loop
(training/rounds.py, which draws w per example for any w-conditioned teacher).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable

import torch

from .. import runfolder
from ..build import denoiser_from_spec, load_denoiser, schedule_of
from ..checkpoint import CheckpointError, read_record
from ..config import Config, ConfigError
from ..diffusion.weighting import check_combination
from ..guidance import check_guidance, null_condition
from ..nets.spec import ModelSpec, guidance_block
from ..compiling import maybe_compiled
from .noise import noise_for
from .objectives import GuidedObjective, training_w_range
from .phase import Phase, Run, optim_settings, resume_config, run_phase
from .resume import latest_loadable
from .rounds import Start, distill, record_start, started_distillation

# Stage 1 draws its data order and noise from distill.seed plus this offset: a stream of its own, apart from the
# rounds' (distill.seed + r for data, distill.seed + 1000 r for noise).
STAGE1_SEED_OFFSET = 500


def stage1_weighting(cfg: Config) -> str:
    """guided.stage1_weighting, "auto" meaning the teacher's own loss weighting (diffusion.weighting)."""
    return cfg.diffusion.weighting if cfg.guided.stage1_weighting == "auto" else cfg.guided.stage1_weighting


def stage1_settings(cfg: Config):
    """Stage 1's optimizer: [distill.optim] over guided.stage1_updates, at guided.stage1_lr unless 0."""
    settings = optim_settings(cfg.distill.optim, cfg.guided.stage1_updates, "linear")
    return replace(settings, lr=cfg.guided.stage1_lr) if cfg.guided.stage1_lr > 0 else settings


def stage1_config(ckpt_cfg: Config, cfg: Config | None) -> Config:
    """The teacher's config with the [distill] and [guided] sections, device, perf and precision of `cfg`."""
    if cfg is None:
        return ckpt_cfg
    return replace(ckpt_cfg, distill=cfg.distill, guided=cfg.guided, device=cfg.device, perf=cfg.perf,
                   mixed_precision=cfg.mixed_precision).validate()


def _check_teacher(teacher_stem: str | Path, tspec: ModelSpec) -> None:
    """A label-dropout teacher without a w input, or a ConfigError saying what it lacks."""
    if tspec.guidance is not None:
        raise ConfigError(f"{teacher_stem} is already conditioned on w (a guided student): continue its "
                          "distillation with `progdistill distill --from` it, without --guided")
    try:
        check_guidance(tspec, 0.0)  # a class-conditional teacher with a null class, or an error saying what lacks
    except ValueError as e:
        raise ConfigError(f"guided distillation of {teacher_stem}: {e}") from None


def _check_data(cfg: Config, data, tspec: ModelSpec) -> None:
    if data.num_classes != tspec.num_classes or data.labels is None:
        raise ConfigError(f"the teacher has {tspec.num_classes} classes but its data ({cfg.data.name}) has "
                          f"{data.num_classes or 'no'} labels: guided distillation trains on labelled data "
                          "(data.conditional = true)")


def _stage1_student(teacher, spec: ModelSpec, cfg: Config, run: Run):
    """The teacher's network with a w embedding whose output layer starts at zero, with the teacher's weights."""
    torch.manual_seed(cfg.distill.seed)  # the w embedding's first layer (its output layer starts at zero)
    student = denoiser_from_spec(spec, cfg.perf)
    missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
    prefix = "net." + getattr(student.net, "w_input_prefix", "w_embed.")
    if unexpected or any(not k.startswith(prefix) for k in missing):  # pragma: no cover - a network bug
        raise RuntimeError(f"the w-conditioned network does not extend its teacher: {missing}, {unexpected}")
    return student.to(run.accelerator.device)


def stage1_phase(cfg: Config, out: Path, teacher_stem: Path, record: dict, spec: ModelSpec) -> Phase:
    """Stage 1's phase: checkpoints in GUIDED/checkpoints (removed once it ends), the model in GUIDED/stage1."""
    g, distill_cfg = cfg.guided, cfg.distill
    w_lo, w_hi = training_w_range(g.w_min, g.w_max, g.w_margin)
    trained = f" (trained on [{w_lo:g}, {w_hi:g}])" if (w_lo, w_hi) != (g.w_min, g.w_max) else ""
    base = {"config": cfg.to_dict(), "model": spec.to_dict(), "teacher": str(teacher_stem),
            "sampling": record["sampling"] | {"steps": distill_cfg.start_steps}}
    return Phase(name="stage1", desc=f"guided stage 1: w in [{g.w_min:g}, {g.w_max:g}]{trained}",
                 settings=stage1_settings(cfg), weighting=stage1_weighting(cfg),
                 seed=distill_cfg.seed + STAGE1_SEED_OFFSET, data_seed=distill_cfg.seed + STAGE1_SEED_OFFSET,
                 batch_size=distill_cfg.batch_size, batch_field="distill.batch_size",
                 grad_accum=distill_cfg.grad_accum, checkpoints=runfolder.stage1_checkpoints(out),
                 prefix=runfolder.STAGE1_PREFIX, checkpoint_every=g.checkpoint_every, keep=2, record=base,
                 kind="guided_stage1", final=runfolder.stage1_stem(out), fallback=Path(teacher_stem),
                 fallback_note=" (guided stage 1; the teacher is intact)",
                 resume_hint=f"`progdistill distill --resume --out {out}`")


def stage1_start(teacher_stem: str | Path | None, out: Path, cfg: Config | None, resume: bool):
    """(teacher, settings, stage-1 checkpoint to resume from or None): resume=True continues from the newest
    stage-1 checkpoint in out/checkpoints with its saved [distill] and [guided] settings."""
    if resume:
        start = latest_loadable(runfolder.stage1_checkpoints(out), runfolder.STAGE1_PREFIX + "*")
        if start is not None:
            partial = read_record(start)
            return partial["teacher"], resume_config(partial, cfg, ("distill", "guided"), start), start
        started = started_distillation(out, runfolder.guided_start(out))
        if started is not None:  # killed before stage 1's first checkpoint: again from its start, same settings
            return started.teacher, started.cfg, None
    if teacher_stem is None:
        raise CheckpointError(f"nothing to resume in {out}: no stage-1 checkpoint (checkpoints/"
                              f"{runfolder.STAGE1_PREFIX}*.json); start with --from TEACHER --guided")
    return teacher_stem, cfg, None


def train_stage1(teacher_stem: str | Path | None, out: Path, cfg: Config | None = None, *, progress: bool = True,
                 resume: bool = False) -> Path:
    """Stage 1 from the label-dropout teacher `teacher_stem` into out/stage1; returns that stem.

    The student is the teacher's network with a w embedding whose output layer starts at zero, loaded with the
    teacher's sampling weights, so it starts as the teacher's conditional model. Settings: [guided] (range,
    updates, weighting) and [distill] (optimizer, batch size, dropout, seed). resume=True continues from the newest
    stage-1 checkpoint in out/checkpoints with its saved settings, exactly."""
    out = Path(out)
    teacher_stem, cfg, start = stage1_start(teacher_stem, out, cfg, resume)
    given = cfg  # the settings as asked for, before the teacher's are merged in (what a restart asks for again)
    teacher, record, ckpt_cfg = load_denoiser(teacher_stem)
    tspec = teacher.spec
    _check_teacher(teacher_stem, tspec)
    cfg = stage1_config(ckpt_cfg, cfg)
    g = cfg.guided
    check_combination(tspec.parameterization, stage1_weighting(cfg))
    spec = replace(tspec.with_dropout(cfg.distill.dropout),
                   guidance=guidance_block(g.w_min, g.w_max, g.embed_dim, g.embed_scale, g.class_gate,
                                           w_margin=g.w_margin))
    run = Run.open(cfg, out, progress=progress)
    if not resume and given is not None and run.accelerator.is_main_process:
        record_start(out, Start(Path(teacher_stem), given), given, runfolder.guided_start(out))
    try:
        _check_data(cfg, run.data, tspec)
        student = _stage1_student(teacher, spec, cfg, run)
        teacher = teacher.to(run.accelerator.device)
        evaluate = maybe_compiled(teacher, "the guided teacher", cfg.perf.compile)
        objective = GuidedObjective(evaluate, schedule_of(tspec), *training_w_range(g.w_min, g.w_max, g.w_margin),
                                    null_label=null_condition(teacher, tspec), noise=noise_for(cfg.perf.per_example_noise))
        phase = stage1_phase(cfg, out, Path(teacher_stem), record, spec)
        run_phase(phase, student, objective, run, resume_from=start)
    finally:
        run.close()
    return phase.final


def distill_guided(teacher_stem: str | Path | None, out: Path, cfg: Config | None = None, *,
                   on_round: Callable[[Path, int], None] | None = None, progress: bool = True,
                   resume: bool = False) -> list[Path]:
    """Stage 1 into out/stage1 (skipped when it is there, on resume), then stage 2 down to distill.target_steps;
    returns the stage-2 students' stems. resume=True continues a killed run in `out` exactly, whichever stage it
    was in."""
    out = Path(out)
    if runfolder.has_stage1(out):
        if not resume:
            raise ConfigError(f"{out} already holds a guided stage-1 model (stage1.json): continue with --resume, or "
                              "choose another --out")
    else:
        train_stage1(teacher_stem, out, cfg, progress=progress, resume=resume)
    return distill(runfolder.stage1_stem(out), out, cfg, on_round=on_round, progress=progress, resume=resume)
