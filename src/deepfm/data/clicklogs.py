"""Click logs in their published formats -> the canonical interactions table (ctr protocol).

- criteo: the Kaggle Display Advertising Challenge `train.txt` (and the Criteo 1TB day files,
  same layout): tab-separated, no header, 40 fields: the 0/1 label, 13 integer features
  I1..I13 and 26 hashed categorical features C1..C26 (8 hex digits); any feature may be empty.
- avazu: the Kaggle CTR Prediction `train` CSV: a header, then id, click, hour (YYMMDDHH) and
  21 categorical columns. `hour` becomes `hour_of_day` (00..23) and `weekday` (0 = Monday).

The row order is kept as `timestamp` (criteo: the row number, the files are in time order;
avazu: the hour in unix seconds, ties in file order). Neither has users or items to rank, so
the canonical user_id and item_id are 0 for every row.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from deepfm.data.movielens import ParseError, _check_field_counts

CRITEO_INTS = [f"I{i}" for i in range(1, 14)]
CRITEO_CATS = [f"C{i}" for i in range(1, 27)]
CRITEO_COLUMNS = ["label", *CRITEO_INTS, *CRITEO_CATS]
AVAZU_COLUMNS = [
    "id", "click", "hour", "C1", "banner_pos", "site_id", "site_domain", "site_category",
    "app_id", "app_domain", "app_category", "device_id", "device_ip", "device_model",
    "device_type", "device_conn_type", "C14", "C15", "C16", "C17", "C18", "C19", "C20", "C21",
]  # fmt: skip


def _read(path: Path, sep: str, names: list[str], header: bool) -> pd.DataFrame:
    data = path.read_bytes().replace(b"\r\n", b"\n")
    if not data.strip():
        raise ParseError(f"{path} is empty: give the click log's file (dvc repro fetch).")
    body = data.split(b"\n", 1)[1] if header else data
    if header:
        first = data.split(b"\n", 1)[0].decode("utf-8", "replace").strip().split(sep)
        if first != names:
            raise ParseError(
                f"{path}, line 1: the header is {','.join(first)!r}; expected "
                f"{','.join(names)!r} (the published file's header)."
            )
    try:
        _check_field_counts(body, sep.encode(), len(names), path)
    except ParseError as e:
        if not header:
            raise
        # count lines from the file's first line, the header
        line = int(str(e).split(", line ")[1].split(":")[0])
        raise ParseError(str(e).replace(f"line {line}:", f"line {line + 1}:", 1)) from None
    import io

    return pd.read_csv(
        io.BytesIO(body), sep=sep, header=None, names=names, dtype=str,
        keep_default_na=False, quoting=3, engine="c",
    )  # fmt: skip


def _integers(frame: pd.DataFrame, column: str, path: Path, first_line: int) -> np.ndarray:
    """A column of integers, NaN where empty; a non-integer names its line."""
    text = frame[column]
    values = pd.to_numeric(text, errors="coerce").to_numpy(np.float64)
    bad = (np.isnan(values) & (text != "").to_numpy()) | (values % 1 > 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ParseError(
            f"{path}, line {i + first_line}: {column} is {text.iloc[i]!r}; expected an integer "
            "or an empty field."
        )
    return values


def _labels(frame: pd.DataFrame, column: str, path: Path, first_line: int) -> np.ndarray:
    labels = _integers(frame, column, path, first_line)
    bad = ~np.isin(labels, (0, 1))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ParseError(
            f"{path}, line {i + first_line}: {column} is {frame[column].iloc[i]!r}; a click "
            "label is 0 or 1."
        )
    return labels.astype(np.int8)


def _canonical(label: np.ndarray, timestamp: np.ndarray, columns: dict) -> pd.DataFrame:
    n = len(label)
    return pd.DataFrame(
        {
            "user_id": np.zeros(n, np.int64),
            "item_id": np.zeros(n, np.int64),
            "rating": label.astype(np.float32),
            "timestamp": timestamp,
            "label": label,
            **columns,
        }
    )


def parse_criteo(path: Path) -> pd.DataFrame:
    frame = _read(path, "\t", CRITEO_COLUMNS, header=False)
    columns = {c: _integers(frame, c, path, 1) for c in CRITEO_INTS}
    columns |= {c: frame[c].where(frame[c] != "", None).to_numpy(object) for c in CRITEO_CATS}
    label = _labels(frame, "label", path, 1)
    return _canonical(label, np.arange(len(frame), dtype=np.int64), columns)


def parse_avazu(path: Path) -> pd.DataFrame:
    frame = _read(path, ",", AVAZU_COLUMNS, header=True)
    hour = frame["hour"]
    when = pd.to_datetime(hour, format="%y%m%d%H", errors="coerce")
    bad = when.isna().to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ParseError(
            f"{path}, line {i + 2}: hour is {hour.iloc[i]!r}; expected YYMMDDHH, e.g. 14102100."
        )
    categorical = [c for c in AVAZU_COLUMNS if c not in ("id", "click", "hour")]
    columns = {c: frame[c].where(frame[c] != "", None).to_numpy(object) for c in categorical}
    columns["hour_of_day"] = when.dt.strftime("%H").to_numpy(object)
    columns["weekday"] = when.dt.day_of_week.astype(str).to_numpy(object)
    label = _labels(frame, "click", path, 2)
    seconds = ((when - pd.Timestamp(0)) // pd.Timedelta(seconds=1)).to_numpy(np.int64)
    out = _canonical(label, seconds, columns)
    out["click"] = label
    return out


PARSERS = {"criteo": parse_criteo, "avazu": parse_avazu}
