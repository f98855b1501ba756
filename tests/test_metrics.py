import itertools
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import log_loss as sk_log_loss
from sklearn.metrics import roc_auc_score

from deepfm.evaluation import metrics as M


def test_pessimistic_rank_with_ties_and_padding():
    pos = torch.tensor([0.5, 0.5, 0.9])
    others = torch.tensor([[0.1, 0.5, 0.7], [0.1, 0.2, 0.3], [0.9, 0.9, 0.9]])
    valid = torch.tensor([[True, True, True], [True, True, True], [True, False, False]])
    # user 0: 0.5 tie + 0.7 above -> rank 3; user 1: best -> 1; user 2: one valid tie -> 2
    assert M.pessimistic_rank(pos, others, valid).tolist() == [3, 1, 2]


def test_all_tied_scores_rank_last():
    pos = torch.zeros(1)
    assert M.pessimistic_rank(pos, torch.zeros(1, 999)).item() == 1000


def test_hr_ndcg_mrr_hand_worked():
    ranks = np.array([1, 2, 3, 11])
    assert M.hit_rate(ranks, 1) == 0.25
    assert M.hit_rate(ranks, 10) == 0.75
    expected = (1 + 1 / math.log2(3) + 1 / math.log2(4) + 0) / 4
    assert M.ndcg(ranks, 10) == pytest.approx(expected)
    assert M.ndcg(ranks, 1) == 0.25
    assert M.mrr(ranks) == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 11) / 4)


def test_ndcg_never_exceeds_hr():
    ranks = np.random.default_rng(0).integers(1, 100, size=1000)
    for k in (1, 5, 10, 20, 50):
        assert M.ndcg(ranks, k) <= M.hit_rate(ranks, k)


def test_auc_hand_worked_with_ties():
    labels = np.array([1, 0, 0, 1, 0])
    scores = np.array([0.8, 0.8, 0.1, 0.3, 0.5])
    # pairs (pos, neg): 0.8 vs {0.8 tie=.5, 0.1 win, 0.5 win} + 0.3 vs {0.8 lose, 0.1 win, 0.5 lose}
    assert M.auc(labels, scores) == pytest.approx((0.5 + 1 + 1 + 0 + 1 + 0) / 6)


def test_auc_and_logloss_match_sklearn():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 5000)
    logits = np.round(rng.normal(size=5000) + labels, 1)  # rounding makes many ties
    assert M.auc(labels, logits) == pytest.approx(roc_auc_score(labels, logits), abs=1e-12)
    probs = 1 / (1 + np.exp(-logits))
    assert M.log_loss(labels, logits) == pytest.approx(sk_log_loss(labels, probs), rel=1e-9)


def evaluation_pairs(seed: int, users: int, per_user: int) -> tuple[np.ndarray, np.ndarray, list]:
    """(labels, float32 logits, block bounds) shaped as the evaluation adds them: per user its
    positive, then 0..per_user valid candidates; logits rounded to 0.1, so ties are many (within
    and across users and between positives and negatives); blocks of 1..40 users."""
    rng = np.random.default_rng(seed)
    counts = 1 + rng.integers(0, per_user + 1, users)
    starts = np.r_[0, np.cumsum(counts)]
    labels = np.zeros(starts[-1], dtype=np.int8)
    labels[starts[:-1]] = 1
    logits = np.round(rng.normal(size=len(labels)) + labels, 1).astype(np.float32)
    cuts = np.r_[0, np.cumsum(rng.integers(1, 41, users)), users].clip(max=users)
    bounds = [(starts[a], starts[b]) for a, b in itertools.pairwise(cuts)]
    return labels, logits, bounds


def pooled(labels, logits, bounds, chunk: int) -> M.PooledPairs:
    pairs = M.PooledPairs(len(logits), np.float32, chunk)
    for lo, hi in bounds:
        pairs.add(labels[lo:hi], logits[lo:hi])
    return pairs


@pytest.mark.parametrize("chunk", [1, 7, 128, 1000, 1 << 20])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pooled_pairs_equal_auc_and_logloss_of_all_pairs_bit_for_bit(seed, chunk):
    # the pairs' order is kept, blocks and chunks cut users anywhere: the values are those of
    # auc / log_loss on all pairs concatenated, exactly (==), in either order of calls
    labels, logits, bounds = evaluation_pairs(seed, users=500, per_user=30)
    assert len(logits) > 4 * 128 and len(bounds) > 10
    pairs = pooled(labels, logits, bounds, chunk)
    assert pairs.log_loss() == M.log_loss(labels, logits)
    assert pairs.auc() == M.auc(labels, logits)
    assert pairs.log_loss() == M.log_loss(labels, logits)  # auc() changed nothing
    assert pairs.auc() == pytest.approx(roc_auc_score(labels, logits), abs=1e-12)
    probs = 1 / (1 + np.exp(-logits.astype(np.float64)))
    assert pairs.log_loss() == pytest.approx(sk_log_loss(labels, probs), rel=1e-9)


