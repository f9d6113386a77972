"""What the project's wrappers of diffusers models (the SD 1.x U-Net, the SD3 and FLUX transformers) share: LoRA
students through peft, and the check of a text condition given as a mapping."""

from __future__ import annotations

import copy
from collections.abc import Mapping

from torch import Tensor, nn

from .args import SpecError

# LoRA students: the attention projections, as diffusers' LoRA training examples adapt them (for the transformers,
# the joint attention's image-stream projections).
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
LORA_ADAPTER = "default"
TEXT_PAIR_KEYS = ("encoder_hidden_states", "pooled_projections")


def lora_block(rank: int, targets=LORA_TARGETS) -> dict:
    """The `lora` argument of a LoRA student's network: its rank (alpha = rank, scale 1, as diffusers assumes for
    LoRA weights saved without their alpha) and the modules adapted."""
    return {"rank": int(rank), "targets": list(targets)}


class LoraHost:
    """LoRA on the diffusers model `self.lora_host()` (peft, through diffusers' add_adapter): a low-rank adapter on
    the attention projections whose B starts at zero, so the network answers exactly as before; only the adapter
    trains. Mixed into an nn.Module that sets `self.lora = None` before calling `add_lora`."""

    lora: dict | None

    def lora_host(self) -> nn.Module:
        raise NotImplementedError

    def add_lora(self, lora: dict) -> None:
        from peft import LoraConfig

        if self.lora is not None:
            raise SpecError("this network already has a LoRA adapter")
        rank = int(lora["rank"])
        self.lora_host().add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                                target_modules=list(lora["targets"])), adapter_name=LORA_ADAPTER)
        self.lora = dict(lora)
        self.train_adapter_only()

    def train_adapter_only(self) -> None:
        """Gradients for the adapter's weights only (the shared base stays frozen)."""
        for name, param in self.named_parameters():
            param.requires_grad_(".lora_" in name)

    def adapter_state(self) -> dict[str, Tensor]:
        """The adapter's weights (a copy): what a LoRA round's teacher adds to the shared base."""
        return {name: p.detach().clone() for name, p in self.named_parameters() if ".lora_" in name}

    def merged_host_state(self) -> dict[str, Tensor]:
        """The diffusers model's weights with the adapter merged in, under the plain model's names."""
        host = self.lora_host()
        if self.lora is None:
            return dict(host.state_dict())
        merged = copy.deepcopy(host)
        for module in merged.modules():
            if hasattr(module, "base_layer") and hasattr(module, "merge"):
                module.merge()
        return {k.replace(".base_layer", ""): v for k, v in merged.state_dict().items() if ".lora_" not in k}


def text_pair(labels: Mapping[str, Tensor] | None, null: Mapping[str, Tensor], batch: int, what: str
              ) -> Mapping[str, Tensor]:
    """The condition {"encoder_hidden_states": [B, L, D], "pooled_projections": [B, P]} of an SD3 or FLUX
    transformer: `labels` checked, or the empty caption's `null` expanded to the batch when None."""
    if labels is None:
        return {k: v.expand(batch, *v.shape) for k, v in null.items()}
    if not isinstance(labels, Mapping) or set(labels) != set(TEXT_PAIR_KEYS):
        got = sorted(labels) if isinstance(labels, Mapping) else f"a tensor of shape {tuple(labels.shape)}"
        raise ValueError(f"{what} takes the condition {{'encoder_hidden_states': [B, L, D], "
                         f"'pooled_projections': [B, P]}}, got {got}")
    return labels
