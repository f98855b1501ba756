"""Results over DVC experiments: mean ± std over seeds per model, and paired per-user tests.

Pure functions on already-loaded data; the CLI (src/stages/report.py) runs `dvc exp show --json` and
reads the per-user rank files. Which experiments count (see `select_runs`):

- by default only *experiments* (rows under a baseline commit in `dvc exp show`) that finished:
  queued, running and failed ones are skipped (a failed queued run still shows the metrics of the
  workspace it was queued from, so its numbers would be wrong), and so are the baseline commits and
  the workspace row, which are not part of a seed sweep;
- several finished experiments with the same (model, seed) count once: the newest is kept.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from deepfm.evaluation import metrics as M

EVAL_JSON = "metrics/eval.json"
TIMING_JSON = "metrics/timing/summary.json"
TRAIN_JSON = "metrics/train/metrics.json"
RANKS = "metrics/eval_ranks.parquet"
PARAMS_YAML = "params.yaml"

MAIN_METRIC = "full_ndcg@10"
# the registry's table columns: full_ndcg@10 full_hr@10 ndcg@10 hr@10 auc logloss
DEFAULT_METRICS = tuple(
    M.key(M.METRICS[name], ranking, M.TABLE_K)
    for ranking in (M.FULL, M.SAMPLED)
    for name in M.TABLE
    if ranking in M.METRICS[name].rankings
)
# Differ on purpose between the runs of one model, so never reported as a config mismatch.
_EXPECTED_TO_VARY = frozenset({"seed", "train.num_threads", "train.device"})
_DASH = "—"


class ReportError(ValueError):
    """An expected problem (no runs, mismatched users, ...): one message naming it and the fix."""


# --------------------------------------------------------------------------- dvc exp show


def _flatten(obj: Any, prefix: str) -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'prefix.a.b': 1}; lists and scalars are leaves."""
    if not isinstance(obj, Mapping):
        return {prefix: obj}
    out: dict[str, Any] = {}
    for key, value in obj.items():
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _file_data(files: Mapping[str, Any] | None, path: str) -> dict:
    """`{"<path>": {"data": {...}}}` -> the data; {} when absent or unreadable (then DVC puts
    an "error" key where "data" would be)."""
    entry = (files or {}).get(path) or {}
    data = entry.get("data")
    return data if isinstance(data, dict) else {}


def _status(entry: Mapping[str, Any], executor: Mapping[str, Any] | None) -> str:
    if entry.get("error"):
        return "failed"
    state = (executor or {}).get("state")
    # state None: run in the workspace (`dvc exp run`), or a finished queued run cleaned up.
    return "success" if state in (None, "success") else str(state)


