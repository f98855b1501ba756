"""CausalTransformer: a stack of causal self-attention blocks over a sequence (SASRec's
encoder, Kang & McAuley, ICDM 2018).

Each block is, as in the paper's eq. (4), g(x) = x + Dropout(g(LayerNorm(x))) for g the
multi-head self-attention and then the point-wise feed-forward net
ReLU(x W1 + b1) W2 + b2; a final LayerNorm closes the stack (pre-LN needs it).

Masks: position t attends to positions <= t (causal) that are not padding. A position always
attends to itself, padding or not, so no row of the softmax is empty: a padding position
(all of whose earlier keys are padding too in a left-padded sequence) gets finite output, and
no real position ever sees it, so it cannot leak NaN into anything real.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def causal_mask(valid: Tensor | None, length: int, device=None) -> Tensor:
    """(B, L) bool "not padding" (or None: no padding) -> bool (B or 1, 1, L, L) attention mask,
    True where query t may attend key s: s <= t and (key s is not padding or s == t)."""
    causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    if valid is None:
        return causal[None, None]
    eye = torch.eye(length, dtype=torch.bool, device=valid.device)
    return (causal & (valid[:, None, :] | eye))[:, None]


class CausalSelfAttention(nn.Module):
    """(B, L, dim) -> (B, L, dim): multi-head scaled dot-product attention under a bool mask."""

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}.")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.dropout = dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
        )  # (B, heads, L, head_dim)
        return self.out(out.transpose(1, 2).reshape(b, n, d))


class CausalBlock(nn.Module):
    """One pre-LN block: x + Dropout(Attn(LN(x))), then x + Dropout(FFN(LN(x)))."""

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        self.attn_norm = nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, num_heads, dropout)
        self.ffn_norm = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(
            nn.Linear(dim, dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(dim, dim)
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        x = x + self.drop(self.attn(self.attn_norm(x), mask))
        return x + self.drop(self.ffn(self.ffn_norm(x)))


class CausalTransformer(nn.Module):
    """(B, L, dim) sequence, (B, L) bool `valid` (False = padding; None = none) -> (B, L, dim).
    The output at position t depends only on inputs at positions <= t that are not padding
    (and on position t itself). With num_layers = 0 it is the final LayerNorm alone. The
    point-wise feed-forward net is `dim` wide, as in SASRec."""

    def __init__(self, dim: int, num_layers: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        self.blocks = nn.ModuleList(CausalBlock(dim, num_heads, dropout) for _ in range(num_layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, valid: Tensor | None = None) -> Tensor:
        mask = causal_mask(valid, x.shape[1], x.device)
        for block in self.blocks:
            x = block(x, mask)
        return self.norm(x)
