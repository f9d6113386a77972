"""What distilling Stable Diffusion 1.5 with progdistill costs: FLOPs, parameters and memory of one distillation
update, measured on the meta device (no weights, no GPU), and the wall time of whole schedules computed from them.

    .venv/bin/python benchmarks/sd15_cost.py        # writes benchmarks/results/sd15_cost/sd15_cost.json

docs/sd15_cost.md gives the tables. Everything is built from SD 1.5's UNet config (below) at random init on the
meta device: tensors there have shapes and dtypes but no data, so a full 860M-parameter training step runs on a
2-core CPU in seconds.

Measured (by running the model on the meta device):
- parameter counts: the UNet, the w input of a guided student (time_embedding.cond_proj), and a rank-64 LoRA on
  to_q/to_k/to_v/to_out.0 made by peft through diffusers' unet.add_adapter;
- FLOPs (torch.utils.flop_counter.FlopCounterMode: matmuls, convolutions, attention; 2 FLOPs per multiply-add) of a
  forward at 64x64x4 latents with 77x768 text states, and of the student's forward + backward (with and without
  diffusers' gradient checkpointing, full fine-tuning and LoRA);
- memory: the bytes alive at every operator of one whole update (teacher evaluations, student forward, backward,
  Adam step), tracked per storage (LiveMem below), at per-GPU batches 8 and 32.

Emulated, so the memory figures are a model of a CUDA run rather than a CUDA measurement:
- bf16 autocast (accelerate's mixed_precision="bf16" is torch.autocast): class AMP below casts to bf16 the inputs
  of convolutions, linear layers, matmuls and attention (weights of trainable parameters cached for the forward,
  as autocast caches them) and to fp32 those of group_norm, layer_norm, softmax, exp, mse_loss, as CUDA autocast's
  op lists do; other ops follow type promotion.
- attention: F.scaled_dot_product_attention is routed to aten._scaled_dot_product_flash_attention (what SDPA picks
  for bf16 on A100/H100; it keeps q, k, v, out and the log-sum-exp for backward, never the L x L matrix). On the meta
  device SDPA would otherwise take its math path and store the 4096 x 4096 attention matrices.
- Adam: foreach=True, the implementation torch picks on CUDA when perf.fused_adam is off (the project's default).
Not in the figures: the CUDA context and library workspaces (about 0.5-1 GiB), allocator fragmentation, DDP's
gradient buckets (computed in the doc: one more fp32 gradient copy on multi-GPU runs).

Runs single-threaded (torch.set_num_threads(1)) in under two minutes on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import time
import warnings
import weakref
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode
from torch.utils.weak import WeakIdKeyDictionary

warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")

# SD 1.5's unet/config.json values (runwayml/stable-diffusion-v1-5), written out: no download.
SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32, norm_eps=1e-5, act_fn="silu",
    center_input_sample=False, flip_sin_to_cos=True, freq_shift=0, downsample_padding=1, mid_block_scale_factor=1,
)
TEXT_LEN, TEXT_DIM = 77, 768  # CLIP ViT-L/14 last hidden states
LATENT = (4, 64, 64)  # 512x512 images through the VAE's factor 8
W_DIM = 64  # a guided student's time_cond_proj_dim: progdistill's guided.embed_dim default
LORA_RANK = 64
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
BATCHES = (8, 32)  # per-GPU micro-batches of the memory table
GiB = 2 ** 30

# Computed side: peaks and schedules (docs/sd15_cost.md).
GPUS = {"A100 80GB": 312e12, "H100 80GB SXM": 989e12}  # dense bf16 tensor-core peak, FLOP/s
MFU = (0.40, 0.11)  # the stated assumption; and the project's measured 10.7% (cifar10 U-Net on an H200)
SCHEDULES = {
    # stage 1 updates, updates per round, rounds (8 -> 4 -> 2 -> 1), global batch
    "paper-style (ImageNet-64 config: batch 2048, 50k updates per round)": (50_000, 50_000, 3, 2048),
    "project defaults (batch 512, 4k per round, stage 1 2k)": (2_000, 4_000, 3, 512),
    "small (batch 128, 2k per round, stage 1 1k)": (1_000, 2_000, 3, 128),
}
# Raw bytes per cached example: the brief's fp16, and float32 as the in-progress data/captions.py stores them.
CACHE_BYTES = {"latent_fp16": 2 * 4 * 64 * 64, "text_fp16": 2 * TEXT_LEN * TEXT_DIM,
               "latent_fp32": 4 * 4 * 64 * 64, "text_fp32": 4 * TEXT_LEN * TEXT_DIM, "ids_int32": 4 * TEXT_LEN,
               "image_uint8_512": 3 * 512 * 512}


# ----------------------------------------------------------------------------------------------------------- models
def build_unet(w_dim: int | None = None):
    """SD 1.5's UNet2DConditionModel on the meta device (time_cond_proj_dim = w_dim for a guided student)."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return UNet2DConditionModel(**SD15_UNET, time_cond_proj_dim=w_dim)


