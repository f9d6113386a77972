"""Memory switches for big teachers (issue 32 item 3): gradient checkpointing trains to the same weights."""

from __future__ import annotations

import pytest
import torch

from progdistill.build import load_denoiser
from progdistill.config import ConfigError, load_config
from progdistill.training.rounds import distill
from progdistill.training.teacher import train_teacher

from conftest import write_fashion

TINY = ["train.batch_size=8", "distill.batch_size=8", "train.steps=3", "train.warmup=1", "train.checkpoint_every=3",
        "distill.start_steps=4", "distill.updates_per_round=2", "distill.final_updates_per_round=2",
        "distill.checkpoint_every=0", "distill.log_samples=0", "model.dropout=0.1", "data.workers=0"]


def _weights(stem):
    return torch.cat([p.detach().flatten() for p in load_denoiser(stem)[0].parameters()])


def test_gradient_checkpointing_trains_the_same_weights(tmp_path):
    """A U-Net teacher (with dropout: the recomputation must draw the same masks) and a round of distillation, with
    and without perf.gradient_checkpointing: equal to 1e-5; and the switch is on in the diffusers model."""
    root = write_fashion(tmp_path / "fashion")
    stems = {}
    for on in ("false", "true"):
        cfg = load_config("fashion_mnist", [f'data.root="{root}"', *TINY, f"perf.gradient_checkpointing={on}"])
        out = tmp_path / on
        teacher = train_teacher(cfg, out, progress=False)
        stems[on] = (teacher, distill(teacher, out, cfg, progress=False)[-1])
    assert not torch.equal(_weights(stems["false"][0]), _weights(stems["false"][1]))  # the round trained
    for plain, checkpointed in zip(stems["false"], stems["true"]):
        torch.testing.assert_close(_weights(checkpointed), _weights(plain), rtol=0, atol=1e-5)


def test_the_switch_reaches_the_diffusers_model_and_is_refused_for_the_mlp():
    from progdistill.nets.base import enable_gradient_checkpointing
    from progdistill.nets.spec import SpecError
    from progdistill.nets.mlp import MLPNet
    from progdistill.nets.unet import UNET_PRESETS, UNet

    net = UNet(UNET_PRESETS["small"], 28, 1, 1, num_classes=10)
    assert enable_gradient_checkpointing(net) == 1 and net.unet.is_gradient_checkpointing
    with pytest.raises(SpecError, match="no diffusers model"):
        enable_gradient_checkpointing(MLPNet())
    with pytest.raises(ConfigError, match="perf.gradient_checkpointing"):
        load_config("toy2d", ["perf.gradient_checkpointing=true"])
