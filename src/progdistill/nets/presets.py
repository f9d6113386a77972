"""Names of the networks and U-Net shapes a config may choose, without importing torch or diffusers."""

from __future__ import annotations

from dataclasses import dataclass

from .families import FAMILIES

NET_KINDS = tuple(FAMILIES)  # the network families (nets/families.py)


@dataclass(frozen=True)
class UNetSpec:
    """Shape of a U-Net: channels per level, res blocks per level, resolutions with attention."""

    channels: tuple[int, ...]
    layers_per_block: int
    attention_resolutions: tuple[int, ...]
    attention_head_dim: int | None = None  # None: one head per block (channels wide)
    norm_groups: int = 32


# The paper's U-Nets. The embedding width is 4 x the base channels in diffusers (1024 for CIFAR-10, 768 for
# ImageNet).
UNET_PRESETS: dict[str, UNetSpec] = {
    "cifar10": UNetSpec((256, 256, 256), 3, (16, 8)),
    "imagenet64": UNetSpec((192, 384, 576, 768), 3, (32, 16, 8), attention_head_dim=64),
    # Sized for CPU work on 28x28 data (28 -> 14 -> 7), attention at 7x7: ~0.76M parameters (class-conditional),
    # ~0.6 s per training step of 64 images and ~2.6 ms per image and network evaluation on 2 CPU cores.
    "small": UNetSpec((16, 32, 64), 1, (7,), norm_groups=8),
}
