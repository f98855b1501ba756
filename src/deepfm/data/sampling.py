"""Training negatives: uniform over the items a user did not rate in train, vectorized.

Rejection sampling against a sorted array of rated (user, item) keys: draw for every slot
at once, look all draws up with one searchsorted, redraw only the rejected slots. The
expected number of rounds is small (a user who rated a fraction f of the catalogue needs
about log(n)/log(1/f) rounds), and no Python loop runs per user or per row.
"""

from __future__ import annotations

import numpy as np


def concat_ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """np.concatenate([np.arange(s, s + c) for s, c in zip(starts, counts)]) without the loop."""
    counts = np.asarray(counts, dtype=np.int64)
    shift = np.asarray(starts, dtype=np.int64) - (np.cumsum(counts) - counts)  # start - offset
    return np.repeat(shift, counts) + np.arange(int(counts.sum()))


def in_sorted(sorted_keys: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Whether each query is in sorted_keys."""
    if not len(sorted_keys):
        return np.zeros(len(query), dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_keys, query), len(sorted_keys) - 1)
    return sorted_keys[pos] == query


class RatedIndex:
    """The set of (user, item) pairs a user rated, as sorted int64 keys user * num_items + item."""

    def __init__(self, users: np.ndarray, items: np.ndarray, num_users: int, num_items: int):
        self.num_items = num_items
        self.keys = np.unique(users.astype(np.int64) * num_items + items.astype(np.int64))
        counts = np.bincount(self.keys // num_items, minlength=num_users)
        self.indptr = np.r_[0, np.cumsum(counts)]  # CSR row pointers over `keys`

    @classmethod
    def of_train(cls, split) -> RatedIndex:
        """What each user rated in a top-K split's train rows (a SplitResult or anything with
        train_users, train_items and a schema): the pairs negatives and full ranking avoid."""
        s = split.schema
        return cls(split.train_users, split.train_items, s.num_users, s.num_items)

    def contains(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        return in_sorted(self.keys, users.astype(np.int64) * self.num_items + items)

    def items_of(self, user: int) -> np.ndarray:
        return self.keys[self.indptr[user] : self.indptr[user + 1]] % self.num_items

    def pairs_of(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every rated pair of the given users as (position in `users`, item), vectorized."""
        users = np.asarray(users, dtype=np.int64)
        counts = self.indptr[users + 1] - self.indptr[users]
        items = self.keys[concat_ranges(self.indptr[users], counts)] % self.num_items
        return np.repeat(np.arange(len(users)), counts), items

    def counts(self) -> np.ndarray:
        return np.diff(self.indptr)


def sample_negatives(
    users: np.ndarray, per_user: int, rated: RatedIndex, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """`per_user` items for each entry of `users`, uniform over that user's unrated items
    (with replacement). Returns (users repeated, items), both int64, entry-major order."""
    full = rated.counts()[users] >= rated.num_items
    if full.any():
        raise ValueError(
            f"user index {int(users[np.flatnonzero(full)[0]])} rated every item; no negative "
            "can be drawn. Drop such users or lower train.negatives_per_positive to 0."
        )

    def draw(n: int) -> np.ndarray:
        return rng.integers(0, rated.num_items, size=n)

    neg_users = np.repeat(users.astype(np.int64), per_user)
    neg_items = draw(len(neg_users))
    todo = np.flatnonzero(rated.contains(neg_users, neg_items))
    while len(todo):
        neg_items[todo] = draw(len(todo))
        todo = todo[rated.contains(neg_users[todo], neg_items[todo])]
    return neg_users, neg_items
