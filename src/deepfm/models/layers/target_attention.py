"""TargetAttention: the candidate item attends over the user's history (DIN, Zhou et al.,
KDD 2018).

Each history item's weight is a small MLP of [key, query, key * query, key - query] plus a
learned bias per position (how recent the item is), softmax-normalised over the filled
positions, so the pooled history is a convex combination of the history's embeddings that
depends on the candidate. An empty history pools to zeros.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class TargetAttention(nn.Module):
    """keys (N, L, dim), query (N, dim), present (N, L) bool -> (N, dim)."""

    def __init__(self, dim: int, length: int, hidden: int = 32):
        super().__init__()
        self.score = nn.Sequential(nn.Linear(4 * dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        self.position = nn.Parameter(torch.zeros(length))

    def weights(self, keys: Tensor, query: Tensor, present: Tensor):
        """(N, L) attention weights (rows without a filled position are all zero)."""
        q = query.unsqueeze(1).expand_as(keys)
        scores = self.score(torch.cat([keys, q, keys * q, keys - q], dim=-1)).squeeze(-1)
        scores = (scores + self.position[: keys.shape[1]]).masked_fill(~present, -torch.inf)
        return torch.softmax(scores, dim=1).nan_to_num(0.0)

    def forward(self, keys: Tensor, query: Tensor, present: Tensor):
        return (self.weights(keys, query, present).unsqueeze(-1) * keys).sum(1)
