"""Statistics over runs: mean ± std over seeds per model, and paired per-user tests.

`summarize` reduces the selected runs (deepfm.results.runs) to one row per model. The paired
tests read per-user scores of a per-user metric of the registry (deepfm.evaluation.metrics) from
each run's rank table (metrics/eval_ranks.parquet), average each user over a model's seeds, align
two models user by user, and give the mean difference, a bootstrap CI and a Wilcoxon p-value.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from deepfm.evaluation import metrics as M
from deepfm.results import ReportError

MAIN_METRIC = "full_ndcg@10"
# the registry's table columns: full_ndcg@10 full_hr@10 ndcg@10 hr@10 auc logloss
DEFAULT_METRICS = tuple(
    M.key(M.METRICS[name], ranking, M.TABLE_K)
    for ranking in (M.FULL, M.SAMPLED)
    for name in M.TABLE
    if ranking in M.METRICS[name].rankings
)


@dataclass(frozen=True)
class Summary:
    """`table`: one row per model (index), best first by `sort_by`. Columns: n (runs), seeds,
    parameters (max over runs), parameters_vary, seconds_per_epoch (mean), users, and for each
    metric `<m> mean`, `<m> std` (sample std, ddof=1; NaN for one run) and `<m> n`."""

    table: pd.DataFrame
    metrics: tuple[str, ...]
    split: str
    sort_by: str


def summarize(
    runs: pd.DataFrame,
    metrics: Sequence[str] = DEFAULT_METRICS,
    *,
    split: str = "test",
    sort_by: str = MAIN_METRIC,
) -> Summary:
    """Runs (from `select_runs`) -> mean ± std over seeds per model, sorted by `sort_by`
    (best first: higher first, lower first for a lower-is-better metric such as LogLoss). If
    `sort_by` is not in the runs, the first metric."""
    if runs.empty:
        raise ReportError("no runs to summarize")
    metrics = tuple(dict.fromkeys(metrics))
    if not metrics:
        raise ReportError("no metrics asked for")
    available = sorted(c.removeprefix(f"{split}.") for c in runs if c.startswith(f"{split}."))
    missing = [m for m in metrics if m not in available]
    if missing:
        raise ReportError(
            f"metric(s) {', '.join(missing)} not in the {split!r} split of the eval metrics; "
            f"available: {', '.join(available) or 'none'}"
        )
    sort_by = sort_by if sort_by in available else metrics[0]
    out = []
    for model, group in runs.groupby("model", sort=False):
        params = pd.to_numeric(group["parameters"], errors="coerce").dropna()
        users = pd.to_numeric(group.get(f"{split}.users", pd.Series()), errors="coerce").dropna()
        seeds = pd.to_numeric(group["seed"], errors="coerce").dropna().sort_values()
        row: dict[str, Any] = {
            "model": model,
            "n": len(group),
            "seeds": ",".join(str(int(s)) if float(s).is_integer() else str(s) for s in seeds),
            "parameters": int(params.max()) if len(params) else math.nan,
            "parameters_vary": params.nunique() > 1,
            "seconds_per_epoch": pd.to_numeric(group["seconds_per_epoch"], errors="coerce").mean(),
            "users": int(users.max()) if len(users) else math.nan,
        }
        for m in dict.fromkeys((*metrics, sort_by)):
            values = pd.to_numeric(group[f"{split}.{m}"], errors="coerce").dropna()
            row[f"{m} mean"] = float(values.mean()) if len(values) else math.nan
            row[f"{m} std"] = float(values.std(ddof=1)) if len(values) > 1 else math.nan
            row[f"{m} n"] = len(values)
        out.append(row)
    table = pd.DataFrame(out).sort_values(
        f"{sort_by} mean", ascending=_lower_is_better(sort_by), kind="stable", na_position="last"
    )
    return Summary(table.set_index("model"), metrics, split, sort_by)


def _lower_is_better(column: str) -> bool:
    """A registered metric's direction; a column that is no metric (users) sorts high first."""
    try:
        return not M.higher_is_better(column)
    except ValueError:
        return False


@dataclass(frozen=True)
class PairedResult:
    n_users: int
    mean_a: float
    mean_b: float
    mean_diff: float  # mean over users of a - b
    ci_low: float
    ci_high: float
    p_value: float  # Wilcoxon signed-rank, two-sided
    confidence: float
    n_resamples: int

    @property
    def significant(self) -> bool:
        """CI excludes 0 and p < 1 - confidence (both tests agree)."""
        alpha = 1.0 - self.confidence
        return (self.ci_low > 0 or self.ci_high < 0) and self.p_value < alpha


