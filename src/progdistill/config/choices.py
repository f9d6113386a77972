"""The names a config may choose from, kept here so that reading a config imports neither torch nor diffusers.

Each tuple lists the keys of a registry that lives beside its implementation (data, diffusion, nets) and whose
package imports torch; tests/test_config.py checks that the two agree.
"""

from __future__ import annotations

# data.toy2d.TOY_DISTRIBUTIONS and TOY_LABELS (2-D data with class labels), data.images.IMAGE_DATASETS
TOY_DISTRIBUTIONS = ("ring", "checkerboard", "moons", "swissroll", "ring_classes")
TOY_LABELLED = ("ring_classes",)
IMAGE_DATASETS = ("fashion-mnist", "cifar10", "folder")
# Captioned images for latent text-to-image models (data.captions), encoded by the model's own VAE and text encoder.
CAPTIONED = ("captions",)
LATENT_MODES = ("mean", "sample")
# Channels of the image data sets with a fixed format (folders: data.channels, RGB by default).
NATIVE_CHANNELS = {"fashion-mnist": 1, "cifar10": 3}

# the network families (nets/families.py, torch-free) and nets.presets.UNET_PRESETS
from ..nets.families import FAMILIES  # noqa: E402

NET_KINDS = tuple(FAMILIES)
UNET_PRESETS = ("cifar10", "imagenet64", "small")

# diffusion.parameterization.PARAMETERIZATIONS, diffusion.schedules.SCHEDULES, diffusion.weighting.WEIGHTINGS,
# diffusion.samplers.VARIANCES
PARAMETERIZATIONS = ("eps", "x", "v", "both", "flow")
SCHEDULES = ("cosine", "linear", "discrete", "flow")
WEIGHTINGS = ("snr", "snr_trunc", "snr_plus1", "constant", "velocity")
VARIANCES = ("small", "large", "interp")
# diffusion.weighting.FORBIDDEN: (parameterization, weighting) pairs known not to train, and why.
FORBIDDEN = {("eps", "snr_trunc"): "eps prediction with snr_trunc weighting diverges (paper section 3); "
             "use parameterization x, v or both, or another weighting"}

# diffusers' beta schedules that diffusion.schedule = "discrete" reads.
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
LR_DECAYS = ("constant", "linear", "cosine")
TEACHER_CLIPS = ("none", "noisy", "all")
# training.plan: the distillation methods (docs/methods.md) and consistency distillation's metrics
DISTILL_METHODS = ("pd", "cd", "tract", "dmd")
CD_METRICS = ("l2", "pseudo_huber")
DEVICES = ("auto", "cpu", "cuda")
MIXED_PRECISIONS = ("no", "fp16", "bf16")
