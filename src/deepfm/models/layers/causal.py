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

from deepfm.models.layers.dnn import Dropout


def causal_mask(valid: Tensor | None, length: int, device=None) -> Tensor:
    """(B, L) bool "not padding" (or None: no padding) -> bool (B or 1, 1, L, L) attention mask,
    True where query t may attend key s: s <= t and (key s is not padding or s == t)."""
    causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    if valid is None:
        return causal[None, None]
    eye = torch.eye(length, dtype=torch.bool, device=valid.device)
    return (causal & (valid[:, None, :] | eye))[:, None]


class CausalSelfAttention(nn.Module):
    """(B, L, dim) -> (B, L, dim): multi-head scaled dot-product attention under a bool mask;
    with `last`, only the last position's output (B, 1, dim), its keys and values still from
    every position (what a stack needs of its final block when it reads one position)."""

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}.")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.drop = Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor, last: bool = False) -> Tensor:
        b, n, d = x.shape
        if last:
            q = F.linear(x[:, -1:], self.qkv.weight[:d], self.qkv.bias[:d])
            kv = F.linear(x, self.qkv.weight[d:], self.qkv.bias[d:])
            q = q.reshape(b, 1, self.num_heads, self.head_dim).transpose(1, 2)
            k, v = kv.reshape(b, n, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
            mask = mask[..., -1:, :]
        else:
            qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim)
            q, k, v = qkv.permute(2, 0, 3, 1, 4)
        out = self._attend(q, k, v, mask)  # (B, heads, queries, head_dim)
        return self.out(out.transpose(1, 2).reshape(b, q.shape[2], d))

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
        if not self.training or self.drop.p == 0.0 or q.device.type != "cpu":
            p = self.drop.p if self.training else 0.0
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        # training on the CPU: the weights' dropout mask from layers.dnn.Dropout's cheap bits
        # (torch's bernoulli_ mask was over a quarter of a step with a 50-item history)
        scores = (q @ k.transpose(-2, -1)) * self.head_dim**-0.5
        weights = torch.softmax(scores.masked_fill(~mask, -torch.inf), dim=-1)
        return self.drop(weights) @ v


class CausalBlock(nn.Module):
    """One pre-LN block: x + Dropout(Attn(LN(x))), then x + Dropout(FFN(LN(x))); with `last`,
    the last position's row only."""

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        self.attn_norm = nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, num_heads, dropout)
        self.ffn_norm = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(
            nn.Linear(dim, dim), nn.ReLU(), Dropout(dropout), nn.Linear(dim, dim)
        )
        self.drop = Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor, last: bool = False) -> Tensor:
        attended = self.attn(self.attn_norm(x), mask, last)
        x = (x[:, -1:] if last else x) + self.drop(attended)
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

    def forward(self, x: Tensor, valid: Tensor | None = None, last: bool = False) -> Tensor:
        """last: only the last position's output, (B, dim): the final block then computes that
        row alone (the earlier blocks still need every position)."""
        mask = causal_mask(valid, x.shape[1], x.device)
        for i, block in enumerate(self.blocks):
            x = block(x, mask, last and i == len(self.blocks) - 1)
        return self.norm(x[:, -1] if last else x)
