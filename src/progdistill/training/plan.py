"""A distillation resolved once, before the round loop: the students' network and parameterization, the schedule,
how targets are built (teacher clipping, w drawn per example for guided students), the rounds (N -> N/2 steps and
their updates) and, for a student of another parameterization, its warm-up. The loop (training/rounds.py) runs a
plan without knowing which mode it is."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from .. import runfolder
from ..build import denoiser_from_spec, schedule_of
from ..config import Config, ConfigError, check_distill_steps, student_config
from ..denoiser import Denoiser
from ..diffusion.schedules import Schedule
from ..nets.spec import ModelSpec
from .noise import noise_for
from .objectives import DistillObjective, teacher_clip_threshold, training_w_range
from .phase import Phase, Run, optim_settings
from ..compiling import maybe_compiled
from .reparam import warm_up_student

# eps students are distillable only while 1/alpha at t = 1 stays moderate: log-SNR -12 is 1/alpha ~ 400 (DDPM's
# linear betas over 1000 steps end at -10.1; the continuous schedules here end at -20, 1/alpha ~ 22 000).
EPS_LOGSNR_FLOOR = -12.0
# Round r draws its data order from distill.seed + r and its noise from distill.seed + ROUND_NOISE_SEED_STRIDE * r:
# two streams per round that no other round (nor guided stage 1, at distill.seed + 500) shares.
ROUND_NOISE_SEED_STRIDE = 1000


@dataclass(frozen=True)
class Round:
    """Round `number`: a student of `student_steps` learns two steps of its `teacher_steps` teacher in `updates`."""

    number: int
    teacher_steps: int
    student_steps: int
    updates: int


@dataclass
class DistillPlan:
    cfg: Config  # the run's settings: the teacher's config with the [distill] "auto" values resolved
    spec: ModelSpec  # the students' network (the teacher's, with the students' parameterization)
    schedule: Schedule
    teacher_parameterization: str  # the first teacher's; a warm-up precedes round 1 when it differs from spec's
    sampling: dict  # the first teacher's sampling block (clipping, variance): the students sample as it does
    clip_below: float  # targets from clipped teacher steps below this log-SNR (-inf: the paper)
    w_train: tuple[float, float] | None  # guided students: the w drawn in training
    rounds: list[Round]
    _adapter: dict = field(default_factory=dict)  # LoRA students: the adapter at the round's start (its teacher's)

    def student(self, teacher: Denoiser, run: Run) -> Denoiser:
        """A student of this plan, starting from the teacher's (sampling) weights. A LoRA student is the teacher's
        own network (one copy of the base weights) with its adapter training; the round's teacher is that network
        with the adapter as the round found it (`round_teacher`)."""
        if self.lora is not None:
            net = teacher.net
            if net.lora is None:
                torch.manual_seed(self.cfg.distill.seed)  # the adapter's A (its B starts at zero)
                net.add_lora(self.lora)
            net.train_adapter_only()
            self._adapter = net.adapter_state()
            student = Denoiser(net, self.spec.parameterization)
            student.spec = self.spec
            return student
        dropout = self.cfg.distill.dropout
        student = denoiser_from_spec(self.spec.with_dropout(dropout), self.cfg.perf).to(run.accelerator.device)
        student.load_state_dict(teacher.state_dict())
        return student

    @property
    def lora(self) -> dict | None:
        """A LoRA student's adapter (rank, targets); None for full fine-tuning."""
        return self.spec.args.get("lora") if self.spec.kind == "sd_unet" else None

    def round_teacher(self, teacher: Denoiser):
        """What the round's targets come from: the teacher, or for LoRA students the shared network with the
        adapter frozen at the round's start."""
        return teacher if self.lora is None else FrozenAdapter(teacher, self._adapter)

    def warm_up(self, teacher: Denoiser, student: Denoiser, rnd: Round, run: Run) -> None:
        """A student of another parameterization learns its teacher's x_hat first (training/reparam.py)."""
        if self.teacher_parameterization != self.spec.parameterization and self.cfg.distill.convert_updates:
            warm_up_student(teacher, student, self.schedule, rnd.teacher_steps, run, clip_below=self.clip_below)

    def objective(self, teacher: Denoiser, rnd: Round) -> DistillObjective:
        """The round's targets: two steps of `teacher` (compiled with perf.compile) per student step."""
        evaluate = maybe_compiled(teacher, f"round {rnd.number}'s teacher", self.cfg.perf.compile)
        return DistillObjective(evaluate, self.schedule, rnd.student_steps, self.clip_below, w_range=self.w_train,
                                noise=noise_for(self.cfg.perf.per_example_noise))

    def phase(self, rnd: Round, out: Path, teacher_stem: Path, student: Denoiser) -> Phase:
        """The round's phase: mid-round checkpoints in RUN/students/checkpoints, the student in RUN/students."""
        distill_cfg, r, m = self.cfg.distill, rnd.number, rnd.student_steps
        record = {"config": self.cfg.to_dict(), "model": student.spec.to_dict(),
                  "sampling": self.sampling | {"steps": m}, "round": r, "sampling_steps": m,
                  "teacher": str(teacher_stem)}
        settings = optim_settings(distill_cfg.optim, rnd.updates, "linear")
        if self.lora is not None:  # an EMA copy of the network would duplicate the shared base weights
            settings = replace(settings, ema_decay=0.0)
        return Phase(name=f"round{r:02d}", desc=f"round {r}: {rnd.teacher_steps} -> {m} steps",
                     settings=settings,
                     weighting=distill_cfg.weighting, seed=distill_cfg.seed + ROUND_NOISE_SEED_STRIDE * r,
                     data_seed=distill_cfg.seed + r, batch_size=distill_cfg.batch_size,
                     batch_field="distill.batch_size", grad_accum=distill_cfg.grad_accum,
                     checkpoints=runfolder.round_checkpoints(out), prefix=runfolder.round_prefix(r),
                     checkpoint_every=distill_cfg.checkpoint_every, keep=2, record=record, kind="student",
                     final=runfolder.student_stem(out, m), fallback=Path(teacher_stem),
                     fallback_note=f" (round {r}; earlier rounds' students are intact)")

    @property
    def log_w(self) -> float | None:
        """The guidance weight of the per-round sample log: the middle of a guided student's range."""
        return None if self.spec.w_range is None else 0.5 * sum(self.spec.w_range)


