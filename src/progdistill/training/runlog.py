"""What a run reports while it works: scalars to RUN/log.jsonl (always) and to TensorBoard (RUN/tensorboard, when
the tensorboard package is installed), and sample grids per distillation round (PNG files, and TensorBoard images).

One JSON object per line: {"time", "phase", "step", ...scalars}; phase is "teacher" or "roundRR", and round
summaries are phase "round" with step = the round number. Only the main process writes.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from .. import runfolder


def _tensorboard_writer(folder: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(folder))


class RunLog:
    def __init__(self, run: str | Path, enabled: bool = True, tensorboard: bool = True):
        self.run = Path(run)
        self.enabled = enabled
        self.path = runfolder.log_path(self.run)
        self.tb = None
        if enabled:
            self.run.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                self.tb = _tensorboard_writer(runfolder.tensorboard_dir(self.run))

    def scalars(self, phase: str, step: int, values: dict[str, float], global_step: int | None = None) -> None:
        if not self.enabled:
            return
        row = {"time": round(time.time(), 3), "phase": phase, "step": step, **values}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for key, value in values.items():
                self.tb.add_scalar(f"{phase}/{key}", value, step if global_step is None else global_step)

    def images(self, tag: str, images: torch.Tensor, step: int, png: Path | None = None) -> None:
        """A grid of images in [-1, 1] ([N, C, H, W]) as a PNG file (when `png` is given) and a TensorBoard image."""
        if not self.enabled:
            return
        from torchvision.utils import make_grid, save_image

        grid = make_grid((images.float().clamp(-1, 1) + 1) / 2, nrow=min(8, len(images)), padding=1)
        if png is not None:
            png.parent.mkdir(parents=True, exist_ok=True)
            save_image(grid, png)
        if self.tb is not None:
            self.tb.add_image(tag, grid, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None


def read_log(run: str | Path) -> list[dict]:
    """The rows of RUN/log.jsonl (empty when there is none)."""
    path = runfolder.log_path(run)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
