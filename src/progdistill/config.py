"""Typed, validated configuration: dataclasses read from TOML presets, overridden from the command line,
written as JSON beside every checkpoint. Every error names the offending field."""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import typing
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from .data.images import IMAGE_DATASETS
from .data.toy2d import TOY_DISTRIBUTIONS, TOY_LABELS
from .diffusion.parameterization import PARAMETERIZATIONS
from .diffusion.registry import VARIANCES
from .diffusion.schedules import SCHEDULES
from .diffusion.weighting import FORBIDDEN, WEIGHTINGS
from .nets.spec import NET_KINDS
from .nets.unet import UNET_PRESETS


class ConfigError(ValueError):
    """A configuration value that is missing, unknown, of the wrong type or out of range."""


def is_power_of_two(n: int) -> bool:
    return isinstance(n, int) and n >= 1 and (n & (n - 1)) == 0


@dataclass
class DataConfig:
    name: str = "ring"  # 2-D: ring, checkerboard, moons, swissroll, ring_classes (labelled); images: fashion-mnist,
    # cifar10, folder
    size: int = 100_000  # training examples drawn for 2-D data
    seed: int = 0
    flip: bool = False  # random horizontal flips
    root: str = ""  # image data folder ("": fashion-mnist looks in /usr/share/datasets/fashion-mnist, then the cache)
    download: bool = False  # fetch Fashion-MNIST into the cache (checksums verified) when it is not found
    image_size: int = 0  # folder data: centre crop and resize to this size (0: the data set's native size)
    conditional: bool = True  # class-conditional model where the data has labels
    limit: int = 0  # use only the first `limit` training images (0: all)
    channels: int = 0  # folder data: 1 (grayscale) or 3 (RGB); 0: the data set's own (folders: RGB)
    workers: int = 2  # DataLoader worker processes per training process (0: load in the training process)


@dataclass
class ModelConfig:
    arch: str = "mlp"  # mlp (flat data), unet (images) or diffusers (an imported diffusers UNet2DModel)
    unet: str = "small"  # U-Net preset: small (CPU, 28x28), cifar10, imagenet64 (PAPER section 6)
    parameterization: str = "v"  # eps, x, v or both
    hidden: int = 256
    depth: int = 4
    emb_dim: int = 128
    dropout: float = 0.0
    diffusers_unet: str = ""  # arch = diffusers: the UNet2DModel config as JSON (written by import-diffusers)


@dataclass
class DiffusionConfig:
    schedule: str = "cosine"  # cosine, linear (DDPM betas, continuous time) or discrete (a diffusers scheduler's)
    logsnr_min: float = -20.0
    logsnr_max: float = 20.0
    weighting: str = "snr_plus1"  # the teacher's loss weighting
    # schedule = discrete: diffusers' alpha_bar over num_timesteps (timestep j sits at t = (j + 1) / num_timesteps)
    num_timesteps: int = 1000
    beta_schedule: str = "linear"  # linear, scaled_linear or squaredcos_cap_v2
    beta_start: float = 1e-4
    beta_end: float = 0.02


@dataclass
class TrainConfig:
    steps: int = 20_000
    batch_size: int = 512
    lr: float = 1e-3
    warmup: int = 500
    lr_decay: str = "constant"  # after warmup: constant, linear (to 0) or cosine (to 0)
    grad_clip: float = 1.0  # gradient-norm clipping; 0 turns it off
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    ema_decay: float = 0.999  # 0 turns EMA off
    checkpoint_every: int = 5_000
    keep_checkpoints: int = 3
    seed: int = 0
    grad_accum: int = 1  # micro-batches per optimizer step (batch_size is the micro-batch)
    # Classifier-free guidance: the share of training examples whose label is replaced by the null class (index
    # num_classes, an extra class-embedding row), so the network also learns the unconditional x_hat (0: off).
    label_dropout: float = 0.0


