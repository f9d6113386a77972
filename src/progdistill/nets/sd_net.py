"""An imported Stable-Diffusion-layout UNet2DConditionModel (a latent text-to-image model on its own discrete
timesteps) behind the project's net(z, cond, labels[, w]) interface.

The text condition takes the place of class labels: `labels` are the text encoder's last hidden states [B, L, D]
(what StableDiffusionPipeline passes as encoder_hidden_states); None means the empty caption, whose hidden states
the network keeps as the buffer `null_text` (computed once at import, saved with the weights), so classifier-free
guidance needs no text encoder. The guidance weight w of a guided student enters through diffusers' own interface:
`time_cond_proj_dim` adds a projection of `guidance_scale_embedding(w)` to the timestep features, as the stock
pipeline computes it from guidance_scale - 1; the projection starts at zero, so the student starts as its teacher.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn

from ..diffusion.schedules import DiscreteSchedule
from .args import SpecError, resolve_args
from .base import DenoiserNet
from .diffusers_parts import LoraHost
from .embedding import guidance_input

# The w embedding of a guided student: diffusers' guidance_scale_embedding, whose argument is 1000 w.
SD_W_SCALE = 1000.0
def resolve_unet2d_condition_config(config: dict) -> dict:
    """A UNet2DConditionModel config (private "_" keys dropped) completed with the installed diffusers' defaults."""
    from diffusers import UNet2DConditionModel

    return resolve_args(UNet2DConditionModel.__init__, {k: v for k, v in dict(config).items() if not k.startswith("_")},
                        "diffusers' UNet2DConditionModel")


def guidance_scale_embedding(w: Tensor, dim: int) -> Tensor:
    """The stock pipeline's embedding of w = guidance_scale - 1 (its own function, evaluated on the CPU as there)."""
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.get_guidance_scale_embedding(None, w.detach().float().cpu(), embedding_dim=dim)


