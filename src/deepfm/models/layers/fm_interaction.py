"""Factorization-machine second-order interaction via the O(n·k) identity:
sum_{i<j} <e_i, e_j> = 1/2 * sum_k [ (sum_i e_ik)^2 - sum_i e_ik^2 ]."""

from __future__ import annotations

from torch import Tensor


def fm_interaction(embeddings: Tensor) -> Tensor:
    """(B, F, k) field embeddings -> (B,) sum of all pairwise inner products."""
    square_of_sum = embeddings.sum(dim=1).pow(2)
    sum_of_square = embeddings.pow(2).sum(dim=1)
    return 0.5 * (square_of_sum - sum_of_square).sum(dim=1)


def fm_interaction_matrix(user_emb: Tensor, item_emb: Tensor) -> Tensor:
    """(U, Fu, k) user fields x (I, Fi, k) item fields -> (U, I) FM term of every pair, exactly:
    pairs within a side are a user (or item) part; pairs across sides sum to
    <sum of user fields, sum of item fields>, one matrix product."""
    su, si = user_emb.sum(1), item_emb.sum(1)
    fm_u = 0.5 * (su.pow(2).sum(-1) - user_emb.pow(2).sum((1, 2)))
    fm_i = 0.5 * (si.pow(2).sum(-1) - item_emb.pow(2).sum((1, 2)))
    return fm_u[:, None] + fm_i[None, :] + su @ si.T
