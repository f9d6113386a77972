"""Train the first teacher in continuous time, with periodic checkpoints."""

from __future__ import annotations

from pathlib import Path

from ..build import build_denoiser, load_data, make_accelerator, schedule_of
from ..config import Config
from .checkpoint import prune, save_checkpoint
from .loop import OptimSettings, fit, make_ema
from .objectives import TeacherObjective


def train_teacher(cfg: Config, out: Path, *, progress: bool = True) -> Path:
    """Train a teacher as configured; returns the stem of out/teacher (weights "model" and, with EMA, "ema")."""
    out = Path(out)
    accelerator = make_accelerator(cfg)
    data = load_data(cfg)
    tc = cfg.train
    denoiser = build_denoiser(cfg, tuple(data.x.shape[1:]), data.num_classes).to(accelerator.device)
    ema = make_ema(denoiser, tc.ema_decay)
    settings = OptimSettings(lr=tc.lr, total_steps=tc.steps, warmup=tc.warmup, decay=tc.lr_decay,
                             grad_clip=tc.grad_clip, betas=(tc.adam_beta1, tc.adam_beta2), ema_decay=tc.ema_decay)
    record = {"kind": "teacher", "config": cfg.to_dict(), "data_shape": list(data.x.shape[1:]),
              "num_classes": data.num_classes, "sampling_weights": "ema" if ema is not None else "model"}

    def modules() -> dict:
        mods = {"model": accelerator.unwrap_model(denoiser)}
        if ema is not None:
            mods["ema"] = ema.module
        return mods

    def on_step(step: int, loss: float) -> None:
        if step % tc.checkpoint_every == 0 and step < tc.steps and accelerator.is_main_process:
            save_checkpoint(out / "checkpoints" / f"teacher_step{step:08d}", modules(), {**record, "step": step})
            prune(out / "checkpoints", "teacher_step*", tc.keep_checkpoints)

    history = fit(denoiser, data.batches(tc.batch_size, tc.seed), TeacherObjective(schedule_of(cfg)),
                  cfg.diffusion.weighting, settings, accelerator=accelerator, seed=tc.seed + 1, ema=ema,
                  on_step=on_step, desc="teacher", progress=progress, grad_accum=tc.grad_accum)
    return save_checkpoint(out / "teacher", modules(), {**record, "step": tc.steps, "loss_history": history})
