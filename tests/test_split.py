import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from deepfm.data.splitting import (
    leave_one_out,
    read_split,
    sample_candidates,
    split_dataset,
    write_split,
)
from tests.conftest import ML_FIELDS, PARAMS, tiny_frames


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
    res = split_dataset(
        frame, users, items, fields=ML_FIELDS, seed=0, min_positives=3, num_negatives=2
    )
    # user 1 positives by (timestamp, item): 10@1, 11@2, 13@4, 14@4 -> test 14, val 13
    assert res.test.users.tolist() == [0] and res.val.users.tolist() == [0]
    assert res.item_ids[res.test.items].tolist() == [14]
    assert res.item_ids[res.val.items].tolist() == [13]
    # user 2 has 2 positives (< min_positives): train only
    assert res.summary["train_only_users"] == 1
    assert len(res.train_users) == len(frame) - 2
    # user 1 rated all 5 items: no never-rated item is left, so the list is all padding
    assert (res.test.candidates == -1).all()


def test_split_invariants_without_the_cut(canonical):
    # `cut: none`, the older reading: every rating but the held-out ones trains
    interactions, users, items = canonical
    split = split_dataset(*canonical, fields=ML_FIELDS, seed=7, min_positives=3,
                          num_negatives=30, history_length=4, cut="none")  # fmt: skip
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
    assert split.after_test.shape == (0, 2)
    assert _pairs(*split.test_seen.T) == _pairs(split.val.users, split.val.items)


def _causal_reference(interactions, users, items, min_positives):
    """The causal protocol, one user at a time: each user's ratings by (timestamp, item_id);
    {user: (train, val, between, test, after)}, each a list of item indices in that order."""
    out = {}
    frame = interactions.assign(
        u=np.searchsorted(users.user_id, interactions.user_id),
        i=np.searchsorted(items.item_id, interactions.item_id),
    ).sort_values(["u", "timestamp", "i"])
    for u, rows in frame.groupby("u"):
        pos = np.flatnonzero(rows.label.to_numpy() == 1)
        its = rows.i.tolist()
        if len(pos) < min_positives:
            out[u] = (its, None, [], None, [])
            continue
        v, t = pos[-2], pos[-1]
        out[u] = (its[:v], its[v], its[v + 1 : t], its[t], its[t + 1 :])
    return out


