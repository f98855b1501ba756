"""The metric registry: every metric of the protocol, declared once, with its functions.
Everything else that lists metrics (eval.json, the `train.monitor` check, the results
report's columns, labels, arrows and per-user scores) derives from `METRICS`: adding a metric
touches this file only (docs/architecture.md, "Add a metric").

A metric is *per-user* (a function of the 1-based rank of each user's held-out item, among
the sampled candidates or the full catalogue; reported as the mean over users, and pairable
user by user) or *pooled* (of the labels and logits of every valid (user, candidate) pair:
AUC, LogLoss; the evaluation adds the pairs a block of users at a time to a `PooledPairs`).
A key is the ranking's prefix, the name and `@k` if it takes a cutoff: `hr@10`,
`full_ndcg@10`, `mrr`, `auc`. Ranks are pessimistic: a negative that ties the positive ranks
above it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # only annotations: config.py imports this module, and the data stages
    import torch  # never import torch (about 1.3 s)


def pessimistic_rank(
    pos_scores: torch.Tensor, other_scores: torch.Tensor, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """(U,) positive scores, (U, N) scores of the items it competes with -> (U,) 1-based rank.
    `valid` masks out padding / excluded entries."""
    beats = other_scores >= pos_scores[:, None]
    if valid is not None:
        beats &= valid
    return 1 + beats.sum(dim=1)


def hit_per_user(ranks: np.ndarray, k: int) -> np.ndarray:
    """1.0 where the held-out item is in the top k, else 0.0."""
    return (ranks <= k).astype(np.float64)


def ndcg_per_user(ranks: np.ndarray, k: int) -> np.ndarray:
    """One relevant item per user: NDCG@k = 1 / log2(rank + 1) if rank <= k else 0."""
    return np.where(ranks <= k, 1.0 / np.log2(ranks.astype(np.float64) + 1.0), 0.0)


def reciprocal_rank(ranks: np.ndarray) -> np.ndarray:
    return 1.0 / np.asarray(ranks).astype(np.float64)


def mean_over_users(values: np.ndarray) -> float:
    """The mean of per-user values; NaN (without a warning) for no users."""
    return float(np.mean(values)) if len(values) else float("nan")


def hit_rate(ranks: np.ndarray, k: int) -> float:
    return mean_over_users(hit_per_user(ranks, k))


def ndcg(ranks: np.ndarray, k: int) -> float:
    return mean_over_users(ndcg_per_user(ranks, k))


def mrr(ranks: np.ndarray) -> float:
    return mean_over_users(reciprocal_rank(ranks))


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC (Mann-Whitney U with average ranks for ties: a tie counts one half)."""
    labels = np.asarray(labels).astype(bool)
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="stable")
    sorted_scores = np.asarray(scores)[order]
    # average rank of each tie group
    boundaries = np.r_[True, sorted_scores[1:] != sorted_scores[:-1]]
    group = np.cumsum(boundaries) - 1
    starts = np.flatnonzero(boundaries)
    ends = np.r_[starts[1:], len(sorted_scores)]
    avg_rank = (starts + ends + 1) / 2.0  # ranks are 1-based: mean of start+1 .. end
    ranks = np.empty(len(scores), dtype=np.float64)
    ranks[order] = avg_rank[group]
    u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def group_auc(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> float:
    """Group AUC (Zhou et al., DIN, KDD 2018): the AUC of each group's rows (a user's
    impressions), averaged with each group's number of rows as its weight, over the groups
    that hold both a click and a non-click (the others have no AUC). Ties count one half, as
    in `auc`. NaN when no group has both."""
    _, rows, aucs = group_aucs(labels, scores, groups)
    return float(np.sum(rows * aucs) / np.sum(rows)) if len(rows) else float("nan")


def group_aucs(
    labels: np.ndarray, scores: np.ndarray, groups: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(group ids ascending, their numbers of rows, their AUCs) of the groups that hold both
    classes; vectorised: one sort for all groups."""
    labels = np.asarray(labels).astype(bool)
    scores, groups = np.asarray(scores), np.asarray(groups)
    if not len(labels):
        return groups[:0], np.zeros(0), np.zeros(0)
    order = np.lexsort((scores, groups))  # by group, then score
    g, s, y = groups[order], scores[order], labels[order]
    new_group = np.r_[True, g[1:] != g[:-1]]
    group_id = np.cumsum(new_group) - 1
    group_start = np.flatnonzero(new_group)
    # a run of equal scores within a group shares the mean of its 1-based ranks in the group
    new_run = new_group | np.r_[True, s[1:] != s[:-1]]
    run_start = np.flatnonzero(new_run)
    run_length = np.diff(np.r_[run_start, len(s)])
    run_rank = run_start - group_start[group_id[run_start]] + (run_length + 1) / 2.0
    ranks = run_rank[np.cumsum(new_run) - 1]
    rows = np.bincount(group_id).astype(np.float64)
    pos = np.bincount(group_id, weights=y.astype(np.float64))
    neg = rows - pos
    both = (pos > 0) & (neg > 0)
    pos_rank_sum = np.bincount(group_id, weights=np.where(y, ranks, 0.0))[both]
    aucs = (pos_rank_sum - pos[both] * (pos[both] + 1) / 2.0) / (pos[both] * neg[both])
    return g[group_start][both], rows[both], aucs


def log_loss(labels: np.ndarray, logits: np.ndarray) -> float:
    """Mean binary cross-entropy computed from logits (numerically stable)."""
    if not len(labels):
        return float("nan")
    labels = np.asarray(labels, dtype=np.float64)
    logits = np.asarray(logits, dtype=np.float64)
    # -[y log s(x) + (1-y) log(1-s(x))] = softplus(x) - y*x
    return float(np.mean(np.logaddexp(0.0, logits) - labels * logits))


class PooledPairs:
    """Labelled pairs (label 0 / 1, logit) added a block at a time, in order, for the pooled
    metrics: `auc()` and `log_loss()` equal `auc(labels, logits)` and `log_loss(labels, logits)`
    on all the pairs concatenated, to the last bit.

    Kept: each logit in `dtype` (4 bytes a pair in float32) and the position of each positive
    (8 bytes), nothing else a pair: not the labels, float64 copies or the sort of `auc` over
    every pair at once (about 58 bytes a pair), which grew the evaluation's memory with its
    number of users. The metrics then read the logits `chunk` pairs at a time.
    `capacity`: the most pairs that will be added; the buffer is allocated at once, but the
    pages never written are never resident."""

    def __init__(self, capacity: int, dtype: Any = np.float32, chunk: int = 1 << 20):
        self.logits = np.empty(capacity, dtype=dtype)
        self.size = 0
        self.chunk = chunk
        self._positives: list[np.ndarray] = []  # per block, the positives' positions

    @classmethod
    def of(cls, labels: np.ndarray, logits: np.ndarray, chunk: int = 1 << 20) -> PooledPairs:
        logits = np.asarray(logits)
        pairs = cls(len(logits), logits.dtype, chunk)
        pairs.add(labels, logits)
        return pairs

    def add(self, labels: np.ndarray, logits: np.ndarray) -> None:
        """The next block of pairs: (m,) labels and (m,) logits."""
        m = len(logits)
        self.logits[self.size : self.size + m] = logits
        self._positives.append(self.size + np.flatnonzero(labels))
        self.size += m

    def _positions(self) -> np.ndarray:
        return np.concatenate(self._positives) if self._positives else np.zeros(0, np.int64)

    def _chunk_labels(self, positions: np.ndarray, lo: int, hi: int) -> np.ndarray:
        """(hi - lo,) bool: which of the pairs lo..hi-1 are positives (positions: sorted)."""
        y = np.zeros(hi - lo, dtype=bool)
        y[positions[np.searchsorted(positions, lo) : np.searchsorted(positions, hi)] - lo] = True
        return y

    def auc(self) -> float:
        """`auc` of the pairs: Mann-Whitney U with a tie counting one half, counted as each
        negative against the sorted positives (the positives are few: one a user), so no sort
        of every pair. U is a sum of halves: exact in integers, so the value is auc's."""
        positions = self._positions()
        n_pos = len(positions)
        n_neg = self.size - n_pos
        if n_pos == 0 or n_neg == 0:
            return float("nan")
        pos = np.sort(self.logits[positions])
        # sum over negatives of #(positives < it) + #(positives <= it)
        below_twice = 0
        for lo in range(0, self.size, self.chunk):
            hi = min(lo + self.chunk, self.size)
            neg = self.logits[lo:hi][~self._chunk_labels(positions, lo, hi)]
            below_twice += int(np.searchsorted(pos, neg, "left").sum())
            below_twice += int(np.searchsorted(pos, neg, "right").sum())
        # a positive above a negative counts 1, a tie 1/2: 2U = sum of 2 n_pos - (<) - (<=)
        u = (2 * n_pos * n_neg - below_twice) / 2
        return float(u / (n_pos * n_neg))

    def log_loss(self) -> float:
        """`log_loss` of the pairs. np.mean sums an array pairwise (numpy's pairwise_sum: an
        array of more than 128 is split at half its length rounded down to a multiple of 8),
        so the same split, down to parts of at most `chunk` that np.add.reduce sums alone,
        gives the same float64 sum as np.mean over all the pairs at once, chunk by chunk."""
        if not self.size:
            return float("nan")
        positions = self._positions()

        def part_sum(lo: int, n: int) -> np.float64:
            if n <= max(self.chunk, 128):
                x = self.logits[lo : lo + n].astype(np.float64)
                y = self._chunk_labels(positions, lo, lo + n).astype(np.float64)
                return np.add.reduce(np.logaddexp(0.0, x) - y * x)  # as log_loss
            half = n // 2 - (n // 2) % 8
            return part_sum(lo, half) + part_sum(lo + half, n - half)

        return float(part_sum(0, self.size) / self.size)


SAMPLED, FULL = "sampled", "full"
# ranking -> the prefix of its keys; this order is eval.json's (sampled keys, then full ones)
RANKINGS = {SAMPLED: "", FULL: "full_"}
# the ctr protocol's scored rows (deepfm.evaluation.rows): no ranking, keys without prefix
ROWS = "rows"


@dataclass(frozen=True)
class Metric:
    name: str  # the key without ranking prefix or cutoff: hr, ndcg, mrr, auc, logloss
    label: str  # how tables name it: HR, NDCG, ...
    # per-user: fn(ranks, k) or fn(ranks) -> (U,) values; pooled: fn(labels, logits) -> float
    fn: Callable[..., Any]
    cutoff: bool = False  # takes k: the key is name@k
    per_user: bool = True  # else pooled over the (user, candidate) pairs
    # pooled metrics: SAMPLED (it has the pairs) and / or ROWS (the ctr protocol)
    rankings: tuple[str, ...] = (SAMPLED, FULL)
    higher_is_better: bool = True
    grouped: bool = False  # fn(labels, logits, groups): needs the rows' group (user) ids
    # pooled metrics of SAMPLED: the same value as fn, from a PooledPairs
    from_pairs: Callable[[PooledPairs], float] | None = None


# The order within a ranking is eval.json's: cutoff metrics for each k, then the others.
METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("hr", "HR", hit_per_user, cutoff=True),
        Metric("ndcg", "NDCG", ndcg_per_user, cutoff=True),
        Metric("mrr", "MRR", reciprocal_rank),
        Metric(
            "auc", "AUC", auc, per_user=False, rankings=(SAMPLED, ROWS), from_pairs=PooledPairs.auc
        ),
        Metric(
            "logloss",
            "LogLoss",
            log_loss,
            per_user=False,
            rankings=(SAMPLED, ROWS),
            higher_is_better=False,
            from_pairs=PooledPairs.log_loss,
        ),
        Metric("gauc", "GAUC", group_auc, per_user=False, rankings=(ROWS,), grouped=True),
    )
}

