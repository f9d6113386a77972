"""Benchmark (issue 24): progressive distillation (PD), consistency distillation (CD, L2 and pseudo-Huber) and
TRACT distilled from one Fashion-MNIST teacher at equal budgets, evaluated in one report with the teacher's DDIM and
DPM-Solver++(2M) at 1, 2, 4 and 8 steps. Issue 30 adds the methods past the regression ceiling (stages `ceiling`
and `ceiling_eval`): dmd from the teacher and from pd's 1-step student, and adversarial pd, at the forward-equivalent
evaluations of the 300- and 900-update runs (see CEILING below).

    python benchmarks/methods_fashion_mnist.py --out DIR                  # every stage in order
    python benchmarks/methods_fashion_mnist.py --out DIR --stage teacher  # one stage (teacher, distill, evaluate)

Stages write into DIR: teacher/ (the teacher run), METHOD_bUPDATES/ (each method's run at each budget),
evaluate/ (report.json, report.md, methods_vs_steps.png) and goals.json (the issue's goals against the teacher's
best). Budgets are counted in student updates at one batch size (64); each run's record also counts teacher
network evaluations and images seen. Time on 2 CPU cores: see BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from progdistill.cli import main as _cli


def cli(args: list[str]) -> None:
    """A progdistill command in this process; a failure stops the benchmark (its message was printed)."""
    code = _cli(args)
    if code:
        raise SystemExit(f"progdistill {' '.join(args[:1])} failed (exit {code}): progdistill {' '.join(args)}")

# The teacher: the fashion_mnist preset (small class-conditional U-Net, v output, cosine schedule, EMA 0.995).
TEACHER = ["train.steps=2000", "train.lr=1e-3", "train.checkpoint_every=500"]
# Every method: the preset's [distill] (batch 64, lr 2e-4 annealed linearly per round or phase, from the teacher's
# 32-step grid to 1 step), the same optimizer, one budget in student updates.
COMMON = ["distill.start_steps=32", "distill.target_steps=1", "distill.checkpoint_every=100", "distill.log_samples=0"]
METHODS = {
    "pd": ["distill.method='pd'"],
    "cd_l2": ["distill.method='cd'", "distill.cd_metric='l2'"],
    "cd_huber": ["distill.method='cd'", "distill.cd_metric='pseudo_huber'"],
    "tract": ["distill.method='tract'", "distill.tract_phases=4"],  # 32 -> 8 -> 4 -> 2 -> 1
}
BUDGETS = (300, 900)  # student updates of the whole distillation
PD_ROUNDS = 5  # 32 -> 1


def budget_settings(method: str, updates: int) -> list[str]:
    """pd: the budget split equally over its 5 rounds; cd and tract: distill.total_updates."""
    if method == "pd":
        per = updates // PD_ROUNDS
        return [f"distill.updates_per_round={per}", "distill.final_updates_per_round=0"]
    return [f"distill.total_updates={updates}"]


def sets(items: list[str]) -> list[str]:
    return [x for s in items for x in ("--set", s)]


def run_name(method: str, updates: int) -> str:
    return f"{method}_b{updates}"


def stage_teacher(out: Path, progress: list[str]) -> None:
    if (out / "teacher" / "teacher.json").exists():
        print("teacher: already trained")
        return
    cli(["train", "--config", "fashion_mnist", "--out", str(out / "teacher"), *sets(TEACHER), *progress])


def stage_distill(out: Path, progress: list[str], only: list[str] | None) -> dict:
    times = {}
    for updates in BUDGETS:
        for method, settings in METHODS.items():
            name = run_name(method, updates)
            if only and name not in only:
                continue
            if (out / name / "students" / "student_0001steps.json").exists():
                print(f"{name}: already distilled")
                continue
            t0 = time.time()
            cli(["distill", "--from", str(out / "teacher" / "teacher"), "--out", str(out / name),
                 *sets(COMMON + settings + budget_settings(method, updates)), *progress])
            times[name] = round(time.time() - t0, 1)
            print(f"{name}: {times[name]} s")
    return times


TEACHER_STEPS = [1, 2, 4, 8, 16, 32, 64]  # the teacher's DDIM and DPM-Solver++(2M) rows
STUDENT_STEPS = (1, 2, 4, 8)


def stage_evaluate(out: Path, num: int, progress: list[str]) -> None:
    """One report: the teacher's DDIM at TEACHER_STEPS and DPM-Solver++(2M) up to 32 steps, every run's students at
    1, 2, 4 and 8 steps, with budgets; then the goals against the teacher's best."""
    from progdistill.evaluation.images import CLASSIFIER_METRIC
    from progdistill.evaluation.report import evaluate_run

    runs = {run_name(m, b): out / run_name(m, b) for b in BUDGETS for m in METHODS
            if (out / run_name(m, b) / "students" / "student_0001steps.json").exists()}
    t0 = time.time()
    rows = evaluate_run(out / "teacher", out / "evaluate", steps=TEACHER_STEPS, num=num,
                        samplers=("teacher_ddim", "dpm_solver"), max_steps={"dpm_solver": 32}, methods=runs,
                        method_steps=list(STUDENT_STEPS), progress=not progress)
    report = {"goals": goals(rows, CLASSIFIER_METRIC), "eval_s": round(time.time() - t0, 1), "num": num,
              "date": time.strftime("%Y-%m-%d")}
    (out / "goals.json").write_text(json.dumps(report, indent=2))
    plot_methods(rows, CLASSIFIER_METRIC, out / "evaluate" / "methods_vs_steps.png")
    (out / "evaluate" / "methods_table.md").write_text(pivot_tables(rows, CLASSIFIER_METRIC, out))
    print(json.dumps(report, indent=2))


