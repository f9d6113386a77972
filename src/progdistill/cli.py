"""The `progdistill` command line: train, distill, sample, evaluate, demo, export-diffusers, import-diffusers,
config."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .config import ConfigError, dump_json, load_config, preset_names
from .diffusion.registry import SAMPLERS, VARIANCES

EPILOG = "Config values come from defaults, then --config (a preset name or a TOML file), then --set overrides."


def _config_args(p: argparse.ArgumentParser, default: str | None = "toy2d") -> None:
    p.add_argument("--config", default=default, metavar="PRESET|FILE",
                   help=f"preset name or TOML file (default: {default or 'toy2d; distill: the checkpoint config'}; "
                        f"presets: {', '.join(preset_names())})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config value, e.g. --set train.lr=1e-3 (repeatable)")


def _progress_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _check_fresh_out(out: Path, marker: str, force: bool) -> None:
    """Refuse to write a run into a folder that already holds one (nothing there is touched)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a folder")
    if (out / marker).exists() and not force:
        raise ConfigError(f"--out {out} already holds a run ({marker}); choose another folder or pass --force")


def _at_least(name: str, value: int | None, low: int = 1) -> None:
    """An integer option, when given, must be >= low (0 is an error, not "the default")."""
    if value is not None and value < low:
        raise ConfigError(f"{name} must be >= {low}, got {value}" + (" (leave it out for the default)"
                                                                       if value == 0 else ""))


def _warn_off_student(record: dict, steps: int, sampler: str = "ddim") -> None:
    """A student is distilled for DDIM at its own step count; anything else is allowed but says so."""
    own = record.get("sampling_steps")
    if record.get("kind") != "student" or own is None:
        return
    if int(own) != steps:
        print(f"progdistill: warning: this student was distilled for {own} DDIM steps; sampling it with {steps} "
              "is outside what it was trained for (leave out --steps for its own)", file=sys.stderr)
    if sampler != "ddim":
        print(f"progdistill: warning: this student was distilled for the ddim sampler, not {sampler}",
              file=sys.stderr)


def cmd_train(a: argparse.Namespace) -> None:
    from .training.teacher import train_teacher

    out = Path(a.out)
    if a.resume:
        if a.config or a.overrides or a.label_dropout is not None:
            raise ConfigError("--resume continues with the config saved in the run's checkpoint; drop "
                              "--config/--set/--label-dropout")
        if (out / "teacher.json").is_file():
            raise ConfigError(f"{out} already holds a finished teacher (teacher.json); nothing to resume")
        stem = train_teacher(None, out, progress=not a.no_progress, resume=True)
    else:
        extra = [f"train.label_dropout={float(a.label_dropout)!r}"] if a.label_dropout is not None else []
        cfg = load_config(a.config or "toy2d", a.overrides + extra)
        _check_fresh_out(out, "teacher.json", a.force)
        if (out / "checkpoints").is_dir() and any((out / "checkpoints").glob("teacher_step*.json")) and not a.force:
            raise ConfigError(f"--out {out} holds checkpoints of an unfinished run: continue it with --resume, or "
                              "pass --force to start over (its checkpoints will be replaced as the new run goes)")
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(dump_json(cfg))
        stem = train_teacher(cfg, out, progress=not a.no_progress)
    print(f"teacher saved: {stem}.safetensors")


def _guided_overrides(a: argparse.Namespace) -> list[str]:
    """--w-min/--w-max/--w-margin/--stage1-updates as [guided] overrides; they need --guided."""
    given = {"w_min": a.w_min, "w_max": a.w_max, "w_margin": a.w_margin, "stage1_updates": a.stage1_updates}
    given = {k: v for k, v in given.items() if v is not None}
    if given and not a.guided:
        names = ", ".join("--" + k.replace("_", "-") for k in given)
        raise ConfigError(f"{names} set up guided distillation: add --guided")
    return [f"guided.{k}={v!r}" for k, v in given.items()]


