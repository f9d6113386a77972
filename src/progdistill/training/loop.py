"""The one training loop, shared by teacher training and distillation: thin over accelerate, no math inside."""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from accelerate import Accelerator
from torch import Tensor
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from .. import conditioning
from ..denoiser import Denoiser
from ..diffusion.weighting import weighted_loss
from ..compiling import maybe_compiled
from ..nets.base import enable_gradient_checkpointing
from .objectives import Target


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


# objective(this process's rows x of the global batch, their labels, generator, (rank, world)) -> Target for those
# rows (noise and times drawn for the whole global batch)
Objective = Callable[[Tensor, Tensor | None, torch.Generator, tuple[int, int]], Target]

# The logged running loss: an exponential average over about 50 steps (weights of the old value and the new one).
SMOOTHING = (0.98, 0.02)
HISTORY_EVERY = 50  # steps between the (step, running loss) pairs a phase keeps in its history
# A fresh loop seeds the global RNG (dropout) with its noise seed plus this offset, apart from the generator's stream.
DROPOUT_SEED_OFFSET = 1


@dataclass
class LoopOptions:
    """How `fit` runs, beyond the optimizer settings."""

    seed: int
    grad_accum: int = 1
    desc: str = "train"
    progress: bool = True
    log_every: int = 10
    perf: Any = None  # a PerfConfig, or None


