"""Train the first teacher in continuous time, with periodic checkpoints from which a run resumes exactly."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from .. import runfolder
from ..build import build_denoiser, denoiser_from_spec, model_record, read_model_record, schedule_of
from ..checkpoint import CheckpointError, read_record
from ..config import Config, ConfigError, config_from_json
from .noise import noise_for
from .objectives import TeacherObjective
from .phase import Phase, Run, optim_settings, resume_config, run_phase
from .resume import latest_loadable

# The teacher's noise and timesteps come from train.seed plus this offset; its data order from train.seed itself.
TEACHER_NOISE_SEED_OFFSET = 1


def find_resume_point(out: Path) -> Path | None:
    """The newest loadable teacher checkpoint in out/checkpoints (a damaged newer one is skipped), or None."""
    return latest_loadable(runfolder.teacher_checkpoints(out), runfolder.TEACHER_PREFIX + "*")


def started_config(out: Path, cfg: Config | None) -> Config:
    """A run killed after its folder was written but before its first checkpoint: the config it was started with
    (RUN/config.json), from step 0, said on stderr; CheckpointError when the folder holds no run at all."""
    path = runfolder.config_path(out)
    if not path.is_file():
        raise CheckpointError(f"nothing to resume in {out}: no loadable checkpoints/teacher_step*.json and no "
                              "config.json (start the run without --resume)")
    try:
        saved = config_from_json(json.loads(path.read_text()))
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{path} is not a readable run config ({e}); start the run again without --resume"
                              ) from None
    if cfg is not None and cfg != saved:
        raise ConfigError(f"--resume continues with the config saved in {path}; drop --config/--set")
    print(f"progdistill: {out} has no checkpoint yet; starting it from step 0 with its saved config "
          f"({path.name})", file=sys.stderr)
    return saved


def teacher_phase(cfg: Config, out: Path, record: dict) -> Phase:
    """The teacher's phase: [train]'s settings, checkpoints in out/checkpoints (kept when it ends), out/teacher."""
    train = cfg.train
    return Phase(name="teacher", desc="teacher", settings=optim_settings(train.optim, train.steps, train.lr_decay),
                 weighting=cfg.diffusion.weighting, seed=train.seed + TEACHER_NOISE_SEED_OFFSET, data_seed=train.seed,
                 batch_size=train.batch_size, batch_field="train.batch_size", grad_accum=train.grad_accum,
                 checkpoints=runfolder.teacher_checkpoints(out), prefix=runfolder.TEACHER_PREFIX,
                 checkpoint_every=train.checkpoint_every, keep=train.keep_checkpoints, record=record, kind="teacher",
                 partial_kind="teacher", final=runfolder.teacher_stem(out), clean_up=False,
                 resume_hint=f"`progdistill train --resume --out {out}`")


def train_teacher(cfg: Config | None, out: Path, *, progress: bool = True, resume: bool = False) -> Path:
    """Train a teacher as configured; returns the stem of out/teacher (weights "model" and, with EMA, "ema").

    With resume=True the run continues from the newest checkpoint in out/checkpoints, with that checkpoint's
    config (cfg must be None or equal to it; data.workers may differ: it changes who decodes, not what is trained
    on), and ends with the same weights as an uninterrupted run."""
    out = Path(out)
    start = None
    if resume:
        start = find_resume_point(out)
        if start is not None:
            cfg = resume_config(read_record(start), cfg, ("all",), start, free=("data.workers",))
        else:
            cfg = started_config(out, cfg)
    assert cfg is not None
    run = Run.open(cfg, out, progress=progress)
    torch.manual_seed(cfg.train.seed)  # the network's initial weights
    if start is not None:  # the network the checkpoint records, whatever the presets say now
        denoiser = denoiser_from_spec(read_model_record(start)[1], cfg.perf)
    else:
        denoiser = build_denoiser(cfg, run.data.example_shape, run.data.num_classes)
    denoiser = denoiser.to(run.accelerator.device)
    record = {"config": cfg.to_dict(), **model_record(denoiser.spec, cfg, cfg.distill.start_steps)}
    # Label dropout (classifier-free guidance) replaces labels by the null class, the embedding row after the classes.
    objective = TeacherObjective(schedule_of(cfg), cfg.train.label_dropout, null_label=denoiser.spec.num_classes,
                                 noise=noise_for(cfg.perf.per_example_noise))
    phase = teacher_phase(cfg, out, record)
    try:
        run_phase(phase, denoiser, objective, run, resume_from=start)
    finally:
        run.close()
    return phase.final
