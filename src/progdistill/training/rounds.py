"""The round loop of progressive distillation: halve N, the student becomes the teacher, fresh optimizer."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable

from tqdm.auto import tqdm

from ..build import build_denoiser, load_data, load_denoiser, make_accelerator, schedule_of
from ..config import Config, ConfigError, check_distill_steps
from ..diffusion.weighting import check_combination
from .checkpoint import save_checkpoint
from .loop import OptimSettings, fit, make_ema
from .objectives import DistillObjective


def student_stem(out: Path, steps: int) -> Path:
    return Path(out) / "students" / f"student_{steps:04d}steps"


def distill(
    teacher_stem: str | Path,
    out: Path,
    cfg: Config | None = None,
    *,
    on_round: Callable[[Path, int], None] | None = None,
    progress: bool = True,
) -> list[Path]:
    """Distil from a teacher or a saved student down to cfg.distill.target_steps; returns the students' stems.

    A teacher checkpoint starts at cfg.distill.start_steps; a student checkpoint of M steps continues from M.
    `cfg` defaults to the checkpoint's own config; only its [distill] section and device are used from it.
    """
    out = Path(out)
    teacher, record, ckpt_cfg = load_denoiser(teacher_stem)
    cfg = replace(ckpt_cfg, distill=cfg.distill, device=cfg.device).validate() if cfg is not None else ckpt_cfg
    dc = cfg.distill
    check_combination(cfg.model.parameterization, dc.weighting)
    if cfg.model.parameterization == "eps":
        raise ConfigError("model.parameterization 'eps' cannot be distilled: x_hat = (z - sigma eps) / alpha "
                          "blows up as alpha -> 0 at t = 1 (paper section 2); train the teacher with x, v or both")
    start = int(record["sampling_steps"]) if record["kind"] == "student" else dc.start_steps
    check_distill_steps(start, dc.target_steps,
                        start_name="the checkpoint's step count" if record["kind"] == "student" else
                        "distill.start_steps")
    accelerator = make_accelerator(cfg)
    data = load_data(cfg)
    schedule = schedule_of(cfg)
    data_shape, num_classes = tuple(record["data_shape"]), int(record["num_classes"])
    first_round = int(record.get("round", 0)) + 1
    teacher = teacher.to(accelerator.device)
    stems: list[Path] = []
    n, r = start, first_round
    rounds = tqdm(total=max(start.bit_length() - dc.target_steps.bit_length(), 0), desc="distill rounds",
                  disable=not progress, dynamic_ncols=True)
    while n > dc.target_steps:
        m = n // 2
        updates = (dc.final_updates_per_round
                   if dc.final_updates_per_round > 0 and m <= dc.long_round_max_steps else dc.updates_per_round)
        student = build_denoiser(cfg, data_shape, num_classes, dropout=dc.dropout).to(accelerator.device)
        student.load_state_dict(teacher.state_dict())  # student starts from the teacher's (sampling) weights
        ema = make_ema(student, dc.ema_decay)
        settings = OptimSettings(lr=dc.lr, total_steps=updates, warmup=dc.warmup, decay="linear",
                                 grad_clip=dc.grad_clip, betas=(dc.adam_beta1, dc.adam_beta2))
        history = fit(student, data.batches(dc.batch_size, dc.seed + r), DistillObjective(teacher, schedule, m),
                      dc.weighting, settings, accelerator=accelerator, seed=dc.seed + 1000 * r, ema=ema,
                      desc=f"round {r}: {n} -> {m} steps", progress=progress, grad_accum=dc.grad_accum)
        student = accelerator.unwrap_model(student)
        sampling = ema.module if ema is not None else student
        mods = {"model": student} | ({"ema": ema.module} if ema is not None else {})
        stem = save_checkpoint(student_stem(out, m), mods, {
            "kind": "student", "config": cfg.to_dict(), "data_shape": list(data_shape), "num_classes": num_classes,
            "sampling_weights": "ema" if ema is not None else "model", "sampling_steps": m, "round": r,
            "teacher": str(teacher_stem) if r == first_round else str(stems[-1]), "step": updates,
            "loss_history": history,
        })
        stems.append(stem)
        if on_round is not None:
            on_round(stem, m)
        teacher = sampling.eval().requires_grad_(False)
        n, r = m, r + 1
        rounds.update(1)
    rounds.close()
    return stems
