"""Factorization-machine second-order interaction via the O(n·k) identity:
sum_{i<j} <e_i, e_j> = 1/2 * sum_k [ (sum_i e_ik)^2 - sum_i e_ik^2 ]."""

from __future__ import annotations

import torch
from torch import nn


def fm_interaction(embeddings: torch.Tensor) -> torch.Tensor:
    """(B, F, k) field embeddings -> (B,) sum of all pairwise inner products."""
    square_of_sum = embeddings.sum(dim=1).pow(2)
    sum_of_square = embeddings.pow(2).sum(dim=1)
    return 0.5 * (square_of_sum - sum_of_square).sum(dim=1)


class FMInteraction(nn.Module):
    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return fm_interaction(embeddings)
