"""Turn a Config (or a checkpoint record) into the objects it describes: data, networks, denoisers, schedules."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType

from .config import Config, ConfigError, PerfConfig, config_from_json, config_from_record
from .data import ExampleData, sample_toy_labelled
from .data.images import IMAGE_DATASETS, load_image_dataset
from .denoiser import Denoiser
from .diffusion.parameterization import get_parameterization
from .diffusion.schedules import Schedule, make_schedule, schedule_from_spec, schedule_spec
from .nets import MLPNet
from .nets.spec import ModelSpec, SpecError, build_net, resolve_args
from .nets.families import FAMILIES
from .nets.presets import UNET_PRESETS
from .checkpoint import FORMAT_VERSION, CheckpointError, checkpoint_paths, load_into, read_record


# 2-D data: the test split is drawn from data.seed plus this offset, a stream no training draw shares.
TEST_SPLIT_SEED_OFFSET = 100_003


def load_data(cfg: Config, split: str = "train", *, progress: bool = True) -> ExampleData:
    """The training examples the config names (uint8 images, scaled to [-1, 1] per batch; labels only when
    data.conditional). In a multi-process run the main process builds a folder's cache while the others wait."""
    d = cfg.data
    if d.name == "captions":
        return _captioned_latents(cfg, split, progress)
    if d.name not in IMAGE_DATASETS:
        seed = d.seed if split == "train" else d.seed + TEST_SPLIT_SEED_OFFSET
        x, labels = sample_toy_labelled(d.name, d.size, seed)
        return ExampleData(x, labels if d.conditional else None, flip=d.flip)
    # Only once accelerate is set up (training): each machine's first process builds a folder cache, then the rest.
    state = PartialState() if PartialState._shared_state else None
    first = state.local_main_process_first() if state is not None else contextlib.nullcontext()
    with first:
        data = load_image_dataset(d.name, d.root or None, split=split, image_size=d.image_size or None,
                                  channels=d.channels or None, download=d.download,
                                  progress=progress and (state is None or state.is_local_main_process))
    data = data.subset(d.limit if split == "train" else 0, keep_labels=d.conditional)
    data.flip = d.flip
    return data


def _captioned_latents(cfg: Config, split: str, progress: bool) -> ExampleData:
    """A captioned folder as cached latents and caption hidden states (data/captions.py)."""
    from .data.captions import load_captioned_latents

    d = cfg.data
    if split != "train":
        raise ConfigError("captioned folders have only a training split")
    state = PartialState() if PartialState._shared_state else None
    first = state.local_main_process_first() if state is not None else contextlib.nullcontext()
    with first:
        data = load_captioned_latents(d.root, json.loads(d.components), image_size=d.image_size,
                                      channels=d.channels or 3, column=d.caption_column, mode=d.latents, seed=d.seed,
                                      workers=d.workers or None,
                                      progress=progress and (state is None or state.is_local_main_process))
    return data.subset(d.limit)


def schedule_of(source: Config | ModelSpec) -> Schedule:
    """The noise schedule of a config (a new model) or of a model spec (a loaded checkpoint's)."""
    if isinstance(source, ModelSpec):
        return schedule_from_spec(source.schedule)
    d = source.diffusion
    return make_schedule(d.schedule, d.logsnr_min, d.logsnr_max, num_timesteps=d.num_timesteps,
                         beta_schedule=d.beta_schedule, beta_start=d.beta_start, beta_end=d.beta_end, shift=d.shift)


def _mlp_args(m, data_shape, factor, drop, rows, dropout) -> dict:
    if len(data_shape) != 1:
        raise ValueError(f"model.arch 'mlp' needs flat data, got examples of shape {tuple(data_shape)}")
    args = dict(data_dim=data_shape[0], out_dim=factor * data_shape[0], hidden=m.hidden, depth=m.depth,
                emb_dim=m.emb_dim, dropout=drop, num_classes=rows)
    return resolve_args(MLPNet.__init__, args, "MLPNet")


def _unet_args(m, data_shape, factor, drop, rows, dropout) -> dict:
    if len(data_shape) != 3 or data_shape[1] != data_shape[2]:
        raise ValueError(f"model.arch 'unet' needs square images [C, H, W], got examples of shape "
                         f"{tuple(data_shape)}")
    from .nets.unet import unet_config  # imports diffusers (seconds): only for the networks built on it

    channels = data_shape[0]
    return unet_config(UNET_PRESETS[m.unet], data_shape[1], channels, factor * channels, drop, rows)