def cmd_distill(a: argparse.Namespace) -> None:
    from . import runfolder
    from .config import config_from_record
    from .checkpoint import read_record
    from .training.guided import distill_guided
    from .training.rounds import distill

    progress = not a.no_progress
    if a.resume:
        if not a.out:
            raise ConfigError("--resume needs --out RUN (the run folder whose distillation to continue)")
        if a.config or a.overrides or _guided_overrides(a):
            raise ConfigError("--resume continues with the saved settings; drop --config/--set/--w-min/--w-max/"
                              "--stage1-updates")
        out = Path(a.out)
        if a.guided or runfolder.is_guided_run(out):
            stems = distill_guided(a.from_ckpt, out, None, progress=progress, resume=True)
        else:
            stems = distill(a.from_ckpt, out, None, progress=progress, resume=True)
    else:
        if not a.from_ckpt:
            raise ConfigError("give --from CKPT (a teacher or student checkpoint), or --resume --out RUN")
        record = read_record(a.from_ckpt)
        if not isinstance(record.get("config"), dict):
            raise ConfigError(f"checkpoint {a.from_ckpt} records no config")
        # The checkpoint's config is provenance, read leniently (fields this version does not know are skipped).
        cfg = load_config(a.config, a.overrides + _guided_overrides(a),
                          base=config_from_record(record["config"])[0].to_dict())
        ckpt_dir = Path(a.from_ckpt).resolve().parent
        if a.guided:
            out = Path(a.out) if a.out else runfolder.guided_dir(ckpt_dir)
            stems = distill_guided(a.from_ckpt, out, cfg, progress=progress)
            print(f"guided stage-1 model saved: {runfolder.stage1_stem(out)}.safetensors")
        else:
            out = Path(a.out) if a.out else (ckpt_dir.parent if record.get("kind") == "student" else ckpt_dir)
            stems = distill(a.from_ckpt, out, cfg, progress=progress)
    for stem in stems:
        print(f"student saved: {stem}.safetensors")


def cmd_sample(a: argparse.Namespace) -> None:
    import torch

    from .build import load_checkpoint, schedule_of
    from .evaluation.images import balanced_labels, save_grid
    from .guidance import check_guidance
    from .evaluation.plots import scatter_panels
    from .sampling import generate

    _at_least("--num", a.num)
    _at_least("--steps", a.steps)
    loaded = load_checkpoint(a.ckpt, a.device)
    denoiser, record = loaded.denoiser, loaded.record
    steps = a.steps if a.steps is not None else int(loaded.sampling["steps"])
    check_guidance(loaded.spec, a.guidance)  # before any sampling: what the model lacks, or its trained w range
    # A guided student's stochastic sampler is one of its own (Meng et al.), no warning for it.
    _warn_off_student(record, steps, "ddim" if a.sampler == "stochastic" and loaded.spec.guidance else a.sampler)
    shape, num_classes = loaded.spec.data_shape, loaded.spec.num_classes
    if a.label is not None:
        if not 0 <= a.label < max(num_classes, 1) or num_classes == 0:
            raise ConfigError(f"--label {a.label}: this model has {num_classes} classes"
                              + (" (it is unconditional)" if num_classes == 0 else f"; use 0..{num_classes - 1}"))
        labels = torch.full((a.num,), a.label)
    else:
        labels = balanced_labels(a.num, num_classes)
    x = generate(denoiser, schedule_of(loaded.spec), steps, a.num, shape, sampler=a.sampler,
                 variance=a.variance or loaded.sampling["variance"], clip=loaded.sampling["clip"] and not a.no_clip,
                 seed=a.seed, labels=labels, device=a.device, progress=not a.no_progress, guidance=a.guidance)
    out = Path(a.out)
    title = f"{record['kind']} {a.sampler} {steps} steps" + (f" w={a.guidance:g}" if a.guidance is not None else "")
    if out.suffix == ".pt":
        out.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"samples": x, "labels": labels}, out)
    elif len(shape) == 3:
        ncols = num_classes if num_classes and a.num >= num_classes else min(a.num, 10)
        save_grid([(f"{title}" if i == 0 else "", x[i : i + ncols]) for i in range(0, a.num, ncols)], out, ncols)
    else:
        scatter_panels([(title, x)], out, ncols=1)
    guided = f", guidance w = {a.guidance:g}" if a.guidance is not None else ""
    print(f"{a.num} samples ({a.sampler}, {steps} steps{guided}) written to {out}")