def test_pooled_logloss_follows_numpys_pairwise_sum_at_every_size():
    # log_loss's sum is np.mean's pairwise sum, whose split depends on the length: sizes
    # around the 8-wide unrolling and the 128 block, and a deep split in small chunks
    rng = np.random.default_rng(3)
    for n in [*range(1, 40), 127, 128, 129, 255, 256, 257, 1023, 1025, 4096 + 9, 200_003]:
        labels = (rng.random(n) < 0.3).astype(np.int8)
        logits = (rng.normal(size=n) * 10.0 ** rng.uniform(-3, 2, n)).astype(np.float32)
        for chunk in (1, 64, 1000):
            pairs = M.PooledPairs.of(labels, logits, chunk)
            assert pairs.log_loss() == M.log_loss(labels, logits), (n, chunk)
            assert pairs.auc() == M.auc(labels, logits) or n < 2, (n, chunk)


def test_pooled_auc_keeps_the_tie_convention_and_nan_cases():
    # positive 0.5 ties a negative (1/2), beats -1 (1): (1.5 + 0 + 2) / (2 * 3)... by hand:
    # positives 0.5 and 3.0; negatives -1, 0.5, 4: 0.5 -> 1 + 0.5, 3.0 -> 2, total 3.5 / 6
    pairs = M.PooledPairs.of(np.array([1, 0, 0, 1, 0]), np.array([0.5, -1, 0.5, 3, 4], np.float32))
    assert pairs.auc() == 3.5 / 6
    empty = M.PooledPairs(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no numpy warning either
        assert math.isnan(empty.auc()) and math.isnan(empty.log_loss())
        assert math.isnan(M.PooledPairs.of([1, 1], np.array([0.3, 0.2], np.float32)).auc())
        assert math.isnan(M.PooledPairs.of([0, 0], np.array([0.3, 0.2], np.float32)).auc())


def held_bytes(obj) -> int:
    """The bytes of every array an object holds (attributes, and lists of arrays)."""
    total = 0
    for value in vars(obj).values():
        for a in value if isinstance(value, list) else [value]:
            total += a.nbytes if isinstance(a, np.ndarray) else 0
    return total


@pytest.mark.parametrize("users", [64, 640, 6400])
def test_pooled_pairs_hold_4_bytes_a_pair_and_8_a_positive_whatever_the_users(users):
    # the evaluation's only state that grows with its users: a float32 a pair (the buffer, of
    # the users' upper bound of pairs) and an int64 a positive (one a user)
    per_user = 10
    pairs = M.PooledPairs(users * (per_user + 1), np.float32)
    rng = np.random.default_rng(users)
    for _ in range(0, users, 32):
        labels = np.tile(np.r_[1, np.zeros(per_user, np.int8)], 32)
        pairs.add(labels, rng.normal(size=len(labels)).astype(np.float32))
    assert pairs.size == users * (per_user + 1)
    assert held_bytes(pairs) == 4 * users * (per_user + 1) + 8 * users


def test_pooled_metrics_need_memory_of_a_chunk_not_of_all_pairs():
    # tracemalloc sees numpy's buffers: computing the metrics allocates about a chunk's
    # temporaries, where auc / log_loss on all pairs at once allocate tens of bytes a pair
    import tracemalloc

    labels, logits, bounds = evaluation_pairs(4, users=2000, per_user=999)
    n = len(logits)
    assert n > 900_000
    pairs = pooled(labels, logits, bounds, chunk=1 << 14)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        pairs.auc(), pairs.log_loss()
        new_peak = tracemalloc.get_traced_memory()[1] - base
        tracemalloc.reset_peak()
        M.auc(labels, logits), M.log_loss(labels, logits)
        old_peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert new_peak < 100 * (1 << 14)  # about 40 bytes a chunk's pair, plus the positives
    assert old_peak > 30 * n  # what it replaces: all pairs at once (38 bytes a pair)


def test_logloss_is_stable_for_large_logits():
    assert M.log_loss(np.array([1, 0]), np.array([1000.0, -1000.0])) == pytest.approx(0.0)
    assert M.log_loss(np.array([0]), np.array([1000.0])) == pytest.approx(1000.0)


def test_empty_inputs_give_nan_without_a_warning():
    empty = np.array([], dtype=np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # np.mean of nothing would warn
        for value in (M.hit_rate(empty, 10), M.ndcg(empty, 10), M.mrr(empty),
                      M.log_loss(empty, empty)):  # fmt: skip
            assert math.isnan(value)
        assert math.isnan(M.auc(np.array([1, 1]), np.array([0.3, 0.2])))  # no negative
        assert math.isnan(M.auc(np.array([0, 0]), np.array([0.3, 0.2])))  # no positive


def test_ndcg_per_user_counts_rank_k():
    got = M.ndcg_per_user(np.array([1, 3, 10, 11]), 10)
    np.testing.assert_allclose(got, [1.0, 0.5, 1 / math.log2(11), 0.0])


def test_auc_with_one_positive_and_with_the_lowest_score_positive():
    # one positive: the share of negatives it beats (a tie counts one half)
    assert M.auc(np.array([0, 1, 0, 0]), np.array([0.1, 0.5, 0.5, 0.9])) == pytest.approx(1.5 / 3)
    # one negative
    assert M.auc(np.array([1, 0, 1]), np.array([0.2, 0.4, 0.9])) == pytest.approx(0.5)
    # the lowest score (a tie group of its own) belongs to a positive
    labels = np.array([1, 1, 0, 0, 1])
    scores = np.array([-3.0, -3.0, 0.0, 1.0, 2.0])
    assert M.auc(labels, scores) == pytest.approx(2 / 6)
    assert M.auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores))


