"""Benchmark: throughput of a teacher training step, a distillation step and sampling, each beside a plain loop
written the way diffusers' unconditional training example writes it (same network, batch and precision).

    python benchmarks/throughput.py --out runs/throughput                 # small preset on the CPU
    python benchmarks/throughput.py --preset cifar10 --device cuda --fast --out runs/throughput-gpu

Measured in one process, one after the other, after warm-up steps, on synthetic in-memory data (so data loading
is out of the comparison for both). Images per second:
- teacher step: ours = training.loop.fit with the teacher objective (Adam, EMA, clipping, NaN guard, per-step loss
  read-back); plain = UNet2DModel + DDPMScheduler.add_noise + MSE on epsilon + AdamW + cosine LR + diffusers'
  EMAModel + clipping, loss read back every step as the example logs it.
- distillation step: ours (two teacher forwards without gradients + the student's forward and backward); there is
  no plain equivalent, so it is reported against our own teacher step (the compute multiple).
- sampling (DDIM, images per second per network evaluation): ours = sampling.generate; plain = the
  DDIMPipeline loop (scheduler.step + UNet) on the same UNet.
--fast turns on the [perf] switches fused_adam and compile for ours (--channels-last adds channels_last, which made
the cifar10 U-Net slower on an H200: its GroupNorm layers copy every channels-last activation back); --precision sets
both sides.
--compare-compile measures ours eager and ours compiled (perf.compile: the student's forward and backward, the
teacher's two evaluations in distillation, and the sampler's network calls) side by side in the same run, with the
time of the first (compiling) step of each, and writes compile.json/compile.md; it replaces the comparison with the
plain loop.
On CUDA the FLOPs of a training step (torch.utils.flop_counter) give the model FLOPs utilisation (MFU) against
the card's dense bf16 peak. Also written: the compute of a whole distillation in the paper's CIFAR-10 setting
(8192 -> 1 steps, 50k updates per round, 100k for the last two, batch 128) in teacher-training steps.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from progdistill.build import build_denoiser, make_accelerator, schedule_of
from progdistill.config import load_config
from progdistill.data import TensorData
from progdistill.sampling import generate
from progdistill.training.loop import OptimSettings, fit, make_ema
from progdistill.training.objectives import DistillObjective, TeacherObjective

# Dense bf16 tensor-core peaks (FLOP/s) by device-name fragment.
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12, "4090": 165e12}


def synthetic(shape, n, num_classes, seed=0) -> TensorData:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((n, *shape), generator=g) * 2 - 1
    labels = torch.randint(0, num_classes, (n,), generator=g) if num_classes else None
    return TensorData(x, labels)


def time_fit(cfg, denoiser, objective, data, batch, steps, warmup, weighting) -> float:
    """Images per second over `steps` optimizer steps of our loop, after `warmup` steps."""
    stamps = {}

    def on_step(step, loss, snapshot):
        if step in (warmup, warmup + steps):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            stamps[step] = time.perf_counter()

    acc = make_accelerator(cfg)
    settings = OptimSettings(lr=1e-4, total_steps=warmup + steps, warmup=0, decay="constant", grad_clip=1.0)
    fit(denoiser.to(acc.device), data.batches(batch, 0), objective, weighting, settings, accelerator=acc, seed=0,
        ema=make_ema(denoiser, 0.9999), on_step=on_step, progress=False, perf=cfg.perf)
    return steps * batch / (stamps[warmup + steps] - stamps[warmup])


def time_plain_loop(cfg, unet, data, batch, steps, warmup) -> float:
    """The diffusers unconditional-training-example step on the same UNet, batch and precision."""
    from accelerate import Accelerator
    from diffusers import DDPMScheduler, UNet2DModel
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    acc = Accelerator(cpu=cfg.device == "cpu", mixed_precision=cfg.mixed_precision)
    noise_scheduler = DDPMScheduler(num_train_timesteps=1000)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8)
    lr_scheduler = get_scheduler("cosine", optimizer=optimizer, num_warmup_steps=0,
                                 num_training_steps=warmup + steps)
    ema = EMAModel(unet.parameters(), decay=0.9999, use_ema_warmup=True, inv_gamma=1.0, power=0.75,
                   model_cls=UNet2DModel, model_config=unet.config)
    model, optimizer, lr_scheduler = acc.prepare(unet, optimizer, lr_scheduler)
    ema.to(acc.device)
    batches = data.batches(batch, 0)
    model.train()
    t0 = None
    for step in range(1, warmup + steps + 1):
        if step == warmup + 1:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        clean, labels = next(batches)
        clean = clean.to(acc.device)
        labels = labels.to(acc.device) if labels is not None else None
        noise = torch.randn_like(clean)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (clean.shape[0],),
                                  device=clean.device).long()
        noisy = noise_scheduler.add_noise(clean, noise, timesteps)
        with acc.accumulate(model):
            with acc.autocast():
                out = model(noisy, timesteps, class_labels=labels).sample
            loss = F.mse_loss(out.float(), noise.float())
            acc.backward(loss)
            if acc.sync_gradients:
                acc.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad()
        if acc.sync_gradients:
            ema.step(model.parameters())
        loss.detach().item()  # the example logs the loss every step
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - t0)


@torch.no_grad()
def time_sampling(denoiser, unet, cfg, shape, num_classes, batch, nfe, device, repeats=5) -> tuple[float, float]:
    """(ours, plain) images per second per network evaluation, DDIM with `nfe` steps (median of `repeats`)."""
    from diffusers import DDIMScheduler

    labels = torch.arange(batch) % num_classes if num_classes else None
    sched = schedule_of(cfg)
    denoiser = denoiser.to(device).eval()
    unet = unet.to(device).eval()

    def ours():
        generate(denoiser, sched, nfe, batch, shape, batch_size=batch, device=device, labels=labels)

    ddim = DDIMScheduler(num_train_timesteps=1000, timestep_spacing="trailing")

    def plain():
        ddim.set_timesteps(nfe)
        image = torch.randn((batch, *shape), device=device)
        lab = labels.to(device) if labels is not None else None
        for t in ddim.timesteps:
            out = unet(image, t, class_labels=lab).sample
            image = ddim.step(out, t, image, eta=0.0).prev_sample
        image.cpu()

    times = {ours: [], plain: []}
    ours(), plain()  # warm-up
    for _ in range(repeats):  # alternate, so drifts in machine load hit both sides alike; keep the median
        for fn in (ours, plain):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times[fn].append(time.perf_counter() - t0)
    rates = [batch * nfe / sorted(times[fn])[len(times[fn]) // 2] for fn in (ours, plain)]
    return rates[0], rates[1]


def step_flops(denoiser, shape, num_classes, batch, device) -> tuple[float, float]:
    """(forward, forward + backward) FLOPs of one training micro-batch, counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    d = copy.deepcopy(denoiser).to(device).train()
    z = torch.randn((batch, *shape), device=device)
    logsnr = torch.zeros(batch, device=device)
    labels = torch.zeros(batch, dtype=torch.long, device=device) if num_classes else None
    with FlopCounterMode(display=False) as fwd:
        with torch.no_grad():
            d(z, logsnr, labels)
    with FlopCounterMode(display=False) as full:
        d(z, logsnr, labels).pow(2).mean().backward()
    return float(fwd.get_total_flops()), float(full.get_total_flops())


