"""The closed-form baselines (item_cooccurrence, ease) against slow, loop-based references."""

import itertools

import numpy as np
import pandas as pd
import pytest
import torch

from deepfm.config import ConfigError, EASEConfig, ItemCooccurrenceConfig, parse_config
from deepfm.data.batches import feature_tensors
from deepfm.data.splitting import split_dataset
from deepfm.models import build_model
from tests.conftest import ML_FIELDS


def _frames():
    # user 1: positives 10, 11, 13, 14 with 12 rated 2 (an observed negative) between 11 and
    #   13; 15 (val) and 16 (test) come last
    # user 2: two positives (train only): 13, 11, then 12 rated 1
    # user 3: two positives (train only): 16, 15, so every item is in the train vocabulary
    # items 10..16 -> item_id codes 1..7
    frame = pd.DataFrame(
        {
            "user_id": [1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 3, 3],
            "item_id": [10, 11, 12, 13, 14, 15, 16, 13, 11, 12, 16, 15],
            "rating": [5, 4, 2, 5, 5, 5, 5, 5, 5, 1, 5, 4],
            "timestamp": [1, 2, 3, 4, 5, 6, 7, 1, 2, 3, 1, 2],
        }
    )
    frame["label"] = (frame.rating >= 4).astype(np.int8)
    users = pd.DataFrame({"user_id": [1, 2, 3]})
    users = users.assign(gender="M", age_bucket="18-24", occupation="x", zip_prefix="1")
    items = pd.DataFrame(
        {"item_id": np.arange(10, 17), "genres": [[]] * 7, "year_bucket": [None] * 7}
    )
    return frame, users, items


def _tiny(sequence="positives", history_length=3):
    return split_dataset(
        *_frames(),
        fields=ML_FIELDS,
        seed=0,
        min_positives=3,
        num_negatives=2,
        history_length=history_length,
        sequence=sequence,
    )


def _fit(name, split, params):
    model = build_model(name, split.schema, feature_tensors(split), params)
    model.fit(split)
    model.eval()
    return model


def _item_code(split):
    names = [f.name for f in split.schema.fields if f.source == "item" and f.kind == "sparse"]
    return split.item_features[:, names.index("item_id")]


def _sequences(split, interactions, users, items, sequence):
    """Each user's train sequence of item_id codes, rebuilt from the raw table with a loop:
    (the causal cut) an evaluated user's ratings up to their validation item."""
    code = _item_code(split)
    val = dict(zip(split.val.users.tolist(), split.val.items.tolist(), strict=True))
    user_index = {int(x): n for n, x in enumerate(users.user_id)}
    item_index = {int(x): n for n, x in enumerate(items.item_id)}
    out, done = {}, set()
    for row in interactions.sort_values(["user_id", "timestamp", "item_id"]).itertuples():
        u, i = user_index[row.user_id], item_index[row.item_id]
        done |= {u} if val.get(u) == i else set()
        if u in done or (sequence == "positives" and row.label != 1):
            continue
        out.setdefault(u, []).append(int(code[i]))
    return out


def _reference_cooc(sequences, vocab, p: ItemCooccurrenceConfig):
    c = np.zeros((vocab, vocab))
    for seq in sequences.values():
        for s, a in enumerate(seq):
            for d in range(1, p.window + 1):
                if s + d >= len(seq):
                    break
                c[a, seq[s + d]] += 1.0
                if p.direction == "both":
                    c[seq[s + d], a] += 1.0
    if p.normalise == "row":
        for a in range(vocab):
            total = sum(c[a])
            if total > 0:
                c[a] = c[a] / total
    return c


def _nonzero(c):
    return {(int(a), int(b)): float(c[a, b]) for a, b in np.argwhere(c)}


def _vocab(split):
    return next(f.vocab_size for f in split.schema.fields if f.name == "item_id")