@pytest.mark.parametrize("sequence", ["positives", "rated"])
def test_causal_split_matches_a_loop(canonical, sequence):
    interactions, users, items = canonical
    # coarse timestamps: same-second ratings, so the tie-break places ratings after the test
    # item that share its second
    coarse = interactions.assign(timestamp=interactions["timestamp"] // 10**7)
    split = split_dataset(coarse, users, items, fields=ML_FIELDS, seed=7, min_positives=3,
                          num_negatives=40, history_length=4, sequence=sequence)  # fmt: skip
    ref = _causal_reference(coarse, users, items, 3)
    assert split.summary["cut"] == "causal"
    want_train = sorted((u, i) for u, r in ref.items() for i in r[0])
    train = zip(split.train_users.tolist(), split.train_items.tolist(), strict=True)
    assert sorted(train) == want_train
    evaluated = [u for u, r in ref.items() if r[1] is not None]
    assert split.val.users.tolist() == split.test.users.tolist() == evaluated
    assert split.val.items.tolist() == [ref[u][1] for u in evaluated]
    assert split.test.items.tolist() == [ref[u][3] for u in evaluated]
    seen = [(u, i) for u in evaluated for i in [ref[u][1], *ref[u][2]]]
    assert list(map(tuple, split.test_seen.tolist())) == seen
    after = [(u, i) for u in evaluated for i in ref[u][4]]
    assert list(map(tuple, split.after_test.tolist())) == after
    assert split.summary["rows_after_test"] == len(after) > 0
    assert split.summary["rows_between_validation_and_test"] == len(seen) - len(evaluated) > 0
    rows = zip(np.searchsorted(users.user_id, coarse.user_id).tolist(),
               np.searchsorted(items.item_id, coarse.item_id).tolist(), strict=True)  # fmt: skip
    label = dict(zip(rows, coarse.label.tolist(), strict=True))
    short = split.summary["users_with_fewer_candidates"]
    assert short["val"] and short["test"]  # users with fewer than 40 unrated items, checked below
    code = split.item_features[:, 0]  # item_id is the items' first sparse field
    for n, u in enumerate(evaluated):
        train, val, between, test, _ = ref[u]
        counted = [i for i in train if sequence == "rated" or label[u, i] == 1]
        # candidates: never rated before the held-out item (later items may be drawn)
        for held, before in ((split.val, [*train, val]), (split.test, [*train, val, *between,
                                                                           test])):  # fmt: skip
            c = held.candidates[n][held.candidates[n] >= 0]
            assert not set(c.tolist()) & set(before)
            unrated = len(items) - len(set(before))
            assert len(c) == min(40, unrated)
            short = split.summary["users_with_fewer_candidates"]["val" if held is split.val
                                                                 else "test"]  # fmt: skip
            assert short.get(str(users.user_id[u])) == (unrated if unrated < 40 else None)
        # histories: the validation item's is train only; the test item's adds the
        # validation item and the ratings between (the counted ones), most recent first
        want_val = [code[i] for i in counted[::-1][:4]]
        test_seq = [*counted, val, *[i for i in between if sequence == "rated"]]
        want_test = [code[i] for i in test_seq[::-1][:4]]
        assert split.val.history[n, :4].tolist() == want_val + [0] * (4 - len(want_val))
        assert split.test.history[n, :4].tolist() == want_test + [0] * (4 - len(want_test))


def _history_frames():
    # user 1: 10@1, 11@2, 13@4 (val), 14@4 (test), then 12@5 rated 2, after both held-out items;
    # user 2 (two positives: train only) puts 13 and 14 into the train vocabulary
    frame = pd.DataFrame(
        {
            "user_id": [1, 1, 1, 1, 1, 2, 2, 2],
            "item_id": [10, 11, 13, 14, 12, 13, 14, 10],
            "rating": [5, 4, 5, 5, 2, 5, 5, 1],
            "timestamp": [1, 2, 4, 4, 5, 1, 2, 3],
        }
    )
    frame["label"] = (frame.rating >= 4).astype(np.int8)
    users = pd.DataFrame({"user_id": [1, 2]})
    users = users.assign(gender="M", age_bucket="18-24", occupation="x", zip_prefix="1")
    items = pd.DataFrame(
        {"item_id": [10, 11, 12, 13, 14], "genres": [[]] * 5, "year_bucket": [None] * 5}
    )
    return frame, users, items


def test_history_hand_worked():
    res = split_dataset(
        *_history_frames(),
        fields=ML_FIELDS,
        seed=0,
        min_positives=3,
        num_negatives=2,
        history_length=3,
        cut="none",  # 12@5 trains (test_causal_split_matches_a_loop checks the causal cut)
    )
    # train vocabulary: items 10..14 -> codes 1..5; most recent first, 0-padded
    assert res.train_history.tolist() == [
        [0, 0, 0],  # user 1, 10@1
        [1, 0, 0],  # user 1, 11@2
        [2, 1, 0],  # user 1, 12@5: train positives only, not the held-out 13 and 14
        [0, 0, 0],  # user 2, 13@1
        [4, 0, 0],  # user 2, 14@2
        [5, 4, 0],  # user 2, 10@3 (rated 1: history of an observed negative)
    ]
    assert res.val.history.tolist() == [[2, 1, 0]]  # before 13: 11, 10
    assert res.test.history.tolist() == [[4, 2, 1]]  # before 14: the validation item 13 first
    fields = [f.name for f in res.schema.fields]
    assert fields.index("history") == fields.index("zip_prefix") + 1
    history = res.schema.fields[fields.index("history")]
    assert (history.source, history.kind) == ("user", "sequence")
    assert history.vocab_size == res.schema.fields[fields.index("item_id")].vocab_size
    none = split_dataset(
        *_history_frames(), fields=ML_FIELDS, seed=0, min_positives=3, num_negatives=2, cut="none"
    )
    assert none.train_history.shape == (6, 0) and none.test.history.shape == (1, 0)
    assert "history" not in [f.name for f in none.schema.fields]


def test_history_matches_slow_reference(split, canonical):
    # every example's history = the codes of its user's last 4 train positives strictly
    # before it in (timestamp, item_id) order; the test item's also counts the validation item
    interactions, users, items = canonical
    u = np.searchsorted(users.user_id, interactions.user_id)
    i = np.searchsorted(items.item_id, interactions.item_id)
    frame = pd.DataFrame(
        {"u": u, "i": i, "t": interactions.timestamp, "id": interactions.item_id,
         "y": interactions.label}
    ).sort_values(["u", "t", "id"])  # fmt: skip
    val = dict(zip(split.val.users.tolist(), split.val.items.tolist(), strict=True))
    test = dict(zip(split.test.users.tolist(), split.test.items.tolist(), strict=True))
    code = split.item_features[:, 0]

    def codes(positives):
        recent = [int(code[x]) for x in reversed(positives[-4:])]
        return recent + [0] * (4 - len(recent))

    expected = {}
    for user, rows in frame.groupby("u"):
        train_positives = []
        for row in rows.itertuples():
            expected[(user, row.i)] = codes(train_positives)
            held_out = row.i in (val.get(user), test.get(user))
            if row.y == 1 and not held_out:
                train_positives.append(row.i)
        if user in test:
            expected[(user, test[user])] = codes([*train_positives, val[user]])
    got = {
        (int(a), int(b)): h.tolist()
        for a, b, h in zip(split.train_users, split.train_items, split.train_history, strict=True)
    }
    for h in (split.val, split.test):
        rows = zip(h.users, h.items, h.history, strict=True)
        got.update({(int(a), int(b)): r.tolist() for a, b, r in rows})
    # the rows after a validation item have no example (test_causal_split_matches_a_loop)
    assert len(got) == len(split.train_users) + 2 * len(split.val.users)
    assert got == {key: expected[key] for key in got}
    assert split.train_history.dtype == np.int32 and (split.train_history > 0).any()


def test_encoders_fitted_on_train_only(split):
    item_codes = split.item_features[:, 0]
    in_train = np.zeros(len(item_codes), dtype=bool)
    in_train[split.train_items] = True
    assert (item_codes[~in_train] == 0).all()  # unseen in train -> unknown code 0
    assert (item_codes[in_train] > 0).all()
    assert len(np.unique(item_codes[in_train])) == in_train.sum()
    vocab = {f.name: f.vocab_size for f in split.schema.fields}
    assert vocab["item_id"] == in_train.sum() + 1
    assert split.features["item_genres"].min() >= 0
    assert split.features["item_genres"].max() < vocab["genres"]


def test_same_seed_same_files(canonical, tmp_path):
    a = split_dataset(*canonical, fields=ML_FIELDS, seed=3, min_positives=3, num_negatives=30)
    b = split_dataset(*canonical, fields=ML_FIELDS, seed=3, min_positives=3, num_negatives=30)
    c = split_dataset(*canonical, fields=ML_FIELDS, seed=4, min_positives=3, num_negatives=30)
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


def test_history_of_every_rating_hand_worked():
    frame, users, items = _history_frames()
    frame.loc[(frame.user_id == 1) & (frame.item_id == 12), "timestamp"] = 3  # before val/test
    res = split_dataset(
        frame, users, items, fields=ML_FIELDS, seed=0, min_positives=3, num_negatives=2,
        history_length=3,
        sequence="rated",
    )  # fmt: skip
    # codes 10..14 -> 1..5; user 1 now rates 12 (rating 2) at 3, between 11@2 and 13@4 (val)
    assert res.val.history.tolist() == [[3, 2, 1]]  # the observed negative 12 counts
    assert res.test.history.tolist() == [[4, 3, 2]]  # the validation item first
    assert res.train_history[:3].tolist() == [[0, 0, 0], [1, 0, 0], [2, 1, 0]]
    assert res.summary["sequence"] == "rated"
    assert res.sequence_mask().all()
    positives = split_dataset(
        frame,
        users,
        items,
        fields=ML_FIELDS,
        seed=0,
        min_positives=3,
        num_negatives=2,
        history_length=3,
    )
    assert positives.val.history.tolist() == [[2, 1, 0]]
    assert positives.test.history.tolist() == [[4, 2, 1]]
    assert positives.sequence_mask().tolist() == (positives.train_labels == 1).tolist()


def test_random_tie_break_orders_same_second_ratings_by_seed():
    # user 1's validation (13) and test (14) items share timestamp 4: item_id order always
    # makes 14 the test item, a seeded random order makes it either, the same for one seed
    frames = _history_frames()
    test_items = set()
    for seed in range(8):
        a = split_dataset(*frames, fields=ML_FIELDS, seed=seed, min_positives=3, num_negatives=2,
                          history_length=3, tie_break="random")  # fmt: skip
        b = split_dataset(*frames, fields=ML_FIELDS, seed=seed, min_positives=3, num_negatives=2,
                          history_length=3, tie_break="random")  # fmt: skip
        assert a.test.items.tolist() == b.test.items.tolist()
        assert a.test.history.tolist() == b.test.history.tolist()
        test_items.add(int(a.item_ids[a.test.items[0]]))
        fixed = split_dataset(
            *frames, fields=ML_FIELDS, seed=seed, min_positives=3, num_negatives=2
        )
        assert int(fixed.item_ids[fixed.test.items[0]]) == 14
    assert test_items == {13, 14}
    with pytest.raises(ValueError, match="tie_break one of"):
        split_dataset(
            *frames, fields=ML_FIELDS, seed=0, min_positives=3, num_negatives=2, tie_break="time"
        )


@pytest.mark.parametrize("sequence", ["positives", "rated"])
@pytest.mark.parametrize("tie_break", ["item_id", "random"])
def test_no_input_holds_its_target_or_a_later_item(canonical, sequence, tie_break):
    # Every example's history holds items the same user rated at or before the example's
    # second (never later), never the example's own item, never a held-out item, except the
    # validation item in the test item's history. Fails if any input sees its target or the
    # future.
    interactions, users, items = canonical
    split = split_dataset(
        interactions, users, items, fields=ML_FIELDS, seed=3, min_positives=3, num_negatives=20,
        history_length=6, sequence=sequence, tie_break=tie_break,
    )  # fmt: skip
    code_to_item = {int(c): i for i, c in enumerate(split.item_features[:, 0]) if c}
    u = np.searchsorted(users.user_id, interactions.user_id)
    i = np.searchsorted(items.item_id, interactions.item_id)
    pairs = list(zip(u.tolist(), i.tolist(), strict=True))
    when = dict(zip(pairs, interactions.timestamp.tolist(), strict=True))
    liked = dict(zip(pairs, interactions.label.tolist(), strict=True))
    val = dict(zip(split.val.users.tolist(), split.val.items.tolist(), strict=True))
    test = dict(zip(split.test.users.tolist(), split.test.items.tolist(), strict=True))
    examples = [
        ("train", a, b, h)
        for a, b, h in zip(split.train_users, split.train_items, split.train_history, strict=True)
    ]
    for name, held in (("val", split.val), ("test", split.test)):
        examples += [
            (name, a, b, h) for a, b, h in zip(held.users, held.items, held.history, strict=True)
        ]
    checked = 0
    for name, user, target, history in examples:
        user, target = int(user), int(target)
        for c in history[history > 0]:
            item = code_to_item[int(c)]
            assert item != target, (name, user, target)
            assert when[(user, item)] <= when[(user, target)], (name, user, item, target)
            assert item != test.get(user), (name, user)
            if item == val.get(user):
                assert name == "test", (name, user)
            elif sequence == "positives":
                assert liked[(user, item)] == 1
            checked += 1
    assert checked > 1000


def test_written_split_reads_back_whole(split, tmp_path):
    write_split(split, tmp_path / "s")
    back = read_split(tmp_path / "s")
    for name in ("train_users", "train_items", "train_labels", "train_history", "user_ids",
                 "item_ids"):  # fmt: skip
        got, want = getattr(back, name), getattr(split, name)
        np.testing.assert_array_equal(got, want, err_msg=name)
        assert got.dtype == want.dtype, name
    assert sorted(back.features) == ["item_features", "item_genres", "user_features"]
    for name, want in split.features.items():
        np.testing.assert_array_equal(back.features[name], want, err_msg=name)
        assert back.features[name].dtype == want.dtype, name
    for held in ("val", "test"):
        got, want = getattr(back, held), getattr(split, held)
        for name in ("users", "items", "candidates", "history"):
            np.testing.assert_array_equal(getattr(got, name), getattr(want, name))
        # indices are stored as int32 (half the bytes; 2^31 users or items is far off)
        assert got.users.dtype == got.items.dtype == got.candidates.dtype == np.int32
    assert back.schema == split.schema and back.summary == split.summary
    assert back.summary["history_length"] == 4  # a real summary, not an empty one


def test_reading_a_missing_split_says_run_the_stage(tmp_path):
    with pytest.raises(
        FileNotFoundError,
        match=re.escape(
            f"{tmp_path}/schema.json not found: run the split stage first (dvc repro split)."
        ),
    ):
        read_split(tmp_path)


@pytest.mark.parametrize(("sequence", "tie_break"), [("positives", "item_id"), ("rated", "random")])
def test_split_processed_passes_every_param(canonical, tmp_path, sequence, tie_break):
    from deepfm.data.splitting import split_processed

    for name, table in zip(("interactions", "users", "items"), canonical, strict=True):
        table.to_parquet(tmp_path / f"{name}.parquet")
    cfg = _ml100k_split_config(11, 4, 3, sequence, tie_break, num_negatives=17)
    got = split_processed(cfg, tmp_path)
    want = split_dataset(
        *canonical, fields=ML_FIELDS, seed=11, min_positives=4, num_negatives=17, history_length=3,
        sequence=sequence, tie_break=tie_break,
    )  # fmt: skip
    assert got.summary == want.summary
    assert got.test.candidates.shape[1] == 17 and got.train_history.shape[1] == 3
    for held in ("val", "test"):
        np.testing.assert_array_equal(getattr(got, held).candidates, getattr(want, held).candidates)
        np.testing.assert_array_equal(getattr(got, held).history, getattr(want, held).history)
    np.testing.assert_array_equal(got.train_history, want.train_history)


def test_recent_items_with_nothing_counted_is_all_padding():
    from deepfm.data.splitting import recent_items

    users = np.array([0, 0, 1])
    got = recent_items(users, np.array([5, 6, 7]), np.zeros(3, dtype=bool), 2)
    assert got.tolist() == [[0, 0]] * 3 and got.dtype == np.int32
    # one counted row: only the same user's later rows see it
    got = recent_items(users, np.array([5, 6, 7]), np.array([True, False, False]), 2)
    assert got.tolist() == [[0, 0], [5, 0], [0, 0]]


def test_latest_items_equals_recent_items_at_a_row_after_the_last():
    from deepfm.data.splitting import latest_items, recent_items

    rng = np.random.default_rng(0)
    users = np.sort(rng.integers(0, 6, 80))
    users[users == 4] = 3  # user 4 has no rows
    codes = rng.integers(1, 30, 80)
    counted = rng.random(80) < 0.6
    got = latest_items(users, codes, counted, 5, num_users=6)
    for u in range(6):
        # one extra row of user u after all of theirs, seen through recent_items
        ext_users = np.r_[users[users <= u], u, users[users > u]]
        at = int((users <= u).sum())
        ext_codes = np.r_[codes[users <= u], 0, codes[users > u]]
        ext_counted = np.r_[counted[users <= u], False, counted[users > u]]
        want = recent_items(ext_users, ext_codes, ext_counted, 5, rows=np.array([at]))[0]
        assert got[u].tolist() == want.tolist(), u
    assert got[4].tolist() == [0] * 5


def _digest(folder) -> dict:
    import hashlib

    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()[:12] for p in sorted(folder.iterdir())
    }


