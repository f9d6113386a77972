"""Before/after check of a refactor that must not change results: runs the same small jobs with two source trees
(the previous release's and this checkout's) and compares what they write.

- Training, every mode on tiny 2-D settings: a teacher (with periodic checkpoints), plain distillation 8 -> 1,
  guided distillation (label-dropout teacher, stage 1 with a w margin, stage 2 4 -> 1), an eps teacher distilled
  into v students with a warm-up. Every tensor of every checkpoint is compared (torch.equal), and every record
  with its random pairing token and folder paths left out.
- The demo: `progdistill demo --quick` on the 2-D ring and on Fashion-MNIST (when installed); report.json compared
  byte for byte.
- Start time: `progdistill --help` (three runs each) against `python -c "import torch"`.

Usage (about 10 minutes on 2 CPU cores; run nothing else beside it, the times are wall-clock):

    git archive v0.1.0-COMMIT | tar -x -C /tmp/before      # e.g. 631bd79, the last commit before the reshaping
    python benchmarks/reshape_equivalence.py --before /tmp/before/src --out runs/reshape

Writes OUT/equivalence.json."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

HERE = Path(__file__).resolve().parents[1] / "src"
TINY = ["model.hidden=32", "model.depth=2", "model.emb_dim=16", "data.size=2000", "train.batch_size=64",
        "train.steps=120", "train.warmup=10", "train.checkpoint_every=50", "distill.batch_size=64",
        "distill.updates_per_round=40", "distill.final_updates_per_round=60", "distill.checkpoint_every=20",
        "distill.log_samples=8"]
FASHION = Path("/usr/share/datasets/fashion-mnist")


def _sets(items: list[str]) -> list[str]:
    return [x for item in items for x in ("--set", item)]


def _cli(src: Path, *args: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    code = "import sys; from progdistill.cli import main; sys.exit(main())"
    subprocess.run([sys.executable, "-c", code, *args], env=env, check=True, capture_output=True)


def train_every_mode(src: Path, out: Path) -> None:
    """The training jobs, into out/{plain,guided,eps}."""
    _cli(src, "train", "--config", "toy2d", "--out", str(out / "plain"), "--no-progress", *_sets(TINY))
    _cli(src, "distill", "--from", str(out / "plain" / "teacher"), "--no-progress",
         *_sets(["distill.start_steps=8", "distill.target_steps=1"]))
    _cli(src, "train", "--config", "toy2d", "--out", str(out / "guided"), "--label-dropout", "0.2", "--no-progress",
         *_sets(['data.name="ring_classes"', *TINY]))
    _cli(src, "distill", "--from", str(out / "guided" / "teacher"), "--guided", "--w-min", "0", "--w-max", "2",
         "--w-margin", "0.5", "--stage1-updates", "40", "--no-progress",
         *_sets(["guided.checkpoint_every=20", "distill.start_steps=4", "distill.target_steps=1"]))
    _cli(src, "train", "--config", "toy2d", "--out", str(out / "eps"), "--no-progress",
         *_sets(['model.parameterization="eps"', 'diffusion.schedule="linear"', 'diffusion.weighting="snr"', *TINY]))
    _cli(src, "distill", "--from", str(out / "eps" / "teacher"), "--no-progress",
         *_sets(["distill.start_steps=8", "distill.target_steps=2", "distill.convert_updates=30"]))


def compare_checkpoints(a: Path, b: Path) -> dict:
    """Tensors equal, and records equal apart from the pairing token, folder paths and the config's layout."""
    tensors, records, differ = 0, 0, []
    for path in sorted(a.rglob("*.safetensors")):
        other = b / path.relative_to(a)
        ta, tb = load_file(path), (load_file(other) if other.exists() else {})
        tensors += 1
        if ta.keys() != tb.keys() or any(not torch.equal(ta[k], tb[k]) for k in ta):
            differ.append(f"tensors of {path.relative_to(a)}")
    for path in sorted(a.rglob("*.json")):
        if "tensorboard" in path.parts or path.name == "config.json":
            continue
        other = b / path.relative_to(a)
        ra, rb = (json.loads(p.read_text().replace(str(root), "RUN")) for p, root in ((path, a), (other, b)))
        records += 1
        if isinstance(ra, dict):
            for r in (ra, rb):
                r.pop("token", None)
                r.pop("config", None)  # the config's JSON layout changed on purpose (CHANGELOG 0.2.0)
                # Models now record their guided training margin and students their target clipping (CHANGELOG
                # 0.2.0); the rest of the model block must be equal.
                (r.get("model", {}).get("guidance") or {}).pop("w_margin", None)
                r.get("model", {}).pop("teacher_clip", None)
        if ra != rb:
            differ.append(f"record {path.relative_to(a)}")
    return {"checkpoints": tensors, "records": records, "differ": differ}


