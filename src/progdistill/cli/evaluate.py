"""`progdistill evaluate`: a run's teacher samplers and students against step count (or, guided, against w)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import runfolder
from ..config import ConfigError
from .common import add_progress_arg, at_least, int_list, name_list


def register(commands: argparse._SubParsersAction) -> None:
    """Add the evaluate command and its options."""
    parser = commands.add_parser("evaluate", help="metric vs step count for the teacher and every student of a run")
    parser.add_argument("--run", required=True, help="run folder made by train/distill")
    parser.add_argument("--out", help="report folder (default: RUN/eval)")
    parser.add_argument("--steps", help="comma-separated teacher step counts (default: powers of two up to start)")
    parser.add_argument("--num", type=int, default=10_000, help="samples per sampler and step count")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--no-ancestral", action="store_true", help="skip the teacher's ancestral sampler")
    parser.add_argument("--samplers", help="images: comma-separated subset of teacher_ddim, teacher_ancestral, "
                        "dpm_solver, student, diffusers_ddim (default: all; diffusers_ddim, diffusers' own DDIM as the "
                        "model's scheduler is configured, is added for imported teachers whenever teacher_ddim runs)")
    parser.add_argument("--max-baseline-steps", type=int, help="images: largest step count for the ancestral and "
                        "DPM-Solver baselines (default: all of --steps)")
    parser.add_argument("--inception-weights", metavar="FILE", help="images: torch-fidelity's Inception-v3 weights "
                        "(weights-inception-2015-12-05-6726825d.pth) to add FID, KID and Inception score")
    parser.add_argument("--device", default="cpu", help="images: torch device for sampling and metrics")
    parser.add_argument("--method", action="append", default=[], metavar="LABEL=RUN",
                        help="images: add the students of another distillation of this teacher (e.g. cd=runs/x/cd "
                             "from 'distill --method cd') as rows named LABEL, each with its budget; report.md then "
                             "sets every method against the teacher's best (repeatable; docs/methods.md)")
    parser.add_argument("--reference-steps", type=int, metavar="N",
                        help="images: the teacher DDIM step count every sampler's output is compared with, sample for "
                             "sample from the same noise (teacher_rms, teacher_psnr; default: the largest of --steps)")
    group = parser.add_argument_group("guided runs (docs/guided.md)")
    group.add_argument("--guidance", metavar="W,W,...", help="sweep these guidance weights (paper convention; "
                       "guidance_scale = 1 + w): the guided teacher's DDIM (2 network evaluations per step) and the "
                       "guided students (student, student_stochastic) per steps and w; metrics frechet_classifier, "
                       "class_accuracy, nfe; plot quality_vs_accuracy.png. Fashion-MNIST-shaped 10-class runs only")
    group.add_argument("--teacher-steps", metavar="N,N,...", help="with --guidance: further step counts for the guided "
                       "teacher, e.g. its reference 128 (default: the largest of --steps)")
    group.add_argument("--guided-dir", metavar="DIR", help="with --guidance: the guided distillation's folder "
                       "(default: RUN/guided)")
    add_progress_arg(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    """Evaluate --run (a guided sweep with --guidance), print the tables and say where the report is."""
    steps = int_list(args.steps, "--steps") if args.steps is not None else None
    at_least("--num", args.num)
    at_least("--max-baseline-steps", args.max_baseline_steps)
    refuse_text_to_image(Path(args.run))
    if args.guidance is not None:
        run_guided(args, steps)
    else:
        run_plain(args, steps)
    print(f"report written to {Path(args.out) if args.out else runfolder.eval_dir(args.run)}")


def refuse_text_to_image(run: Path) -> None:
    """A latent text-to-image run is not evaluated here yet: say so, and what does evaluate one."""
    import json

    try:
        record = json.loads(runfolder.teacher_record(run).read_text())
    except (OSError, ValueError):
        return  # the evaluation itself reports a missing or broken teacher
    from ..nets.families import FAMILIES

    kind = record.get("model", {}).get("kind")
    fam = FAMILIES.get(kind) if isinstance(kind, str) else None
    if fam is not None and fam.text_conditioned:
        raise ConfigError(f"{run} holds a latent text-to-image model: `progdistill evaluate` does not evaluate those "
                          "yet; sample with `progdistill sample --prompt`, or see how benchmarks/"
                          "latent_fashion_mnist.py --stage evaluate measures its runs (docs/latent.md)")


def run_plain(args: argparse.Namespace, steps: list[int] | None) -> None:
    """Evaluate the teacher's samplers and every student of the run, and print a table per metric."""
    from ..evaluation.report import evaluate_run
    from ..evaluation.rows import BASELINE_ROWS

    if args.teacher_steps is not None or args.guided_dir is not None:
        raise ConfigError("--teacher-steps and --guided-dir belong to a guided evaluation: add --guidance W,W,...")
    options = {}
    if args.samplers:
        options["samplers"] = name_list(args.samplers)
    if args.max_baseline_steps is not None:
        options["max_steps"] = dict.fromkeys(BASELINE_ROWS, args.max_baseline_steps)
    if args.inception_weights:
        options["inception_weights"] = args.inception_weights
    if args.device != "cpu":
        options["device"] = args.device
    if args.method:
        options["methods"] = method_runs(args.method)
    if args.reference_steps is not None:
        if args.reference_steps < 1:
            raise ConfigError(f"--reference-steps must be >= 1, got {args.reference_steps}")
        options["reference_steps"] = args.reference_steps
    rows = evaluate_run(args.run, args.out, steps=steps, num=args.num, seed=args.seed, ancestral=not args.no_ancestral,
                        progress=not args.no_progress, **options)
    print_report(rows)


