"""Write the frozen format-1 checkpoints under tests/data/frozen_v1/ and the samples they must keep producing.

These checkpoints pin what older records look like, so that later versions of progdistill keep loading them
(tests/test_checkpoint_format.py). They were made with the code of commit ef2564a (checkpoint format 1, before
records described their own network), by running, from a checkout of that commit:

    git worktree add /tmp/pd-ef2564a ef2564a
    PYTHONPATH=/tmp/pd-ef2564a/src python scripts/make_frozen_checkpoints.py tests/data/frozen_v1

Do not rerun it with newer code: the point of these files is that they were written by the old code. It needs
Fashion-MNIST (Debian's dataset-fashion-mnist package) for the image model and takes about a minute on a CPU.

What it writes (about 0.3 MB in all):
- mlp/teacher, mlp/students/student_0004steps: a 2-D MLP teacher (ring data) and one distillation round.
- unet/teacher: a tiny class-conditional U-Net (diffusers UNet2DModel set by model.diffusers_unet, 8/16
  channels, attention at 14x14, 4 norm groups) trained a few steps on 64 Fashion-MNIST images.
- expected.safetensors: for each, samples drawn right after writing, with the same sampler settings the test uses.
"""

import json
import subprocess
import sys
from pathlib import Path

import diffusers
import torch
from safetensors.torch import save_file

from progdistill.build import load_denoiser, schedule_of
from progdistill.config import load_config
from progdistill.sampling import generate
from progdistill.training.rounds import distill
from progdistill.training.teacher import train_teacher

TINY_UNET = {
    "sample_size": 28, "in_channels": 1, "out_channels": 1, "block_out_channels": [8, 16], "layers_per_block": 1,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D"], "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
    "norm_num_groups": 4, "attention_head_dim": 8, "num_class_embeds": 10,
}
# (checkpoint, sampling steps, labels) the expected samples are drawn with: seed 7, DDIM, the record's clip.
SAMPLES = {
    "mlp/teacher": (8, None),
    "mlp/students/student_0004steps": (4, None),
    "unet/teacher": (4, [0, 3, 7, 9]),
}


def main(out: Path) -> None:
    torch.manual_seed(0)
    mlp = load_config("toy2d", ["model.hidden=32", "model.depth=2", "model.emb_dim=16", "data.size=2000",
                                "train.steps=30", "train.batch_size=64", "train.warmup=5", "train.ema_decay=0.9",
                                "train.checkpoint_every=1000", "distill.start_steps=8", "distill.target_steps=4",
                                "distill.updates_per_round=10", "distill.batch_size=64", "distill.log_samples=0",
                                "distill.checkpoint_every=0", "device=cpu"])
    stem = train_teacher(mlp, out / "mlp", progress=False)
    distill(stem, out / "mlp", progress=False)
    unet = load_config("fashion_mnist", ["model.arch=diffusers", f"model.diffusers_unet={json.dumps(TINY_UNET)!r}",
                                         "diffusion.schedule=discrete", "diffusion.num_timesteps=64",
                                         "data.limit=64", "train.steps=4", "train.batch_size=16", "train.warmup=1",
                                         "train.ema_decay=0", "train.checkpoint_every=1000",
                                         "distill.start_steps=4", "device=cpu"])
    train_teacher(unet, out / "unet", progress=False)
    for path in list(out.rglob("*")):  # run logs and folders the test does not need
        if path.is_file() and path.suffix not in (".json", ".safetensors") or path.name == "config.json":
            path.unlink()
    expected = {}
    for name, (steps, labels) in SAMPLES.items():
        denoiser, record, cfg = load_denoiser(out / name)
        shape = tuple(record["data_shape"])
        labels = torch.tensor(labels) if labels else None
        num = 4
        x = generate(denoiser, schedule_of(cfg), steps, num, shape, clip=cfg.sample.clip, seed=7, labels=labels)
        expected[name] = x.contiguous()
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                            cwd=Path(load_denoiser.__code__.co_filename).parent).stdout.strip()
    save_file(expected, out / "expected.safetensors", metadata={
        "commit": commit, "torch": torch.__version__, "diffusers": diffusers.__version__,
        "python": sys.version.split()[0], "sampler": "ddim", "seed": "7", "num": "4"})
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"wrote {out} ({total / 1e6:.2f} MB) from commit {commit}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "tests/data/frozen_v1"))
