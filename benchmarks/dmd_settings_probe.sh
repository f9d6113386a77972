#!/bin/bash
# How the dmd settings of benchmarks/methods_fashion_mnist.py were chosen (issue 30): dmd from pd_b300's 1-step
# student, 40 generator updates each of three settings, then the 1-step classifier Frechet distance at 500 samples
# from seed 99 (not the report's 1234) beside pd_b300's own. Writes OUT/probe/probe.json. About 12 minutes on 2
# cores after `methods_fashion_mnist.py --out OUT --stage distill --only pd_b300`.
#
#   bash benchmarks/dmd_settings_probe.sh OUT
set -e
cd "$(dirname "$0")/.."
O=${1:?OUT: the benchmark folder}
mkdir -p $O/probe
S=$O/pd_b300/students/student_0001steps
C="--set distill.method='dmd' --set distill.start_steps=32 --set distill.target_steps=1 --set distill.log_samples=0 --set distill.checkpoint_every=0 --set distill.total_updates=40"
declare -A P
P[p1_f1_lr2e-4]="--set distill.dmd_fake_updates=1"
P[p2_f1_glr2e-5]="--set distill.dmd_fake_updates=1 --set distill.dmd_lr=2e-5 --set distill.dmd_fake_lr=2e-4"
P[p3_f5_glr2e-5]="--set distill.dmd_fake_updates=5 --set distill.dmd_lr=2e-5 --set distill.dmd_fake_lr=2e-4"
for k in p1_f1_lr2e-4 p2_f1_glr2e-5 p3_f5_glr2e-5; do
  date; echo $k
  nice -n 5 .venv/bin/progdistill distill --from $S --out $O/probe/$k --no-progress $C ${P[$k]} > $O/probe/$k.log 2>&1
done
.venv/bin/python - "$O" <<'PY'
import json
from progdistill.evaluation.report import evaluate_run
import sys
O = sys.argv[1]
runs = {"pd_b300": f"{O}/pd_b300"} | {k: f"{O}/probe/{k}" for k in ("p1_f1_lr2e-4", "p2_f1_glr2e-5", "p3_f5_glr2e-5")}
rows = evaluate_run(f"{O}/teacher", f"{O}/probe/eval", steps=[1], num=500, seed=99, samplers=("teacher_ddim",),
                    methods=runs, method_steps=[1], progress=False)
out = {r["sampler"]: r["value"] for r in rows if r["metric"] == "frechet_classifier" and r["steps"] == 1}
print("PROBE", json.dumps(out, indent=1))
json.dump(out, open(f"{O}/probe/probe.json", "w"), indent=1)
PY
date