class TrainingLoop:
    """The state of one run of `fit`: the prepared model and optimizer, the learning-rate schedule, the objective's
    generator, the loss history, and one optimizer step at a time."""

    def __init__(self, denoiser: Denoiser, settings: OptimSettings, accelerator: Accelerator, opts: LoopOptions,
                 resume: dict | None):
        self.accelerator, self.settings, self.opts = accelerator, settings, opts
        self.shard = (accelerator.process_index, accelerator.num_processes)
        perf = opts.perf
        self.channels_last = bool(perf and perf.channels_last)
        if self.channels_last:
            denoiser.to(memory_format=torch.channels_last)
        if perf and perf.gradient_checkpointing:
            enable_gradient_checkpointing(denoiser)
        optimizer = torch.optim.Adam(denoiser.parameters(), lr=settings.lr, betas=settings.betas,
                                     fused=True if perf and perf.fused_adam else None)
        self.generator = torch.Generator(device=accelerator.device).manual_seed(opts.seed)
        self.first, self.history, self.running = 1, [], None
        # Steps run but not yet read back: (step, its micro-batches' losses, gradient norm), all on the device. The
        # host reads them (one sync) at log points, checkpoints and the end, not every step.
        self.pending: list[tuple[int, list[Tensor], Tensor | None]] = []
        self.last_value, self.last_norm = math.nan, None  # the newest read-back step's loss and gradient norm
        self.images_seen = 0  # training images (of every process) since the last throughput log
        if resume is not None:
            optimizer.load_state_dict(resume["optimizer"])
            self.generator.set_state(resume["generator"])
            torch.set_rng_state(resume["torch_rng"])  # the global RNG drives dropout
            self.first = int(resume["step"]) + 1
            self.history = [tuple(h) for h in resume.get("history", [])]
            self.running = resume.get("running")
            # last_epoch = step - 1, and the constructor's own step() brings it to `step`: lr = lr * factor(step).
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, settings.lr_factor, last_epoch=self.first - 2)
        else:
            torch.manual_seed(opts.seed + DROPOUT_SEED_OFFSET)  # the global RNG drives dropout
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, settings.lr_factor)
        self.model, self.optimizer = accelerator.prepare(denoiser, optimizer)
        self.model.train()
        # Compiling wraps the forward (and so its backward) only: weights and state dicts stay the prepared model's.
        self.forward = maybe_compiled(self.model, f"the {opts.desc} step's network", bool(perf and perf.compile))

    def snapshot(self, step: int, batches) -> Callable[[], dict]:
        """The loop state after `step`, built on demand (see `fit`)."""
        state_dict = getattr(batches, "state_dict", None)  # data.Batches knows its data order; a plain iterator not

        def snapshot() -> dict:
            self.flush()  # a checkpoint is written only after its steps are checked finite
            return {"step": step, "optimizer": self.optimizer.state_dict(), "generator": self.generator.get_state(),
                    "torch_rng": torch.get_rng_state(), "history": list(self.history), "running": self.running,
                    "data": state_dict() if state_dict is not None else None}

        return snapshot

    def micro_batch(self, x: Tensor, labels: Tensor | None, objective: Objective, weighting: str, last: bool
                    ) -> Tensor:
        """Forward and backward of one micro-batch; returns its share of the global batch's loss (on the device)."""
        accelerator, device = self.accelerator, self.accelerator.device
        self.images_seen += x.shape[0] * self.shard[1]
        x = x.to(device, non_blocking=True)
        labels = conditioning.to(labels, device)
        with accelerator.autocast():  # distillation: the teacher evaluates in the student's precision
            target = objective(x, labels, self.generator, self.shard)
        z_t = target.z_t
        if self.channels_last and z_t.ndim == 4:
            z_t = z_t.contiguous(memory_format=torch.channels_last)
        # Gradients are only all-reduced on the last micro-batch of a step.
        with contextlib.nullcontext() if last else accelerator.no_sync(self.model):
            with accelerator.autocast():
                x_hat = self.forward(z_t, target.logsnr, **({"labels": labels} | target.inputs))
            loss = weighted_loss(x_hat, target.x, target.logsnr, weighting) / self.opts.grad_accum
            accelerator.backward(loss)
        # The loss of the global batch (mean over processes): every process logs and checks the same value.
        return (accelerator.reduce(loss.detach(), reduction="mean") if self.shard[1] > 1 else loss).detach()

    def flush(self) -> None:
        """Read the pending steps' losses and gradient norms back (one sync), check them in order and update the
        running loss and history; NonFiniteLossError at the first non-finite step (its weights and every later
        step's are never written: checkpoints flush first)."""
        if not self.pending:
            return
        losses = torch.stack([loss.float() for _, micro, _ in self.pending for loss in micro]).tolist()
        norms = [norm for _, _, norm in self.pending]
        finite_norms = torch.isfinite(torch.stack(norms)).tolist() if norms[0] is not None else [True] * len(norms)
        at, pending, self.pending = 0, self.pending, []
        for (step, micro, norm), norm_ok in zip(pending, finite_norms):
            value = 0.0
            for loss in losses[at:at + len(micro)]:  # summed on the host in this order, as the history always was
                value += loss
            at += len(micro)
            if not math.isfinite(value) or not norm_ok:
                raise NonFiniteLossError(
                    f"{self.opts.desc}: non-finite loss ({value}) or gradient norm at step {step}; stopping (no "
                    "checkpoint is written from it on). Lower the learning rate, keep grad_clip > 0, or check the "
                    "data for NaNs.")
            keep, new = SMOOTHING
            self.running = value if self.running is None else keep * self.running + new * value
            if step % HISTORY_EVERY == 0 or step == self.settings.total_steps:
                self.history.append((step, self.running))
            self.last_value, self.last_norm = value, norm

    def step(self, step: int, batches, objective: Objective, weighting: str, ema: AveragedModel | None) -> Tensor:
        """One optimizer step over grad_accum micro-batches, its checks left pending (see `flush`); returns the
        step's loss on the device."""
        self.optimizer.zero_grad(set_to_none=True)
        losses = []
        for micro in range(self.opts.grad_accum):
            x, labels = next(batches)  # this process's rows of the global batch
            losses.append(self.micro_batch(x, labels, objective, weighting, micro == self.opts.grad_accum - 1))
        grad_norm = (self.accelerator.clip_grad_norm_(self.model.parameters(), self.settings.grad_clip)
                     if self.settings.grad_clip > 0 else None)
        self.optimizer.step()
        self.scheduler.step()
        if ema is not None:
            ema.update_parameters(self.accelerator.unwrap_model(self.model))
        self.pending.append((step, losses, grad_norm))
        return sum(losses[1:], losses[0])