# The results table's default columns (`deepfm report table`): these metrics at
# k = 10, the full ranking's before the sampled candidates'.
TABLE = ("ndcg", "hr", "auc", "logloss")
TABLE_K = 10


def key(metric: Metric, ranking: str, k: int | None = None) -> str:
    return RANKINGS[ranking] + metric.name + (f"@{k}" if metric.cutoff else "")


def _plan(ks: Sequence[int]) -> Iterator[tuple[str, Metric, str, int | None]]:
    """(key, metric, ranking, k) of every metric at cutoffs ks, in eval.json's order: per
    ranking, the cutoff metrics for each k in turn, then the metrics without a cutoff."""
    for ranking in RANKINGS:
        mine = [m for m in METRICS.values() if ranking in m.rankings]
        for k in ks:
            for m in mine:
                if m.cutoff:
                    yield key(m, ranking, k), m, ranking, k
        for m in mine:
            if not m.cutoff:
                yield key(m, ranking), m, ranking, None


def keys(ks: Sequence[int]) -> list[str]:
    """Every metric key that an evaluation at cutoffs ks computes, in its order."""
    return [name for name, *_ in _plan(ks)]


def row_keys(grouped: bool = True) -> list[str]:
    """The ctr protocol's metric keys, in eval.json's order; grouped: with the metrics that
    need the rows' groups (a dataset that declares protocol.group)."""
    return [m.name for m in METRICS.values() if ROWS in m.rankings and (grouped or not m.grouped)]


