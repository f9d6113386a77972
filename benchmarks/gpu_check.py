"""The prepared GPU check: everything progdistill wants measured on an accelerator, in one command of a few minutes.

    python benchmarks/gpu_check.py --out runs/gpu                 # on a CUDA machine (about 6 minutes on an H100/H200)
    python benchmarks/gpu_check.py --out /tmp/gpu --dry-run       # on the CPU, every size shrunk (under a minute)
    benchmarks/gpu_check.sh runs/gpu                              # the same, installing carried wheels first

Sections, in this order (each one is timed, recorded as ok / failed / skipped in OUT/gpu_check.json, which is
rewritten after every section, so a run that is cut off keeps what it measured):

1. env: card, torch, CUDA, the card's dense bf16 peak used for MFU.
2. compile (first, so that it is measured whatever time is left after it): ours eager against ours compiled
   (perf.compile) side by side on the same network, batch and precision: teacher step, distillation step, DDIM
   sampling, and the first (compiling) step's time (`throughput.compare_compile`; skipped in the dry run).
3. throughput: the `cifar10` preset's U-Net (58.9M parameters) in bf16, batch 128: our fast path (channels_last,
   fused Adam, SDPA, TF32; no torch.compile) against the plain diffusers-example loop on the same network, batch and
   precision (teacher training step), our distillation step, DDIM sampling ours vs the DDIMPipeline loop, and the
   model FLOPs utilisation of the training step (FLOPs counted as `throughput.py` counts them).
4. latency: sampling latency and throughput of 1-, 4- and 8-step students against the teacher's 256-step DDIM at
   batch 1 and 256 (the same network: a student costs what its teacher costs per step), bf16 autocast.
5. agreement: the bf16 fast path against float32 (TF32 off) for a few teacher-training and distillation steps from
   the same weights, data and noise: per-step loss differences against a stated tolerance.
6. e2e: the command line on the GPU on CIFAR-shaped data the script writes (python batches): `train`, `distill`
   (two rounds, 4 -> 1 steps), `evaluate`, `export-diffusers` and a call of the exported pipeline; wall time of each.
7. profile: only when a goal is missed (fast path < 1.3x the plain loop, MFU < 35%): torch.profiler over a few
   training steps, the operator table kept as OUT/profile_train.txt with the time by operator kind.

Goals (issue 14): fast path >= 1.3x the plain loop (training step); MFU >= 35% of the card's bf16 peak; the 4-step
student >= 50x faster than the 256-step teacher at batch 256.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import pickle
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _throughput_module():
    spec = importlib.util.spec_from_file_location("pd_throughput", HERE / "throughput.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Sizes of the real run and of the CPU dry run.
FULL = dict(unet="cifar10", batch=128, steps=30, warmup=5, repeats=3, nfe=8, latency_steps=(1, 4, 8, 256),
            latency_batches=(1, 256), latency_repeats=3, agree_steps=40, agree_batch=64, e2e_images=1000,
            e2e_train_steps=300, e2e_updates=100, e2e_batch=128, e2e_num=64, profile_steps=4)
DRY = dict(unet="small", batch=4, steps=2, warmup=1, repeats=1, nfe=2, latency_steps=(1, 4), latency_batches=(1, 2),
           latency_repeats=1, agree_steps=3, agree_batch=4, e2e_images=16, e2e_train_steps=3, e2e_updates=2,
           e2e_batch=4, e2e_num=4, profile_steps=1)
# bf16 fast path vs float32 loss curves from the same weights, data and noise. The trajectories separate over the
# steps (the losses are spiky: snr_trunc weighting), so per-step agreement is asked of the first steps only (teacher:
# rounding alone), and the level of the last quarter's median loss for both objectives.
AGREE_TOL = {"teacher_first10_max_rel": 0.01, "last_quarter_median_rel": 0.05}


class Check:
    """Runs sections against a time budget and writes the results after each one."""

    def __init__(self, out: Path, budget_s: float):
        self.out = out
        self.start = time.perf_counter()
        self.deadline = self.start + budget_s
        self.results: dict = {"sections": {}}

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def save(self) -> None:
        self.results["elapsed_s"] = round(time.perf_counter() - self.start, 1)
        path = self.out / "gpu_check.json"
        path.write_text(json.dumps(self.results, indent=2, default=str))

    def run(self, name: str, fn, min_left_s: float = 0.0) -> dict | None:
        if self.left() < min_left_s:
            print(f"[gpu_check] {name}: skipped ({self.left():.0f} s left, needs {min_left_s:.0f})", flush=True)
            self.results["sections"][name] = {"status": "skipped", "reason": f"{self.left():.0f} s of budget left"}
            self.save()
            return None
        print(f"[gpu_check] {name}: start ({self.left():.0f} s of budget left)", flush=True)
        t0 = time.perf_counter()
        try:
            value = fn()
            entry = {"status": "ok", **(value or {})}
        except Exception as e:  # a failed piece is recorded; the rest still runs
            entry = {"status": "failed", "error": f"{type(e).__name__}: {e}",
                     "traceback": traceback.format_exc()[-3000:]}
            print(f"[gpu_check] {name}: FAILED {type(e).__name__}: {e}", flush=True)
        entry["seconds"] = round(time.perf_counter() - t0, 1)
        self.results["sections"][name] = entry
        self.save()
        print(f"[gpu_check] {name}: {entry['status']} in {entry['seconds']} s", flush=True)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return entry if entry["status"] == "ok" else None


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


CHANNELS_LAST = {"on": False}  # --channels-last: off by default (GroupNorm U-Nets pay a copy per norm layer for it)


def _config(tp, size: dict, device: str, precision: str, fast: bool):
    over = [f'device="{device}"', f'mixed_precision="{precision}"', f'model.unet="{size["unet"]}"']
    if fast:
        over += [f"perf.channels_last={str(CHANNELS_LAST['on']).lower()}", "perf.fused_adam=true"]
    else:
        over += ["perf.tf32=false"]
    return tp.load_config("cifar10", over)


def section_env(device: str) -> dict:
    tp = _throughput_module()
    info = {"python": platform.python_version(), "torch": torch.__version__, "device": device,
            "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(card=torch.cuda.get_device_name(), cuda=torch.version.cuda, memory_gib=round(props.total_memory
                    / 2**30, 1), multiprocessors=props.multi_processor_count,
                    peak_bf16=next((v for k, v in tp.PEAK_BF16.items() if k in torch.cuda.get_device_name()), None))
    try:
        import diffusers

        info["diffusers"] = diffusers.__version__
    except Exception as e:  # recorded, the sections that need it will fail on their own
        info["diffusers"] = f"missing: {e}"
    return info


def section_throughput(size: dict, device: str, precision: str) -> dict:
    tp = _throughput_module()
    cfg = _config(tp, size, device, precision, fast=True)
    shape, batch = (3, 32, 32), size["batch"]
    data = tp.synthetic(shape, max(4 * batch, 64), 0)
    torch.manual_seed(0)
    teacher = tp.build_denoiser(cfg, shape, 0)
    plain_unet = copy.deepcopy(teacher.net.unet)
    res = {"preset": "cifar10", "unet": size["unet"], "precision": precision, "batch": batch, "steps": size["steps"],
           "warmup": size["warmup"], "repeats": size["repeats"], "compile": False,
           "channels_last": CHANNELS_LAST["on"],
           "parameters": sum(p.numel() for p in teacher.parameters())}
    runs = {"teacher_ours": [], "teacher_plain": [], "distill_ours": []}
    frozen = copy.deepcopy(teacher).to(device).eval().requires_grad_(False)
    for _ in range(size["repeats"]):
        runs["teacher_ours"].append(tp.time_fit(cfg, copy.deepcopy(teacher), tp.TeacherObjective(tp.schedule_of(cfg)),
                                                data, batch, size["steps"], size["warmup"], cfg.diffusion.weighting))
        runs["teacher_plain"].append(tp.time_plain_loop(cfg, copy.deepcopy(plain_unet), data, batch, size["steps"],
                                                        size["warmup"]))
        runs["distill_ours"].append(tp.time_fit(cfg, copy.deepcopy(teacher),
                                                tp.DistillObjective(frozen, tp.schedule_of(cfg), 4), data, batch,
                                                size["steps"], size["warmup"], cfg.distill.weighting))
    for key, values in runs.items():
        if values:
            res[key] = sorted(values)[len(values) // 2]
            res[key + "_all"] = values
    fwd, full = tp.step_flops(teacher, shape, 0, 2, device)
    res["flops_per_image_forward"], res["flops_per_image_train"] = fwd / 2, full / 2
    with torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16"):
        res["sample_ours"], res["sample_plain"] = tp.time_sampling(
            teacher, copy.deepcopy(teacher.net.unet), cfg, shape, 0, batch, size["nfe"], device, size["repeats"])
    res["teacher_ratio"] = res["teacher_ours"] / res["teacher_plain"]
    res["sample_ratio"] = res["sample_ours"] / res["sample_plain"]
    res["distill_step_cost"] = res["teacher_ours"] / res["distill_ours"]
    if device == "cuda":
        peak = next((v for k, v in tp.PEAK_BF16.items() if k in torch.cuda.get_device_name()), None)
        if peak:
            res["peak_bf16"] = peak
            res["mfu_teacher_ours"] = res["teacher_ours"] * res["flops_per_image_train"] / peak
            if "teacher_plain" in res:
                res["mfu_teacher_plain"] = res["teacher_plain"] * res["flops_per_image_train"] / peak
    return res


def section_compile(size: dict, device: str, precision: str) -> dict:
    """Ours eager against ours compiled (throughput.compare_compile) on the cifar10 U-Net, side by side: teacher
    step, distillation step and DDIM sampling, and the first (compiling) step's time."""
    from types import SimpleNamespace

    tp = _throughput_module()
    over = [f'device="{device}"', f'mixed_precision="{precision}"', f'model.unet="{size["unet"]}"',
            "perf.fused_adam=true"]
    shape, batch = (3, 32, 32), size["batch"]
    data = tp.synthetic(shape, max(4 * batch, 64), 0)
    timing = SimpleNamespace(repeats=size["repeats"], steps=size["steps"], warmup=size["warmup"], nfe=size["nfe"],
                             device=device)
    return tp.compare_compile("cifar10", over, shape, 0, data, batch, timing)


