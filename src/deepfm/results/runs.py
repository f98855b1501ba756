"""Runs of DVC experiments: `dvc exp show --json` parsed to one row per entry, the runs that
count selected (finished experiments, the newest per (model, seed): `select_runs`;
docs/results.md), and the params that differ between the runs of one model. Pure functions
on already-loaded data; the CLI (deepfm.results.cli) runs `dvc exp show --json`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from deepfm.results import ReportError

PARAMS_YAML = "params.yaml"


def pipeline_paths(dvc_yaml: str = "dvc.yaml") -> dict[str, str]:
    """The artefact paths that dvc.yaml names in `vars: paths`, the one place they are named
    (the stages get theirs on the command line; the results code reads them here)."""
    import yaml

    try:
        with open(dvc_yaml, encoding="utf-8") as f:
            spec = yaml.safe_load(f)
    except OSError as e:
        raise FileNotFoundError(
            f"{dvc_yaml}: {e.strerror}; run this from the repository root."
        ) from None
    for entry in spec.get("vars") or []:
        if isinstance(entry, dict) and "paths" in entry:
            return {str(k): str(v) for k, v in entry["paths"].items()}
    raise ReportError(f"{dvc_yaml} has no `vars: - paths:` block naming the pipeline's artefacts.")


def metric_files() -> tuple[str, str, str]:
    """(eval metrics, timing summary, training curves summary): the keys under which
    `dvc exp show --json` lists them, from the paths dvc.yaml names."""
    paths = pipeline_paths()
    return paths["metrics"], f"{paths['timing']}/summary.json", f"{paths['curves']}/metrics.json"


# Differ on purpose between the runs of one model, so never reported as a config mismatch.
_EXPECTED_TO_VARY = frozenset({"seed", "train.num_threads", "train.device"})


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
    entry: Mapping[str, Any], *, kind: str, baseline: str | None, order: int, executor=None
) -> dict[str, Any]:
    rev = entry.get("rev")
    data = entry.get("data") or {}
    params = _file_data(data.get("params"), PARAMS_YAML)
    metrics = data.get("metrics") or {}
    evaluation, timing, train = (_file_data(metrics, path) for path in metric_files())
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
    {"data": {...}}}, "metrics": {"<path>": {"data": {...}}}, ...}}. The columns are `_row`'s:
    kind is workspace | baseline | experiment, order the position in the listing, then
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
            if revs:  # its tip
                tip = {"kind": "experiment", "baseline": rev, "executor": group.get("executor")}
                rows.append(_row(revs[0], order=len(rows), **tip))
    return pd.DataFrame(rows)


def _sorted(frame: pd.DataFrame, keys: Mapping[str, pd.Series], ascending: list[bool]):
    """frame's rows in the stable order of the key columns (NaN last), renumbered 0..n-1. The
    keys are not inserted into frame: exp show's hundreds of string params are one block
    each, and an insert into such a frame warns (pandas' PerformanceWarning)."""
    order = pd.DataFrame({name: key.to_numpy() for name, key in keys.items()}).sort_values(
        list(keys), ascending=ascending, kind="stable", na_position="last"
    )
    return frame.iloc[order.index.to_numpy()].reset_index(drop=True)


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
    rows = _sorted(
        rows, {"stamp": rows["timestamp"].fillna("~"), "order": rows["order"]}, [False, True]
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
    runs = _sorted(
        runs,
        {"model": runs["model"], "seed": pd.to_numeric(runs["seed"], errors="coerce")},
        [True, True],
    )
    notes.extend(config_mismatches(runs))
    return Selection(runs, notes)


def config_mismatches(runs: pd.DataFrame) -> list[str]:
    """Params (other than seed / threads / device) that differ between the runs of one model:
    averaging over them would mix configurations. Named in sorted order, so the note reads the
    same from `dvc exp show` (params.yaml's order) and from run records (sorted keys)."""
    param_cols = sorted(c for c in runs.columns if c.startswith("param."))
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