def _row(
    entry: Mapping[str, Any],
    *,
    kind: str,
    baseline: str | None,
    order: int,
    executor: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    rev = entry.get("rev")
    data = entry.get("data") or {}
    params = _file_data(data.get("params"), PARAMS_YAML)
    metrics = data.get("metrics") or {}
    evaluation = _file_data(metrics, EVAL_JSON)
    timing = _file_data(metrics, TIMING_JSON)
    train = _file_data(metrics, TRAIN_JSON)
    status = _status(entry, executor)
    if status == "success" and not evaluation:
        status = "no-metrics"
    model = params.get("model", evaluation.get("model"))
    row: dict[str, Any] = {
        "name": "workspace" if kind == "workspace" else entry.get("name") or str(rev)[:7],
        "rev": rev,
        "baseline": baseline,
        "kind": kind,
        "status": status,
        "timestamp": data.get("timestamp"),
        "order": order,
        "model": model if isinstance(model, str) else None,
        "seed": params.get("seed"),
        "parameters": evaluation.get("parameters", timing.get("parameters")),
        # the checkpoint's epoch ("best_epoch" before train.checkpoint existed)
        "best_epoch": evaluation.get("checkpoint_epoch", evaluation.get("best_epoch")),
        "epochs_run": timing.get("epochs_run"),
        "seconds_per_epoch": timing.get("seconds_per_epoch"),
        "threads": timing.get("threads"),
        "device": timing.get("device"),
    }
    for split in ("test", "val"):
        row.update(_flatten(evaluation.get(split) or {}, split))
    row.update(_flatten(train, "train"))
    row.update(_flatten(params, "param"))
    return row


def parse_exp_show(exp_show: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """The parsed JSON of `dvc exp show --json` (DVC 3.x) -> one row per entry, every status.

    The JSON is a list: first the workspace (`rev` "workspace"), then one entry per baseline
    commit, each with `experiments`: a list of {"name", "executor", "revs": [entry]} (the tip is
    revs[0]). An entry is {"rev", "name", "error", "data": {"timestamp", "params": {"params.yaml":
    {"data": {...}}}, "metrics": {"<path>": {"data": {...}}}, ...}}.

    Columns: name, rev, baseline, kind (workspace | baseline | experiment), status (success |
    queued | running | failed | no-metrics | ...), timestamp, order (position in the listing),
    model, seed, parameters, best_epoch, epochs_run, seconds_per_epoch, threads, device, then
    `test.<metric>`, `val.<metric>`, `train.<key>` (dvclive summary) and `param.<key>`.
    """
    rows: list[dict[str, Any]] = []
    for entry in exp_show:
        rev = entry.get("rev")
        if rev == "workspace":
            rows.append(_row(entry, kind="workspace", baseline=None, order=len(rows)))
            continue
        rows.append(_row(entry, kind="baseline", baseline=rev, order=len(rows)))
        for group in entry.get("experiments") or []:
            revs = group.get("revs") or []
            if revs:
                rows.append(
                    _row(
                        revs[0],
                        kind="experiment",
                        baseline=rev,
                        order=len(rows),
                        executor=group.get("executor"),
                    )
                )
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class Selection:
    runs: pd.DataFrame  # one row per (model, seed), sorted by model then seed
    notes: list[str]  # what was skipped or dropped, and config mismatches, for the user


def select_runs(
    rows: pd.DataFrame,
    *,
    include_baselines: bool = False,
    include_workspace: bool = False,
    where: Mapping[str, str] | None = None,
) -> Selection:
    """The runs that count: finished experiments (plus the baseline commits and the workspace
    if asked) with a `model` param and, with `where` ({param: value}, e.g.
    {"split.tie_break": "random"}), those params; of several runs with one (model, seed), the
    newest."""
    notes: list[str] = []
    if rows.empty:
        return Selection(rows, notes)
    for key, value in (where or {}).items():
        column = f"param.{key}"
        if column not in rows:
            raise ReportError(f"--where {key}={value}: no run has a param {key!r}")
        text = rows[column].map(lambda v: str(v).lower())
        rows = rows[text == str(value).lower()]
    kinds = {"experiment"}
    if include_baselines:
        kinds.add("baseline")
    if include_workspace:
        kinds.add("workspace")
    rows = rows[rows["kind"].isin(kinds)]
    for status, group in rows[rows["status"] != "success"].groupby("status", sort=True):
        notes.append(f"skipped {len(group)} {status} run(s): {', '.join(group['name'])}")
    rows = rows[rows["status"] == "success"]
    if rows["model"].isna().any():
        unnamed = rows[rows["model"].isna()]["name"]
        notes.append(f"skipped {len(unnamed)} run(s) without a `model` param: {', '.join(unnamed)}")
    rows = rows[rows["model"].notna()]
    # Newest first: ISO timestamps sort as text; the workspace (no timestamp) is the newest;
    # ties keep DVC's order (newest first within a baseline).
    rows = (
        rows.assign(_stamp=rows["timestamp"].fillna("~"))
        .sort_values(["_stamp", "order"], ascending=[False, True], kind="stable")
        .drop(columns="_stamp")
        .reset_index(drop=True)
    )
    kept: dict[tuple[str, str], str] = {}
    dropped: dict[tuple[str, str], list[str]] = {}
    keep = []
    for model, seed, name in zip(rows["model"], rows["seed"], rows["name"], strict=True):
        key = (model, "?" if seed is None or seed != seed else str(seed))
        keep.append(key not in kept)
        if key in kept:
            dropped.setdefault(key, []).append(name)
        else:
            kept[key] = name
    for (model, seed), names in dropped.items():
        notes.append(
            f"{model} seed {seed}: {len(names) + 1} runs, kept the newest ({kept[model, seed]}), "
            f"dropped {', '.join(names)}"
        )
    runs = rows[np.array(keep, dtype=bool)]
    runs = (
        runs.assign(_seed=pd.to_numeric(runs["seed"], errors="coerce"))
        .sort_values(["model", "_seed"], kind="stable", na_position="last")
        .drop(columns="_seed")
        .reset_index(drop=True)
    )
    notes.extend(config_mismatches(runs))
    return Selection(runs, notes)


def config_mismatches(runs: pd.DataFrame) -> list[str]:
    """Params (other than seed / threads / device) that differ between the runs of one model:
    averaging over them would mix configurations."""
    param_cols = [c for c in runs.columns if c.startswith("param.")]
    notes = []
    for model, group in runs.groupby("model", sort=True):
        varying = []
        for col in param_cols:
            name = col.removeprefix("param.")
            if name in _EXPECTED_TO_VARY or name == "model":
                continue
            values = {repr(v) for v in group[col]}
            if len(values) > 1:
                varying.append(f"{name} {{{', '.join(sorted(values))}}}")
        if varying:
            notes.append(f"warning: runs of {model} differ in {'; '.join(varying)}")
    return notes


# --------------------------------------------------------------------------- the table


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
            f"metric(s) {', '.join(missing)} not in the {split!r} split of {EVAL_JSON}; "
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


def metric_label(metric: str, arrow: bool = True) -> str:
    """'full_ndcg@10' -> 'NDCG@10 (full) ↑', 'hr@10' -> 'HR@10 (sampled) ↑', 'logloss' ->
    'LogLoss ↓' (the ranking is named for metrics of more than one); a column that is no
    registered metric keeps its name."""
    try:
        m, ranking, k = M.parse_key(metric)
    except ValueError:
        return metric + (" ↑" if arrow else "")
    label = m.label + (f"@{k}" if m.cutoff else "")
    if len(m.rankings) > 1:
        label += f" ({ranking})"
    if arrow:
        label += " ↑" if m.higher_is_better else " ↓"
    return label


def _cell(mean: float, std: float, digits: int) -> str:
    if not np.isfinite(mean):
        return "n/a"
    return f"{mean:.{digits}f} ± " + (f"{std:.{digits}f}" if np.isfinite(std) else _DASH)


def render_markdown(summary: Summary, *, digits: int = 4) -> str:
    """The summary as a GitHub-flavoured markdown table, with a one-line caption above it."""
    table, metrics = summary.table, summary.metrics
    counts = sorted(set(table["n"]))
    n_text = f"n = {counts[0]} seeds per model" if len(counts) == 1 else "n seeds per model"
    users = sorted({int(u) for u in table["users"].dropna()})
    users_text = f", {users[0]} users" if len(users) == 1 else ""
    caption = (
        f"*Split: {summary.split}{users_text}. Each cell is the mean ± sample standard deviation "
        f"(ddof = 1) over {n_text} ({_DASH}: one seed). Full = ranked against all items, "
        f"sampled = against the fixed sampled candidates. Sorted by "
        f"{metric_label(summary.sort_by, arrow=False)}.*"
    )
    header = ["Model", "n", "Params", "s / epoch", *(metric_label(m) for m in metrics)]
    lines = [
        caption,
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join([":--", *("--:" for _ in header[1:])]) + "|",
    ]
    for model, row in table.iterrows():
        params = row["parameters"]
        params_text = f"{int(params):,}" if pd.notna(params) else "n/a"
        if row["parameters_vary"]:
            params_text += " (max)"
        spe = row["seconds_per_epoch"]
        cells = [
            str(model),
            str(int(row["n"])),
            params_text,
            f"{spe:.1f}" if pd.notna(spe) else "n/a",
            *(_cell(row[f"{m} mean"], row[f"{m} std"], digits) for m in metrics),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- paired tests


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
    a: np.ndarray,
    b: np.ndarray,
    *,
    n_resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
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
    return PairedResult(
        n_users=len(diff),
        mean_a=float(a.mean()),
        mean_b=float(b.mean()),
        mean_diff=float(diff.mean()),
        ci_low=low,
        ci_high=high,
        p_value=wilcoxon_p(diff),
        confidence=confidence,
        n_resamples=n_resamples,
    )


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
        pooled = _listing([m.label for m in M.METRICS.values() if not m.per_user], "and")
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
            f"expected the columns of {RANKS}"
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
        parts = [
            f"{len(only)} only in {label} (e.g. {', '.join(map(str, only[:5]))})"
            for only, label in (
                (sorted(users_a - users_b), label_a),
                (sorted(users_b - users_a), label_b),
            )
            if only
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
    return (
        users.to_numpy(),
        a["score"].reindex(users).to_numpy(dtype=np.float64),
        b["score"].reindex(users).to_numpy(dtype=np.float64),
    )


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