@dataclass
class DistillConfig:
    start_steps: int = 256  # the first teacher's DDIM step count N
    target_steps: int = 1  # distil down to this many student steps
    updates_per_round: int = 4_000
    final_updates_per_round: int = 0  # updates for rounds whose student has <= long_round_max_steps (0: as above)
    long_round_max_steps: int = 2
    batch_size: int = 512
    lr: float = 5e-4  # linearly annealed to 0 within every round
    warmup: int = 0
    grad_clip: float = 1.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    ema_decay: float = 0.0  # the paper uses no EMA while distilling
    dropout: float = 0.0
    weighting: str = "snr_trunc"
    seed: int = 1
    grad_accum: int = 1
    checkpoint_every: int = 1_000  # mid-round checkpoints (the newest 2 kept) for exact resume; 0: none
    log_samples: int = 16  # per round: samples for the logged grid and the student-vs-teacher gap (0: none)
    # The students' output: "same" (the teacher's) or eps, x, v (a teacher of another one of these three hands its
    # weights over, the output read the new way) or both (only from a "both" teacher); "auto": v for an eps
    # teacher, else the teacher's own. docs/imported_teachers.md
    parameterization: str = "auto"
    # A student of another parameterization: warm-up updates onto the teacher's x_hat before the first round
    # (-1, auto: 2 x updates_per_round when the parameterization changes, else 0).
    convert_updates: int = -1
    # Targets from clipped teacher DDIM steps (a deviation from the paper, for low terminal log-SNR teachers):
    # none (the paper), noisy (student steps starting below log-SNR teacher_clip_logsnr), all, or auto (noisy for
    # an eps teacher, else none).
    teacher_clip: str = "auto"
    teacher_clip_logsnr: float = 0.0


@dataclass
class GuidedConfig:
    """Guided distillation (docs/guided.md): stage 1 trains a w-conditioned student on the label-dropout teacher's
    guided x_hat_w, w ~ U[w_min, w_max] per example; stage 2 is progressive distillation ([distill]) with w."""

    w_min: float = 0.0  # the trained range of the guidance weight w (guidance_scale = 1 + w); paper: [0, 4]
    w_max: float = 4.0
    # Training draws w from [w_min - w_margin, w_max] (for a range, not a single w), so that w_min is not the edge
    # of what the student is fitted on; sampling stays within [w_min, w_max]. 0: the paper's (docs/guided.md).
    w_margin: float = 0.0
    stage1_updates: int = 2_000  # stage-1 optimizer steps (its other settings: lr, batch size, ... of [distill])
    stage1_weighting: str = "auto"  # the stage-1 loss weighting; auto: the teacher's (diffusion.weighting)
    stage1_lr: float = 0.0  # stage 1's peak learning rate; 0: distill.lr
    embed_dim: int = 64  # sinusoidal features of w, before the small MLP into the noise embedding
    embed_scale: float = 1000.0  # the sinusoidal embedding's argument is embed_scale * w
    class_gate: bool = False  # w also scales the class embedding's offset from the null class's (docs/guided.md)
    checkpoint_every: int = 500  # stage-1 checkpoints (the newest 2 kept) for exact resume; 0: none


