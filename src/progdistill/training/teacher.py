"""Train the first teacher in continuous time, with periodic checkpoints from which a run resumes exactly."""

from __future__ import annotations

from pathlib import Path

import torch

from ..build import build_denoiser, load_data, make_accelerator, schedule_of
from ..config import Config, ConfigError, config_from_json
from ..data import make_batches
from .checkpoint import CheckpointError, prune, read_record, save_checkpoint
from .loop import NonFiniteLossError, OptimSettings, fit, make_ema
from .objectives import TeacherObjective
from .resume import latest_loadable, loop_tensors, restore_loop_state
from .runlog import RunLog


def shard_of(accelerator) -> tuple[int, int]:
    """(this process's rank, number of processes): which rows of every global batch this process loads."""
    return accelerator.process_index, accelerator.num_processes


def find_resume_point(out: Path) -> Path | None:
    """The newest loadable teacher checkpoint in out/checkpoints (a damaged newer one is skipped), or None."""
    return latest_loadable(Path(out) / "checkpoints", "teacher_step*")


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
        if cfg is not None and cfg.to_dict() != saved.to_dict():
            raise ConfigError(f"--resume continues with the config saved in {start}.json; drop --config/--set "
                              "(start a new run to change settings)")
        cfg = saved
    assert cfg is not None
    accelerator = make_accelerator(cfg)
    data = load_data(cfg, progress=progress)
    tc = cfg.train
    if tc.batch_size > len(data):
        raise ConfigError(f"train.batch_size ({tc.batch_size}) is larger than the data ({len(data)} examples)")
    torch.manual_seed(tc.seed)  # the network's initial weights
    denoiser = build_denoiser(cfg, data.example_shape, data.num_classes).to(accelerator.device)
    ema = make_ema(denoiser, tc.ema_decay)
    settings = OptimSettings(lr=tc.lr, total_steps=tc.steps, warmup=tc.warmup, decay=tc.lr_decay,
                             grad_clip=tc.grad_clip, betas=(tc.adam_beta1, tc.adam_beta2), ema_decay=tc.ema_decay)
    record = {"kind": "teacher", "config": cfg.to_dict(), "data_shape": list(data.example_shape),
              "num_classes": data.num_classes, "sampling_weights": "ema" if ema is not None else "model"}
    state = restore_loop_state(start, denoiser, ema) if start is not None else None
    done = state["step"] if state else 0

    def modules() -> dict:
        mods = {"model": accelerator.unwrap_model(denoiser)}
        if ema is not None:
            mods["ema"] = ema.module
        return mods

    def on_step(step: int, loss: float, snapshot) -> None:
        if step % tc.checkpoint_every == 0 and step < tc.steps and accelerator.is_main_process:
            tensors, extra = loop_tensors(snapshot(), ema)
            save_checkpoint(out / "checkpoints" / f"teacher_step{step:08d}", modules(),
                            {**record, "step": step, **extra}, tensors)
            prune(out / "checkpoints", "teacher_step*", tc.keep_checkpoints)

    # Checkpoints written before the data order was stored resume at the same place: step * grad_accum batches.
    batches = make_batches(data, tc.batch_size, tc.seed, shard=shard_of(accelerator), workers=cfg.data.workers,
                           device=accelerator.device, state=state.get("data") if state else None,
                           start=done * tc.grad_accum)
    runlog = RunLog(out, enabled=accelerator.is_main_process)
    try:
        history = fit(denoiser, batches, TeacherObjective(schedule_of(cfg)), cfg.diffusion.weighting, settings,
                      accelerator=accelerator, seed=tc.seed + 1, ema=ema, on_step=on_step, desc="teacher",
                      progress=progress, grad_accum=tc.grad_accum, resume=state,
                      log=lambda step, values: runlog.scalars("teacher", step, values), perf=cfg.perf)
    except NonFiniteLossError as e:
        runlog.close()
        batches.close()
        last = find_resume_point(out)
        raise NonFiniteLossError(f"{e} Nothing was saved after the last good checkpoint: "
                                 f"{f'{last}.safetensors' if last else 'none yet'}.") from None
    runlog.close()
    batches.close()
    stem = out / "teacher"
    if accelerator.is_main_process:  # every process holds the same weights; one writes them
        save_checkpoint(stem, modules(), {**record, "step": tc.steps, "loss_history": history,
                                          "num_processes": accelerator.num_processes})
    accelerator.wait_for_everyone()
    return stem