def add_lora(unet, names=("teacher", "student")):
    """Rank-64 LoRA adapters on the attention projections (peft via diffusers); the cond_proj of a guided student
    kept per adapter (modules_to_save) so that training the student's does not move the teacher's."""
    from peft import LoraConfig

    for name in names:
        cfg = LoraConfig(r=LORA_RANK, lora_alpha=LORA_RANK, init_lora_weights=True, target_modules=LORA_TARGETS,
                         modules_to_save=["cond_proj"] if unet.config.time_cond_proj_dim else None)
        unet.add_adapter(cfg, adapter_name=name)
    unet.to("meta")  # peft 0.21.2 puts the second adapter's LoRA weights on the CPU when the base is on meta
    activate(unet, names[-1])
    return unet


def activate(unet, name: str) -> None:
    """Make adapter `name` the one the UNet runs, and only its parameters trainable. peft's set_adapter flips
    requires_grad itself but (peft 0.21.2, two adapters) leaves the other adapter's modules_to_save copy trainable."""
    unet.set_adapter(name)
    for n, p in unet.named_parameters():
        p.requires_grad_(f".{name}." in n)


def n_params(params) -> int:
    return sum(p.numel() for p in params)


def count_params() -> dict:
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel

    plain, guided = build_unet(), build_unet(W_DIM)
    with torch.device("meta"):  # SD 1.5's text_encoder/ and vae/ configs (needed only to build the caches)
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
            max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768))
        vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
                            block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32, sample_size=512)
    lora = add_lora(build_unet(), names=("student",))
    lora_params = [p for n, p in lora.named_parameters() if "lora_" in n]
    per_module = {}
    for n, p in lora.named_parameters():
        if "lora_" in n:
            key = next(t for t in LORA_TARGETS if f".{t}.lora_" in n)
            per_module[key] = per_module.get(key, 0) + p.numel()
    lora_layers = sum(1 for n, _ in lora.named_modules() if n.endswith(tuple("." + t for t in LORA_TARGETS))
                      and not n.endswith(".base_layer"))
    return {"unet": n_params(plain.parameters()),
            "unet_guided": n_params(guided.parameters()),
            "cond_proj": n_params(guided.time_embedding.cond_proj.parameters()),
            "lora_rank64": n_params(lora_params), "lora_by_projection": per_module, "lora_wrapped_linears": lora_layers,
            "unet_by_part": {k: n_params(getattr(plain, k).parameters()) for k in
                             ("conv_in", "time_embedding", "down_blocks", "mid_block", "up_blocks", "conv_out")},
            "text_encoder": n_params(text_encoder.parameters()), "vae": n_params(vae.parameters())}


# ------------------------------------------------------------------------------------------- emulation of autocast
_LOW = {torch.conv2d, F.linear, torch.matmul, torch.bmm, torch.baddbmm, torch.addmm}
_FP32 = {F.group_norm, torch.group_norm, F.layer_norm, torch.layer_norm, F.softmax, torch.softmax, torch.exp,
         F.mse_loss}


