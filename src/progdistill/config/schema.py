"""The config's sections as dataclasses (every field's default and, where it has one, its declared constraint),
and the rules between fields, checked after every field's own constraint (so each rule may assume valid fields);
each rule raises ConfigError naming the fields and what to set."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial

from ..nets.families import FAMILIES
from . import choices
from .constraints import (ConfigError, EvenAtLeast, Listed, PowerOfTwo, at_least, check_distill_steps,
                          check_fields, checked, one_of, positive, unit_interval)


@dataclass
class DataConfig:
    name: str = checked("ring", one_of(choices.TOY_DISTRIBUTIONS, choices.IMAGE_DATASETS, choices.CAPTIONED))
    # 2-D: ring, checkerboard, moons, swissroll, ring_classes (labelled); images: fashion-mnist, cifar10, folder;
    # captions: a folder of images with metadata.jsonl, for latent text-to-image models (docs/latent.md)
    size: int = checked(100_000, positive())  # training examples drawn for 2-D data
    seed: int = 0
    flip: bool = False  # random horizontal flips
    root: str = ""  # image data folder ("": fashion-mnist looks in /usr/share/datasets/fashion-mnist, then the cache)
    download: bool = False  # fetch Fashion-MNIST into the cache (checksums verified) when it is not found
    # folder data: centre crop and resize to this size (0: the data set's native size)
    image_size: int = checked(0, at_least(0))
    conditional: bool = True  # class-conditional model where the data has labels
    limit: int = checked(0, at_least(0))  # use only the first `limit` training images (0: all)
    # folder data: 1 (grayscale) or 3 (RGB); 0: the data set's own (folders: RGB)
    channels: int = checked(0, Listed((0, 1, 3), "1 (grayscale), 3 (RGB) or 0 (the data set's own)"))
    # DataLoader worker processes per training process (0: load in the training process)
    workers: int = checked(2, at_least(0))
    # captions: the metadata.jsonl column holding each image's caption
    caption_column: str = "text"
    # captions: cache the VAE latent distribution's mean, or one sample per image (drawn from data.seed)
    latents: str = checked("mean", one_of(choices.LATENT_MODES))
    # captions: the latent model's frozen components, as JSON (written by import-diffusers; data/components.py)
    components: str = ""


@dataclass
class ModelConfig:
    # mlp (flat data), unet (images) or diffusers (an imported diffusers UNet2DModel)
    arch: str = checked("mlp", one_of(choices.NET_KINDS))
    # U-Net preset: small (CPU, 28x28), cifar10, imagenet64 (the paper's)
    unet: str = checked("small", one_of(choices.UNET_PRESETS))
    parameterization: str = checked("v", one_of(choices.PARAMETERIZATIONS))  # eps, x, v or both
    hidden: int = checked(256, positive())
    depth: int = checked(4, positive())
    emb_dim: int = checked(128, EvenAtLeast(4))
    dropout: float = checked(0.0, unit_interval())
    diffusers_unet: str = ""  # arch = diffusers: the UNet2DModel config as JSON (written by import-diffusers)


@dataclass
class DiffusionConfig:
    # cosine, linear (DDPM betas, continuous time), discrete (a diffusers scheduler's) or flow (flow matching:
    # x_t = (1 - t) x + t eps, with model.parameterization = "flow" and diffusion.weighting = "velocity")
    schedule: str = checked("cosine", one_of(choices.SCHEDULES))
    logsnr_min: float = -20.0
    logsnr_max: float = 20.0
    weighting: str = checked("snr_plus1", one_of(choices.WEIGHTINGS))  # the teacher's loss weighting
    # schedule = discrete: diffusers' alpha_bar over num_timesteps (timestep j sits at t = (j + 1) / num_timesteps)
    num_timesteps: int = checked(1000, positive())
    beta_schedule: str = checked("linear", one_of(choices.BETA_SCHEDULES))
    beta_start: float = 1e-4
    beta_end: float = 0.02
    # schedule = flow: flow matching's interpolant; SD3's static time shift (1: none)
    shift: float = checked(1.0, positive())


@dataclass
class OptimConfig:
    """The optimizer of a training phase (Adam, learning-rate warmup, gradient-norm clipping, EMA): [train.optim]
    trains the teacher; [distill.optim] every distillation round, the warm-up of reparameterised students and guided
    stage 1, which takes guided.stage1_lr as its learning rate when that is > 0. The defaults here are the
    teacher's; [distill.optim] has its own (see DistillConfig). The flat keys of earlier versions (train.lr,
    distill.warmup, ...) in TOML, --set and recorded configs are read into it (loading.nest_optimizer_keys)."""

    lr: float = checked(1e-3, positive())  # the peak learning rate, reached after warmup
    warmup: int = checked(500, at_least(0))  # optimizer steps of linear learning-rate warmup
    grad_clip: float = checked(1.0, at_least(0))  # gradient-norm clipping; 0 turns it off
    adam_beta1: float = checked(0.9, unit_interval())
    adam_beta2: float = checked(0.999, unit_interval())
    ema_decay: float = checked(0.999, unit_interval())  # 0 turns EMA off


@dataclass
class TrainConfig:
    steps: int = checked(20_000, positive())
    batch_size: int = checked(512, positive())
    optim: OptimConfig = field(default_factory=OptimConfig)  # [train.optim]
    # after warmup: constant, linear (to 0) or cosine (to 0)
    lr_decay: str = checked("constant", one_of(choices.LR_DECAYS))
    checkpoint_every: int = checked(5_000, positive())
    keep_checkpoints: int = checked(3, positive())
    seed: int = 0
    # micro-batches per optimizer step (batch_size is the micro-batch)
    grad_accum: int = checked(1, positive())
    # Classifier-free guidance: the share of training examples whose label is replaced by the null class (index
    # num_classes, an extra class-embedding row), so the network also learns the unconditional x_hat (0: off).
    label_dropout: float = checked(0.0, unit_interval())


@dataclass
class DistillConfig:
    start_steps: int = checked(256, PowerOfTwo())  # the first teacher's DDIM step count N
    target_steps: int = checked(1, PowerOfTwo())  # distil down to this many student steps
    updates_per_round: int = checked(4_000, positive())
    # updates for rounds whose student has <= long_round_max_steps (0: as above)
    final_updates_per_round: int = checked(0, at_least(0))
    long_round_max_steps: int = 2
    batch_size: int = checked(512, positive())
    # [distill.optim]: lr linearly annealed to 0 within every round; no EMA while distilling (the paper's)
    optim: OptimConfig = field(default_factory=partial(OptimConfig, lr=5e-4, warmup=0, ema_decay=0.0))
    dropout: float = checked(0.0, unit_interval())
    weighting: str = checked("snr_trunc", one_of(choices.WEIGHTINGS))
    seed: int = 1
    grad_accum: int = checked(1, positive())
    # mid-round checkpoints (the newest 2 kept) for exact resume; 0: none
    checkpoint_every: int = checked(1_000, at_least(0))
    # per round: samples for the logged grid and the student-vs-teacher gap (0: none)
    log_samples: int = checked(16, at_least(0))
    # The students' output: "same" (the teacher's) or eps, x, v (a teacher of another one of these three hands its
    # weights over, the output read the new way) or both (only from a "both" teacher); "auto": v for an eps
    # teacher, else the teacher's own. docs/imported_teachers.md
    parameterization: str = checked("auto", one_of(("auto", "same"), choices.PARAMETERIZATIONS))
    # A student of another parameterization: warm-up updates onto the teacher's x_hat before the first round
    # (-1, auto: 2 x updates_per_round when the parameterization changes, else 0).
    convert_updates: int = checked(-1, at_least(-1, "-1: auto"))
    # Targets from clipped teacher DDIM steps (a deviation from the paper, for low terminal log-SNR teachers):
    # none (the paper), noisy (student steps starting below log-SNR teacher_clip_logsnr), all, or auto (noisy for
    # an eps teacher, else none).
    teacher_clip: str = checked("auto", one_of(("auto",), choices.TEACHER_CLIPS))
    teacher_clip_logsnr: float = 0.0
    # Latent text-to-image models: > 0 makes LoRA students of this rank (peft; the attention projections), which share
    # the base weights with their teacher in memory and ship as LoRA weights (docs/latent.md); 0: full fine-tuning
    lora_rank: int = checked(0, at_least(0))
    # The method (docs/methods.md): pd (progressive distillation: rounds N -> N/2, the paper), cd (consistency
    # distillation, Song et al. 2023: one student for every step count, on the start_steps grid) or tract (Berthelot
    # et al. 2023: tract_phases phases from start_steps to target_steps, each point of a segment jumping to its end)
    # or dmd (DMD2, Yin et al. 2024: a target_steps-step generator matched to the data's distribution through an
    # online fake score and a discriminator head; from the teacher or any saved student)
    method: str = checked("pd", one_of(choices.DISTILL_METHODS))
    # cd and tract: the optimizer steps of the whole distillation (tract: split equally over its phases); 0: as many
    # as pd's rounds from start_steps to target_steps take, so that methods compare at one budget by default
    total_updates: int = checked(0, at_least(0))
    cd_metric: str = checked("l2", one_of(choices.CD_METRICS))  # l2 or pseudo_huber (LPIPS: not offline)
    cd_target_ema: float = checked(0.95, unit_interval())  # mu of the target network (the paper's CIFAR-10 CD)
    cd_sigma_data: float = checked(0.5, positive())  # in c_skip (diffusion/consistency.py)
    # c_skip's scale k (diffusion/consistency.py): 1 is the consistency-models paper's; the default 100 keeps a student
    # started from its teacher equal to it but at t = 0, as LCM's timestep_scaling does
    cd_skip_scale: float = checked(100.0, positive())
    tract_phases: int = checked(2, positive())  # e.g. 1024 -> 32 -> 1 is 2 phases (the paper's)
    tract_self_ema: float = checked(0.5, unit_interval())  # the EMA decay of the self-teacher
    # Adversarial progressive distillation (pd only; docs/methods.md): the weight of the adversarial term beside the
    # round's target (0: pd as in the paper, bitwise), the discriminator judging the student's one step against the
    # teacher's two; relaxed: the head sees the landing point only, not the start point too
    adversarial_weight: float = checked(0.0, at_least(0, "0: plain pd"))
    adversarial_relaxed: bool = False
    # dmd (DMD2, docs/methods.md): fake-score and discriminator updates per generator update; the generator's and
    # the fake score's (and head's) learning rates (0: distill.optim.lr); the GAN term's weight in the generator
    # loss (0: no discriminator); the real score's classifier-free guidance weight (0: unguided); the range of t the
    # distribution-matching gradient and the GAN term are taken at; the weight of approximate R1
    dmd_fake_updates: int = checked(5, positive())
    dmd_lr: float = checked(0.0, at_least(0, "0: distill.optim.lr"))
    dmd_fake_lr: float = checked(0.0, at_least(0, "0: the generator's"))
    dmd_gan_weight: float = checked(3e-3, at_least(0, "0: no discriminator"))
    dmd_guidance: float = checked(0.0, at_least(0, "0: unguided"))
    dmd_t_min: float = checked(0.02, unit_interval())
    dmd_t_max: float = checked(0.98, unit_interval())
    gan_r1_weight: float = checked(0.1, at_least(0))


@dataclass
class GuidedConfig:
    """Guided distillation (docs/guided.md): stage 1 trains a w-conditioned student on the label-dropout teacher's
    guided x_hat_w, w ~ U[w_min, w_max] per example; stage 2 is progressive distillation ([distill]) with w."""

    # the trained range of the guidance weight w (guidance_scale = 1 + w); paper: [0, 4]
    w_min: float = checked(0.0, at_least(0, "w = 0 is the conditional model"))
    w_max: float = 4.0
    # Training draws w from [w_min - w_margin, w_max] (for a range, not a single w), so that w_min is not the edge
    # of what the student is fitted on; sampling stays within [w_min, w_max]. 0: the paper's (docs/guided.md).
    w_margin: float = checked(0.0, at_least(0, "0: w drawn from [w_min, w_max] only"))
    # stage-1 optimizer steps (its other settings: batch size, ... of [distill], optimizer of [distill.optim])
    stage1_updates: int = checked(2_000, positive())
    # the stage-1 loss weighting; auto: the teacher's (diffusion.weighting)
    stage1_weighting: str = checked("auto", one_of(("auto",), choices.WEIGHTINGS))
    # stage 1's peak learning rate; 0: distill.optim.lr (stage 1's other optimizer settings: [distill.optim])
    stage1_lr: float = checked(0.0, at_least(0, "0: distill.optim.lr"))
    # sinusoidal features of w, before the small MLP into the noise embedding
    embed_dim: int = checked(64, EvenAtLeast(4))
    embed_scale: float = checked(1000.0, positive())  # the sinusoidal embedding's argument is embed_scale * w
    class_gate: bool = False  # w also scales the class embedding's offset from the null class's (docs/guided.md)
    # stage-1 checkpoints (the newest 2 kept) for exact resume; 0: none
    checkpoint_every: int = checked(500, at_least(0))


@dataclass
class SampleConfig:
    variance: str = checked("small", one_of(choices.VARIANCES))  # ancestral: small, large or interp
    clip: bool = True  # clip x_hat to [-1, 1] while sampling (never during distillation)


@dataclass
class PerfConfig:
    """Speed switches; none changes the math. tf32 and sdpa only matter on CUDA / for attention, channels_last and
    fused_adam are harmless on the CPU, compile costs a compilation at the start of every training phase."""

    tf32: bool = True  # CUDA: TF32 matmuls and convolutions (float32 runs only; bf16 autocast is unaffected)
    sdpa: bool = True  # attention through torch's scaled_dot_product_attention (False: diffusers' plain AttnProcessor)
    channels_last: bool = False  # NHWC memory format for U-Nets and their inputs
    fused_adam: bool = False  # torch's fused Adam kernel
    compile: bool = False  # torch.compile the network's forward for training and distillation
    # Recompute the trained networks' activations in the backward pass (diffusers' own switch): less activation
    # memory for about one more forward pass of compute; the same weights to rounding (docs/memory.md).
    gradient_checkpointing: bool = False
    # Each example's noise from a counter-based generator (training/noise.py): each process draws only its own rows,
    # on the device. Another noise stream than the default one (results differ as with another seed).
    per_example_noise: bool = False


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    guided: GuidedConfig = field(default_factory=GuidedConfig)
    perf: PerfConfig = field(default_factory=PerfConfig)
    device: str = checked("auto", one_of(choices.DEVICES))  # auto, cpu or cuda
    # no, fp16 or bf16 (accelerate autocast; fp16 only on CUDA)
    mixed_precision: str = checked("no", one_of(choices.MIXED_PRECISIONS))

    def validate(self) -> "Config":
        """Check every field's declared constraint, then the cross-field rules; raise ConfigError naming the field."""
        check_fields(self)
        for rule in CROSS_FIELD_RULES:
            rule(self)
        return self

    def to_dict(self) -> dict:
        """The config as nested dicts of plain values (what checkpoints and reports record as JSON)."""
        return asdict(self)


