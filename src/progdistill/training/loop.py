"""The one training loop, shared by teacher training and distillation: thin over accelerate, no math inside."""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from accelerate import Accelerator
from torch import Tensor
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from ..denoiser import Denoiser
from ..diffusion.weighting import weighted_loss


class NonFiniteLossError(FloatingPointError):
    """The loss or the gradient norm became NaN or infinite."""


@dataclass
class OptimSettings:
    """Adam with linear warmup, then a constant, linear-to-0 or cosine-to-0 learning rate."""

    lr: float
    total_steps: int
    warmup: int = 0
    decay: str = "constant"
    grad_clip: float = 1.0
    betas: tuple[float, float] = (0.9, 0.999)
    ema_decay: float = 0.0

    def lr_factor(self, step: int) -> float:
        """Multiplier of lr at optimizer step `step` (0-based)."""
        if step < self.warmup:
            return (step + 1) / self.warmup
        if self.decay == "constant":
            return 1.0
        span = max(self.total_steps - self.warmup, 1)
        frac = min((step - self.warmup) / span, 1.0)
        if self.decay == "linear":
            return 1.0 - frac
        return 0.5 * (1.0 + math.cos(math.pi * frac))


def make_ema(model: torch.nn.Module, decay: float) -> AveragedModel | None:
    """An exponential moving average of `model`'s parameters and buffers, or None when decay is 0."""
    if decay <= 0:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


# objective(this process's rows x of the global batch, their labels, generator, (rank, world))
#   -> (z_t, logsnr_t, x_target) for those rows (noise and times drawn for the whole global batch), optionally with
#   a fourth item: keyword inputs of the model's call that replace or add to {"labels": labels} (e.g. "w")
Objective = Callable[[Tensor, Tensor | None, torch.Generator, tuple[int, int]], tuple]