class AMP(TorchFunctionMode):
    """CUDA bf16 autocast's casting rules (see the module docstring), plus flash attention for SDPA."""

    def __init__(self):
        super().__init__()
        self.cache, self.caching = {}, True

    def cast(self, t, dtype):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.dtype == dtype:
            return t
        if self.caching and isinstance(t, torch.nn.Parameter) and t.requires_grad and torch.is_grad_enabled():
            if id(t) not in self.cache:  # autocast caches casts of trainable leaves until it exits
                self.cache[id(t)] = t.to(dtype)
            return self.cache[id(t)]
        return t.to(dtype)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            if kwargs.get("attn_mask") is not None or kwargs.get("is_causal") or kwargs.get("dropout_p"):
                raise NotImplementedError("only unmasked, non-causal attention without dropout is routed")
            q, k, v = (self.cast(a, torch.bfloat16) for a in args[:3])
            return torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, False, False,
                                                                      scale=kwargs.get("scale"))[0]
        if func in _LOW or func in _FP32:
            dtype = torch.bfloat16 if func in _LOW else torch.float32
            args = tuple(self.cast(a, dtype) for a in args)
            kwargs = {k: self.cast(v, dtype) for k, v in kwargs.items()}
        return func(*args, **kwargs)


# --------------------------------------------------------------------------------------------- live-memory tracker
class LiveMem(TorchDispatchMode):
    """Bytes of the storages created inside it and still alive, after every operator; `peak` is their maximum.
    Storages that existed before (weights, optimizer states, inputs) are passed as `external` and not counted."""

    def __init__(self, external=()):
        super().__init__()
        self.seen = WeakIdKeyDictionary()
        for t in external:
            self.seen[t.untyped_storage()] = 0
        self.current = self.peak = 0

    def _free(self, nbytes: int) -> None:
        self.current -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                st = t.untyped_storage()
                if st not in self.seen:
                    nbytes = st.nbytes()
                    self.seen[st] = nbytes
                    self.current += nbytes
                    weakref.finalize(st, self._free, nbytes)
        self.peak = max(self.peak, self.current)
        return out

    def reset_peak(self) -> None:
        self.peak = self.current


def storage_bytes(tensors) -> int:
    """Bytes of the distinct storages under `tensors`."""
    seen = {}
    for t in tensors:
        st = t.untyped_storage()
        seen[st._cdata] = st.nbytes()
    return sum(seen.values())


def checkpoint_with_amp(module, *args):
    """diffusers' default checkpointing function (torch.utils.checkpoint, use_reentrant=False) with AMP active during
    the recomputation, as torch.utils.checkpoint re-enters the forward's autocast state there (a TorchFunctionMode
    is not carried into the backward)."""
    def contexts():
        recompute = AMP()
        recompute.caching = False  # autocast's cache lives only within each block's recomputation
        return contextlib.nullcontext(), recompute

    return torch.utils.checkpoint.checkpoint(module.__call__, *args, use_reentrant=False, context_fn=contexts)


# ------------------------------------------------------------------------------------------------ one update step
def inputs(b: int):
    z = torch.empty(b, *LATENT, device="meta")
    text = torch.empty(b, TEXT_LEN, TEXT_DIM, device="meta")
    t = torch.full((b,), 500, device="meta", dtype=torch.long)
    w = torch.empty(b, W_DIM, device="meta")
    return z, text, t, w


