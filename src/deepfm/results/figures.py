"""Figures of the results (docs/figures.md): PNGs drawn by matplotlib's Agg renderer (no
display, no network), from the runs that `deepfm.results.runs.select_runs` keeps (or the
workspace run alone): val_curves, metrics_at_k, models_ci and rank_distribution.

`*_table` functions compute what a figure shows (the tests check them by hand); `plot_*` draw
it on a new Figure; `render` writes every figure the runs allow. No pyplot: Figures are not
registered globally, so nothing leaks and no backend is chosen for the caller. A model has one
colour (MODEL_COLORS) in every figure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import count, pairwise, takewhile
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from deepfm.evaluation import metrics as M
from deepfm.io import atomic_path
from deepfm.results.rendering import metric_label
from deepfm.results.statistics import (
    MAIN_METRIC,
    bootstrap_mean_ci,
    mean_over_runs,
    per_user_scores,
)

# Validation curves: the first three of these that a run logged (the ctr protocol logs AUC and
# LogLoss only), then the training loss.
CURVE_METRICS = (MAIN_METRIC, "full_hr@10", "hr@10", "auc", "logloss")
LOSS = "train/loss"
CI_METRICS = (MAIN_METRIC, "full_hr@10", "hr@10")

# figure name -> size in inches; at `dpi` the PNG is (width * dpi) x (height * dpi) pixels
SIZES = {
    "val_curves": (12.0, 8.0),
    "metrics_at_k": (12.0, 8.0),
    "models_ci": (12.0, 5.0),
    "rank_distribution": (12.0, 5.0),
}
BAND = "line: mean over seeds; band: min–max over seeds"


@dataclass
class RunFiles:
    """What one run left besides eval.json: curves ("val/<metric>" or "train/loss" -> values
    indexed by dvclive's step, epoch - 1) and the eval stage's rank table (None if absent)."""

    curves: dict[str, pd.Series] = field(default_factory=dict)
    ranks: pd.DataFrame | None = None


# One colour per registered model (deepfm.config.MODEL_SECTIONS; a test keeps the two in step),
# the same in every figure whichever models are drawn; the palette's choice: docs/figures.md
# (black reads as text; yellow vanishes on white). Named, not indexed by the registry's order,
# so adding a model moves no colour.
MODEL_COLORS = {
    "deepfm": "#0072B2",  # blue
    "sasrec": "#D55E00",  # vermillion
    "item_cooccurrence": "#009E73",  # bluish green
    "ease": "#E69F00",  # orange
    "fm": "#56B4E9",  # sky blue
    "lr": "#CC79A7",  # reddish purple
    "itempop": "#332288",  # indigo
    "xdeepfm": "#882255",  # wine
    "attention_deepfm": "#661100",  # brown
}
# A name outside the registry (a renamed model in old records): grey shades, by sorted name
SPARE_COLORS = ("#7F7F7F", "#4D4D4D", "#B0B0B0")
# A curve with at most this many points gets visible markers: validated every 5th epoch, a
# 20-epoch run has 4 points, and they should read as points on a curve, not as a line
FEW_POINTS = 12


def model_colors(models: Sequence[str]) -> dict[str, str]:
    """{model: its colour}: MODEL_COLORS's, the same in every figure and whatever the other
    models drawn; a model outside the registry gets a grey (by its place among such names)."""
    unknown = sorted(set(models) - set(MODEL_COLORS))
    spare = {name: SPARE_COLORS[i % len(SPARE_COLORS)] for i, name in enumerate(unknown)}
    return {name: MODEL_COLORS.get(name) or spare[name] for name in models}


def _legend_names(runs: pd.DataFrame) -> dict[str, str]:
    """{model: its legend entry}: the model and its one seed, or how many seeds it has."""
    names = {}
    for model, group in runs.groupby("model", sort=True):
        seeds = [s for s in group["seed"] if s is not None and s == s]
        n = len(seeds)
        names[model] = f"{model} (seed {seeds[0]})" if n == 1 else f"{model} ({n} seeds)"
    return names


def curve_band(series: Sequence[pd.Series]) -> pd.DataFrame:
    """The curves of one model's seeds (values indexed by step) -> per step (sorted): mean,
    low (min), high (max) over the seeds that have a value there, and n (how many)."""
    if not series:
        raise ValueError("no curves")
    frame = pd.concat([s.astype(np.float64) for s in series], axis=1)
    stats = {"mean": frame.mean(axis=1), "low": frame.min(axis=1), "high": frame.max(axis=1)}
    return pd.DataFrame({**stats, "n": frame.count(axis=1)}).sort_index()


def relative_loss(series: pd.Series) -> pd.Series:
    """A run's training loss divided by its first epoch's (its lowest step's) value: 1 at the
    start, 0.8 where it fell by a fifth. NaN throughout if that value is not positive."""
    series = series.astype(np.float64).sort_index()
    first = series.iloc[0] if len(series) else np.nan
    return series / first if np.isfinite(first) and first > 0 else series * np.nan


def curve_metrics(files: Mapping[str, RunFiles]) -> list[str]:
    """The validation metrics to draw: the first three of CURVE_METRICS that some run has."""
    have = {key for f in files.values() for key in f.curves}
    return [m for m in CURVE_METRICS if f"val/{m}" in have][:3]


def curve_tables(
    runs: pd.DataFrame, files: Mapping[str, RunFiles]
) -> dict[str, dict[str, pd.DataFrame]]:
    """{curve key: {model: curve_band over its runs}} for the validation metrics to draw and
    the training loss, each run's relative to its first epoch (relative_loss); a model appears
    under a key only if one of its runs logged it."""
    out: dict[str, dict[str, pd.DataFrame]] = {}
    for key in [f"val/{m}" for m in curve_metrics(files)] + [LOSS]:
        per_model = {}
        for model, group in runs.groupby("model", sort=True):
            series = [files[n].curves[key] for n in group["name"] if key in files[n].curves]
            if key == LOSS:
                # each model's loss over its own first epoch: the objectives' levels compare
                # nothing (BCE ~0.1-0.5, SASRec's softmax ~5-7; docs/figures.md says more)
                series = [relative_loss(s) for s in series]
            if series:
                per_model[model] = curve_band(series)
        out[key] = per_model
    return out


def _trained(table: pd.DataFrame) -> bool:
    """A curve of more than its step-0 value (a model fitted in closed form logs one row)."""
    return len(table) > 1 or (len(table) == 1 and table.index[0] != 0)


def plot_val_curves(
    runs: pd.DataFrame, files: Mapping[str, RunFiles], *, footer: str = ""
) -> Figure:
    tables = curve_tables(runs, files)
    colors = model_colors(runs["model"])
    names = _legend_names(runs)
    fig = Figure(figsize=SIZES["val_curves"], layout="constrained")
    axes = fig.subplots(2, 2).ravel()
    handles: dict[str, object] = {}
    for ax, (key, per_model) in zip(axes, tables.items(), strict=False):
        for model, t in per_model.items():
            color = colors[model]
            if _trained(t):
                epoch = t.index.to_numpy() + 1  # dvclive's step is epoch - 1
                few = len(t) <= FEW_POINTS  # validated every 5th epoch: 4 points, not a dot
                (line,) = ax.plot(
                    epoch, t["mean"], color=color, marker="o" if few else ".", ms=5 if few else 4,
                    label=names[model],
                )  # fmt: skip
                if (t["n"] > 1).any():
                    ax.fill_between(epoch, t["low"], t["high"], color=color, alpha=0.2, lw=0)
            else:  # fitted in closed form: its one validation value
                line = ax.axhline(float(t["mean"].iloc[0]), color=color, ls="--", lw=1.2)
                line.set_label(f"{names[model]}, no training")
                if t["n"].iloc[0] > 1 and t["high"].iloc[0] > t["low"].iloc[0]:
                    ax.axhspan(t["low"].iloc[0], t["high"].iloc[0], color=color, alpha=0.15)
            handles.setdefault(line.get_label(), line)
        metric = key.split("/", 1)[1]
        if key == LOSS:
            ax.set_title("training loss, relative to each model's epoch 1")
            ax.set_ylabel("loss / the model's epoch-1 loss")
            ax.axhline(1.0, color="0.5", ls=":", lw=1)
        else:
            ax.set_title(f"validation {metric_label(metric)}")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if not per_model:
            ax.text(0.5, 0.5, "no run logged it", ha="center", va="center", transform=ax.transAxes)
    for ax in axes[len(tables) :]:
        ax.set_visible(False)
    fig.suptitle(f"Learning curves ({BAND})")
    _legend(fig, list(handles.values()), list(handles.keys()), footer, ncol=3)
    return fig


def at_k_table(runs: pd.DataFrame, split: str = "test") -> pd.DataFrame:
    """The cutoff metrics (HR@K, NDCG@K, full and sampled) of every run on `split` -> one row
    per (model, ranking, metric, k): mean, low (min), high (max) over the model's runs, n."""
    keys = []
    for col in runs.columns:
        if not col.startswith(f"{split}."):
            continue
        try:
            metric, ranking, k = M.parse_key(col.removeprefix(f"{split}."))
        except ValueError:
            continue
        if metric.cutoff:
            keys.append((col, metric.name, ranking, k))
    rows = []
    columns = ["model", "ranking", "metric", "k", "mean", "low", "high", "n"]
    for model, group in runs.groupby("model", sort=True):
        for col, name, ranking, k in keys:
            values = pd.to_numeric(group[col], errors="coerce").dropna()
            if len(values):
                row = (model, ranking, name, k, float(values.mean()), float(values.min()))
                row += (float(values.max()), len(values))
                rows.append(dict(zip(columns, row, strict=True)))
    return pd.DataFrame(rows, columns=columns).sort_values(["model", "ranking", "metric", "k"])


def plot_metrics_at_k(
    runs: pd.DataFrame, split: str = "test", *, footer: str = ""
) -> Figure | None:
    table = at_k_table(runs, split)
    if table.empty:
        return None
    colors = model_colors(runs["model"])
    names = _legend_names(runs)
    fig = Figure(figsize=SIZES["metrics_at_k"], layout="constrained")
    axes = fig.subplots(2, 2, sharex=True)
    ks = sorted(table["k"].unique())
    for row, ranking in enumerate((M.FULL, M.SAMPLED)):
        for col, name in enumerate(("hr", "ndcg")):
            ax = axes[row, col]
            part = table[(table["ranking"] == ranking) & (table["metric"] == name)]
            for model, t in part.groupby("model", sort=True):
                t = t.sort_values("k")
                # clipped: the float mean of equal values can land a hair above them
                err = np.clip(np.vstack([t["mean"] - t["low"], t["high"] - t["mean"]]), 0, None)
                ax.errorbar(
                    t["k"], t["mean"], yerr=err, color=colors[model], marker="o", capsize=3,
                    label=names[model],
                )  # fmt: skip
            label = M.METRICS[name].label
            where = "all items" if ranking == M.FULL else "the sampled candidates"
            ax.set_title(f"{label}@K, ranked against {where}")
            ax.set_xticks(ks)
            ax.set_xlabel("K")
            ax.set_ylabel(f"{split} {label}@K")
            ax.grid(alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.suptitle(f"HR@K and NDCG@K on the {split} split (mean over seeds; bars: min–max)")
    _legend(fig, handles, labels, footer)
    return fig


def user_ci_table(
    runs: pd.DataFrame,
    files: Mapping[str, RunFiles],
    metrics: Sequence[str] = CI_METRICS,
    *,
    split: str = "test",
    n_resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Per (model, metric): the mean over users of each user's value averaged over the model's
    runs, its bootstrap CI over users, n_users, n_runs and run_means (each run's own mean)."""
    rows = []
    for model, group in runs.groupby("model", sort=True):
        tables = [files[n].ranks for n in group["name"]]
        for metric in metrics:
            per_run = [per_user_scores(t, metric, split) for t in tables]
            users = mean_over_runs(per_run, model)["score"].to_numpy(np.float64)
            low, high = bootstrap_mean_ci(
                users, n_resamples=n_resamples, confidence=confidence, seed=seed
            )
            run_means = [float(r["score"].mean()) for r in per_run]
            rows.append(
                {"model": model, "metric": metric, "mean": float(users.mean()), "ci_low": low,
                 "ci_high": high, "n_users": len(users), "n_runs": len(per_run),
                 "run_means": run_means}
            )  # fmt: skip
    return pd.DataFrame(rows)


def plot_models_ci(
    table: pd.DataFrame, *, split: str = "test", confidence: float = 0.95, footer: str = ""
) -> Figure:
    metrics = list(dict.fromkeys(table["metric"]))
    first = table[table["metric"] == metrics[0]]
    order = list(first.sort_values("mean", kind="stable")["model"])  # best at the top
    colors = model_colors(order)
    fig = Figure(figsize=SIZES["models_ci"], layout="constrained")
    axes = fig.subplots(1, len(metrics), sharey=True, squeeze=False)[0]
    for ax, metric in zip(axes, metrics, strict=True):
        part = table[table["metric"] == metric].set_index("model").reindex(order)
        y = np.arange(len(order))
        for i, (model, row) in enumerate(part.iterrows()):
            err = np.clip([[row["mean"] - row["ci_low"]], [row["ci_high"] - row["mean"]]], 0, None)
            ax.errorbar(
                row["mean"], y[i], xerr=err, color=colors[model], marker="o", ms=7, capsize=4,
                lw=2,
            )  # fmt: skip
            runs = row["run_means"]
            if len(runs) > 1:
                ax.plot(runs, [y[i] + 0.2] * len(runs), "o", mfc="none", color=colors[model])
        ax.set_yticks(y, [f"{m} (n={int(part.loc[m, 'n_runs'])})" for m in order])
        ax.set_title(f"{split} {metric_label(metric)}")
        ax.grid(axis="x", alpha=0.3)
    users = sorted(set(table["n_users"]))
    pct = round(100 * confidence)
    fig.suptitle(
        f"Models side by side: mean over {'/'.join(map(str, users))} users with the {pct}% "
        "bootstrap CI over users (each user averaged over the model's seeds; circles: each "
        "seed)",
        fontsize="medium",
    )
    if footer:  # where the runs come from: a supxlabel, which the layout keeps clear
        fig.supxlabel(footer, x=0.005, ha="left", fontsize="small", color="0.35")
    return fig


def rank_table(
    runs: pd.DataFrame, files: Mapping[str, RunFiles], split: str = "test"
) -> dict[str, np.ndarray]:
    """{model: the full-ranking ranks of the held-out items on `split`, of all its runs}."""
    out = {}
    for model, group in runs.groupby("model", sort=True):
        ranks = [files[n].ranks for n in group["name"]]
        out[model] = np.concatenate(
            [t.loc[t["split"] == split, "full_rank"].to_numpy(np.int64) for t in ranks]
        )
    return out


def rank_bins(max_rank: int) -> np.ndarray:
    """Bin edges 1, 2, 5, 10, 20, 50, ... (1-2-5 steps) up to max_rank, then max_rank + 1:
    bins [a, b) that cover ranks 1..max_rank once each."""
    steps = (m * 10**e for e in count() for m in (2, 5, 10))
    edges = [1, *takewhile(lambda edge: edge <= max_rank, steps)]
    return np.array([*edges, max_rank + 1], dtype=np.int64)


def bin_labels(edges: np.ndarray) -> list[str]:
    """[1, 2, 5, 10, 1683] -> ['1', '2–4', '5–9', '10–1682']."""
    return [str(a) if b == a + 1 else f"{a}–{b - 1}" for a, b in pairwise(edges.tolist())]


def plot_rank_distribution(
    runs: pd.DataFrame, files: Mapping[str, RunFiles], split: str = "test", *, footer: str = ""
) -> Figure:
    ranks = rank_table(runs, files, split)
    colors = model_colors(list(ranks))
    names = _legend_names(runs)
    edges = rank_bins(int(max(r.max() for r in ranks.values())))
    fig = Figure(figsize=SIZES["rank_distribution"], layout="constrained")
    hist, ecdf = fig.subplots(1, 2, width_ratios=(3, 2))
    x = np.arange(len(edges) - 1)
    width = 0.8 / len(ranks)
    for i, (model, r) in enumerate(ranks.items()):
        counts, _ = np.histogram(r, bins=edges)
        offset = (i - (len(ranks) - 1) / 2) * width
        hist.bar(x + offset, counts / len(r), width, color=colors[model], label=names[model])
        ordered = np.sort(r)
        share = np.arange(1, len(r) + 1) / len(r)
        ecdf.step(ordered, share, where="post", color=colors[model])
    hist.set_xticks(x, bin_labels(edges), rotation=30)
    hist.set_xlabel("full rank of the held-out item (among all items)")
    hist.set_ylabel("share of users")
    hist.set_title(f"Where the held-out {split} item ranks")
    ecdf.set_xscale("log")
    ecdf.axvline(10, color="grey", ls=":", lw=1)
    ecdf.set_xlabel("rank r (log scale; dotted: r = 10)")
    ecdf.set_ylabel("share of users with rank <= r")
    ecdf.set_title("Cumulative: full HR@r for every r")
    for ax in (hist, ecdf):
        ax.grid(alpha=0.3)
    handles, labels = hist.get_legend_handles_labels()
    fig.suptitle("Distribution of the held-out items' ranks (each model's seeds pooled)")
    _legend(fig, handles, labels, footer)
    return fig


def _legend(fig: Figure, handles: list, labels: list[str], footer: str, ncol: int = 0) -> None:
    """The models' legend below the axes, titled with where the runs come from."""
    fig.legend(
        handles, labels, loc="outside lower center", ncol=ncol or min(len(labels), 5),
        title=footer or None, title_fontsize="small",
    )  # fmt: skip


def save_png(fig: Figure, path: Path, dpi: int) -> None:
    """Atomically, with no Software metadata (the bytes do not change with matplotlib's
    version)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, metadata={"Software": None})


def has_ranks(files: Mapping[str, RunFiles], names: Sequence[str]) -> bool:
    """Every run has a rank table of the top-K protocol (the ctr protocol's holds rows)."""
    return all(
        files[n].ranks is not None and {"full_rank", "sampled_rank"} <= set(files[n].ranks)
        for n in names
    )


def render(
    runs: pd.DataFrame,
    files: Mapping[str, RunFiles],
    out: str | Path,
    *,
    split: str = "test",
    dpi: int = 100,
    n_resamples: int = 10_000,
    seed: int = 0,
    footer: str = "",
) -> tuple[list[Path], list[str]]:
    """Every figure the runs allow, as out/<name>.png -> (paths written, notes on what was
    not drawn and why). A figure not drawn also loses an older PNG of that name, so the folder
    never shows a figure of other runs."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Figure | None] = {}
    notes: list[str] = []
    names = list(runs["name"])
    has_curves = any(f.curves for f in files.values())
    figures["val_curves"] = plot_val_curves(runs, files, footer=footer) if has_curves else None
    if not has_curves:
        notes.append("val_curves: no run has dvclive curves (metrics/train/plots)")
    figures["metrics_at_k"] = plot_metrics_at_k(runs, split, footer=footer)
    if figures["metrics_at_k"] is None:
        notes.append(f"metrics_at_k: no HR@K / NDCG@K on {split} (the ctr protocol has none)")
    if has_ranks(files, names):
        table = user_ci_table(runs, files, split=split, n_resamples=n_resamples, seed=seed)
        figures["models_ci"] = plot_models_ci(table, split=split, footer=footer)
        figures["rank_distribution"] = plot_rank_distribution(runs, files, split, footer=footer)
    else:
        figures["models_ci"] = figures["rank_distribution"] = None
        notes.append(
            "models_ci, rank_distribution: not every run has a per-user rank table (the ctr "
            "protocol scores rows, not ranks: compare its models with `compare`)"
        )
    written = []
    for name, fig in figures.items():
        path = out / f"{name}.png"
        if fig is None:
            if path.exists():
                path.unlink()
                notes.append(f"removed the older {path} (not drawn for these runs)")
            continue
        save_png(fig, path, dpi)
        written.append(path)
    return written, notes
