"""Data at scale: a generated folder of N 64x64 images through the folder cache and a 2-process training run.

For each N (default 20 000 and 200 000) it
  1. writes N 64x64 PNGs under --root (skipped when the folder already holds them),
  2. builds the folder cache from scratch (timed; decoding in a process pool),
  3. runs the `small` U-Net teacher for --steps steps with 2 processes (torch.distributed.run, gloo on the CPU) and
     reports every process's peak RSS (and the peak of its DataLoader workers) against the data's float32 size,
  4. times the data stream alone (images/s, data.workers workers, one process) against training (images/s of the
     same U-Net, one process, the batch of --batch images).

    nice -n 10 python benchmarks/data_scale.py --sizes 20000 200000 --root /tmp/progdistill-data-scale

Generated data goes under --root (default /tmp/...), never into the repository.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SIZE = 64


def _write_chunk(args) -> None:
    root, start, stop = args
    from PIL import Image

    rng = np.random.default_rng(start)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    for i in range(start, stop):
        # Smooth colour fields (compress like photos, unlike noise) with a random stripe: every image differs.
        a, b, c = rng.random(3) * 6
        img = np.stack([np.sin(a * xx + b * yy + c), np.cos(b * xx - c * yy + a), np.sin(c * (xx + yy) + b)], -1)
        img = ((img + 1) * 127.5).astype(np.uint8)
        row = rng.integers(0, SIZE - 4)
        img[row : row + 4] = rng.integers(0, 256, 3, dtype=np.uint8)
        folder = Path(root) / f"{i // 10_000:03d}"  # 10 000 files per sub-folder
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"{i:07d}.png", compress_level=1)


def generate(root: Path, n: int, procs: int) -> float:
    """Write n images under root (flat numbering in sub-folders of 10 000); returns seconds (0 if present)."""
    done = root / ".complete"
    if done.is_file() and done.read_text() == str(n):
        return 0.0
    shutil.rmtree(root, ignore_errors=True)
    start = time.perf_counter()
    step = 2000
    with multiprocessing.get_context("fork").Pool(procs) as pool:
        list(pool.imap_unordered(_write_chunk, [(str(root), i, min(i + step, n)) for i in range(0, n, step)]))
    done.write_text(str(n))
    return time.perf_counter() - start


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def overrides(root: Path, args) -> list[str]:
    # Every sub-folder is a "class": make the model unconditional, as for an unlabelled folder.
    return ['data.name="folder"', f'data.root="{root}"', f"data.image_size={SIZE}", f"data.workers={args.workers}",
            "data.conditional=false", 'model.arch="unet"', 'model.unet="small"', 'device="cpu"',
            f"train.steps={args.steps}", f"train.batch_size={args.batch}", "train.warmup=0",
            f"train.checkpoint_every={max(args.steps, 1)}"]


def train_worker(root: Path, out: Path, args) -> None:
    """Under torch.distributed.run: train, then report this process's peak RSS and its workers' peak."""
    from progdistill.config import load_config
    from progdistill.training.teacher import train_teacher

    train_teacher(load_config(None, overrides(root, args)), out, progress=False)
    rank = int(os.environ.get("RANK", 0))
    (out / f"memory-rank{rank}.json").write_text(json.dumps({
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "workers_peak_rss": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024}))


def time_stream(data, args) -> float:
    """Images/s of the data stream alone: uint8 rows through the DataLoader, scaled to float."""
    from progdistill.data import make_batches

    stream = make_batches(data, args.batch, seed=0, workers=args.workers)
    next(stream)  # workers started
    count = max(args.stream_batches, 1)
    start = time.perf_counter()
    for _ in range(count):
        x, _ = next(stream)
    elapsed = time.perf_counter() - start
    stream.close()
    return count * args.batch / elapsed


def time_training(data, args) -> float:
    """Images/s of teacher training steps of the small U-Net on this data (one process; first step excluded)."""
    import torch

    from progdistill.build import build_denoiser, make_accelerator, schedule_of
    from progdistill.config import load_config
    from progdistill.data import make_batches
    from progdistill.training.loop import OptimSettings, fit
    from progdistill.training.objectives import TeacherObjective

    cfg = load_config(None, overrides(Path(args.root), args))
    acc = make_accelerator(cfg)
    torch.manual_seed(0)
    den = build_denoiser(cfg, data.example_shape, 0)
    times = []
    steps = max(args.steps, 2)
    fit(den, make_batches(data, args.batch, 0, workers=args.workers), TeacherObjective(schedule_of(cfg)),
        "snr_plus1", OptimSettings(lr=1e-4, total_steps=steps), accelerator=acc, seed=0, progress=False,
        on_step=lambda step, loss, snap: times.append(time.perf_counter()))
    return (len(times) - 1) * args.batch / (times[-1] - times[0])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[20_000, 200_000])
    p.add_argument("--root", type=Path, default=Path("/tmp/progdistill-data-scale"))
    p.add_argument("--steps", type=int, default=3, help="training steps of the 2-process run")
    p.add_argument("--batch", type=int, default=16, help="global batch")
    p.add_argument("--workers", type=int, default=2, help="data.workers")
    p.add_argument("--stream-batches", type=int, default=200)
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--train-worker", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.train_worker:
        train_worker(Path(args.train_worker[0]), Path(args.train_worker[1]), args)
        return
    from progdistill.data.cache import default_workers
    from progdistill.data.images import load_image_folder

    args.root.mkdir(parents=True, exist_ok=True)
    os.environ["PROGDISTILL_CACHE"] = str(args.root / "cache")
    results = []
    for n in args.sizes:
        folder = args.root / f"images{n}"
        gen_s = generate(folder, n, default_workers())
        shutil.rmtree(args.root / "cache", ignore_errors=True)
        start = time.perf_counter()
        data = load_image_folder(folder, SIZE, progress=True)
        build_s = time.perf_counter() - start
        out = args.root / f"run{n}"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
             "--master_port", str(_free_port()), __file__, "--train-worker", str(folder), str(out),
             "--steps", str(args.steps), "--batch", str(args.batch), "--workers", str(args.workers)],
            env=env, capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"2-process training failed:\n{proc.stderr[-3000:]}")
        run_s = time.perf_counter() - t0
        mem = [json.loads((out / f"memory-rank{r}.json").read_text()) for r in range(2)]
        row = {
            "images": n, "generate_s": round(gen_s, 1), "cache_build_s": round(build_s, 1),
            "cache_build_images_per_s": round(n / build_s), "cache_bytes": n * 3 * SIZE * SIZE,
            "float32_bytes": data.nbytes_float32, "two_process_run_s": round(run_s, 1),
            "peak_rss_per_process": [m["peak_rss"] for m in mem],
            "workers_peak_rss": [m["workers_peak_rss"] for m in mem],
            "stream_images_per_s": round(time_stream(data, args)),
            "train_images_per_s": round(time_training(data, args), 1),
        }
        row["stream_over_train"] = round(row["stream_images_per_s"] / row["train_images_per_s"], 1)
        results.append(row)
        gib = 2**30
        peaks = ", ".join(f"{m['peak_rss'] / gib:.2f}" for m in mem)
        wpeaks = ", ".join(f"{m['workers_peak_rss'] / gib:.2f}" for m in mem)
        print(f"N={n}: generated in {gen_s:.0f} s, cache built in {build_s:.1f} s ({row['cache_build_images_per_s']}"
              f" img/s); float32 data {data.nbytes_float32 / gib:.2f} GiB; peak RSS per process "
              f"{peaks} GiB (workers {wpeaks} GiB); stream "
              f"{row['stream_images_per_s']} img/s vs training {row['train_images_per_s']} img/s "
              f"({row['stream_over_train']}x)", flush=True)
    if len(results) > 1:
        a, b = results[0], results[-1]
        growth = max(b["peak_rss_per_process"]) / max(a["peak_rss_per_process"]) - 1
        print(f"peak RSS per process, {a['images']} -> {b['images']} images: {100 * growth:+.1f}% (goal < 10%)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