def network_fits_data(cfg: Config) -> None:
    """Refuse a network unfit for the data, or an imported one without its config or its discrete schedule (what
    each family takes: nets/families.py)."""
    name, arch = cfg.data.name, cfg.model.arch
    fam = FAMILIES[arch]
    if (name in choices.CAPTIONED) != (fam.data == "captions"):
        raise ConfigError(f"data.name {name!r} with model.arch {arch!r}: captioned images (data.name 'captions') go "
                          "with latent text-to-image models (model.arch 'sd_unet', 'sdxl', 'sd3' or 'flux') only; "
                          "create such a run with "
                          "`progdistill import-diffusers --model SD_FOLDER --captions IMAGES`")
    if fam.data == "captions":
        if not (cfg.data.components and cfg.data.root and cfg.data.image_size > 0):
            raise ConfigError("data.name 'captions' needs data.root (images with a metadata.jsonl), data.image_size "
                              "and data.components (written by import-diffusers)")
        if fam.schedules is not None and cfg.diffusion.schedule not in fam.schedules:
            raise ConfigError(_schedule_message(arch, fam))
        return
    images = name in choices.IMAGE_DATASETS
    if images and fam.data != "image":
        raise ConfigError(f"data.name {name!r} is an image data set: set model.arch = \"unet\"")
    if fam.config_key is not None and not getattr(cfg.model, fam.config_key):
        raise ConfigError(f"model.arch {arch!r} needs model.{fam.config_key} (the UNet2DModel config); create "
                          "such a run with `progdistill import-diffusers`")
    if not images and fam.data != "vector":
        raise ConfigError(f"data.name {name!r} is 2-D data: set model.arch = \"mlp\"")
    if fam.schedules is not None and cfg.diffusion.schedule not in fam.schedules:
        raise ConfigError(_schedule_message(arch, fam))