def _print_report(rows: list[dict]) -> None:
    from .evaluation.images import HIGHER_IS_BETTER
    from .evaluation.report import markdown_table

    for metric in dict.fromkeys(r["metric"] for r in rows):
        print(f"{metric} ({'higher' if metric in HIGHER_IS_BETTER else 'lower'} is better)")
        print(markdown_table(rows, metric, "Floor ('data' row)"))


def cmd_evaluate(a: argparse.Namespace) -> None:
    from .evaluation.report import evaluate_run

    steps = _int_list(a.steps, "--steps") if a.steps is not None else None
    _at_least("--num", a.num)
    _at_least("--max-baseline-steps", a.max_baseline_steps)
    if a.guidance is not None:
        return _evaluate_guided(a, steps)
    if a.teacher_steps is not None or a.guided_dir is not None:
        raise ConfigError("--teacher-steps and --guided-dir belong to a guided evaluation: add --guidance W,W,...")
    options = {}
    if a.samplers:
        options["samplers"] = tuple(s.strip() for s in a.samplers.split(","))
    if a.max_baseline_steps is not None:
        options["max_steps"] = {"teacher_ancestral": a.max_baseline_steps, "dpm_solver": a.max_baseline_steps}
    if a.inception_weights:
        options["inception_weights"] = a.inception_weights
    if a.device != "cpu":
        options["device"] = a.device
    if a.reference_steps is not None:
        if a.reference_steps < 1:
            raise ConfigError(f"--reference-steps must be >= 1, got {a.reference_steps}")
        options["reference_steps"] = a.reference_steps
    rows = evaluate_run(a.run, a.out, steps=steps, num=a.num, seed=a.seed, ancestral=not a.no_ancestral,
                        progress=not a.no_progress, **options)
    _print_report(rows)
    print(f"report written to {Path(a.out) if a.out else Path(a.run) / 'eval'}")


def _evaluate_guided(a: argparse.Namespace, steps: list[int] | None) -> None:
    from .evaluation.guided import GUIDED_SAMPLERS, evaluate_guided, guided_tables

    try:
        ws = [float(w) for w in a.guidance.split(",")]
    except ValueError:
        raise ConfigError(f"--guidance must be comma-separated numbers such as 0,1,2,4, got {a.guidance!r}") from None
    for name in ("inception_weights", "max_baseline_steps", "reference_steps"):
        if getattr(a, name) is not None:
            raise ConfigError(f"--{name.replace('_', '-')} does not apply to a guided evaluation (--guidance)")
    samplers = tuple(s.strip() for s in a.samplers.split(",")) if a.samplers else GUIDED_SAMPLERS
    teacher_steps = _int_list(a.teacher_steps, "--teacher-steps") if a.teacher_steps else None
    rows = evaluate_guided(a.run, a.out, steps=steps or [1, 2, 4, 8], ws=ws, num=a.num, seed=a.seed,
                           teacher_steps=teacher_steps, guided=a.guided_dir, samplers=samplers, device=a.device,
                           progress=not a.no_progress)
    print(guided_tables(rows))
    print(f"report written to {Path(a.out) if a.out else Path(a.run) / 'eval'}")


def _int_list(text: str, name: str) -> list[int]:
    try:
        values = [int(s) for s in text.split(",")]
    except ValueError:
        raise ConfigError(f"{name} must be comma-separated integers such as 1,2,4,8, got {text!r}") from None
    if any(v < 1 for v in values):
        raise ConfigError(f"{name} values must be >= 1, got {text!r}")
    return values


