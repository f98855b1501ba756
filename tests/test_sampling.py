import numpy as np
import pytest

from deepfm.data.sampling import RatedIndex, concat_ranges, sample_negatives


def test_concat_ranges():
    got = concat_ranges(np.array([5, 0, 9]), np.array([2, 0, 3]))
    assert got.tolist() == [5, 6, 9, 10, 11]


def test_never_a_rated_item_and_about_uniform():
    rng = np.random.default_rng(1)
    num_users, num_items = 20, 30
    users, items = [], []
    for u in range(num_users):
        k = 5 + u  # up to 24 of 30 rated: forces several rejection rounds
        items.extend(rng.choice(num_items, size=k, replace=False).tolist())
        users.extend([u] * k)
    rated = RatedIndex(np.array(users), np.array(items), num_users, num_items)
    query = np.repeat(np.arange(num_users), 50)
    neg_u, neg_i = sample_negatives(query, 40, rated, np.random.default_rng(2))
    assert len(neg_u) == len(query) * 40
    assert neg_u.dtype == neg_i.dtype == np.int64
    np.testing.assert_array_equal(neg_u, np.repeat(query, 40))  # entry-major
    pairs = set(zip(users, items, strict=True))  # an oracle independent of RatedIndex
    assert not any((u, i) in pairs for u, i in zip(neg_u.tolist(), neg_i.tolist(), strict=True))
    # uniform over the unrated items of user 0 (25 items, 2000 draws each)
    own = neg_i[neg_u == 0]
    allowed = np.setdiff1d(np.arange(num_items), rated.items_of(0))
    counts = np.bincount(own, minlength=num_items)[allowed]
    expected = len(own) / len(allowed)
    assert counts.min() > 0
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 60  # df = 24; p < 1e-4 above ~55


def test_deterministic_per_seed():
    rated = RatedIndex(np.array([0, 0, 1]), np.array([1, 2, 0]), 2, 10)
    a = sample_negatives(np.array([0, 1]), 8, rated, np.random.default_rng(5))
    b = sample_negatives(np.array([0, 1]), 8, rated, np.random.default_rng(5))
    np.testing.assert_array_equal(a[1], b[1])


def test_user_who_rated_everything_is_an_error():
    rated = RatedIndex(np.zeros(3, int), np.arange(3), 1, 3)
    with pytest.raises(
        ValueError,
        match=r"user index 0 rated every item; no negative can be drawn\. Drop such users or "
        r"lower train\.negatives_per_positive to 0\.",
    ):
        sample_negatives(np.array([0]), 1, rated, np.random.default_rng(0))


def test_the_only_unrated_item_is_item_zero():
    rated = RatedIndex(np.array([0, 0, 1]), np.array([1, 2, 2]), 2, 3)
    neg_u, neg_i = sample_negatives(np.array([0, 1]), 50, rated, np.random.default_rng(0))
    assert set(neg_i[neg_u == 0].tolist()) == {0}
    assert set(neg_i[neg_u == 1].tolist()) == {0, 1}


def test_rated_index_lookups_at_the_edges():
    # user 2 of 4 rated nothing, user 3 (the last) neither; item 4 is the largest key
    users, items = np.array([1, 0, 1, 0], dtype=np.int32), np.array([4, 2, 0, 0], dtype=np.int32)
    rated = RatedIndex(users, items, num_users=4, num_items=5)
    query_u = np.array([0, 0, 0, 1, 1, 1, 2, 3, 3])
    query_i = np.array([0, 2, 4, 0, 4, 3, 0, 4, 0])
    assert rated.contains(query_u, query_i).tolist() == [1, 1, 0, 1, 1, 0, 0, 0, 0]
    assert rated.counts().tolist() == [2, 2, 0, 0]
    assert rated.items_of(1).tolist() == [0, 4] and rated.items_of(3).tolist() == []
    rows, got = rated.pairs_of(np.array([3, 1, 2, 0]))
    assert rows.tolist() == [1, 1, 3, 3] and got.tolist() == [0, 4, 0, 2]
    empty = RatedIndex(np.array([], dtype=np.int64), np.array([], dtype=np.int64), 2, 5)
    none = empty.contains(np.array([0, 1]), np.array([0, 4]))
    assert none.dtype == bool and none.tolist() == [False, False]
    assert rated.contains(query_u, query_i).dtype == bool
    assert empty.counts().tolist() == [0, 0]


def test_rated_index_of_train_holds_the_train_pairs_of_a_split():
    from types import SimpleNamespace

    split = SimpleNamespace(
        train_users=np.array([2, 0, 2, 2]),
        train_items=np.array([1, 3, 1, 4]),  # a repeated pair counts once
        schema=SimpleNamespace(num_users=3, num_items=5),
    )
    rated = RatedIndex.of_train(split)
    assert rated.counts().tolist() == [1, 0, 2]
    assert rated.items_of(2).tolist() == [1, 4] and rated.items_of(0).tolist() == [3]
