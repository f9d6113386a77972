"""Probe for issue 15's warm-up: how close does an eps teacher's v (or x) student, started from the teacher's
weights, get to the teacher's own sampler after W warm-up updates at learning rate LR?

    python benchmarks/eps_convert_probe.py --teacher RUN/teacher --steps 64 --settings 0:2e-4,200:2e-4,200:1e-3

For each W:LR, the student is warmed up (training.reparam.warm_up_student: the teacher's clipped x_hat on the
--steps grid) and its clipped DDIM at --steps steps is compared with the teacher's, same noise: RMS distance.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from progdistill.build import denoiser_from_spec, load_denoiser, schedule_of
from progdistill.config import load_config
from progdistill.sampling import generate
from progdistill.training.objectives import teacher_clip_threshold
from progdistill.training.phase import Run
from progdistill.config import student_config
from progdistill.training.reparam import warm_up_student


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", required=True)
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--settings", default="0:2e-4,200:2e-4,200:1e-3")
    p.add_argument("--parameterization", default="v")
    p.add_argument("--num", type=int, default=100)
    p.add_argument("--out")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    teacher, record, tcfg = load_denoiser(a.teacher)
    shape = teacher.spec.data_shape
    sched = schedule_of(teacher.spec)
    ref = generate(teacher, sched, a.steps, a.num, shape, seed=3, batch_size=a.num)
    results = {}
    for item in a.settings.split(","):
        w, lr = item.split(":")
        cfg = load_config(None, [f"distill.parameterization={a.parameterization}", f"distill.convert_updates={w}",
                                 f"distill.lr={lr}"], base=tcfg.to_dict())
        scfg = student_config(cfg)
        student = denoiser_from_spec(replace(teacher.spec, parameterization=scfg.model.parameterization))
        student.load_state_dict(teacher.state_dict())
        t0 = time.time()
        if int(w):
            scratch = Path(tempfile.mkdtemp())
            warm_up_student(teacher, student, sched, a.steps, Run.open(scfg, scratch, progress=False),
                            clip_below=teacher_clip_threshold(scfg.distill.teacher_clip,
                                                              scfg.distill.teacher_clip_logsnr))
        x = generate(student.eval(), sched, a.steps, a.num, shape, seed=3, batch_size=a.num)
        results[item] = {"rms_vs_teacher": round((x - ref).pow(2).mean().sqrt().item(), 4),
                         "seconds": round(time.time() - t0, 1)}
        print(item, results[item], flush=True)
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"parameterization": a.parameterization, "steps": a.steps, "num": a.num,
                       "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
