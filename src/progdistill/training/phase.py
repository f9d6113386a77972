"""One training phase, shared by teacher training, guided stage 1, the warm-up of reparameterised students and every
distillation round (as in the paper's code, where a round is the same training with a teacher target).

A `Phase` owns its set-up: the data stream (seeded, sharded, resumable), the batch-size check, EMA, periodic
checkpoints and their pruning, exact resume, the NaN guard's message, the final checkpoint of a finished phase and
the cleanup of its mid-run checkpoints. Callers say only what differs: the objective, the model, the settings."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from accelerate import Accelerator
from torch.optim.swa_utils import AveragedModel

from ..build import load_data, make_accelerator
from ..checkpoint import DiskFullError, checkpoint_paths, prune, save_checkpoint
from ..config import Config, ConfigError, OptimConfig, config_from_json
from ..data import ExampleData, make_batches
from ..denoiser import Denoiser
from .loop import NonFiniteLossError, Objective, OptimSettings, fit, make_ema
from .resume import latest_loadable, loop_tensors, restore_loop_state
from .runlog import RunLog


def optim_settings(optim: OptimConfig, total_steps: int, decay: str) -> OptimSettings:
    """OptimSettings from an optimizer sub-table ([train.optim] or [distill.optim]) over `total_steps`."""
    return OptimSettings(lr=optim.lr, total_steps=total_steps, warmup=optim.warmup, decay=decay,
                         grad_clip=optim.grad_clip, betas=(optim.adam_beta1, optim.adam_beta2),
                         ema_decay=optim.ema_decay)


def resume_config(record: dict, cfg: Config | None, sections: tuple[str, ...], stem: Path, *,
                  free: tuple[str, ...] = ()) -> Config:
    """The config a resumed phase continues with: the one its checkpoint `record` (at `stem`) saved. A `cfg` given
    as well must agree with it in `sections` ("all": the whole config); the `free` fields ("section.key": settings
    that change who does the work, not what is trained, e.g. data.workers) are taken from `cfg`."""
    saved = config_from_json(record["config"])
    if cfg is None:
        return saved
    for name in free:
        section, key = name.split(".")
        saved = replace(saved, **{section: replace(getattr(saved, section), **{key: getattr(getattr(cfg, section), key)})})
    names = [f.name for f in saved.__dataclass_fields__.values()] if sections == ("all",) else list(sections)
    differ = [s for s in names if getattr(cfg, s) != getattr(saved, s)]
    if differ:
        what = "config" if sections == ("all",) else " and ".join(f"[{s}]" for s in sections) + " settings"
        only = f"; only {', '.join(free)} may differ" if free else ""
        raise ConfigError(f"--resume continues with the {what} saved in {stem}.json; drop --config/--set (start a new "
                          f"run to change settings{only}; here {', '.join(differ)} differ)")
    return saved


@dataclass
class Run:
    """What the phases of one command share: the run folder, the config, accelerate, the training data and the
    run log (opened on first use, so a run refused before training writes nothing)."""

    out: Path
    cfg: Config
    accelerator: Accelerator
    data: ExampleData
    progress: bool = True
    _runlog: RunLog | None = field(default=None, repr=False)

    @classmethod
    def open(cls, cfg: Config, out: Path, *, progress: bool = True) -> "Run":
        """accelerate on the configured device, and the configured training data."""
        accelerator = make_accelerator(cfg)
        return cls(Path(out), cfg, accelerator, load_data(cfg, progress=progress), progress)

    @property
    def runlog(self) -> RunLog:
        if self._runlog is None:
            self._runlog = RunLog(self.out, enabled=self.accelerator.is_main_process)
        return self._runlog

    @property
    def shard(self) -> tuple[int, int]:
        """(this process's rank, number of processes): which rows of every global batch this process loads."""
        return self.accelerator.process_index, self.accelerator.num_processes

    def close(self) -> None:
        if self._runlog is not None:
            self._runlog.close()


@dataclass
class Phase:
    """What distinguishes one phase from another: its name, settings, data stream and checkpoints."""

    name: str  # log phase: "teacher", "stage1", "convert" or "roundRR"
    desc: str  # progress-bar text
    settings: OptimSettings
    weighting: str
    seed: int  # the loop's RNG seed (noise and timesteps)
    data_seed: int  # the data order's seed
    batch_size: int  # the global batch
    batch_field: str  # the config field of batch_size, for the error message
    grad_accum: int
    checkpoints: Path  # folder of this phase's periodic checkpoints
    prefix: str  # their name prefix ("teacher_step", "round03_step")
    checkpoint_every: int  # 0: none
    keep: int  # how many of the newest are kept
    record: dict  # fields of every checkpoint record of the phase (config, model spec, ...), without "kind"
    kind: str = ""  # the finished phase's record kind; its mid-run checkpoints are "<kind>_partial" ("": no record)
    partial_kind: str = ""  # the mid-run checkpoints' kind, when not "<kind>_partial"
    final: Path | None = None  # where the finished phase's checkpoint goes (None: nowhere, e.g. a warm-up)
    clean_up: bool = True  # delete the phase's mid-run checkpoints once its final checkpoint is written
    fallback: Path | None = None  # the last good checkpoint when the phase has written none yet
    fallback_note: str = ""  # appended to the NaN message
    final_record: dict = field(default_factory=dict)  # fields of the finished phase's record only (e.g. its budget)
    resume_hint: str = ""  # the command that continues the run, for the disk-full message ("": none given)

    def check_data(self, data: ExampleData) -> None:
        if self.batch_size > len(data):
            raise ConfigError(f"{self.batch_field} ({self.batch_size}) is larger than the data ({len(data)} examples)")

    def batches(self, run: Run, start_batch: int, data_state: dict | None):
        """This process's data stream from micro-batch `start_batch` on, or from a checkpoint's data-order state
        (checkpoints written before that state was stored resume by skipping start_batch micro-batches)."""
        return make_batches(run.data, self.batch_size, self.data_seed, shard=run.shard, workers=run.cfg.data.workers,
                            device=run.accelerator.device, state=data_state, start=start_batch)


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


def _checkpointer(phase: Phase, run: Run, denoiser: Denoiser, ema: AveragedModel | None):
    """The loop's on_step: a periodic checkpoint (main process only), then pruning to the newest `keep`."""
    partial_kind = phase.partial_kind or f"{phase.kind}_partial"
    weights = "ema" if ema is not None else "model"

    def on_step(step: int, loss: torch.Tensor, snapshot) -> None:
        if not (phase.checkpoint_every and step % phase.checkpoint_every == 0 and step < phase.settings.total_steps
                and run.accelerator.is_main_process):
            return
        tensors, extra = loop_tensors(snapshot(), ema)
        modules = {"model": run.accelerator.unwrap_model(denoiser)} | ({"ema": ema.module} if ema is not None else {})
        record = {"kind": partial_kind, **phase.record, "step": step, "sampling_weights": weights, **extra}
        _saving(phase, save_checkpoint)(phase.checkpoints / f"{phase.prefix}{step:08d}", modules, record, tensors)
        prune(phase.checkpoints, phase.prefix + "*", phase.keep)

    return on_step


def _finish(phase: Phase, run: Run, result: PhaseResult) -> None:
    """The finished phase's checkpoint (one process writes; all hold the same weights), then its mid-run ones go."""
    if phase.final is not None and run.accelerator.is_main_process:
        _saving(phase, save_checkpoint)(phase.final, result.modules, {
            "kind": phase.kind, **phase.record, "sampling_weights": result.sampling_weights,
            "step": phase.settings.total_steps, "loss_history": result.history,
            "num_processes": run.accelerator.num_processes, **phase.final_record})
        if phase.clean_up:  # the finished checkpoint supersedes them
            for old in phase.checkpoints.glob(phase.prefix + "*.json"):
                for path in checkpoint_paths(old.with_suffix("")):
                    path.unlink(missing_ok=True)
    if phase.final is not None:
        run.accelerator.wait_for_everyone()


def _saving(phase: Phase, save):
    """save(...) with a disk-full error that ends in the command continuing the run."""

    def call(*args, **kwargs):
        try:
            return save(*args, **kwargs)
        except DiskFullError as e:
            hint = phase.resume_hint or "the same command with --resume"
            raise DiskFullError(f"{e}: free space, then continue with {hint}") from None

    return call


def run_phase(phase: Phase, denoiser: Denoiser, objective: Objective, run: Run, *,
              resume_from: Path | None = None) -> PhaseResult:
    """Train `denoiser` (already initialised, on the accelerator's device) for phase.settings.total_steps steps,
    and write the finished phase's checkpoint to phase.final. `resume_from`: a periodic checkpoint of this phase
    to continue from, bit for bit."""
    phase.check_data(run.data)
    ema = make_ema(denoiser, phase.settings.ema_decay)
    state = restore_loop_state(resume_from, denoiser, ema) if resume_from is not None else None
    bind = getattr(objective, "bind", None)  # targets from the student's own EMA (consistency, TRACT)
    if bind is not None:
        bind(denoiser, ema)
    done = state["step"] if state else 0
    batches = phase.batches(run, done * phase.grad_accum, state.get("data") if state else None)
    try:
        history = fit(denoiser, batches, objective, phase.weighting, phase.settings, accelerator=run.accelerator,
                      seed=phase.seed, ema=ema, on_step=_checkpointer(phase, run, denoiser, ema), desc=phase.desc,
                      progress=run.progress, grad_accum=phase.grad_accum, resume=state,
                      log=lambda step, values: run.runlog.scalars(phase.name, step, values), perf=run.cfg.perf)
    except NonFiniteLossError as e:
        run.close()
        last = latest_loadable(phase.checkpoints, phase.prefix + "*") or phase.fallback
        where = f"{last}.safetensors" if last else "none yet"
        raise NonFiniteLossError(f"{e} Nothing was saved after the last good checkpoint: {where}"
                                 f"{phase.fallback_note}.") from None
    finally:
        batches.close()
    result = PhaseResult(run.accelerator.unwrap_model(denoiser), ema, history)
    _finish(phase, run, result)
    return result
