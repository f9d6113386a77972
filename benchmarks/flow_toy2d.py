"""Benchmark: a flow-matching 2-D teacher beside a variance-preserving one of the same network and budget, each
sampled by Euler (= DDIM on the flow schedule), DPM-Solver++(2M) and the ancestral sampler at 1..256 steps, and
each distilled by pd from 64 steps down to 1.

    python benchmarks/flow_toy2d.py --out runs/flow-toy2d [--quick]

The two teachers differ only in diffusion.schedule / model.parameterization / diffusion.weighting (cosine / v /
snr_plus1 against flow / flow / velocity); data, network, steps, optimizer and seeds are shared. DPM-Solver++(2M)
runs unchanged on the flow teacher: the flow ODE is the VP one rescaled (docs/flow.md), so the solver in log-SNR is
the flow form of the same solver (diffusers' DPMSolverMultistepScheduler with use_flow_sigmas takes the same steps).
Metric: sliced Wasserstein distance to 4 000 fresh ring points (lower is better; the data's own floor is a row).
Writes DIR/report.json (rows {"teacher", "sampler", "steps", "value"}), DIR/report.md and DIR/sw_vs_steps.png.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from progdistill.build import load_denoiser, schedule_of
from progdistill.config import load_config
from progdistill.data import sample_toy
from progdistill.evaluation.metrics import sliced_wasserstein
from progdistill.sampling import generate
from progdistill.training.rounds import distill
from progdistill.training.teacher import train_teacher

TEACHERS = {"vp": ['diffusion.schedule="cosine"', 'model.parameterization="v"', 'diffusion.weighting="snr_plus1"'],
            "flow": ['diffusion.schedule="flow"', 'model.parameterization="flow"', 'diffusion.weighting="velocity"']}
SHARED = ["train.steps=4000", "distill.start_steps=64", "distill.updates_per_round=600",
          "distill.final_updates_per_round=1200"]
QUICK = ["train.steps=400", "data.size=4000", "distill.start_steps=8", "distill.updates_per_round=60",
         "distill.final_updates_per_round=60"]
STEPS = [1, 2, 4, 8, 16, 32, 64, 128, 256]
NUM = 4000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--quick", action="store_true", help="a smoke run in seconds (not a measurement)")
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    reference = sample_toy("ring", NUM, seed=99)
    rows: list[dict] = [{"teacher": "data", "sampler": "data", "steps": 0,
                         "value": sliced_wasserstein(sample_toy("ring", NUM, seed=98), reference)}]
    timings = {}
    for name, sets in TEACHERS.items():
        cfg = load_config("toy2d", sets + SHARED + (QUICK if a.quick else []))
        run = out / name
        t0 = time.time()
        torch.manual_seed(0)
        teacher = train_teacher(cfg, run, progress=False)
        timings[f"{name}_teacher_s"] = round(time.time() - t0, 1)
        t0 = time.time()
        students = distill(teacher, run, cfg, progress=False)
        timings[f"{name}_distill_s"] = round(time.time() - t0, 1)
        model, _, _ = load_denoiser(teacher)
        schedule = schedule_of(cfg)
        for sampler in ("ddim", "dpm_solver", "ancestral"):
            for k in STEPS:
                x = generate(model, schedule, k, NUM, (2,), sampler=sampler, seed=7)
                rows.append({"teacher": name, "sampler": "euler" if (sampler == "ddim" and name == "flow") else
                             sampler, "steps": k, "value": sliced_wasserstein(x, reference)})
        for stem in students:
            student, record, _ = load_denoiser(stem)
            k = record["sampling_steps"]
            x = generate(student, schedule, k, NUM, (2,), seed=7)
            rows.append({"teacher": name, "sampler": "pd_student", "steps": k, "value": sliced_wasserstein(x, reference)})
        print(f"{name}: done", flush=True)
    report = {"rows": rows, "timings": timings, "quick": a.quick, "num": NUM, "date": time.strftime("%Y-%m-%d"),
              "machine": f"{platform.machine()}, {torch.get_num_threads()} threads"}
    (out / "report.json").write_text(json.dumps(report, indent=1))
    cols = sorted({(r["teacher"], r["sampler"]) for r in rows if r["teacher"] != "data"})
    v = {(r["teacher"], r["sampler"], r["steps"]): r["value"] for r in rows}
    lines = ["| steps | " + " | ".join(f"{t} {s}" for t, s in cols) + " |", "|---:|" + "---:|" * len(cols)]
    for k in STEPS:
        lines.append(f"| {k} | " + " | ".join(f"{v[(t, s, k)]:.4f}" if (t, s, k) in v else "" for t, s in cols)
                     + " |")
    lines.append(f"\nFloor (fresh data against the reference): {rows[0]['value']:.4f}")
    (out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for t, s in cols:
        ks = [k for k in STEPS if (t, s, k) in v]
        ax.plot(ks, [v[(t, s, k)] for k in ks], marker="o", ls="-" if t == "flow" else "--", label=f"{t} {s}")
    ax.axhline(rows[0]["value"], color="grey", lw=0.8, label="data floor")
    ax.set(xscale="log", yscale="log", xlabel="sampling steps", ylabel="sliced Wasserstein (lower is better)",
           title="flow-matching vs variance-preserving teacher, ring data")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "sw_vs_steps.png", dpi=120)


if __name__ == "__main__":
    main()
