"""A distillation resolved once, before the round loop: the students' network and parameterization, the schedule,
how targets are built (teacher clipping, w drawn per example for guided students), the rounds (N -> N/2 steps and
their updates) and, for a student of another parameterization, its warm-up. The loop (training/rounds.py) runs a
plan without knowing which mode it is."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from .. import runfolder
from ..build import denoiser_from_spec, load_denoiser, schedule_of
from ..checkpoint import CheckpointError, read_record
from ..config import Config, ConfigError, student_config
from ..denoiser import Denoiser
from ..diffusion.schedules import Schedule
from ..guidance import null_condition
from ..nets.families import FAMILIES
from ..nets.spec import ModelSpec
from .noise import noise_for
from .methods import Method, Round, add_cost, grid_counts, method_of, plan_rounds, recorded_budget
from .objectives import ConversionObjective, teacher_clip_threshold, training_w_range
from .loop import OptimSettings
from .phase import Phase, Run, optim_settings
from ..compiling import maybe_compiled
from .reparam import warm_up_student

# eps students are distillable only while 1/alpha at t = 1 stays moderate: log-SNR -12 is 1/alpha ~ 400 (DDPM's
# linear betas over 1000 steps end at -10.1; the continuous schedules here end at -20, 1/alpha ~ 22 000).
EPS_LOGSNR_FLOOR = -12.0
# Round r draws its data order from distill.seed + r and its noise from distill.seed + ROUND_NOISE_SEED_STRIDE * r:
# two streams per round that no other round (nor guided stage 1, at distill.seed + 500) shares.
ROUND_NOISE_SEED_STRIDE = 1000


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
    budget: dict  # what the distillation has spent before the next round (recorded in every student; methods.py)
    first_teacher: Path | None = None  # a student's first teacher (the real score of dmd); None: a teacher itself
    _adapter: dict = field(default_factory=dict)  # LoRA students: the adapter at the round's start (its teacher's)
    teacher_module: Denoiser | None = field(default=None, repr=False)  # the round's teacher, set by `objective`

    @property
    def method(self) -> Method:
        """The method's registry entry (training/methods.py)."""
        return method_of(self.cfg)

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
        return self.spec.args.get("lora") if FAMILIES[self.spec.kind].lora else None

    def round_teacher(self, teacher: Denoiser):
        """What the round's targets come from: the teacher, or for LoRA students the shared network with the
        adapter frozen at the round's start."""
        return teacher if self.lora is None else FrozenAdapter(teacher, self._adapter)

    def warm_up(self, teacher: Denoiser, student: Denoiser, rnd: Round, run: Run) -> None:
        """A student of another parameterization learns its teacher's x_hat first (training/reparam.py)."""
        if self.warms_up:
            warm_up_student(teacher, student, self.schedule, rnd.teacher_steps, run, clip_below=self.clip_below)

    def objective(self, teacher: Denoiser, rnd: Round):
        """The round's targets from `teacher` (compiled with perf.compile): two of its steps per student step (pd),
        one step and the target network's consistency function (cd), one step and the self-teacher's jump (tract)."""
        evaluate = maybe_compiled(teacher, f"round {rnd.number}'s teacher", self.cfg.perf.compile)
        self.teacher_module = teacher
        return self.method.objective(evaluate, self.schedule, rnd, self, noise_for(self.cfg.perf.per_example_noise))

    def round_settings(self, rnd: Round) -> OptimSettings:
        """The student's optimizer settings in `rnd` (lr linear to 0; the method's EMA; none for LoRA students)."""
        settings = optim_settings(self.cfg.distill.optim, rnd.updates, "linear")
        if self.lora is not None:  # an EMA copy of the network would duplicate the shared base weights
            settings = replace(settings, ema_decay=0.0)
        if self.method.self_ema(self.cfg) is not None:  # cd's target network, tract's self-teacher (and sampling)
            settings = replace(settings, ema_decay=self.method.self_ema(self.cfg))
        return settings

    def probe_label(self) -> torch.Tensor | None:
        """One example's conditioning for probing a network's features: class 0, the empty caption, or None."""
        if self.spec.text_conditioned and self.teacher_module is not None:
            return null_condition(self.teacher_module, self.spec).unsqueeze(0)
        return torch.zeros(1, dtype=torch.long) if self.spec.num_classes else None

    def real_score(self, teacher: Denoiser) -> Denoiser:
        """What matches the data's distribution: the first teacher of a student's run (loaded here, frozen), else
        `teacher` itself."""
        if self.first_teacher is None:
            return teacher
        device = next(teacher.parameters()).device
        real, _, _ = load_denoiser(self.first_teacher, device)
        return real

    def round_budget(self, rnd: Round) -> dict:
        """The budget spent once `rnd` is done (and, before it, a warm-up: budgets are counted from the start). A
        counted method's (training/counting.py) is the budget before it, which its phase adds to as it ends."""
        per_update = self.cfg.distill.batch_size * self.cfg.distill.grad_accum
        budget = self.budget
        if self.method.counted(self.cfg):
            return dict(budget)
        if rnd is self.rounds[0] and self.warms_up:
            budget = add_cost(budget, self.cfg.distill.convert_updates, per_update, ConversionObjective.EVALS)
        return add_cost(budget, rnd.updates, per_update, self.method.evals)

    @property
    def warms_up(self) -> bool:
        return self.teacher_parameterization != self.spec.parameterization and self.cfg.distill.convert_updates > 0

    def phase(self, rnd: Round, out: Path, teacher_stem: Path, student: Denoiser) -> Phase:
        """The round's phase: mid-round checkpoints in RUN/students/checkpoints, the student in RUN/students."""
        distill_cfg, r, m = self.cfg.distill, rnd.number, rnd.student_steps
        record = {"config": self.cfg.to_dict(), "model": student.spec.to_dict(),
                  "sampling": self.sampling | {"steps": m}, "round": r, "sampling_steps": m,
                  "teacher": str(teacher_stem)}
        settings, method = self.round_settings(rnd), self.method
        if method.sampler is not None:
            record["sampling"] |= {"sampler": method.sampler}
        if method.grid_counts:
            record["sampling"] |= {"counts": grid_counts(m)}
        self.budget = budget = self.round_budget(rnd)
        return Phase(name=f"round{r:02d}", desc=method.desc(rnd), settings=settings, final_record={"budget": budget},
                     weighting=method.loss(self.cfg), seed=distill_cfg.seed + ROUND_NOISE_SEED_STRIDE * r,
                     data_seed=distill_cfg.seed + r, batch_size=distill_cfg.batch_size,
                     batch_field="distill.batch_size", grad_accum=distill_cfg.grad_accum,
                     checkpoints=runfolder.round_checkpoints(out), prefix=runfolder.round_prefix(r),
                     checkpoint_every=distill_cfg.checkpoint_every, keep=2, record=record, kind="student",
                     final=runfolder.student_stem(out, m), fallback=Path(teacher_stem),
                     fallback_note=f" (round {r}; earlier rounds' students are intact)",
                     resume_hint=f"`progdistill distill --resume --out {out}`")

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
    recorded = spec.args.get("lora") if FAMILIES[spec.kind].lora else None
    if rank <= 0 or recorded is not None:
        if recorded is not None and rank > 0 and rank != recorded["rank"]:
            raise ConfigError(f"this checkpoint is a LoRA student of rank {recorded['rank']}; its students keep that "
                              f"rank (distill.lora_rank = {rank})")
        return spec
    if not FAMILIES[spec.kind].lora or spec.guidance is not None:
        raise ConfigError("distill.lora_rank is for plain distillation of latent text-to-image models (imported "
                          "Stable Diffusion folders); a guided student's w input cannot ship as LoRA weights")
    from ..nets.diffusers_parts import lora_block

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