# The split's outputs on the synthetic fixture, byte for byte. Every published number rests on
# the exact candidates, histories and encodings: a change to a random stream's name, a dtype or
# a vocabulary size changes them, and `dvc repro` on a fresh clone would no longer reproduce the
# committed dvc.lock. If you changed the split on purpose, print _digest(...) and paste it here,
# then rerun `dvc repro` and commit the new dvc.lock with it. The `cut: none` pins keep every
# array of the older protocol as it was (only summary.json and the two pair files are new).
PINNED = {
    ("positives", "item_id", "none"): {
        "after_test.npy": "6bc1204467b1",
        "item_features.npy": "18965babea32",
        "item_genres.npy": "f8338f1417d5",
        "item_ids.npy": "a8bc8559364c",
        "schema.json": "27e470854a1f",
        "summary.json": "3f804d5e70b7",
        "test_candidates.npy": "dd4319398a27",
        "test_history.npy": "238a8b5af00e",
        "test_items.npy": "db6a27bc33f4",
        "test_seen.npy": "e57eb92f2528",
        "test_users.npy": "ff497ca691b6",
        "train_history.npy": "731c4cd35b59",
        "train_items.npy": "68bb0c6d016e",
        "train_labels.npy": "45a0a88c38f8",
        "train_users.npy": "bda30b9bd6dd",
        "user_features.npy": "34c17c107de5",
        "user_ids.npy": "3b0ad95a63e3",
        "user_latest.npy": "532f9d144e2a",
        "val_candidates.npy": "50cd1a93f86d",
        "val_history.npy": "a1c77115ff22",
        "val_items.npy": "f230ec0115b7",
        "val_users.npy": "ff497ca691b6",
    },
    ("rated", "random", "none"): {
        "after_test.npy": "6bc1204467b1",
        "item_features.npy": "18965babea32",
        "item_genres.npy": "f8338f1417d5",
        "item_ids.npy": "a8bc8559364c",
        "schema.json": "27e470854a1f",
        "summary.json": "2699e9c95351",
        "test_candidates.npy": "dd4319398a27",
        "test_history.npy": "b08a234c6712",
        "test_items.npy": "b294e848d788",
        "test_seen.npy": "987dee66976e",
        "test_users.npy": "ff497ca691b6",
        "train_history.npy": "de863f77c814",
        "train_items.npy": "218821acbb04",
        "train_labels.npy": "f0dc3bc50828",
        "train_users.npy": "bda30b9bd6dd",
        "user_features.npy": "34c17c107de5",
        "user_ids.npy": "3b0ad95a63e3",
        "user_latest.npy": "590c95d28c08",
        "val_candidates.npy": "50cd1a93f86d",
        "val_history.npy": "6ca3f43eb99d",
        "val_items.npy": "13db30711826",
        "val_users.npy": "ff497ca691b6",
    },
    ("positives", "item_id", "causal"): {
        "after_test.npy": "6d9de916a20b",
        "item_features.npy": "18965babea32",
        "item_genres.npy": "f8338f1417d5",
        "item_ids.npy": "a8bc8559364c",
        "schema.json": "27e470854a1f",
        "summary.json": "a48777f5a881",
        "test_candidates.npy": "1db666887684",
        "test_history.npy": "238a8b5af00e",
        "test_items.npy": "db6a27bc33f4",
        "test_seen.npy": "204ee3e34c4b",
        "test_users.npy": "ff497ca691b6",
        "train_history.npy": "933fd1e98619",
        "train_items.npy": "1231166fd9e2",
        "train_labels.npy": "e88f8b184486",
        "train_users.npy": "bdd52447b2f0",
        "user_features.npy": "34c17c107de5",
        "user_ids.npy": "3b0ad95a63e3",
        "user_latest.npy": "532f9d144e2a",
        "val_candidates.npy": "d93fdcddd0b5",
        "val_history.npy": "a1c77115ff22",
        "val_items.npy": "f230ec0115b7",
        "val_users.npy": "ff497ca691b6",
    },
    ("rated", "random", "causal"): {
        "after_test.npy": "0df08981cda7",
        "item_features.npy": "18965babea32",
        "item_genres.npy": "f8338f1417d5",
        "item_ids.npy": "a8bc8559364c",
        "schema.json": "27e470854a1f",
        "summary.json": "dae2d2a88b8f",
        "test_candidates.npy": "258b0a53d052",
        "test_history.npy": "914e98992b27",
        "test_items.npy": "c61bbc71eb8b",
        "test_seen.npy": "f719ca7f0ff9",
        "test_users.npy": "ff497ca691b6",
        "train_history.npy": "a674d195e9ca",
        "train_items.npy": "559c6e2d07ba",
        "train_labels.npy": "fd1618206943",
        "train_users.npy": "e2f8a49bae3c",
        "user_features.npy": "34c17c107de5",
        "user_ids.npy": "3b0ad95a63e3",
        "user_latest.npy": "7b5b33478176",
        "val_candidates.npy": "2e62e60d3ee1",
        "val_history.npy": "ab70b158ea1b",
        "val_items.npy": "9a82c186097f",
        "val_users.npy": "ff497ca691b6",
    },
}


