"""The paper's U-Net (improved-DDPM style) through diffusers' UNet2DModel, behind net(z, cond, labels).

GroupNorm + SiLU, scale/shift noise conditioning, residual up/down sampling, zero-initialised output convolution
(the paper's section 6). The noise condition c in [0, 1] is passed as the timestep 1000 c, which diffusers embeds
sinusoidally.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from diffusers import UNet2DModel
from torch import Tensor, nn

from .args import resolve_args
from .base import DenoiserNet
from .embedding import GuidanceEmbedding, guidance_input
from .presets import UNET_PRESETS, UNetSpec


def unet_config(spec: UNetSpec, image_size: int, in_channels: int, out_channels: int, dropout: float = 0.0,
                num_classes: int = 0) -> dict:
    """The full diffusers UNet2DModel config of U-Net shape `spec` for square images of `image_size`: every argument,
    diffusers' defaults included, so the network can be rebuilt from it alone (checkpoint records store it)."""
    down = []
    res = image_size
    for _ in spec.channels:
        down.append("AttnDownBlock2D" if res in spec.attention_resolutions else "DownBlock2D")
        res = res // 2 if len(down) < len(spec.channels) else res
    up = [b.replace("Down", "Up") for b in reversed(down)]
    return resolve_unet2d_config(dict(
        sample_size=image_size, in_channels=in_channels, out_channels=out_channels,
        block_out_channels=spec.channels, layers_per_block=spec.layers_per_block,
        down_block_types=tuple(down), up_block_types=tuple(up),
        downsample_type="resnet", upsample_type="resnet", resnet_time_scale_shift="scale_shift",
        attention_head_dim=spec.attention_head_dim or spec.channels[-1], norm_num_groups=spec.norm_groups,
        dropout=dropout, flip_sin_to_cos=False, freq_shift=1,
        num_class_embeds=num_classes if num_classes > 0 else None,
    ))


def resolve_unet2d_config(config: dict) -> dict:
    """A UNet2DModel config (diffusers' private "_" keys dropped) completed with the installed diffusers' defaults."""
    return resolve_args(UNet2DModel.__init__, {k: v for k, v in dict(config).items() if not k.startswith("_")},
                        "diffusers' UNet2DModel")


class WConditioned(DenoiserNet):
    """A UNet2DModel (`self.unet`) with the guidance weight w as an optional extra input: its embedding is added to
    the output of `unet.time_embedding` by a forward hook (where diffusers then adds the class embedding), so the
    UNet2DModel's own parameters and state-dict keys stay those of the unguided network."""

    unet: UNet2DModel

    def __init__(self):
        super().__init__()
        self.w_embed: GuidanceEmbedding | None = None
        self._w: Tensor | None = None  # this call's w, read by the hook

    def condition_on_w(self, dim: int, scale: float, class_gate: bool = False) -> None:
        """Add w as an input (nets.spec: a w-conditioned network); its embedding starts at zero. class_gate: w also
        scales the class embedding's offset from the null class's (GuidanceEmbedding.gate_classes), by a forward
        hook on diffusers' `class_embedding`; the null class is its last row (build_net checks the spec has one)."""
        class_dim = self.unet.class_embedding.embedding_dim if class_gate else 0
        self.w_embed = GuidanceEmbedding(self.unet.time_embedding.linear_2.out_features, dim, scale, class_dim)
        self.unet.time_embedding.register_forward_hook(self._add_w)
        if class_gate:
            self.unet.class_embedding.register_forward_hook(self._gate_classes)

    def diffusers_modules(self) -> Iterable[nn.Module]:
        return self.unet.modules()

    def _add_w(self, module: nn.Module, args, emb: Tensor) -> Tensor:
        return emb + self.w_embed(self._w).to(emb.dtype)

    def _gate_classes(self, module: nn.Embedding, args, emb: Tensor) -> Tensor:
        return self.w_embed.gate_classes(self._w, emb, module.weight[-1])

    def run_unet(self, z: Tensor, timestep: Tensor, labels: Tensor | None, w: Tensor | float | None) -> Tensor:
        if self.num_classes and labels is None:
            raise ValueError("this U-Net is class-conditional: pass labels")
        if self.w_embed is not None:
            self._w = guidance_input(w, z)
        try:
            return self.unet(z, timestep, class_labels=labels if self.num_classes else None).sample
        finally:
            self._w = None


class UNet(WConditioned):
    """net(z, cond, labels) -> out_channels maps: a UNet2DModel built from its full `config` (see `unet_config`),
    or, for convenience, from a U-Net shape and the image size and channels."""

    def __init__(self, config: dict | UNetSpec, image_size: int | None = None, in_channels: int | None = None,
                 out_channels: int | None = None, dropout: float = 0.0, num_classes: int = 0):
        super().__init__()
        if isinstance(config, UNetSpec):
            config = unet_config(config, image_size, in_channels, out_channels, dropout, num_classes)
        self.unet = UNet2DModel(**resolve_unet2d_config(config))
        nn.init.zeros_(self.unet.conv_out.weight)
        nn.init.zeros_(self.unet.conv_out.bias)
        self.num_classes = int(self.unet.config.num_class_embeds or 0)

    def forward(self, z: Tensor, cond: Tensor, labels: Tensor | None = None, w: Tensor | None = None) -> Tensor:
        return self.run_unet(z, 1000.0 * cond, labels, w)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _smoke() -> None:  # pragma: no cover - manual check
    net = UNet(UNET_PRESETS["small"], 28, 1, 1)
    print(count_parameters(net), net(torch.randn(2, 1, 28, 28), torch.rand(2)).shape)


if __name__ == "__main__":  # pragma: no cover
    _smoke()
