"""Benchmark: guided distillation (Meng et al. 2023) on Fashion-MNIST. A class-conditional teacher trained with label
dropout, one w-conditioned student for w in [0, 4] (stage 1, then stage 2 from --start-steps down to 1 step), and a
single-w student distilled the same way at w = --single-w (range [w, w]) with the same compute; evaluated at
w in --ws with the classifier Frechet distance and class accuracy (evaluation/guided.py).

    python benchmarks/guided_fashion_mnist.py --out runs/bench-guided            # all stages, ~90 min on 2 cores
    python benchmarks/guided_fashion_mnist.py --out DIR --stop-after teacher     # one stage at a time
                                                          # (teacher, guided, evaluate, single_w)
    python benchmarks/guided_fashion_mnist.py --out DIR --only single_w          # beside --stop-after evaluate
    python benchmarks/guided_fashion_mnist.py --out DIR2 --teacher-rows-from DIR ... # an ablation of the students
    python benchmarks/guided_fashion_mnist.py --out DIR --stage1-updates 3000 --start-steps 64 --final-updates 600
                                   # more compute: BENCHMARKS.md's seventh run (guided stage ~55 min on 2 cores)

--teacher-rows-from takes the guided teacher's rows (most of the evaluation's time) from an earlier run of this
script instead of sampling them again: allowed only when DIR2/run holds a byte-identical copy of that run's teacher
and the evaluation settings (--ws, --num, --steps, --teacher-steps) are the same, so the rows are the ones this
run would compute (every sampler starts from the same seeded noise and labels).

Every stage is skipped when its result is in DIR, and a stage killed midway resumes exactly from its last
checkpoint, so the command can simply be run again. Writes DIR/report.json (rows {"sampler", "steps", "w",
"metric", "value"}; samplers teacher_ddim (guided, 2 network evaluations per step), student, student_stochastic and
student_single_w), DIR/report.md, DIR/quality_vs_accuracy.png, DIR/samples/ and DIR/goals.json (issue 13's goals
checked against the measured values), DIR/times.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from pathlib import Path

import torch

STAGES = ("teacher", "guided", "evaluate", "single_w")
TEACHER = ["train.label_dropout=0.1", "train.steps=2000", "train.checkpoint_every=250"]


def distill_settings(a) -> list[str]:
    return [f"distill.start_steps={a.start_steps}", "distill.target_steps=1",
            f"distill.updates_per_round={a.updates}", f"distill.final_updates_per_round={a.final_updates}",
            "distill.long_round_max_steps=2", "distill.checkpoint_every=100", "distill.log_samples=0",
            f"guided.stage1_updates={a.stage1_updates}", "guided.checkpoint_every=100",
            f"guided.stage1_lr={a.stage1_lr}", f"guided.class_gate={str(a.class_gate).lower()}",
            f"guided.w_margin={a.w_margin}"]


def goals(rows: list[dict], ws: list[float], single_w: float, teacher_steps: int) -> dict:
    """Issue 13's goals, each with the measured ratio or difference and whether it is met."""
    v = {(r["sampler"], r["steps"], r["w"], r["metric"]): r["value"] for r in rows}
    fd, acc = "frechet_classifier", "class_accuracy"
    out = {}
    for w in ws:
        ref = v.get(("teacher_ddim", teacher_steps, w, fd))
        if ref is None:
            continue
        for k, bound in ((4, 1.2), (1, 2.0)):
            s = v.get(("student", k, w, fd))
            if s is not None:
                out[f"w={w:g}: student{k} FD / teacher{teacher_steps} FD <= {bound}"] = {
                    "ratio": round(s / ref, 3), "met": s / ref <= bound}
        a4, at = v.get(("student", 4, w, acc)), v.get(("teacher_ddim", teacher_steps, w, acc))
        if a4 is not None and at is not None:
            out[f"w={w:g}: |student4 accuracy - teacher{teacher_steps} accuracy| <= 2 points"] = {
                "difference_points": round(100 * (a4 - at), 2), "met": abs(a4 - at) <= 0.02}
        for k in (1, 2, 4):
            s, t = v.get(("student", k, w, fd)), v.get(("teacher_ddim", k, w, fd))
            if s is not None and t is not None:
                out[f"w={w:g}: teacher{k} FD / student{k} FD >= 2"] = {"ratio": round(t / s, 3), "met": t / s >= 2}
    for k in (1, 2, 4):
        s, o = v.get(("student", k, single_w, fd)), v.get(("student_single_w", k, single_w, fd))
        if s is not None and o is not None:
            out[f"w={single_w:g}: w-conditioned student{k} FD / single-w student{k} FD <= 1.1"] = {
                "ratio": round(s / o, 3), "met": s / o <= 1.1}
    return out