def method_rounds(cfg: Config, record: dict, teacher_spec: ModelSpec) -> list[Round]:
    """The rounds of distill.method (its registry entry's `rounds`, from pd's halvings)."""
    rounds = plan_rounds(cfg, record)
    d, method = cfg.distill, method_of(cfg)
    if method.name == "pd":  # pd's rounds are the halvings themselves, whatever the teacher
        return rounds
    if teacher_spec.consistency is not None:
        raise ConfigError("this checkpoint is a consistency-distilled student, which samples at any step count "
                          "already; distil from its teacher, or continue its run with --resume")
    if teacher_spec.guidance is not None and not method.guided:
        raise ConfigError(f"distill.method = {d.method!r} distils unguided and class-conditional models; a guided "
                          "(w-conditioned) model is distilled with distill.method = \"pd\" (docs/methods.md)")
    return method.rounds(cfg, record, rounds) if rounds or method.from_target else rounds


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
    if method_of(cfg).sampler == "consistency":
        # The boundary at t = 0 of the grid, at the log-SNR the grids evaluate there (float32, as step_grid casts).
        logsnr_max = float(schedule(torch.zeros(1, dtype=torch.float64)).float())
        spec = replace(spec, consistency={"sigma_data": float(cfg.distill.cd_sigma_data), "logsnr_max": logsnr_max,
                                          "skip_scale": float(cfg.distill.cd_skip_scale)})
    return DistillPlan(cfg, spec, schedule, teacher_param, record["sampling"],
                       teacher_clip_threshold(cfg.distill.teacher_clip, cfg.distill.teacher_clip_logsnr), w_train,
                       method_rounds(cfg, record, teacher_spec), recorded_budget(record), first_teacher(record))


def first_teacher(record: dict) -> Path | None:
    """The teacher a student's chain of rounds started from (None for a teacher, or when its files are gone)."""
    stem = record.get("teacher") if record.get("kind") == "student" else None
    while stem is not None:
        try:
            parent = read_record(stem)
        except CheckpointError:
            return None
        if parent.get("kind") != "student":
            return Path(stem)
        stem = parent.get("teacher")
    return None


def prepare_teacher(teacher: Denoiser, plan: DistillPlan, run: Run) -> Denoiser:
    """The first teacher on the run's device (in channels-last memory when perf asks for it)."""
    teacher = teacher.to(run.accelerator.device)
    if plan.cfg.perf.channels_last and len(plan.spec.data_shape) == 3:
        teacher = teacher.to(memory_format=torch.channels_last)
    return teacher
