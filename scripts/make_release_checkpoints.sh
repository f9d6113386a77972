#!/bin/sh
# Regenerates tests/data/release_0_1_0: checkpoints written by progdistill 0.1.0 (commit 631bd79, the last before
# the reshaping of 0.2.0), which tests/test_checkpoint_format.py loads and continues with today's code:
#   plain/teacher, plain/students/student_0004steps and a mid-round checkpoint of round 2 (the run was stopped right
#   after writing it), plain_reference/student_0002steps and student_0001steps (the same distillation finished
#   uninterrupted by 0.1.0), and guided/stage1 (a stage-1 model from before the w margin was recorded).
# Usage (from the repository root, with the project's virtualenv): sh scripts/make_release_checkpoints.sh
set -eu
out=tests/data/release_0_1_0
old=$(mktemp -d)
git archive 631bd79 | tar -x -C "$old"
work=$(mktemp -d)
run() { OMP_NUM_THREADS=1 PYTHONPATH="$old/src" .venv/bin/python -c "import sys; from progdistill.cli import main; sys.exit(main())" "$@" --no-progress; }
tiny="--set model.hidden=16 --set model.depth=1 --set model.emb_dim=8 --set data.size=512 --set train.batch_size=64
 --set train.steps=60 --set train.warmup=10 --set train.checkpoint_every=100 --set distill.batch_size=64
 --set distill.updates_per_round=30 --set distill.final_updates_per_round=0 --set distill.checkpoint_every=10
 --set distill.log_samples=0 --set distill.start_steps=8 --set distill.target_steps=1"
run train --config toy2d --out "$work/plain" $tiny
cp -r "$work/plain" "$work/ref"
run distill --from "$work/ref/teacher" $tiny
# The same distillation, stopped (as by a SIGKILL) right after round 2 wrote its checkpoint at update 20.
OMP_NUM_THREADS=1 PYTHONPATH="$old/src" .venv/bin/python - "$work/plain" $tiny <<'PY'
import sys
from pathlib import Path
import progdistill.checkpoint as checkpoint
real = checkpoint.save_checkpoint
def save_then_stop(stem, *args, **kwargs):
    out = real(stem, *args, **kwargs)
    if Path(stem).name == "round02_step00000020":
        raise SystemExit(0)
    return out
checkpoint.save_checkpoint = save_then_stop
from progdistill.cli import main
run = sys.argv[1]
main(["distill", "--from", f"{run}/teacher", "--no-progress", *sys.argv[2:]])
PY
run train --config toy2d --out "$work/guided" --label-dropout 0.2 --set 'data.name="ring_classes"' $tiny
run distill --from "$work/guided/teacher" --guided --w-max 2 --w-margin 0.5 --stage1-updates 20 \
    --set guided.checkpoint_every=0 $tiny
rm -rf "$out"
mkdir -p "$out/plain/students/checkpoints" "$out/plain_reference" "$out/guided"
cp "$work/plain/teacher".* "$out/plain/"
cp "$work/plain/students/student_0004steps".* "$out/plain/students/"
cp "$work/plain/students/checkpoints/round02_step00000020".* "$out/plain/students/checkpoints/"
cp "$work/ref/students/student_0002steps".* "$work/ref/students/student_0001steps".* "$out/plain_reference/"
cp "$work/guided/guided/stage1".* "$out/guided/"
rm -rf "$old" "$work"
du -sh "$out"