def test_logloss_is_computed_in_float64_even_from_float32_logits():
    # softplus(20) - 20 = log1p(exp(-20)) ~ 2.06e-9: float32 arithmetic rounds it to 0
    got = M.log_loss(np.array([1], dtype=np.int8), np.array([20.0], dtype=np.float32))
    assert got == pytest.approx(math.log1p(math.exp(-20.0)), rel=1e-9)


# --------------------------------------------------------------------------- the registry

# Every value below was computed by the code before the registry (the metric dict that
# ranking.py built key by key): metrics/eval.json must not change by a digit or in key order.
# Hand checks: hr@10 = 4 of 5 ranks <= 10; full_hr@2 = full_ndcg@2 = 1 / 5 (one rank 1);
# AUC: positive 2.5 beats 4 of 5 negatives, 0.5 beats 3 and ties 1, 0.0 beats 2 and ties 1:
# (4 + 3.5 + 2.5) / 15.
PINNED = [
    ("hr@10", 0.8),
    ("ndcg@10", 0.49285261738095826),
    ("hr@2", 0.4),
    ("ndcg@2", 0.3261859507142915),
    ("mrr", 0.4119047619047619),
    ("auc", 0.6666666666666666),
    ("logloss", 0.8002643892384489),
    ("full_hr@10", 0.6),
    ("full_ndcg@10", 0.3463413107474749),
    ("full_hr@2", 0.2),
    ("full_ndcg@2", 0.2),
    ("full_mrr", 0.28088888888888885),
]


def test_compute_gives_the_pinned_dict_keys_in_order():
    got = M.compute(
        [10, 2],  # eval.ks order, not sorted: the keys follow it
        ranks={
            M.SAMPLED: np.array([1, 3, 12, 2, 7], dtype=np.int64),
            M.FULL: np.array([4, 30, 1, 100, 9], dtype=np.int64),
        },
        pairs={
            M.SAMPLED: M.PooledPairs.of(
                np.array([1, 0, 0, 1, 0, 0, 1, 0], dtype=np.int8),
                np.array([2.5, -1.0, 0.5, 0.5, 3.0, -2.0, 0.0, 0.0], dtype=np.float32),
            )
        },
    )
    assert list(got.items()) == PINNED  # exact floats, not approx
    assert all(type(v) is float for v in got.values())


def test_keys_are_eval_json_keys_in_order():
    assert M.keys([5, 10, 20]) == [
        "hr@5", "ndcg@5", "hr@10", "ndcg@10", "hr@20", "ndcg@20", "mrr", "auc", "logloss",
        "full_hr@5", "full_ndcg@5", "full_hr@10", "full_ndcg@10", "full_hr@20",
        "full_ndcg@20", "full_mrr",
    ]  # fmt: skip


