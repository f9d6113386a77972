"""A residual MLP denoiser network for low-dimensional (e.g. 2-D) data, with scale/shift noise conditioning."""

from __future__ import annotations

from torch import Tensor, nn

from .base import DenoiserNet
from .embedding import GuidanceEmbedding, SinusoidalEmbedding, guidance_input


class _Block(nn.Module):
    def __init__(self, hidden: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.emb = nn.Linear(emb_dim, 2 * hidden)
        self.fc1 = nn.Linear(hidden, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.drop = nn.Dropout(dropout)
        self.act = nn.SiLU()

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        scale, shift = self.emb(emb).chunk(2, dim=1)
        y = self.norm(h) * (1 + scale) + shift
        y = self.fc2(self.drop(self.act(self.fc1(self.act(y)))))
        return h + y


class MLPNet(DenoiserNet):
    """net(z, cond, labels) -> output of `out_dim` features; the output layer starts at zero (as the paper's U-Net)."""

    def __init__(
        self,
        data_dim: int = 2,
        out_dim: int = 2,
        hidden: int = 256,
        depth: int = 4,
        emb_dim: int = 128,
        dropout: float = 0.0,
        num_classes: int = 0,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.embed = SinusoidalEmbedding(emb_dim)
        self.emb_mlp = nn.Sequential(nn.Linear(emb_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.label_emb = nn.Embedding(num_classes, emb_dim) if num_classes > 0 else None
        self.inp = nn.Linear(data_dim, hidden)
        self.blocks = nn.ModuleList(_Block(hidden, emb_dim, dropout) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.SiLU(), nn.Linear(hidden, out_dim))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)
        self.w_embed: GuidanceEmbedding | None = None

    def condition_on_w(self, dim: int, scale: float, class_gate: bool = False) -> None:
        """Add the guidance weight w as an input (nets.spec: a w-conditioned network), zero at the start;
        class_gate: w also scales the label embedding's offset from the null class's (the last row)."""
        self.w_embed = GuidanceEmbedding(self.emb_mlp[-1].out_features, dim, scale,
                                         self.label_emb.embedding_dim if class_gate else 0)

    def forward(self, z: Tensor, cond: Tensor, labels: Tensor | None = None, w: Tensor | None = None) -> Tensor:
        emb = self.emb_mlp(self.embed(cond))
        if self.w_embed is not None:
            w = guidance_input(w, z)
            emb = emb + self.w_embed(w)
        if self.label_emb is not None:
            if labels is None:
                raise ValueError("this network is class-conditional: pass labels")
            label_emb = self.label_emb(labels)
            if self.w_embed is not None and self.w_embed.gate is not None:
                label_emb = self.w_embed.gate_classes(w, label_emb, self.label_emb.weight[-1])
            emb = emb + label_emb
        h = self.inp(z)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(h)
