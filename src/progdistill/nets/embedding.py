"""Sinusoidal embedding of the noise condition (as in DDPM / the paper's U-Net)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class SinusoidalEmbedding(nn.Module):
    """[sin(1000 c w_k), cos(1000 c w_k)] with w_k = 10000^(-k / (dim/2 - 1)), for c in [0, 1]."""

    def __init__(self, dim: int, scale: float = 1000.0):
        super().__init__()
        if dim % 2 or dim < 4:
            raise ValueError(f"embedding dim must be even and >= 4, got {dim}")
        half = dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / (half - 1))
        self.register_buffer("freqs", freqs, persistent=False)
        self.scale = scale

    def forward(self, cond: Tensor) -> Tensor:
        args = (self.scale * cond.float())[:, None] * self.freqs[None]
        return torch.cat([torch.sin(args), torch.cos(args)], dim=1)
