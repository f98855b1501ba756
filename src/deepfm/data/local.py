"""A local dataset (`source: local`): your own CSV or Parquet files -> the canonical tables.

The canonical contract, shared with the MovieLens parsers:
- interactions: user_id, item_id, rating, timestamp, label (one row per user and item);
- users: user_id and the declared user fields; items: item_id and the declared item fields;
- the declared context fields are further columns of the interactions.

A user (item) field comes from the users (items) file when one is declared and has the
column, else from the interactions file, where it must then hold one value per user (item).
Errors name the file, the line (1 = the header of a CSV file), the column and what was
expected.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from deepfm.data.declaration import DatasetSpec, FieldSpec, FileSpec
from deepfm.data.movielens import ParseError


def raw_name(role: str, spec: FileSpec) -> str:
    """The file's name inside the raw folder (the fetch stage copies it there)."""
    return f"{role}.{spec.format}"


def _line(i: int, spec: FileSpec) -> str:
    return f"line {i + 2}" if spec.format == "csv" else f"row {i + 1}"


def read_file(path: Path, spec: FileSpec) -> pd.DataFrame:
    """Every column as text (None where empty), so each value is checked by the code that
    knows what it must be."""
    try:
        if spec.format == "parquet":
            frame = pd.read_parquet(path)
            return frame.astype(object).where(frame.notna(), None)
        frame = pd.read_csv(
            path, sep=spec.separator, dtype=str, keep_default_na=False, encoding="utf-8"
        )
    except pd.errors.ParserError as e:
        raise ParseError(
            f"{path}: {e}; every line must have as many fields as the header."
        ) from None
    except UnicodeDecodeError as e:
        raise ParseError(f"{path}: not utf-8 text ({e}); save it as utf-8.") from None
    except (OSError, ValueError) as e:
        raise ParseError(f"{path}: cannot be read as {spec.format} ({e}).") from None
    frame = frame.apply(lambda c: c.str.strip())
    return frame.where(frame != "", None)


def _show(value) -> str:
    """A value as the user wrote it: 31 rather than np.float64(31.0)."""
    if isinstance(value, float | np.floating):
        return f"{float(value):g}"
    if isinstance(value, tuple):
        return repr(list(value))
    return repr(value)


def _column(frame: pd.DataFrame, column: str, path: Path, hint: str) -> pd.Series:
    if column not in frame.columns:
        raise ParseError(
            f"{path}: no column {column!r} (columns: {', '.join(map(str, frame.columns))}); {hint}"
        )
    return frame[column]


def _numbers(values: pd.Series, what: str, path: Path, spec: FileSpec, allow_missing: bool):
    numbers = pd.to_numeric(values, errors="coerce").to_numpy(np.float64)
    bad = np.isnan(numbers) & (values.notna().to_numpy() | (not allow_missing))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ParseError(
            f"{path}, {_line(i, spec)}: {what} is {values.iloc[i]!r}; expected a number"
            f"{' (or an empty cell)' if allow_missing else ''}."
        )
    return numbers


def _ids(values: pd.Series, what: str, path: Path, spec: FileSpec) -> np.ndarray:
    """Ids as int64 when every one is an integer, else as text."""
    if values.isna().any():
        i = int(np.flatnonzero(values.isna().to_numpy())[0])
        raise ParseError(f"{path}, {_line(i, spec)}: {what} is empty; every row needs one.")
    numbers = pd.to_numeric(values, errors="coerce").to_numpy(np.float64)
    if not np.isnan(numbers).any() and (numbers % 1 == 0).all():
        return numbers.astype(np.int64)
    return values.astype(str).to_numpy(dtype=object)