def first_step_seconds(cfg, denoiser, objective, data, batch, weighting) -> float:
    """Wall time of one optimizer step from a fresh loop: with perf.compile, mostly compilation."""
    acc = make_accelerator(cfg)
    settings = OptimSettings(lr=1e-4, total_steps=1, warmup=0, decay="constant", grad_clip=1.0)
    start = time.perf_counter()
    fit(denoiser.to(acc.device), data.batches(batch, 0), objective, weighting, settings, accelerator=acc, seed=0,
        progress=False, perf=cfg.perf)
    return time.perf_counter() - start


def compare_compile(preset: str, over: list[str], shape, num_classes: int, data, batch: int, a) -> dict:
    """Ours eager against ours compiled: images/s of the teacher step, the distillation step and DDIM sampling,
    and the seconds of the first (compiling) step; medians of alternating repeats."""
    from progdistill.compiling import CompiledOrEager

    res: dict = {}
    cfgs = {mode: load_config(preset, over + [f"perf.compile={str(mode == 'compiled').lower()}"])
            for mode in ("eager", "compiled")}
    torch.manual_seed(0)
    teacher = build_denoiser(cfgs["eager"], shape, num_classes)
    frozen = copy.deepcopy(teacher).to(a.device).eval().requires_grad_(False)
    teacher_for = {"eager": frozen, "compiled": CompiledOrEager(frozen, "the frozen teacher")}
    objectives = {"teacher": lambda mode: TeacherObjective(schedule_of(cfgs[mode])),
                  "distill": lambda mode: DistillObjective(teacher_for[mode], schedule_of(cfgs[mode]), 4)}
    weighting = {"teacher": cfgs["eager"].diffusion.weighting, "distill": cfgs["eager"].distill.weighting}
    for kind, objective_of in objectives.items():
        for mode, cfg in cfgs.items():
            res[f"{kind}_{mode}_first_step_s"] = first_step_seconds(cfg, copy.deepcopy(teacher), objective_of(mode),
                                                                    data, batch, weighting[kind])
        runs = {mode: [] for mode in cfgs}
        for _ in range(a.repeats):
            for mode, cfg in cfgs.items():
                runs[mode].append(time_fit(cfg, copy.deepcopy(teacher), objective_of(mode), data, batch, a.steps,
                                           a.warmup, weighting[kind]))
        for mode, values in runs.items():
            res[f"{kind}_{mode}"] = sorted(values)[len(values) // 2]
            res[f"{kind}_{mode}_all"] = values
        res[f"{kind}_speedup"] = res[f"{kind}_compiled"] / res[f"{kind}_eager"]
    sampler = copy.deepcopy(teacher).to(a.device).eval()
    compiled_sampler = CompiledOrEager(sampler, "the sampler's network")
    res["sample_compiled"], res["sample_eager"] = time_sampling_pair(compiled_sampler, sampler, cfgs["eager"], shape,
                                                                     num_classes, batch, a.nfe, a.device, a.repeats)
    res["sample_speedup"] = res["sample_compiled"] / res["sample_eager"]
    return res


@torch.no_grad()
def time_sampling_pair(first, second, cfg, shape, num_classes, batch, nfe, device, repeats) -> tuple[float, float]:
    """Images per second per network evaluation of two denoisers, DDIM with `nfe` steps, alternating."""
    labels = torch.arange(batch) % num_classes if num_classes else None
    sched = schedule_of(cfg)
    fns = [lambda d=d: generate(d, sched, nfe, batch, shape, batch_size=batch, device=device, labels=labels)
           for d in (first, second)]
    for fn in fns:
        fn()  # warm-up (and, compiled, compilation)
    times = [[], []]
    for _ in range(repeats):
        for k, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times[k].append(time.perf_counter() - t0)
    return tuple(batch * nfe / sorted(t)[len(t) // 2] for t in times)


def write_compile_report(res: dict, out: Path) -> None:
    """compile.json and a markdown table of ours eager against ours compiled."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "compile.json").write_text(json.dumps(res, indent=2))
    lines = ["| measure | eager | compiled | compiled / eager | first step eager / compiled |", "|---|---|---|---|---|"]
    for kind, label in (("teacher", "teacher step, images/s"), ("distill", "distillation step, images/s")):
        lines.append(f"| {label} | {res[kind + '_eager']:.1f} | {res[kind + '_compiled']:.1f} | "
                     f"{res[kind + '_speedup']:.2f} | {res[kind + '_eager_first_step_s']:.1f} s / "
                     f"{res[kind + '_compiled_first_step_s']:.1f} s |")
    lines.append(f"| DDIM sampling, image-NFE/s | {res['sample_eager']:.1f} | {res['sample_compiled']:.1f} | "
                 f"{res['sample_speedup']:.2f} | |")
    (out / "compile.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--preset", default="fashion_mnist", help="fashion_mnist (the small U-Net) or cifar10")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--precision", default="no", choices=["no", "bf16", "fp16"])
    p.add_argument("--fast", action="store_true", help="ours with fused_adam and compile")
    p.add_argument("--channels-last", action="store_true", help="with --fast: channels_last memory format too")
    p.add_argument("--no-compile", action="store_true",
                   help="with --fast: leave torch.compile off (compiling the cifar10 U-Net takes minutes)")
    p.add_argument("--batch", type=int, help="default: 64 (fashion_mnist), 128 (cifar10)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--nfe", type=int, default=8, help="sampling steps")
    p.add_argument("--repeats", type=int, default=3, help="alternating repetitions of every measurement (median)")
    p.add_argument("--compare-compile", action="store_true",
                   help="ours eager against ours compiled (perf.compile), side by side, instead of the plain loop")
    a = p.parse_args()

    batch = a.batch or (128 if a.preset == "cifar10" else 64)
    over = [f'device="{a.device}"', f'mixed_precision="{a.precision}"']
    if a.fast:
        over += [f"perf.channels_last={str(a.channels_last).lower()}", "perf.fused_adam=true",
                 f"perf.compile={str(not a.no_compile).lower()}"]
    cfg = load_config(a.preset, over)
    shape = (3, 32, 32) if a.preset == "cifar10" else (1, 28, 28)
    num_classes = 10 if cfg.data.conditional and a.preset != "cifar10" else 0
    data = synthetic(shape, max(4 * batch, 512), num_classes)
    if a.compare_compile:
        res = compare_compile(a.preset, [f'device="{a.device}"', f'mixed_precision="{a.precision}"'], shape,
                              num_classes, data, batch, a)
        res |= {"preset": a.preset, "device": a.device, "precision": a.precision, "batch": batch, "steps": a.steps,
                "warmup": a.warmup, "repeats": a.repeats, "nfe": a.nfe, "torch": torch.__version__,
                "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
                "date": time.strftime("%Y-%m-%d"), "card": torch.cuda.get_device_name() if a.device == "cuda" else None}
        write_compile_report(res, Path(a.out))
        return
    torch.manual_seed(0)
    teacher = build_denoiser(cfg, shape, num_classes)
    plain_unet = copy.deepcopy(teacher.net.unet)
    res = {"preset": a.preset, "device": a.device, "precision": a.precision, "fast": a.fast,
           "compile": cfg.perf.compile, "batch": batch,
           "steps": a.steps, "warmup": a.warmup, "machine": platform.processor() or platform.machine(),
           "torch": torch.__version__, "threads": torch.get_num_threads(),
           "date": time.strftime("%Y-%m-%d"),
           "card": torch.cuda.get_device_name() if a.device == "cuda" else None}

    frozen = copy.deepcopy(teacher).to(a.device).eval().requires_grad_(False)
    runs = {"teacher_ours": [], "teacher_plain": [], "distill_ours": []}
    for _ in range(a.repeats):  # alternate the three, so drifts in machine load hit all alike; keep the medians
        runs["teacher_ours"].append(time_fit(cfg, copy.deepcopy(teacher), TeacherObjective(schedule_of(cfg)), data,
                                             batch, a.steps, a.warmup, cfg.diffusion.weighting))
        runs["teacher_plain"].append(time_plain_loop(cfg, copy.deepcopy(plain_unet), data, batch, a.steps, a.warmup))
        runs["distill_ours"].append(time_fit(cfg, copy.deepcopy(teacher), DistillObjective(frozen, schedule_of(cfg), 4),
                                             data, batch, a.steps, a.warmup, cfg.distill.weighting))
    for key, values in runs.items():
        res[key] = sorted(values)[len(values) // 2]
        res[key + "_all"] = values
    res["sample_ours"], res["sample_plain"] = time_sampling(teacher, copy.deepcopy(teacher.net.unet), cfg, shape,
                                                            num_classes, batch, a.nfe, a.device, a.repeats)
    res["teacher_ratio"] = res["teacher_ours"] / res["teacher_plain"]
    res["sample_ratio"] = res["sample_ours"] / res["sample_plain"]
    # Time of one distillation update in teacher-training updates (same batch).
    res["distill_step_cost"] = res["teacher_ours"] / res["distill_ours"]

    fwd, full = step_flops(teacher, shape, num_classes, 2, a.device)
    res["flops_per_image_forward"] = fwd / 2
    res["flops_per_image_train"] = full / 2
    if a.device == "cuda":
        name = res["card"]
        peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
        if peak:
            res["peak_bf16"] = peak
            res["mfu_teacher_ours"] = res["teacher_ours"] * res["flops_per_image_train"] / peak
            res["mfu_teacher_plain"] = res["teacher_plain"] * res["flops_per_image_train"] / peak
    # The paper's CIFAR-10 distillation: 13 rounds (8192 -> 1), 50k updates each, 100k for the last two, batch 128.
    updates = 11 * 50_000 + 2 * 100_000
    c10 = build_denoiser(load_config("cifar10"), (3, 32, 32), 0)  # FLOPs of the paper's CIFAR-10 network itself
    fwd10, full10 = step_flops(c10, (3, 32, 32), 0, 2, a.device)
    res["cifar10_flops_per_image_forward"], res["cifar10_flops_per_image_train"] = fwd10 / 2, full10 / 2
    flop_ratio = (2 * fwd10 + full10) / full10  # two teacher forwards + the student's forward and backward
    res["paper_cifar10_distill_updates"] = updates
    res["distill_flops_per_update_in_teacher_updates"] = flop_ratio
    res["paper_cifar10_distill_in_teacher_steps_flops"] = updates * flop_ratio
    # The same with this run's measured step times (of --preset's network) instead of FLOPs.
    res["paper_cifar10_distill_in_teacher_steps_time"] = updates * res["distill_step_cost"]

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "throughput.json").write_text(json.dumps(res, indent=2))
    lines = ["| measure | ours | plain loop | ours / plain |", "|---|---|---|---|",
             f"| teacher step, images/s | {res['teacher_ours']:.1f} | {res['teacher_plain']:.1f} | "
             f"{res['teacher_ratio']:.2f} |",
             f"| distillation step, images/s | {res['distill_ours']:.1f} | - | {1 / res['distill_step_cost']:.2f} "
             f"of our teacher step |",
             f"| DDIM sampling, image-NFE/s ({a.nfe} steps) | {res['sample_ours']:.1f} | {res['sample_plain']:.1f} | "
             f"{res['sample_ratio']:.2f} |"]
    if "mfu_teacher_ours" in res:
        lines.append(f"| teacher step MFU (bf16 peak) | {res['mfu_teacher_ours']:.1%} | "
                     f"{res['mfu_teacher_plain']:.1%} | |")
    table = "\n".join(lines)
    (out / "throughput.md").write_text(table + "\n")
    print(table)
    print(f"paper CIFAR-10 distillation = {res['paper_cifar10_distill_in_teacher_steps_flops']:.3g} teacher steps "
          f"(FLOPs of the cifar10 U-Net), {res['paper_cifar10_distill_in_teacher_steps_time']:.3g} (measured step "
          f"times of the {a.preset} network)")


if __name__ == "__main__":
    main()
