"""A local dataset (`source: local`): your own CSV or Parquet files -> the canonical tables
(the contract of deepfm.data.canonical; the declaration: docs/architecture.md, "Add a
dataset"). Errors name the file, the line (1 = the header of a CSV file), the column and what
was expected.
"""

from __future__ import annotations

from dataclasses import dataclass
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
    # object columns: pandas' string dtype would turn the None of an empty cell into NaN,
    # which a bag reads as the text 'nan'
    frame = frame.apply(lambda c: c.str.strip()).astype(object)
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
    if f.kind == "dense" or f.bins:  # a number (with bins: bucketed by the split)
        return pd.Series(_numbers(values, f.name, path, spec, allow_missing=True))
    if f.kind == "sequence":
        return pd.Series(
            [[] if v is None else [p.strip() for p in str(v).split(f.separator) if p.strip()]
             for v in values],
            dtype=object,
        )  # fmt: skip
    return (
        values.astype(object).where(values.notna(), None).map(lambda v: v if v is None else str(v))
    )


@dataclass
class _File:
    """A declared file as read_file gives it, with what its errors name: its path, and its
    declaration (whose format numbers the lines)."""

    frame: pd.DataFrame
    path: Path
    spec: FileSpec


def _side_table(
    side: str,
    ids: np.ndarray,
    fields: list[FieldSpec],
    interactions: _File,
    inter_ids: np.ndarray,
    side_file: _File | None,
) -> pd.DataFrame:
    """users or items: one row per id in `ids` (sorted), with its declared fields, each from
    the side's file when it has the column, else from the interactions file (inter_ids: the
    side's id on each of its rows)."""
    table = pd.DataFrame({f"{side}_id": ids})
    side_ids = None
    if side_file is not None:
        side_ids = _listed_ids(side, ids, side_file, interactions.path)
    for f in fields:
        if side_file is not None and f.name in side_file.frame.columns:
            values = field_values(side_file.frame[f.name], f, side_file.path, side_file.spec)
            where = pd.Index(side_ids).get_indexer(ids)
            table[f.name] = values.iloc[where].to_numpy()
        else:
            table[f.name] = _one_value_per_id(side, ids, f, interactions, inter_ids)
    return table


def _listed_ids(side: str, ids: np.ndarray, side_file: _File, inter_path: Path) -> np.ndarray:
    """The ids of the side's file, one row each, in file order; every id of an interaction
    (`ids`) must be there."""
    id_col = f"{side}_id"
    path, spec = side_file.path, side_file.spec
    column = _column(side_file.frame, id_col, path, f"the {side}s file needs its {id_col}.")
    side_ids = _ids(column, id_col, path, spec)
    dup = pd.Series(side_ids).duplicated().to_numpy()
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        raise ParseError(f"{path}, {_line(i, spec)}: {id_col} {side_ids[i]} appears twice.")
    missing = ~np.isin(ids, side_ids)
    if missing.any():
        raise ParseError(
            f"{inter_path}: {id_col} {ids[np.flatnonzero(missing)[0]]} is not in "
            f"{path}; every {side} of an interaction must be listed there."
        )
    return side_ids