def method_runs(items: list[str]) -> dict[str, Path]:
    """--method LABEL=RUN options as {label: run folder}; ConfigError for a malformed or repeated one."""
    runs: dict[str, Path] = {}
    for item in items:
        label, sep, folder = item.partition("=")
        if not sep or not label or not folder:
            raise ConfigError(f"--method takes LABEL=RUN (e.g. cd=runs/fashion/cd), got {item!r}")
        if label in runs:
            raise ConfigError(f"--method label {label!r} is given twice")
        if not Path(folder).is_dir():
            raise ConfigError(f"--method {item}: {folder} is not a folder")
        runs[label] = Path(folder)
    return runs


def run_guided(args: argparse.Namespace, steps: list[int] | None) -> None:
    """Sweep the guided teacher and students over --guidance weights and print the tables."""
    from ..evaluation.guided import GUIDED_SAMPLERS, evaluate_guided, guided_tables

    try:
        weights = [float(w) for w in args.guidance.split(",")]
    except ValueError:
        raise ConfigError(f"--guidance must be comma-separated numbers such as 0,1,2,4, got {args.guidance!r}"
                          ) from None
    for name in ("inception_weights", "max_baseline_steps", "reference_steps"):
        if getattr(args, name) is not None:
            raise ConfigError(f"--{name.replace('_', '-')} does not apply to a guided evaluation (--guidance)")
    if args.method:
        raise ConfigError("--method does not apply to a guided evaluation (--guidance): cd and tract distil "
                          "unguided and class-conditional teachers")
    samplers = name_list(args.samplers) if args.samplers else GUIDED_SAMPLERS
    teacher_steps = int_list(args.teacher_steps, "--teacher-steps") if args.teacher_steps else None
    rows = evaluate_guided(args.run, args.out, steps=steps or [1, 2, 4, 8], ws=weights, num=args.num, seed=args.seed,
                           teacher_steps=teacher_steps, guided=args.guided_dir, samplers=samplers, device=args.device,
                           progress=not args.no_progress)
    print(guided_tables(rows))


def print_report(rows: list[dict]) -> None:
    """Print one markdown table per metric of an evaluation report, saying which way is better, then the students
    of every method against the teacher's best, with their budgets."""
    from ..evaluation.images import CLASSIFIER_METRIC, HIGHER_IS_BETTER
    from ..evaluation.methods import BUDGET_METRICS, methods_table
    from ..evaluation.report import markdown_table

    for metric in dict.fromkeys(row["metric"] for row in rows if row["metric"] not in BUDGET_METRICS):
        print(f"{metric} ({'higher' if metric in HIGHER_IS_BETTER else 'lower'} is better)")
        print(markdown_table(rows, metric, "Floor ('data' row)"))
    students = list(dict.fromkeys(row["sampler"] for row in rows if row["metric"] in BUDGET_METRICS))
    if students and any(row["metric"] == CLASSIFIER_METRIC for row in rows):
        print("students by method, against the teacher's best")
        print(methods_table(rows, CLASSIFIER_METRIC, students))
