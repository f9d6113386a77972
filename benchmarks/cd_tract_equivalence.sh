# cd and tract students distilled by two source trees from one teacher, compared (tensors with torch.equal, records
# apart from the pairing token, the teacher's path and, with POP_CONFIG=1, the config, which may gain new keys).
# The "before" tree comes from `git archive COMMIT | tar -x -C DIR`; the teacher from reshape_equivalence.py.
#
#   BEFORE=/tmp/before/src TEACHER=/tmp/reshape/before/train/plain/teacher POP_CONFIG=1 \
#     bash benchmarks/cd_tract_equivalence.sh
set -e
: "${BEFORE:?BEFORE: the src folder of the tree before}" "${TEACHER:?TEACHER: a teacher checkpoint stem}"
AFTER=${AFTER:-$(cd "$(dirname "$0")/.." && pwd)/src}
PY=${PYTHON:-$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/python}
W=${WORK:-/tmp/cdt}
for side in before after; do
  if [ $side = before ]; then SRC=$BEFORE; else SRC=$AFTER; fi
  for m in cd tract; do
    rm -rf "$W/$side/$m"
    OMP_NUM_THREADS=1 PYTHONPATH=$SRC "$PY" -c "import sys; from progdistill.cli import main; sys.exit(main())" \
      distill --from "$TEACHER" --method $m --out "$W/$side/$m" --no-progress --set distill.start_steps=8 \
      --set distill.target_steps=1 --set distill.batch_size=64 --set distill.updates_per_round=30 \
      --set distill.checkpoint_every=20 --set distill.log_samples=8 > /dev/null
  done
done
W="$W" POP_CONFIG=${POP_CONFIG:-0} "$PY" - <<'PY'
import json, os
from pathlib import Path
import torch
from safetensors.torch import load_file
work, pop = Path(os.environ["W"]), os.environ["POP_CONFIG"] == "1"
n = 0
for m in ("cd", "tract"):
    for f in sorted((work / "before" / m / "students").glob("*.safetensors")):
        g = work / "after" / m / "students" / f.name
        a, b = load_file(f), load_file(g)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f
        ra, rb = (json.loads(p.with_suffix(".json").read_text()) for p in (f, g))
        for r in (ra, rb):
            r.pop("token"); r.pop("teacher", None)
            if pop:
                r.pop("config", None)
        assert ra == rb, f
        n += 1
print("cd/tract students identical:", n)
PY