def per_user_values(metric: Metric, ranks: np.ndarray, k: int | None = None) -> np.ndarray:
    return metric.fn(ranks, k) if metric.cutoff else metric.fn(ranks)


def compute(
    ks: Sequence[int], ranks: Mapping[str, np.ndarray], pairs: Mapping[str, PooledPairs]
) -> dict[str, float]:
    """Every registered metric at cutoffs ks, keyed and ordered as in eval.json.

    ranks: ranking -> (U,) 1-based ranks of the held-out items; pairs: ranking -> the
    labelled logits of its valid (user, candidate) pairs, for the pooled metrics."""
    out: dict[str, float] = {}
    for name, metric, ranking, k in _plan(ks):
        if metric.per_user:
            out[name] = mean_over_users(per_user_values(metric, ranks[ranking], k))
        else:
            out[name] = metric.from_pairs(pairs[ranking])
    return out


def parse_key(name: str) -> tuple[Metric, str, int | None]:
    """'full_ndcg@10' -> (METRICS['ndcg'], 'full', 10); 'auc' -> (METRICS['auc'], 'sampled',
    None). ValueError if the key names no registered metric of that ranking (or has a cutoff
    it should not have, or lacks one it needs)."""
    stem, at, k_text = name.partition("@")
    # the longest prefix first: 'full_mrr' is MRR on the full ranking
    for ranking, prefix in sorted(RANKINGS.items(), key=lambda item: -len(item[1])):
        metric = METRICS.get(stem[len(prefix) :]) if stem.startswith(prefix) else None
        if metric is None or ranking not in metric.rankings:
            continue
        if not metric.cutoff and not at:
            return metric, ranking, None
        if metric.cutoff and re.fullmatch(r"[0-9]+", k_text) and int(k_text) >= 1:
            return metric, ranking, int(k_text)
    metric = METRICS.get(name)
    if metric is not None and ROWS in metric.rankings:
        return metric, ROWS, None
    raise ValueError(f"{name!r} is not a registered metric key")


def higher_is_better(name: str) -> bool:
    """The direction of a metric key (ValueError if it names no registered metric)."""
    return parse_key(name)[0].higher_is_better