def test_cooccurrence_hand_worked_and_the_sequence_mask():
    params = ItemCooccurrenceConfig(window=1, direction="forward", normalise="none")
    # codes: 10 -> 1, 11 -> 2, 12 -> 3, 13 -> 4, 14 -> 5, 15 -> 6, 16 -> 7
    positives = _fit("item_cooccurrence", _tiny("positives"), params).cooc.numpy()
    expected = {(1, 2): 1, (2, 4): 1, (4, 5): 1, (4, 2): 1, (7, 6): 1}  # 12 (rated 2) skipped
    assert _nonzero(positives) == expected
    rated = _fit("item_cooccurrence", _tiny("rated"), params).cooc.numpy()
    # the observed negative 12 is in the sequences now; val 15 and test 16 never are
    assert _nonzero(rated) == {(1, 2): 1, (2, 3): 2, (3, 4): 1, (4, 5): 1, (4, 2): 1, (7, 6): 1}
    assert not rated[0].any() and not rated[:, 0].any()


PARAM_GRID = [
    ItemCooccurrenceConfig(window=w, direction=d, normalise=n)
    for w, d, n in itertools.product([1, 2, 5], ["forward", "both"], ["row", "none"])
]


@pytest.mark.parametrize("sequence", ["positives", "rated"])
def test_cooccurrence_counts_match_a_loop(canonical, sequence):
    interactions, users, items = canonical
    split = split_dataset(
        interactions, users, items, fields=ML_FIELDS, seed=7, min_positives=3, num_negatives=30,
        history_length=4, sequence=sequence,
    )  # fmt: skip
    sequences = _sequences(split, interactions, users, items, sequence)
    assert sum(map(len, sequences.values())) == split.sequence_mask().sum()
    for params in PARAM_GRID:
        model = _fit("item_cooccurrence", split, params)
        expected = _reference_cooc(sequences, _vocab(split), params)
        np.testing.assert_allclose(model.cooc.numpy(), expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    "params",
    [
        ItemCooccurrenceConfig(),
        ItemCooccurrenceConfig(recency_power=2.0, recent=2, popularity_weight=0.01),
        ItemCooccurrenceConfig(recency_power=0.0, normalise="none", popularity_weight=0.0),
    ],
)
def test_cooccurrence_scores_match_a_loop(split, params):
    model = _fit("item_cooccurrence", split, params)
    c = model.cooc.numpy().astype(np.float64)
    code = _item_code(split)
    mask = split.sequence_mask()
    pop = np.zeros(split.schema.num_items)
    for i in split.train_items[mask]:
        pop[i] += 1
    rows = np.linspace(0, len(split.train_history) - 1, 12).astype(np.int64)
    history = np.concatenate([split.train_history[rows], split.test.history[:3]])
    history[0] = 0  # an empty history: popularity only
    users = np.arange(len(history)) % split.schema.num_users
    n_items = split.schema.num_items
    expected = np.zeros((len(history), n_items))
    for r, h in enumerate(history):
        for i in range(n_items):
            s = 0.0
            for p, hc in enumerate(h):
                if params.recent and p >= params.recent:
                    break
                s += c[hc, code[i]] / (p + 1) ** params.recency_power
            expected[r, i] = s + params.popularity_weight * pop[i] / pop.max()
    got = model.score_matrix(
        torch.from_numpy(users), torch.arange(n_items), torch.from_numpy(history)
    )
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-9)
    assert (got[0] == model.item_prior).all()
    # another history, other scores: the history argument is the input
    other = model.score_matrix(
        torch.from_numpy(users), torch.arange(n_items), torch.from_numpy(history[::-1].copy())
    )
    assert not torch.equal(other, got)


def test_cooccurrence_without_history_field_ranks_by_popularity(canonical):
    split = split_dataset(*canonical, fields=ML_FIELDS, seed=7, min_positives=3, num_negatives=30)
    model = _fit("item_cooccurrence", split, ItemCooccurrenceConfig())
    scores = model.score_matrix(torch.arange(4), torch.arange(split.schema.num_items), None)
    assert torch.isfinite(scores).all() and (scores == model.item_prior).all()
    assert model.item_prior.max() > 0 and model.num_parameters() == 0


def _reference_ease(x, lam):
    """Column by column: min ||x_j - x b||^2 + lam ||b||^2 subject to b_j = 0, solved as the
    ridge regression of x_j on the other columns."""
    n = x.shape[1]
    b = np.zeros((n, n))
    for j in range(n):
        others = [k for k in range(n) if k != j]
        xo = x[:, others]
        b[others, j] = np.linalg.solve(xo.T @ xo + lam * np.eye(n - 1), xo.T @ x[:, j])
    return b


