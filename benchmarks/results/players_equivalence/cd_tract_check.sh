set -e
# The teacher reshape_equivalence.py trained with the before tree (--out /tmp/reshape); before = /tmp/before2/src.
T=${TEACHER:-/tmp/reshape3/before/train/plain/teacher}
for side in before after; do
  if [ $side = before ]; then SRC=/tmp/before2/src; else SRC=/work/main/src; fi
  for m in cd tract; do
    rm -rf /tmp/cdt/$side/$m
    OMP_NUM_THREADS=1 PYTHONPATH=$SRC /work/main/.venv/bin/python -c "import sys; from progdistill.cli import main; sys.exit(main())" distill --from $T --method $m --out /tmp/cdt/$side/$m --no-progress --set distill.start_steps=8 --set distill.target_steps=1 --set distill.batch_size=64 --set distill.updates_per_round=30 --set distill.checkpoint_every=20 --set distill.log_samples=8 > /dev/null
  done
done
/work/main/.venv/bin/python - <<'PY'
import json
from pathlib import Path
import torch
from safetensors.torch import load_file
n=0
for m in ("cd","tract"):
    for f in sorted((Path("/tmp/cdt/before")/m/"students").glob("*.safetensors")):
        g=Path("/tmp/cdt/after")/m/"students"/f.name
        a,b=load_file(f),load_file(g)
        assert a.keys()==b.keys() and all(torch.equal(a[k],b[k]) for k in a), f
        ra=json.loads(f.with_suffix(".json").read_text()); rb=json.loads(g.with_suffix(".json").read_text())
        for r in (ra,rb): r.pop("token"); r.pop("teacher",None); r.pop("config",None)
        assert ra==rb, f
        n+=1
print("cd/tract students identical:", n)
PY
