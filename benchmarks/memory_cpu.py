"""Benchmark: what gradient checkpointing saves and costs, on the CPU, for the latent benchmark's networks.

For each network (the latent benchmark's text-conditioned U-Net, `tiny_sd.tiny_unet` with channels 64, 128 on
4 x 8 x 8 latents and 16 x 64 text; and its SD3 variant, an SD3Transformer2DModel of 4 layers, 4 heads of 32, patch 1)
and each batch size, one child process per setting builds the network as `progdistill` builds it, runs three
training steps (forward, MSE loss, backward, Adam) with perf.gradient_checkpointing off or on, and reports:

- peak memory of the steps: the process's resident-set high-water mark (ru_maxrss) after the steps minus before
  them (weights, optimizer state and the batch already allocated before). This is an approximation of the
  activation memory on the CPU: the allocator may keep freed pages, and the first step also allocates Adam's state
  (the same in both settings);
- the time per step (the faster of the last two steps).

    python benchmarks/memory_cpu.py --out runs/memory_cpu      # ~5 minutes on 2 cores; run nothing beside it

Writes OUT/memory.json (and copies it to benchmarks/results/memory_cpu/ unless --no-results-copy).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "memory_cpu"
NETWORKS = ("sd_unet", "sd3")


def build(kind: str):
    import torch

    from progdistill.interop.tiny_sd import tiny_unet

    torch.manual_seed(0)
    if kind == "sd_unet":
        net = tiny_unet(64, 8, channels=(64, 128))
        cond = {"encoder_hidden_states": (16, 64)}

        def call(z, t, c):
            return net(z, t, encoder_hidden_states=c["encoder_hidden_states"]).sample
    else:
        from diffusers import SD3Transformer2DModel

        net = SD3Transformer2DModel(sample_size=8, patch_size=1, in_channels=4, out_channels=4, num_layers=4,
                                    attention_head_dim=32, num_attention_heads=4, caption_projection_dim=128,
                                    joint_attention_dim=64, pooled_projection_dim=64)
        cond = {"encoder_hidden_states": (16, 64), "pooled_projections": (64,)}

        def call(z, t, c):
            return net(hidden_states=z, timestep=t, encoder_hidden_states=c["encoder_hidden_states"],
                       pooled_projections=c["pooled_projections"], return_dict=False)[0]
    return net, cond, call


def child(kind: str, batch: int, checkpointing: bool) -> dict:
    import torch

    from progdistill.nets.base import enable_gradient_checkpointing

    torch.set_num_threads(1)
    net, cond_shapes, call = build(kind)
    if checkpointing:
        enable_gradient_checkpointing(net)
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(batch, 4, 8, 8, generator=g)
    t = torch.rand(batch, generator=g) * 1000
    cond = {k: torch.randn(batch, *shape, generator=g) for k, shape in cond_shapes.items()}
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(3):
        start = time.perf_counter()
        loss = (call(z, t, cond) - z).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - start)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    params = sum(p.numel() for p in net.parameters())
    return {"network": kind, "batch": batch, "gradient_checkpointing": checkpointing, "parameters": params,
            "peak_rss_delta_mib": round((after - before) / 1024, 1), "step_s": round(sorted(times[1:])[0], 4)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="output folder (parent mode)")
    p.add_argument("--batches", type=int, nargs="*", default=[64, 256])
    p.add_argument("--no-results-copy", action="store_true")
    p.add_argument("--child", nargs=3, metavar=("NETWORK", "BATCH", "CHECKPOINTING"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print(json.dumps(child(a.child[0], int(a.child[1]), a.child[2] == "1")))
        return
    if not a.out:
        p.error("--out is required")
    rows = []
    for kind in NETWORKS:
        for batch in a.batches:
            for on in (False, True):
                done = subprocess.run([sys.executable, __file__, "--child", kind, str(batch), "1" if on else "0"],
                                      capture_output=True, text=True, check=True)
                rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
                print(rows[-1], flush=True)
    for row in rows:
        if row["gradient_checkpointing"]:
            base = next(r for r in rows if r["network"] == row["network"] and r["batch"] == row["batch"]
                        and not r["gradient_checkpointing"])
            row["memory_vs_off"] = round(row["peak_rss_delta_mib"] / max(base["peak_rss_delta_mib"], 1e-9), 3)
            row["time_vs_off"] = round(row["step_s"] / base["step_s"], 3)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"rows": rows, "command": " ".join(["python", "benchmarks/memory_cpu.py", *sys.argv[1:]]),
              "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, torch threads 1",
              "date": time.strftime("%Y-%m-%d")}
    (out / "memory.json").write_text(json.dumps(report, indent=2))
    if not a.no_results_copy:
        RESULTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(out / "memory.json", RESULTS / "memory.json")


if __name__ == "__main__":
    main()
