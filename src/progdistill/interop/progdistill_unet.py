"""A diffusers model component shipped inside exported pipeline folders (it imports only torch and diffusers).

`BothUNet2DModel` wraps a UNet2DModel whose output is the two halves (x, eps) of the "both" parameterization
(x_hat = sigma^2 x + alpha (z - sigma eps)) and returns the equivalent v-prediction v = alpha_j eps - sigma_j x,
with alpha_j, sigma_j of each discrete timestep j stored as a buffer, so that a stock DDIMScheduler with
prediction_type="v_prediction" takes exactly the model's steps. `GuidedUNet2DModel` wraps the UNet2DModel of a
guided student (guided distillation) with its guidance-weight embedding. Load with trust_remote_code=True.
"""

from __future__ import annotations

import math

import torch
from diffusers import ModelMixin, UNet2DModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.unets.unet_2d import UNet2DOutput


class BothUNet2DModel(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(self, unet_config: dict, num_train_timesteps: int, sample_size: int, in_channels: int):
        super().__init__()
        self.unet = UNet2DModel.from_config(unet_config)
        # alpha_j, sigma_j per timestep; filled by the exporter and loaded with the weights.
        self.register_buffer("alpha_sigma", torch.zeros(num_train_timesteps, 2))

    def forward(self, sample: torch.Tensor, timestep, class_labels: torch.Tensor | None = None,
                return_dict: bool = True):
        out = self.unet(sample, timestep, class_labels=class_labels).sample
        x, eps = out.chunk(2, dim=1)
        t = torch.as_tensor(timestep, device=sample.device).long().reshape(-1)
        a, s = self.alpha_sigma[t].to(out.dtype).unbind(-1)
        shape = (-1,) + (1,) * (sample.ndim - 1)
        v = a.reshape(shape) * eps - s.reshape(shape) * x
        return UNet2DOutput(sample=v) if return_dict else (v,)


class _GuidanceEmbedding(torch.nn.Module):
    """MLP(sinusoidal(w)): the w embedding of a progdistill guided student (same layers and parameter names)."""

    def __init__(self, out_dim: int, dim: int, scale: float, class_dim: int = 0):
        super().__init__()
        half = dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / (half - 1))
        self.register_buffer("freqs", freqs, persistent=False)
        self.scale = scale
        self.mlp = torch.nn.Sequential(torch.nn.Linear(dim, out_dim), torch.nn.SiLU(), torch.nn.Linear(out_dim, out_dim))
        self.gate = None
        if class_dim:  # the class gate: gamma(w) scales the class embedding's offset from the null class's
            self.gate = torch.nn.Sequential(torch.nn.Linear(dim, class_dim), torch.nn.SiLU(),
                                            torch.nn.Linear(class_dim, class_dim))

    def features(self, w: torch.Tensor) -> torch.Tensor:
        args = (self.scale * w.float())[:, None] * self.freqs[None]
        return torch.cat([torch.sin(args), torch.cos(args)], dim=1)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.features(w))


class GuidedUNet2DModel(ModelMixin, ConfigMixin):
    """A guided progdistill student: a UNet2DModel that also takes the guidance weight w (`guidance`, paper
    convention, w = guidance_scale - 1), whose embedding is added to the U-Net's time embedding (where diffusers
    then adds the class embedding). `w_min`, `w_max`: the range it was distilled for; `num_classes`: the classes a
    caller may ask for (the class embedding has one row more, the null class, when the teacher had label dropout);
    `class_gate`: w also scales the class embedding's offset from the null class's (progdistill guided.class_gate)."""

    @register_to_config
    def __init__(self, unet_config: dict, embed_dim: int, embed_scale: float, w_min: float, w_max: float,
                 sample_size: int, in_channels: int, num_classes: int = 0, class_gate: bool = False):
        super().__init__()
        self.unet = UNet2DModel.from_config(unet_config)
        class_dim = self.unet.class_embedding.embedding_dim if class_gate else 0
        self.w_embed = _GuidanceEmbedding(self.unet.time_embedding.linear_2.out_features, embed_dim, embed_scale,
                                          class_dim)
        self._w = None
        self.unet.time_embedding.register_forward_hook(self._add_w)
        if class_gate:
            self.unet.class_embedding.register_forward_hook(self._gate_classes)

    def _add_w(self, module, args, emb):
        return emb + self.w_embed(self._w).to(emb.dtype)

    def _gate_classes(self, module, args, emb):  # emb + gamma(w) (emb - null), the null class the last row
        gamma = self.w_embed.gate(self.w_embed.features(self._w)).to(emb.dtype)
        return emb + gamma * (emb - module.weight[-1])

    def forward(self, sample: torch.Tensor, timestep, class_labels: torch.Tensor | None = None,
                guidance: float | torch.Tensor = 0.0, return_dict: bool = True):
        w = torch.as_tensor(guidance, dtype=torch.float32, device=sample.device)
        self._w = w.expand(sample.shape[0]) if w.ndim == 0 else w
        try:
            out = self.unet(sample, timestep, class_labels=class_labels).sample
        finally:
            self._w = None
        return UNet2DOutput(sample=out) if return_dict else (out,)
