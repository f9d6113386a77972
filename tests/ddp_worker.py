"""Run by tests/test_parallel.py under `torch.distributed.run`: train a tiny 2-D teacher and one distillation round
with every process of the launch, logging which rank wrote which checkpoint; one launch runs every variant the test
asks for, one after the other, each in its own folder (a launch's start costs more than its runs)."""

import json
import os
import sys
from pathlib import Path

from progdistill.config import load_config
from progdistill.training import phase, players, rounds, teacher

OVERRIDES = ["model.hidden=32", "model.depth=2", "model.emb_dim=16", "data.size=2000", "train.batch_size=64",
             "train.steps=6", "train.warmup=2", "train.checkpoint_every=3", "distill.start_steps=2",
             "distill.batch_size=64", "data.workers=2", "distill.updates_per_round=4", "distill.final_updates_per_round=0", "distill.checkpoint_every=2", 'device="cpu"']


REAL_SAVE = phase.save_checkpoint  # every checkpoint of every phase is written by training/phase.py


def main(out: Path, extra: list[str]) -> None:
    rank = int(os.environ["RANK"])  # (accelerate's state is created by the run itself, with its device settings)

    def logged(stem, *args, **kwargs):
        with open(out / f"writes-rank{rank}.log", "a") as f:
            f.write(f"{Path(stem).name}\n")
        return REAL_SAVE(stem, *args, **kwargs)

    phase.save_checkpoint = logged
    players.save_checkpoint = logged  # a players phase's (dmd's) mid-phase checkpoints
    cfg = load_config("toy2d", OVERRIDES + extra)
    stem = teacher.train_teacher(cfg, out, progress=False)
    rounds.distill(stem, out, cfg, progress=False)


if __name__ == "__main__":
    root = Path(sys.argv[1])
    for name, extra in json.loads(sys.argv[2]).items():  # {variant folder: extra config overrides}
        if int(os.environ["RANK"]) == 0:
            (root / name).mkdir()
        main(root / name, extra)
