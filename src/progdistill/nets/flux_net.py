"""An imported FLUX-layout FluxTransformer2DModel (a latent flow-matching text-to-image transformer) behind the
project's net(z, cond, labels[, w]) interface.

The project's latents are the VAE's [C, H, W]; FLUX takes them packed 2x2 into tokens ([B, H/2 * W/2, 4C]) with
position ids (img_ids: the token's row and column; txt_ids: zeros), as FluxPipeline packs them: the network packs
its input and unpacks its output, so samplers, targets and the cache see plain latents. `labels` is the mapping
FluxPipeline passes: {"encoder_hidden_states": T5 hidden states [B, L, D], "pooled_projections": CLIP's pooled
output [B, P]}; None means the empty caption (buffers stored at import). `cond` is the flow time t = sigma (the
pipeline passes timestep / 1000 = sigma; the transformer multiplies by 1000 itself).

Guidance: FLUX's own `guidance_embeds` makes the guidance scale an input of the network (FLUX.1-dev is guidance
distilled; FluxPipeline passes guidance_scale to it, one call per step). A w-conditioned network here is exactly
that: guidance = 1 + w (diffusers' guidance_scale). A teacher without it (FLUX.1-schnell's layout) gets one for its
guided student: the same transformer with guidance_embeds = True, its guidance embedder's output layer zero, so it
starts as its teacher; the stock FluxPipeline then feeds it guidance_scale, so the guided student ships as it is.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn

from ..diffusion.schedules import flow_time
from .args import SpecError, resolve_args
from .base import DenoiserNet
from .diffusers_parts import LoraHost, text_pair
from .embedding import guidance_input

FLUX_GUIDANCE_DIM = 256  # the width of FLUX's sinusoidal guidance (and timestep) projection
FLUX_W_SCALE = 1000.0  # the transformer embeds 1000 * guidance


def resolve_flux_transformer_config(config: dict) -> dict:
    """A FluxTransformer2DModel config (private "_" keys dropped) completed with the installed diffusers' defaults."""
    from diffusers import FluxTransformer2DModel

    plain = {k: v for k, v in dict(config).items() if not k.startswith("_")}
    return resolve_args(FluxTransformer2DModel.__init__, plain, "diffusers' FluxTransformer2DModel")


