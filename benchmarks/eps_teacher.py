"""Benchmark: bring your own DDPM. An epsilon-prediction teacher trained the way diffusers' unconditional training
example trains one, saved as a DDPMPipeline, imported with `progdistill import-diffusers`, distilled 64 -> 1 and
evaluated with the classifier Frechet distance on Fashion-MNIST (issue 15).

    python benchmarks/eps_teacher.py --out runs/eps-teacher [--teacher-steps 1500] [--updates 300] [--num 1000]

Stages (each skipped when its output is already in --out, so a killed run continues):
1. hub/: a UNet2DModel (small: 16/32/64 channels, attention at 7x7) trained with the example's recipe: DDPMScheduler
   (1000 linear betas), epsilon MSE on random timesteps, AdamW (0.95, 0.999, weight decay 1e-6), cosine learning
   rate with warm-up, gradient clipping at 1, diffusers' EMAModel (inv_gamma 1, power 3/4), random flips; saved as a
   DDPMPipeline with the EMA weights, as the example saves it.
2. run/teacher: `progdistill import-diffusers` with the fashion_mnist preset's data (unconditional) and whatever
   defaults import picks for the model's prediction type (for epsilon: see docs/imported_teachers.md).
3. run/students: `progdistill distill` 64 -> 1 with --updates updates per round (--final-updates for 2 and 1 step).
4. eval/: `progdistill evaluate` (teacher DDIM, DPM-Solver++(2M), diffusers' DDIMScheduler as configured, students)
   and goals.json (the issue's targets checked against the measured values).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

METRIC = "frechet_classifier"


def train_hub_teacher(folder: Path, steps: int, batch: int, lr: float, warmup: int, seed: int,
                      progress: bool) -> None:
    """diffusers' train_unconditional.py step, on Fashion-MNIST in [-1, 1], saved as a DDPMPipeline."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    from progdistill.data.images import load_image_dataset

    torch.manual_seed(seed)
    data = load_image_dataset("fashion-mnist", None).x
    unet = UNet2DModel(sample_size=28, in_channels=1, out_channels=1, block_out_channels=(16, 32, 64),
                       layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"), norm_num_groups=8)
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8)
    lr_sched = get_scheduler("cosine", optimizer=opt, num_warmup_steps=warmup, num_training_steps=steps)
    ema = EMAModel(unet.parameters(), decay=0.9999, use_ema_warmup=True, inv_gamma=1.0, power=0.75,
                   model_cls=UNet2DModel, model_config=unet.config)
    gen = torch.Generator().manual_seed(seed)
    unet.train()
    bar = tqdm(range(steps), desc="eps teacher (diffusers recipe)", disable=not progress, dynamic_ncols=True)
    for _ in bar:
        idx = torch.randint(0, len(data), (batch,), generator=gen)
        clean = data[idx]
        flip = torch.rand(batch, generator=gen) < 0.5
        clean = torch.where(flip[:, None, None, None], clean.flip(-1), clean)
        noise = torch.randn(clean.shape, generator=gen)
        t = torch.randint(0, 1000, (batch,), generator=gen)
        loss = F.mse_loss(unet(sched.add_noise(clean, noise, t), t).sample, noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        lr_sched.step()
        opt.zero_grad()
        ema.step(unet.parameters())
        bar.set_postfix(loss=f"{loss.item():.4f}")
    ema.copy_to(unet.parameters())
    folder.parent.mkdir(parents=True, exist_ok=True)
    DDPMPipeline(unet=unet.eval(), scheduler=sched).save_pretrained(folder)


def goals(rows: list[dict], best_steps: int) -> dict:
    """Issue 15's targets: students against the teacher's best sampler at `best_steps` and at equal steps."""
    v = {(r["sampler"], r["steps"]): r["value"] for r in rows if r["metric"] == METRIC}
    at = [v[(s, best_steps)] for s in ("teacher_ddim", "dpm_solver") if (s, best_steps) in v]
    if not at:
        return {}
    best = min(at)
    out = {"teacher_best_at_%d" % best_steps: round(best, 3)}
    for k, bound in ((4, 1.3), (2, 2.0), (1, 3.0)):
        if ("student", k) not in v:
            continue
        ratio = v[("student", k)] / best
        out[f"student{k} <= {bound} x teacher best"] = {"ratio": round(ratio, 3), "met": ratio <= bound}
        for base in ("teacher_ddim", "dpm_solver", "diffusers_ddim"):
            if (base, k) in v:
                out[f"student{k} < {base}{k}"] = {"student": round(v[("student", k)], 3),
                                                  base: round(v[(base, k)], 3), "met": v[("student", k)] < v[(base, k)]}
    return out


# Ablation variants (distill overrides) run by --ablation on a shorter chain; "status quo" is what import chose
# before issue 15 (an eps student with the paper's unclipped targets, eps-MSE weighting).
VARIANTS = {
    "eps_none": ["distill.parameterization=eps", "distill.weighting=snr", "distill.teacher_clip=none"],
    "v_none": ["distill.parameterization=v", "distill.weighting=snr_plus1", "distill.teacher_clip=none"],
    "v_noisy": ["distill.parameterization=v", "distill.weighting=snr_plus1", "distill.teacher_clip=noisy"],
    "v_all": ["distill.parameterization=v", "distill.weighting=snr_plus1", "distill.teacher_clip=all"],
    "x_noisy": ["distill.parameterization=x", "distill.weighting=snr_trunc", "distill.teacher_clip=noisy"],
    "v_noisy_convert": ["distill.parameterization=v", "distill.weighting=snr_plus1", "distill.teacher_clip=noisy",
                        "distill.convert_updates=UPDATES"],
}


def ablation(run: Path, out: Path, names: list[str], start: int, updates: int, batch: int, num: int,
             progress: bool) -> dict:
    """Each variant distils the imported teacher start -> 1 with `updates` per round; students evaluated at
    1, 2, 4 steps on `num` samples. Results accumulate in out/ablation.json (finished variants are skipped)."""
    import shutil

    from progdistill.config import load_config
    from progdistill.evaluation.images import evaluate_images
    from progdistill.checkpoint import read_record
    from progdistill.training.rounds import distill

    path = out / "ablation.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    base = read_record(run / "teacher")["config"]
    for name in names:
        if name in results:
            continue
        folder = out / "ablation" / name
        folder.mkdir(parents=True, exist_ok=True)
        for suffix in (".json", ".safetensors"):
            shutil.copy(run / f"teacher{suffix}", folder / f"teacher{suffix}")
        sets = [x.replace("UPDATES", str(updates)) for x in VARIANTS[name]]
        cfg = load_config(None, [f"distill.start_steps={start}", f"distill.updates_per_round={updates}",
                                 "distill.final_updates_per_round=0", f"distill.batch_size={batch}",
                                 "distill.checkpoint_every=0", "distill.log_samples=0", *sets], base=base)
        t0 = time.time()
        distill(folder / "teacher", folder, cfg, progress=progress)
        t1 = time.time()
        rows = evaluate_images(folder, folder / "eval", steps=[1, 2, 4], num=num, seed=1234,
                               samplers=("student",), progress=progress)
        results[name] = {"overrides": sets, "distill_s": round(t1 - t0, 1),
                         **{f"student{r['steps']}": round(r["value"], 3) for r in rows
                            if r["metric"] == METRIC and r["sampler"] == "student"}}
        path.write_text(json.dumps(results, indent=2))
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--teacher-steps", type=int, default=1000)
    p.add_argument("--teacher-batch", type=int, default=32)
    p.add_argument("--teacher-lr", type=float, default=1e-3,
                   help="the example's default is 1e-4 for its long runs; a short CPU run needs a larger one")
    p.add_argument("--start-steps", type=int, default=64)
    p.add_argument("--updates", type=int, default=300, help="distillation updates per round")
    p.add_argument("--final-updates", type=int, default=600, help="updates for the 2- and 1-step rounds")
    p.add_argument("--batch", type=int, default=64, help="distillation batch")
    p.add_argument("--num", type=int, default=1000, help="samples per sampler and step count")
    p.add_argument("--steps", default="1,2,4,8,64", help="step counts evaluated")
    p.add_argument("--max-baseline-steps", type=int, default=8, help="largest step count for DPM-Solver++")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   help="extra config overrides for import/distill (e.g. distill.parameterization=eps)")
    p.add_argument("--stop-after", choices=["teacher", "import", "distill"], help="stop after this stage")
    p.add_argument("--ablation", help="instead of stages 3-4: comma-separated variants (%s) distilled "
                   "--ablation-start -> 1 with --updates per round, students evaluated on --num samples"
                   % ", ".join(VARIANTS))
    p.add_argument("--ablation-start", type=int, default=8)
    p.add_argument("--hub", help="use this already trained pipeline folder instead of training OUT/hub")
    p.add_argument("--samplers", help="evaluate only these samplers (comma-separated; default: all)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default); 1 on a shared CPU")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    from progdistill.cli import main as cli

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    hub, run, ev = Path(a.hub) if a.hub else out / "hub", out / "run", out / "eval"
    times = json.loads((out / "times.json").read_text()) if (out / "times.json").is_file() else {}

    def timed(name, fn):
        t0 = time.time()
        fn()
        times[name] = round(time.time() - t0, 1)
        (out / "times.json").write_text(json.dumps(times, indent=2))

    quiet = ["--no-progress"] if a.no_progress else []
    if not (hub / "model_index.json").is_file():
        timed("teacher_s", lambda: train_hub_teacher(hub, a.teacher_steps, a.teacher_batch, a.teacher_lr, 100, 0,
                                                     not a.no_progress))
    if a.stop_after == "teacher":
        return
    sets = ["data.conditional=false", f"distill.start_steps={a.start_steps}", "distill.target_steps=1",
            f"distill.updates_per_round={a.updates}", f"distill.final_updates_per_round={a.final_updates}",
            f"distill.batch_size={a.batch}", "distill.checkpoint_every=0", *a.overrides]
    if not (run / "teacher.json").is_file():
        args = ["import-diffusers", "--model", str(hub), "--out", str(run), "--config", "fashion_mnist"]
        timed("import_s", lambda: cli(args + [x for s in sets for x in ("--set", s)]))
    if a.stop_after == "import":
        return
    if a.ablation:
        print(json.dumps(ablation(run, out, a.ablation.split(","), a.ablation_start, a.updates, a.batch, a.num,
                                  not a.no_progress), indent=2))
        return
    if not (run / "students" / "student_0001steps.json").is_file():
        timed("distill_s", lambda: cli(["distill", "--from", str(run / "teacher"), "--resume", "--out", str(run),
                                        *quiet]))
    if a.stop_after == "distill":
        return
    timed("eval_s", lambda: cli(["evaluate", "--run", str(run), "--out", str(ev), "--num", str(a.num),
                                 "--steps", a.steps, "--no-ancestral", "--max-baseline-steps",
                                 str(a.max_baseline_steps), *quiet]
                                + (["--samplers", a.samplers] if a.samplers else [])))
    rows = json.loads((ev / "report.json").read_text())
    meta = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
                       f"{'cuda ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}",
            "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "num": a.num, **times,
            "settings": vars(a)}
    result = {"goals": goals(rows, a.start_steps), "meta": meta}
    (out / "goals.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
