"""Methods side by side (docs/methods.md): the students of other distillation runs of the same teacher (evaluate
--method LABEL=RUN), each row with its budget, and "the teacher's best", defined once here: the best value of a metric
over every teacher sampler and step count the report measured. Every ratio the report states is taken against it."""

from __future__ import annotations

from pathlib import Path

from .. import runfolder
from ..checkpoint import BUDGET_KEYS, CheckpointError, forward_equivalent, read_record
from .rows import DATA, ROWS, Row, Weights

# a student's recorded budget, reported as metrics of its rows, with its forward-equivalent evaluations (the one axis
# every method is put on: a backward counted as two; checkpoint.forward_equivalent)
BUDGET_METRICS = (*BUDGET_KEYS, "forward_equivalent")
# The teacher's rows a "teacher's best" is taken over (every teacher sampler of the registry).
TEACHER_ROWS = tuple(name for name, row in ROWS.items() if row.weights is Weights.TEACHER)


def method_students(run: Path) -> tuple[str, dict[int, Path]]:
    """(sampler, students by step count) of one distillation run folder: a consistency student samples at every
    count with the consistency sampler (returned under step count 0: any); other students with DDIM at their own,
    and a student whose record lists sampling "counts" (a dmd generator: the counts whose grids lie on its own) also
    at those, where no student of that count was saved."""
    students = runfolder.saved_students(Path(run))
    if not students:
        raise CheckpointError(f"{run} holds no distilled students (students/student_*steps.json); give a folder "
                              "made by 'progdistill distill --out'")
    first = next(iter(students.values()))
    if read_record(first).get("sampling", {}).get("sampler") == "consistency":
        return "consistency", {0: first}
    extra = {}
    for stem in students.values():
        for k in read_record(stem).get("sampling", {}).get("counts", []):
            extra.setdefault(int(k), stem)
    return "ddim", extra | students


def method_rows(methods: dict[str, Path], steps: list[int], reserved: set[str]) -> tuple[list[tuple[Row, int]],
                                                                                          dict[str, dict[int, Path]]]:
    """The (row, step count) jobs of every method run at the counts of `steps` it has, and each row's students."""
    jobs, sources = [], {}
    for label, run in methods.items():
        if label in reserved or label == DATA:
            raise ValueError(f"--method label {label!r} is a row name of the report already; choose another")
        sampler, students = method_students(run)
        counts = steps if 0 in students else [k for k in steps if k in students]
        sources[label] = {k: students.get(k, students.get(0)) for k in counts}
        jobs += [(Row(label, sampler, Weights.STUDENT), k) for k in sorted(counts, reverse=True)]
    return jobs, sources


def budget_of(stem: Path) -> dict[str, float]:
    """A student's recorded budget (training/methods.py), as report metrics; records from before budgets: none."""
    budget = read_record(stem).get("budget")
    if not isinstance(budget, dict) or any(key not in budget for key in BUDGET_KEYS):
        return {}
    return {key: float(budget[key]) for key in BUDGET_KEYS} | {"forward_equivalent": float(forward_equivalent(budget))}


def teacher_best(rows: list[dict], metric: str, higher_is_better: bool = False) -> dict | None:
    """The teacher's best: the row of `metric` with the best value over every teacher sampler and step count in
    `rows` (None when the report measured none)."""
    mine = [r for r in rows if r["metric"] == metric and r["sampler"] in TEACHER_ROWS]
    if not mine:
        return None
    pick = max if higher_is_better else min
    return pick(mine, key=lambda r: r["value"])


def methods_table(rows: list[dict], metric: str, students: list[str], higher_is_better: bool = False) -> str:
    """Every student row (method) by step count: the metric, its ratio to the teacher's best, and its budget."""
    best = teacher_best(rows, metric, higher_is_better)
    value = {(r["sampler"], r["steps"], r["metric"]): r["value"] for r in rows}
    lines = []
    if best is not None:
        lines.append(f"The teacher's best {metric}: **{best['value']:.4f}** ({best['sampler']} at {best['steps']} "
                     "steps), the best over every teacher sampler and step count measured here; ratios are to it.\n")
    lines += [f"| steps | method | {metric} | / teacher's best | student updates | images seen | teacher evals | "
              "self-teacher evals | forward-equivalent evals |", "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    counts = sorted({r["steps"] for r in rows if r["sampler"] in students and r["metric"] == metric}, reverse=True)
    for k in counts:
        for name in students:
            if (name, k, metric) not in value:
                continue
            v = value[(name, k, metric)]
            ratio = f"{v / best['value']:.3f}" if best else ""
            budget = [value.get((name, k, b)) for b in BUDGET_METRICS]
            cells = [f"{int(b):,}" if b is not None else "" for b in budget]
            lines.append(f"| {k} | {name} | {v:.4f} | {ratio} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"