def _input_matrix(split, which):
    x = np.zeros((split.schema.num_users, split.schema.num_items))
    for u, i, y in zip(split.train_users, split.train_items, split.train_labels, strict=True):
        if which == "rated" or y == 1:
            x[u, i] = 1.0
    return x


@pytest.mark.parametrize("which", ["rated", "positives"])
@pytest.mark.parametrize("lam", [0.5, 30.0])
def test_ease_weights_solve_the_constrained_least_squares(split, which, lam):
    model = _fit("ease", split, EASEConfig(l2=lam, input=which))
    expected = _reference_ease(_input_matrix(split, which), lam)
    np.testing.assert_allclose(model.weights.numpy(), expected, rtol=1e-4, atol=1e-6)
    assert (torch.diagonal(model.weights) == 0).all()
    tiny = _tiny()
    small = _fit("ease", tiny, EASEConfig(l2=lam, input=which))
    np.testing.assert_allclose(
        small.weights.numpy(), _reference_ease(_input_matrix(tiny, which), lam), atol=1e-6
    )


@pytest.mark.parametrize("which", ["rated", "positives"])
def test_ease_scores_the_union_of_train_items_and_history(split, which):
    model = _fit("ease", split, EASEConfig(l2=3.0, input=which))
    b = model.weights.numpy().astype(np.float64)
    x = _input_matrix(split, which)
    code = _item_code(split)
    code_to_item = {int(c): i for i, c in enumerate(code) if c > 0}
    users = split.test.users[:6].astype(np.int64)
    history = split.test.history[:6].copy()  # holds the validation item, not in train
    history[1] = 0
    history[2, 0] = code[np.flatnonzero((x[users[2]] == 0) & (code > 0))[0]]  # never rated
    history[3, 1] = history[3, 0]  # a repeated item counts once
    expected = np.zeros((len(users), split.schema.num_items))
    for r, u in enumerate(users):
        inputs = set(np.flatnonzero(x[u]).tolist())
        inputs |= {code_to_item[int(h)] for h in history[r] if h > 0}
        for i in range(split.schema.num_items):
            expected[r, i] = sum(b[j, i] for j in inputs)
    # the test history starts with the validation item, which is no train row
    assert history[0, 0] == code[split.val.items[0]] and x[users[0], split.val.items[0]] == 0
    got = model.score_matrix(
        torch.from_numpy(users), torch.arange(split.schema.num_items), torch.from_numpy(history)
    )
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-4, atol=1e-5)
    no_history = model.score_matrix(torch.from_numpy(users), torch.arange(5), None)
    np.testing.assert_allclose(no_history.numpy(), x[users] @ b[:, :5], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["ease", "item_cooccurrence"])
def test_checkpoint_round_trip_and_training_loop(split, tmp_path, name):
    from deepfm.models import checkpoint
    from deepfm.training import loop

    cfg = parse_config({"model": name})
    out = loop.train(cfg, split, tmp_path / "m.pt", progress=False)
    assert out.epochs_run == 0 and out.num_parameters == 0
    assert 0 < out.best_val["full_ndcg@10"] <= 1
    loaded, _ = checkpoint.load_model(tmp_path / "m.pt")
    fresh = _fit(name, split, cfg.model_params)
    users = torch.from_numpy(split.test.users.astype(np.int64))
    history = torch.from_numpy(split.test.history)
    items = torch.arange(split.schema.num_items)
    torch.testing.assert_close(
        loaded.score_matrix(users, items, history), fresh.score_matrix(users, items, history)
    )


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"ease": {"l2": 0}}, r"'ease\.l2' is 0\.0; it must be > 0"),
        ({"ease": {"input": "all"}}, r"'ease\.input' is 'all'; allowed: 'rated', 'positives'"),
        ({"item_cooccurrence": {"window": 0}}, r"'item_cooccurrence\.window' is 0"),
        (
            {"item_cooccurrence": {"direction": "backward"}},
            r"'item_cooccurrence\.direction' is 'backward'; allowed: 'forward', 'both'",
        ),
        ({"item_cooccurrence": {"recency_power": -1}}, r"recency_power' is -1\.0; it must be >="),
    ],
)
def test_bad_params_are_config_errors(raw, expected):
    with pytest.raises(ConfigError, match=expected):
        parse_config(raw)
