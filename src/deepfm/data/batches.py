"""Training examples per epoch and batches by slicing a permutation (no per-sample Dataset)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

from deepfm.data.sampling import RatedIndex, sample_negatives
from deepfm.data.splitting import SplitResult
from deepfm.utils import rng_for


def feature_tensors(split: SplitResult) -> dict[str, Tensor]:
    """The split's feature arrays as tensors, by buffer name (the model's lookup tables)."""
    return {name: torch.from_numpy(array) for name, array in split.features.items()}


def epoch_examples(
    split: SplitResult,
    rated: RatedIndex,
    *,
    seed: int,
    epoch: int,
    negatives_per_positive: int,
    targets: str = "positives",
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(users, items, labels, rows) for one epoch: the training targets (train positives, or
    every train rating with targets="rated"; label 1) and fresh negatives drawn uniformly
    from items the user did not rate in train (seeded by seed and epoch; label 0).

    rows: the train row whose history an example carries (split.train_history[rows]): a
    target's own, and the target's for the negatives drawn for it (they compete at the same
    moment). Rows rather than histories keep an epoch's arrays at one integer per example;
    `with_history` gathers a batch's history."""
    pos_rows = target_rows(split, targets)
    pos_u, pos_i = split.train_users[pos_rows], split.train_items[pos_rows]
    neg_u, neg_i = sample_negatives(
        pos_u, negatives_per_positive, rated, rng_for(seed, "train-negatives", epoch)
    )
    return (
        np.concatenate([pos_u, neg_u]).astype(np.int64),
        np.concatenate([pos_i, neg_i]).astype(np.int64),
        np.concatenate([np.ones(len(pos_u), np.float32), np.zeros(len(neg_u), np.float32)]),
        np.concatenate([pos_rows, np.repeat(pos_rows, negatives_per_positive)]).astype(np.int64),
    )


def sample_negatives_torch(
    users: Tensor,
    per_user: int,
    keys: Tensor,
    user_counts: Tensor,
    num_items: int,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor]:
    """data.sampling.sample_negatives on the tensors' device (train.device_epochs): `keys`
    are RatedIndex's sorted keys and `user_counts` its counts(), as int64 tensors there, and
    `generator` a torch generator of that device. The same rejection sampling; other random
    numbers. Here, not in data.sampling, so that the data stages never import torch."""
    full = user_counts[users] >= num_items
    if bool(full.any()):
        raise ValueError(
            f"user index {int(users[full][0])} rated every item; no negative can be drawn. "
            "Drop such users or lower train.negatives_per_positive to 0."
        )
    neg_users = users.repeat_interleave(per_user)

    def rated(u: Tensor, i: Tensor) -> Tensor:
        query = u * num_items + i
        pos = torch.searchsorted(keys, query).clamp_(max=max(len(keys) - 1, 0))
        return keys[pos] == query if len(keys) else torch.zeros_like(query, dtype=torch.bool)

    device = users.device

    def draw(n: int) -> Tensor:
        return torch.randint(num_items, (n,), generator=generator, device=device)

    neg_items = draw(len(neg_users))
    todo = torch.nonzero(rated(neg_users, neg_items)).flatten()
    while len(todo):  # a few rounds; each checks on the host whether any slot is left
        neg_items[todo] = draw(len(todo))
        todo = todo[rated(neg_users[todo], neg_items[todo])]
    return neg_users, neg_items


class DeviceEpochs:
    """epoch_examples built on the training device (train.device_epochs): the targets' users,
    items and rows and the rated keys go to the device once; each epoch draws its negatives
    there with a torch generator seeded by (seed, epoch), so no epoch waits on the host, and
    every process of a multi-process run draws the same epoch. The layout is
    epoch_examples' (targets, then their negatives entry-major), the random numbers are not:
    another stream than numpy's."""

    def __init__(
        self,
        split: SplitResult,
        rated: RatedIndex,
        *,
        seed: int,
        negatives_per_positive: int,
        targets: str = "positives",
        device="cpu",
    ):
        def put(a: np.ndarray) -> Tensor:
            return torch.from_numpy(np.asarray(a, dtype=np.int64)).to(device)

        rows = target_rows(split, targets)
        self.seed, self.per_target, self.device = seed, negatives_per_positive, device
        self.rows, self.users = put(rows), put(split.train_users[rows])
        self.items = put(split.train_items[rows])
        self.keys, self.user_counts = put(rated.keys), put(rated.counts())
        self.num_items = rated.num_items

    def negatives(self, epoch: int) -> tuple[Tensor, Tensor]:
        """This epoch's (users, items): negatives_per_positive per target, entry-major."""
        seed = int(rng_for(self.seed, "train-negatives-device", epoch).integers(2**62))
        generator = torch.Generator(device=self.device).manual_seed(seed)
        return sample_negatives_torch(
            self.users, self.per_target, self.keys, self.user_counts, self.num_items, generator
        )

    def examples(self, epoch: int) -> tuple[Tensor, ...]:
        """(users, items, labels, rows) of one epoch, as epoch_examples returns them."""
        neg_u, neg_i = self.negatives(epoch)
        ones = torch.ones(len(self.users), device=self.device)
        labels = torch.cat([ones, torch.zeros(len(neg_u), device=self.device)])
        rows = torch.cat([self.rows, self.rows.repeat_interleave(self.per_target)])
        return torch.cat([self.users, neg_u]), torch.cat([self.items, neg_i]), labels, rows


def target_rows(split: SplitResult, targets: str) -> np.ndarray:
    """The train rows that are label-1 training examples: the positives, or every rated row."""
    if targets == "rated":
        return np.arange(len(split.train_labels))
    return np.flatnonzero(split.train_labels == 1)


def iterate_batches(
    tensors: tuple[Tensor, ...], batch_size: int, generator: torch.Generator, shard=None
) -> Iterator[tuple[Tensor, ...]]:
    """Shuffle once, then yield contiguous slices of the permuted tensors.

    shard (training.distributed.Shard, multi-process training): yield only this rank's
    contiguous part of each batch, rows [lo, hi) of it, gathered from the unpermuted tensors
    (no permuted copy of the epoch); the batch's full size goes to shard.rows first. Every
    rank draws the same permutation from the same generator state."""
    n = len(tensors[0])
    perm = torch.randperm(n, generator=generator, device="cpu").to(tensors[0].device)
    if shard is not None:
        shard.check(n, batch_size)
        for start in range(0, n, batch_size):
            shard.rows = min(batch_size, n - start)
            lo, hi = shard.bounds(shard.rows)
            rows = perm[start + lo : start + hi]
            yield tuple(t[rows] for t in tensors)
        return
    shuffled = tuple(t[perm] for t in tensors)
    for start in range(0, n, batch_size):
        yield tuple(t[start : start + batch_size] for t in shuffled)


def with_history(
    batches: Iterator[tuple[Tensor, ...]], train_history: Tensor | None
) -> Iterator[tuple[Tensor, ...]]:
    """(users, items, labels, rows) batches -> (users, items, labels, history) batches, the
    history gathered from the train rows; None for a split without a history field."""
    for users, items, labels, rows in batches:
        history = train_history[rows] if train_history is not None else None
        yield users, items, labels, history


def history_tensor(history: np.ndarray, device) -> Tensor | None:
    """A split's (n, L) history codes as a tensor on `device`; None when L = 0 (no field)."""
    return torch.from_numpy(history).to(device) if history.shape[1] else None
