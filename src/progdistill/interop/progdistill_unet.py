"""A diffusers model component shipped inside exported pipeline folders (it imports only torch and diffusers).

`BothUNet2DModel` wraps a UNet2DModel whose output is the two halves (x, eps) of the "both" parameterization
(x_hat = sigma^2 x + alpha (z - sigma eps)) and returns the equivalent v-prediction v = alpha_j eps - sigma_j x,
with alpha_j, sigma_j of each discrete timestep j stored as a buffer, so that a stock DDIMScheduler with
prediction_type="v_prediction" takes exactly the model's steps. Load with trust_remote_code=True.
"""

from __future__ import annotations

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
