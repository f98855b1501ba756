"""FieldAttention: multi-head self-attention across fields (the interacting layer of AutoInt,
Song et al., CIKM 2019).

Each field attends to every field, so one layer models pairwise interactions with learned,
input-dependent weights and a stack of n layers reaches higher orders. Fields are a set, not
a sequence: there is no positional encoding, so the layer is permutation-equivariant over
fields (what a field *is* lives in its embedding, which comes from its own table).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class FieldAttention(nn.Module):
    """(B, F, dim) -> (B, F, num_heads * head_dim)."""

    def __init__(
        self, dim: int, num_heads: int, head_dim: int, dropout=0.0, residual=True, layer_norm=True
    ):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.out_dim = num_heads * head_dim
        self.dropout = dropout
        # no biases, as in AutoInt: a bias shared by all fields adds nothing to the softmax
        # over keys and only shifts every value alike
        self.qkv = nn.Linear(dim, 3 * self.out_dim, bias=False)
        if not residual:
            self.residual = None
        elif dim == self.out_dim:
            self.residual = nn.Identity()
        else:
            self.residual = nn.Linear(dim, self.out_dim, bias=False)
        self.norm = nn.LayerNorm(self.out_dim) if layer_norm else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        b, f, _ = x.shape
        # each (B, heads, F, head_dim)
        q, k, v = self.qkv(x).reshape(b, f, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        # Written out rather than F.scaled_dot_product_attention, whose fused CPU kernel is ~3x
        # slower with ~10 fields; scores are laid out (B, heads, key, query) because the CPU
        # softmax over a short last axis is ~4x slower than over a middle one.
        scores = (k * self.head_dim**-0.5) @ q.transpose(-2, -1)
        weights = F.dropout(torch.softmax(scores, dim=-2), self.dropout, self.training)
        out = (weights.transpose(-2, -1) @ v).transpose(1, 2).reshape(b, f, self.out_dim)
        if self.residual is not None:
            out = out + self.residual(x)
        return self.norm(out)


def field_attention_stack(
    num_layers: int, dim: int, num_heads: int, head_dim: int, **options
) -> nn.Sequential:
    """num_layers FieldAttention layers (with FieldAttention's `options`), the first reading
    `dim`, the others the previous layer's num_heads * head_dim. With num_layers = 0 it is
    the identity."""
    width = num_heads * head_dim
    layers = (
        FieldAttention(dim if i == 0 else width, num_heads, head_dim, **options)
        for i in range(num_layers)
    )
    return nn.Sequential(*layers)
