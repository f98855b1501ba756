"""The evaluation worked out by hand on a tiny example: every rank and metric below was
computed on paper from the score table, not by the code under test.

Three users, seven items (0..6), three candidate slots per user (-1 = padding: user 0 has
only two never-rated items left for each held-out split).

    user  train items  val item  test item  val candidates  test candidates
    0     0, 1         2         3          4, 6, -1        5, 6, -1
    1     2            0         4          1, 3, 5         6, 1, 3
    2     0, 3         1         5          2, 4, 6         2, 6, -1

Scores (a row per user, a column per item):

    user    0  1  2  3  4  5  6
    0       9  8  5  3  5  1  4
    1       6  2  9  6  8  0  3
    2       1  4  4  7  2  6  5

Ranks are pessimistic: a tied competitor ranks above the held-out item.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from deepfm.data.sampling import RatedIndex
from deepfm.data.splitting import HeldOut
from deepfm.evaluation.ranking import evaluate_held_out, evaluate_split

SCORES = torch.tensor(
    [
        [9, 8, 5, 3, 5, 1, 4],
        [6, 2, 9, 6, 8, 0, 3],
        [1, 4, 4, 7, 2, 6, 5],
    ],
    dtype=torch.float32,
)
TRAIN = {0: [0, 1], 1: [2], 2: [0, 3]}
NO_HISTORY = np.zeros((3, 0), dtype=np.int32)


class FixedScores(torch.nn.Module):
    """A 'model' whose score of (user, item) is SCORES[user, item]."""

    def score_matrix(self, users, items, history=None):
        assert history is None
        return SCORES[users][:, items]


def held(items, candidates) -> HeldOut:
    return HeldOut(
        users=np.array([0, 1, 2], dtype=np.int32),
        items=np.array(items, dtype=np.int32),
        candidates=np.array(candidates, dtype=np.int32),
        history=NO_HISTORY,
    )


VAL = held([2, 0, 1], [[4, 6, -1], [1, 3, 5], [2, 4, 6]])
TEST = held([3, 4, 5], [[5, 6, -1], [6, 1, 3], [2, 6, -1]])


class TinySplit:
    val, test = VAL, TEST


def rated() -> RatedIndex:
    users = np.array([u for u, items in TRAIN.items() for _ in items])
    items = np.array([i for its in TRAIN.values() for i in its])
    return RatedIndex(users, items, num_users=3, num_items=7)


def ndcg(ranks, k):
    return sum(1 / math.log2(r + 1) for r in ranks if r <= k) / len(ranks)


@pytest.fixture
def results():
    # function scope, not module: mutmut runs for a mutant only the tests that called the
    # code, and a module fixture's call is counted for the first test alone.
    # Two users per block: the blocks' slicing is part of what is checked.
    return evaluate_split(FixedScores(), TinySplit, rated(), ks=[1, 2, 3], batch_users=2)


def test_sampled_ranks_by_hand(results):
    # val  u0: item 2 (5) vs 4 (5, tie), 6 (4); the padding slot does not compete  -> 2
    #      u1: item 0 (6) vs 1 (2), 3 (6, tie), 5 (0)                              -> 2
    #      u2: item 1 (4) vs 2 (4, tie), 4 (2), 6 (5)                              -> 3
    # test u0: item 3 (3) vs 5 (1), 6 (4)                                          -> 2
    #      u1: item 4 (8) vs 6 (3), 1 (2), 3 (6)                                   -> 1
    #      u2: item 5 (6) vs 2 (4), 6 (5)                                          -> 1
    assert results["val"].sampled_rank.tolist() == [2, 2, 3]
    assert results["test"].sampled_rank.tolist() == [2, 1, 1]
    assert results["val"].num_candidates.tolist() == [3, 4, 4]  # the positive + valid slots
    assert results["test"].num_candidates.tolist() == [3, 4, 3]


def test_full_ranks_by_hand(results):
    # val: train items excluded, the test item competes (unknown at validation time)
    #   u0: 2 (5) vs 3 (3), 4 (5 tie), 5 (1), 6 (4); not 0 (9), 1 (8): train        -> 2
    #   u1: 0 (6) vs 1 (2), 3 (6 tie), 4 (8, the test item), 5 (0), 6 (3); not 2    -> 3
    #   u2: 1 (4) vs 2 (4 tie), 4 (2), 5 (6, the test item), 6 (5); not 0, 3         -> 4
    # test: train items and the validation item excluded
    #   u0: 3 (3) vs 4 (5), 5 (1), 6 (4); not 0, 1 (train), 2 (val, 5)               -> 3
    #   u1: 4 (8) vs 1, 3, 5, 6 (all lower); not 2 (train, 9), 0 (val)               -> 1
    #   u2: 5 (6) vs 2 (4), 4 (2), 6 (5); not 0, 3 (train, 7), 1 (val)               -> 1
    assert results["val"].full_rank.tolist() == [2, 3, 4]
    assert results["test"].full_rank.tolist() == [3, 1, 1]


def test_metrics_by_hand(results):
    val = results["val"].metrics
    assert val["users"] == 3
    assert val["hr@1"] == 0.0
    assert val["hr@2"] == pytest.approx(2 / 3)
    assert val["hr@3"] == 1.0
    assert val["ndcg@2"] == pytest.approx(2 / math.log2(3) / 3)
    assert val["ndcg@3"] == pytest.approx((2 / math.log2(3) + 1 / 2) / 3)
    assert val["mrr"] == pytest.approx((1 / 2 + 1 / 2 + 1 / 3) / 3)
    assert val["full_hr@2"] == pytest.approx(1 / 3)
    assert val["full_hr@3"] == pytest.approx(2 / 3)
    assert val["full_ndcg@3"] == pytest.approx((1 / math.log2(3) + 1 / 2) / 3)
    assert val["full_mrr"] == pytest.approx((1 / 2 + 1 / 3 + 1 / 4) / 3)
    test = results["test"].metrics
    assert test["hr@1"] == pytest.approx(2 / 3)
    assert test["ndcg@2"] == pytest.approx((1 / math.log2(3) + 2) / 3)
    assert test["full_hr@1"] == pytest.approx(2 / 3)
    assert test["full_ndcg@3"] == pytest.approx((1 / 2 + 2) / 3)
    assert test["full_mrr"] == pytest.approx((1 / 3 + 2) / 3)
    for split in ("val", "test"):
        m = results[split].metrics
        ranks = results[split].full_rank
        assert m["full_ndcg@2"] == pytest.approx(ndcg(ranks, 2))


def test_auc_and_logloss_pool_every_valid_pair_by_hand(results):
    # val pairs (positive first, padding dropped): u0 5 | 5 4; u1 6 | 2 6 0; u2 4 | 4 2 5.
    # Positive 5 beats 4 4 2 2 0 and ties 5 5: 6; positive 6 beats 7 and ties one: 7.5;
    # positive 4 beats 2 2 0 and ties 4 4: 4. AUC = 17.5 / (3 * 8).
    assert results["val"].metrics["auc"] == pytest.approx(17.5 / 24)
    pairs = [(1, 5), (0, 5), (0, 4), (1, 6), (0, 2), (0, 6), (0, 0), (1, 4), (0, 4), (0, 2)]
    pairs += [(0, 5)]
    expected = sum(math.log1p(math.exp(x)) - y * x for y, x in pairs) / len(pairs)
    assert results["val"].metrics["logloss"] == pytest.approx(expected)
    # test pairs: u0 3 | 1 4; u1 8 | 3 2 6; u2 6 | 4 5. Positive 3 beats 1 2 and ties 3:
    # 2.5; positive 8 beats all 7; positive 6 beats 1 4 3 2 4 5 and ties 6: 6.5.
    assert results["test"].metrics["auc"] == pytest.approx(16 / 21)


def test_blocks_of_users_do_not_change_anything(results):
    again = evaluate_split(FixedScores(), TinySplit, rated(), ks=[1, 2, 3], batch_users=256)
    for split in ("val", "test"):
        assert again[split].metrics == results[split].metrics
        np.testing.assert_array_equal(again[split].full_rank, results[split].full_rank)


def test_test_ranking_without_the_validation_exclusion_is_worse(results):
    # evaluate_held_out alone does not know the validation item: u0's test item then
    # also competes with item 2 (5) -> rank 4
    alone = evaluate_held_out(FixedScores(), TEST, rated(), ks=[1])
    assert alone.full_rank.tolist() == [4, 1, 1]
    val_items = RatedIndex(VAL.users, VAL.items, 3, 7)
    exclude = evaluate_held_out(FixedScores(), TEST, rated(), ks=[1], also_exclude=val_items)
    assert exclude.full_rank.tolist() == results["test"].full_rank.tolist()


def test_the_test_ranking_leaves_out_everything_rated_before_it(results):
    # the causal split's test_seen: u0 rated item 6 between its validation and test items,
    # so item 6 (4) no longer competes with u0's test item 3 (3): rank 3 -> 2; the
    # validation ranking is the same (item 6 came after the validation item)
    class Seen:
        val, test = VAL, TEST
        test_seen = np.array([[0, 2], [1, 0], [2, 1], [0, 6]], dtype=np.int32)

    got = evaluate_split(FixedScores(), Seen, rated(), ks=[1, 2, 3], batch_users=2)
    assert results["test"].full_rank.tolist()[0] == 3 and got["test"].full_rank.tolist()[0] == 2
    assert got["test"].full_rank.tolist()[1:] == results["test"].full_rank.tolist()[1:]
    assert got["val"].full_rank.tolist() == results["val"].full_rank.tolist()


def test_validation_and_test_users_must_match():
    class Shifted:
        val = VAL
        test = HeldOut(np.array([0, 1, 3], dtype=np.int32), TEST.items, TEST.candidates, NO_HISTORY)

    with pytest.raises(
        ValueError, match=r"^validation and test users differ; rerun the split stage\.$"
    ):
        evaluate_split(FixedScores(), Shifted, rated(), ks=[1])


@pytest.mark.parametrize("training", [True, False])
def test_evaluation_scores_in_eval_mode_and_restores_the_mode(training):
    seen = []

    class Watch(FixedScores):
        def score_matrix(self, users, items, history=None):
            seen.append((self.training, torch.is_inference_mode_enabled()))
            return super().score_matrix(users, items, history)

    model = Watch().train(training)
    evaluate_held_out(model, VAL, rated(), ks=[1], batch_users=2)
    assert seen == [(False, True), (False, True)]  # dropout / batch norm off, no autograd
    assert model.training is training


def test_item_zero_is_a_candidate_not_padding():
    # one user, four items with scores 5 1 3 2; item 1 rated in train, item 2 held out;
    # candidates item 0 (5, above) and item 3 (2, below), then a padding slot
    class One(torch.nn.Module):
        def score_matrix(self, users, items, history=None):
            return torch.tensor([[5.0, 1.0, 3.0, 2.0]])[:, items]

    heldout = HeldOut(
        np.array([0], np.int32), np.array([2], np.int32), np.array([[0, 3, -1]], np.int32),
        np.zeros((1, 0), np.int32),
    )  # fmt: skip
    index = RatedIndex(np.array([0]), np.array([1]), num_users=1, num_items=4)
    r = evaluate_held_out(One(), heldout, index, ks=[1])
    assert r.sampled_rank.tolist() == [2] and r.num_candidates.tolist() == [3]
    assert r.full_rank.tolist() == [2]  # item 0 above; item 1 excluded; item 3 below
    assert r.metrics["auc"] == 0.5  # pairs: positive 3 | negatives 5 and 2
    pairs = [(1, 3.0), (0, 5.0), (0, 2.0)]
    expected = sum(math.log1p(math.exp(x)) - y * x for y, x in pairs) / 3
    assert r.metrics["logloss"] == pytest.approx(expected)


def test_result_arrays_are_per_user_and_integer(results):
    for split, held_out in (("val", VAL), ("test", TEST)):
        r = results[split]
        assert r.sampled_rank.dtype == r.full_rank.dtype == r.num_candidates.dtype == np.int64
        np.testing.assert_array_equal(r.users, held_out.users)
        np.testing.assert_array_equal(r.items, held_out.items)
        expected = {"hr@1", "hr@2", "hr@3", "ndcg@1", "ndcg@2", "ndcg@3", "mrr", "auc",
                    "logloss", "full_hr@1", "full_hr@2", "full_hr@3", "full_ndcg@1",
                    "full_ndcg@2", "full_ndcg@3", "full_mrr", "users"}  # fmt: skip
        assert set(r.metrics) == expected
        assert all(isinstance(v, float) for k, v in r.metrics.items() if k != "users")


def test_no_users_gives_nan_metrics():
    empty = HeldOut(
        np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros((0, 3), np.int32), NO_HISTORY[:0]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = evaluate_held_out(FixedScores(), empty, rated(), ks=[1])
    assert r.metrics["users"] == 0
    assert all(math.isnan(v) for k, v in r.metrics.items() if k != "users")


def test_metric_dict_is_pinned_exactly_keys_in_order():
    # written to metrics/eval.json as is (rounded): keys, their order (eval.ks order, sampled
    # then full ranking) and every digit were produced by the code before the metric registry
    got = evaluate_split(FixedScores(), TinySplit, rated(), ks=[2, 1], batch_users=2)
    assert list(got["val"].metrics.items()) == [
        ("hr@2", 0.6666666666666666), ("ndcg@2", 0.420619835714305), ("hr@1", 0.0),
        ("ndcg@1", 0.0), ("mrr", 0.4444444444444444), ("auc", 0.7291666666666666),
        ("logloss", 2.638777309285649), ("full_hr@2", 0.3333333333333333),
        ("full_ndcg@2", 0.2103099178571525), ("full_hr@1", 0.0), ("full_ndcg@1", 0.0),
        ("full_mrr", 0.3611111111111111), ("users", 3),
    ]  # fmt: skip
    assert list(got["test"].metrics.items()) == [
        ("hr@2", 1.0), ("ndcg@2", 0.8769765845238192), ("hr@1", 0.6666666666666666),
        ("ndcg@1", 0.6666666666666666), ("mrr", 0.8333333333333334),
        ("auc", 0.7619047619047619), ("logloss", 2.5585666382681773),
        ("full_hr@2", 0.6666666666666666), ("full_ndcg@2", 0.6666666666666666),
        ("full_hr@1", 0.6666666666666666), ("full_ndcg@1", 0.6666666666666666),
        ("full_mrr", 0.7777777777777777), ("users", 3),
    ]  # fmt: skip


def test_user_sample_is_seeded_distinct_and_in_user_order():
    from deepfm.evaluation.ranking import user_sample

    assert user_sample(50, 0, seed=1) is None and user_sample(50, 50, seed=1) is None
    a = user_sample(50, 7, seed=1)
    assert len(a) == 7 == len(set(a.tolist())) and list(a) == sorted(a) and a.max() < 50
    assert np.array_equal(a, user_sample(50, 7, seed=1))
    assert not np.array_equal(a, user_sample(50, 7, seed=2))


def test_a_sample_of_users_keeps_each_users_ranks(split, tmp_path):
    """eval.sample_users evaluates a subset of users: each sampled user's ranks are those of
    the full evaluation (the test item still ranked without that user's validation item), and
    the training validation and eval.json use the same sample and say so."""
    from deepfm.config import parse_config
    from deepfm.data.batches import feature_tensors
    from deepfm.evaluation.protocol import evaluate_checkpoint
    from deepfm.evaluation.ranking import user_sample
    from deepfm.models import build_model
    from deepfm.training.loop import train

    cfg = parse_config(
        {"seed": 5, "eval": {"sample_users": 9},
         "train": {"epochs": 2, "min_epochs": 2, "num_threads": 1, "batch_size": 64},
         "deepfm": {"embed_dim": 4, "dnn_hidden": [8]}}
    )  # fmt: skip
    torch.manual_seed(0)
    model = build_model("deepfm", split.schema, feature_tensors(split), cfg.model_params)
    rated = RatedIndex(
        split.train_users, split.train_items, split.schema.num_users, split.schema.num_items
    )
    sample = user_sample(len(split.val.users), 9, seed=5)
    full = evaluate_split(model, split, rated, ks=[10], batch_users=4)
    part = evaluate_split(model, split, rated, ks=[10], batch_users=4, sample=sample)
    for name in ("val", "test"):
        assert np.array_equal(part[name].users, full[name].users[sample])
        assert np.array_equal(part[name].full_rank, full[name].full_rank[sample])
        assert np.array_equal(part[name].sampled_rank, full[name].sampled_rank[sample])
        assert part[name].metrics["users"] == 9

    out = train(cfg, split, tmp_path / "m.pt", progress=False)
    assert out.best_val["users"] == 9  # validation in training ranked the sample only
    result = evaluate_checkpoint(
        split, tmp_path / "m.pt", ks=[10], batch_users=4, threads=1, sample_users=9, seed=5
    )
    assert result.metrics["sample_users"] == {"users": 9, "of": len(split.val.users), "seed": 5}
    assert result.metrics["test"]["users"] == 9
    whole = evaluate_checkpoint(split, tmp_path / "m.pt", ks=[10], batch_users=4, threads=1)
    assert "sample_users" not in whole.metrics and whole.metrics["test"]["users"] > 9


@pytest.mark.parametrize("batch_users", [1, 7, 64])
def test_pooled_metrics_equal_the_metrics_of_every_pair_at_once(batch_users):
    # random integer scores (many ties) for 40 users x 25 items, 10 candidate slots with
    # padding: the pooled AUC / LogLoss of the blocked evaluation are auc / log_loss on the
    # pairs (the positive, then the valid candidates, user by user) concatenated, exactly
    from deepfm.evaluation import metrics as M

    rng = np.random.default_rng(5)
    users, items = 40, 25
    table = torch.from_numpy(rng.integers(0, 6, (users, items)).astype(np.float32))

    class Table(torch.nn.Module):
        def score_matrix(self, u, i, history=None):
            return table[u][:, i]

    positives = rng.integers(0, items, users)
    candidates = np.stack([rng.permutation(items)[:10] for _ in range(users)])
    candidates[candidates == positives[:, None]] = -1
    candidates[rng.random((users, 10)) < 0.2] = -1
    heldout = HeldOut(
        np.arange(users, dtype=np.int32), positives.astype(np.int32),
        candidates.astype(np.int32), np.zeros((users, 0), np.int32),
    )  # fmt: skip
    index = RatedIndex(np.array([0]), np.array([0]), num_users=users, num_items=items)
    r = evaluate_held_out(Table(), heldout, index, ks=[5], batch_users=batch_users)
    labels, logits = [], []
    for u in range(users):
        cand = candidates[u][candidates[u] >= 0]
        labels += [1] + [0] * len(cand)
        logits += [table[u, positives[u]].item(), *table[u, cand].tolist()]
    labels, logits = np.array(labels, np.int8), np.array(logits, np.float32)
    assert r.metrics["auc"] == M.auc(labels, logits)
    assert r.metrics["logloss"] == M.log_loss(labels, logits)