def demo_reports(src: Path, out: Path) -> dict[str, Path]:
    """report.json of the quick demos (2-D ring; Fashion-MNIST when Debian's package is installed)."""
    _cli(src, "demo", "--data", "ring", "--quick", "--out", str(out / "ring"), "--no-progress")
    reports = {"ring_quick": out / "ring" / "eval" / "report.json"}
    if FASHION.is_dir():
        _cli(src, "demo", "--quick", "--out", str(out / "fashion"), "--no-progress")
        reports["fashion_mnist_quick"] = out / "fashion" / "eval" / "report.json"
    return reports


def wall(command: list[str], env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, capture_output=True)
    return round(time.perf_counter() - start, 2)


def start_times(src: Path) -> dict[str, list[float]]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    help_cmd = [sys.executable, "-c", "import sys; from progdistill.cli import main; sys.exit(main(['--help']))"]
    try:
        help_times = [wall(help_cmd, env) for _ in range(3)]
    except subprocess.CalledProcessError:  # argparse exits 0 after --help; anything else is a failure
        help_times = []
    return {"progdistill_help_s": help_times,
            "import_torch_s": [wall([sys.executable, "-c", "import torch"], env) for _ in range(3)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, type=Path, help="src/ folder of the previous release")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--compare-only", action="store_true", help="compare what an earlier run left in --out")
    parser.add_argument("--new-metric", action="append", default=[],
                        help="a report metric the after tree adds on purpose (repeatable): the reports are also "
                             "compared with its rows left out")
    args = parser.parse_args()
    result: dict = {"machine": f"{os.cpu_count()} CPU cores", "date": time.strftime("%Y-%m-%d"),
                    "torch": torch.__version__}
    reports = {}
    if args.compare_only:
        result |= json.loads((args.out / "equivalence.json").read_text())
    for name, src in (("before", args.before.resolve()), ("after", HERE)):
        if args.compare_only:
            found = {key: args.out / name / "demo" / folder / "eval" / "report.json"
                     for key, folder in (("ring_quick", "ring"), ("fashion_mnist_quick", "fashion"))}
            reports[name] = {key: path for key, path in found.items() if path.exists()}
            continue
        print(f"{name}: training every mode, quick demos, start times", flush=True)
        train_every_mode(src, args.out / name / "train")
        reports[name] = demo_reports(src, args.out / name / "demo")
        result[f"start_{name}"] = start_times(src)
    result["training"] = compare_checkpoints(args.out / "before" / "train", args.out / "after" / "train")
    result["demo_reports_identical"] = {key: reports["before"][key].read_bytes() == reports["after"][key].read_bytes()
                                        for key in reports["before"]}
    if args.new_metric:
        result["demo_reports_identical_without_new_metrics"] = {
            "new_metrics": args.new_metric,
            **{key: json.loads(reports["before"][key].read_text()) == [
                r for r in json.loads(reports["after"][key].read_text()) if r["metric"] not in args.new_metric]
               for key in reports["before"]}}
    (args.out / "equivalence.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
