"""Ranking and classification metrics of the protocol, on whole arrays.

Ranks are 1-based and pessimistic: a negative whose score ties the positive's ranks above it.
"""

from __future__ import annotations

import numpy as np
import torch


def pessimistic_rank(
    pos_scores: torch.Tensor, other_scores: torch.Tensor, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """(U,) positive scores, (U, N) scores of the items it competes with -> (U,) 1-based rank.
    `valid` masks out padding / excluded entries."""
    beats = other_scores >= pos_scores[:, None]
    if valid is not None:
        beats &= valid
    return 1 + beats.sum(dim=1)


def hit_rate(ranks: np.ndarray, k: int) -> float:
    return float(np.mean(ranks <= k)) if len(ranks) else float("nan")


def ndcg(ranks: np.ndarray, k: int) -> float:
    """One relevant item per user: NDCG@k = 1 / log2(rank + 1) if rank <= k else 0."""
    if not len(ranks):
        return float("nan")
    gains = np.where(ranks <= k, 1.0 / np.log2(ranks.astype(np.float64) + 1.0), 0.0)
    return float(gains.mean())


def ndcg_per_user(ranks: np.ndarray, k: int) -> np.ndarray:
    return np.where(ranks <= k, 1.0 / np.log2(ranks.astype(np.float64) + 1.0), 0.0)


def mrr(ranks: np.ndarray) -> float:
    return float(np.mean(1.0 / ranks)) if len(ranks) else float("nan")


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC (Mann-Whitney U with average ranks for ties: a tie counts one half)."""
    labels = np.asarray(labels).astype(bool)
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="stable")
    sorted_scores = np.asarray(scores)[order]
    # average rank of each tie group
    boundaries = np.r_[True, sorted_scores[1:] != sorted_scores[:-1]]
    group = np.cumsum(boundaries) - 1
    starts = np.flatnonzero(boundaries)
    ends = np.r_[starts[1:], len(sorted_scores)]
    avg_rank = (starts + ends + 1) / 2.0  # ranks are 1-based: mean of start+1 .. end
    ranks = np.empty(len(scores), dtype=np.float64)
    ranks[order] = avg_rank[group]
    u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def log_loss(labels: np.ndarray, logits: np.ndarray) -> float:
    """Mean binary cross-entropy computed from logits (numerically stable)."""
    if not len(labels):
        return float("nan")
    labels = np.asarray(labels, dtype=np.float64)
    logits = np.asarray(logits, dtype=np.float64)
    # -[y log s(x) + (1-y) log(1-s(x))] = softplus(x) - y*x
    return float(np.mean(np.logaddexp(0.0, logits) - labels * logits))
