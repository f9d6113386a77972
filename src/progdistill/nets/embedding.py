"""Sinusoidal embeddings of the noise condition (as in DDPM / the paper's U-Net) and of the guidance weight."""

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


class GuidanceEmbedding(nn.Module):
    """The guidance weight's embedding (guided distillation, stage 1): MLP(sinusoidal(w)), [B] -> [B, out_dim], added
    to a network's noise-level embedding. Its output layer starts at zero, so a network given one answers exactly
    as before, whatever w, until it is trained.

    With `class_dim` > 0 it also has a class gate (guided.class_gate): gamma(w), [B] -> [B, class_dim], also zero
    at the start, which scales a class embedding's offset from the null class's, c + gamma(w) * (c - null), so that
    w can strengthen or weaken the class's effect the way guidance does (see `gate_classes`)."""

    def __init__(self, out_dim: int, dim: int = 64, scale: float = 1000.0, class_dim: int = 0):
        super().__init__()
        self.embed = SinusoidalEmbedding(dim, scale)
        self.mlp = nn.Sequential(nn.Linear(dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)
        self.gate = None
        if class_dim:
            self.gate = nn.Sequential(nn.Linear(dim, class_dim), nn.SiLU(), nn.Linear(class_dim, class_dim))
            nn.init.zeros_(self.gate[-1].weight)
            nn.init.zeros_(self.gate[-1].bias)

    def forward(self, w: Tensor) -> Tensor:
        return self.mlp(self.embed(w))

    def gate_classes(self, w: Tensor, class_emb: Tensor, null_emb: Tensor) -> Tensor:
        """class_emb + gamma(w) * (class_emb - null_emb): exactly class_emb while gamma is zero."""
        gamma = self.gate(self.embed(w)).to(class_emb.dtype)
        return class_emb + gamma * (class_emb - null_emb)


def guidance_input(w: Tensor | float | None, z: Tensor) -> Tensor:
    """w per example ([B] float32, from a number or [B]) for a w-conditioned network, which cannot run without it."""
    if w is None:
        raise ValueError("this network is conditioned on the guidance weight w (a guided student): pass w")
    w = torch.as_tensor(w, dtype=torch.float32, device=z.device)
    return w.expand(z.shape[0]) if w.ndim == 0 else w
