"""Train the first teacher in continuous time, with periodic checkpoints from which a run resumes exactly."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from .. import runfolder
from ..build import (
    build_denoiser, denoiser_from_spec, load_data, make_accelerator, model_record, read_model_record, schedule_of,
)
from ..config import Config, ConfigError, config_from_json
from ..data import make_batches
from ..checkpoint import CheckpointError, read_record, save_checkpoint
from .objectives import TeacherObjective
from .phase import Phase, optim_settings, run_phase
from .resume import latest_loadable
from .runlog import RunLog


def shard_of(accelerator) -> tuple[int, int]:
    """(this process's rank, number of processes): which rows of every global batch this process loads."""
    return accelerator.process_index, accelerator.num_processes


def find_resume_point(out: Path) -> Path | None:
    """The newest loadable teacher checkpoint in out/checkpoints (a damaged newer one is skipped), or None."""
    return latest_loadable(runfolder.teacher_checkpoints(out), runfolder.TEACHER_PREFIX + "*")


def train_teacher(cfg: Config | None, out: Path, *, progress: bool = True, resume: bool = False) -> Path:
    """Train a teacher as configured; returns the stem of out/teacher (weights "model" and, with EMA, "ema").

    With resume=True the run continues from the newest checkpoint in out/checkpoints, with that checkpoint's
    config (cfg must be None or equal to it), and ends with the same weights as an uninterrupted run."""
    out = Path(out)
    start = None
    if resume:
        start = find_resume_point(out)
        if start is None:
            raise CheckpointError(f"nothing to resume in {out}: no loadable checkpoints/teacher_step*.json")
        saved = config_from_json(read_record(start)["config"])
        if cfg is not None:
            workers = cfg.data.workers
            # data.workers changes who decodes, not what is trained on (the sampler runs in this process): a resumed
            # run may use another count; any other difference is refused.
            cfg = replace(cfg, data=replace(cfg.data, workers=saved.data.workers))
            if cfg.to_dict() != saved.to_dict():
                raise ConfigError(f"--resume continues with the config saved in {start}.json; drop --config/--set "
                                  "(start a new run to change settings; only data.workers may differ)")
            saved = replace(saved, data=replace(saved.data, workers=workers))
        cfg = saved
    assert cfg is not None
    accelerator = make_accelerator(cfg)
    data = load_data(cfg, progress=progress)
    tc = cfg.train
    if tc.batch_size > len(data):
        raise ConfigError(f"train.batch_size ({tc.batch_size}) is larger than the data ({len(data)} examples)")
    torch.manual_seed(tc.seed)  # the network's initial weights
    if start is not None:  # the network the checkpoint records, whatever the presets say now
        denoiser = denoiser_from_spec(read_model_record(start)[1], cfg.perf)
    else:
        denoiser = build_denoiser(cfg, data.example_shape, data.num_classes)
    denoiser = denoiser.to(accelerator.device)
    record = {"kind": "teacher", "config": cfg.to_dict(), **model_record(denoiser.spec, cfg, cfg.distill.start_steps)}
    phase = Phase(name="teacher", desc="teacher", settings=optim_settings(tc, tc.steps, tc.lr_decay),
                  weighting=cfg.diffusion.weighting, seed=tc.seed + 1, grad_accum=tc.grad_accum,
                  checkpoints=runfolder.teacher_checkpoints(out), prefix=runfolder.TEACHER_PREFIX,
                  checkpoint_every=tc.checkpoint_every, keep=tc.keep_checkpoints, record=record)

    def batches_after(start_batch: int, data_state: dict | None):
        # Checkpoints written before the data order was stored resume at the same place: step * grad_accum batches.
        return make_batches(data, tc.batch_size, tc.seed, shard=shard_of(accelerator), workers=cfg.data.workers,
                            device=accelerator.device, state=data_state, start=start_batch)

    # Label dropout (classifier-free guidance) replaces labels by the null class, the embedding row after the classes.
    objective = TeacherObjective(schedule_of(cfg), tc.label_dropout, null_label=denoiser.spec.num_classes)
    runlog = RunLog(out, enabled=accelerator.is_main_process)
    result = run_phase(phase, denoiser, batches_after, objective, accelerator=accelerator,
                       runlog=runlog, resume_from=start, progress=progress, perf=cfg.perf)
    runlog.close()
    stem = runfolder.teacher_stem(out)
    if accelerator.is_main_process:  # every process holds the same weights; one writes them
        save_checkpoint(stem, result.modules, {**record, "sampling_weights": result.sampling_weights,
                                               "step": tc.steps, "loss_history": result.history,
                                               "num_processes": accelerator.num_processes})
    accelerator.wait_for_everyone()
    return stem
