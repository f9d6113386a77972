"""Data parallelism through accelerate: 2 CPU processes (gloo) with the same global batch as 1 process, and a
2-process checkpoint resumed by 1 process."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from progdistill.config import load_config
from progdistill.training.rounds import distill
from progdistill.training.teacher import train_teacher

sys.path.insert(0, str(Path(__file__).parent))
from ddp_worker import OVERRIDES  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


DMD = ["distill.method='dmd'", "distill.target_steps=1", "distill.total_updates=4", "distill.dmd_fake_updates=2",
       "distill.dmd_gan_weight=0.1"]


VARIANTS = {"global_batch_noise": [], "per_example_noise": ["perf.per_example_noise=true"], "dmd_players": DMD}


@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory):
    """Every variant on 2 gloo processes, in one launch (ddp_worker.py runs them one after the other)."""
    root = tmp_path_factory.mktemp("two")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
         "--master_port", str(_free_port()), str(Path(__file__).parent / "ddp_worker.py"), str(root),
         json.dumps(VARIANTS)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_two_processes_match_one_and_write_once(two_process_runs, tmp_path, variant):
    one, two, extra = tmp_path / "one", two_process_runs / variant, VARIANTS[variant]
    # Only rank 0 wrote, and it wrote every checkpoint once.
    assert not (two / "writes-rank1.log").exists()
    written = (two / "writes-rank0.log").read_text().split()
    assert written == ["teacher_step00000003", "teacher", "round01_step00000002", "student_0001steps"]
    # (dmd: three players, each with its own optimizer and no_sync over its micro-batches; the frozen ones unwrapped)

    cfg = load_config("toy2d", OVERRIDES + extra)
    distill(train_teacher(cfg, one, progress=False), one, cfg, progress=False)
    # Same global batch, same noise per example: equal up to float summation order (mean of two half-batch means
    # and gradients all-reduced by gloo instead of one mean), amplified a little by Adam over the steps.
    for name in ("teacher.safetensors", "students/student_0001steps.safetensors"):
        a, b = load_file(one / name), load_file(two / name)
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=f"{name}: {key}")

    # Resume across a different process count: the 2-process run's step-3 checkpoint, continued by 1 process.
    mixed = tmp_path / "mixed"
    shutil.copytree(two / "checkpoints", mixed / "checkpoints")
    train_teacher(None, mixed, progress=False, resume=True)
    a, b = load_file(one / "teacher.safetensors"), load_file(mixed / "teacher.safetensors")
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=f"resumed on 1 process: {key}")