def pivot_tables(rows: list[dict], metric: str, out: Path) -> str:
    """BENCHMARKS.md's tables: the metric by step count (teacher rows, then every run), and every run's budget with
    its wall time (timings.json)."""
    from progdistill.evaluation.methods import teacher_best

    best = teacher_best(rows, metric)
    v = {(r["sampler"], r["steps"], r["metric"]): r["value"] for r in rows}
    runs = [run_name(m, b) for b in BUDGETS for m in METHODS if (run_name(m, b), 1, metric) in v]
    cols = ["teacher_ddim", "dpm_solver", *runs]
    lines = [f"Teacher's best: {best['value']:.2f} ({best['sampler']} at {best['steps']} steps). Cells: {metric} "
             "(ratio to the teacher's best).", "", "| steps | " + " | ".join(cols) + " |",
             "|---:|" + "---:|" * len(cols)]
    for k in TEACHER_STEPS[::-1]:
        cells = [f"{v[(c, k, metric)]:.2f} ({v[(c, k, metric)] / best['value']:.2f}x)" if (c, k, metric) in v
                 else "" for c in cols]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    timings = json.loads((out / "timings.json").read_text()) if (out / "timings.json").exists() else {}
    lines += ["", "| run | student updates | images seen | teacher evals | self-teacher evals | wall time (s) |",
              "|---|---:|---:|---:|---:|---:|"]
    for r in runs:
        budget = [int(v.get((r, 1, b), 0)) for b in ("student_updates", "images_seen", "teacher_evals", "self_evals")]
        lines.append(f"| {r} | " + " | ".join(f"{b:,}" for b in budget) + f" | {timings.get(r, '')} |")
    return "\n".join(lines) + "\n"