def _schedule_message(arch: str, fam) -> str:
    if fam.schedules == ("discrete",):
        return f"model.arch {arch!r} is a discrete-time model: set diffusion.schedule = \"discrete\""
    return (f"model.arch {arch!r} runs on the {' or '.join(fam.schedules)} schedule: set diffusion.schedule = "
            f"\"{fam.schedules[0]}\"")


def image_source_is_complete(cfg: Config) -> None:
    """Refuse a folder without its path or image size, and data.channels set against a data set's own."""
    data = cfg.data
    if data.name == "folder" and (not data.root or data.image_size <= 0):
        raise ConfigError("data.name 'folder' needs data.root (a folder of images) and data.image_size > 0")
    native = choices.NATIVE_CHANNELS.get(data.name)
    if native and data.channels not in (0, native):
        raise ConfigError(f"data.channels = {data.channels}: {data.name} images have {native} "
                          f"channel(s); data.channels is for folders (leave it 0)")


def label_dropout_has_labels(cfg: Config) -> None:
    """Refuse label dropout without labelled data and a class-conditional model trained here."""
    if cfg.train.label_dropout <= 0:
        return
    name = cfg.data.name
    if name not in choices.IMAGE_DATASETS and name not in choices.TOY_LABELLED:
        raise ConfigError(f"train.label_dropout > 0 needs class labels, and data.name {name!r} has none "
                          "(2-D data with classes: ring_classes)")
    if not cfg.data.conditional:
        raise ConfigError("train.label_dropout > 0 trains a class-conditional model: set data.conditional = true")
    if not FAMILIES[cfg.model.arch].trained_here:
        raise ConfigError("train.label_dropout is for teachers trained here (model.arch unet or mlp), not for "
                          "imported diffusers models")