def fit(
    denoiser: Denoiser,
    batches: Iterator[tuple[Tensor, Tensor | None]],
    objective: Objective,
    weighting: str,
    settings: OptimSettings,
    *,
    accelerator: Accelerator,
    seed: int,
    ema: AveragedModel | None = None,
    on_step: Callable[[int, float, Callable[[], dict]], None] | None = None,
    desc: str = "train",
    progress: bool = True,
    grad_accum: int = 1,
    resume: dict | None = None,
    log: Callable[[int, dict], None] | None = None,
    log_every: int = 10,
    perf=None,
) -> list[tuple[int, float]]:
    """Run settings.total_steps optimizer steps of  w(lambda) ||x_target - x_hat(z_t)||^2; returns (step, loss)
    pairs logged along the way. `on_step(step, loss)` runs after every step (1-based), e.g. to checkpoint.
    Every optimizer step averages the gradients of `grad_accum` micro-batches drawn from `batches`.

    Exact resume: `on_step(step, loss, snapshot)` may call `snapshot()` for the loop state after `step` (optimizer,
    objective RNG, loss history); passing that dict back as `resume` (with the EMA restored by the caller and
    `batches` advanced by step * grad_accum micro-batches) continues bit for bit as if never interrupted. `batches`
    yields this process's rows of every global batch; when it has a `state_dict()` (data.Batches), the snapshot
    holds it under "data", the data order to resume from.

    `log(step, scalars)` receives, every `log_every` steps and at the last, the step's loss, its smoothed value,
    the learning rate, the gradient norm and the throughput in training images per second since the last call.

    `perf` (a PerfConfig) switches on channels-last memory, fused Adam and torch.compile; the objective (for
    distillation: the two teacher evaluations, without gradients) runs under the same autocast as the student."""
    device = accelerator.device
    shard = (accelerator.process_index, accelerator.num_processes)
    channels_last = bool(perf and perf.channels_last)
    if channels_last:
        denoiser.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(denoiser.parameters(), lr=settings.lr, betas=settings.betas,
                                 fused=True if perf and perf.fused_adam else None)
    generator = torch.Generator(device=device).manual_seed(seed)
    first = 1
    history: list[tuple[int, float]] = []
    running = None
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        generator.set_state(resume["generator"])
        torch.set_rng_state(resume["torch_rng"])  # the global RNG drives dropout
        first = int(resume["step"]) + 1
        history = [tuple(h) for h in resume.get("history", [])]
        running = resume.get("running")
        # last_epoch = step - 1, and the constructor's own step() brings it to `step`: lr = lr * factor(step).
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, settings.lr_factor, last_epoch=first - 2)
    else:
        torch.manual_seed(seed + 1)  # the global RNG drives dropout
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, settings.lr_factor)
    model, optimizer = accelerator.prepare(denoiser, optimizer)
    model.train()
    forward = torch.compile(model) if perf and perf.compile else model  # weights and state dicts stay model's

    def snapshot_at(step: int):
        return lambda: {"step": step, "optimizer": optimizer.state_dict(), "generator": generator.get_state(),
                        "torch_rng": torch.get_rng_state(), "history": list(history), "running": running,
                        "data": batches.state_dict() if hasattr(batches, "state_dict") else None}

    bar = tqdm(range(first, settings.total_steps + 1), desc=desc, disable=not progress, leave=False,
               dynamic_ncols=True, initial=first - 1, total=settings.total_steps)
    clock, images_seen = time.perf_counter(), 0
    for step in bar:
        optimizer.zero_grad(set_to_none=True)
        value = 0.0
        for micro in range(grad_accum):
            x, labels = next(batches)  # this process's rows of the global batch
            images_seen += x.shape[0] * shard[1]
            x = x.to(device, non_blocking=True)
            labels = labels.to(device) if labels is not None else None
            with accelerator.autocast():  # distillation: the teacher evaluates in the student's precision
                z_t, logsnr, x_target, *extra = objective(x, labels, generator, shard)
            inputs = {"labels": labels} | (extra[0] if extra else {})  # e.g. dropped labels, guidance weight w
            if channels_last and z_t.ndim == 4:
                z_t = z_t.contiguous(memory_format=torch.channels_last)
            # Gradients are only all-reduced on the last micro-batch of a step.
            sync = contextlib.nullcontext() if micro == grad_accum - 1 else accelerator.no_sync(model)
            with sync:
                with accelerator.autocast():
                    x_hat = forward(z_t, logsnr, **inputs)
                loss = weighted_loss(x_hat, x_target, logsnr, weighting) / grad_accum
                accelerator.backward(loss)
            # The loss of the global batch (mean over processes): every process logs and checks the same value.
            value += (accelerator.reduce(loss.detach(), reduction="mean") if shard[1] > 1 else loss).item()
        grad_norm = (accelerator.clip_grad_norm_(model.parameters(), settings.grad_clip)
                     if settings.grad_clip > 0 else None)
        if not math.isfinite(value) or (grad_norm is not None and not torch.isfinite(grad_norm)):
            raise NonFiniteLossError(
                f"{desc}: non-finite loss ({value}) or gradient norm at step {step}; stopping before the update. "
                "Lower the learning rate, keep grad_clip > 0, or check the data for NaNs."
            )
        optimizer.step()
        scheduler.step()
        if ema is not None:
            ema.update_parameters(accelerator.unwrap_model(model))
        running = value if running is None else 0.98 * running + 0.02 * value
        if step % 50 == 0 or step == settings.total_steps:
            history.append((step, running))
            bar.set_postfix(loss=f"{running:.4g}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
        if log is not None and (step % log_every == 0 or step == settings.total_steps):
            now = time.perf_counter()
            scalars = {"loss": value, "loss_smoothed": running, "lr": scheduler.get_last_lr()[0],
                       "images_per_s": images_seen / max(now - clock, 1e-9)}
            if grad_norm is not None:
                scalars["grad_norm"] = float(grad_norm)
            log(step, scalars)
            clock, images_seen = now, 0
        if on_step is not None:
            on_step(step, value, snapshot_at(step))
    bar.close()
    model.eval()
    return history