def stage_cd_start(out: Path, num: int, progress: list[str]) -> None:
    """Where CD starts: a consistency student after 1 update (its teacher's x_hat but at t = 0, as cd_skip_scale 100
    makes it), sampled with the multistep consistency sampler at 1, 2, 4 and 8 steps, beside the teacher's DDIM from
    the same noise (evaluate_cd_start/)."""
    from progdistill.evaluation.report import evaluate_run

    run = out / "cd_l2_b1"
    if not (run / "students" / "student_0001steps.json").exists():
        cli(["distill", "--from", str(out / "teacher" / "teacher"), "--out", str(run),
             *sets(COMMON + METHODS["cd_l2"] + ["distill.total_updates=1"]), *progress])
    evaluate_run(out / "teacher", out / "evaluate_cd_start", steps=list(STUDENT_STEPS), num=num,
                 samplers=("teacher_ddim",), methods={"cd_l2_b1": run}, progress=not progress)


def goals(rows: list[dict], metric: str) -> dict:
    """Issue 24's goals, fixed before the run, against the teacher's best (evaluation/methods.py): at the largest
    budget, PD's 4-step student within 1.15x and its 1-step within 1.6x; at each budget and at 2, 4 and 8 steps, PD at
    least as good as every CD and TRACT run; at 8 steps the best student better than DPM-Solver++(2M) at 8."""
    from progdistill.evaluation.methods import teacher_best

    best = teacher_best(rows, metric)
    v = {(r["sampler"], r["steps"]): r["value"] for r in rows if r["metric"] == metric}
    out = {"teacher_best": {"sampler": best["sampler"], "steps": best["steps"], "value": best["value"]}}
    top = max(BUDGETS)
    for k, bound in ((4, 1.15), (1, 1.6)):
        if (run_name("pd", top), k) not in v:
            continue
        ratio = v[(run_name("pd", top), k)] / best["value"]
        out[f"pd_b{top} {k}-step / teacher's best <= {bound}"] = {"ratio": round(ratio, 3), "met": ratio <= bound}
    for b in BUDGETS:
        for k in (2, 4, 8):
            if (run_name("pd", b), k) not in v:
                continue
            pd = v[(run_name("pd", b), k)]
            for m in METHODS:
                if m != "pd" and (run_name(m, b), k) in v:
                    other = v[(run_name(m, b), k)]
                    out[f"b{b} {k} steps: pd <= {m}"] = {"pd": round(pd, 3), m: round(other, 3), "met": pd <= other}
    students = {(s, k): x for (s, k), x in v.items() if k == 8 and any(s == run_name(m, b) for m in METHODS
                                                                         for b in BUDGETS)}
    name, value = min(students.items(), key=lambda item: item[1])
    dpm = v[("dpm_solver", 8)]
    out["best 8-step student < dpm_solver 8"] = {"student": name[0], "value": round(value, 3),
                                                 "dpm_solver": round(dpm, 3), "met": value < dpm}
    return out