class FrozenAdapter:
    """A LoRA round's teacher: the network its student trains, evaluated (in eval mode, without gradients) with the
    adapter weights it had when the round began, swapped in for the call and back out after it."""

    def __init__(self, teacher: Denoiser, adapter: dict[str, torch.Tensor]):
        self.teacher, self.adapter, self.spec = teacher, adapter, teacher.spec

    @torch.no_grad()
    def __call__(self, *args, **kwargs):
        net = self.teacher.net
        params = dict(net.named_parameters())
        live = {name: params[name].data for name in self.adapter}
        training = net.training
        try:
            net.eval()
            for name, frozen in self.adapter.items():
                params[name].data = frozen
            return self.teacher(*args, **kwargs)
        finally:
            for name, data in live.items():
                params[name].data = data
            net.train(training)

    def eval(self) -> "FrozenAdapter":
        return self


def run_settings(ckpt_cfg: Config, cfg: Config | None) -> Config:
    """The teacher's config with the [distill] and [perf] sections, device and precision of `cfg` (when given)."""
    if cfg is None:
        return ckpt_cfg
    return replace(ckpt_cfg, distill=cfg.distill, device=cfg.device, perf=cfg.perf,
                   mixed_precision=cfg.mixed_precision).validate()


def with_recorded_clipping(cfg: Config, teacher_spec: ModelSpec) -> Config:
    """Continuing from a student: its recorded target clipping, unless distill.teacher_clip is set explicitly
    ("auto" would otherwise be resolved for the student's parameterization, not the first teacher's)."""
    recorded = teacher_spec.teacher_clip
    if recorded is None or cfg.distill.teacher_clip != "auto":
        return cfg
    return replace(cfg, distill=replace(cfg.distill, teacher_clip=recorded["mode"],
                                        teacher_clip_logsnr=recorded["logsnr"]))


def with_lora(spec: ModelSpec, rank: int) -> ModelSpec:
    """The students' spec with a LoRA adapter of `rank` (distill.lora_rank > 0; a LoRA teacher keeps its own)."""
    recorded = spec.args.get("lora") if spec.kind == "sd_unet" else None
    if rank <= 0 or recorded is not None:
        if recorded is not None and rank > 0 and rank != recorded["rank"]:
            raise ConfigError(f"this checkpoint is a LoRA student of rank {recorded['rank']}; its students keep that "
                              f"rank (distill.lora_rank = {rank})")
        return spec
    if spec.kind != "sd_unet" or spec.guidance is not None:
        raise ConfigError("distill.lora_rank is for plain distillation of latent text-to-image models (imported "
                          "Stable Diffusion folders); a guided student's w input cannot ship as LoRA weights")
    from ..nets.sd_net import lora_block

    return replace(spec, args=spec.args | {"lora": lora_block(rank)})


