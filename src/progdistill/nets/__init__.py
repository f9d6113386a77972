"""Networks behind the denoiser interface: net(z, cond, labels) -> output."""

from .embedding import SinusoidalEmbedding
from .mlp import MLPNet

__all__ = ["MLPNet", "SinusoidalEmbedding"]