def _diffusers_args(m, data_shape, factor, drop, rows, dropout) -> dict:
    from .nets.unet import resolve_unet2d_config

    config = json.loads(m.diffusers_unet)
    if dropout is not None:
        config["dropout"] = dropout
    return resolve_unet2d_config(config)


# How `train` turns the model config into each family's constructor arguments (imported families without a config
# of their own, sd_unet, have none: import-diffusers writes their spec).
_ARGS_FROM_CONFIG = {"mlp": _mlp_args, "unet": _unet_args, "diffusers": _diffusers_args}


def spec_from_config(cfg: Config, data_shape: tuple[int, ...], num_classes: int = 0,
                     dropout: float | None = None) -> ModelSpec:
    """The network a config describes for data of shape `data_shape` (one example, without the batch dimension),
    with every argument resolved (presets looked up, library defaults filled in): what checkpoints record."""
    m, d = cfg.model, cfg.diffusion
    data_shape = tuple(int(s) for s in data_shape)
    null_class = cfg.train.label_dropout > 0
    if null_class and num_classes == 0:
        raise ConfigError("train.label_dropout > 0 needs class labels: a labelled data set (fashion-mnist, cifar10, "
                          "ring_classes, a folder of class folders) with data.conditional = true")
    rows = num_classes + int(null_class)  # the null class ("no label") is one more class-embedding row
    factor = get_parameterization(m.parameterization).channel_factor
    drop = m.dropout if dropout is None else dropout
    fam = FAMILIES[m.arch]
    if not fam.trained_here and fam.config_key is None:
        raise ConfigError(f"model.arch {m.arch!r} models are imported, not built from a config: `progdistill "
                          "import-diffusers --model SD_FOLDER --captions IMAGES`")
    if fam.schedules is not None and d.schedule not in fam.schedules:
        raise ConfigError(f"model.arch {m.arch!r} is a discrete-time model: set diffusion.schedule = \"discrete\"")
    if null_class and not fam.trained_here:
        raise ConfigError("train.label_dropout is for teachers trained here (model.arch unet or mlp), not for "
                          "imported diffusers models")
    args = _ARGS_FROM_CONFIG[m.arch](m, data_shape, factor, drop, rows, dropout)
    schedule = schedule_spec(d.schedule, d.logsnr_min, d.logsnr_max, num_timesteps=d.num_timesteps,
                             beta_schedule=d.beta_schedule, beta_start=d.beta_start, beta_end=d.beta_end,
                             shift=d.shift)
    return ModelSpec(m.arch, args, m.parameterization, schedule, data_shape, int(num_classes), null_class)


def denoiser_from_spec(spec: ModelSpec, perf: PerfConfig | None = None) -> Denoiser:
    """A freshly initialised denoiser of `spec` (its network plus parameterization); `.spec` holds the spec.
    `perf` only picks kernels (sdpa off: diffusers' plain attention), never the math."""
    net = build_net(spec)
    if perf is not None and not perf.sdpa:
        from diffusers.models.attention_processor import Attention, AttnProcessor

        for module in net.diffusers_modules():
            if isinstance(module, Attention):
                module.set_processor(AttnProcessor())
    denoiser = Denoiser(net, spec.parameterization, spec.consistency)
    denoiser.spec = spec
    return denoiser


def build_denoiser(cfg: Config, data_shape: tuple[int, ...], num_classes: int = 0,
                   dropout: float | None = None) -> Denoiser:
    """A freshly initialised denoiser for data of shape `data_shape` (one example, without the batch dimension);
    `.spec` holds its resolved description (see `spec_from_config`)."""
    return denoiser_from_spec(spec_from_config(cfg, data_shape, num_classes, dropout), cfg.perf)


def model_record(spec: ModelSpec, cfg: Config, steps: int) -> dict:
    """The record entries that describe a model for loading and sampling (checkpoint format 2): its "model" block
    and "sampling" defaults (`steps` DDIM steps, clipping and ancestral variance from cfg.sample)."""
    return {"model": spec.to_dict(),
            "sampling": {"steps": int(steps), "clip": cfg.sample.clip, "variance": cfg.sample.variance}}