def measure_update(kind: str, checkpointing: bool, b: int, count_flops: bool = False) -> dict:
    """One guided stage-2 distillation update at per-GPU batch b, as progdistill runs it: two teacher evaluations
    without gradients, the student's forward under autocast, the loss, backward outside autocast, Adam.
    kind "full": the student is a whole fp32 copy trained with Adam beside an fp32 teacher copy.
    kind "lora": one fp32 base shared by teacher and student, adapters "teacher" (frozen) and "student" (trained).
    The stage-1 teacher call (conditional and unconditional in one call on the doubled batch) is measured too.
    count_flops: count FLOPs instead (FlopCounterMode's module hooks keep tensors alive, so its memory is not the
    model's: the two are measured in separate runs)."""
    student = build_unet(W_DIM)
    if kind == "full":
        teacher = build_unet(W_DIM).requires_grad_(False)
        trainable = list(student.parameters())
    else:
        student = add_lora(student)
        teacher = student
        trainable = [p for n, p in student.named_parameters() if p.requires_grad]
        assert all(".student" in n for n, p in student.named_parameters() if p.requires_grad)
    if checkpointing:
        student.enable_gradient_checkpointing(checkpoint_with_amp)
    student.train()
    teacher_params = [] if teacher is student else list(teacher.parameters())
    opt = torch.optim.Adam(trainable, lr=1e-4, foreach=True)
    for p in trainable:  # allocate the optimizer states before measuring: a step in the middle of a round
        p.grad = torch.zeros_like(p)
    opt.step()
    opt.zero_grad(set_to_none=True)
    states = [s for st in opt.state.values() for s in st.values() if isinstance(s, torch.Tensor)]
    z, text, t, w = inputs(b)
    z2, text2, t2, _ = inputs(2 * b)

    def set_adapter(name):
        if kind == "lora":
            activate(student, name)

    static = {"student_or_base_weights": storage_bytes(student.parameters()) if kind == "full" else
              storage_bytes(p for n, p in student.named_parameters()
                            if "lora_" not in n and "modules_to_save" not in n),
              "teacher_weights": storage_bytes(teacher_params),
              "adapters_and_w_input": 0 if kind == "full" else
              storage_bytes(p for n, p in student.named_parameters() if "lora_" in n or "modules_to_save" in n),
              "adam_states": storage_bytes(states)}
    external = list(student.parameters()) + teacher_params + states + [z, text, t, w, z2, text2, t2]
    mem = LiveMem(external) if not count_flops else contextlib.nullcontext(LiveMem(external))
    phases, flops = {}, {}
    t0 = time.perf_counter()
    with mem as mem:
        # guided stage 1's teacher: [z; z] with [c; null] in one call, no gradients
        with torch.no_grad(), AMP():
            set_adapter("teacher")
            out = teacher(z2, t2, encoder_hidden_states=text2).sample
            del out
        phases["teacher_stage1_call_2b"] = mem.peak
        mem.reset_peak()
        # stage 2's teacher: two DDIM steps at the same w, no gradients
        fc = FlopCounterMode(display=False) if count_flops else contextlib.nullcontext()
        with fc, torch.no_grad(), AMP():
            y = teacher(z, t, encoder_hidden_states=text, timestep_cond=w).sample
            y = teacher(y, t, encoder_hidden_states=text, timestep_cond=w).sample
            set_adapter("student")
        if count_flops:
            flops["teacher_two_steps"] = fc.get_total_flops()
        phases["teacher_two_steps"] = mem.peak
        target = y.float()
        after_teacher = mem.current
        mem.reset_peak()
        amp = AMP()
        fc = FlopCounterMode(display=False) if count_flops else contextlib.nullcontext()
        with fc:
            with amp:
                x_hat = student(z, t, encoder_hidden_states=text, timestep_cond=w).sample
            loss = F.mse_loss(x_hat.float(), target)
            phases["student_forward"] = mem.peak
            end_of_forward = mem.current
            mem.reset_peak()
            amp.cache.clear()  # autocast drops its cache on exit; saved casts stay alive through autograd
            loss.backward()  # outside autocast, as progdistill runs it
        if count_flops:
            flops["student_forward_backward"] = fc.get_total_flops()
        phases["student_backward"] = mem.peak
        grads = mem.current - after_teacher
        del x_hat, loss, y, target
        mem.reset_peak()
        opt.step()
        phases["adam_step"] = mem.peak
        opt.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - t0
    if count_flops:
        return {"kind": kind, "gradient_checkpointing": checkpointing, "batch_per_gpu": b, "flops": flops,
                "meta_seconds": round(seconds, 2)}
    static_total = sum(static.values())
    return {"kind": kind, "gradient_checkpointing": checkpointing, "batch_per_gpu": b,
            "trainable_params": n_params(trainable),
            "static_bytes": static, "static_total_bytes": static_total,
            "peak_above_static_bytes_by_phase": phases,
            "student_forward_saved_bytes": end_of_forward - after_teacher,
            "after_backward_bytes": grads,
            "peak_total_bytes": static_total + max(phases.values()),
            "peak_total_GiB": round((static_total + max(phases.values())) / GiB, 2),
            "meta_seconds": round(seconds, 2)}


