# dmd against pd on the 2-D ring, one seed (BENCHMARKS.md, "Players phases"): trains a teacher, distils pd 8 -> 1
# and two dmd 1-step generators, evaluates each run; reports in /tmp/q/*/eval. About 4 minutes on 2 cores.
set -e
P=${PROGDISTILL:-progdistill}  # the installed command (e.g. .venv/bin/progdistill)
export OMP_NUM_THREADS=2
Q=/tmp/q; rm -rf $Q; mkdir -p $Q
$P train --config toy2d --out $Q/pd --no-progress --set data.name=ring --set train.steps=1500 > /dev/null
cp -r $Q/pd $Q/dmd100; cp -r $Q/pd $Q/dmd300
D="--set distill.start_steps=8 --set distill.target_steps=1 --set distill.batch_size=128 --set distill.updates_per_round=300 --set distill.final_updates_per_round=0 --set distill.log_samples=0"
$P distill --from $Q/pd/teacher --out $Q/pd --no-progress $D > /dev/null
$P distill --from $Q/pd/teacher --method dmd --out $Q/dmd100 --no-progress $D --set distill.total_updates=100 > /dev/null
$P distill --from $Q/pd/teacher --method dmd --out $Q/dmd300 --no-progress $D --set distill.total_updates=300 > /dev/null
for r in pd dmd100 dmd300; do $P evaluate --run $Q/$r --no-progress --steps 1,2,4,8,64 > /dev/null; done