def reusable_teacher_rows(prev: Path, run: Path, a, ws: list[float], steps: list[int]) -> list[dict]:
    """The teacher_ddim and data rows of PREV's report, after checking that this run would compute the same ones."""
    import hashlib

    from progdistill import runfolder

    report, settings = prev / "report.json", prev / "goals.json"
    if not report.is_file() or not settings.is_file():
        raise SystemExit(f"--teacher-rows-from {prev}: no report.json and goals.json there (an evaluated run of "
                         "this script)")
    digest = [hashlib.sha256(runfolder.teacher_stem(r).with_suffix(".safetensors").read_bytes()).hexdigest()
              for r in (prev / "run", run)]
    if digest[0] != digest[1]:
        raise SystemExit(f"--teacher-rows-from {prev}: its teacher is not byte-identical to {run}'s; evaluate the "
                         "teacher again (drop the option)")
    theirs = json.loads(settings.read_text())["settings"]
    differ = [k for k in ("ws", "num", "steps", "teacher_steps") if theirs.get(k) != getattr(a, k)]
    if differ:
        raise SystemExit(f"--teacher-rows-from {prev}: evaluated with other {', '.join(differ)} "
                         f"({', '.join(f'{k}={theirs.get(k)}' for k in differ)})")
    rows = [r for r in json.loads(report.read_text()) if r["sampler"] in ("teacher_ddim", "data")]
    missing = [(k, w) for k in [*steps, a.teacher_steps] for w in ws
               if not any(r["sampler"] == "teacher_ddim" and r["steps"] == k and r["w"] == w for r in rows)]
    if missing:
        raise SystemExit(f"--teacher-rows-from {prev}: no teacher rows at (steps, w) {missing}")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--stop-after", choices=STAGES, help="stop after this stage")
    p.add_argument("--only", choices=STAGES, help="run this stage alone (its inputs must be in DIR); e.g. train the "
                   "single-w student in a second process beside `--stop-after evaluate`, then rerun without it")
    p.add_argument("--ws", default="0,1,2,4", help="guidance weights evaluated (paper convention; scale = 1 + w)")
    p.add_argument("--num", type=int, default=500, help="samples per sampler, step count and w")
    p.add_argument("--steps", default="1,2,4,8", help="step counts of students and teacher evaluated")
    p.add_argument("--teacher-steps", type=int, default=128, help="the guided teacher's reference step count")
    p.add_argument("--start-steps", type=int, default=32, help="stage 2 starts from the stage-1 model at N steps")
    p.add_argument("--stage1-updates", type=int, default=600)
    p.add_argument("--stage1-lr", type=float, default=1e-3, help="stage 1's peak learning rate (0: distill.lr)")
    p.add_argument("--class-gate", action=argparse.BooleanOptionalAction, default=True,
                   help="guided.class_gate: w also scales the class embedding's offset from the null class's")
    p.add_argument("--w-margin", type=float, default=1.0, help="guided.w_margin: the w-conditioned student trains on w "
                   "in [w_min - M, w_max] (0: the paper's [w_min, w_max]; a single w has none)")
    p.add_argument("--updates", type=int, default=150, help="updates per stage-2 round")
    p.add_argument("--final-updates", type=int, default=300, help="updates of the 2- and 1-step rounds")
    p.add_argument("--single-w", type=float, default=2.0, help="w of the single-w student (same compute)")
    p.add_argument("--teacher-rows-from", metavar="DIR", help="reuse the guided teacher's rows of an earlier run of "
                   "this script with a byte-identical teacher and the same evaluation settings (see above)")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="config overrides for every stage")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    from progdistill import runfolder
    from progdistill.config import load_config

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    progress = not a.no_progress
    ws = [float(w) for w in a.ws.split(",")]
    steps = [int(k) for k in a.steps.split(",")]
    times_path = out / "times.json"

    def timed(name, fn):  # re-reads times.json, which a second process (--only) may have written meanwhile
        t0 = time.time()
        fn()
        times = json.loads(times_path.read_text()) if times_path.is_file() else {}
        times[name] = round(time.time() - t0 + times.get(name, 0.0), 1)
        times_path.write_text(json.dumps(times, indent=2))

    run = out / "run"
    cfg = load_config("fashion_mnist", [*TEACHER, *distill_settings(a), *a.overrides])
    stages = STAGES[: STAGES.index(a.stop_after) + 1] if a.stop_after else STAGES
    if a.only:
        stages = (a.only,)

    if "teacher" in stages and not runfolder.has_teacher(run):
        from progdistill.training.teacher import train_teacher

        resume = any(runfolder.teacher_checkpoints(run).glob("*.json"))
        print(f"[teacher] label dropout 0.1 -> {run}", flush=True)
        timed("teacher_s", lambda: train_teacher(None if resume else cfg, run, progress=progress, resume=resume))

    def guided(folder: Path, extra: list[str]):
        from progdistill.training.guided import distill_guided

        done = runfolder.saved_students(folder)
        if 1 in done:
            return
        resume = runfolder.is_guided_run(folder) or any(runfolder.round_checkpoints(folder).glob("*.json"))
        dcfg = None if resume else load_config("fashion_mnist", [*TEACHER, *distill_settings(a), *a.overrides,
                                                                 *extra])
        distill_guided(None if resume else runfolder.teacher_stem(run), folder, dcfg, progress=progress,
                       resume=resume)

    if "guided" in stages:
        print(f"[guided] w in [0, 4]: stage 1 ({a.stage1_updates} updates), stage 2 {a.start_steps} -> 1", flush=True)
        timed("guided_s", lambda: guided(runfolder.guided_dir(run), ["guided.w_min=0", "guided.w_max=4"]))

    from progdistill.evaluation.guided import evaluate_guided, guided_tables
    from progdistill.evaluation.plots import quality_vs_accuracy

    def write_report(rows: list[dict]) -> None:
        (out / "report.json").write_text(json.dumps(rows, indent=2))
        for name in ("report.md", "quality_vs_accuracy.png"):
            shutil.copy(out / "eval" / name, out / name)
        result = goals(rows, ws, a.single_w, a.teacher_steps)
        (out / "goals.json").write_text(json.dumps({
            "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
            "date": time.strftime("%Y-%m-%d"), "settings": vars(a), "goals": result}, indent=2))
        for name, g in result.items():
            print(f"{'MET   ' if g['met'] else 'MISSED'} {name}: {g.get('ratio', g.get('difference_points'))}")

    def evaluate_reusing_teacher(prev: Path) -> list[dict]:
        teacher_rows = reusable_teacher_rows(prev, run, a, ws, steps)
        rows = evaluate_guided(run, out / "eval", steps=steps, ws=ws, num=a.num, teacher_steps=[a.teacher_steps],
                               samplers=("student", "student_stochastic"), progress=progress)
        prev_data = [r for r in teacher_rows if r["sampler"] == "data"]
        if prev_data != [r for r in rows if r["sampler"] == "data"]:
            raise SystemExit(f"the data rows of {prev} differ from this run's: not the same evaluation set")
        rows += [r for r in teacher_rows if r["sampler"] == "teacher_ddim"]
        (out / "eval" / "report.json").write_text(json.dumps(rows, indent=2))
        (out / "eval" / "report.md").write_text(guided_tables(rows))
        quality_vs_accuracy(rows, out / "eval" / "quality_vs_accuracy.png")
        return rows

    if "evaluate" in stages and not (out / "eval" / "report.json").is_file():
        print(f"[evaluate] w in {ws}, {a.num} samples per row"
              + (f"; the teacher's rows from {a.teacher_rows_from}" if a.teacher_rows_from else ""), flush=True)
        if a.teacher_rows_from:
            timed("evaluate_s", lambda: write_report(evaluate_reusing_teacher(Path(a.teacher_rows_from))))
        else:
            timed("evaluate_s", lambda: write_report(evaluate_guided(
                run, out / "eval", steps=steps, ws=ws, num=a.num, teacher_steps=[a.teacher_steps],
                progress=progress)))
    if "single_w" in stages and not (out / "eval_single_w" / "report.json").is_file():
        print(f"[single_w] w = {a.single_w:g} only, the same updates", flush=True)
        timed("single_w_s", lambda: guided(out / "single_w", [f"guided.w_min={a.single_w}",
                                                               f"guided.w_max={a.single_w}"]))
        if not (out / "eval" / "report.json").is_file():
            print(f"[single_w] trained; its comparison needs the evaluate stage: run again once {out / 'eval'} "
                  "holds report.json", flush=True)
            return

        def compare():
            single = evaluate_guided(run, out / "eval_single_w", steps=steps, ws=[a.single_w], num=a.num,
                                     guided=out / "single_w", samplers=("student",), progress=progress)
            rows = json.loads((out / "eval" / "report.json").read_text())
            write_report(rows + [r | {"sampler": "student_single_w"} for r in single if r["sampler"] == "student"])

        timed("evaluate_single_w_s", compare)


if __name__ == "__main__":
    main()
