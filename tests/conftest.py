import gzip
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from progdistill.data.images import FASHION_MNIST_FILES

# Under pytest-xdist every worker would otherwise start as many intra-op threads as there are cores: with 2 workers
# on 2 cores that oversubscribes the machine, and small ops then wait on spinning threads (measured: a 20-update
# 2-D distillation ran 5x slower inside the parallel suite than alone). Give each worker its share of the cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    _workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    # torch's default already counts only the cores this process may use (os.cpu_count() may report the host's).
    torch.set_num_threads(max(1, torch.get_num_threads() // _workers))


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


def _idx(arr: np.ndarray) -> bytes:
    header = (0x0800 | arr.ndim).to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def write_fashion(folder: Path, n_train: int = 96, n_test: int = 20) -> Path:
    """Tiny Fashion-MNIST look-alike: a bright rectangle whose position depends on the label, plus noise."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        labels = np.arange(n) % 10
        x = rng.integers(0, 40, size=(n, 28, 28))
        for i, c in enumerate(labels):
            x[i, 4 + c : 14 + c, 6:22] += 200
        for name, arr in zip(FASHION_MNIST_FILES[split], (np.clip(x, 0, 255), labels)):
            (folder / f"{name}.gz").write_bytes(gzip.compress(_idx(arr)))
    return folder


# Longest files first. The suite runs as `pytest -n 2 --dist loadfile`: each worker takes whole files, the next one
# whenever it is nearly out of work, so the run ends when the last file handed out ends. xdist's default order
# (files with most tests first) handed the heavy, few-test files out last and left one worker idle for more than a
# minute (measured 2026-12-07: 391 s of tests on one worker, 315 s on the other). Handing them out longest first
# (the greedy "longest processing time" order) lets the many short files fill the gap at the end. Seconds are each
# file's setup+call time from `pytest --durations=0` on this machine; files not listed count as short and keep their
# order after these. The option `--no-loadscope-reorder` (pyproject addopts) makes xdist keep this order.
_FILE_SECONDS = {
    "test_gpu_check.py": 128,
    "test_dmd.py": 89,
    "test_guided.py": 81,
    "test_resume.py": 81,
    "test_images.py": 76,
    "test_diffusers_interop.py": 73,
    "test_methods.py": 71,
    "test_end_to_end.py": 51,
    "test_latent.py": 49,
    "test_api_docs.py": 43,
    "test_sdxl.py": 37,
    "test_sd3.py": 33,
    "test_data_stream.py": 29,
    "test_parallel.py": 24,
    "test_runlog.py": 19,
    "test_guided_eval_export.py": 19,
}


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: -_FILE_SECONDS.get(item.path.name, 0))  # stable: in-file order is kept
