"""Networks behind the denoiser interface: net(z, cond, labels) -> output; `build_net` makes one from a ModelSpec.

The names below load on first use, so that `progdistill.nets.families` (read by the config checks) and
`progdistill.nets.presets` import without torch."""

from importlib import import_module

__all__ = ["MLPNet", "ModelSpec", "SinusoidalEmbedding", "SpecError", "build_net"]
_WHERE = {"MLPNet": ".mlp", "ModelSpec": ".spec", "SinusoidalEmbedding": ".embedding", "SpecError": ".spec",
          "build_net": ".spec"}


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(import_module(_WHERE[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
