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
from ..build import denoiser_from_spec, load_data, load_denoiser, make_accelerator, schedule_of
from ..checkpoint import CheckpointError, checkpoint_paths, read_record, save_checkpoint
from ..config import Config, ConfigError, config_from_json
from ..data import make_batches
from ..diffusion.weighting import check_combination
from ..guidance import check_guidance
from ..nets.spec import guidance_block
from .objectives import GuidedObjective, training_w_range
from .phase import Phase, optim_settings, run_phase
from .resume import latest_loadable
from .rounds import distill
from .runlog import RunLog
from .teacher import shard_of

# Stage 1 draws its data order and noise from distill.seed plus this offset: a stream of its own, apart from the
# rounds' (distill.seed + r for data, distill.seed + 1000 r for noise).
STAGE1_SEED_OFFSET = 500


def stage1_weighting(cfg: Config) -> str:
    """guided.stage1_weighting, "auto" meaning the teacher's own loss weighting (diffusion.weighting)."""
    return cfg.diffusion.weighting if cfg.guided.stage1_weighting == "auto" else cfg.guided.stage1_weighting


def stage1_settings(cfg: Config):
    """Stage 1's optimizer: the [distill] settings over guided.stage1_updates, at guided.stage1_lr unless 0."""
    settings = optim_settings(cfg.distill, cfg.guided.stage1_updates, "linear")
    return replace(settings, lr=cfg.guided.stage1_lr) if cfg.guided.stage1_lr > 0 else settings


def _settings(ckpt_cfg: Config, cfg: Config | None) -> Config:
    """The teacher's config with the [distill] and [guided] sections, device, perf and precision of `cfg`."""
    if cfg is None:
        return ckpt_cfg
    return replace(ckpt_cfg, distill=cfg.distill, guided=cfg.guided, device=cfg.device, perf=cfg.perf,
                   mixed_precision=cfg.mixed_precision).validate()


def train_stage1(teacher_stem: str | Path | None, out: Path, cfg: Config | None = None, *, progress: bool = True,
                 resume: bool = False) -> Path:
    """Stage 1 from the label-dropout teacher `teacher_stem` into out/stage1; returns that stem.

    The student is the teacher's network with a w embedding whose output layer starts at zero, loaded with the
    teacher's sampling weights, so it starts as the teacher's conditional model. Settings: [guided] (range,
    updates, weighting) and [distill] (optimizer, batch size, dropout, seed). resume=True continues from the newest
    stage-1 checkpoint in out/checkpoints with its saved settings, exactly."""
    out = Path(out)
    start = None
    if resume:
        start = latest_loadable(runfolder.stage1_checkpoints(out), runfolder.STAGE1_PREFIX + "*")
        if start is not None:
            partial = read_record(start)
            saved = config_from_json(partial["config"])
            if cfg is not None and (cfg.distill != saved.distill or cfg.guided != saved.guided):
                raise ConfigError(f"--resume continues with the [distill] and [guided] settings saved in "
                                  f"{start}.json; drop --config/--set/--w-min/--w-max")
            teacher_stem, cfg = partial["teacher"], saved
    if teacher_stem is None:
        raise CheckpointError(f"nothing to resume in {out}: no stage-1 checkpoint (checkpoints/"
                              f"{runfolder.STAGE1_PREFIX}*.json); start with --from TEACHER --guided")
    teacher, record, ckpt_cfg = load_denoiser(teacher_stem)
    tspec = teacher.spec
    if tspec.guidance is not None:
        raise ConfigError(f"{teacher_stem} is already conditioned on w (a guided student): continue its "
                          "distillation with `progdistill distill --from` it, without --guided")
    try:
        check_guidance(tspec, 0.0)  # a class-conditional teacher with a null class, or an error saying what lacks
    except ValueError as e:
        raise ConfigError(f"guided distillation of {teacher_stem}: {e}") from None
    cfg = _settings(ckpt_cfg, cfg)
    g, dc = cfg.guided, cfg.distill
    weighting = stage1_weighting(cfg)
    check_combination(tspec.parameterization, weighting)
    spec = replace(tspec.with_dropout(dc.dropout), guidance=guidance_block(g.w_min, g.w_max, g.embed_dim,
                                                                                g.embed_scale, g.class_gate))
    accelerator = make_accelerator(cfg)
    data = load_data(cfg, progress=progress)
    if data.num_classes != tspec.num_classes or data.labels is None:
        raise ConfigError(f"the teacher has {tspec.num_classes} classes but its data ({cfg.data.name}) has "
                          f"{data.num_classes or 'no'} labels: guided distillation trains on labelled data "
                          "(data.conditional = true)")
    if dc.batch_size > len(data):
        raise ConfigError(f"distill.batch_size ({dc.batch_size}) is larger than the data ({len(data)} examples)")
    torch.manual_seed(dc.seed)  # the w embedding's first layer (its output layer starts at zero)
    student = denoiser_from_spec(spec, cfg.perf)
    missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
    if unexpected or any(not k.startswith("net.w_embed.") for k in missing):  # pragma: no cover - a network bug
        raise RuntimeError(f"the w-conditioned network does not extend its teacher: {missing}, {unexpected}")
    student = student.to(accelerator.device)
    teacher = teacher.to(accelerator.device)
    base = {"config": cfg.to_dict(), "model": spec.to_dict(), "teacher": str(teacher_stem),
            "sampling": record["sampling"] | {"steps": dc.start_steps}}
    w_lo, w_hi = training_w_range(g.w_min, g.w_max, g.w_margin)
    trained = f" (trained on [{w_lo:g}, {w_hi:g}])" if (w_lo, w_hi) != (g.w_min, g.w_max) else ""
    phase = Phase(name="stage1", desc=f"guided stage 1: w in [{g.w_min:g}, {g.w_max:g}]{trained}",
                  settings=stage1_settings(cfg), weighting=weighting,
                  seed=dc.seed + STAGE1_SEED_OFFSET, grad_accum=dc.grad_accum,
                  checkpoints=runfolder.stage1_checkpoints(out), prefix=runfolder.STAGE1_PREFIX,
                  checkpoint_every=g.checkpoint_every, keep=2, record={"kind": "guided_stage1_partial", **base},
                  fallback=Path(teacher_stem), fallback_note=" (guided stage 1; the teacher is intact)")

    def batches_after(start_batch: int, data_state: dict | None):
        return make_batches(data, dc.batch_size, dc.seed + STAGE1_SEED_OFFSET, shard=shard_of(accelerator),
                            workers=cfg.data.workers, device=accelerator.device, state=data_state, start=start_batch)

    objective = GuidedObjective(teacher, schedule_of(tspec), w_lo, w_hi, null_label=tspec.num_classes)
    runlog = RunLog(out, enabled=accelerator.is_main_process)
    result = run_phase(phase, student, batches_after, objective, accelerator=accelerator, runlog=runlog,
                       resume_from=start, progress=progress, perf=cfg.perf)
    runlog.close()
    stem = runfolder.stage1_stem(out)
    if accelerator.is_main_process:
        save_checkpoint(stem, result.modules, {
            "kind": "guided_stage1", **base, "sampling_weights": result.sampling_weights, "step": g.stage1_updates,
            "loss_history": result.history, "num_processes": accelerator.num_processes})
        for old in runfolder.stage1_checkpoints(out).glob(runfolder.STAGE1_PREFIX + "*.json"):
            for path in checkpoint_paths(old.with_suffix("")):
                path.unlink(missing_ok=True)
    accelerator.wait_for_everyone()
    return stem


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