def bootstrap_mean_ci(
    diff: np.ndarray, *, n_resamples: int = 10_000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of `diff`, resampling users with replacement."""
    diff = np.asarray(diff, dtype=np.float64)
    n = len(diff)
    if n == 0:
        raise ReportError("no users to resample")
    if n_resamples < 1 or not 0 < confidence < 1:
        raise ReportError(
            f"need resamples >= 1 and 0 < confidence < 1, got {n_resamples}, {confidence}"
        )
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples, dtype=np.float64)
    chunk = max(1, 4_000_000 // n)  # bounds memory: chunk x n indices at a time
    for start in range(0, n_resamples, chunk):
        stop = min(start + chunk, n_resamples)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = diff[idx].mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


def wilcoxon_p(diff: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired differences (zeros dropped, scipy's
    default); 1.0 when every difference is zero."""
    from scipy.stats import wilcoxon

    diff = np.asarray(diff, dtype=np.float64)
    if len(diff) == 0:
        raise ReportError("no users to test")
    if not np.any(diff != 0):
        return 1.0
    return float(wilcoxon(diff, alternative="two-sided").pvalue)


def paired_test(
    a: np.ndarray, b: np.ndarray, *, n_resamples: int = 10_000, confidence: float = 0.95, seed=0
) -> PairedResult:
    """Per-user scores of two models on the same users, in the same order."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ReportError(
            f"paired scores need two 1-D arrays of one length, got {a.shape} and {b.shape}"
        )
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ReportError("per-user scores contain NaN or infinity")
    diff = a - b
    low, high = bootstrap_mean_ci(diff, n_resamples=n_resamples, confidence=confidence, seed=seed)
    means = (float(a.mean()), float(b.mean()), float(diff.mean()))
    return PairedResult(len(diff), *means, low, high, wilcoxon_p(diff), confidence, n_resamples)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of m p-values (one family of comparisons), in their
    order: the k-th smallest is multiplied by m - k + 1, made non-decreasing, capped at 1.
    p_adjusted < alpha controls the family-wise error rate at alpha."""
    p = np.asarray(p_values, dtype=np.float64)
    order = np.argsort(p, kind="stable")
    scaled = (len(p) - np.arange(len(p))) * p[order]
    adjusted = np.empty_like(p)
    adjusted[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return adjusted.tolist()


def _listing(words: Sequence[str], last: str) -> str:
    """['a', 'b', 'c'], 'or' -> 'a, b or c'."""
    return f"{', '.join(words[:-1])} {last} {words[-1]}" if len(words) > 1 else "".join(words)


def per_user_metrics() -> list[str]:
    """The registry's per-user metrics as the user writes them: ['hr@K', 'ndcg@K', 'mrr']."""
    return [m.name + ("@K" if m.cutoff else "") for m in M.METRICS.values() if m.per_user]


def parse_rank_metric(metric: str) -> tuple[M.Metric, str, int | None]:
    """A metric with a value per user (so two models can be paired on it) -> (metric, ranking,
    k): 'full_ndcg@10' -> (NDCG, 'full', 10), 'mrr' -> (MRR, 'sampled', None)."""
    try:
        found = M.parse_key(metric)
    except ValueError:
        found = None
    if found is None or not found[0].per_user:
        per_user = _listing(per_user_metrics(), "or")
        pooled = _listing(
            [m.label for m in M.METRICS.values() if not m.per_user and M.SAMPLED in m.rankings],
            "and",
        )
        raise ReportError(
            f"{metric!r} is not a per-user metric: use {per_user}, with a {M.RANKINGS[M.FULL]} "
            f"prefix for full ranking ({pooled} are pooled over users, so they cannot be paired)"
        )
    return found


def per_user_scores(ranks: pd.DataFrame, metric: str = MAIN_METRIC, split: str = "test"):
    """metrics/eval_ranks.parquet -> DataFrame indexed by user_id (sorted) with item_id and
    score: the per-user value of `metric` (a per-user metric of the registry, e.g. ndcg@K,
    hr@K or mrr; `full_` = full-ranking ranks, otherwise the sampled-candidate ranks) on
    `split`."""
    registered, ranking, k = parse_rank_metric(metric)
    column = f"{ranking}_rank"  # the rank table's sampled_rank / full_rank
    needed = {"split", "user_id", "item_id", column}
    if not needed <= set(ranks.columns):
        raise ReportError(
            f"rank table lacks column(s) {sorted(needed - set(ranks.columns))}; "
            "expected the columns of the eval stage's per-user ranks"
        )
    part = ranks[ranks["split"] == split]
    if part.empty:
        raise ReportError(f"rank table has no rows for split {split!r}")
    if part["user_id"].duplicated().any():
        raise ReportError(f"rank table lists a user twice in split {split!r}")
    score = M.per_user_values(registered, part[column].to_numpy(), k)
    out = pd.DataFrame(
        {"item_id": part["item_id"].to_numpy(), "score": score},
        index=pd.Index(part["user_id"].to_numpy(), name="user_id"),
    )
    return out.sort_index()


def _check_same_users(
    a: pd.DataFrame, b: pd.DataFrame, label_a: str, label_b: str, hint: str
) -> None:
    users_a, users_b = set(a.index), set(b.index)
    if users_a != users_b:
        only = ((sorted(users_a - users_b), label_a), (sorted(users_b - users_a), label_b))
        parts = [
            f"{len(o)} only in {label} (e.g. {', '.join(map(str, o[:5]))})"
            for o, label in only
            if o
        ]
        raise ReportError(
            f"{label_a} and {label_b} were evaluated on different users "
            f"({'; '.join(parts)}): {hint}"
        )
    if "item_id" in a and "item_id" in b:
        differ = a["item_id"] != b["item_id"].reindex(a.index)
        if differ.any():
            raise ReportError(
                f"{label_a} and {label_b} hold out different items for {int(differ.sum())} "
                f"user(s) (e.g. user {differ[differ].index[0]}): {hint}"
            )


_SAME_DATA_HINT = (
    "compare runs evaluated on the same dataset and split (same `dataset`, `data` and `split` "
    "params, same data/split/)"
)


def mean_over_runs(runs: Sequence[pd.DataFrame], label: str = "runs") -> pd.DataFrame:
    """Per-user scores of several runs of one model (from `per_user_scores`) -> the mean per
    user over the runs (every run must cover the same users with the same held-out items)."""
    if not runs:
        raise ReportError(f"no runs for {label}")
    first = runs[0]
    for i, other in enumerate(runs[1:], start=2):
        _check_same_users(first, other, f"{label} run 1", f"{label} run {i}", _SAME_DATA_HINT)
    scores = np.mean([r["score"].reindex(first.index).to_numpy() for r in runs], axis=0)
    return pd.DataFrame({"item_id": first["item_id"], "score": scores}, index=first.index)


def align_users(
    a: pd.DataFrame, b: pd.DataFrame, label_a: str = "A", label_b: str = "B"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two per-user score frames -> (user_ids, scores_a, scores_b), aligned by user_id: an inner
    join that must lose nothing (differing user sets, or held-out items, are an error)."""
    _check_same_users(a, b, label_a, label_b, _SAME_DATA_HINT)
    users = a.index.sort_values()  # the same set as b's (checked above)
    scores = (t["score"].reindex(users).to_numpy(dtype=np.float64) for t in (a, b))
    return users.to_numpy(), *scores


def paired_user_scores(
    ranks_a: pd.DataFrame | Iterable[pd.DataFrame],
    ranks_b: pd.DataFrame | Iterable[pd.DataFrame],
    *,
    metric: str = MAIN_METRIC,
    split: str = "test",
    label_a: str = "A",
    label_b: str = "B",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rank tables of model A and model B (one, or one per seed: then averaged per user over
    that model's seeds first) -> (user_ids, scores_a, scores_b) aligned by user."""

    def scores(ranks, label):
        tables = [ranks] if isinstance(ranks, pd.DataFrame) else list(ranks)
        per_run = [per_user_scores(t, metric, split) for t in tables]
        return mean_over_runs(per_run, label)

    return align_users(scores(ranks_a, label_a), scores(ranks_b, label_b), label_a, label_b)


@dataclass(frozen=True)
class RowPairedResult:
    """A paired bootstrap over impressions (rows) of a pooled metric such as AUC, or over
    groups (users) for group AUC; these have no per-row value to test with Wilcoxon: the CI
    alone decides."""

    metric: str
    n_rows: int  # what was resampled: rows, or groups (unit)
    value_a: float  # the metric on all rows, averaged over model A's runs
    value_b: float
    ci_low: float  # percentile CI of value_a - value_b over row resamples
    ci_high: float
    confidence: float
    n_resamples: int
    unit: str = "rows"

    @property
    def significant(self) -> bool:
        return self.ci_low > 0 or self.ci_high < 0


def row_tables(tables: Sequence[pd.DataFrame], split: str, label: str) -> tuple:
    """One model's per-row tables (eval_ranks.parquet of the ctr protocol, one per run) ->
    (labels, [logits per run]) of `split`, the rows in the same order in every run."""
    needed = {"split", "row", "label", "logit"}
    parts = []
    for i, t in enumerate(tables, start=1):
        if not needed <= set(t.columns):
            raise ReportError(
                f"{label} run {i}: not a ctr row table (columns {sorted(t.columns)}; expected "
                f"{sorted(needed)})"
            )
        parts.append(t[t["split"] == split].sort_values("row"))
    first = parts[0]
    for i, p in enumerate(parts[1:], start=2):
        if not np.array_equal(p["label"].to_numpy(), first["label"].to_numpy()):
            raise ReportError(f"{label} runs 1 and {i} hold other rows: {_SAME_DATA_HINT}")
    groups = first["group"].to_numpy(np.uint64) if "group" in first.columns else None
    return first["label"].to_numpy(), [p["logit"].to_numpy(np.float64) for p in parts], groups


def paired_row_test(
    labels: np.ndarray,
    logits_a: Sequence[np.ndarray],
    logits_b: Sequence[np.ndarray],
    *,
    metric: str = "auc",
    groups: np.ndarray | None = None,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> RowPairedResult:
    """Resample rows with replacement; in each resample the metric of every run on those
    rows, averaged over each model's runs, then A - B. Group AUC resamples groups instead
    (a user's rows go together), weighing each drawn group's AUC, averaged over the runs, by
    its rows."""
    if metric not in M.row_keys():
        raise ReportError(f"a ctr comparison takes {', '.join(M.row_keys())}, got {metric!r}")
    labels = np.asarray(labels)
    n = len(labels)
    if n == 0 or any(len(x) != n for x in (*logits_a, *logits_b)):
        raise ReportError("paired rows need the same non-empty rows for every run")
    rng = np.random.default_rng(seed)
    tail = (1.0 - confidence) / 2.0
    if M.METRICS[metric].grouped:
        if groups is None:
            raise ReportError(
                f"{metric} needs the rows' groups: these runs' eval_ranks.parquet has no group "
                "column (declare protocol.group for the dataset and rerun)"
            )
        kept = groups != 0

        def mean_aucs(runs) -> tuple[np.ndarray, np.ndarray]:
            parts = [M.group_aucs(labels[kept], x[kept], groups[kept]) for x in runs]
            return parts[0][1], np.mean([p[2] for p in parts], axis=0)

        rows, auc_a = mean_aucs(logits_a)
        _, auc_b = mean_aucs(logits_b)
        if not len(rows):
            raise ReportError("no group holds both a click and a non-click: no group AUC")
        diffs = np.empty(n_resamples)
        for r in range(n_resamples):
            weight = rows * np.bincount(rng.integers(0, len(rows), len(rows)), minlength=len(rows))
            diffs[r] = np.sum(weight * (auc_a - auc_b)) / np.sum(weight)
        low, high = np.quantile(diffs, [tail, 1.0 - tail])
        value_a, value_b = (float(np.sum(rows * a) / np.sum(rows)) for a in (auc_a, auc_b))
        return RowPairedResult(
            metric, len(rows), value_a, value_b, float(low), float(high), confidence,
            n_resamples, unit="groups",
        )  # fmt: skip

    fn = M.METRICS[metric].fn

    def value(idx, runs) -> float:
        return float(np.mean([fn(labels[idx], x[idx]) for x in runs]))

    everything = np.arange(n)
    diffs = np.empty(n_resamples)
    for r in range(n_resamples):
        idx = rng.integers(0, n, n)
        diffs[r] = value(idx, logits_a) - value(idx, logits_b)
    low, high = np.quantile(diffs, [tail, 1.0 - tail])
    return RowPairedResult(
        metric, n, value(everything, logits_a), value(everything, logits_b), float(low),
        float(high), confidence, n_resamples,
    )  # fmt: skip
