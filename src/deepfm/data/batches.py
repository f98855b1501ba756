"""Training examples per epoch and batches by slicing a permutation (no per-sample Dataset)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from deepfm.data.sampling import RatedIndex, sample_negatives
from deepfm.data.split import SplitResult
from deepfm.utils import rng_for


def feature_tensors(split: SplitResult) -> dict[str, torch.Tensor]:
    return {
        "user_features": torch.from_numpy(split.user_features),
        "item_features": torch.from_numpy(split.item_features),
        "item_genres": torch.from_numpy(split.item_genres),
    }


def epoch_examples(
    split: SplitResult,
    rated: RatedIndex,
    *,
    seed: int,
    epoch: int,
    negatives_per_positive: int,
    observed_negatives: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(users, items, labels) for one epoch: train positives, fresh uniform negatives drawn
    from items the user did not rate in train (seeded by seed and epoch) and, optionally,
    the observed negatives (rated below the threshold) with label 0."""
    is_pos = split.train_labels == 1
    pos_u, pos_i = split.train_users[is_pos], split.train_items[is_pos]
    neg_u, neg_i = sample_negatives(
        pos_u, negatives_per_positive, rated, rng_for(seed, "train-negatives", epoch)
    )
    parts_u, parts_i = [pos_u, neg_u], [pos_i, neg_i]
    parts_y = [np.ones(len(pos_u), np.float32), np.zeros(len(neg_u), np.float32)]
    if observed_negatives:
        parts_u.append(split.train_users[~is_pos])
        parts_i.append(split.train_items[~is_pos])
        parts_y.append(np.zeros(int((~is_pos).sum()), np.float32))
    return (
        np.concatenate(parts_u).astype(np.int64),
        np.concatenate(parts_i).astype(np.int64),
        np.concatenate(parts_y),
    )


def iterate_batches(
    tensors: tuple[torch.Tensor, ...], batch_size: int, generator: torch.Generator
) -> Iterator[tuple[torch.Tensor, ...]]:
    """Shuffle once, then yield contiguous slices of the permuted tensors."""
    n = len(tensors[0])
    perm = torch.randperm(n, generator=generator, device="cpu").to(tensors[0].device)
    shuffled = tuple(t[perm] for t in tensors)
    for start in range(0, n, batch_size):
        yield tuple(t[start : start + batch_size] for t in shuffled)
