"""On paper: the memory that distilling SDXL, SD3-medium and FLUX.1 holds in weights and optimizer state, per GPU,
for pd, guided pd, LoRA pd and dmd, with and without a bf16 frozen teacher and full sharding over 8 GPUs.

Parameter counts are exact: each network is instantiated on PyTorch's meta device (no memory, no weights) from its
published config (SDXL base 1.0's U-Net, SD3-medium's and FLUX.1-dev's transformers), and the counts are checked
against the published totals before anything is written. The bytes per parameter are those of the project's
training state:

- a frozen network (the teacher, dmd's real score): 4 bytes (float32) or 2 (bf16);
- a trained network: float32 weights, gradients and Adam's two moments, 16 bytes; its EMA (the student's;
  distill.ema_decay), 4 more;
- a LoRA student: the frozen base, shared with its round's teacher (one copy), plus adapters of rank 16 on the
  attention projections (counted exactly: 2 r (in + out) per adapted layer), trained as above;
- dmd: a generator (trained, with EMA), a fake score (trained, no EMA), the real score (frozen);
- full sharding (FSDP FULL_SHARD over N GPUs, one unit per transformer or ResNet block, the rest one root unit):
  everything above divided by N, plus one gathered unit at a time (the largest unit's float32 weights, counted).

Not counted, and so not in these figures: activations (they depend on resolution, batch and gradient checkpointing:
`benchmarks/memory_cpu.py` measures the switch on the CPU), the frozen text encoders and VAE (the latent cache
holds their outputs, so distillation does not keep them resident), the CUDA context and allocator slack.

    python benchmarks/big_teacher_memory.py --out runs/big_memory      # seconds; writes OUT/memory.json

and copies it to benchmarks/results/big_teacher_memory/.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "big_teacher_memory"
GB = 1e9
RANK = 16
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
WRAP_CLASSES = ("BasicTransformerBlock", "ResnetBlock2D", "JointTransformerBlock", "FluxTransformerBlock",
                "FluxSingleTransformerBlock")

MODELS = {
    "SDXL base 1.0 (UNet2DConditionModel)": ("UNet2DConditionModel", 2_567_463_684, dict(
        sample_size=128, in_channels=4, out_channels=4, block_out_channels=[320, 640, 1280], layers_per_block=2,
        down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], transformer_layers_per_block=[1, 2, 10],
        attention_head_dim=[5, 10, 20], cross_attention_dim=2048, use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816)),
    "SD3-medium (SD3Transformer2DModel)": ("SD3Transformer2DModel", 2_028_328_000, dict(
        sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64, num_attention_heads=24,
        joint_attention_dim=4096, caption_projection_dim=1536, pooled_projection_dim=2048, out_channels=16,
        pos_embed_max_size=192)),
    "FLUX.1-dev (FluxTransformer2DModel)": ("FluxTransformer2DModel", 11_901_408_320, dict(
        patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
        num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
        axes_dims_rope=[16, 56, 56])),
}


def counts(class_name: str, config: dict) -> dict:
    """Parameters, LoRA adapter parameters (rank RANK on LORA_TARGETS) and the largest block's parameters."""
    import diffusers
    import torch

    with torch.device("meta"):
        model = getattr(diffusers, class_name)(**config)
    total = sum(p.numel() for p in model.parameters())
    lora = sum(RANK * (m.in_features + m.out_features) for name, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and name.endswith(LORA_TARGETS))
    # The FSDP units of a transformer-block wrap policy: each block class below is one unit, everything else (the
    # embeddings, norms, convolutions outside them) the root unit.
    units = [sum(p.numel() for p in m.parameters()) for m in model.modules() if type(m).__name__ in WRAP_CLASSES]
    root = total - sum(units)
    return {"parameters": total, "lora_parameters": lora, "fsdp_units": len(units) + 1,
            "largest_block_parameters": max(units + [root]), "root_unit_parameters": root}


def state_bytes(method: str, p: int, lora: int, frozen_bytes: int) -> float:
    """Bytes of weights and optimizer state held by one (unsharded) process."""
    trained, ema = 16, 4
    if method in ("pd", "guided pd"):
        return frozen_bytes * p + (trained + ema) * p
    if method == "LoRA pd":  # one frozen base (the round's teacher is base + its adapter), two adapters
        return frozen_bytes * p + (trained + ema) * lora + 4 * lora
    if method == "dmd":
        return frozen_bytes * p + (trained + ema) * p + trained * p
    raise ValueError(method)


def table(models: dict) -> list[dict]:
    rows = []
    for name, c in models.items():
        for method in ("pd", "guided pd", "LoRA pd", "dmd"):
            for frozen, fb in (("float32", 4), ("bf16", 2)):
                one = state_bytes(method, c["parameters"], c["lora_parameters"], fb)
                gathered = 4 * c["largest_block_parameters"]
                rows.append({"model": name, "method": method, "frozen_teacher": frozen,
                             "one_gpu_gb": round(one / GB, 1),
                             "eight_gpus_full_shard_gb_per_gpu": round((one / 8 + gathered) / GB, 1)})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--no-results-copy", action="store_true")
    a = p.parse_args()
    models = {}
    for name, (cls, published, config) in MODELS.items():
        c = counts(cls, config)
        if c["parameters"] != published:
            sys.exit(f"{name}: {c['parameters']} parameters from the config, published {published}: config wrong")
        models[name] = c
    report = {"models": models, "rows": table(models), "lora_rank": RANK, "lora_targets": list(LORA_TARGETS),
              "command": " ".join(["python", "benchmarks/big_teacher_memory.py", *sys.argv[1:]]),
              "date": time.strftime("%Y-%m-%d"),
              "not_counted": ["activations", "frozen text encoders and VAE (cached outputs)", "CUDA context"]}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "memory.json").write_text(json.dumps(report, indent=2))
    for row in report["rows"]:
        print(f"{row['model']:40s} {row['method']:10s} teacher {row['frozen_teacher']:7s} "
              f"1 GPU {row['one_gpu_gb']:7.1f} GB   8 GPUs sharded {row['eight_gpus_full_shard_gb_per_gpu']:6.1f} GB")
    if not a.no_results_copy:
        RESULTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(out / "memory.json", RESULTS / "memory.json")


if __name__ == "__main__":
    main()
