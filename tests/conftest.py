import pytest
import torch
from torch import nn


class SmoothNet(nn.Module):
    """A fixed, smooth, non-trivial function net(z, cond) for testing samplers and targets without training."""

    def __init__(self, channels: int = 2, factor: int = 1, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(torch.randn(channels, factor * channels, generator=gen, dtype=torch.float64) * 0.5)
        self.b = nn.Parameter(torch.randn(factor * channels, generator=gen, dtype=torch.float64) * 0.3)

    def forward(self, z, cond, labels=None):
        h = z.flatten(1).to(self.w.dtype) @ self.w + self.b * cond.to(self.w.dtype)[:, None]
        return torch.tanh(h).view(z.shape[0], -1)


@pytest.fixture
def smooth_net():
    return SmoothNet
