"""Benchmark: train a 2-D teacher, distil 256 -> 1 steps, and compare every sampler with the data.

    python benchmarks/toy2d.py --out runs/bench-toy2d [--data ring] [--set distill.updates_per_round=...]

Writes DIR/report.json (rows {"sampler", "steps", "metric", "value"}), DIR/report.md, DIR/metric_vs_steps.png,
DIR/samples.png and DIR/goals.json (the issue's targets checked against the measured values).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from progdistill.config import dump_json, load_config
from progdistill.evaluation.report import METRIC, evaluate_run, markdown_table
from progdistill.training.rounds import distill
from progdistill.training.teacher import train_teacher


def goals(rows: list[dict]) -> dict:
    """Student at k <= 8 at least 1.5x closer than teacher DDIM at k; 8-step student within 1.5x of DDIM-256."""
    v = {(r["sampler"], r["steps"]): r["value"] for r in rows if r["metric"] == METRIC}
    out = {}
    for k in (1, 2, 4, 8):
        if ("student", k) in v and ("teacher_ddim", k) in v:
            ratio = v[("teacher_ddim", k)] / v[("student", k)]
            out[f"ddim{k}/student{k} >= 1.5"] = {"ratio": round(ratio, 3), "met": ratio >= 1.5}
    if ("student", 8) in v and ("teacher_ddim", 256) in v:
        ratio = v[("student", 8)] / v[("teacher_ddim", 256)]
        out["student8/ddim256 <= 1.5"] = {"ratio": round(ratio, 3), "met": ratio <= 1.5}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--data", default="ring")
    p.add_argument("--num", type=int, default=10_000, help="samples per evaluation")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args()
    out = Path(a.out)
    cfg = load_config("toy2d", [f'data.name="{a.data}"', "distill.start_steps=256", "distill.target_steps=1",
                                *a.overrides])
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(dump_json(cfg))
    t0 = time.time()
    stem = train_teacher(cfg, out, progress=not a.no_progress)
    t1 = time.time()
    distill(stem, out, cfg, progress=not a.no_progress)
    t2 = time.time()
    rows = evaluate_run(out, out, steps=[2**i for i in range(9)], num=a.num, progress=not a.no_progress)
    g = goals(rows)
    meta = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
            "torch": torch.__version__, "teacher_s": round(t1 - t0, 1), "distill_s": round(t2 - t1, 1),
            "eval_s": round(time.time() - t2, 1), "date": time.strftime("%Y-%m-%d")}
    (out / "goals.json").write_text(json.dumps({"goals": g, "meta": meta}, indent=2))
    print(markdown_table(rows, METRIC))
    print(json.dumps({"goals": g, "meta": meta}, indent=2))


if __name__ == "__main__":
    main()
