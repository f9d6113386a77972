"""Turn a Config (or a checkpoint record) into the objects it describes: data, networks, denoisers, schedules."""

from __future__ import annotations

import contextlib
from dataclasses import replace
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType

from .config import Config, ConfigError, config_from_json
from .data import ExampleData, sample_toy
from .data.images import IMAGE_DATASETS, load_image_dataset
from .denoiser import Denoiser
from .diffusion.parameterization import get_parameterization
from .diffusion.schedules import DiscreteSchedule, Schedule, make_schedule
from .nets import MLPNet
from .nets.diffusers_net import DiffusersUNet
from .nets.unet import UNET_PRESETS, UNet
from .training.checkpoint import CheckpointError, load_into, read_record


def load_data(cfg: Config, split: str = "train", *, progress: bool = True) -> ExampleData:
    """The training examples the config names (uint8 images, scaled to [-1, 1] per batch; labels only when
    data.conditional). In a multi-process run the main process builds a folder's cache while the others wait."""
    d = cfg.data
    if d.name not in IMAGE_DATASETS:
        seed = d.seed if split == "train" else d.seed + 100_003
        return ExampleData(sample_toy(d.name, d.size, seed), flip=d.flip)
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


def schedule_of(cfg: Config) -> Schedule:
    d = cfg.diffusion
    return make_schedule(d.schedule, d.logsnr_min, d.logsnr_max, num_timesteps=d.num_timesteps,
                         beta_schedule=d.beta_schedule, beta_start=d.beta_start, beta_end=d.beta_end)


def build_denoiser(cfg: Config, data_shape: tuple[int, ...], num_classes: int = 0,
                   dropout: float | None = None) -> Denoiser:
    """A freshly initialised denoiser for data of shape `data_shape` (one example, without the batch dimension)."""
    m = cfg.model
    factor = get_parameterization(m.parameterization).channel_factor
    if m.arch == "mlp":
        if len(data_shape) != 1:
            raise ValueError(f"model.arch 'mlp' needs flat data, got examples of shape {tuple(data_shape)}")
        net = MLPNet(data_shape[0], factor * data_shape[0], m.hidden, m.depth, m.emb_dim,
                     m.dropout if dropout is None else dropout, num_classes)
    elif m.arch == "unet":
        if len(data_shape) != 3 or data_shape[1] != data_shape[2]:
            raise ValueError(f"model.arch 'unet' needs square images [C, H, W], got examples of shape "
                             f"{tuple(data_shape)}")
        channels = data_shape[0]
        net = UNet(UNET_PRESETS[m.unet], data_shape[1], channels, factor * channels,
                   m.dropout if dropout is None else dropout, num_classes)
    elif m.arch == "diffusers":
        schedule = schedule_of(cfg)
        if not isinstance(schedule, DiscreteSchedule):
            raise ConfigError("model.arch 'diffusers' is a discrete-time model: set diffusion.schedule = \"discrete\"")
        net = DiffusersUNet(m.diffusers_unet, schedule, dropout)
    else:  # pragma: no cover - validate() only admits known archs
        raise ValueError(f"unknown model.arch {m.arch!r}")
    if not cfg.perf.sdpa and hasattr(net, "unet"):
        from diffusers.models.attention_processor import Attention, AttnProcessor

        for module in net.unet.modules():
            if isinstance(module, Attention):
                module.set_processor(AttnProcessor())
    return Denoiser(net, m.parameterization)


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


def load_denoiser(stem: str | Path, device: torch.device | str = "cpu") -> tuple[Denoiser, dict, Config]:
    """The sampling weights of a checkpoint as an eval-mode Denoiser, with its record and Config."""
    record = read_record(stem)
    try:
        cfg = config_from_json(record["config"])
        data_shape = tuple(record["data_shape"])
        num_classes = int(record.get("num_classes", 0))
        weights = record["sampling_weights"]
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint record for {stem} is incomplete or invalid ({e})") from None
    dropout = cfg.distill.dropout if record.get("kind") == "student" else None
    denoiser = build_denoiser(cfg, data_shape, num_classes, dropout=dropout)
    load_into(denoiser, stem, weights)
    return denoiser.to(device).eval().requires_grad_(False), record, cfg


def with_overrides(cfg: Config, **sections) -> Config:
    """A copy of cfg with whole sections replaced, validated."""
    return replace(cfg, **sections).validate()
