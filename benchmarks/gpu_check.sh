#!/usr/bin/env bash
# The prepared GPU check in one command (see benchmarks/gpu_check.py for what it measures):
#   benchmarks/gpu_check.sh OUT [gpu_check.py options, e.g. --dry-run or --budget-s 400]
# Installs wheels carried in .whl/ (packages the GPU machine's image lacks, e.g. diffusers) into /tmp/site first,
# then runs the check with this checkout's sources. Python: $PYTHON, else python3.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: benchmarks/gpu_check.sh OUT [options]}
shift
py=${PYTHON:-python3}
if compgen -G ".whl/*.whl" > /dev/null; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "gpu_check.sh: installing the carried wheels failed" >&2; exit 1; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
mkdir -p "$out"
"$py" benchmarks/gpu_check.py --out "$out" "$@" 2>&1 | tee "$out/gpu_check.log"
exit "${PIPESTATUS[0]}"