@dataclass
class SampleConfig:
    variance: str = "small"  # ancestral: small, large or interp
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
    device: str = "auto"  # auto, cpu or cuda
    mixed_precision: str = "no"  # no, fp16 or bf16 (accelerate autocast; fp16 only on CUDA)

    def validate(self) -> "Config":
        """Check every cross-field and range rule; raise ConfigError naming the field."""
        _choice("data.name", self.data.name, [*TOY_DISTRIBUTIONS, *IMAGE_DATASETS])
        _choice("model.arch", self.model.arch, NET_KINDS)
        _choice("model.unet", self.model.unet, UNET_PRESETS)
        _choice("mixed_precision", self.mixed_precision, ["no", "fp16", "bf16"])
        images = self.data.name in IMAGE_DATASETS
        if images and self.model.arch not in ("unet", "diffusers"):
            raise ConfigError(f"data.name {self.data.name!r} is an image data set: set model.arch = \"unet\"")
        if self.model.arch == "diffusers" and not self.model.diffusers_unet:
            raise ConfigError("model.arch 'diffusers' needs model.diffusers_unet (the UNet2DModel config); create "
                              "such a run with `progdistill import-diffusers`")
        if not images and self.model.arch != "mlp":
            raise ConfigError(f"data.name {self.data.name!r} is 2-D data: set model.arch = \"mlp\"")
        if self.data.name == "folder" and (not self.data.root or self.data.image_size <= 0):
            raise ConfigError("data.name 'folder' needs data.root (a folder of images) and data.image_size > 0")
        if self.data.channels not in (0, 1, 3):
            raise ConfigError(f"data.channels must be 1 (grayscale), 3 (RGB) or 0 (the data set's own), got "
                              f"{self.data.channels}")
        native = {"fashion-mnist": 1, "cifar10": 3}.get(self.data.name)
        if native and self.data.channels not in (0, native):
            raise ConfigError(f"data.channels = {self.data.channels}: {self.data.name} images have {native} "
                              f"channel(s); data.channels is for folders (leave it 0)")
        for name in ("data.image_size", "data.limit", "data.workers"):
            if self._get(name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {self._get(name)}")
        _choice("model.parameterization", self.model.parameterization, PARAMETERIZATIONS)
        _choice("diffusion.schedule", self.diffusion.schedule, SCHEDULES)
        _choice("diffusion.beta_schedule", self.diffusion.beta_schedule, ["linear", "scaled_linear",
                                                                          "squaredcos_cap_v2"])
        _positive("diffusion.num_timesteps", self.diffusion.num_timesteps)
        _choice("diffusion.weighting", self.diffusion.weighting, WEIGHTINGS)
        _choice("distill.weighting", self.distill.weighting, WEIGHTINGS)
        _choice("distill.parameterization", self.distill.parameterization, ["auto", "same", *PARAMETERIZATIONS])
        _choice("distill.teacher_clip", self.distill.teacher_clip, ["auto", "none", "noisy", "all"])
        if self.distill.convert_updates < -1:
            raise ConfigError(f"distill.convert_updates must be >= 0 (or -1: auto), got {self.distill.convert_updates}")
        _choice("train.lr_decay", self.train.lr_decay, ["constant", "linear", "cosine"])
        if self.train.label_dropout > 0 and not images and self.data.name not in TOY_LABELS:
            raise ConfigError(f"train.label_dropout > 0 needs class labels, and data.name {self.data.name!r} has none "
                              "(2-D data with classes: ring_classes)")
        if self.train.label_dropout > 0 and not self.data.conditional:
            raise ConfigError("train.label_dropout > 0 trains a class-conditional model: set data.conditional = true")
        _choice("guided.stage1_weighting", self.guided.stage1_weighting, ["auto", *WEIGHTINGS])
        if not self.guided.w_min <= self.guided.w_max:  # equal: a student for one w only
            raise ConfigError(f"guided.w_min ({self.guided.w_min}) must not exceed guided.w_max ({self.guided.w_max})")
        if self.guided.w_min < 0:
            raise ConfigError(f"guided.w_min must be >= 0 (w = 0 is the conditional model), got {self.guided.w_min}")
        if not (math.isfinite(self.guided.w_margin) and self.guided.w_margin >= 0):
            raise ConfigError(f"guided.w_margin must be a number >= 0 (0: w drawn from [w_min, w_max] only), "
                              f"got {self.guided.w_margin}")
        _positive("guided.stage1_updates", self.guided.stage1_updates)
        if self.guided.embed_dim < 4 or self.guided.embed_dim % 2:
            raise ConfigError(f"guided.embed_dim must be even and >= 4, got {self.guided.embed_dim}")
        if not (math.isfinite(self.guided.stage1_lr) and self.guided.stage1_lr >= 0):
            raise ConfigError(f"guided.stage1_lr must be >= 0 (0: distill.lr), got {self.guided.stage1_lr}")
        if not (math.isfinite(self.guided.embed_scale) and self.guided.embed_scale > 0):
            raise ConfigError(f"guided.embed_scale must be a positive number, got {self.guided.embed_scale}")
        if self.guided.checkpoint_every < 0:
            raise ConfigError(f"guided.checkpoint_every must be >= 0, got {self.guided.checkpoint_every}")
        _choice("sample.variance", self.sample.variance, VARIANCES)
        _choice("device", self.device, ["auto", "cpu", "cuda"])
        # distill.weighting is checked against the parameterization when distillation starts (an eps teacher
        # is trainable; it just cannot be distilled).
        reason = FORBIDDEN.get((self.model.parameterization, self.diffusion.weighting))
        if reason:
            raise ConfigError(f"diffusion.weighting: {reason}")
        if not self.diffusion.logsnr_min < self.diffusion.logsnr_max:
            raise ConfigError("diffusion.logsnr_min must be below diffusion.logsnr_max")
        for name in ("data.size", "model.hidden", "model.depth", "train.steps", "train.batch_size",
                     "train.checkpoint_every", "train.keep_checkpoints", "distill.updates_per_round",
                     "train.grad_accum", "distill.grad_accum",
                     "distill.batch_size"):
            _positive(name, self._get(name))
        for name in ("train.lr", "distill.lr"):
            _positive(name, self._get(name))
        for name in ("train.warmup", "distill.warmup", "distill.final_updates_per_round", "distill.checkpoint_every",
                     "distill.log_samples",
                     "train.grad_clip",
                     "distill.grad_clip"):
            if self._get(name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {self._get(name)}")
        for name in ("model.dropout", "distill.dropout", "train.label_dropout", "train.ema_decay", "distill.ema_decay",
                     "train.adam_beta1", "train.adam_beta2", "distill.adam_beta1", "distill.adam_beta2"):
            if not 0.0 <= self._get(name) < 1.0:
                raise ConfigError(f"{name} must lie in [0, 1), got {self._get(name)}")
        if self.model.emb_dim < 4 or self.model.emb_dim % 2:
            raise ConfigError(f"model.emb_dim must be even and >= 4, got {self.model.emb_dim}")
        check_distill_steps(self.distill.start_steps, self.distill.target_steps)
        return self

    def _get(self, dotted: str) -> Any:
        section, key = dotted.split(".")
        return getattr(getattr(self, section), key)

    def to_dict(self) -> dict:
        return asdict(self)


def check_distill_steps(start: int, target: int, *, start_name="distill.start_steps",
                        target_name="distill.target_steps") -> None:
    """Both step counts powers of two, and the target at or below the start."""
    for name, value in ((start_name, start), (target_name, target)):
        if not is_power_of_two(value):
            raise ConfigError(f"{name} must be a power of two (1, 2, 4, ...), got {value}")
    if target > start:
        raise ConfigError(f"{target_name} ({target}) is above {start_name} ({start}): distillation halves the steps")


def _choice(name: str, value: str, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}: unknown value {value!r}; choose one of {', '.join(allowed)}")


def _positive(name: str, value) -> None:
    if not value > 0:
        raise ConfigError(f"{name} must be > 0, got {value}")


def _check_type(name: str, value: Any, tp: Any) -> Any:
    """Return value converted to the annotated type tp, or raise ConfigError."""
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if tp is float and isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value}")
    if tp in (int, float, str, bool):
        if type(value) is not tp:
            raise ConfigError(f"{name} must be of type {tp.__name__}, got {type(value).__name__} {value!r}")
        return value
    raise ConfigError(f"{name}: unsupported field type {tp}")  # pragma: no cover - guards new fields


def from_dict(cls: type, data: Any, prefix: str = "") -> Any:
    """Build dataclass `cls` from nested dicts, refusing unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'} must be a table, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f" in [{prefix}]" if prefix else ""
        raise ConfigError(f"unknown config key{where}: {', '.join(map(str, unknown))}; known: {', '.join(sorted(names))}")
    kwargs = {}
    for key, value in data.items():
        tp = hints[key]
        name = f"{prefix}.{key}" if prefix else key
        if dataclasses.is_dataclass(tp):
            kwargs[key] = from_dict(tp, value, name)
        else:
            kwargs[key] = _check_type(name, value, tp)
    return cls(**kwargs)


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_override(text: str) -> dict:
    """'train.lr=1e-3' -> {'train': {'lr': 0.001}}; the value is read as TOML, or as a bare string if it is not."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value (e.g. train.lr=1e-3)")
    key, raw = text.split("=", 1)
    key, raw = key.strip(), raw.strip()
    if not key or any(not part.isidentifier() for part in key.split(".")):
        raise ConfigError(f"override {text!r}: {key!r} is not a dotted config key such as train.lr")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    out: dict = {}
    node = out
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("progdistill.presets").iterdir() if p.name.endswith(".toml"))