# The 2-D demo: a shorter version of the toy2d preset (about 5 minutes on 2 CPU cores); --quick: under a minute.
DEMO = ["train.steps=6000", "distill.start_steps=64", "distill.updates_per_round=1500",
        "distill.final_updates_per_round=3000"]
QUICK = ["train.steps=1500", "train.checkpoint_every=500", "distill.start_steps=16",
         "distill.updates_per_round=300", "distill.final_updates_per_round=600"]
# The image demo is the fashion_mnist preset (teacher ~15 min, distillation 32 -> 1 ~10 min on 2 CPU cores);
# --quick: a few-minute smoke test on 2000 images that shows the pipeline, not quality.
IMAGE_QUICK = ["train.steps=30", "train.checkpoint_every=10", "data.limit=2000", "distill.start_steps=4",
               "distill.updates_per_round=4", "distill.final_updates_per_round=4"]


def _scaled(cfg, scale: float):
    """cfg with teacher steps and distillation updates multiplied by `scale` (at least 1 each)."""
    from dataclasses import replace

    if scale == 1.0:
        return cfg
    if not (scale > 0):
        raise ConfigError(f"--scale must be > 0, got {scale}")
    t, d = cfg.train, cfg.distill
    return replace(cfg, train=replace(t, steps=max(1, round(t.steps * scale))),
                   distill=replace(d, updates_per_round=max(1, round(d.updates_per_round * scale)),
                                   final_updates_per_round=max(0, round(d.final_updates_per_round * scale)))
                   ).validate()


def cmd_demo(a: argparse.Namespace) -> None:
    from .data.images import IMAGE_DATASETS
    from .evaluation.report import evaluate_run
    from .training.rounds import distill
    from .training.teacher import train_teacher

    _at_least("--num", a.num)
    images = a.data in IMAGE_DATASETS
    if images:
        if a.data != "fashion-mnist":
            raise ConfigError(f"the demo runs on fashion-mnist or 2-D data; for {a.data} use "
                              "'progdistill train/distill/evaluate' with --config and --set data.root=...")
        overrides = IMAGE_QUICK if a.quick else []
        # Fetch Fashion-MNIST (checksums verified) only if it is neither in the system folder nor in the cache.
        cfg = load_config("fashion_mnist", overrides + ["data.download=true", f"device={json.dumps(a.device)}"]
                          + a.overrides)
        num = a.num if a.num is not None else (100 if a.quick else 500)
    else:
        overrides = [f"data.name={json.dumps(a.data)}", *DEMO] + (QUICK if a.quick else [])
        cfg = load_config("toy2d", overrides + [f"device={json.dumps(a.device)}"] + a.overrides)
        num = a.num if a.num is not None else 10_000
    cfg = _scaled(cfg, a.scale)
    out = Path(a.out)
    _check_fresh_out(out, "teacher.json", a.force)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(dump_json(cfg))
    progress = not a.no_progress
    print(f"[1/3] training a {cfg.data.name} teacher for {cfg.train.steps} steps")
    stem = train_teacher(cfg, out, progress=progress)
    print(f"[2/3] distilling {cfg.distill.start_steps} -> {cfg.distill.target_steps} steps")
    distill(stem, out, cfg, progress=progress)
    print(f"[3/3] evaluating every sampler and student on {num} samples each")
    device = "cuda" if cfg.device == "cuda" or (cfg.device == "auto" and _cuda()) else "cpu"
    extra = {"samplers": ("teacher_ddim", "dpm_solver", "student"), "device": device} if images else {}
    rows = evaluate_run(out, out / "eval", num=num, progress=progress, **extra)
    _print_report(rows)
    print(f"report, plot and samples in {out / 'eval'}")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def cmd_config(a: argparse.Namespace) -> None:
    print(dump_json(load_config(a.config, a.overrides)))