def test_group_auc_hand_worked():
    # group a: scores 0.1 (0), 0.4 (1), 0.4 (0), 0.9 (1): positive pairs beaten 3.5 of 4
    # group b: all clicks, no AUC, left out; group c: 0.2 (1) below 0.8 (0): AUC 0
    labels = np.array([0, 1, 0, 1, 1, 1, 1, 0])
    scores = np.array([0.1, 0.4, 0.4, 0.9, 0.5, 0.6, 0.2, 0.8])
    groups = np.array([7, 7, 7, 7, 3, 3, 9, 9], dtype=np.uint64)
    # weights by rows: a 4, c 2 -> (4 * 3.5 / 4 + 2 * 0) / 6
    assert M.group_auc(labels, scores, groups) == pytest.approx((4 * 0.875 + 2 * 0.0) / 6)
    assert np.isnan(M.group_auc(labels[4:6], scores[4:6], groups[4:6]))  # one class only
    assert np.isnan(M.group_auc(labels[:0], scores[:0], groups[:0]))


def test_group_auc_matches_a_loop_over_groups_with_sklearn():
    rng = np.random.default_rng(5)
    n = 3000
    groups = rng.integers(0, 200, n).astype(np.uint64) * 2654435761
    labels = (rng.random(n) < 0.3).astype(int)
    scores = np.round(rng.normal(labels * 0.5, 1.0), 1)  # rounded: many ties
    total = weight = 0.0
    for g in np.unique(groups):
        mine = groups == g
        if 0 < labels[mine].sum() < mine.sum():
            total += mine.sum() * roc_auc_score(labels[mine], scores[mine])
            weight += mine.sum()
    assert M.group_auc(labels, scores, groups) == pytest.approx(total / weight, abs=1e-12)


def test_registry_is_consistent():
    assert list(M.METRICS) == [m.name for m in M.METRICS.values()]
    for m in M.METRICS.values():
        assert m.rankings and set(m.rankings) <= {*M.RANKINGS, M.ROWS}
        if not m.per_user:  # pooled: the sampled candidates' pairs and / or the ctr rows
            assert set(m.rankings) <= {M.SAMPLED, M.ROWS} and not m.cutoff
        assert not m.grouped or m.rankings == (M.ROWS,)  # only the ctr rows have groups
    assert M.row_keys() == ["auc", "logloss", "gauc"]
    assert M.row_keys(grouped=False) == ["auc", "logloss"]
    assert M.parse_key("gauc") == (M.METRICS["gauc"], M.ROWS, None)
    keys = M.keys([1, 7])
    assert len(keys) == len(set(keys))
    assert [k for k in keys if not M.higher_is_better(k)] == ["logloss"]
    assert set(M.TABLE) <= set(M.METRICS)


def test_parse_key_round_trips_every_key():
    for name, metric, ranking, k in M._plan([1, 10, 123]):
        assert M.parse_key(name) == (metric, ranking, k)
        assert M.key(metric, ranking, k) == name
    assert M.parse_key("full_ndcg@10") == (M.METRICS["ndcg"], "full", 10)
    assert M.parse_key("logloss") == (M.METRICS["logloss"], "sampled", None)


@pytest.mark.parametrize(
    "name",
    ["users", "ndcg", "hr@", "hr@0", "hr@x", "hr@1.5", "hr@-1", "mrr@10", "full_auc",
     "full_logloss", "full_", "full_full_mrr", "NDCG@10", "ndcg@10 ", "", "full_gauc",
     "gauc@10"],
)  # fmt: skip
def test_parse_key_refuses_what_is_no_metric(name):
    with pytest.raises(ValueError, match="is not a registered metric key"):
        M.parse_key(name)


def test_per_user_values_average_to_the_metric():
    ranks = np.random.default_rng(1).integers(1, 50, size=200)
    got = M.compute(
        [5], {M.SAMPLED: ranks, M.FULL: ranks}, {M.SAMPLED: M.PooledPairs.of([1, 0], [0.3, 0.1])}
    )
    for name in ("hr@5", "ndcg@5", "mrr", "full_hr@5", "full_ndcg@5", "full_mrr"):
        metric, _, k = M.parse_key(name)
        values = M.per_user_values(metric, ranks, k)
        assert values.shape == ranks.shape and values.dtype == np.float64
        assert got[name] == float(np.mean(values))


def test_the_registry_module_does_not_import_torch():
    # the report and the train.monitor check (training.monitor) read it; no torch for them
    import os
    import subprocess
    import sys

    code = (
        "import sys, deepfm.config, deepfm.evaluation.metrics, deepfm.data.splitting, "
        "deepfm.data.sampling; print('torch' in sys.modules)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")},
    )  # fmt: skip
    assert proc.stdout.strip() == "False"
