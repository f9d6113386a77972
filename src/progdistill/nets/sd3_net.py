"""An imported SD3-layout SD3Transformer2DModel (MMDiT; a latent flow-matching text-to-image model) behind the
project's net(z, cond, labels[, w]) interface.

`labels` is the mapping StableDiffusion3Pipeline passes: {"encoder_hidden_states": [B, L, D] (CLIP-L, CLIP-G and T5
hidden states joined on the sequence axis), "pooled_projections": [B, P] (the CLIPs' pooled outputs)}; None means
the empty caption, whose condition the network keeps as buffers (computed once at import, saved with the weights),
so classifier-free guidance needs no text encoder. `cond` is the transformer's own timestep input, 1000 times the
flow time t = sigma (what the pipeline passes: the scheduler's sigmas times num_train_timesteps).

SD3 guides with two branches and has no w input. A guided student gets one: a zero-initialised projection of a
sinusoidal embedding of w added to the transformer's conditioning vector (the output of `time_text_embed`, the sum
of the timestep and pooled-text embeddings), as `time_cond_proj_dim` does for U-Nets, so it starts as its teacher.
The stock pipeline cannot feed w, so an exported guided student is exported at one w: the added vector is then a
constant, which the pooled-text projection's last bias takes in exactly (`fold_w`), and the stock pipeline runs it
with guidance_scale = 1 (one call per step).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn

from ..diffusion.schedules import flow_time
from .args import SpecError, resolve_args
from .base import DenoiserNet
from .diffusers_parts import LoraHost, text_pair
from .embedding import SinusoidalEmbedding, guidance_input

SD3_TIMESTEP_SCALE = 1000.0  # the transformer's timestep is sigma * num_train_timesteps (1000)
SD3_W_SCALE = 1000.0  # the w embedding's argument is 1000 w, as diffusers' guidance_scale_embedding


def resolve_sd3_transformer_config(config: dict) -> dict:
    """An SD3Transformer2DModel config (private "_" keys dropped) completed with the installed diffusers' defaults."""
    from diffusers import SD3Transformer2DModel

    return resolve_args(SD3Transformer2DModel.__init__, {k: v for k, v in dict(config).items()
                                                         if not k.startswith("_")}, "diffusers' SD3Transformer2DModel")


class SD3Net(LoraHost, DenoiserNet):
    """net(z, cond, labels, w) of an SD3Transformer2DModel (see the module docstring)."""

    def __init__(self, transformer: dict, text_length: int, text_dim: int, pooled_dim: int,
                 dropout: float | None = None, lora: dict | None = None):
        super().__init__()
        from diffusers import SD3Transformer2DModel

        config = resolve_sd3_transformer_config(transformer)
        if config.get("joint_attention_dim") != text_dim or config.get("pooled_projection_dim") != pooled_dim:
            raise SpecError(f"the transformer takes text of width {config.get('joint_attention_dim')} and pooled "
                            f"embeddings of width {config.get('pooled_projection_dim')}; the text encoders give "
                            f"{text_dim} and {pooled_dim}")
        if dropout:
            raise SpecError("SD3Transformer2DModel has no dropout setting; leave model.dropout at 0")
        self.transformer = SD3Transformer2DModel(**config)
        self.register_buffer("null_text", torch.zeros(int(text_length), int(text_dim)))
        self.register_buffer("null_pooled", torch.zeros(int(pooled_dim)))
        self.w_dim: int | None = None
        self.w_proj: nn.Linear | None = None
        self.w_embed: SinusoidalEmbedding | None = None
        self.lora: dict | None = None
        self._w: Tensor | None = None
        self.transformer.time_text_embed.register_forward_hook(self._add_w)
        if lora is not None:
            self.add_lora(lora)

    # --- conditioning
    def null_condition(self) -> dict[str, Tensor]:
        return {"encoder_hidden_states": self.null_text, "pooled_projections": self.null_pooled}

    def condition(self, logsnr: Tensor) -> Tensor:
        return SD3_TIMESTEP_SCALE * flow_time(logsnr)

    def condition_on_w(self, dim: int, scale: float, class_gate: bool = False) -> None:
        """A zero-initialised projection of the w embedding onto the conditioning vector."""
        if scale != SD3_W_SCALE or class_gate:
            raise SpecError(f"an SD3 transformer takes w through a sinusoidal embedding of {SD3_W_SCALE:g} w (no class "
                            f"gate); got scale {scale:g}, class_gate {class_gate}")
        width = self.transformer.time_text_embed.timestep_embedder.linear_2.out_features
        self.w_embed = SinusoidalEmbedding(int(dim), SD3_W_SCALE)
        self.w_proj = nn.Linear(int(dim), width, bias=False)
        nn.init.zeros_(self.w_proj.weight)
        self.w_dim = int(dim)

    w_input_prefix = "w_proj."

    def w_vector(self, w: Tensor) -> Tensor:
        """What the w input adds to the conditioning vector at guidance weights w [B]."""
        return self.w_proj(self.w_embed(w).to(self.w_proj.weight.dtype))

    def _add_w(self, module, args, output):
        if self._w is None:
            return output
        return output + self.w_vector(self._w).to(output.dtype)

    @torch.no_grad()
    def fold_w(self, w: float) -> None:
        """Take the w input out at guidance weight `w`: its (constant) vector goes into the pooled-text projection's
        bias, so the plain transformer answers as this network at w."""
        if self.w_proj is None:
            raise SpecError("this network has no w input to fold")
        self.transformer.time_text_embed.text_embedder.linear_2.bias += self.w_vector(
            torch.tensor([float(w)], device=self.w_proj.weight.device))[0]
        self.w_proj = self.w_embed = None
        self.w_dim = None

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
        labels = text_pair(labels, self.null_condition(), b, "an SD3 transformer")
        self._w = guidance_input(w, z) if self.w_dim is not None else None
        try:
            return self.transformer(hidden_states=z, timestep=cond.expand(b) if cond.ndim == 0 else cond,
                                    encoder_hidden_states=labels["encoder_hidden_states"].to(z.dtype),
                                    pooled_projections=labels["pooled_projections"].to(z.dtype),
                                    return_dict=False)[0]
        finally:
            self._w = None

