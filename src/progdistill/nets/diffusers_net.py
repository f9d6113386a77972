"""An imported diffusers UNet2DModel (a discrete-time model) behind the project's net(z, cond, labels) interface.

The network is conditioned on its own timestep index, not on the project's noise level: `condition(logsnr)` maps
the log-SNR the samplers and objectives work in to the (fractional) timestep of the model's discrete schedule, and
the Denoiser passes that through as `cond`.
"""

from __future__ import annotations

import json

from diffusers import UNet2DModel
from torch import Tensor

from ..diffusion.schedules import DiscreteSchedule
from .unet import WConditioned, resolve_unet2d_config


class DiffusersUNet(WConditioned):
    def __init__(self, unet_config: dict | str, schedule: DiscreteSchedule, dropout: float | None = None):
        super().__init__()
        config = json.loads(unet_config) if isinstance(unet_config, str) else dict(unet_config)
        if dropout is not None:
            config["dropout"] = dropout
        self.unet = UNet2DModel(**resolve_unet2d_config(config))
        self.schedule = schedule
        self.num_classes = int(self.unet.config.num_class_embeds or 0)

    def condition(self, logsnr: Tensor) -> Tensor:
        return self.schedule.timestep(logsnr)

    def forward(self, z: Tensor, cond: Tensor, labels: Tensor | None = None, w: Tensor | None = None) -> Tensor:
        return self.run_unet(z, cond, labels, w)