def read_toml(source: str) -> dict:
    """A preset name (see `preset_names`) or a path to a TOML file, as a dict."""
    path = Path(source)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        text = path.read_text()
    else:
        res = resources.files("progdistill.presets") / f"{source}.toml"
        if not res.is_file():
            raise ConfigError(f"no preset called {source!r} and no such file; presets: {', '.join(preset_names())}")
        text = res.read_text()
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config {source}: invalid TOML: {e}") from None


def load_config(source: str | None = None, overrides: list[str] | tuple[str, ...] = (),
                base: dict | None = None) -> Config:
    """Defaults (or `base`, e.g. a checkpoint's config), then a preset or TOML file, then `section.key=value`
    overrides; validated."""
    data = dict(base or {})
    if source:
        data = _merge(data, read_toml(source))
    for text in overrides:
        data = _merge(data, parse_override(text))
    return from_dict(Config, data).validate()


def config_from_json(data: dict) -> Config:
    """The Config recorded in a checkpoint, to continue its run: fields this version no longer has (removed as
    unused) are dropped; every other value must still be valid."""
    return from_dict(Config, _known_fields(Config, data)).validate()


def _known_fields(cls: type, data: Any) -> Any:
    if not isinstance(data, dict):
        return data
    hints = typing.get_type_hints(cls)
    return {k: (_known_fields(hints[k], v) if dataclasses.is_dataclass(hints[k]) else v)
            for k, v in data.items() if k in hints}


def _lenient(cls: type, data: Any, prefix: str, notes: list[str]) -> Any:
    if not isinstance(data, dict):
        notes.append(f"{prefix or 'config'} is not a table (defaults used)")
        return cls()
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else key
        if key not in names:
            notes.append(f"{name} is unknown to this version (ignored)")
        elif dataclasses.is_dataclass(hints[key]):
            kwargs[key] = _lenient(hints[key], value, name, notes)
        else:
            try:
                kwargs[key] = _check_type(name, value, hints[key])
            except ConfigError as e:
                notes.append(f"{e} (default used)")
    return cls(**kwargs)


def config_from_record(data: Any) -> tuple[Config, list[str]]:
    """The training config a checkpoint records, read leniently: unknown or renamed fields are skipped, values
    of the wrong type take their defaults; returns it with notes on what was skipped and why it does not validate
    (it is provenance: loading a checkpoint needs only the record's model block)."""
    notes: list[str] = []
    cfg = _lenient(Config, data, "", notes)
    try:
        cfg.validate()
    except ConfigError as e:
        notes.append(f"it does not validate: {e}")
    return cfg, notes


def dump_json(config: Config) -> str:
    return json.dumps(config.to_dict(), indent=2, sort_keys=True)


