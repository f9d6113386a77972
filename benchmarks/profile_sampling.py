"""Where DDIM sampling time goes: torch.profiler over one `generate` call and one DDIMPipeline-style loop on the
same UNet, batch and step count, with each side's operator counts and self times side by side.

    python benchmarks/profile_sampling.py [--steps 8] [--batch 64]

It answers whether ours runs extra work per step (more operator calls, or time outside the network) or only the
same network calls at a different speed (machine noise).
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from diffusers import DDIMScheduler
from torch.profiler import profile

from progdistill.build import build_denoiser, schedule_of
from progdistill.config import load_config
from progdistill.sampling import generate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--rows", type=int, default=12, help="operators shown (by our self time)")
    a = p.parse_args()
    cfg = load_config("fashion_mnist", ['device="cpu"'])
    torch.manual_seed(0)
    shape = (1, 28, 28)
    denoiser = build_denoiser(cfg, shape, 10).eval()
    unet = copy.deepcopy(denoiser.net.unet).eval()
    labels = torch.arange(a.batch) % 10
    sched = schedule_of(cfg)
    ddim = DDIMScheduler(num_train_timesteps=1000, timestep_spacing="trailing")

    def ours():
        generate(denoiser, sched, a.steps, a.batch, shape, batch_size=a.batch, labels=labels)

    @torch.no_grad()
    def plain():
        ddim.set_timesteps(a.steps)
        image = torch.randn((a.batch, *shape))
        for t in ddim.timesteps:
            image = ddim.step(unet(image, t, class_labels=labels).sample, t, image, eta=0.0).prev_sample

    stats, wall = {}, {}
    for name, fn in (("ours", ours), ("plain", plain)):
        fn()  # warm-up
        with profile() as prof:
            t0 = time.perf_counter()
            fn()
            wall[name] = time.perf_counter() - t0
        stats[name] = {e.key: (e.count, e.self_cpu_time_total / 1e3) for e in prof.key_averages()}
    keys = sorted(stats["ours"], key=lambda k: -stats["ours"][k][1])[: a.rows]
    print(f"{'operator':<52} {'calls ours':>10} {'calls plain':>11} {'ms ours':>9} {'ms plain':>9}")
    for k in keys:
        (co, to), (cp, tp) = stats["ours"][k], stats["plain"].get(k, (0, 0.0))
        print(f"{k[:52]:<52} {co:>10} {cp:>11} {to:>9.1f} {tp:>9.1f}")
    total = {n: sum(c for c, _ in s.values()) for n, s in stats.items()}
    print(f"operator calls: ours {total['ours']}, plain {total['plain']}; wall (profiled): ours {wall['ours']:.3f} s, "
          f"plain {wall['plain']:.3f} s")


if __name__ == "__main__":
    main()
