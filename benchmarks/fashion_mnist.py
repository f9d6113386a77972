"""Benchmark: a small class-conditional U-Net teacher on Fashion-MNIST, distilled 128 -> 1 steps, evaluated with
the Frechet distance in the project's Fashion-MNIST classifier feature space (see evaluation/images.py).

    python benchmarks/fashion_mnist.py --out runs/bench-fashion [--set train.steps=...] [--num 1000]

About 80 minutes on 2 CPU cores with the defaults. Writes DIR/report.json (rows {"sampler", "steps", "metric",
"value"}), DIR/report.md, DIR/frechet_classifier_vs_steps.png, DIR/samples/steps_NNNN.png and DIR/goals.json (the
issue's targets checked against the measured values). The teacher's DDIM is evaluated up to 256 steps; its
ancestral sampler and DPM-Solver++(2M) up to --max-baseline-steps.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from progdistill.config import dump_json, load_config
from progdistill.evaluation.images import CLASSIFIER_METRIC
from progdistill.evaluation.report import evaluate_run, markdown_table
from progdistill.training.rounds import distill
from progdistill.training.teacher import train_teacher

SETTINGS = ["train.steps=3000", "train.lr=1e-3", "train.checkpoint_every=500", "distill.start_steps=128",
            "distill.updates_per_round=120", "distill.final_updates_per_round=400", "distill.lr=3e-4"]


def goals(rows: list[dict]) -> dict:
    """Issue 3's targets for the classifier Frechet distance."""
    v = {(r["sampler"], r["steps"]): r["value"] for r in rows if r["metric"] == CLASSIFIER_METRIC}
    out = {}
    ref = v.get(("teacher_ddim", 256))
    for k, bound in ((4, 1.15), (1, 2.0)):
        if ref and ("student", k) in v:
            ratio = v[("student", k)] / ref
            out[f"student{k}/ddim256 <= {bound}"] = {"ratio": round(ratio, 3), "met": ratio <= bound}
    for k in (1, 2, 4):
        for base, bound in (("teacher_ddim", 3.0), ("dpm_solver", 2.0)):
            if (base, k) in v and ("student", k) in v:
                ratio = v[(base, k)] / v[("student", k)]
                out[f"{base}{k}/student{k} >= {bound}"] = {"ratio": round(ratio, 3), "met": ratio >= bound}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--num", type=int, default=1000, help="samples per sampler and step count")
    p.add_argument("--max-baseline-steps", type=int, default=32,
                   help="largest step count for the ancestral and DPM-Solver baselines")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--skip-training", action="store_true", help="only evaluate an existing run in --out")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args()
    out = Path(a.out)
    cfg = load_config("fashion_mnist", [*SETTINGS, *a.overrides])
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if not a.skip_training:
        (out / "config.json").write_text(dump_json(cfg))
        stem = train_teacher(cfg, out, progress=not a.no_progress)
        t1 = time.time()
        distill(stem, out, cfg, progress=not a.no_progress)
    else:
        t1 = t0
    t2 = time.time()
    rows = evaluate_run(out, out, steps=[2**i for i in range(9)], num=a.num, progress=not a.no_progress,
                        max_steps={"teacher_ancestral": a.max_baseline_steps, "dpm_solver": a.max_baseline_steps})
    g = goals(rows)
    meta = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
                       f"{'cuda ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}",
            "torch": torch.__version__, "teacher_s": round(t1 - t0, 1), "distill_s": round(t2 - t1, 1),
            "eval_s": round(time.time() - t2, 1), "date": time.strftime("%Y-%m-%d"), "num": a.num}
    (out / "goals.json").write_text(json.dumps({"goals": g, "meta": meta}, indent=2))
    print(markdown_table(rows, CLASSIFIER_METRIC))
    print(json.dumps({"goals": g, "meta": meta}, indent=2))


if __name__ == "__main__":
    main()