class TextUNet(LoraHost, DenoiserNet):
    """net(z, cond, text, w) of a UNet2DConditionModel: `cond` its (fractional) timestep on `schedule`, `text` the
    encoder hidden states [B, text_length, text_dim] (None: the empty caption).

    SDXL's U-Net (`pooled_dim` given; addition_embed_type "text_time") takes the mapping {"encoder_hidden_states":
    [B, L, D], "text_embeds": [B, pooled_dim], "time_ids": [B, 6]} (StableDiffusionXLPipeline's encoder hidden
    states and added_cond_kwargs); without "time_ids" it uses `time_ids`, the pipeline's default (original and
    target size the model's pixel size, crop corner 0, 0). Its null condition has no time ids: guidance keeps each
    row's own (conditioning.null_like), as the pipeline's negative branch does."""

    def __init__(self, unet: dict, schedule: DiscreteSchedule, text_length: int, text_dim: int,
                 dropout: float | None = None, lora: dict | None = None, pooled_dim: int | None = None,
                 time_ids: list | None = None):
        super().__init__()
        from diffusers import UNet2DConditionModel

        config = resolve_unet2d_condition_config(unet)
        if dropout is not None:
            config["dropout"] = float(dropout)
        if config.get("time_cond_proj_dim") is not None:
            raise SpecError("the U-Net already has a w input (time_cond_proj_dim); give the guidance block instead")
        if config.get("cross_attention_dim") != text_dim:
            raise SpecError(f"the U-Net attends to text of width {config.get('cross_attention_dim')}, the text encoder "
                            f"gives {text_dim}")
        self.unet = UNet2DConditionModel(**config)
        self.schedule = schedule
        self.register_buffer("null_text", torch.zeros(int(text_length), int(text_dim)))
        self.pooled_dim = None if pooled_dim is None else int(pooled_dim)
        if self.pooled_dim is not None:
            if config.get("addition_embed_type") != "text_time" or time_ids is None or len(time_ids) != 6:
                raise SpecError("a U-Net with pooled text embeddings is SDXL's: addition_embed_type 'text_time' and "
                                "six default time ids")
            self.register_buffer("null_pooled", torch.zeros(self.pooled_dim))
            self.register_buffer("default_time_ids", torch.tensor([float(v) for v in time_ids]), persistent=False)
        self.w_dim: int | None = None
        self.lora: dict | None = None
        if lora is not None:
            self.add_lora(lora)

    def lora_host(self) -> nn.Module:
        return self.unet

    def merged_unet_state(self) -> dict[str, Tensor]:
        """The U-Net's weights with the adapter merged in, under a plain UNet2DConditionModel's names."""
        return self.merged_host_state()

    def null_condition(self) -> Tensor | dict[str, Tensor]:
        """The empty caption's hidden states [L, D] (SDXL: with its pooled embedding, no time ids)."""
        if self.pooled_dim is not None:
            return {"encoder_hidden_states": self.null_text, "text_embeds": self.null_pooled}
        return self.null_text

    def condition(self, logsnr: Tensor) -> Tensor:
        return self.schedule.timestep(logsnr)

    def condition_on_w(self, dim: int, scale: float, class_gate: bool = False) -> None:
        """A zero-initialised `time_embedding.cond_proj` (diffusers' time_cond_proj_dim = dim)."""
        if scale != SD_W_SCALE or class_gate:
            raise SpecError(f"a Stable Diffusion U-Net takes w through diffusers' guidance_scale_embedding (scale "
                            f"{SD_W_SCALE:g}, no class gate); got scale {scale:g}, class_gate {class_gate}")
        emb = self.unet.time_embedding
        emb.cond_proj = nn.Linear(dim, emb.linear_1.in_features, bias=False)
        nn.init.zeros_(emb.cond_proj.weight)
        self.unet.register_to_config(time_cond_proj_dim=int(dim))
        self.w_dim = int(dim)

    w_input_prefix = "unet.time_embedding.cond_proj."

    def diffusers_modules(self) -> Iterable[nn.Module]:
        return self.unet.modules()

    def forward(self, z: Tensor, cond: Tensor, labels: Tensor | Mapping[str, Tensor] | None = None,
                w: Tensor | float | None = None) -> Tensor:
        added = None
        if self.pooled_dim is not None:
            text, added = self._sdxl_condition(labels, z.shape[0], z.dtype)
        else:
            text = labels if labels is not None else self.null_text.expand(z.shape[0], -1, -1)
            if not isinstance(text, Tensor) or text.ndim != 3:
                got = sorted(text) if isinstance(text, Mapping) else tuple(text.shape)
                raise ValueError(f"a text-conditioned U-Net takes encoder hidden states [B, L, D], got {got}")
        timestep_cond = None
        if self.w_dim is not None:
            timestep_cond = guidance_scale_embedding(guidance_input(w, z), self.w_dim).to(z.device, z.dtype)
        if added is None:
            return self.unet(z, cond, encoder_hidden_states=text.to(z.dtype), timestep_cond=timestep_cond).sample
        return self.unet(z, cond, encoder_hidden_states=text.to(z.dtype), timestep_cond=timestep_cond,
                         added_cond_kwargs=added).sample

    def _sdxl_condition(self, labels, b: int, dtype) -> tuple[Tensor, dict[str, Tensor]]:
        if labels is None:
            labels = {k: v.expand(b, *v.shape) for k, v in self.null_condition().items()}
        if not isinstance(labels, Mapping) or not {"encoder_hidden_states", "text_embeds"} <= set(labels) or not (
                set(labels) <= {"encoder_hidden_states", "text_embeds", "time_ids"}):
            got = sorted(labels) if isinstance(labels, Mapping) else f"a tensor of shape {tuple(labels.shape)}"
            raise ValueError("an SDXL U-Net takes the condition {'encoder_hidden_states': [B, L, D], 'text_embeds': "
                             f"[B, P], 'time_ids': [B, 6] (optional)}}, got {got}")
        time_ids = labels.get("time_ids")
        if time_ids is None:
            time_ids = self.default_time_ids.expand(b, -1)
        return labels["encoder_hidden_states"], {"text_embeds": labels["text_embeds"].to(dtype),
                                                 "time_ids": time_ids.to(dtype)}
