"""The results table as markdown: one row per model, mean ± std cells, metric labels with
their ranking and direction (from the metric registry, deepfm.evaluation.metrics)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from deepfm.evaluation import metrics as M
from deepfm.results.statistics import Summary

_DASH = "—"


def metric_label(metric: str, arrow: bool = True) -> str:
    """'full_ndcg@10' -> 'NDCG@10 (full) ↑', 'hr@10' -> 'HR@10 (sampled) ↑', 'logloss' ->
    'LogLoss ↓' (the ranking is named for metrics of more than one); a column that is no
    registered metric keeps its name."""
    try:
        m, ranking, k = M.parse_key(metric)
    except ValueError:
        return metric + (" ↑" if arrow else "")
    label = m.label + (f"@{k}" if m.cutoff else "")
    if len([r for r in m.rankings if r in M.RANKINGS]) > 1:
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