def plot_methods(rows: list[dict], metric: str, path: Path) -> None:
    """Quality against steps: a line per method and budget (solid: the larger budget), the teacher's DDIM and
    DPM-Solver++(2M), and the teacher's best as a dotted line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from progdistill.evaluation.methods import teacher_best

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours = dict(zip([*METHODS, "dmd", "dmd_from_pd", "pd_adv", "pd_adv_relaxed"],
                       ("C0", "C1", "C2", "C3", "C4", "C5", "C6", "C7")))
    for name in dict.fromkeys(r["sampler"] for r in rows if r["metric"] == metric and r["steps"] > 0):
        pts = sorted((r["steps"], r["value"]) for r in rows if r["sampler"] == name and r["metric"] == metric
                     and r["steps"] <= 8)
        method = name.rsplit("_b", 1)[0]
        style = dict(color=colours.get(method, "gray"), marker="o",
                     linestyle="-" if name.endswith(f"_b{max(BUDGETS)}") else "--")
        if method not in colours:
            style = dict(color="black" if name == "dpm_solver" else "gray", marker="s", linestyle=":")
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label=name, **style)
    best = teacher_best(rows, metric)
    ax.axhline(best["value"], color="black", linewidth=0.8, linestyle=(0, (1, 2)),
               label=f"teacher's best ({best['sampler']} {best['steps']})")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sampling steps")
    ax.set_ylabel(f"{metric} (lower is better)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# --- Issue 30: past the regression ceiling --------------------------------------------------------------------------
# Every run is put on one axis, forward-equivalent network evaluations (a backward counted as two; the students'
# records count them). The regression runs above spend 5 per training image (2 teacher evaluations, the student's
# forward and backward): pd_b300 96 000, pd_b900 288 000, and cd and tract the same.
BATCH = 64


def pd_fe(updates: int) -> int:
    """The forward-equivalent evaluations of a 300- or 900-update pd, cd or tract run of this benchmark."""
    return updates * BATCH * 5


# dmd: DMD2 with the project's defaults (discriminator weight 3e-3, approximate R1, t in [0.02, 0.98]) except
# DMD_FAKE_UPDATES fake-score (and head) updates per generator update (DMD2: 5; fewer buys more generator updates
# on the same budget) and the generator's learning rate, 2e-5 against the fake score's 2e-4. Both were chosen by
# benchmarks/dmd_settings_probe.sh (40 updates from pd_b300's 1-step student, 500 samples from another seed than
# the report's): the generator at 2e-4 went from pd's 77.6 to 237.3, at 2e-5 to 61.6 (5 fake updates: 62.7, at 3x
# the evaluations). Runs whose "fe" is set get as many generator updates as fit in it (measured by a 2-update
# probe of the same run); pd_adv runs take pd's updates and spend what they spend.
DMD_FAKE_UPDATES = 1
DMD = ["distill.method='dmd'", "distill.start_steps=32", "distill.checkpoint_every=50", "distill.log_samples=0",
       f"distill.dmd_fake_updates={DMD_FAKE_UPDATES}", "distill.dmd_lr=2e-5", "distill.dmd_fake_lr=2e-4"]
ADV_WEIGHT = 0.1
CEILING = {
    # pd, then dmd: pd_b300's 1-step student refined by dmd, the two together at pd_b900's evaluations
    "dmd_from_pd_b900": {"from": "pd_b300", "set": DMD + ["distill.target_steps=1"], "fe": pd_fe(900)},
    # a 4-step generator (it samples at 1, 2 and 4 steps on its own grid) from the teacher, at pd_b300's and
    # pd_b900's forward-equivalent evaluations
    "dmd_b300": {"from": "teacher", "set": DMD + ["distill.target_steps=4"], "fe": pd_fe(300)},
    "dmd_b900": {"from": "teacher", "set": DMD + ["distill.target_steps=4"], "fe": pd_fe(900)},
    # adversarial pd (SDXL-Lightning's recipe): pd_b300 / pd_b900 plus the adversarial term, conditional; and the
    # relaxed (unconditional) variant at 300 updates
    "pd_adv_b300": {"from": "teacher", "set": COMMON + METHODS["pd"] + budget_settings("pd", 300)
                    + [f"distill.adversarial_weight={ADV_WEIGHT}"]},
    "pd_adv_b900": {"from": "teacher", "set": COMMON + METHODS["pd"] + budget_settings("pd", 900)
                    + [f"distill.adversarial_weight={ADV_WEIGHT}"]},
    "pd_adv_relaxed_b300": {"from": "teacher", "set": COMMON + METHODS["pd"] + budget_settings("pd", 300)
                            + [f"distill.adversarial_weight={ADV_WEIGHT}", "distill.adversarial_relaxed=true"]},
}


def _source(out: Path, name: str) -> Path:
    return out / "teacher" / "teacher" if name == "teacher" else out / name / "students" / "student_0001steps"


def _recorded_fe(stem: Path) -> int:
    from progdistill.checkpoint import forward_equivalent, read_record

    budget = read_record(stem).get("budget")
    return forward_equivalent(budget) if isinstance(budget, dict) else 0


def _student(run: Path) -> Path | None:
    found = sorted((run / "students").glob("student_*steps.json"))
    return found[0].with_suffix("") if found else None


def stage_ceiling(out: Path, progress: list[str], only: list[str] | None) -> dict:
    """Distil the CEILING runs (pd_b300 first where a run starts from it); a run whose budget is counted in
    forward-equivalent evaluations gets its generator updates from a 2-update probe (DIR/probe_NAME)."""
    import shutil

    times = {}
    for name, run in CEILING.items():
        if only and name not in only:
            continue
        if _student(out / name) is not None:
            print(f"{name}: already distilled")
            continue
        if run["from"] != "teacher" and _student(out / run["from"]) is None:
            times |= stage_distill(out, progress, [run["from"]])
        source = _source(out, run["from"])
        settings = list(run["set"])
        if "fe" in run:
            probe = out / f"probe_{name}"
            shutil.rmtree(probe, ignore_errors=True)
            cli(["distill", "--from", str(source), "--out", str(probe), *sets(settings + ["distill.total_updates=2"]),
                 "--no-progress"])
            start = _recorded_fe(source) if run["from"] != "teacher" else 0
            per_update = (_recorded_fe(_student(probe)) - start) / 2
            updates = int((run["fe"] - start) // per_update)
            print(f"{name}: {per_update:.0f} forward-equivalent evaluations per generator update; {updates} updates "
                  f"fit in {run['fe'] - start:,}")
            settings.append(f"distill.total_updates={updates}")
            shutil.rmtree(probe)
        t0 = time.time()
        cli(["distill", "--from", str(source), "--out", str(out / name), *sets(settings), *progress])
        times[name] = round(time.time() - t0, 1)
        print(f"{name}: {times[name]} s")
    return times


def stage_ceiling_eval(out: Path, num: int, seed: int, progress: list[str], previous: Path | None,
                       teacher_steps: list[int] | None = None) -> None:
    """One report (DIR/evaluate_ceiling) of the teacher's rows, pd_b300 (rerun) and the CEILING runs, at `num` samples
    from `seed`; with `previous` (the committed report.json of the runs above) and the teacher's rows identical to
    it, the runs not rerun here join from it. Then the goals of issue 30 (goals_ceiling.json). `teacher_steps`: the
    teacher's rows at these step counts only (default TEACHER_STEPS); a report at another `num` than the default goes
    to evaluate_ceiling_numN and goals_ceiling_numN.json."""
    from progdistill.evaluation.images import CLASSIFIER_METRIC
    from progdistill.evaluation.report import evaluate_run

    runs = {name: out / name for name in ["pd_b300", "pd_b900", *CEILING] if _student(out / name) is not None}
    tag = ("" if seed == 1234 else f"_seed{seed}") + ("" if num == 1000 else f"_num{num}")
    folder = out / f"evaluate_ceiling{tag}"
    t0 = time.time()
    rows = evaluate_run(out / "teacher", folder, steps=teacher_steps or TEACHER_STEPS, num=num, seed=seed,
                        samplers=("teacher_ddim", "dpm_solver"), max_steps={"dpm_solver": 32}, methods=runs,
                        method_steps=list(STUDENT_STEPS), progress=not progress)
    report = {"eval_s": round(time.time() - t0, 1), "num": num, "seed": seed, "date": time.strftime("%Y-%m-%d")}
    merged = rows
    if previous is not None:
        old = json.loads(previous.read_text())
        teacher = lambda rs: sorted((r["sampler"], r["steps"], r["value"]) for r in rs  # noqa: E731
                                    if r["sampler"] in ("teacher_ddim", "dpm_solver") and r["metric"] == CLASSIFIER_METRIC)
        same = teacher(old) == teacher(rows)
        rerun_same = {name: sorted((r["steps"], r["metric"], r["value"]) for r in rows if r["sampler"] == name
                                   and r["metric"] != "forward_equivalent")
                      == sorted((r["steps"], r["metric"], r["value"]) for r in old if r["sampler"] == name)
                      for name in ("pd_b300", "pd_b900") if name in runs}
        report["previous"] = {"file": str(previous), "teacher_rows_identical": same,
                              "rerun_rows_identical_but_forward_equivalent": rerun_same}
        if same:
            have = {r["sampler"] for r in rows}
            merged = rows + [r for r in old if r["sampler"] not in have] + _fe_rows(old, have)
    report["goals"] = ceiling_goals(merged, CLASSIFIER_METRIC)
    (folder / "report_merged.json").write_text(json.dumps(merged, indent=1))
    report["teacher_steps"] = teacher_steps or TEACHER_STEPS
    (out / f"goals_ceiling{tag}.json").write_text(json.dumps(report, indent=2))
    plot_methods(merged, CLASSIFIER_METRIC, folder / "ceiling_vs_steps.png")
    print(json.dumps(report, indent=2))


def _fe_rows(old: list[dict], have: set[str]) -> list[dict]:
    """The forward-equivalent rows of the previous report's students (it predates them): teacher and self-teacher
    evaluations plus 3 per image (checkpoint.forward_equivalent)."""
    from progdistill.checkpoint import BUDGET_KEYS, forward_equivalent

    v = {(r["sampler"], r["steps"], r["metric"]): r["value"] for r in old}
    out = []
    for (sampler, steps, metric) in list(v):
        if metric == "student_updates" and sampler not in have:
            budget = {k: v[(sampler, steps, k)] for k in BUDGET_KEYS}
            out.append({"sampler": sampler, "steps": steps, "metric": "forward_equivalent",
                        "value": float(forward_equivalent(budget))})
    return out


SPREAD_SEEDS = (1234, 1235)


def stage_spread(out: Path, num: int, progress: list[str]) -> None:
    """The seed-to-seed spread: the teacher's best row (DPM-Solver++(2M) at 16 steps) and every rerun or CEILING
    run's 1-step student, at `num` samples from each of SPREAD_SEEDS (DIR/spread.json: values, and each row's
    max - min over the seeds relative to its mean)."""
    from progdistill.evaluation.images import CLASSIFIER_METRIC
    from progdistill.evaluation.report import evaluate_run

    runs = {name: out / name for name in ["pd_b300", "pd_b900", *CEILING] if _student(out / name) is not None}
    values: dict[str, list[float]] = {}
    for seed in SPREAD_SEEDS:
        rows = evaluate_run(out / "teacher", out / f"spread_seed{seed}", steps=[16], num=num, seed=seed,
                            samplers=("dpm_solver",), methods=runs, method_steps=[1], progress=not progress)
        for r in rows:
            if r["metric"] == CLASSIFIER_METRIC and r["sampler"] != "data":
                values.setdefault(f"{r['sampler']}@{r['steps']}", []).append(r["value"])
    spread = {k: {"values": v, "relative_range": (max(v) - min(v)) / (sum(v) / len(v))} for k, v in values.items()}
    report = {"seeds": list(SPREAD_SEEDS), "num": num, "metric": CLASSIFIER_METRIC, "rows": spread,
              "date": time.strftime("%Y-%m-%d")}
    (out / "spread.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


NEW_FAMILIES = {"dmd": "dmd_", "pd_adv": "pd_adv_"}


def ceiling_goals(rows: list[dict], metric: str) -> dict:
    """Issue 30's goals, fixed before the run, against the teacher's best: the best 1-step student within 1.15x; the
    best 4-step student at or below 1.0x; the best new method (dmd or pd_adv) beats every pd, cd and tract student at
    1 and 2 steps, each at equal or lower forward-equivalent evaluations than that student."""
    from progdistill.evaluation.methods import TEACHER_ROWS, teacher_best

    best = teacher_best(rows, metric)
    v = {(r["sampler"], r["steps"]): r["value"] for r in rows if r["metric"] == metric}
    fe = {(r["sampler"], r["steps"]): r["value"] for r in rows if r["metric"] == "forward_equivalent"}
    students = {key: x for key, x in v.items() if key[0] not in TEACHER_ROWS and key[0] != "data"}
    out = {"teacher_best": {"sampler": best["sampler"], "steps": best["steps"], "value": best["value"]}}
    for k, bound in ((1, 1.15), (4, 1.0)):
        at = {s: x for (s, kk), x in students.items() if kk == k}
        if at:
            name, value = min(at.items(), key=lambda item: item[1])
            out[f"best {k}-step student / teacher's best <= {bound}"] = {
                "student": name, "value": round(value, 3), "ratio": round(value / best["value"], 3),
                "met": value / best["value"] <= bound}
    old = list(METHODS)
    for family, prefix in NEW_FAMILIES.items():
        verdicts = {}
        for k in (1, 2):
            new = {s: x for (s, kk), x in students.items() if kk == k and s.startswith(prefix)}
            for (s, kk), x in students.items():
                if kk != k or s.startswith(tuple(NEW_FAMILIES.values())) or s.rsplit("_b", 1)[0] not in old:
                    continue
                cheaper = {n: y for n, y in new.items() if fe.get((n, k), float("inf")) <= fe.get((s, k), 0)}
                if not cheaper:
                    verdicts[f"{k} steps vs {s}"] = {s: round(x, 3), "met": False,
                                                     "why": "no run of this family at or below its evaluations"}
                    continue
                n, y = min(cheaper.items(), key=lambda item: item[1])
                verdicts[f"{k} steps vs {s}"] = {s: round(x, 3), n: round(y, 3), "met": y < x}
        out[f"{family} beats every pd, cd and tract student at 1 and 2 steps at <= evaluations"] = {
            "met": bool(verdicts) and all(d["met"] for d in verdicts.values()), "cases": verdicts}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--stage", choices=("teacher", "distill", "evaluate", "cd_start", "ceiling", "ceiling_eval", "spread",
                                        "all"),
                   default="all")
    p.add_argument("--seed", type=int, default=1234, help="ceiling_eval: the sampling noise's seed")
    p.add_argument("--previous", help="ceiling_eval: the committed report.json of the pd, cd and tract runs, joined "
                   "when the teacher's rows are identical to its")
    p.add_argument("--only", action="append", help="distill only these runs (e.g. pd_b300; repeatable)")
    p.add_argument("--num", type=int, default=1000, help="samples per row")
    p.add_argument("--teacher-steps", help="ceiling_eval: the teacher's rows at these step counts only (e.g. 8,16,32; "
                   f"default {','.join(map(str, TEACHER_STEPS))})")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    progress = ["--no-progress"] if a.no_progress else []
    timing_file = out / "timings.json"
    timings = json.loads(timing_file.read_text()) if timing_file.exists() else {}
    if a.stage in ("teacher", "all"):
        t0 = time.time()
        stage_teacher(out, progress)
        timings.setdefault("teacher_s", round(time.time() - t0, 1))
    if a.stage in ("distill", "all"):
        timings.update(stage_distill(out, progress, a.only))
    timings["machine"] = (f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
                          f"{'cuda ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}")
    timing_file.write_text(json.dumps(timings, indent=2))
    if a.stage in ("evaluate", "all"):
        stage_evaluate(out, a.num, progress)
    if a.stage in ("cd_start", "all"):
        stage_cd_start(out, a.num, progress)
    if a.stage in ("ceiling", "all"):
        timings.update(stage_ceiling(out, progress, a.only))
        timing_file.write_text(json.dumps(timings, indent=2))
    if a.stage in ("ceiling_eval", "all"):
        stage_ceiling_eval(out, a.num, a.seed, progress, Path(a.previous) if a.previous else None,
                           [int(x) for x in a.teacher_steps.split(",")] if a.teacher_steps else None)
    if a.stage in ("spread", "all"):
        stage_spread(out, a.num, progress)


if __name__ == "__main__":
    main()