def measure_forward_flops(b: int, w_dim: int | None) -> dict:
    unet = build_unet(w_dim)
    z, text, t, w = inputs(b)
    fc = FlopCounterMode(display=False)
    with fc, torch.no_grad(), AMP():
        unet(z, t, encoder_hidden_states=text, timestep_cond=w if w_dim else None)
    counts = fc.get_flop_counts()
    by_op = {str(op): n for op, n in counts.get("Global", {}).items()}
    by_part = {}
    for part in ("conv_in", "time_embedding", "down_blocks", "mid_block", "up_blocks", "conv_out"):
        names = [f"UNet2DConditionModel.{part}"] + [f"UNet2DConditionModel.{part}.{i}" for i in range(4)]
        by_part[part] = sum(sum(counts[n].values()) for n in names if n in counts)
    return {"total": fc.get_total_flops(), "by_op": by_op, "by_part": by_part}


# ------------------------------------------------------------------------------------------------------ computed
def schedules_table(fwd: int, student_train: dict) -> list:
    """Wall time of a stage, a round and a whole distillation from the measured per-example FLOPs (the teacher's two
    forwards plus the student's forward and backward), at the assumed peaks and MFUs."""
    rows = []
    for name, (stage1, per_round, rounds, batch) in SCHEDULES.items():
        updates = stage1 + per_round * rounds
        for variant, train in student_train.items():
            flop = 2 * fwd + train
            row = {"schedule": name, "variant": variant, "stage1_updates": stage1, "updates_per_round": per_round,
                   "rounds": rounds, "updates": updates, "global_batch": batch, "flops_per_example": flop,
                   "flops_per_round": per_round * batch * flop, "total_flops": updates * batch * flop,
                   "hours_per_round": {}, "hours_total": {}}
            for gpu, peak in GPUS.items():
                for n in (1, 8):
                    for mfu in MFU:
                        key = f"{n}x {gpu} @ {mfu:.0%} MFU"
                        row["hours_per_round"][key] = round(row["flops_per_round"] / (n * peak * mfu) / 3600, 2)
                        row["hours_total"][key] = round(row["total_flops"] / (n * peak * mfu) / 3600, 2)
            rows.append(row)
    return rows