def _timestamps(values: pd.Series, column: str, path: Path, spec: FileSpec) -> np.ndarray:
    """Unix seconds, or dates and times (ISO 8601) -> int64 seconds."""
    numbers = pd.to_numeric(values, errors="coerce")
    if numbers.notna().all():
        return numbers.to_numpy(np.float64).astype(np.int64)
    dates = pd.to_datetime(values, errors="coerce", format="ISO8601", utc=True)
    bad = dates.isna().to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ParseError(
            f"{path}, {_line(i, spec)}: {column} is {values.iloc[i]!r}; expected unix seconds "
            "or an ISO 8601 date and time (2024-05-01 12:30:00)."
        )
    seconds = (dates - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
    return seconds.to_numpy(np.int64)


def field_values(values: pd.Series, f: FieldSpec, path: Path, spec: FileSpec) -> pd.Series:
    """A column's text -> what the declared field holds: category text (sparse), a list of
    values (sequence) or a float with NaN for missing (dense)."""
    if f.kind == "dense":
        return pd.Series(_numbers(values, f.name, path, spec, allow_missing=True))
    if f.kind == "sequence":
        return pd.Series(
            [[] if v is None else [p.strip() for p in str(v).split(f.separator) if p.strip()]
             for v in values],
            dtype=object,
        )  # fmt: skip
    if f.bins:  # a number, bucketed by the split (deepfm.data.splitting.bucket_values)
        return pd.Series(_numbers(values, f.name, path, spec, allow_missing=True))
    return (
        values.astype(object).where(values.notna(), None).map(lambda v: v if v is None else str(v))
    )


def _side_table(
    side: str,
    ids: np.ndarray,
    fields: list[FieldSpec],
    interactions: pd.DataFrame,
    inter_ids: np.ndarray,
    inter_path: Path,
    inter_spec: FileSpec,
    side_frame: pd.DataFrame | None,
    side_path: Path | None,
    side_spec: FileSpec | None,
) -> pd.DataFrame:
    """users or items: one row per id in `ids` (sorted), with its declared fields."""
    id_col = f"{side}_id"
    table = pd.DataFrame({id_col: ids})
    side_ids = None
    if side_frame is not None:
        side_ids = _ids(
            _column(side_frame, id_col, side_path, f"the {side}s file needs its {id_col}."),
            id_col,
            side_path,
            side_spec,
        )
        dup = pd.Series(side_ids).duplicated().to_numpy()
        if dup.any():
            i = int(np.flatnonzero(dup)[0])
            raise ParseError(
                f"{side_path}, {_line(i, side_spec)}: {id_col} {side_ids[i]} appears twice."
            )
        missing = ~np.isin(ids, side_ids)
        if missing.any():
            raise ParseError(
                f"{inter_path}: {id_col} {ids[np.flatnonzero(missing)[0]]} is not in "
                f"{side_path}; every {side} of an interaction must be listed there."
            )
    for f in fields:
        if side_frame is not None and f.name in side_frame.columns:
            values = field_values(side_frame[f.name], f, side_path, side_spec)
            where = pd.Index(side_ids).get_indexer(ids)
            table[f.name] = values.iloc[where].to_numpy()
            continue
        values = field_values(
            _column(
                interactions,
                f.name,
                inter_path,
                f"the declared {side} field {f.name!r} must be a column of the "
                f"{side}s file or of the interactions file.",
            ),
            f,
            inter_path,
            inter_spec,
        )
        # one value per user (item): each id's first row, and every other row must agree
        keys = values.map(lambda v: tuple(v) if isinstance(v, list) else v).to_numpy()
        codes, uniques = pd.factorize(inter_ids, sort=True)
        first_row = np.full(len(uniques), len(codes))
        np.minimum.at(first_row, codes, np.arange(len(codes)))
        expected = keys[first_row[codes]]
        got, want = pd.Series(keys, dtype=object), pd.Series(expected, dtype=object)
        same = (got == want).to_numpy() | (got.isna() & want.isna()).to_numpy()
        if not same.all():
            i = int(np.flatnonzero(~same)[0])
            raise ParseError(
                f"{inter_path}, {_line(i, inter_spec)}: {f.name} is {_show(keys[i])} but "
                f"an earlier row of {id_col} {inter_ids[i]} has {_show(expected[i])}; a {side} "
                f"field holds one value per {side}. Give it in a {side}s file, or fix the row."
            )
        picked = keys[first_row[pd.Index(uniques).get_indexer(ids)]]
        if f.kind == "sequence":
            picked = np.array([list(v) for v in picked] + [None], dtype=object)[:-1]
        table[f.name] = picked
    return table


def load_local(spec: DatasetSpec, raw: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Read the declared files from the raw folder and build the canonical tables. Errors
    name the declared file (the raw folder holds a verified copy of it)."""
    try:
        return _load_local(spec, raw)
    except ParseError as e:
        message = str(e)
        for role, file in spec.files.items():
            message = message.replace(str(raw / raw_name(role, file)), file.path)
        raise ParseError(message) from None


def _load_local(spec: DatasetSpec, raw: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    inter_spec = spec.files["interactions"]
    inter_path = raw / raw_name("interactions", inter_spec)
    if not inter_path.is_file():
        raise ParseError(f"{inter_path} not found: run the fetch stage first (dvc repro fetch).")
    frame = read_file(inter_path, inter_spec)
    cols = spec.columns
    hint = f"map it with datasets.{spec.name}.columns"

    def column(name: str) -> pd.Series:
        return _column(frame, cols[name], inter_path, f"{hint}.{name}: <its column name>.")

    if spec.protocol == "ctr":  # rows, not users and items: placeholders, file order as time
        user_ids = item_ids = np.zeros(len(frame), dtype=np.int64)
        timestamps = (
            _timestamps(column("timestamp"), cols["timestamp"], inter_path, inter_spec)
            if cols["timestamp"] in frame.columns
            else np.arange(len(frame), dtype=np.int64)
        )
    else:
        user_ids = _ids(column("user_id"), cols["user_id"], inter_path, inter_spec)
        item_ids = _ids(column("item_id"), cols["item_id"], inter_path, inter_spec)
        timestamps = _timestamps(column("timestamp"), cols["timestamp"], inter_path, inter_spec)
    if spec.label_column is not None:
        label = _numbers(column("label"), cols["label"], inter_path, inter_spec, False)
        bad = (label != 0) & (label != 1)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ParseError(
                f"{inter_path}, {_line(i, inter_spec)}: {cols['label']} is "
                f"{frame[cols['label']].iloc[i]!r}; a given label must be 0 or 1."
            )
        rating = (
            _numbers(column("rating"), cols["rating"], inter_path, inter_spec, False)
            if cols["rating"] in frame.columns
            else label.copy()
        )
    else:
        rating = _numbers(column("rating"), cols["rating"], inter_path, inter_spec, False)
        label = rating >= spec.label_threshold
    interactions = pd.DataFrame(
        {
            "user_id": user_ids,
            "item_id": item_ids,
            "rating": rating.astype(np.float32),
            "timestamp": timestamps,
            "label": label.astype(np.int8),
        }
    )
    dup = interactions.duplicated(["user_id", "item_id"]).to_numpy()
    if spec.protocol == "topk" and dup.any():
        i = int(np.flatnonzero(dup)[0])
        raise ParseError(
            f"{inter_path}, {_line(i, inter_spec)}: user {user_ids[i]} and item {item_ids[i]} "
            "appear a second time; keep one row per (user, item)."
        )

    tables = {}
    for side, ids in (("user", user_ids), ("item", item_ids)):
        side_spec = spec.files.get(f"{side}s")
        side_path = side_frame = None
        if side_spec is not None:
            side_path = raw / raw_name(f"{side}s", side_spec)
            side_frame = read_file(side_path, side_spec)
        fields = [f for f in spec.fields if f.source == side and f.name != f"{side}_id"]
        tables[side] = _side_table(
            side,
            np.sort(pd.unique(ids)),
            fields,
            frame,
            ids,
            inter_path,
            inter_spec,
            side_frame,
            side_path,
            side_spec,
        )
    for f in (f for f in spec.fields if f.source == "context"):
        values = _column(
            frame,
            f.name,
            inter_path,
            f"the declared context field {f.name!r} must be a column of the interactions file.",
        )
        interactions[f.name] = field_values(values, f, inter_path, inter_spec).to_numpy()
    interactions = interactions.sort_values(["user_id", "timestamp", "item_id"], kind="stable")
    return interactions.reset_index(drop=True), tables["user"], tables["item"]
