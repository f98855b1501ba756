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
    assert not rated.contains(neg_u, neg_i).any()
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
    with pytest.raises(ValueError, match="rated every item"):
        sample_negatives(np.array([0]), 1, rated, np.random.default_rng(0))