@pytest.mark.parametrize(("sequence", "tie_break", "cut"), list(PINNED))
def test_split_outputs_are_pinned(canonical, tmp_path, sequence, tie_break, cut):
    interactions, users, items = canonical
    # coarse timestamps: many same-second ratings, so the tie-break decides orders too
    coarse = interactions.assign(timestamp=interactions["timestamp"] // 10**7)
    result = split_dataset(
        coarse, users, items, fields=ML_FIELDS, seed=7, min_positives=3, num_negatives=30,
        history_length=4,
        sequence=sequence, tie_break=tie_break, cut=cut,
    )  # fmt: skip
    write_split(result, tmp_path / "s")
    assert _digest(tmp_path / "s") == PINNED[sequence, tie_break, cut]


@pytest.mark.parametrize(("sequence", "tie_break", "cut"), list(PINNED))
def test_split_written_as_it_is_made_is_the_same_files(
    canonical, tmp_path, monkeypatch, sequence, tie_break, cut
):
    # the stage's path (split_processed with out_dir: the train history and the candidates go
    # to their files block by block) writes byte for byte what write_split writes of the
    # in-memory split, here with blocks of a few rows and users so that every block boundary
    # is crossed; and it reads back with those arrays mapped, read-only
    import deepfm.data.splitting as splitting
    from deepfm.data.splitting import split_processed

    interactions, users, items = canonical
    coarse = interactions.assign(timestamp=interactions["timestamp"] // 10**7)
    for name, table in zip(("interactions", "users", "items"), (coarse, users, items),
                           strict=True):  # fmt: skip
        table.to_parquet(tmp_path / f"{name}.parquet")
    cfg = _ml100k_split_config(7, 3, 4, sequence, tie_break, num_negatives=30, cut=cut)
    monkeypatch.setattr(splitting, "_HISTORY_BLOCK_ROWS", 7)
    monkeypatch.setattr(splitting, "_CANDIDATE_BLOCK_DRAWS", 100)
    got = split_processed(cfg, tmp_path, tmp_path / "streamed")
    assert _digest(tmp_path / "streamed") == PINNED[sequence, tie_break, cut]
    assert isinstance(got.train_history, np.memmap) and not got.train_history.flags.writeable
    assert isinstance(got.test.candidates, np.memmap)
    in_memory = split_dataset(
        coarse, users, items, fields=ML_FIELDS, seed=7, min_positives=3, num_negatives=30,
        history_length=4, sequence=sequence, tie_break=tie_break, cut=cut,
    )  # fmt: skip
    assert got.summary == in_memory.summary
    np.testing.assert_array_equal(got.train_history, in_memory.train_history)


def test_users_with_fewer_candidates_and_empty_held_out_summaries(canonical):
    interactions, _, items = canonical
    # 40 candidates asked, 60 items: users who rated more than 20 have fewer unrated items
    # (cut none: every rating excludes; the causal counts: test_causal_split_matches_a_loop)
    result = split_dataset(*canonical, fields=ML_FIELDS, seed=7, min_positives=3, num_negatives=40,
                           cut="none")  # fmt: skip
    rated = interactions.groupby("user_id").size()
    for name in ("val", "test"):
        held = getattr(result, name)
        eligible = result.user_ids[held.users]
        unrated = {
            str(u): int(len(items) - rated[u]) for u in eligible if len(items) - rated[u] < 40
        }
        # the fixture has such users, and users with exactly 40 (not short), else this test
        # could not tell < from <=
        assert unrated and any(len(items) - rated[u] == 40 for u in eligible)
        assert result.summary["users_with_fewer_candidates"][name] == unrated
        assert ((held.candidates >= 0).sum(1) == [unrated.get(str(u), 40) for u in eligible]).all()
    # nobody eligible: empty held-out sets, and summaries that say so instead of NaN
    none = split_dataset(
        *canonical, fields=ML_FIELDS, seed=7, min_positives=10_000, num_negatives=5
    )
    assert none.summary["val_users"] == none.summary["test_users"] == 0
    assert none.summary["mean_history_filled"]["val"] == 0.0
    assert none.summary["mean_history_filled"]["test"] == 0.0
    assert none.summary["users_with_fewer_candidates"] == {"val": {}, "test": {}}


def test_leave_one_out_first_user_below_the_minimum():
    # user 0 has 2 positives (< 3): train only; the count of the first run starts at row 0
    users = np.array([0, 0, 0, 1, 1, 1])
    labels = np.array([1, 0, 1, 1, 1, 1])
    val, test = leave_one_out(users, labels, 3)
    assert test.tolist() == [5] and val.tolist() == [4]
    val, test = leave_one_out(users, labels, 2)
    assert test.tolist() == [2, 5] and val.tolist() == [0, 4]


def test_candidates_when_asking_for_more_than_the_catalogue():
    # 6 items, user 0 rated 2 of them, 8 candidates asked: the 4 unrated, then -1 padding
    c = sample_candidates(np.array([0]), np.array([1, 4]), 6, 8, np.random.default_rng(0))
    assert c.tolist() == [[0, 2, 3, 5, -1, -1, -1, -1]]
    assert c.dtype == np.int32  # as written to and read from val/test_candidates.npy


def test_candidates_of_a_user_with_exactly_as_many_unrated_items_as_asked():
    rated = np.array([i for i in range(100) if i % 10])  # 90 rated; unrated: 0, 10, ..., 90
    for seed in range(5):
        c = sample_candidates(np.array([0]), rated, 100, 10, np.random.default_rng(seed))
        assert c.tolist() == [list(range(0, 100, 10))]


def test_candidates_of_a_large_user_index_do_not_overflow():
    # user 50,000 of a 50,000-item catalogue: its keys pass 2^31 (ML-25M-sized indices)
    user, num_items = 50_000, 50_000
    unrated = [7, 123, 49_999]
    items = np.setdiff1d(np.arange(num_items), unrated)
    keys = np.int64(user) * num_items + items
    c = sample_candidates(
        np.array([user], dtype=np.int32), keys, num_items, 3, np.random.default_rng(0)
    )
    assert c.tolist() == [unrated]


def test_dense_candidates_are_the_items_with_the_smallest_random_keys():
    # the dense draw (fewer than 2k unrated items): one uniform key per item (rated items
    # excluded), the k smallest win. 500 items, k = 260, seed 95 is a draw where taking any
    # 260 of the 262 smallest keys (a partition at the wrong k) gives a different set.
    c = sample_candidates(np.array([0]), np.array([], dtype=np.int64), 500, 260,
                          np.random.default_rng(95))  # fmt: skip
    keys = np.random.default_rng(95).random((1, 500))
    assert c[0].tolist() == sorted(np.argsort(keys[0])[:260].tolist())


def _check_candidates(c, users, rated_keys, num_items, k):
    """The contract: distinct, unrated, sorted per row, -1 padding only where a user has
    fewer than k unrated items (and then every unrated item)."""
    rated = {(int(key // num_items), int(key % num_items)) for key in rated_keys}
    assert c.shape == (len(users), k) and c.dtype == np.int32
    for u, row in zip(users.tolist(), c, strict=True):
        unrated = [i for i in range(num_items) if (u, i) not in rated]
        got = row[row >= 0]
        assert (row[len(got) :] == -1).all()
        assert len(got) == min(k, len(unrated))
        assert (np.diff(got) > 0).all()  # sorted and distinct
        assert not any((u, int(i)) in rated for i in got)


def test_candidates_contract_on_mixed_users():
    # 300 items, 40 asked: light users (rejection draw), users who rated more than half of the
    # catalogue or have fewer than 80 unrated items (dense draw), users with fewer than 40
    # unrated items (padding), unsorted and repeated users, across several blocks
    rng = np.random.default_rng(1)
    num_items, k = 300, 40
    n_rated = [0, 5, 149, 150, 151, 219, 220, 221, 259, 260, 261, 299, 300, 30, 100]
    keys = np.sort(np.concatenate([
        u * num_items + np.sort(rng.choice(num_items, n, replace=False))
        for u, n in enumerate(n_rated)
    ]))  # fmt: skip
    users = np.array([3, 0, 14, 7, 7, 1, 2, 4, 5, 6, 8, 9, 10, 11, 12, 13])
    c = sample_candidates(users, keys, num_items, k, np.random.default_rng(0))
    _check_candidates(c, users, keys, num_items, k)
    # the same seed, the same draw; another seed, another
    again = sample_candidates(users, keys, num_items, k, np.random.default_rng(0))
    assert np.array_equal(c, again)
    assert not np.array_equal(c, sample_candidates(users, keys, num_items, k,
                                                   np.random.default_rng(1)))  # fmt: skip


def test_candidates_contract_in_small_blocks(monkeypatch):
    # blocks of one or two users on both paths: the same contract
    import deepfm.data.splitting as splitting

    monkeypatch.setattr(splitting, "_CANDIDATE_BLOCK_DRAWS", 50)
    monkeypatch.setattr(splitting, "_CANDIDATE_BLOCK_CELLS", 300)
    rng = np.random.default_rng(2)
    num_items, k = 200, 30
    keys = np.sort(np.concatenate([
        u * num_items + rng.choice(num_items, n, replace=False)
        for u, n in enumerate([10, 150, 0, 180, 60, 190])
    ]))  # fmt: skip
    users = np.arange(6)
    c = sample_candidates(users, keys, num_items, k, np.random.default_rng(0))
    _check_candidates(c, users, keys, num_items, k)


def _chi_square_p(counts: np.ndarray) -> float:
    from scipy.stats import chisquare

    return float(chisquare(counts).pvalue)


@pytest.mark.parametrize(
    ("num_items", "rated", "k"),
    [
        (12, range(0), 4),  # rejection draw, many repeats within a round
        (12, range(6), 3),  # rejection draw at its limit: half rated, exactly 2k unrated
        (40, range(0, 40, 4), 2),  # rejection draw, rated items spread out
        (12, range(7), 2),  # dense draw: 5 unrated, 2 asked (fewer than 2k unrated)
        (30, range(27), 2),  # dense draw: almost every item rated, 3 unrated, 2 asked
    ],
)
def test_candidates_are_uniform_over_subsets(num_items, rated, k):
    # every k-subset of the unrated items equally likely: a chi-square test over the subsets
    from itertools import combinations

    rated_keys = np.array(list(rated), dtype=np.int64)
    unrated = [i for i in range(num_items) if i not in set(rated)]
    subsets = {s: n for n, s in enumerate(combinations(unrated, k))}
    draws = 200 * len(subsets)
    users = np.zeros(draws, dtype=np.int64)  # one user drawn many times, in one call
    c = sample_candidates(users, rated_keys, num_items, k, np.random.default_rng(3))
    counts = np.bincount([subsets[tuple(row)] for row in c.tolist()], minlength=len(subsets))
    assert counts.sum() == draws
    assert _chi_square_p(counts) > 1e-4


def test_release_mapped_pages_drops_read_pages_and_keeps_the_values(tmp_path):
    # a mapped split array read block by block stays resident (RssFile) unless released
    from deepfm.data.splitting import release_mapped_pages

    def rss_file_mb() -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssFile:"):
                return int(line.split()[1]) / 1024
        pytest.skip("no RssFile in /proc/self/status")

    values = np.arange(16 << 20, dtype=np.int32)  # 64 MB
    np.save(tmp_path / "a.npy", values)
    mapped = np.load(tmp_path / "a.npy", mmap_mode="r")
    before = rss_file_mb()
    assert int(mapped[::1024].sum()) == int(values[::1024].sum())  # touches every page
    assert rss_file_mb() - before > 48
    release_mapped_pages(mapped[5:10])  # a view: its base is the same mapping
    assert rss_file_mb() - before < 16
    np.testing.assert_array_equal(mapped[-3:], values[-3:])  # read again from the page cache
    in_memory = values[:10]
    release_mapped_pages(in_memory)  # an array in memory: nothing to do
    writable = np.load(tmp_path / "a.npy", mmap_mode="r+")
    writable[0] = -1
    release_mapped_pages(writable)  # writable: kept, the write is not lost
    assert writable[0] == -1


def _ml100k_split_config(seed, min_positives, history_length, sequence, tie_break, *,
                         num_negatives, cut="causal"):  # fmt: skip
    """A Config of params.yaml's ml-100k declaration with these split knobs."""
    from deepfm.config import parse_config

    split = {"min_positives": min_positives, "history_length": history_length,
             "sequence": sequence, "tie_break": tie_break, "cut": cut}  # fmt: skip
    return parse_config({
        "seed": seed, "split": split, "eval": {"num_negatives": num_negatives},
        "datasets": {"ml-100k": PARAMS["datasets"]["ml-100k"]},
    })  # fmt: skip