@torch.no_grad()
def section_latency(size: dict, device: str, precision: str) -> dict:
    tp = _throughput_module()
    from progdistill.sampling import generate

    cfg = _config(tp, size, device, precision, fast=True)
    shape = (3, 32, 32)
    torch.manual_seed(0)
    den = tp.build_denoiser(cfg, shape, 0).to(device).eval()
    if CHANNELS_LAST["on"]:
        den.to(memory_format=torch.channels_last)
    sched = tp.schedule_of(cfg)
    rows = []
    for batch in size["latency_batches"]:
        for steps in size["latency_steps"]:
            def once():
                _sync(device)
                t0 = time.perf_counter()
                with torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16"):
                    generate(den, sched, steps, batch, shape, batch_size=batch, device=device, seed=0)
                _sync(device)
                return time.perf_counter() - t0

            once()  # warm-up
            times = sorted(once() for _ in range(size["latency_repeats"]))
            t = times[len(times) // 2]
            rows.append({"batch": batch, "steps": steps, "seconds": t, "images_per_s": batch / t,
                         "ms_per_step": 1000 * t / steps})
            print(f"[gpu_check]   latency batch {batch:4d} steps {steps:4d}: {1000 * t:9.2f} ms", flush=True)
    teacher_steps = max(size["latency_steps"])
    speedups = {}
    for batch in size["latency_batches"]:
        base = next(r["seconds"] for r in rows if r["batch"] == batch and r["steps"] == teacher_steps)
        for r in rows:
            if r["batch"] == batch and r["steps"] < teacher_steps:
                speedups[f"batch{batch}_steps{r['steps']}"] = base / r["seconds"]
    return {"teacher_steps": teacher_steps, "rows": rows, "speedup_vs_teacher": speedups}


def _loss_curve(tp, cfg, teacher, objective_of, data, batch, steps) -> list[float]:
    from progdistill.training.loop import OptimSettings, fit, make_ema

    losses = []
    acc = tp.make_accelerator(cfg)
    settings = OptimSettings(lr=cfg.train.optim.lr, total_steps=steps, warmup=0, decay="constant", grad_clip=1.0)
    den = copy.deepcopy(teacher).to(acc.device)
    fit(den, data.batches(batch, 0), objective_of(cfg), "snr_trunc", settings, accelerator=acc, seed=0,
        ema=make_ema(den, 0.9999), on_step=lambda step, loss, snap: losses.append(float(loss)), progress=False,
        perf=cfg.perf)
    return losses


def section_agreement(size: dict, device: str) -> dict:
    tp = _throughput_module()
    shape, batch, steps = (3, 32, 32), size["agree_batch"], size["agree_steps"]
    data = tp.synthetic(shape, max(4 * batch, 64), 0, seed=1)
    cfg32 = _config(tp, size, device, "no", fast=False)
    cfg16 = _config(tp, size, device, "bf16", fast=True)
    torch.manual_seed(0)
    teacher = tp.build_denoiser(cfg32, shape, 0)
    # Start from weights with a non-zero output layer (the zero-initialised output makes the first steps trivial).
    with torch.no_grad():
        for p in teacher.parameters():
            if p.abs().sum() == 0 and p.ndim > 1:
                p.normal_(0, 1e-3)
    frozen = copy.deepcopy(teacher).to(device).eval().requires_grad_(False)
    res = {"tolerance": AGREE_TOL, "steps": steps, "batch": batch}
    objectives = {"teacher": lambda cfg: tp.TeacherObjective(tp.schedule_of(cfg)),
                  "distill": lambda cfg: tp.DistillObjective(frozen, tp.schedule_of(cfg), 4)}
    for name, objective_of in objectives.items():
        l32 = _loss_curve(tp, cfg32, teacher, objective_of, data, batch, steps)
        l16 = _loss_curve(tp, cfg16, teacher, objective_of, data, batch, steps)
        res[name] = {"loss_fp32": l32, "loss_bf16": l16, **agreement_figures(l32, l16, name)}
    tp.make_accelerator(cfg32)  # leave accelerate's global state at float32 for later sections
    return res


def agreement_figures(l32: list[float], l16: list[float], name: str) -> dict:
    """Per-step relative loss differences of the bf16 curve from the float32 one, and the verdict (AGREE_TOL)."""
    f, b = np.asarray(l32, dtype=float), np.asarray(l16, dtype=float)
    rel = np.abs(f - b) / np.maximum(np.abs(f), 1e-12)
    tail = max(1, len(f) // 4)
    level = abs(np.median(b[-tail:]) / np.median(f[-tail:]) - 1)
    first = float(rel[:10].max())
    ok = level <= AGREE_TOL["last_quarter_median_rel"] and (
        name != "teacher" or first <= AGREE_TOL["teacher_first10_max_rel"])
    return {"first10_max_rel": first, "median_rel": float(np.median(rel)), "max_rel": float(rel.max()),
            "last_quarter_median_rel": float(level), "within_tolerance": bool(ok)}


def write_cifar_like(folder: Path, per_batch: int, seed: int = 0) -> Path:
    """CIFAR-10-shaped python batches (data_batch_1..5, test_batch): a coloured square whose position and colour
    depend on the label, on a noisy background. Enough structure for a short training run to learn something."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        labels = rng.integers(0, 10, per_batch)
        x = rng.integers(0, 60, size=(per_batch, 3, 32, 32))
        for i, c in enumerate(labels):
            r, col = 2 + 2 * (c % 5), 2 + 12 * (c // 5)
            x[i, c % 3, r : r + 12, col : col + 12] += 190
        with (folder / name).open("wb") as f:
            pickle.dump({b"data": np.clip(x, 0, 255).astype(np.uint8).reshape(per_batch, -1),
                         b"labels": labels.tolist()}, f)
    return folder


def section_e2e(size: dict, device: str, precision: str, work: Path, out: Path, in_process: bool = False) -> dict:
    """train -> distill -> evaluate -> export-diffusers through the command line, each a fresh process (in_process:
    the same commands through progdistill.cli.main in this process, for the dry run: each fresh process spends
    seconds importing diffusers before it starts)."""
    data = write_cifar_like(work / "cifar", size["e2e_images"] // 5 or 1)
    run = work / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    common = [f'data.root="{data}"', f'device="{device}"', f'model.unet="{size["unet"]}"',
              f"perf.channels_last={str(CHANNELS_LAST['on']).lower()}", "perf.fused_adam=true"]
    steps = size["e2e_train_steps"]

    def train_args(run_dir: Path, prec: str) -> list[str]:
        return ["train", "--config", "cifar10", "--out", str(run_dir), "--no-progress",
                *[a for s in common + [f'mixed_precision="{prec}"', f"train.steps={steps}",
                                       f"train.checkpoint_every={max(1, steps // 3)}",
                                       f"train.warmup={min(50, steps // 2)}", f"train.batch_size={size['e2e_batch']}"]
                  for a in ("--set", s)]]

    train = train_args(run, precision)
    upd = size["e2e_updates"]
    distill = ["distill", "--from", str(run / "teacher"), "--no-progress",
               *[a for s in ["distill.start_steps=4", f"distill.updates_per_round={upd}",
                             f"distill.final_updates_per_round={upd}", f"distill.batch_size={size['e2e_batch']}",
                             f"distill.checkpoint_every={max(1, upd // 2)}", "distill.lr=2e-4"]
                 for a in ("--set", s)]]
    evaluate = ["evaluate", "--run", str(run), "--num", str(size["e2e_num"]), "--steps", "1,2,4", "--device", device,
                "--max-baseline-steps", "2", "--no-progress", "--out", str(work / "eval")]
    export = ["export-diffusers", "--ckpt", str(run / "students" / "student_0001steps"), "--out",
              str(work / "diffusers-1step")]
    res = {"images": 6 * (size["e2e_images"] // 5 or 1), "train_steps": steps, "updates_per_round": upd,
           "phases": {}}
    def cli(name: str, args: list[str]):
        t0 = time.perf_counter()
        if in_process:
            proc = _cli_in_process(args)
        else:
            proc = subprocess.run([sys.executable, "-m", "progdistill.cli", *args], env=env, capture_output=True,
                                  text=True)
        seconds = time.perf_counter() - t0
        res["phases"][name] = {"seconds": round(seconds, 1), "rc": proc.returncode,
                               "output_tail": (proc.stdout + proc.stderr)[-1500:]}
        print(f"[gpu_check]   e2e {name}: rc {proc.returncode} in {seconds:.1f} s", flush=True)
        return proc

    for name, args in (("train", train), ("distill", distill), ("evaluate", evaluate), ("export", export)):
        proc = cli(name, args)
        if name == "train" and proc.returncode != 0 and "non-finite" in proc.stderr and precision != "no":
            # Diagnose: the same run in float32. The pipeline goes on with it, and the bf16 failure stays recorded.
            import shutil

            shutil.rmtree(run, ignore_errors=True)
            proc = cli("train_float32_retry", train_args(run, "no"))
        if proc.returncode != 0:
            raise RuntimeError(f"progdistill {name} failed (rc {proc.returncode}): {(proc.stdout + proc.stderr)[-800:]}")
    rows = json.loads((work / "eval" / "report.json").read_text())
    res["evaluate_rows"] = rows
    if (work / "eval" / "report.md").is_file():
        (out / "e2e_report.md").write_text((work / "eval" / "report.md").read_text())
    grid = work / "eval" / "samples" / "steps_0001.png"
    if grid.is_file():
        (out / "e2e_samples_1step.png").write_bytes(grid.read_bytes())
    # The exported pipeline runs on the device.
    from diffusers import DDIMPipeline

    t0 = time.perf_counter()
    pipe = DDIMPipeline.from_pretrained(str(work / "diffusers-1step")).to(device)
    images = pipe(batch_size=4, num_inference_steps=1, output_type="np").images
    res["exported_pipeline"] = {"seconds": round(time.perf_counter() - t0, 1), "shape": list(images.shape),
                                "finite": bool(np.isfinite(images).all())}
    return res


def _cli_in_process(args: list[str]) -> subprocess.CompletedProcess:
    """progdistill.cli.main(args) here, its output captured as subprocess.run would."""
    import contextlib
    import io

    from progdistill.cli import main as cli_main

    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            rc = cli_main(args)
        except SystemExit as exc:  # argparse's exits
            rc = exc.code if isinstance(exc.code, int) else 1
    return subprocess.CompletedProcess(args, rc, stdout.getvalue(), stderr.getvalue())


def section_profile(size: dict, device: str, precision: str, out: Path) -> dict:
    from torch.profiler import ProfilerActivity, profile

    tp = _throughput_module()
    cfg = _config(tp, size, device, precision, fast=True)
    shape, batch = (3, 32, 32), size["batch"]
    data = tp.synthetic(shape, max(4 * batch, 64), 0)
    torch.manual_seed(0)
    teacher = tp.build_denoiser(cfg, shape, 0)
    tp.time_fit(cfg, copy.deepcopy(teacher), tp.TeacherObjective(tp.schedule_of(cfg)), data, batch, 2, 1,
                cfg.diffusion.weighting)  # warm-up outside the profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities) as prof:
        tp.time_fit(cfg, copy.deepcopy(teacher), tp.TeacherObjective(tp.schedule_of(cfg)), data, batch,
                    size["profile_steps"], 1, cfg.diffusion.weighting)
    key = "cuda_time_total" if device == "cuda" else "cpu_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=45, max_name_column_width=60)
    kinds = {"convolution": ("conv", "cudnn", "implicit_gemm", "sm90_xmma", "nchw", "nhwc"),
             "matmul/attention": ("gemm", "mm", "matmul", "attention", "flash", "sdpa", "linear"),
             "normalization": ("norm",), "optimizer": ("adam", "foreach", "multi_tensor"),
             "elementwise/other": ()}
    by_kind = {k: 0.0 for k in kinds}
    total = 0.0
    for evt in prof.key_averages():
        t = getattr(evt, "self_device_time_total" if device == "cuda" else "self_cpu_time_total", 0.0) or 0.0
        if device == "cuda" and getattr(evt, "device_type", None) is not None and "CUDA" not in str(evt.device_type):
            continue
        total += t
        name = evt.key.lower()
        kind = next((k for k, words in kinds.items() if any(w in name for w in words)), "elementwise/other")
        by_kind[kind] += t
    share = {k: (v / total if total else 0.0) for k, v in by_kind.items()}
    (out / "profile_train.txt").write_text(
        f"torch.profiler over {size['profile_steps'] + 1} training steps of the fast path ({precision}, batch {batch})"
        f"\nself {'device' if device == 'cuda' else 'CPU'} time by operator kind (name matching, approximate): "
        + ", ".join(f"{k} {v:.1%}" for k, v in share.items()) + "\n\n" + table + "\n")
    return {"time_share_by_kind": share, "profiled_steps": size["profile_steps"] + 1, "table": "profile_train.txt"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 2)[2])
    p.add_argument("--out", required=True, help="folder for gpu_check.json (and the profile, report and grid)")
    p.add_argument("--dry-run", action="store_true", help="shrink every size and run on the CPU (a smoke test)")
    p.add_argument("--device", choices=["cuda", "cpu"], help="default: cuda, or cpu with --dry-run")
    p.add_argument("--precision", default="bf16", choices=["bf16", "no"])
    p.add_argument("--budget-s", type=float, default=420.0,
                   help="time budget in seconds: a section that would start with less left than it needs is skipped "
                        "(default 420; the whole run stays well inside a 10-minute command limit)")
    p.add_argument("--sections", default="env,compile,throughput,latency,agreement,e2e,profile",
                   help="comma-separated subset of the sections to run")
    p.add_argument("--channels-last", action="store_true",
                   help="fast path with channels_last memory (off by default: slower for these GroupNorm U-Nets)")
    a = p.parse_args(argv)
    CHANNELS_LAST["on"] = a.channels_last
    device = a.device or ("cpu" if a.dry_run else "cuda")
    if device == "cuda" and not torch.cuda.is_available():
        p.error("no CUDA device is available: run on a GPU machine, or use --dry-run (CPU)")
    size = DRY if a.dry_run else FULL
    wanted = [s.strip() for s in a.sections.split(",") if s.strip()]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    check = Check(out, a.budget_s)
    check.results.update(command=" ".join(["gpu_check.py", *(argv if argv is not None else sys.argv[1:])]),
                         dry_run=a.dry_run, sizes=size, goals={"teacher_ratio": 1.3, "mfu": 0.35,
                                                               "speedup_4step_batch256": 50})
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    # Minimum seconds a section needs to start (real run); the dry run needs only seconds.
    need = (lambda s: 0.0) if a.dry_run else {"throughput": 60, "latency": 40, "agreement": 30, "e2e": 90,
                                              "profile": 30, "compile": 150}.get
    plan = {
        "env": lambda: section_env(device),
        "throughput": lambda: section_throughput(size, device, a.precision),
        "latency": lambda: section_latency(size, device, a.precision),
        "agreement": lambda: section_agreement(size, device),
    }
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as work:
        plan["e2e"] = lambda: section_e2e(size, device, a.precision, Path(work), out, in_process=a.dry_run)
        plan["compile"] = lambda: section_compile(size, device, a.precision)
        plan["profile"] = lambda: section_profile(size, device, a.precision, out)
        for name in wanted:  # in the order given
            if name not in plan:
                p.error(f"unknown section {name!r}; choose from {', '.join(plan)}")
            if name == "compile" and a.dry_run:
                continue  # compiling takes minutes even for the small network on the CPU
            if name == "profile":
                thr = check.results["sections"].get("throughput", {})
                missed = [g for g, ok in (("teacher_ratio", thr.get("teacher_ratio", 0) >= 1.3),
                                          ("mfu", thr.get("mfu_teacher_ours", 0) >= 0.35)) if not ok]
                if not (missed or a.dry_run):
                    continue
                check.results["profile_reason"] = f"goals missed: {', '.join(missed)}" if missed else "dry run"
            check.run(name, plan[name], need(name) or 0.0)
    check.save()
    summary = summarize(check.results)
    (out / "gpu_check.md").write_text(summary)
    print(summary, flush=True)
    failed = [k for k, v in check.results["sections"].items() if v["status"] == "failed"]
    return 1 if failed else 0


def summarize(results: dict) -> str:
    """A short markdown summary of gpu_check.json."""
    s = results["sections"]
    env = s.get("env", {})
    lines = [f"# gpu_check: {env.get('card') or env.get('cpu')} ({env.get('date')}), torch {env.get('torch')}", "",
             "| section | status | seconds |", "|---|---|---:|"]
    lines += [f"| {k} | {v['status']} | {v.get('seconds', '')} |" for k, v in s.items()]
    thr = s.get("throughput", {})
    if thr.get("status") == "ok":
        lines += ["", f"Throughput ({thr['unet']} U-Net, {thr['precision']}, batch {thr['batch']}):", "",
                  "| measure | ours (fast path) | plain loop | ours / plain |", "|---|---:|---:|---:|",
                  f"| teacher step, images/s | {thr['teacher_ours']:.1f} | {thr['teacher_plain']:.1f} | "
                  f"{thr['teacher_ratio']:.2f} |",
                  f"| distillation step, images/s | {thr['distill_ours']:.1f} | | {1 / thr['distill_step_cost']:.2f} "
                  "of our teacher step |",
                  f"| DDIM sampling, image-NFE/s | {thr['sample_ours']:.1f} | {thr['sample_plain']:.1f} | "
                  f"{thr['sample_ratio']:.2f} |"]
        if "mfu_teacher_ours" in thr:
            lines.append(f"| teacher step MFU (bf16 peak) | {thr['mfu_teacher_ours']:.1%} | "
                         f"{thr.get('mfu_teacher_plain', float('nan')):.1%} | |")
    comp = s.get("compile", {})
    if comp.get("status") == "ok":
        lines += ["", "With torch.compile (eager -> compiled, images/s): teacher step "
                  f"{comp['teacher_eager']:.1f} -> {comp['teacher_compiled']:.1f} ({comp['teacher_speedup']:.2f}x), "
                  f"distillation step {comp['distill_eager']:.1f} -> {comp['distill_compiled']:.1f} "
                  f"({comp['distill_speedup']:.2f}x), DDIM sampling {comp['sample_eager']:.1f} -> "
                  f"{comp['sample_compiled']:.1f} ({comp['sample_speedup']:.2f}x)"
                  + (f"; compiled teacher step {comp['teacher_compiled'] / thr['teacher_plain']:.2f}x the plain loop"
                     if thr.get("teacher_plain") else "")]
    lat = s.get("latency", {})
    if lat.get("status") == "ok":
        lines += ["", f"Sampling latency (teacher = {lat['teacher_steps']}-step DDIM):", "",
                  "| batch | steps | latency ms | images/s | speed-up vs teacher |", "|---:|---:|---:|---:|---:|"]
        for r in lat["rows"]:
            sp = lat["speedup_vs_teacher"].get(f"batch{r['batch']}_steps{r['steps']}")
            lines.append(f"| {r['batch']} | {r['steps']} | {1000 * r['seconds']:.2f} | {r['images_per_s']:.1f} | "
                         + (f"{sp:.1f}x |" if sp else "1 |"))
    agr = s.get("agreement", {})
    if agr.get("status") == "ok":
        lines += [""] + [f"bf16 fast path vs float32, {k} ({agr['steps']} steps): per-step loss difference "
                         f"first 10 steps max {agr[k]['first10_max_rel']:.2%}, median {agr[k]['median_rel']:.2%}, "
                         f"max {agr[k]['max_rel']:.2%}; last quarter's median loss {agr[k]['last_quarter_median_rel']:.2%}"
                         f" apart (within tolerance: {agr[k]['within_tolerance']})" for k in ("teacher", "distill")]
    e2e = s.get("e2e", {})
    if e2e.get("status") == "ok":
        lines += ["", "End to end on the command line: " + ", ".join(
            f"{k} {v['seconds']} s" for k, v in e2e["phases"].items())]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
