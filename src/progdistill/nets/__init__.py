"""Networks behind the denoiser interface: net(z, cond, labels) -> output; `build_net` makes one from a ModelSpec."""

from .embedding import SinusoidalEmbedding
from .mlp import MLPNet
from .spec import ModelSpec, SpecError, build_net

__all__ = ["MLPNet", "ModelSpec", "SinusoidalEmbedding", "SpecError", "build_net"]