def memory_fits(updates: list, usable_gib: float = 79.0, ddp_extra: bool = True) -> dict:
    """Per variant and phase, bytes above the static ones = a + b * batch through the two measured batches; the peak
    at batch B is static + the largest phase. `max_batch_80GB`: the largest per-GPU micro-batch whose peak stays
    under `usable_gib` (80 GiB less about 1 GiB of CUDA context), on one GPU and on several (DDP's gradient buckets:
    one more fp32 copy of the trained parameters' gradients)."""
    runs = {}
    for u in updates:
        runs.setdefault(u["kind"] + ("+ckpt" if u["gradient_checkpointing"] else ""), []).append(u)
    out = {}
    for key, (u0, u1) in runs.items():
        b0, b1 = u0["batch_per_gpu"], u1["batch_per_gpu"]
        phases = {}
        for phase, p0 in u0["peak_above_static_bytes_by_phase"].items():
            p1 = u1["peak_above_static_bytes_by_phase"][phase]
            slope = (p1 - p0) / (b1 - b0)
            phases[phase] = (p0 - slope * b0, slope)
        static = u0["static_total_bytes"]

        def peak(b, extra=0):
            return static + extra + max(a + s * b for a, s in phases.values())

        buckets = 4 * u0["trainable_params"]
        fit = {"phases_GiB": {k: {"a": round(a / GiB, 3), "b_per_example": round(s / GiB, 4)}
                              for k, (a, s) in phases.items()},
               "static_GiB": round(static / GiB, 3), "ddp_buckets_GiB": round(buckets / GiB, 3)}
        for label, extra in (("1_gpu", 0), ("ddp", buckets)):
            b = 0
            while peak(b + 1, extra) <= usable_gib * GiB and b < 4096:
                b += 1
            fit[f"max_batch_80GB_{label}"] = b
        fit["peak_GiB_at"] = {str(b): round(peak(b) / GiB, 2) for b in (1, 4, 8, 16, 32, 64)}
        out[key] = fit
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="benchmarks/results/sd15_cost/sd15_cost.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    import diffusers
    import peft

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine()) if Path("/proc/cpuinfo").exists() else ""
    result = {"date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()} CPU cores ({cpu}), "
              "torch.set_num_threads(1), models on the meta device", "torch": torch.__version__,
              "diffusers": diffusers.__version__, "peft": peft.__version__,
              "command": ".venv/bin/python benchmarks/sd15_cost.py", "unet_config": SD15_UNET, "w_dim": W_DIM,
              "lora": {"r": LORA_RANK, "lora_alpha": LORA_RANK, "target_modules": LORA_TARGETS}}
    result["params"] = count_params()
    one, two = measure_forward_flops(1, None), measure_forward_flops(2, None)
    fwd1, fwd2 = one["total"], two["total"]
    result["forward_flops"] = {"batch1": fwd1, "batch2": fwd2,
                               "batch1_guided_student": measure_forward_flops(1, W_DIM)["total"],
                               "per_example_TFLOP": round(fwd2 / 2 / 1e12, 4),
                               "batch1_by_op": one["by_op"], "batch1_by_part": one["by_part"]}
    variants = [(kind, ckpt) for kind in ("full", "lora") for ckpt in (False, True)]
    updates = [measure_update(kind, ckpt, b) for kind, ckpt in variants for b in BATCHES]
    result["updates"] = updates
    counted = [measure_update(kind, ckpt, 2, count_flops=True) for kind, ckpt in variants]
    fwd = fwd2 // 2
    per_ex = {u["kind"] + ("+ckpt" if u["gradient_checkpointing"] else ""):
              u["flops"]["student_forward_backward"] // u["batch_per_gpu"] for u in counted}
    result["flop_runs"] = counted
    result["student_train_flops_per_example"] = per_ex
    result["student_train_in_forwards"] = {k: round(v / fwd, 3) for k, v in per_ex.items()}
    result["teacher_flops_per_example"] = counted[0]["flops"]["teacher_two_steps"] // counted[0]["batch_per_gpu"]
    result["memory_fit"] = memory_fits(updates)
    result["schedules"] = schedules_table(fwd, per_ex)
    result["computed_assumptions"] = {"gpu_peak_bf16_dense_flops": GPUS, "mfu": MFU,
                                      "schedules (stage1, per_round, rounds, global_batch)": SCHEDULES,
                                      "cache_bytes_per_example": CACHE_BYTES}
    result["cache_GB"] = {f"{n:,} pairs": {k: round(v * n / 1e9, 2) for k, v in CACHE_BYTES.items()}
                          for n in (100_000, 1_000_000)}
    result["seconds"] = round(time.perf_counter() - start, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("params", "forward_flops", "student_train_in_forwards", "seconds")},
                     indent=1))
    for u in updates:
        print(u["kind"], u["gradient_checkpointing"], u["batch_per_gpu"], u["peak_total_GiB"],
              {k: round(v / GiB, 2) for k, v in u["peak_above_static_bytes_by_phase"].items()}, u["meta_seconds"])


if __name__ == "__main__":
    main()