def pack(z: Tensor) -> Tensor:
    """[B, C, H, W] -> [B, H/2 * W/2, 4C] (FluxPipeline._pack_latents)."""
    b, c, h, w = z.shape
    return z.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(tokens: Tensor, h: int, w: int) -> Tensor:
    """[B, H/2 * W/2, 4C] -> [B, C, H, W] (FluxPipeline._unpack_latents)."""
    b, _, c4 = tokens.shape
    return tokens.view(b, h // 2, w // 2, c4 // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c4 // 4, h, w)


def image_ids(h: int, w: int) -> Tensor:
    """The packed tokens' position ids [H/2 * W/2, 3] (FluxPipeline._prepare_latent_image_ids)."""
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 1] += torch.arange(h // 2)[:, None]
    ids[..., 2] += torch.arange(w // 2)[None, :]
    return ids.reshape(-1, 3)


class FluxNet(LoraHost, DenoiserNet):
    """net(z, cond, labels, w) of a FluxTransformer2DModel on [C, H, W] latents (see the module docstring)."""

    def __init__(self, transformer: dict, text_length: int, text_dim: int, pooled_dim: int, latent_size: list,
                 dropout: float | None = None, lora: dict | None = None):
        super().__init__()
        from diffusers import FluxTransformer2DModel

        config = resolve_flux_transformer_config(transformer)
        if config.get("joint_attention_dim") != text_dim or config.get("pooled_projection_dim") != pooled_dim:
            raise SpecError(f"the transformer takes text of width {config.get('joint_attention_dim')} and pooled "
                            f"embeddings of width {config.get('pooled_projection_dim')}; the text encoders give "
                            f"{text_dim} and {pooled_dim}")
        if dropout:
            raise SpecError("FluxTransformer2DModel has no dropout setting; leave model.dropout at 0")
        self.h, self.w = (int(v) for v in latent_size)
        if self.h % 2 or self.w % 2:
            raise SpecError(f"FLUX packs latents 2x2: their height and width must be even, got {self.h} x {self.w}")
        self.transformer = FluxTransformer2DModel(**config)
        self.register_buffer("null_text", torch.zeros(int(text_length), int(text_dim)))
        self.register_buffer("null_pooled", torch.zeros(int(pooled_dim)))
        self.register_buffer("img_ids", image_ids(self.h, self.w), persistent=False)
        self.w_dim: int | None = FLUX_GUIDANCE_DIM if config.get("guidance_embeds") else None
        self.lora: dict | None = None
        if lora is not None:
            self.add_lora(lora)

    def null_condition(self) -> dict[str, Tensor]:
        return {"encoder_hidden_states": self.null_text, "pooled_projections": self.null_pooled}

    def condition(self, logsnr: Tensor) -> Tensor:
        return flow_time(logsnr)

    @property
    def guidance_native(self) -> bool:
        return bool(self.transformer.config.guidance_embeds)

    def condition_on_w(self, dim: int, scale: float, class_gate: bool = False) -> None:
        """The guidance weight as FLUX's own guidance input: kept where the transformer has one (a guidance-
        distilled teacher), added otherwise (guidance_embeds = True, its embedder's output layer zero)."""
        if dim != FLUX_GUIDANCE_DIM or scale != FLUX_W_SCALE or class_gate:
            raise SpecError(f"a FLUX transformer takes w through its own guidance embedding ({FLUX_GUIDANCE_DIM} wide, "
                            f"scale {FLUX_W_SCALE:g}, no class gate; set guided.embed_dim = {FLUX_GUIDANCE_DIM}); got "
                            f"embed_dim {dim}, scale {scale:g}, class_gate {class_gate}")
        if not self.guidance_native:
            from diffusers import FluxTransformer2DModel

            state = self.transformer.state_dict()
            config = dict(self.transformer.config) | {"guidance_embeds": True}
            self.transformer = FluxTransformer2DModel.from_config(config)
            missing, unexpected = self.transformer.load_state_dict(state, strict=False)
            assert not unexpected and all(k.startswith("time_text_embed.guidance_embedder.") for k in missing)
            out = self.transformer.time_text_embed.guidance_embedder.linear_2
            nn.init.zeros_(out.weight)
            nn.init.zeros_(out.bias)
        self.w_dim = FLUX_GUIDANCE_DIM

    w_input_prefix = "transformer.time_text_embed.guidance_embedder."

    def lora_host(self) -> nn.Module:
        return self.transformer

    def merged_transformer_state(self) -> dict[str, Tensor]:
        """The transformer's weights with the adapter merged in, under the plain diffusers model's names."""
        return self.merged_host_state()

    def diffusers_modules(self) -> Iterable[nn.Module]:
        return self.transformer.modules()

    def forward(self, z: Tensor, cond: Tensor, labels: Mapping[str, Tensor] | None = None,
                w: Tensor | float | None = None) -> Tensor:
        b = z.shape[0]
        labels = text_pair(labels, self.null_condition(), b, "a FLUX transformer")
        text = labels["encoder_hidden_states"].to(z.dtype)
        guidance = 1.0 + guidance_input(w, z) if self.w_dim is not None else None
        out = self.transformer(hidden_states=pack(z), timestep=cond.expand(b) if cond.ndim == 0 else cond,
                               guidance=guidance, pooled_projections=labels["pooled_projections"].to(z.dtype),
                               encoder_hidden_states=text, txt_ids=text.new_zeros(text.shape[1], 3),
                               img_ids=self.img_ids.to(z.dtype), return_dict=False)[0]
        return unpack(out, self.h, self.w)
