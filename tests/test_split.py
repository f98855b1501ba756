import numpy as np
import pandas as pd

from deepfm.data.split import (
    leave_one_out,
    read_split,
    sample_candidates,
    split_dataset,
    write_split,
)
from tests.conftest import tiny_frames


def _pairs(users, items):
    return set(zip(users.tolist(), items.tolist(), strict=True))


def test_leave_one_out_by_time_then_item():
    frame = tiny_frames()
    frame["label"] = (frame.rating >= 4).astype(np.int8)
    users = pd.DataFrame({"user_id": [1, 2]})
    items = pd.DataFrame(
        {"item_id": [10, 11, 12, 13, 14], "genres": [[]] * 5, "year_bucket": [None] * 5}
    )
    users = users.assign(gender="M", age_bucket="18-24", occupation="x", zip_prefix="1")
    res = split_dataset(frame, users, items, seed=0, min_positives=3, num_negatives=2)
    # user 1 positives by (timestamp, item): 10@1, 11@2, 13@4, 14@4 -> test 14, val 13
    assert res.test.users.tolist() == [0] and res.val.users.tolist() == [0]
    assert res.item_ids[res.test.items].tolist() == [14]
    assert res.item_ids[res.val.items].tolist() == [13]
    # user 2 has 2 positives (< min_positives): train only
    assert res.summary["train_only_users"] == 1
    assert len(res.train_users) == len(frame) - 2
    # user 1 rated all 5 items: no never-rated item is left, so the list is all padding
    assert (res.test.candidates == -1).all()


def test_split_invariants(split, canonical):
    interactions, users, items = canonical
    n_items = len(items)
    train = _pairs(split.train_users, split.train_items)
    user_idx = np.searchsorted(users.user_id, interactions.user_id)
    item_idx = np.searchsorted(items.item_id, interactions.item_id)
    rated_any = _pairs(user_idx, item_idx)
    assert len(train) + len(split.val.users) + len(split.test.users) == len(interactions)
    for held in (split.val, split.test):
        # held-out pairs are not in train
        assert not (_pairs(held.users, held.items) & train)
        for u, pos, cand in zip(held.users, held.items, held.candidates, strict=True):
            c = cand[cand >= 0]
            assert len(np.unique(c)) == len(c)  # distinct
            assert pos not in c
            assert not any((int(u), int(i)) in rated_any for i in c)  # never rated, any split
            unrated = n_items - sum(1 for (uu, _) in rated_any if uu == u)
            assert len(c) == min(30, unrated)  # exactly num_negatives when available
    # validation strictly before test for every user (by timestamp, then item id)
    ts = dict(
        zip(
            zip(user_idx.tolist(), item_idx.tolist(), strict=True),
            interactions.timestamp.tolist(),
            strict=True,
        )
    )
    for u, v, t in zip(split.val.users, split.val.items, split.test.items, strict=True):
        assert (ts[(u, v)], split.item_ids[v]) < (ts[(u, t)], split.item_ids[t])


def test_encoders_fitted_on_train_only(split):
    item_codes = split.item_features[:, 0]
    in_train = np.zeros(len(item_codes), dtype=bool)
    in_train[split.train_items] = True
    assert (item_codes[~in_train] == 0).all()  # unseen in train -> unknown code 0
    assert (item_codes[in_train] > 0).all()
    assert len(np.unique(item_codes[in_train])) == in_train.sum()
    vocab = {f.name: f.vocab_size for f in split.schema.fields}
    assert vocab["item_id"] == in_train.sum() + 1
    assert split.item_genres.min() >= 0 and split.item_genres.max() < vocab["genres"]


def test_same_seed_same_files(canonical, tmp_path):
    a = split_dataset(*canonical, seed=3, min_positives=3, num_negatives=30)
    b = split_dataset(*canonical, seed=3, min_positives=3, num_negatives=30)
    c = split_dataset(*canonical, seed=4, min_positives=3, num_negatives=30)
    write_split(a, tmp_path / "a")
    write_split(b, tmp_path / "b")
    write_split(c, tmp_path / "c")
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "b").iterdir())
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert (tmp_path / "a/test_candidates.npy").read_bytes() != (
        tmp_path / "c/test_candidates.npy"
    ).read_bytes()
    back = read_split(tmp_path / "a")
    np.testing.assert_array_equal(back.test.candidates, a.test.candidates)
    assert back.schema == a.schema


def test_candidates_are_uniform():
    # one user who rated items 0..9 of 50; draw 5 of the 40 others, many times
    rated = np.arange(10, dtype=np.int64)
    rng = np.random.default_rng(0)
    counts = np.zeros(50)
    for _ in range(2000):
        c = sample_candidates(np.array([0]), rated, 50, 5, rng)[0]
        counts[c] += 1
    assert counts[:10].sum() == 0
    expected = 2000 * 5 / 40
    assert np.abs(counts[10:] - expected).max() < 5 * np.sqrt(expected)


def test_short_users_padded_not_duplicated():
    rated = np.arange(45, dtype=np.int64)  # user 0 rated 45 of 50 items
    c = sample_candidates(np.array([0]), rated, 50, 10, np.random.default_rng(0))[0]
    assert sorted(c[c >= 0].tolist()) == [45, 46, 47, 48, 49]
    assert (c[5:] == -1).all()


def test_leave_one_out_rows():
    users = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2])
    labels = np.array([1, 0, 1, 1, 1, 1, 1, 1, 1])
    val, test = leave_one_out(users, labels, 3)
    assert test.tolist() == [3, 8] and val.tolist() == [2, 7]