def cmd_export_diffusers(a: argparse.Namespace) -> None:
    from .interop.diffusers_io import export_diffusers
    from .checkpoint import read_record

    _at_least("--steps", a.steps)
    _at_least("--train-timesteps", a.train_timesteps)
    if a.steps is not None:
        _warn_off_student(read_record(a.ckpt), a.steps)
    s = export_diffusers(a.ckpt, Path(a.out), steps=a.steps, train_timesteps=a.train_timesteps,
                         clip=False if a.no_clip else None)
    print(f"diffusers pipeline written to {a.out}: {s['steps']} steps, prediction_type {s['prediction_type']}, "
          f"{s['num_train_timesteps']} training timesteps\n  pipe = {s['load'].replace('folder', repr(a.out))}\n"
          f"  images = {s['call']}.images")


def cmd_import_diffusers(a: argparse.Namespace) -> None:
    from .interop.diffusers_io import import_diffusers

    out = Path(a.out)
    _check_fresh_out(out, "teacher.json", a.force)
    cfg = load_config(a.config, a.overrides)
    stem = import_diffusers(a.model, out, cfg)
    print(f"teacher saved: {stem}.safetensors\n  distil it: progdistill distill --from {stem} "
          "--set distill.start_steps=N")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="progdistill",
        description="Progressive distillation of diffusion samplers (Salimans & Ho, ICLR 2022): train a teacher, "
                    "halve its DDIM step count round by round, and measure quality against steps.",
        epilog=EPILOG)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a teacher diffusion model (continuous time)", epilog=EPILOG)
    _config_args(p, default=None)
    p.add_argument("--resume", action="store_true",
                   help="continue the unfinished run in --out from its newest checkpoint, exactly")
    p.add_argument("--out", required=True, help="run folder to create (teacher.safetensors/.json, checkpoints/)")
    p.add_argument("--force", action="store_true", help="write into a folder that already holds a run")
    p.add_argument("--label-dropout", type=float, metavar="P",
                   help="classifier-free guidance: replace each label by the null class with probability P, so the "
                        "teacher also learns the unconditional model (= --set train.label_dropout=P; e.g. 0.1)")
    _progress_arg(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("distill", help="progressively distil a teacher (or continue from a saved student)",
                       epilog="The checkpoint's own config is the base; --config/--set change its [distill] "
                              "(with --guided also [guided]) and [perf] sections, device and mixed_precision.")
    p.add_argument("--from", dest="from_ckpt", metavar="CKPT",
                   help="teacher or student checkpoint (path without suffix, or the .json/.safetensors file)")
    p.add_argument("--resume", action="store_true",
                   help="continue the distillation in --out from its newest mid-round checkpoint (or last round)")
    _config_args(p, default=None)
    p.add_argument("--out", help="run folder for students/ (default: the checkpoint's run folder; with --guided, "
                   "RUN/guided)")
    g = p.add_argument_group("guided distillation (Meng et al. 2023; docs/guided.md)")
    g.add_argument("--guided", action="store_true",
                   help="from a teacher trained with label dropout: stage 1 trains a student conditioned on the "
                        "guidance weight w (OUT/stage1), stage 2 distils it round by round with w as an input")
    g.add_argument("--w-min", type=float, metavar="W", help="lowest w trained for (= --set guided.w_min; default 0)")
    g.add_argument("--w-max", type=float, metavar="W", help="highest w trained for (= --set guided.w_max; default 4); "
                   "diffusers' guidance_scale is 1 + w")
    g.add_argument("--w-margin", type=float, metavar="M", help="train on w in [w_min - M, w_max] so that w_min is not "
                   "the edge of the fitted range; sampling stays in [w_min, w_max] (= --set guided.w_margin; default "
                   "0, the paper's; the fashion_mnist preset: 1)")
    g.add_argument("--stage1-updates", type=int, metavar="N", help="stage-1 optimizer steps (= --set guided.stage1_updates)")
    _progress_arg(p)
    p.set_defaults(func=cmd_distill)

    p = sub.add_parser("sample", help="draw samples from a checkpoint")
    p.add_argument("--ckpt", required=True, help="teacher or student checkpoint")
    p.add_argument("--steps", type=int, help="sampling steps, >= 1 (default: the checkpoint's: a student's own, which "
                   "is the only count a student is trained for; a teacher's distill.start_steps)")
    p.add_argument("--sampler", choices=list(SAMPLERS), default="ddim",
                   help="; ".join(f"{name}: {s.description}" for name, s in SAMPLERS.items()))
    p.add_argument("--variance", choices=list(VARIANCES),
                   help="ancestral sampler variance (default: the checkpoint's)")
    p.add_argument("--no-clip", action="store_true",
                   help="do not clip x_hat to [-1, 1] (default: as the checkpoint records)")
    p.add_argument("--num", type=int, default=5000, help="number of samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--guidance", type=float, metavar="W",
                   help="classifier-free guidance weight w (diffusers' guidance_scale = 1 + w; 0: the conditional "
                        "model): a label-dropout teacher costs 2 network evaluations per step, a guided student 1 "
                        "(and needs a w within its trained range)")
    p.add_argument("--label", type=int, help="class label for every sample (class-conditional models; "
                   "default: all classes in turn)")
    p.add_argument("--device", default="cpu", help="torch device for sampling, e.g. cpu or cuda")
    p.add_argument("--out", required=True,
                   help="a .png (image grid, or scatter plot for 2-D data), or a .pt file {samples, labels}")
    _progress_arg(p)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("evaluate", help="metric vs step count for the teacher and every student of a run")
    p.add_argument("--run", required=True, help="run folder made by train/distill")
    p.add_argument("--out", help="report folder (default: RUN/eval)")
    p.add_argument("--steps", help="comma-separated teacher step counts (default: powers of two up to start)")
    p.add_argument("--num", type=int, default=10_000, help="samples per sampler and step count")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--no-ancestral", action="store_true", help="skip the teacher's ancestral sampler")
    p.add_argument("--samplers", help="images: comma-separated subset of teacher_ddim, teacher_ancestral, "
                   "dpm_solver, student, diffusers_ddim (default: all; diffusers_ddim, diffusers' own DDIM as the "
                   "model's scheduler is configured, is added for imported teachers whenever teacher_ddim runs)")
    p.add_argument("--max-baseline-steps", type=int, help="images: largest step count for the ancestral and "
                   "DPM-Solver baselines (default: all of --steps)")
    p.add_argument("--inception-weights", metavar="FILE", help="images: torch-fidelity's Inception-v3 weights "
                   "(weights-inception-2015-12-05-6726825d.pth) to add FID, KID and Inception score")
    p.add_argument("--device", default="cpu", help="images: torch device for sampling and metrics")
    p.add_argument("--reference-steps", type=int, metavar="N",
                   help="images: the teacher DDIM step count every sampler's output is compared with, sample for "
                        "sample from the same noise (teacher_rms, teacher_psnr; default: the largest of --steps)")
    g = p.add_argument_group("guided runs (docs/guided.md)")
    g.add_argument("--guidance", metavar="W,W,...", help="sweep these guidance weights (paper convention; "
                   "guidance_scale = 1 + w): the guided teacher's DDIM (2 network evaluations per step) and the "
                   "guided students (student, student_stochastic) per steps and w; metrics frechet_classifier, "
                   "class_accuracy, nfe; plot quality_vs_accuracy.png. Fashion-MNIST-shaped 10-class runs only")
    g.add_argument("--teacher-steps", metavar="N,N,...", help="with --guidance: further step counts for the guided "
                   "teacher, e.g. its reference 128 (default: the largest of --steps)")
    g.add_argument("--guided-dir", metavar="DIR", help="with --guidance: the guided distillation's folder "
                   "(default: RUN/guided)")
    _progress_arg(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "demo", help="train, distil and evaluate end to end on Fashion-MNIST (~35 min on 2 CPU cores) or 2-D data",
        description="Train a small class-conditional U-Net teacher on Fashion-MNIST (about 15 minutes on 2 CPU "
                    "cores), distil it from 32 sampling steps down to 1 (about 10 minutes), and evaluate the "
                    "teacher's DDIM, DPM-Solver++(2M) and every student (a few minutes). Leaves report.json/.md, "
                    "a plot of the classifier Frechet distance against steps and one sample grid per step count "
                    "in OUT/eval. With --data ring (or checkerboard, moons, swissroll) it runs the 2-D version "
                    "(about 5 minutes). Give it more time with --scale, a GPU with --device cuda.")
    p.add_argument("--out", required=True, help="run folder to create")
    p.add_argument("--data", default="fashion-mnist",
                   help="fashion-mnist (default; from /usr/share/datasets/fashion-mnist, see --set data.root=... "
                        "and --set data.download=true) or a 2-D distribution: ring, checkerboard, moons, swissroll")
    p.add_argument("--quick", action="store_true", help="a much shorter run (a few minutes), for a smoke test")
    p.add_argument("--scale", type=float, default=1.0,
                   help="multiply teacher steps and distillation updates (e.g. 4 on a GPU for better quality)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--num", type=int, help="evaluation samples per sampler and step count "
                   "(default: 500 for images, 10000 for 2-D data)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config value of the preset (repeatable)")
    p.add_argument("--force", action="store_true", help="write into a folder that already holds a run")
    _progress_arg(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "export-diffusers", help="write a checkpoint as a diffusers pipeline folder (UNet2DModel + DDIMScheduler)",
        description="Write a standard diffusers pipeline folder whose DDIM sampler takes exactly the steps of "
                    "`progdistill sample` (same noise, same images to float rounding). Unconditional eps/x/v "
                    "models load with DDIMPipeline.from_pretrained(OUT); class-conditional and 'both' models ship "
                    "their pipeline/component code and load with DiffusionPipeline.from_pretrained(OUT, "
                    "trust_remote_code=True).")
    p.add_argument("--ckpt", required=True, help="student or teacher checkpoint (image model)")
    p.add_argument("--out", required=True, help="new folder for the pipeline")
    p.add_argument("--steps", type=int, help="sampling steps the pipeline is set up for (default: the student's)")
    p.add_argument("--train-timesteps", type=int, help="the scheduler's num_train_timesteps, a multiple of the "
                   "steps (default: the multiple nearest 1024; imported models keep their own)")
    p.add_argument("--no-clip", action="store_true", help="set clip_sample=False (default: the config's)")
    p.set_defaults(func=cmd_export_diffusers)

    p = sub.add_parser(
        "import-diffusers", help="make a diffusers UNet2DModel + DDPM/DDIM scheduler folder a progdistill teacher",
        description="Read a diffusers pipeline folder (unet/ with a UNet2DModel, scheduler/ with a DDPMScheduler "
                    "or DDIMScheduler: epsilon, v_prediction or sample; linear, scaled_linear or squaredcos_cap_v2 "
                    "betas) and write OUT/teacher, a teacher on the model's own discrete schedule. --config/--set "
                    "give the data it is distilled on (its shape must match the model) and the [distill] settings.",
        epilog="Then: progdistill distill --from OUT/teacher --set distill.start_steps=N")
    p.add_argument("--model", required=True, help="the diffusers folder (holds unet/ and scheduler/)")
    p.add_argument("--config", required=True, metavar="PRESET|FILE",
                   help=f"preset or TOML file for the data and [distill] ({', '.join(preset_names())})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config value, e.g. --set data.root=/data/cifar-10-batches-py (repeatable)")
    p.add_argument("--out", required=True, help="run folder to create")
    p.add_argument("--force", action="store_true", help="write into a folder that already holds a run")
    p.set_defaults(func=cmd_import_diffusers)

    p = sub.add_parser("config", help="print the resolved config as JSON")
    _config_args(p)
    p.set_defaults(func=cmd_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .checkpoint import CheckpointError
    from .training.loop import NonFiniteLossError

    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ConfigError, CheckpointError, NonFiniteLossError, ValueError, FileNotFoundError) as e:
        print(f"progdistill: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("progdistill: interrupted; checkpoints written so far are intact", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
