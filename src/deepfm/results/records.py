"""Run records committed to git: what the report needs of each run, so the table, the paired
tests and the figures regenerate offline on a fresh clone (DVC experiment refs stay on the
machine that ran them).

`deepfm report export DIR` writes, per selected run, DIR/<model>/<seed>-<rev7>:
  .json           the run's row (as `parse_exp_show` gives it): sorted keys, one per line;
  .ranks.parquet  its metrics/eval_ranks.parquet (zstd);
  .curves.json    its dvclive curves, {"val/<metric>": {step: value}}.
`--records DIR` reads them back as the same rows and the same ranks / curves readers.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from deepfm.io import atomic_dir
from deepfm.results import ReportError

RanksReader = Callable[[str, str], pd.DataFrame]  # (rev, name) -> the run's rank table
CurvesReader = Callable[[str], dict[str, pd.Series]]  # rev -> its curves, values by step

# Prefixes of the keys a run has or lacks (eval, dvclive and params.yaml keys); every other
# column (name, rev, seed, ...) is in every row.
_RUN_KEYS = ("test.", "val.", "train.", "param.")
_NEEDED = ("name", "rev", "baseline", "kind", "status", "timestamp", "model", "seed")


def _json_native(value: Any) -> Any:
    """numpy scalars -> Python ones, NaN / infinity -> None (JSON has neither)."""
    if isinstance(value, list | tuple):
        return [_json_native(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_native(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _is_nan(value: Any) -> bool:
    return isinstance(value, float | np.floating) and math.isnan(value)


def run_record(run: dict[str, Any]) -> dict[str, Any]:
    """The row of one run, without its position in one `dvc exp show` listing (`order`) and
    without the params of the datasets it did not use (hundreds of keys, irrelevant to it). A
    metric or param that is NaN is one the run lacks (it is in the frame for other runs), so
    it is left out: reading the records back gives NaN there again."""
    own = f"param.datasets.{run.get('param.dataset')}."
    record = {}
    for key, value in run.items():
        if key == "order" or (key.startswith("param.datasets.") and not key.startswith(own)):
            continue
        if key.startswith(_RUN_KEYS) and _is_nan(value):
            continue
        record[key] = _json_native(value)
    return record


def record_stem(model: str, seed: Any, rev: str) -> str:
    """<model>/<seed>-<rev7>: seed 1.0 (a float column) reads 1, a run without one "none"."""
    if seed is None or _is_nan(seed):
        seed = "none"
    elif isinstance(seed, float | np.floating) and float(seed).is_integer():
        seed = int(seed)
    return f"{model}/{seed}-{str(rev)[:7]}"


def _dump(obj: Any) -> str:
    # indent 1 and sorted keys: one key per line, so a changed number is a one-line diff
    return json.dumps(obj, sort_keys=True, indent=1, allow_nan=False, ensure_ascii=False) + "\n"


def write_records(
    runs: pd.DataFrame, out_dir: str | Path, read_ranks: RanksReader, read_curves: CurvesReader
) -> int:
    """Write the records of `runs` (rows of `select_runs`) into out_dir, replacing it whole:
    all is written into a temporary folder first, so an interrupted export (a rank table
    missing from the DVC cache, Ctrl-C) leaves the old out_dir, never a half-written one."""
    with atomic_dir(out_dir) as tmp:
        for run in runs.to_dict("records"):
            base = tmp / record_stem(run["model"], run["seed"], run["rev"])
            base.parent.mkdir(exist_ok=True)
            ranks = read_ranks(run["rev"], run["name"])
            ranks.to_parquet(f"{base}.ranks.parquet", index=False, compression="zstd")
            curves = {
                key: {str(step): value for step, value in series.items()}
                for key, series in read_curves(run["rev"]).items()
            }
            Path(f"{base}.curves.json").write_text(_dump(_json_native(curves)), encoding="utf-8")
            Path(f"{base}.json").write_text(_dump(run_record(run)), encoding="utf-8")
    return len(runs)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ReportError(f"cannot read run record {path}: {e}") from e


def read_records(records_dir: str | Path) -> tuple[pd.DataFrame, RanksReader, CurvesReader]:
    """The rows of the records in records_dir (the columns `parse_exp_show` gives, so
    `select_runs` takes them), and readers of each run's ranks and curves by its rev."""
    paths = sorted(
        p for p in Path(records_dir).glob("*/*.json") if not p.name.endswith(".curves.json")
    )
    if not paths:
        raise ReportError(
            f"no run records in {records_dir}: write them where the DVC experiments are, with "
            f"`deepfm report export {records_dir}` (same run options as `table`), and commit them"
        )
    records, base_of = [], {}
    for order, path in enumerate(paths):
        record = _read_json(path)
        missing = [k for k in _NEEDED if k not in record] if isinstance(record, dict) else _NEEDED
        if missing:
            raise ReportError(f"{path} is not a run record: no {', '.join(missing)}")
        records.append({**record, "order": order})
        base_of[record["rev"]] = path.with_suffix("")

    def base(rev: str) -> Path:
        if rev not in base_of:
            raise ReportError(f"no run record of rev {rev[:7]} in {records_dir}")
        return base_of[rev]

    def read_ranks(rev: str, name: str) -> pd.DataFrame:
        path = f"{base(rev)}.ranks.parquet"
        try:
            return pd.read_parquet(path)
        except (OSError, ValueError) as e:
            raise ReportError(f"cannot read the rank table of {name}, {path}: {e}") from e

    def read_curves(rev: str) -> dict[str, pd.Series]:
        curves = _read_json(Path(f"{base(rev)}.curves.json"))
        return {key: _curve(key, values) for key, values in curves.items()}

    return pd.DataFrame(records), read_ranks, read_curves


def _curve(key: str, values: dict[str, Any]) -> pd.Series:
    """{"0": 0.1, ...} -> the Series `read_curves_at` gives: float values by int step."""
    steps = [int(step) for step in values]
    series = pd.Series(list(values.values()), index=pd.Index(steps, name="step"), dtype=float)
    return series.rename(key.rsplit("/", 1)[1]).sort_index()