def make_accelerator(cfg: Config) -> Accelerator:
    """accelerate's Accelerator on the configured device (auto: CUDA when present) and mixed precision."""
    cpu = cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available())
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device = 'cuda' but no CUDA device is available; use device = 'cpu' or 'auto'")
    if cfg.mixed_precision == "fp16" and cpu:
        raise ConfigError("mixed_precision = 'fp16' needs a CUDA device; use 'bf16' or 'no' on the CPU")
    shared = AcceleratorState._shared_state
    if (shared and shared.get("distributed_type") == DistributedType.NO
            and shared.get("_mixed_precision") != cfg.mixed_precision):
        # One process may run configs with different precisions (tests, notebooks); accelerate keeps one global
        # state, so a single-process run resets it. Launched multi-process runs keep their launch settings.
        AcceleratorState._reset_state()
    if not cpu:
        torch.backends.cuda.matmul.allow_tf32 = cfg.perf.tf32
        torch.backends.cudnn.allow_tf32 = cfg.perf.tf32
    return Accelerator(cpu=cpu, mixed_precision=cfg.mixed_precision)


@dataclass
class LoadedCheckpoint:
    """A checkpoint's sampling weights as an eval-mode denoiser, its record (in the current format, older ones
    translated), its model spec and its training config (provenance, read leniently: `notes` says what of it was
    skipped)."""

    denoiser: Denoiser
    record: dict
    spec: ModelSpec
    config: Config
    notes: list[str]

    @property
    def sampling(self) -> dict:
        """Sampler defaults: {"steps", "clip", "variance"}."""
        return self.record["sampling"]


def _translate_v1(record: dict, path: Path) -> dict:
    """A format-1 record (the network rebuilt from the training config and the U-Net presets) in format 2: its
    config is read as it always was and resolved through today's presets, once, here."""
    missing = [k for k in ("config", "data_shape") if k not in record]
    if missing:
        raise CheckpointError(f"checkpoint record {path} (format 1) lacks {', '.join(missing)}; the file is "
                              "incomplete or corrupt")
    try:
        cfg = config_from_json(record["config"])
    except ConfigError as e:
        raise CheckpointError(f"checkpoint record {path} is in format 1, whose network is rebuilt from its training "
                              f"config, and this version cannot read that config: {e}") from None
    try:
        dropout = cfg.distill.dropout if record.get("kind") == "student" else None
        spec = spec_from_config(cfg, tuple(record["data_shape"]), int(record.get("num_classes", 0)), dropout)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint record {path} (format 1) describes no network this version can build "
                              f"({e})") from None
    steps = record.get("sampling_steps") or cfg.distill.start_steps
    out = {k: v for k, v in record.items() if k not in ("data_shape", "num_classes", "version")}
    return out | {"format_version": FORMAT_VERSION, **model_record(spec, cfg, steps)}


def read_model_record(stem: str | Path) -> tuple[dict, ModelSpec]:
    """A checkpoint's record in the current format (format 1 translated) and its checked model spec."""
    record = read_record(stem)
    path = checkpoint_paths(stem)[1]
    if record.get("format_version", 1) == 1:
        record = _translate_v1(record, path)
    missing = [k for k in ("model", "sampling", "sampling_weights") if k not in record]
    if missing:
        raise CheckpointError(f"checkpoint record {path} lacks {', '.join(repr(k) for k in missing)}; the file is "
                              "incomplete or corrupt")
    try:
        spec = ModelSpec.from_dict(record["model"])
    except SpecError as e:
        raise CheckpointError(f"checkpoint record {path}: {e}") from None
    sampling = record["sampling"]
    if not isinstance(sampling, dict) or any(k not in sampling for k in ("steps", "clip", "variance")):
        raise CheckpointError(f"checkpoint record {path}: its sampling block needs steps, clip and variance")
    return record, spec


def load_checkpoint(stem: str | Path, device: torch.device | str = "cpu") -> LoadedCheckpoint:
    """A checkpoint, its network rebuilt from the record's model block alone (no preset, no config)."""
    record, spec = read_model_record(stem)
    path = checkpoint_paths(stem)[1]
    cfg, notes = config_from_record(record.get("config", {}))
    try:
        denoiser = denoiser_from_spec(spec, cfg.perf)
    except (SpecError, TypeError, ValueError) as e:
        raise CheckpointError(f"cannot build the network of checkpoint {path}: {e}") from None
    load_into(denoiser, stem, record["sampling_weights"])
    return LoadedCheckpoint(denoiser.to(device).eval().requires_grad_(False), record, spec, cfg, notes)


def load_denoiser(stem: str | Path, device: torch.device | str = "cpu") -> tuple[Denoiser, dict, Config]:
    """The sampling weights of a checkpoint as an eval-mode Denoiser (`.spec`: its model spec), with its record
    (current format) and training config (provenance; see `load_checkpoint`)."""
    loaded = load_checkpoint(stem, device)
    return loaded.denoiser, loaded.record, loaded.config


def with_overrides(cfg: Config, **sections) -> Config:
    """A copy of cfg with whole sections replaced, validated."""
    return replace(cfg, **sections).validate()