def _check_students(spec: ModelSpec, teacher_param: str, schedule: Schedule) -> None:
    """Refuse students that cannot be distilled (ConfigError saying what to change)."""
    if spec.w_range is not None and spec.parameterization != teacher_param:
        raise ConfigError(f"guided distillation keeps the teacher's parameterization ({teacher_param}); set "
                          "distill.parameterization = \"same\"")
    if spec.parameterization == "eps" and schedule.logsnr_min < EPS_LOGSNR_FLOOR:
        raise ConfigError("model.parameterization 'eps' cannot be distilled on this schedule: x_hat = (z - sigma "
                          f"eps) / alpha amplifies errors by 1/alpha, and its log-SNR at t = 1 is "
                          f"{schedule.logsnr_min:.1f} < {EPS_LOGSNR_FLOOR} (the paper's section 2); train the "
                          "teacher with x, v or both, or give its students another output "
                          "(distill.parameterization = \"v\")")


def plan_rounds(cfg: Config, record: dict) -> list[Round]:
    """N -> N/2 rounds from the checkpoint's step count (a student's own, or distill.start_steps for a teacher)
    down to distill.target_steps."""
    distill_cfg, student = cfg.distill, record["kind"] == "student"
    start = int(record["sampling_steps"]) if student else distill_cfg.start_steps
    check_distill_steps(start, distill_cfg.target_steps,
                        start_name="the checkpoint's step count" if student else "distill.start_steps")
    rounds, n, r = [], start, int(record.get("round", 0)) + 1
    while n > distill_cfg.target_steps:
        m = n // 2
        long_round = distill_cfg.final_updates_per_round > 0 and m <= distill_cfg.long_round_max_steps
        rounds.append(Round(r, n, m, distill_cfg.final_updates_per_round if long_round else distill_cfg.updates_per_round))
        n, r = m, r + 1
    return rounds


def plan_distillation(teacher_spec: ModelSpec, record: dict, ckpt_cfg: Config, cfg: Config | None) -> DistillPlan:
    """Resolve a distillation of the checkpoint (`teacher_spec`, `record`, its config `ckpt_cfg`) with the [distill]
    settings of `cfg` (default: the checkpoint's own)."""
    cfg = with_recorded_clipping(run_settings(ckpt_cfg, cfg), teacher_spec)
    teacher_param = teacher_spec.parameterization
    # Guided students and LoRA students keep the teacher's parameterization under "auto": a w-conditioned network
    # is distilled as it is, and an adapter on the attention projections cannot re-learn the output's meaning.
    keeps = teacher_spec.guidance is not None or cfg.distill.lora_rank > 0 or "lora" in teacher_spec.args
    if keeps and cfg.distill.parameterization == "auto":
        cfg = replace(cfg, distill=replace(cfg.distill, parameterization="same"))
    # The students' parameterization (distill.parameterization, its "auto" values resolved) from here on.
    cfg = student_config(replace(cfg, model=replace(cfg.model, parameterization=teacher_param)))
    # Students are the teacher's network, whatever the presets say now; they record how their targets were built.
    clipping = {"mode": cfg.distill.teacher_clip, "logsnr": cfg.distill.teacher_clip_logsnr}
    spec = replace(teacher_spec, parameterization=cfg.model.parameterization, teacher_clip=clipping)
    spec = with_lora(spec, cfg.distill.lora_rank)
    schedule = schedule_of(spec)
    _check_students(spec, teacher_param, schedule)
    # w drawn in training: the model's range, widened below by the margin its stage 1 was trained with (as its model
    # block records; records written before the margin was recorded: guided.w_margin of its config).
    margin = spec.w_margin if spec.w_margin is not None else cfg.guided.w_margin
    w_train = None if spec.w_range is None else training_w_range(*spec.w_range, margin)
    if spec.guidance is not None and spec.w_margin is None:  # recorded from here on
        spec = replace(spec, guidance=spec.guidance | {"w_margin": float(margin)})
    return DistillPlan(cfg, spec, schedule, teacher_param, record["sampling"],
                       teacher_clip_threshold(cfg.distill.teacher_clip, cfg.distill.teacher_clip_logsnr), w_train,
                       plan_rounds(cfg, record))


def prepare_teacher(teacher: Denoiser, plan: DistillPlan, run: Run) -> Denoiser:
    """The first teacher on the run's device (in channels-last memory when perf asks for it)."""
    teacher = teacher.to(run.accelerator.device)
    if plan.cfg.perf.channels_last and len(plan.spec.data_shape) == 3:
        teacher = teacher.to(memory_format=torch.channels_last)
    return teacher