def guidance_range_is_ordered(cfg: Config) -> None:
    """Refuse guided.w_min above guided.w_max (equal: a student for one w only)."""
    if not cfg.guided.w_min <= cfg.guided.w_max:
        raise ConfigError(f"guided.w_min ({cfg.guided.w_min}) must not exceed guided.w_max ({cfg.guided.w_max})")


def teacher_loss_trains(cfg: Config) -> None:
    """Refuse a teacher parameterization and loss weighting known to diverge together."""
    # distill.weighting is checked by student_config (an eps teacher is trainable; it just cannot be distilled).
    reason = choices.FORBIDDEN.get((cfg.model.parameterization, cfg.diffusion.weighting))
    if reason:
        raise ConfigError(f"diffusion.weighting: {reason}")


def flow_schedule_fits(cfg: Config) -> None:
    """Refuse an eps-predicting model on the flow schedule (x_hat = (z - sigma eps) / alpha is infinite at its exact
    pure-noise end, t = 1) and the flow (velocity) parameterization on a schedule it was not made for."""
    d, m = cfg.diffusion, cfg.model
    if d.schedule == "flow" and m.parameterization == "eps":
        raise ConfigError("model.parameterization = \"eps\" cannot run on diffusion.schedule = \"flow\": its t = 1 is "
                          "pure noise, where x_hat = (z - sigma eps) / alpha divides by zero; use \"flow\" (velocity), "
                          "\"v\" or \"x\"")
    if m.parameterization == "flow" and d.schedule != "flow":
        raise ConfigError(f"model.parameterization = \"flow\" (a flow-matching velocity) needs diffusion.schedule = "
                          f"\"flow\", got {d.schedule!r}")