def _one_value_per_id(
    side: str, ids: np.ndarray, f: FieldSpec, interactions: _File, inter_ids: np.ndarray
) -> np.ndarray:
    """A side field given in the interactions file: the value of each of `ids` on its first
    row; every other row of that id must agree."""
    id_col = f"{side}_id"
    path, spec = interactions.path, interactions.spec
    hint = f"the declared {side} field {f.name!r} must be a column of the {side}s file or of "
    column = _column(interactions.frame, f.name, path, hint + "the interactions file.")
    values = field_values(column, f, path, spec)
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
            f"{path}, {_line(i, spec)}: {f.name} is {_show(keys[i])} but "
            f"an earlier row of {id_col} {inter_ids[i]} has {_show(expected[i])}; a {side} "
            f"field holds one value per {side}. Give it in a {side}s file, or fix the row."
        )
    picked = keys[first_row[pd.Index(uniques).get_indexer(ids)]]
    if f.kind == "sequence":
        picked = np.array([list(v) for v in picked] + [None], dtype=object)[:-1]
    return picked


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
    inter = _File(read_file(inter_path, inter_spec), inter_path, inter_spec)
    user_ids, item_ids, timestamps = _ids_and_timestamps(spec, inter)
    label, rating = _label_and_rating(spec, inter)
    interactions = pd.DataFrame(
        {"user_id": user_ids, "item_id": item_ids, "rating": rating.astype(np.float32),
         "timestamp": timestamps, "label": label.astype(np.int8)}
    )  # fmt: skip
    dup = interactions.duplicated(["user_id", "item_id"]).to_numpy()
    if spec.protocol == "topk" and dup.any():
        i = int(np.flatnonzero(dup)[0])
        raise ParseError(
            f"{inter_path}, {_line(i, inter_spec)}: user {user_ids[i]} and item {item_ids[i]} "
            "appear a second time; keep one row per (user, item)."
        )
    tables = {}
    for side, ids in (("user", user_ids), ("item", item_ids)):
        side_file = _side_file(spec, raw, side)
        fields = [f for f in spec.fields if f.source == side and f.name != f"{side}_id"]
        tables[side] = _side_table(side, np.sort(pd.unique(ids)), fields, inter, ids, side_file)
    for f in (f for f in spec.fields if f.source == "context"):
        hint = f"the declared context field {f.name!r} must be a column of the interactions file."
        values = _column(inter.frame, f.name, inter_path, hint)
        interactions[f.name] = field_values(values, f, inter_path, inter_spec).to_numpy()
    interactions = interactions.sort_values(["user_id", "timestamp", "item_id"], kind="stable")
    return interactions.reset_index(drop=True), tables["user"], tables["item"]


def _mapped_column(spec: DatasetSpec, inter: _File, name: str) -> pd.Series:
    """The interactions file's column that holds canonical column `name` (as mapped under
    datasets.<name>.columns)."""
    hint = f"map it with datasets.{spec.name}.columns"
    return _column(
        inter.frame, spec.columns[name], inter.path, f"{hint}.{name}: <its column name>."
    )


def _ids_and_timestamps(spec: DatasetSpec, inter: _File) -> tuple[np.ndarray, ...]:
    """Each row's user id, item id and unix seconds."""
    cols = spec.columns
    if spec.protocol == "ctr":  # rows, not users and items: placeholders, file order as time
        user_ids = item_ids = np.zeros(len(inter.frame), dtype=np.int64)
        timestamps = np.arange(len(inter.frame), dtype=np.int64)
        if cols["timestamp"] in inter.frame.columns:
            timestamps = _mapped_timestamps(spec, inter)
    else:
        path, file_spec = inter.path, inter.spec
        user_ids = _ids(_mapped_column(spec, inter, "user_id"), cols["user_id"], path, file_spec)
        item_ids = _ids(_mapped_column(spec, inter, "item_id"), cols["item_id"], path, file_spec)
        timestamps = _mapped_timestamps(spec, inter)
    return user_ids, item_ids, timestamps


def _mapped_timestamps(spec: DatasetSpec, inter: _File) -> np.ndarray:
    column = _mapped_column(spec, inter, "timestamp")
    return _timestamps(column, spec.columns["timestamp"], inter.path, inter.spec)


def _mapped_numbers(spec: DatasetSpec, inter: _File, name: str) -> np.ndarray:
    """Canonical column `name` (label or rating) as numbers, none missing."""
    column = _mapped_column(spec, inter, name)
    return _numbers(column, spec.columns[name], inter.path, inter.spec, allow_missing=False)


def _label_and_rating(spec: DatasetSpec, inter: _File) -> tuple[np.ndarray, np.ndarray]:
    """Each row's label, given (0 or 1) or rating >= threshold, and its rating (the label
    itself when a given label comes without ratings)."""
    if spec.label_column is None:
        rating = _mapped_numbers(spec, inter, "rating")
        return rating >= spec.label_threshold, rating
    label = _mapped_numbers(spec, inter, "label")
    bad = (label != 0) & (label != 1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        column = spec.columns["label"]
        raise ParseError(
            f"{inter.path}, {_line(i, inter.spec)}: {column} is "
            f"{inter.frame[column].iloc[i]!r}; a given label must be 0 or 1."
        )
    if spec.columns["rating"] in inter.frame.columns:
        return label, _mapped_numbers(spec, inter, "rating")
    return label, label.copy()


def _side_file(spec: DatasetSpec, raw: Path, side: str) -> _File | None:
    """The side's declared file (users / items), read; None when none is declared."""
    side_spec = spec.files.get(f"{side}s")
    if side_spec is None:
        return None
    side_path = raw / raw_name(f"{side}s", side_spec)
    return _File(read_file(side_path, side_spec), side_path, side_spec)
