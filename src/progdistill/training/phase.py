"""One training phase, shared by teacher training and every distillation round (as in the paper's code, where a
round is the same training with a teacher target): optimizer settings from a config section, EMA, periodic
checkpoints and their pruning, exact resume, the NaN guard's message and the run log. Callers build the network,
the data stream and the objective, and write what a finished phase leaves behind."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
from accelerate import Accelerator
from torch import Tensor
from torch.optim.swa_utils import AveragedModel

from ..denoiser import Denoiser
from ..checkpoint import prune, save_checkpoint
from .loop import NonFiniteLossError, Objective, OptimSettings, fit, make_ema
from .resume import latest_loadable, loop_tensors, restore_loop_state
from .runlog import RunLog


def optim_settings(section, total_steps: int, decay: str) -> OptimSettings:
    """OptimSettings from a [train] or [distill] config section (the same field names in both)."""
    return OptimSettings(lr=section.lr, total_steps=total_steps, warmup=section.warmup, decay=decay,
                         grad_clip=section.grad_clip, betas=(section.adam_beta1, section.adam_beta2),
                         ema_decay=section.ema_decay)


@dataclass
class Phase:
    """What distinguishes one phase from another: its name in the logs, its settings and its checkpoints."""

    name: str  # log phase: "teacher" or "roundRR"
    desc: str  # progress-bar text
    settings: OptimSettings
    weighting: str
    seed: int  # the loop's RNG seed (noise and timesteps)
    grad_accum: int
    checkpoints: Path  # folder of this phase's periodic checkpoints
    prefix: str  # their name prefix ("teacher_step", "round03_step")
    checkpoint_every: int  # 0: none
    keep: int  # how many of the newest are kept
    record: dict  # fields of every checkpoint record of the phase (kind, config, model spec, ...)
    fallback: Path | None = None  # the last good checkpoint when the phase has written none yet
    fallback_note: str = ""  # appended to the NaN message


@dataclass
class PhaseResult:
    model: Denoiser  # the trained network, unwrapped from accelerate
    ema: AveragedModel | None
    history: list[tuple[int, float]]

    @property
    def sampling(self) -> Denoiser:
        """The weights to sample with: the EMA's when there is one."""
        return self.ema.module if self.ema is not None else self.model

    @property
    def modules(self) -> dict[str, torch.nn.Module]:
        return {"model": self.model} | ({"ema": self.ema.module} if self.ema is not None else {})

    @property
    def sampling_weights(self) -> str:
        return "ema" if self.ema is not None else "model"


def run_phase(
    phase: Phase,
    denoiser: Denoiser,
    batches_after: Callable[[int, dict | None], Iterator[tuple[Tensor, Tensor | None]]],
    objective: Objective,
    *,
    accelerator: Accelerator,
    runlog: RunLog,
    resume_from: Path | None = None,
    progress: bool = True,
    perf=None,
) -> PhaseResult:
    """Train `denoiser` (already initialised, on the accelerator's device) for phase.settings.total_steps steps.

    `batches_after(k, data_state)` gives this process's data stream from micro-batch k on (exact resume): from the
    data-order state a checkpoint recorded (`data_state`, None for a fresh phase or an older checkpoint) or, without
    one, by skipping k micro-batches. A stream with close() (DataLoader workers) is closed when the phase ends.
    `resume_from`: a periodic checkpoint of this phase to continue from, bit for bit."""
    ema = make_ema(denoiser, phase.settings.ema_decay)
    state = restore_loop_state(resume_from, denoiser, ema) if resume_from is not None else None
    done = state["step"] if state else 0
    weights = "ema" if ema is not None else "model"

    def on_step(step: int, loss: float, snapshot) -> None:
        if (phase.checkpoint_every and step % phase.checkpoint_every == 0 and step < phase.settings.total_steps
                and accelerator.is_main_process):
            tensors, extra = loop_tensors(snapshot(), ema)
            modules = {"model": accelerator.unwrap_model(denoiser)} | ({"ema": ema.module} if ema is not None else {})
            save_checkpoint(phase.checkpoints / f"{phase.prefix}{step:08d}", modules,
                            {**phase.record, "step": step, "sampling_weights": weights, **extra}, tensors)
            prune(phase.checkpoints, phase.prefix + "*", phase.keep)

    batches = batches_after(done * phase.grad_accum, state.get("data") if state else None)
    close = getattr(batches, "close", lambda: None)
    try:
        history = fit(denoiser, batches, objective, phase.weighting, phase.settings,
                      accelerator=accelerator, seed=phase.seed, ema=ema, on_step=on_step, desc=phase.desc,
                      progress=progress, grad_accum=phase.grad_accum, resume=state,
                      log=lambda step, values: runlog.scalars(phase.name, step, values), perf=perf)
    except NonFiniteLossError as e:
        runlog.close()
        close()
        last = latest_loadable(phase.checkpoints, phase.prefix + "*") or phase.fallback
        where = f"{last}.safetensors" if last else "none yet"
        raise NonFiniteLossError(f"{e} Nothing was saved after the last good checkpoint: {where}"
                                 f"{phase.fallback_note}.") from None
    close()
    return PhaseResult(accelerator.unwrap_model(denoiser), ema, history)
