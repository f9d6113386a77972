"""Where the time of an eager training step goes on the CPU, by operator kind: what torch.compile can fuse
(normalisation, element-wise, copies) against what it leaves to the same library kernels (convolutions, matrix
products). Explains the speed-up `throughput.py --compare-compile` measures.

    python benchmarks/profile_compile_cpu.py --out runs/profile-cpu      # fashion_mnist U-Net, batch 64

Writes OUT/profile_cpu.json (self CPU time by kind and the top operators) and OUT/profile_cpu.txt (the table)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from progdistill.build import build_denoiser, schedule_of
from progdistill.config import load_config
from progdistill.diffusion.weighting import weighted_loss
from progdistill.training.objectives import TeacherObjective

# Operator kinds by name fragment; the first that matches wins.
KINDS = (("convolution", ("conv", "mkldnn")), ("matmul", ("mm", "linear", "addmm", "bmm", "matmul")),
         ("normalisation", ("group_norm", "native_group_norm", "layer_norm", "batch_norm")),
         ("attention", ("attention", "softmax")), ("optimizer", ("adam", "_foreach")),
         ("copies", ("copy_", "contiguous", "to", "clone", "cat")))


def kind_of(name: str) -> str:
    lowered = name.lower()
    for kind, fragments in KINDS:
        if any(f in lowered for f in fragments):
            return kind
    return "element-wise and other"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--preset", default="fashion_mnist")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    cfg = load_config(args.preset, ['device="cpu"'])
    shape, classes = ((3, 32, 32), 0) if args.preset == "cifar10" else ((1, 28, 28), 10)
    torch.manual_seed(0)
    denoiser = build_denoiser(cfg, shape, classes)
    objective = TeacherObjective(schedule_of(cfg))
    optimizer = torch.optim.Adam(denoiser.parameters(), lr=1e-4)
    x = torch.rand(args.batch, *shape) * 2 - 1
    labels = torch.arange(args.batch) % classes if classes else None
    generator = torch.Generator().manual_seed(0)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        target = objective(x, labels, generator)
        x_hat = denoiser(target.z_t, target.logsnr, labels=labels)
        weighted_loss(x_hat, target.x, target.logsnr, cfg.diffusion.weighting).backward()
        optimizer.step()

    step()  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    events = [e for e in prof.key_averages() if e.key.startswith("aten::")]
    total = sum(e.self_cpu_time_total for e in events)
    by_kind: dict[str, float] = {}
    for e in events:
        by_kind[kind_of(e.key)] = by_kind.get(kind_of(e.key), 0.0) + e.self_cpu_time_total / total
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:15]
    result = {"preset": args.preset, "batch": args.batch, "steps": args.steps, "threads": torch.get_num_threads(),
              "torch": torch.__version__, "share_by_kind": dict(sorted(by_kind.items(), key=lambda kv: -kv[1])),
              "top_operators": [{"name": e.key, "self_cpu_share": e.self_cpu_time_total / total, "calls": e.count}
                                for e in top]}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "profile_cpu.json").write_text(json.dumps(result, indent=2))
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
    (args.out / "profile_cpu.txt").write_text(table)
    for kind, share in result["share_by_kind"].items():
        print(f"{kind:>24}: {share:6.1%}")


if __name__ == "__main__":
    main()