def logsnr_range_is_ordered(cfg: Config) -> None:
    """Refuse an empty log-SNR range."""
    if not cfg.diffusion.logsnr_min < cfg.diffusion.logsnr_max:
        raise ConfigError("diffusion.logsnr_min must be below diffusion.logsnr_max")


def distill_steps_halve(cfg: Config) -> None:
    """Refuse step counts that distillation cannot halve from the start down to the target."""
    check_distill_steps(cfg.distill.start_steps, cfg.distill.target_steps)


def method_fits(cfg: Config) -> None:
    """Refuse a distillation method with settings it cannot take (tract: more phases than halvings; cd and tract:
    LoRA students, which share their network with the teacher)."""
    d = cfg.distill
    halvings = (d.start_steps // d.target_steps).bit_length() - 1
    if d.method == "tract" and d.tract_phases > max(halvings, 1):
        raise ConfigError(f"distill.tract_phases ({d.tract_phases}) is more than the halvings from "
                          f"distill.start_steps ({d.start_steps}) to distill.target_steps ({d.target_steps}), "
                          f"{halvings}: every phase shortens the sampler at least 2x")
    if d.adversarial_weight > 0 and (d.method != "pd" or d.lora_rank > 0):
        raise ConfigError("distill.adversarial_weight is a term of progressive distillation with full students "
                          "(distill.method = \"pd\", distill.lora_rank = 0)")
    if d.dmd_t_min >= d.dmd_t_max:
        raise ConfigError("distill.dmd_t_min must be below distill.dmd_t_max")
    if d.method != "pd" and d.lora_rank > 0:
        raise ConfigError(f"distill.lora_rank is for progressive distillation (distill.method = \"pd\"); "
                          f"{d.method} students keep an EMA network, which would copy the shared base weights")


def checkpointing_fits(cfg: Config) -> None:
    """perf.gradient_checkpointing only for networks built on diffusers models (their own switch)."""
    if cfg.perf.gradient_checkpointing and not FAMILIES[cfg.model.arch].checkpointing:
        raise ConfigError(f"perf.gradient_checkpointing: model.arch {cfg.model.arch!r} has no diffusers blocks to "
                          "checkpoint; leave it off")


CROSS_FIELD_RULES: tuple[Callable[[Config], None], ...] = (
    network_fits_data, image_source_is_complete, label_dropout_has_labels, guidance_range_is_ordered,
    teacher_loss_trains, flow_schedule_fits, logsnr_range_is_ordered, distill_steps_halve, method_fits,
    checkpointing_fits,
)