class ScalarLog:
    """Every `every` steps and at the last: the step's loss, its smoothed value, the learning rate, the gradient norm
    and the throughput in training images per second since the last call."""

    def __init__(self, log: Callable[[int, dict], None] | None, every: int, total: int):
        self.log, self.every, self.total = log, every, total
        self.clock = time.perf_counter()

    def __call__(self, step: int, loop: TrainingLoop) -> None:
        """Log `step` (already read back by loop.flush) when it is a log step."""
        if self.log is None or not (step % self.every == 0 or step == self.total):
            return
        now = time.perf_counter()
        scalars = {"loss": loop.last_value, "loss_smoothed": loop.running, "lr": loop.scheduler.get_last_lr()[0],
                   "images_per_s": loop.images_seen / max(now - self.clock, 1e-9)}
        if loop.last_norm is not None:
            scalars["grad_norm"] = float(loop.last_norm)
        self.log(step, scalars)
        self.clock, loop.images_seen = now, 0


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
    on_step: Callable[[int, Tensor, Callable[[], dict]], None] | None = None,
    desc: str = "train",
    progress: bool = True,
    grad_accum: int = 1,
    resume: dict | None = None,
    log: Callable[[int, dict], None] | None = None,
    log_every: int = 10,
    perf=None,
) -> list[tuple[int, float]]:
    """Run settings.total_steps optimizer steps of  w(lambda) ||x_target - x_hat(z_t)||^2; returns (step, loss)
    pairs logged along the way. Every optimizer step averages the gradients of `grad_accum` micro-batches drawn
    from `batches`, which yields this process's rows of every global batch.

    NaN guard: a non-finite loss or gradient norm stops the run with NonFiniteLossError naming the step. Losses and
    norms stay on the device and are read back every `log_every` steps, at every snapshot (checkpoint) and at the
    end, so a step costs no host sync; the updates after a bad step are thrown away with the run, never written.

    Exact resume: `on_step(step, loss, snapshot)` runs after every step (1-based; `loss` a 0-dim tensor on the
    device, which reading syncs) and may call `snapshot()` for the
    loop state after `step` (optimizer, objective RNG, loss history, and the data order under "data" when `batches`
    has a `state_dict()`); passing that dict back as `resume` (with the EMA restored by the caller and `batches`
    advanced by step * grad_accum micro-batches) continues bit for bit as if never interrupted.

    `log(step, scalars)`: see `ScalarLog`. `perf` (a PerfConfig) switches on channels-last memory, fused Adam and
    torch.compile; the objective (for distillation: the two teacher evaluations, without gradients) runs under the
    same autocast as the student."""
    opts = LoopOptions(seed, grad_accum, desc, progress, log_every, perf)
    loop = TrainingLoop(denoiser, settings, accelerator, opts, resume)
    bar = tqdm(range(loop.first, settings.total_steps + 1), desc=desc, disable=not progress, leave=False,
               dynamic_ncols=True, initial=loop.first - 1, total=settings.total_steps)
    scalar_log = ScalarLog(log, log_every, settings.total_steps)
    for step in bar:
        loss = loop.step(step, batches, objective, weighting, ema)
        if step % log_every == 0 or step % HISTORY_EVERY == 0 or step == settings.total_steps:
            loop.flush()  # the only per-step host sync, every log_every steps
        if step % HISTORY_EVERY == 0 or step == settings.total_steps:
            bar.set_postfix(loss=f"{loop.running:.4g}", lr=f"{loop.scheduler.get_last_lr()[0]:.2e}")
        scalar_log(step, loop)
        if on_step is not None:
            on_step(step, loss, loop.snapshot(step, batches))
    bar.close()
    loop.model.eval()
    return loop.history
