"""Epoch examples and batches: dtypes the loss relies on, a shuffle that depends only on the
loop's generator, and the history gathered (or absent) per batch."""

import numpy as np
import torch

from deepfm.data.batches import epoch_examples, history_tensor, iterate_batches, with_history
from deepfm.data.sampling import RatedIndex


def test_epoch_examples_dtypes_and_sizes(split):
    s = split.schema
    rated = RatedIndex(split.train_users, split.train_items, s.num_users, s.num_items)
    users, items, labels, rows = epoch_examples(
        split, rated, seed=1, epoch=1, negatives_per_positive=2
    )
    assert users.dtype == items.dtype == rows.dtype == np.int64
    assert labels.dtype == np.float32  # BCE targets match float32 logits
    n_pos = int((split.train_labels == 1).sum())
    assert len(users) == len(items) == len(labels) == len(rows) == 3 * n_pos
    assert labels.sum() == n_pos


def test_shuffle_depends_only_on_the_given_generator():
    data = (torch.arange(10), torch.arange(10) * 10)

    def order(seed_global):
        torch.manual_seed(seed_global)  # the global generator must not matter
        batches = iterate_batches(data, 4, torch.Generator().manual_seed(3))
        return [tuple(t.tolist() for t in b) for b in batches]

    first = order(0)
    assert first == order(1)
    assert [len(b[0]) for b in first] == [4, 4, 2]
    got = torch.cat([torch.tensor(b[0]) for b in first])
    assert sorted(got.tolist()) == list(range(10)) and got.tolist() != list(range(10))
    assert all(torch.equal(torch.tensor(b[1]), torch.tensor(b[0]) * 10) for b in first)


def test_history_is_gathered_by_row_or_absent():
    history = torch.tensor([[1, 2], [3, 4], [5, 6]])
    batch = (torch.tensor([7]), torch.tensor([8]), torch.tensor([1.0]), torch.tensor([2, 0]))
    ((_, _, _, got),) = with_history(iter([batch]), history)
    assert got.tolist() == [[5, 6], [1, 2]]
    ((*_, none),) = with_history(iter([batch]), None)
    assert none is None
    assert history_tensor(np.zeros((3, 0), dtype=np.int32), "cpu") is None
    assert history_tensor(np.ones((3, 2), dtype=np.int32), "cpu").tolist() == [[1, 1]] * 3


def test_rated_targets_make_every_train_row_a_label_1_example(split):
    s = split.schema
    rated = RatedIndex(split.train_users, split.train_items, s.num_users, s.num_items)
    assert (split.train_labels == 0).any()  # the fixture has rows below the label threshold
    users, items, labels, rows = epoch_examples(
        split, rated, seed=1, epoch=1, negatives_per_positive=2, targets="rated"
    )
    n = len(split.train_labels)
    assert len(labels) == 3 * n and labels.sum() == n
    target = labels == 1
    np.testing.assert_array_equal(rows[target], np.arange(n))
    np.testing.assert_array_equal(items[target], split.train_items)
    # no target's input holds its own item (each (user, item) is rated once): its history
    # is the row's own, made of ratings strictly before it
    code = split.item_features[:, split.schema.field("item_id").column]
    history = split.train_history[rows[target], : split.schema.field("history").length]
    assert history.any() and not (history == code[items[target]][:, None]).any()
    # the negatives are drawn per target, carry its history row and are never rated items
    np.testing.assert_array_equal(rows[~target], np.repeat(np.arange(n), 2))
    assert not rated.contains(users[~target], items[~target]).any()
    # the same negative stream as positives-only training, drawn for more rows
    *_, labels_pos, _ = epoch_examples(split, rated, seed=1, epoch=1, negatives_per_positive=2)
    assert labels_pos.sum() == (split.train_labels == 1).sum() < n
